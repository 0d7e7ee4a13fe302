"""behaviours.py: each behaviour's scorer, and its records read and split before any model is loaded."""

from __future__ import annotations

import sys
import uuid

import pytest
from conftest import TINY_INPUTS

from internalize.behaviours import load_behaviours, load_scorer
from internalize.config import BehaviourConfig, InternalizeError, config_from_dict, load_config


@pytest.fixture
def isolated_path(monkeypatch):
    """load_scorer puts the working directory on sys.path: give it a copy that is restored afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))


def _scorer_module(tmp_path, monkeypatch, body: str) -> str:
    name = f"scorer_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def test_no_scorer():
    assert load_scorer(BehaviourConfig()) is None


def test_regex_scorer():
    scorer = load_scorer(BehaviourConfig(scorer_regex=r"Over\.\s*$"))
    assert scorer({"input": "q"}, "Fine. Over.") == 1.0
    assert scorer({"input": "q"}, "Over. And out") == 0.0
    assert isinstance(scorer({}, ""), float)


def test_regex_scorer_uses_search_not_match():
    assert load_scorer(BehaviourConfig(scorer_regex="b"))({}, "abc") == 1.0


def test_bad_regex():
    with pytest.raises(InternalizeError) as e:
        load_scorer(BehaviourConfig(scorer_regex="(unclosed"))
    assert str(e.value).startswith("behaviours[main].scorer_regex='(unclosed' is not a valid regex")
    assert "\n" not in str(e.value)


def test_callable_scorer_from_working_directory(tmp_path, monkeypatch, isolated_path):
    name = _scorer_module(tmp_path, monkeypatch,
                          "def exact(record, output):\n    return output.strip() == record['gold']\n")
    scorer = load_scorer(BehaviourConfig(scorer=f"{name}:exact"))
    assert scorer({"input": "q", "gold": "4"}, " 4 ") == 1.0
    assert scorer({"input": "q", "gold": "4"}, "5") == 0.0
    assert isinstance(scorer({"input": "q", "gold": "4"}, "4"), float)


def test_callable_scorer_may_return_a_float(tmp_path, monkeypatch, isolated_path):
    name = _scorer_module(tmp_path, monkeypatch, "def half(record, output):\n    return 0.5\n")
    assert load_scorer(BehaviourConfig(scorer=f"{name}:half"))({}, "x") == 0.5


def test_regex_and_callable_together_are_refused():
    with pytest.raises(InternalizeError, match=r"behaviour\.scorer='no_such_module_xyz:f' is invalid: .*scorer_regex"):
        BehaviourConfig(scorer_regex="x", scorer="no_such_module_xyz:f")


def test_unimportable_scorer_module(tmp_path, monkeypatch, isolated_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InternalizeError) as e:
        load_scorer(BehaviourConfig(scorer="no_such_module_xyz:score"))
    message = str(e.value)
    assert message.startswith("behaviours[main].scorer='no_such_module_xyz:score' cannot be imported")
    assert "\n" not in message


def test_missing_scorer_function(tmp_path, monkeypatch, isolated_path):
    name = _scorer_module(tmp_path, monkeypatch, "def other(record, output):\n    return 1\n")
    with pytest.raises(InternalizeError, match=rf"behaviours\[main\]\.scorer='{name}:missing' cannot be imported"):
        load_scorer(BehaviourConfig(scorer=f"{name}:missing"))


def test_a_scorer_module_beside_the_config_file_is_found_from_any_working_directory(tmp_path, monkeypatch):
    name = f"scorer_{uuid.uuid4().hex[:8]}"
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / f"{name}.py").write_text("def exact(record, output):\n    return output == 'yes'\n")
    (tmp_path / "job" / "cfg.yaml").write_text(f"teacher: {{context: c}}\ndata: {{inputs: [a, b, c], num_eval: 1}}\n"
                                              f"eval: {{scorer: '{name}:exact'}}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, name, raising=False)
    before = list(sys.path)
    behaviours = load_behaviours(load_config(tmp_path / "job" / "cfg.yaml"))
    assert behaviours[0].scorer({}, "yes") == 1.0 and behaviours[0].scorer({}, "no") == 0.0
    assert sys.path == before  # the library leaves the import path as it found it


def test_load_behaviours_reads_and_splits_each_behaviour(tmp_path):
    over = tmp_path / "over.jsonl"
    over.write_text("".join(f'{{"input": "{x}"}}\n' for x in TINY_INPUTS[:6]))
    cfg = config_from_dict({
        "data": {"num_eval": 2, "max_train": 3},
        "behaviours": [
            {"name": "over", "prompt": {"context": "End with Over."}, "train_file": str(over), "scorer_regex": "Over"},
            {"name": "keep", "inputs": ["a", "b", "c"], "eval_inputs": ["d"]},
        ],
    })
    over_b, keep_b = load_behaviours(cfg)
    assert (over_b.name, len(over_b.train), len(over_b.held_out)) == ("over", 3, 2)  # 2 split off, then capped at 3
    assert {r["input"] for r in over_b.train}.isdisjoint(r["input"] for r in over_b.held_out)
    assert over_b.scorer({}, "Fine. Over.") == 1.0 and keep_b.scorer is None
    assert [r["input"] for r in keep_b.held_out] == ["d"] and keep_b.prompt.empty
    assert over_b.source == str(over) and keep_b.source == "behaviours[1].inputs"


def test_a_missing_file_names_the_behaviours_key(tmp_path):
    cfg = config_from_dict({"behaviours": [{"name": "x", "prompt": {"context": "c"}, "train_file": "nope.jsonl"}]})
    with pytest.raises(InternalizeError, match=r"behaviours\[0\]\.train_file='nope.jsonl': file not found"):
        load_behaviours(cfg)


def test_a_column_mapping_reaches_every_behaviour(tmp_path):
    table = tmp_path / "q.csv"
    table.write_text("question,gold\nWhat is 2+2?,4\nName a colour.,red\nSay hi,hi\n")
    cfg = config_from_dict({"data": {"input_column": "question", "num_eval": 1, "train_file": str(table)},
                            "teacher": {"context": "c"}})
    (main,) = load_behaviours(cfg)
    assert sorted(r["input"] for r in main.train + main.held_out) == ["Name a colour.", "Say hi", "What is 2+2?"]
    assert all("gold" in r for r in main.train + main.held_out)
