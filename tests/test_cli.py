"""cli.py: help texts, a tiny in-process run, and one-line exit-2 errors that write nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import error_line, tiny_config_dict, write_yaml

from internalize.cli import main

SCRIPT = Path(sys.executable).with_name("internalize")


def _snapshot(directory: Path):
    return {p.relative_to(directory): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
            for p in sorted(directory.rglob("*"))}


# --- help ----------------------------------------------------------------------------------------------


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "distill" in out and "eval" in out and "synthesize" in out


@pytest.mark.parametrize("command", ["distill", "eval", "synthesize"])
def test_subcommand_help_shows_every_key_with_its_default(capsys, command):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "default" in out
    assert "--overwrite" in out and "(default: refuse)" in out
    assert "train.lr (default 0.0002)" in out
    assert "behaviours[].prompt.position (default 'system')" in out
    assert "teacher.position" in out  # the one-behaviour shorthand is documented too
    assert "data.synthesize.count (default 200)" in out
    if command == "eval":
        assert "--student" in out


def test_console_script_help():
    if not SCRIPT.is_file():
        pytest.skip("the internalize console script is not installed next to this python")
    result = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "distill" in result.stdout and "eval" in result.stdout


def test_missing_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2


# --- a tiny run ---------------------------------------------------------------------------------------------


def test_tiny_distill_then_eval(tiny_config_path, tmp_path, capsys):
    assert main(["-q", "distill", str(tiny_config_path)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) == {"main"}
    assert set(metrics["main"]) == {"base", "teacher", "student"}
    assert metrics["main"]["teacher"]["agreement"] == 1.0 and metrics["main"]["teacher"]["kl"] == 0.0
    run = tmp_path / "run"
    assert json.loads((run / "metrics.json").read_text()) == metrics
    assert (run / "model" / "config.json").is_file()

    # overrides and --overwrite reach the run
    assert main(["-q", "distill", str(tiny_config_path), "train.max_steps=1", "--overwrite"]) == 0
    capsys.readouterr()
    assert json.loads((run / "run.json").read_text())["steps"] == 1

    assert main(["-q", "eval", str(tiny_config_path), f"output.dir={tmp_path / 'eval'}",
                 "--student", str(run / "model")]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert set(evaluated) == {"main"}
    assert set(evaluated["main"]) == {"base", "teacher", "student"}
    assert (tmp_path / "eval" / "report.md").is_file()


@pytest.mark.parametrize("argv", [
    ["eval", "{cfg}", "--student", "DIR", "output.dir=x"],
    ["distill", "{cfg}", "--overwrite", "train.lr=1e-3"],
])
def test_overrides_after_options_as_documented(tmp_path, capsys, argv):
    missing = str(tmp_path / "missing.yaml")
    # the config does not exist: a correctly parsed command line ends in the one-line config error
    assert main([a.format(cfg=missing) for a in argv]) == 2
    assert "config file not found" in error_line(capsys)


# --- bad inputs: exit 2, one line on stderr naming the problem, nothing written --------------------------


def _bad_config(tiny_model_dir, tmp_path, edit) -> Path:
    raw = tiny_config_dict(tiny_model_dir, tmp_path / "run")
    edit(raw, tmp_path)
    return write_yaml(tmp_path / "bad.yaml", raw)


def _jsonl_with_bad_line(raw, tmp_path):
    path = tmp_path / "inputs.jsonl"
    path.write_text('{"input": "a"}\n{"input": "b"}\n{"input": "c", oops}\n{"input": "d"}\n')
    raw["data"]["inputs"] = []
    raw["data"]["train_file"] = str(path)


def _empty_input_set(raw, tmp_path):
    raw["data"]["inputs"] = []


def _missing_model(raw, tmp_path):
    raw["model"]["name"] = str(tmp_path / "no-such-model")


def _missing_train_file(raw, tmp_path):
    raw["data"]["inputs"] = []
    raw["data"]["train_file"] = str(tmp_path / "missing.jsonl")


def _bad_scorer_regex(raw, tmp_path):
    raw["eval"]["scorer_regex"] = "(unclosed"


def _as_behaviours(raw, name="main"):
    """The same run in the ``behaviours`` form."""
    behaviour = {"name": name, "prompt": {"context": raw["teacher"].pop("context")},
                 "inputs": raw["data"].pop("inputs"), "scorer_regex": raw["eval"].pop("scorer_regex")}
    raw["behaviours"] = [behaviour]
    return behaviour


def _behaviour_named_base(raw, tmp_path):
    _as_behaviours(raw, "base")


def _behaviour_missing_train_file(raw, tmp_path):
    behaviour = _as_behaviours(raw)
    del behaviour["inputs"]
    behaviour["train_file"] = str(tmp_path / "missing.jsonl")


def _behaviours_beside_shorthand(raw, tmp_path):
    _as_behaviours(raw)
    raw["teacher"]["context"] = "again"


BAD_CONFIGS = {
    "malformed-jsonl-line": (_jsonl_with_bad_line, ["inputs.jsonl:3", "malformed JSON"]),
    "empty-input-set": (_empty_input_set, ["no training inputs"]),
    "missing-model": (_missing_model, ["model.name=", "no-such-model", "no such directory"]),
    "missing-train-file": (_missing_train_file, ["data.train_file=", "missing.jsonl", "file not found"]),
    "bad-scorer-regex": (_bad_scorer_regex, ["eval.scorer_regex='(unclosed'"]),
    "behaviour-named-base": (_behaviour_named_base, ["bad.yaml: behaviours[0].name='base' is invalid"]),
    "behaviour-missing-train-file": (_behaviour_missing_train_file,
                                     ["behaviours[0].train_file=", "missing.jsonl", "file not found"]),
    "behaviours-beside-shorthand": (_behaviours_beside_shorthand, ["teacher.context is set beside behaviours"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
@pytest.mark.parametrize("command", ["distill", "eval"])
def test_bad_config_contents(tiny_model_dir, tmp_path, capsys, case, command):
    edit, expected = BAD_CONFIGS[case]
    path = _bad_config(tiny_model_dir, tmp_path, edit)
    argv = [command, str(path)] + (["--student", str(tiny_model_dir)] if command == "eval" else [])
    assert main(argv) == 2
    line = error_line(capsys)
    for text in expected:
        assert text in line
    assert not (tmp_path / "run").exists()


def test_missing_config_file(tmp_path, capsys):
    assert main(["distill", str(tmp_path / "nope.yaml")]) == 2
    line = error_line(capsys)
    assert f"{tmp_path / 'nope.yaml'}: config file not found" in line


def test_malformed_yaml(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("teacher:\n  context: hi\noutput:\n  dir: [unclosed\n")
    assert main(["distill", str(path), f"output.dir={tmp_path / 'run'}"]) == 2
    line = error_line(capsys)
    assert f"{path}: malformed YAML at line" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.lr_rate=0.1", "unknown config key 'train.lr_rate'"),
        ("trian.lr=0.1", "did you mean 'train'"),
        ("teacher.contxt=x", "did you mean 'teacher.context'"),
        ("train.lr=-1", "train.lr=-1"),
        ("teacher.max_new_tokens=0", "teacher.max_new_tokens=0 is invalid"),
        ("train.max_steps=many", "train.max_steps='many' is invalid: expected int"),
        ("train.lr", "override 'train.lr' is invalid"),
        ("eval.scorer=mod:fn", "eval.scorer_regex and eval.scorer are both set"),
    ],
)
def test_bad_override(tiny_config_path, tmp_path, capsys, override, expected):
    assert main(["distill", str(tiny_config_path), override]) == 2
    line = error_line(capsys)
    assert expected in line
    if "=" in override:
        assert str(tiny_config_path) in line  # names the file the overrides were applied to
    assert not (tmp_path / "run").exists()


def test_adapter_artifact_with_full_fine_tuning(tiny_config_path, tmp_path, capsys):
    assert main(["distill", str(tiny_config_path), "model.finetune=full", "output.save=adapter"]) == 2
    line = error_line(capsys)
    assert f"{tiny_config_path}: output.save='adapter' is invalid with model.finetune='full'" in line
    assert not (tmp_path / "run").exists()


def test_bad_key_in_yaml_file(tiny_model_dir, tmp_path, capsys):
    def edit(raw, _):
        raw["train"]["lr_rate"] = 0.1

    path = _bad_config(tiny_model_dir, tmp_path, edit)
    assert main(["distill", str(path)]) == 2
    line = error_line(capsys)
    assert f"{path}: unknown config key 'train.lr_rate'" in line
    assert not (tmp_path / "run").exists()


def test_out_of_range_value_in_yaml_file(tiny_model_dir, tmp_path, capsys):
    def edit(raw, _):
        raw["train"]["lr"] = -1

    path = _bad_config(tiny_model_dir, tmp_path, edit)
    assert main(["distill", str(path)]) == 2
    assert f"{path}: train.lr=-1" in error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_existing_run_without_overwrite(tiny_config_path, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text('{"old": true}\n')
    (run / "report.md").write_text("old report\n")
    before = _snapshot(run)
    assert main(["distill", str(tiny_config_path)]) == 2
    line = error_line(capsys)
    assert f"output.dir='{run}' already holds a run (metrics.json, report.md)" in line
    assert "--overwrite" in line
    assert _snapshot(run) == before


def test_eval_missing_student(tiny_config_path, tmp_path, capsys):
    assert main(["eval", str(tiny_config_path), "--student", str(tmp_path / "nothing")]) == 2
    assert "no such directory" in error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_yaml_invalid_override_value_is_one_line(tiny_config_path, tmp_path, capsys):
    assert main(["distill", str(tiny_config_path), "eval.scorer_regex=[0-9]+", "train.lr=-1"]) == 2
    error_line(capsys)


def test_error_from_a_real_process_is_one_line(tiny_model_dir, tmp_path):
    """The console script, not just main(): no log lines, warnings or traceback around the error."""
    if not SCRIPT.is_file():
        pytest.skip("the internalize console script is not installed next to this python")
    path = write_yaml(tmp_path / "cfg.yaml", tiny_config_dict(tmp_path / "no-such-model", tmp_path / "run"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([str(SCRIPT), "distill", str(path)], capture_output=True, text=True, timeout=120,
                            env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("internalize: error: model.name=")
    assert not (tmp_path / "run").exists()


# --- examples in the help, python -m internalize --------------------------------------------------------------

COMMANDS = ["distill", "eval", "synthesize", "generate", "compare"]


def test_help_shows_an_example_for_each_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "Examples:" in out
    for command in COMMANDS:
        assert command in out.split("Examples:")[0]  # listed as a subcommand
        assert f"  internalize {command} " in out.split("Examples:")[1]  # and shown in use


@pytest.mark.parametrize("command", COMMANDS)
def test_each_subcommand_help_shows_its_example(capsys, command):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "Example" in out and f"  internalize {command} " in out
    if command in ("generate", "compare"):
        assert "section.key=value" not in out  # no config keys for the commands that take no config
        assert "--json" in out and ("--compare" in out if command == "generate" else "--plot" in out)


def test_python_dash_m_internalize_is_the_command():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "internalize", "--help"], capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: internalize ")
    for command in COMMANDS:
        assert f"  internalize {command} " in result.stdout
    bad = subprocess.run([sys.executable, "-m", "internalize", "compare", "no-such-run-dir", "--no-plot"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.splitlines() == ["internalize: error: no-such-run-dir: no such run directory; give the directory "
                                       "of a finished run (output.dir)"]
