"""experiments/examples/capitals.py: the few-shot mapping task's splits, checker and input validator."""

from __future__ import annotations

import json
from pathlib import Path

from experiments.examples import capitals

ROOT = Path(__file__).resolve().parents[1]


def test_splits_are_seeded_disjoint_and_cover_every_country():
    a, b = capitals.split(0), capitals.split(1)
    assert a == capitals.split(0) and a != b
    names = [[r["input"] for r in a[part]] for part in ("pool", "dev", "test")]
    assert sorted(sum(names, [])) == sorted(capitals.CAPITALS)
    assert [len(n) for n in names] == [24, 20, len(capitals.CAPITALS) - 44]


def test_committed_splits_are_the_seeded_ones():
    for seed in (0, 1, 2):
        split = capitals.split(seed)
        for part in ("dev", "test"):
            rows = (ROOT / f"experiments/examples/data/seed{seed}/{part}.jsonl").read_text().splitlines()
            assert [json.loads(r) for r in rows] == split[part]


def test_exact_checker_wants_the_format_and_the_right_city():
    rec = capitals.record("France")
    assert rec == {"input": "France", "output": "Capital: Paris"}
    assert capitals.exact(rec, " Capital: Paris. ") == 1.0
    assert capitals.exact(capitals.record("Brazil"), "Capital: Brasília") == 1.0
    assert capitals.exact(rec, "The capital of France is Paris.") == capitals.exact(rec, "Capital: Lyon") == 0.0


def test_validator_accepts_short_names_only():
    assert capitals.is_country_like("New Zealand") and capitals.is_country_like("Peru")
    assert not capitals.is_country_like("the capital of France") and not capitals.is_country_like("1. Peru")
