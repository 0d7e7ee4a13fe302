"""experiments/addition/task.py: problems, scratch-pads, scorers, and the teacher's view of a fine-tuning input."""

from __future__ import annotations

import re

import pytest

from experiments.addition import task
from internalize.config import PromptConfig
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
