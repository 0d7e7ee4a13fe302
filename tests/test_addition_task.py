"""experiments/addition/task.py: problems, scratch-pads, scorers, the teacher's view of a fine-tuning input, the data
writer (the measured 1-5 digit files and the 1-8 digit rerun's), evaluate.py's unseen test sets and word_check.py's split
of the misses."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from experiments.addition import task
from internalize.config import PromptConfig
from internalize.data import write_jsonl
from internalize.teacher import given_generations
from internalize.views import prompt_ids


def test_problems_are_seeded_distinct_and_of_the_asked_lengths():
    pairs = task.problems(400, [1, 3, 8], seed=5)
    assert pairs == task.problems(400, [1, 3, 8], seed=5) != task.problems(400, [1, 3, 8], seed=6)
    assert len(set(pairs)) == 400
    lengths = [len(str(a)) for a, _ in pairs]
    assert all(len(str(a)) == len(str(b)) for a, b in pairs)
    assert 60 < lengths.count(1) <= 100 and abs(lengths.count(3) - lengths.count(8)) < 60  # 100 1-digit sums exist
    with pytest.raises(ValueError, match="only 100 distinct problems"):
        task.problems(101, [1], seed=0)
    assert not set(task.problems(50, [3], seed=5, exclude=set(pairs))) & set(pairs)


@pytest.mark.parametrize("a,b", [(29, 57), (5, 7), (9999, 1), (0, 0), (12345678, 87654329), (500, 499)])
def test_scratchpad_works_column_by_column_and_ends_with_the_sum(a, b):
    lines = task.scratchpad(a, b).split("\n")
    assert lines[-1] == f"Answer: {a + b}"
    steps = [re.fullmatch(r"(\d*)\+(\d*),(\d*),C(\d)", line.split(" | ")[-1]).groups() for line in lines[:-1]]
    assert lines[0] == f"{str(a).zfill(len(steps[0][1]))}+{steps[0][1]},,C0" and steps[-1][:2] == ("", "")
    for (left, right, done, carry), (left2, right2, done2, carry2), line in zip(steps[:-1], steps[1:], lines[1:],
                                                                            strict=False):
        total = int(left[-1]) + int(right[-1]) + int(carry)
        assert line.startswith(f"{left[-1]} + {right[-1]} + {carry} = {total} | ")
        assert (left2, right2, done2, carry2) == (left[:-1], right[:-1], str(total % 10) + done, str(total // 10))


def test_scorers():
    rec = task.record(29, 57)
    assert rec["output"] == "86"
    assert task.direct(rec, " 86 ") == task.direct(rec, "86") == 1.0
    assert task.direct(rec, "29+57,,C0\nAnswer: 86") == task.direct(rec, "85") == 0.0
    assert task.scratchpad_answer(rec, task.scratchpad(29, 57)) == 1.0
    assert task.scratchpad_answer(rec, "Answer: 85") == task.scratchpad_answer(rec, "86") == 0.0
    assert task.direct(task.record(4512309, 3208114), "7,720,423") == 1.0


def test_the_fine_tuning_input_is_the_teachers_view_of_the_question(tiny):
    _, tok = tiny
    rec = task.record(123, 456)
    teacher = PromptConfig(context=task.SCRATCHPAD, position="before_input")
    assert prompt_ids(tok, task.with_context(rec)["input"]) == prompt_ids(tok, rec["input"], teacher)


def test_make_data_sets_are_disjoint_and_word_problems_state_the_sum():
    data = task.make_data([1, 2], 40, 30, 10, seed=0)
    pairs = {name: {(r["a"], r["b"]) for r in rows} for name, rows in data.items()}
    assert pairs["finetune_scratchpad"] == pairs["finetune_direct"] and len(pairs["finetune_direct"]) == 40
    assert not (pairs["finetune_direct"] & pairs["distill"]) and not (pairs["distill"] & pairs["dev"])
    assert all(r["input"].startswith(task.SCRATCHPAD) for r in data["finetune_scratchpad"])
    for rec in task.word_problems(20, [3], seed=1):
        assert str(rec["a"]) in rec["input"] and str(rec["b"]) in rec["input"] and rec["output"] == str(rec["a"] + rec["b"])


RERUN = ["--digits", "1", "2", "3", "4", "5", "6", "7", "8", "--finetune", "3200", "--distill", "4000", "--dev", "80"]


def _read(folder) -> dict[str, list[dict]]:
    return {p.stem: [json.loads(line) for line in p.read_text().splitlines()] for p in sorted(folder.glob("*.jsonl"))}


def _lengths(rows: list[dict]) -> Counter:
    return Counter(task.digits_of(r) for r in rows)


@pytest.fixture(scope="module")
def data8(tmp_path_factory):
    """The 1-8 digit rerun's data, written by task.py's main with the README's options."""
    out = tmp_path_factory.mktemp("data8")
    task.main([*RERUN, "--out", str(out)])
    return out


