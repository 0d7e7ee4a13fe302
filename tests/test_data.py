"""data.py: JSONL and inline inputs, errors naming file:line, the deterministic train/eval split."""

from __future__ import annotations

import json
import re

import pytest

from internalize.config import InternalizeError, config_from_dict
from internalize.data import load_inputs, read_inputs, read_jsonl, split_inputs, uses_synthesis


def _config(**data):
    """A one-behaviour config from the shorthand: ``data.train_file`` & co. (and ``data.num_eval`` & co.)."""
    return config_from_dict({"teacher": {"context": "c"}, "data": data})


def _load(**data):
    cfg = _config(**data)
    return load_inputs(cfg.behaviours[0], cfg.data)


def _jsonl(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_read_jsonl_keeps_extra_fields_and_skips_blank_lines(tmp_path):
    path = _jsonl(tmp_path / "in.jsonl", [{"input": "a", "label": 1, "meta": {"x": [1]}}, "", "   ", {"input": "b"}])
    records = read_jsonl(path, "data.train_file")
    assert records == [{"input": "a", "label": 1, "meta": {"x": [1]}}, {"input": "b"}]


def test_read_jsonl_accepts_bare_strings(tmp_path):
    path = _jsonl(tmp_path / "in.jsonl", ['"just text"'])
    assert read_jsonl(path, "data.train_file") == [{"input": "just text"}]


def test_malformed_json_line_reports_file_and_line(tmp_path):
    path = _jsonl(tmp_path / "in.jsonl", [{"input": "a"}, "", '{"input": "b",}', {"input": "c"}])
    with pytest.raises(InternalizeError) as e:
        read_jsonl(path, "data.train_file")
    assert str(e.value).startswith(f"{path}:3: malformed JSON")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("line", [{"text": "no input"}, {"input": ""}, {"input": "   "}, {"input": 3}, "[1, 2]", "7"])
def test_record_without_input_reports_file_and_line(tmp_path, line):
    path = _jsonl(tmp_path / "in.jsonl", [{"input": "ok"}, line])
    with pytest.raises(InternalizeError, match=rf"{re.escape(str(path))}:2: a record needs a non-empty string field 'input'"):
        read_jsonl(path, "data.train_file")


def test_missing_file_names_the_key(tmp_path):
    with pytest.raises(InternalizeError, match=r"data\.train_file='.*nope\.jsonl': file not found"):
        _load(train_file=str(tmp_path / "nope.jsonl"))


def test_inline_inputs_strings_and_records():
    train, held_out = _load(inputs=["a", {"input": "b", "y": 2}], eval_inputs=["c"])
    assert train == [{"input": "a"}, {"input": "b", "y": 2}]
    assert held_out == [{"input": "c"}]


def test_inline_input_error_names_the_index():
    with pytest.raises(InternalizeError, match=r"data\.inputs\[1\]: a record needs"):
        _load(inputs=["a", {"nope": 1}], num_eval=0, eval_inputs=["c"])
    with pytest.raises(InternalizeError, match=r"data\.eval_inputs\[0\]"):
        _load(inputs=["a"], eval_inputs=[""])


def test_empty_input_set():
    with pytest.raises(InternalizeError, match="no training inputs"):
        _load()


def test_empty_jsonl_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(InternalizeError, match="no training inputs"):
        _load(train_file=str(path))


@pytest.mark.parametrize("num_eval", [3, 4])
def test_num_eval_too_large(num_eval):
    with pytest.raises(InternalizeError, match=rf"data\.num_eval={num_eval} leaves no training inputs out of 3"):
        _load(inputs=["a", "b", "c"], num_eval=num_eval)


def test_no_held_out_inputs():
    with pytest.raises(InternalizeError, match="no held-out inputs"):
        _load(inputs=["a", "b"], num_eval=0)


def test_train_file_and_inputs_conflict(tmp_path):
    path = _jsonl(tmp_path / "in.jsonl", [{"input": "a"}])
    with pytest.raises(InternalizeError, match="both set"):
        _load(train_file=str(path), inputs=["b"])


def test_split_is_deterministic_and_disjoint():
    inputs = [f"q{i}" for i in range(20)]
    train, held_out = _load(inputs=inputs, num_eval=5, seed=3)
    assert (train, held_out) == _load(inputs=inputs, num_eval=5, seed=3)
    assert len(train) == 15 and len(held_out) == 5
    assert sorted(r["input"] for r in train + held_out) == sorted(inputs)
    other = _load(inputs=inputs, num_eval=5, seed=4)
    assert other != (train, held_out)


def test_split_does_not_mutate_config():
    inputs = [f"q{i}" for i in range(6)]
    cfg = _config(inputs=list(inputs), num_eval=2)
    load_inputs(cfg.behaviours[0], cfg.data)
    assert cfg.behaviours[0].inputs == inputs


def test_eval_file_is_used_instead_of_split(tmp_path):
    train_path = _jsonl(tmp_path / "train.jsonl", [{"input": f"t{i}"} for i in range(4)])
    eval_path = _jsonl(tmp_path / "eval.jsonl", [{"input": "e0", "gold": "x"}])
    train, held_out = _load(train_file=str(train_path), eval_file=str(eval_path), num_eval=30)
    assert [r["input"] for r in train] == ["t0", "t1", "t2", "t3"]
    assert held_out == [{"input": "e0", "gold": "x"}]


def test_max_train_caps_training_inputs():
    train, held_out = _load(inputs=[f"q{i}" for i in range(10)], num_eval=2, max_train=3)
    assert len(train) == 3 and len(held_out) == 2


def test_example_data_files_read():
    from pathlib import Path

    paths = sorted((Path(__file__).parents[1] / "examples").glob("**/*.jsonl"))
    assert paths
    for path in paths:
        records = read_jsonl(path, "data.train_file")
        assert records and all(isinstance(r["input"], str) for r in records)


def test_errors_name_the_behaviours_own_keys(tmp_path):
    cfg = config_from_dict({"behaviours": [
        {"name": "a", "prompt": {"context": "c"}, "inputs": ["x", "y"], "eval_inputs": ["z"]},
        {"name": "b", "prompt": {"context": "d"}, "train_file": str(tmp_path / "nope.jsonl")},
        {"name": "c", "prompt": {"context": "e"}, "inputs": ["x"], "eval_inputs": ["ok", {"nope": 1}]},
        {"name": "d", "prompt": {"context": "f"}},
    ]})
    assert load_inputs(cfg.behaviours[0], cfg.data) == ([{"input": "x"}, {"input": "y"}], [{"input": "z"}])
    with pytest.raises(InternalizeError, match=r"behaviours\[1\]\.train_file='.*nope\.jsonl': file not found"):
        load_inputs(cfg.behaviours[1], cfg.data)
    with pytest.raises(InternalizeError, match=r"behaviours\[2\]\.eval_inputs\[1\]: a record needs"):
        read_inputs(cfg.behaviours[2])
    with pytest.raises(InternalizeError, match=r"no training inputs: set behaviours\[3\]\.train_file"):
        load_inputs(cfg.behaviours[3], cfg.data)


def test_read_inputs_then_split_inputs_is_load_inputs():
    cfg = _config(inputs=[f"q{i}" for i in range(8)], num_eval=3, seed=1)
    behaviour = cfg.behaviours[0]
    train, held_out = read_inputs(behaviour)
    assert (train, held_out) == ([{"input": f"q{i}"} for i in range(8)], [])
    assert split_inputs(cfg.data, train, held_out, behaviour) == load_inputs(behaviour, cfg.data)


def test_uses_synthesis_only_for_one_behaviour_without_inputs():
    seeds = {"synthesize": {"seeds": ["What is 2+2?"]}}
    synthesized = config_from_dict({"teacher": {"context": "c"}, "data": {**seeds, "eval_inputs": ["q"]}})
    assert uses_synthesis(synthesized.behaviours, synthesized.data)
    given = config_from_dict({"teacher": {"context": "c"}, "data": {**seeds, "inputs": ["a"]}})
    assert not uses_synthesis(given.behaviours, given.data)
    off = _config(eval_inputs=["q"])
    assert not uses_synthesis(off.behaviours, off.data)
    two = config_from_dict({"data": seeds, "behaviours": [{"name": "a", "prompt": {"context": "c"}},
                                                          {"name": "b", "prompt": {"context": "d"}}]})
    assert not uses_synthesis(two.behaviours, two.data)
