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


# --- CSV, Parquet and saved datasets (data.input_column, data.output_column) ---------------------------------------

ROWS = [{"input": "What is 2+2?", "output": "4", "label": "math"},
        {"input": 'A "quoted", comma\nand a second line', "output": "ok", "label": ""},
        {"input": "Über straße 東京", "output": "é", "label": "unicode"},
        {"input": "  spaces kept  ", "output": "x", "label": "s"},
        {"input": "last", "output": "y", "label": "z"}]


def _write(fmt, path, rows):
    """``rows`` (dicts of the same keys) written as ``fmt``; returns the path to give as train_file."""
    if fmt == "jsonl":
        return str(_jsonl(path.with_suffix(".jsonl"), rows))
    if fmt == "csv":
        import csv

        with open(path.with_suffix(".csv"), "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return str(path.with_suffix(".csv"))
    if fmt == "parquet":
        pa = pytest.importorskip("pyarrow")
        pq = pytest.importorskip("pyarrow.parquet")
        pq.write_table(pa.Table.from_pylist(rows), path.with_suffix(".parquet"))
        return str(path.with_suffix(".parquet"))
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_list(rows)
    if fmt == "dataset_dict":  # one split: used as it is
        dataset = datasets.DatasetDict({"train": dataset})
    dataset.save_to_disk(str(path), max_shard_size="1MB")
    return str(path)


FORMATS = ["csv", "parquet", "dataset", "dataset_dict"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_gives_the_records_of_the_same_jsonl(tmp_path, fmt):
    from internalize.data import read_records

    expected = read_jsonl(_write("jsonl", tmp_path / "same", ROWS), "data.train_file")
    assert expected == ROWS
    assert read_records(_write(fmt, tmp_path / "same", ROWS), "data.train_file") == expected


@pytest.mark.parametrize("fmt", ["jsonl", *FORMATS])
def test_input_and_output_columns_are_mapped_and_other_columns_kept(tmp_path, fmt):
    rows = [{"id": i, "question": f"q{i}", "answer": f"a{i}", "source": "web"} for i in range(5)]
    if fmt == "csv":
        rows = [{**r, "id": str(r["id"])} for r in rows]
    path = _write(fmt, tmp_path / "cols", rows)
    train, held_out = _load(train_file=path, eval_file=path, input_column="question", output_column="answer")
    expected = [{"input": r["question"], "output": r["answer"], "id": r["id"], "source": "web"} for r in rows]
    assert train == expected and held_out == expected


@pytest.mark.parametrize("fmt", ["csv", "parquet", "dataset"])
def test_a_missing_input_column_names_the_columns_present(tmp_path, fmt):
    from internalize.data import read_records

    path = _write(fmt, tmp_path / "nocol", [{"question": "q", "answer": "a"}])
    with pytest.raises(InternalizeError) as e:
        read_records(path, "data.train_file")
    message = str(e.value)
    assert message.startswith(path) and "no column 'input'" in message and "'question', 'answer'" in message
    assert "set data.input_column" in message and "\n" not in message


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_a_column_read_as_input_may_not_meet_an_input_column(tmp_path, fmt):
    path = _write(fmt, tmp_path / "both", [{"input": "x", "question": "q"}])
    with pytest.raises(InternalizeError, match=r"both 'question' \(data\.input_column\) and 'input' are columns"):
        _load(train_file=path, input_column="question", num_eval=0, eval_inputs=["e"])


def test_a_csv_row_with_an_empty_input_names_its_line(tmp_path):
    from internalize.data import read_records

    path = tmp_path / "in.csv"
    path.write_text('input,label\n"two\nlines",a\n\nok,b\n   ,c\n')
    with pytest.raises(InternalizeError, match=rf"^{re.escape(str(path))}:6: the input \('input'\) is empty; give every "
                                               r"row an input or drop the row$"):
        read_records(path, "data.train_file")


@pytest.mark.parametrize("inputs, why", [(["a", "b", None], "row 3: the input \\('input'\\) is empty"),
                                         (["a", "b", "  "], "row 3: the input \\('input'\\) is empty"),
                                         ([7, 8], "row 1: the input \\('input'\\) is int 7, not text")])
@pytest.mark.parametrize("fmt", ["parquet", "dataset"])
def test_a_table_row_with_an_empty_or_non_string_input_names_the_row(tmp_path, fmt, inputs, why):
    from internalize.data import read_records

    path = _write(fmt, tmp_path / "rows", [{"input": value, "n": i} for i, value in enumerate(inputs)])
    with pytest.raises(InternalizeError, match=rf"^{re.escape(path)}: {why}"):
        read_records(path, "data.train_file")


def test_a_csv_row_with_too_many_fields_names_its_line(tmp_path):
    from internalize.data import read_records

    path = tmp_path / "in.csv"
    path.write_text("input,label\na,1\nb, has, commas\n")
    with pytest.raises(InternalizeError, match=rf"^{re.escape(str(path))}:3: 3 fields but the header has 2; quote"):
        read_records(path, "data.train_file")


def test_a_csv_that_is_not_utf8_names_the_line(tmp_path):
    from internalize.data import read_records

    path = tmp_path / "latin1.csv"
    path.write_bytes("input\nfine\ncaf\u00e9\n".encode("latin-1"))
    with pytest.raises(InternalizeError, match=rf"^{re.escape(str(path))}:3: not UTF-8 text \(byte 0xe9 at column 4\); "
                                               "save the file as UTF-8$"):
        read_records(path, "data.train_file")


def test_a_csv_with_a_byte_order_mark_and_crlf_lines_reads(tmp_path):
    from internalize.data import read_records

    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffinput,label\r\nhello,1\r\n".encode())
    assert read_records(path, "data.train_file") == [{"input": "hello", "label": "1"}]


def test_a_corrupt_parquet_file_is_one_line(tmp_path):
    pytest.importorskip("pyarrow")
    from internalize.data import read_records

    good = _write("parquet", tmp_path / "good", ROWS)
    path = tmp_path / "cut.parquet"
    data = open(good, "rb").read()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InternalizeError) as e:
        read_records(path, "data.train_file")
    assert str(e.value).startswith(f"data.train_file='{path}': not a readable Parquet file (")
    assert "write it again" in str(e.value) and "\n" not in str(e.value)


def test_a_damaged_or_foreign_directory_is_one_line(tmp_path):
    pytest.importorskip("datasets")
    from internalize.data import read_records

    path = _write("dataset", tmp_path / "ds", ROWS)
    for arrow in (tmp_path / "ds").glob("*.arrow"):
        arrow.write_bytes(b"junk")
    with pytest.raises(InternalizeError, match=rf"^data\.train_file='{re.escape(path)}': the saved dataset cannot be read "
                                               r"\(.*\); save it again with save_to_disk$"):
        read_records(path, "data.train_file")
    (tmp_path / "plain").mkdir()
    with pytest.raises(InternalizeError, match=r"'.*plain' is a directory but not a dataset saved with save_to_disk; "
                                               r"give JSONL \(\.jsonl\), CSV"):
        read_records(tmp_path / "plain", "data.train_file")


def test_a_dataset_dict_with_several_splits_needs_one_named(tmp_path):
    datasets = pytest.importorskip("datasets")
    from internalize.data import read_records

    path = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS),
                          "test": datasets.Dataset.from_list(ROWS[:2])}).save_to_disk(str(path))
    with pytest.raises(InternalizeError, match=rf"^data\.eval_file='{re.escape(str(path))}' is a DatasetDict with splits "
                                               rf"train, test; name one as '{re.escape(str(path))}:train'$"):
        read_records(path, "data.eval_file")
    assert read_records(f"{path}:test", "data.eval_file") == ROWS[:2]
    with pytest.raises(InternalizeError, match=r"no split 'dev'; the splits are train, test"):
        read_records(f"{path}:dev", "data.eval_file")
    train, held_out = _load(train_file=f"{path}:train", eval_file=f"{path}:test")
    assert (train, held_out) == (ROWS, ROWS[:2])