def test_the_default_writer_still_writes_the_committed_1_to_5_digit_files(tmp_path, capsys):
    task.main(["--out", str(tmp_path)])
    assert "distill: 1500" in capsys.readouterr().out
    committed = sorted((task.HERE / "data").glob("*.jsonl"))
    assert [p.name for p in committed] == [p.name for p in sorted(tmp_path.glob("*.jsonl"))]
    for path in committed:  # byte for byte: the measured experiment's data
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name
    data = _read(tmp_path)
    assert set(_lengths(data["finetune_direct"])) == {1, 2, 3, 4, 5} and set(_lengths(data["distill"])) == {2, 3, 4, 5}


def test_the_writer_refuses_another_set_in_the_measured_data_folder(monkeypatch, capsys):
    monkeypatch.setattr(task, "write_data", lambda *args, **kwargs: pytest.fail("wrote into data/"))
    with pytest.raises(SystemExit):
        task.main(RERUN)
    assert "holds the measured 1-5 digit set" in capsys.readouterr().err


def test_the_1_to_8_digit_writer_covers_every_length_in_disjoint_sets(data8):
    data = _read(data8)
    assert {k: len(v) for k, v in data.items()} == {"dev": 80, "dev_scratchpad": 80, "distill": 4000, "finetune_direct": 3200,
                                                    "finetune_scratchpad": 3200, "multitask": 6400}
    pairs = {name: [(r["a"], r["b"]) for r in rows] for name, rows in data.items()}
    finetune, distill, dev = set(pairs["finetune_direct"]), set(pairs["distill"]), set(pairs["dev"])
    assert len(finetune) == 3200 and len(distill) == 4000 and len(dev) == 80  # no problem twice within a set
    assert not finetune & distill and not finetune & dev and not distill & dev
    assert pairs["finetune_scratchpad"] == pairs["finetune_direct"] and pairs["dev_scratchpad"] == pairs["dev"]
    assert data["multitask"] == data["finetune_scratchpad"] + data["finetune_direct"]
    # every length 2-8 is taught by distillation in roughly equal shares; the 100 one-digit problems all go to
    # fine-tuning first, as in the 1-5 digit data
    distill_lengths, finetune_lengths = _lengths(data["distill"]), _lengths(data["finetune_direct"])
    assert set(distill_lengths) == set(range(2, 9)) and min(distill_lengths.values()) > 450
    assert set(finetune_lengths) == set(range(1, 9)) and finetune_lengths[1] == 100
    assert {p for p in finetune if p[0] < 10} == task.all_problems(1)
    assert all(len(str(a)) == len(str(b)) for a, b in finetune | distill | dev)
    for rec in data["finetune_scratchpad"]:
        assert rec["input"].startswith(task.SCRATCHPAD) and task.scratchpad_answer(rec, rec["output"]) == 1.0
        assert len(rec["output"].split("\n")) == task.digits_of(rec) + 2  # first line, one per column, the answer
    assert all(task.direct(r, r["output"]) == 1.0 for r in data["distill"] + data["dev"])


