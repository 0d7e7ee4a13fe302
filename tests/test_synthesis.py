"""Input synthesis: prompt building, every filter, the stop condition, and what it writes."""

from __future__ import annotations

import json
import os
import sys

import pytest
from conftest import tiny_config_dict, write_yaml

from internalize.cli import main
from internalize.config import InternalizeError, SynthesizeConfig, config_from_dict
from internalize.runtime import Runtime
from internalize.synthesis import (
    InputFilter,
    candidate_lines,
    clean,
    distinct_ngrams,
    jaccard,
    ngrams,
    synthesis_prompt,
    synthesize,
)

SEEDS = ["What is the capital of Japan?", "How many legs does a spider have?", "Name a bird that cannot fly."]


def test_prompt_lists_task_and_seeds_and_opens_the_next_item(tiny):
    _, tokenizer = tiny
    prompt = synthesis_prompt(tokenizer, "Simple questions.", SEEDS[:2])
    assert "Simple questions." in prompt
    assert prompt.endswith(f"1. {SEEDS[0]}\n2. {SEEDS[1]}\n3.")
    assert prompt.index("<|im_start|>assistant\n") < prompt.index("1. ")  # the reply is pre-filled


def test_candidate_lines_marks_the_cut_off_last_line():
    assert candidate_lines(" A?\n4. B?\n5. C", finished=False) == [(" A?", True), ("4. B?", True), ("5. C", False)]
    assert candidate_lines("A?\n\nB?", finished=True) == [("A?", True), ("B?", True)]


def test_clean_strips_markers_labels_and_quotes():
    assert clean("4. What is rain?") == "What is rain?"
    assert clean('- "Why is the sky blue?"') == "Why is the sky blue?"
    assert clean("Question: How old is the sun?\nmore") == "How old is the sun?"


def test_ngrams_jaccard_and_diversity():
    a, b = ngrams("What is the capital of Spain?", 3), ngrams("what is the capital of spain", 3)
    assert a == b and jaccard(a, b) == 1.0
    assert jaccard(ngrams("a b c d", 3), ngrams("x y z w", 3)) == 0.0
    assert distinct_ngrams(["a b c", "a b c"], 2) == 0.5
    assert distinct_ngrams(["a b c", "d e f"], 2) == 1.0


def _filter(**kw) -> InputFilter:
    return InputFilter(SynthesizeConfig(seeds=SEEDS, **kw))


def test_each_filter_drops_and_counts_its_reason():
    f = _filter(min_chars=8, max_chars=60, near_duplicate=0.6)
    assert f.offer("What is the tallest mountain on Earth?")
    assert not f.offer("What is the tallest mountain on Earth?")  # exact
    assert not f.offer("what is the TALLEST mountain on earth")  # exact after normalisation
    assert not f.offer("What is the tallest mountain on Earth today?")  # near duplicate (trigram overlap)
    assert not f.offer("What is the capital of Japan?")  # a seed
    assert not f.offer("What is the capital of Japan, please?")  # near copy of a seed
    assert not f.offer("Hi?")  # too short
    assert not f.offer("Why " + "very " * 20 + "long?")  # too long
    assert not f.offer("Why do cats purr at night?", finished=False)  # cut off
    assert f.offer("Why do cats purr?")
    assert f.kept == ["What is the tallest mountain on Earth?", "Why do cats purr?"]
    assert dict(f.dropped) == {"exact duplicate": 2, "near duplicate": 1, "copies a seed": 2, "too short": 1,
                               "too long": 1, "unfinished": 1}


def test_validator_rejects_and_a_raising_validator_is_one_clear_error():
    f = InputFilter(SynthesizeConfig(seeds=SEEDS, validator="m:f"), validator=lambda t: t.endswith("?"))
    assert not f.offer("Tell me about the moon.")
    assert f.offer("What is the moon made of?")
    assert f.dropped["rejected by validator"] == 1

    def boom(text):
        raise ValueError("bad")

    f = InputFilter(SynthesizeConfig(seeds=SEEDS, validator="m:boom"), validator=boom)
    with pytest.raises(InternalizeError, match=r"data.synthesize.validator='m:boom' raised .*ValueError: bad"):
        f.offer("What is the moon made of?")


def test_synthesize_writes_jsonl_and_provenance(tiny, tmp_path):
    model, tokenizer = tiny
    cfg = SynthesizeConfig(task="Anything.", seeds=SEEDS, count=1, min_chars=1, batch_size=4, max_new_tokens=8)
    out = tmp_path / "syn" / "inputs.jsonl"
    records, summary = synthesize(model, tokenizer, cfg, out, Runtime.local("cpu"), "tiny")
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == records and len(records) == 1 and set(records[0]) == {"input"}
    provenance = json.loads(out.with_suffix(".provenance.json").read_text())
    assert provenance["model"] == "tiny" and provenance["settings"]["count"] == 1
    assert provenance["summary"] == summary
    assert summary["kept"] == 1 and summary["reached_target"] is True
    assert summary["generated"] == summary["kept"] + sum(summary["dropped"].values())


def test_synthesis_stops_when_the_model_keeps_repeating(tiny, tmp_path):
    model, tokenizer = tiny  # answers "okay" to everything: one keeper, then duplicates only
    cfg = SynthesizeConfig(seeds=SEEDS, count=5, min_chars=1, batch_size=4, max_new_tokens=8, max_batches=3)
    records, summary = synthesize(model, tokenizer, cfg, tmp_path / "s.jsonl", Runtime.local("cpu"))
    assert summary["batches"] == 3 and summary["reached_target"] is False
    assert len(records) < 5
    assert summary["dropped"].get("exact duplicate", 0) > 0
    assert summary["generated"] == sum(summary["dropped"].values()) + summary["kept"]


