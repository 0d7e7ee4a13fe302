"""data.py: JSONL and inline inputs, errors naming file:line, the deterministic train/eval split."""

from __future__ import annotations

import json
import re

import pytest

from internalize.config import DataConfig, InternalizeError
from internalize.data import load_inputs, read_jsonl


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
        load_inputs(DataConfig(train_file=str(tmp_path / "nope.jsonl")))


def test_inline_inputs_strings_and_records():
    train, held_out = load_inputs(DataConfig(inputs=["a", {"input": "b", "y": 2}], eval_inputs=["c"]))
    assert train == [{"input": "a"}, {"input": "b", "y": 2}]
    assert held_out == [{"input": "c"}]


def test_inline_input_error_names_the_index():
    with pytest.raises(InternalizeError, match=r"data\.inputs\[1\]: a record needs"):
        load_inputs(DataConfig(inputs=["a", {"nope": 1}], num_eval=0, eval_inputs=["c"]))
    with pytest.raises(InternalizeError, match=r"data\.eval_inputs\[0\]"):
        load_inputs(DataConfig(inputs=["a"], eval_inputs=[""]))


def test_empty_input_set():
    with pytest.raises(InternalizeError, match="no training inputs"):
        load_inputs(DataConfig())


def test_empty_jsonl_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(InternalizeError, match="no training inputs"):
        load_inputs(DataConfig(train_file=str(path)))


@pytest.mark.parametrize("num_eval", [3, 4])
def test_num_eval_too_large(num_eval):
    with pytest.raises(InternalizeError, match=rf"data\.num_eval={num_eval} leaves no training inputs out of 3"):
        load_inputs(DataConfig(inputs=["a", "b", "c"], num_eval=num_eval))


def test_no_held_out_inputs():
    with pytest.raises(InternalizeError, match="no held-out inputs"):
        load_inputs(DataConfig(inputs=["a", "b"], num_eval=0))


def test_train_file_and_inputs_conflict(tmp_path):
    path = _jsonl(tmp_path / "in.jsonl", [{"input": "a"}])
    with pytest.raises(InternalizeError, match="both set"):
        load_inputs(DataConfig(train_file=str(path), inputs=["b"]))


def test_split_is_deterministic_and_disjoint():
    inputs = [f"q{i}" for i in range(20)]
    cfg = DataConfig(inputs=inputs, num_eval=5, seed=3)
    train, held_out = load_inputs(cfg)
    assert (train, held_out) == load_inputs(DataConfig(inputs=inputs, num_eval=5, seed=3))
    assert len(train) == 15 and len(held_out) == 5
    assert sorted(r["input"] for r in train + held_out) == sorted(inputs)
    other = load_inputs(DataConfig(inputs=inputs, num_eval=5, seed=4))
    assert other != (train, held_out)


def test_split_does_not_mutate_config():
    inputs = [f"q{i}" for i in range(6)]
    cfg = DataConfig(inputs=list(inputs), num_eval=2)
    load_inputs(cfg)
    assert cfg.inputs == inputs


def test_eval_file_is_used_instead_of_split(tmp_path):
    train_path = _jsonl(tmp_path / "train.jsonl", [{"input": f"t{i}"} for i in range(4)])
    eval_path = _jsonl(tmp_path / "eval.jsonl", [{"input": "e0", "gold": "x"}])
    train, held_out = load_inputs(DataConfig(train_file=str(train_path), eval_file=str(eval_path), num_eval=30))
    assert [r["input"] for r in train] == ["t0", "t1", "t2", "t3"]
    assert held_out == [{"input": "e0", "gold": "x"}]


def test_max_train_caps_training_inputs():
    train, held_out = load_inputs(DataConfig(inputs=[f"q{i}" for i in range(10)], num_eval=2, max_train=3))
    assert len(train) == 3 and len(held_out) == 2


def test_example_data_files_read():
    from pathlib import Path

    paths = sorted((Path(__file__).parents[1] / "examples").glob("**/*.jsonl"))
    assert paths
    for path in paths:
        records = read_jsonl(path, "data.train_file")
        assert records and all(isinstance(r["input"], str) for r in records)