def test_the_evaluation_of_the_rerun_tests_unseen_problems_at_every_length(data8):
    from experiments.addition import evaluate

    digits = list(range(1, 9))
    sets = evaluate.test_sets(40, 5, 200, seed=0, digits=digits, data=[data8])
    seen = {(r["a"], r["b"]) for rows in _read(data8).values() for r in rows}
    for d in digits:
        rows = sets[f"direct_{d}"]
        assert {task.digits_of(r) for r in rows} == {d} and len(sets[f"scratchpad_{d}"]) == 5
        assert len(rows) == (100 if d == 1 else 40)
        if d > 1:
            assert not {(r["a"], r["b"]) for r in rows} & seen
    assert {task.digits_of(r) for r in sets["word"]} == set(digits)
    default = evaluate.test_sets(10, 1, 5, seed=0)  # without the options: the measured 1-5 digit evaluation's lengths
    assert set(default) == {f"{k}_{d}" for k in ("direct", "scratchpad") for d in (1, 2, 3, 4, 5)} | {"word"}
    with pytest.raises(FileNotFoundError, match="write them first"):
        evaluate.test_sets(10, 1, 5, seed=0, data=[data8 / "missing"])


def test_add_joins_only_results_scored_on_the_same_problems(tmp_path):
    from experiments.addition import evaluate

    out = tmp_path / "addition8.json"
    sizes = {"seed": 0, "digits": [1, 2], "per_length": 2000, "word": 300}
    with pytest.raises(SystemExit, match="run without --add first"):
        evaluate._earlier(out, sizes)
    out.write_text(json.dumps({"command": "first", **sizes, "models": {"student": {"model": "m"}}}))
    assert evaluate._earlier(out, sizes)["models"] == {"student": {"model": "m"}}
    with pytest.raises(SystemExit, match=r"'per_length': \(2000, 200\)"):
        evaluate._earlier(out, {**sizes, "per_length": 200})


def test_scratchpads_reads_this_runs_cache_entries_and_scores_them_by_length(tmp_path):
    from experiments.addition import scratchpads

    data = tmp_path / "distill.jsonl"
    inputs = [task.record(12, 34), task.record(5, 6), task.record(123, 456)]
    data.write_text("".join(json.dumps(r) + "\n" for r in inputs))
    part = tmp_path / "cache" / "key1"
    part.mkdir(parents=True)
    # the teacher kept two of three answers (one right, one wrong); another run's entry is ignored
    part.joinpath("manifest.json").write_text(json.dumps({
        "records": [inputs[2], inputs[0]], "generations": ["...\nAnswer: 570", "...\nAnswer: 46"],
        "answers": [" 570", " 46"]}))  # written out of order: the file keeps the data's order
    other = tmp_path / "cache" / "key2"
    other.mkdir()
    other.joinpath("manifest.json").write_text(json.dumps({
        "records": [task.record(7, 8)], "generations": ["Answer: 15"], "answers": ["15"]}))
    rows, summary = scratchpads.collect(tmp_path / "cache", data)
    assert [(r["a"], r["correct"]) for r in rows] == [(12, True), (123, False)]
    write_jsonl(tmp_path / "given.jsonl", rows)  # the file a later run gives as teacher.generations_file
    assert given_generations(str(tmp_path / "given.jsonl")) == {
        inputs[0]["input"]: ["...\nAnswer: 46"], inputs[2]["input"]: ["...\nAnswer: 570"]}
    rows2, summary2 = scratchpads.collect(tmp_path / "cache", data, first=2)  # a run taught on the first 2 inputs
    assert [r["a"] for r in rows2] == [12] and set(summary2["by_length"]) == {"1", "2"}
    rows3, summary3 = scratchpads.collect(tmp_path / "cache", data, skip=1)  # the first input's generation was given
    assert [r["a"] for r in rows3] == [123] and set(summary3["by_length"]) == {"1", "3"}
    assert summary["inputs_found"] == 2 and summary["inputs"] == 3
    assert summary["by_length"] == {"1": {"inputs": 1, "kept": 0, "correct": 0, "accuracy": 0.0},
                                    "2": {"inputs": 1, "kept": 1, "correct": 1, "accuracy": 1.0},
                                    "3": {"inputs": 1, "kept": 1, "correct": 0, "accuracy": 0.0}}


def test_word_check_splits_misses_into_right_sum_with_text_wrong_and_none():
    from experiments.addition.word_check import kind

    rec = {"a": 600, "b": 531}
    assert kind(rec, "1,131") == "exact"
    assert kind(rec, "1131 apples") == "number_with_text"
    assert kind(rec, "about 1131 apples, I think") == "number_with_text"
    assert kind(rec, "1130 apples") == "wrong"
    assert kind(rec, "11310") == "wrong"
    assert kind(rec, "many apples") == "none"