@pytest.mark.parametrize("name", ["inputs.txt", "inputs.xlsx", "inputs"])
def test_an_unknown_file_type_names_the_formats(tmp_path, name):
    from internalize.data import read_records

    path = tmp_path / name
    path.write_text("input\nx\n")
    with pytest.raises(InternalizeError, match=r"data\.train_file='.*': unknown file type '.*'; give JSONL \(\.jsonl\), "
                                               r"CSV \(\.csv, with a header row\), Parquet \(\.parquet\) or a directory"):
        read_records(path, "data.train_file")


def test_column_settings_are_checked():
    with pytest.raises(InternalizeError, match=r"data\.input_column='' is invalid"):
        _config(input_column="")
    with pytest.raises(InternalizeError, match=r"data\.output_column='q' is invalid: must differ from data\.input_column"):
        _config(input_column="q", output_column="q")


def test_a_config_with_a_csv_train_file_loads_its_behaviours(tmp_path):
    import yaml

    from internalize.behaviours import load_behaviours
    from internalize.config import load_config

    train = _write("csv", tmp_path / "train", [{"input": f"q{i}", "gold": f"g{i}"} for i in range(6)])
    held_out = _write("parquet", tmp_path / "eval", [{"input": "e0", "gold": "x"}])
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"teacher": {"context": "Be brief."}, "eval": {"scorer_regex": "x"},
                                    "data": {"train_file": train, "eval_file": held_out}}))
    [behaviour] = load_behaviours(load_config(path))
    assert behaviour.train == [{"input": f"q{i}", "gold": f"g{i}"} for i in range(6)]
    assert behaviour.held_out == [{"input": "e0", "gold": "x"}]
    assert behaviour.scorer(behaviour.held_out[0], "x") == 1.0


@pytest.mark.parametrize("text, line, why", [('input\nok\n"never closed\nmore\n', 3, "unexpected end of data"),
                                             ('input\n"closed"then more\n', 2, "',' expected after '\"'")])
def test_a_malformed_csv_names_the_line_its_row_starts_on(tmp_path, text, line, why):
    from internalize.data import read_records

    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(InternalizeError, match=rf"^{re.escape(str(path))}:{line}: malformed CSV \({re.escape(why)}\); "
                                               "close every quote"):
        read_records(path, "data.train_file")