def test_nothing_kept_is_an_error_and_nothing_written(tiny, tmp_path):
    model, tokenizer = tiny
    cfg = SynthesizeConfig(seeds=SEEDS, count=2, min_chars=200, max_chars=300, batch_size=2, max_new_tokens=4,
                           max_batches=1)
    with pytest.raises(InternalizeError, match="kept no inputs"):
        synthesize(model, tokenizer, cfg, tmp_path / "s.jsonl", Runtime.local("cpu"))
    assert not (tmp_path / "s.jsonl").exists()


def test_config_checks():
    with pytest.raises(InternalizeError, match=r"data.synthesize.count=0 is invalid"):
        config_from_dict({"teacher": {"context": "x"}, "data": {"synthesize": {"count": 0}}})
    with pytest.raises(InternalizeError, match=r"data.synthesize.validator='nocolon'"):
        SynthesizeConfig(validator="nocolon")


def _synth_config(tiny_model_dir, tmp_path, **synth) -> str:
    raw = tiny_config_dict(tiny_model_dir, tmp_path / "run")
    raw["data"] = {"eval_inputs": ["Say hi", "x"],
                   "synthesize": {"task": "Anything.", "count": 1, "min_chars": 1, "batch_size": 2,
                                  "max_new_tokens": 8, **synth}}
    return str(write_yaml(tmp_path / "synth.yaml", raw))


def test_cli_synthesize_writes_into_the_run_dir(tiny_model_dir, tmp_path, capsys):
    path = _synth_config(tiny_model_dir, tmp_path, seeds=SEEDS)
    assert main(["-q", "synthesize", path]) == 0
    assert (tmp_path / "run" / "synthesized.jsonl").is_file()
    assert (tmp_path / "run" / "synthesized.provenance.json").is_file()
    assert main(["-q", "synthesize", path]) == 2  # refuses to replace without --overwrite
    assert "exists; pass --overwrite" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("synth", "message"),
    [
        ({"seeds": []}, "data.synthesize.seeds is empty"),
        ({"seeds": SEEDS, "count": 0}, "data.synthesize.count=0 is invalid"),
        ({"seeds": SEEDS, "validator": "no_such_module_xyz:f"}, "cannot be imported"),
        ({"seeds": SEEDS, "output": "/proc/forbidden/s.jsonl"}, "is not writable"),
    ],
)
def test_cli_synthesize_bad_input_is_one_line_exit_2(tiny_model_dir, tmp_path, capsys, synth, message):
    path = _synth_config(tiny_model_dir, tmp_path, **synth)
    assert main(["-q", "synthesize", path]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "synthesized.jsonl").exists()


def test_cli_synthesize_validator_that_raises(tiny_model_dir, tmp_path, capsys, monkeypatch):
    (tmp_path / "myvalidator.py").write_text("def check(text):\n    raise RuntimeError('nope')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = _synth_config(tiny_model_dir, tmp_path, seeds=SEEDS, validator="myvalidator:check")
    assert main(["-q", "synthesize", path]) == 2
    err = capsys.readouterr().err.strip()
    assert "RuntimeError: nope" in err and len(err.splitlines()) == 1
    assert not os.path.exists(tmp_path / "run" / "synthesized.jsonl")


def test_cli_synthesize_validator_beside_the_config_from_another_directory(tiny_model_dir, tmp_path, capsys,
                                                                          monkeypatch):
    module = "internalize_test_validator_beside_config"
    (tmp_path / f"{module}.py").write_text("def check(text):\n    raise RuntimeError('found beside the config')\n")
    path = _synth_config(tiny_model_dir, tmp_path, seeds=SEEDS, validator=f"{module}:check")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    before = list(sys.path)
    try:
        assert main(["-q", "synthesize", path]) == 2
    finally:
        sys.modules.pop(module, None)
    err = capsys.readouterr().err.strip()
    assert "RuntimeError: found beside the config" in err and len(err.splitlines()) == 1
    assert sys.path == before


def test_distill_uses_synthesized_inputs(tiny_model_dir, tmp_path):
    from internalize import distill, load_config

    path = _synth_config(tiny_model_dir, tmp_path, seeds=SEEDS, count=2, max_batches=2)
    metrics = distill(load_config(path))
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (tmp_path / "run" / "synthesized.jsonl").is_file()
    assert run["train_inputs"] >= 1 and run["eval_inputs"] == 2
    assert set(metrics) == {"main"}
    assert set(metrics["main"]) == {"base", "teacher", "student"}


def test_synthesize_then_distill_from_that_file_in_the_same_run_dir(tiny_model_dir, tmp_path):
    from internalize import distill, load_config

    path = _synth_config(tiny_model_dir, tmp_path, seeds=SEEDS, count=2, max_batches=2)
    assert main(["-q", "synthesize", path]) == 0
    inputs = tmp_path / "run" / "synthesized.jsonl"
    written = inputs.read_text()
    metrics = distill(load_config(path, [f"data.train_file={inputs}", "data.num_eval=0"]))
    assert set(metrics) == {"main"}
    assert set(metrics["main"]) == {"base", "teacher", "student"}
    assert inputs.read_text() == written  # the input file is neither refused, cleared nor rewritten
