"""Bad input, tried systematically (hypothesis): config files, ``a.b=c`` overrides, JSONL inputs, the CLI.

Every generated input must end in a config (or records) or in one ``InternalizeError`` line naming
the file, line or key: never another exception. ``INTERNALIZE_TALLY=FILE`` makes the tests count
what each category of input got (RELIABILITY.md's figures):

    INTERNALIZE_TALLY=experiments/reliability/results/bad_inputs.json INTERNALIZE_EXAMPLES=1000 \
        python -m pytest tests/test_bad_inputs.py
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import json
import os
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config_dict, write_yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from internalize import cli, pipeline
from internalize.config import (
    SHORTHAND,
    BehaviourConfig,
    Config,
    InternalizeError,
    _field_types,
    config_from_dict,
    load_config,
)
from internalize.data import read_jsonl

EXAMPLES = int(os.environ.get("INTERNALIZE_EXAMPLES", "150"))  # per category; more for a longer search
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TALLY: defaultdict[str, Counter] = defaultdict(Counter)


def teardown_module() -> None:
    if os.environ.get("INTERNALIZE_TALLY"):
        path = Path(os.environ["INTERNALIZE_TALLY"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({k: dict(v) for k, v in sorted(TALLY.items())}, indent=2) + "\n")


def _outcome(category: str, fn, where: str) -> None:
    """Run ``fn``: it returns, or raises one InternalizeError line that starts with ``where``. Count which."""
    try:
        fn()
    except InternalizeError as e:
        message = str(e)
        assert "\n" not in message and message.startswith(where), message
        kind = next((k for k in KINDS if k in message), "other")
        TALLY[category][f"one-line error: {kind}"] += 1
    else:
        TALLY[category]["accepted"] += 1


KINDS = ("not UTF-8", "malformed YAML", "malformed JSON", "given twice", "unknown config key", "must be a mapping",
         "is not a config section", "has no entry", "use section.key=value", "expected", "is invalid", "both set",
         "is set beside behaviours", "is missing", "used twice", "needs a non-empty string field 'input'")


# --- config files --------------------------------------------------------------------------------------------

SECTIONS = {f.name: _field_types(Config)[f.name] for f in dataclasses.fields(Config)}
KEYS = {name: [f.name for f in dataclasses.fields(tp)] + list(SHORTHAND.get(name, ()))
        for name, tp in SECTIONS.items() if dataclasses.is_dataclass(tp)}
BEHAVIOUR_KEYS = [f.name for f in dataclasses.fields(BehaviourConfig) if f.name != "scorer"]  # nothing imported
SAFE = {"scorer", "validator", "contexts"}  # keys that would import user code or nest entries: generated apart
LEAF = (st.none() | st.booleans() | st.integers(-(10**15), 10**15) | st.floats() | st.text(max_size=12)
        | st.sampled_from(["", "0", "-1", "1e400", "nan", "true", "system", "lora", "[a, b]", "{x: 1}"]))
VALUE = st.recursive(LEAF, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                          max_size=3), max_leaves=6)


def _section(name: str):
    keys = st.sampled_from([k for k in KEYS[name] if k not in SAFE] + ["", "lr_rate", "contxt", "x"])
    return st.dictionaries(keys, VALUE, max_size=4)


BEHAVIOUR = st.dictionaries(st.sampled_from(BEHAVIOUR_KEYS + ["context", "nam"]), VALUE, max_size=4) | st.fixed_dictionaries(
    {"name": st.text(max_size=8), "prompt": st.dictionaries(st.sampled_from(["context", "position", "combine", "x"]),
                                                            VALUE, max_size=3)})
DOCUMENT = st.fixed_dictionaries({}, optional={
    **{name: _section(name) | VALUE for name in KEYS}, "behaviours": st.lists(BEHAVIOUR, max_size=3) | VALUE,
    "trian": VALUE})


def _write(data: bytes) -> Path:
    fd, name = tempfile.mkstemp(suffix=".yaml")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Path(name)


@SETTINGS
@given(DOCUMENT)
def test_generated_config_files_load_or_name_the_key(document):
    path = _write(yaml.safe_dump(document, allow_unicode=True).encode())
    try:
        _outcome("config file: generated sections and values", lambda: load_config(path), f"{path}: ")
    finally:
        path.unlink()


VALID = {"model": {"name": "m"}, "teacher": {"context": "c"}, "data": {"inputs": ["a", "b"], "num_eval": 1},
         "train": {"max_steps": 2}}


@SETTINGS
@given(st.sampled_from(sorted(f"{s}.{k}" for s, keys in KEYS.items() for k in keys if k not in SAFE)), VALUE)
def test_a_valid_config_with_one_key_changed(key, value):
    section, name = key.split(".")
    document = json.loads(json.dumps(VALID))
    document.setdefault(section, {})[name] = value
    path = _write(yaml.safe_dump(document, allow_unicode=True).encode())
    try:
        _outcome("config file: a valid config with one key set to a generated value", lambda: load_config(path),
                 f"{path}: ")
    finally:
        path.unlink()


@SETTINGS
@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_arbitrary_text_as_a_config_file(text):
    path = _write(text.encode("utf-8"))
    try:
        _outcome("config file: arbitrary text", lambda: load_config(path), f"{path}: ")
    finally:
        path.unlink()


@SETTINGS
@given(st.binary(min_size=1, max_size=200))
def test_arbitrary_bytes_as_a_config_file(data):
    path = _write(data)
    try:
        _outcome("config file: arbitrary bytes (non-UTF-8 included)", lambda: load_config(path), f"{path}: ")
    finally:
        path.unlink()


@pytest.mark.parametrize("text, line", [("train:\n  lr: 1\n  lr: 2\n", 3), ("teacher: {}\nteacher: {}\n", 2)])
def test_a_key_given_twice_is_refused_with_its_line(text, line, tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    with pytest.raises(InternalizeError, match=rf"malformed YAML at line {line}; .*given twice"):
        load_config(path)


# --- overrides -----------------------------------------------------------------------------------------------

DOTTED = sorted(f"{section}.{key}" for section, keys in KEYS.items() for key in keys if key not in SAFE)


@SETTINGS
@given(st.text(max_size=40))
def test_arbitrary_override_strings(override):
    _outcome("override: arbitrary string", lambda: load_config(None, ["teacher.context=c", override]), "overrides: ")


@SETTINGS
@given(st.sampled_from(DOTTED + ["behaviours.0.name", "train.lr.x", "data.synthesize.count", "a.b.c"]),
       st.text(max_size=20) | st.sampled_from(["-1", "0", "1e400", "nan", "inf", "[", "[1, 2]", "{a: 1}", "true",
                                               "99999999999999999999999"]))
def test_generated_overrides_of_known_keys(key, value):
    _outcome("override: known key, generated value", lambda: load_config(None, ["teacher.context=c", f"{key}={value}"]),
             "overrides: ")


# --- JSONL inputs --------------------------------------------------------------------------------------------

JSON_VALUE = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                              st.sampled_from(["input", "output", "x"]), inner, max_size=3), max_leaves=5)
LINE = (st.binary(max_size=30) | st.text(max_size=30).map(str.encode) | JSON_VALUE.map(lambda v: json.dumps(v).encode())
        | st.text(max_size=20).map(lambda t: json.dumps({"input": t}).encode()))


@SETTINGS
@given(st.lists(LINE.filter(lambda b: b"\n" not in b and b"\r" not in b), min_size=1, max_size=5))
def test_generated_jsonl_lines_are_read_or_name_the_line(lines):
    path = _write(b"\n".join(lines))
    try:
        _outcome("JSONL input file: generated lines", lambda: read_jsonl(path, "data.train_file"), f"{path}:")
    finally:
        path.unlink()


def test_a_non_utf8_line_names_the_file_and_line(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"input": "fine"}\n{"input": "caf\xe9"}\n')
    with pytest.raises(InternalizeError, match=rf"^{path}:2: not UTF-8 text \(byte 0xe9 at column 15\); save the file as "
                                               "UTF-8$"):
        read_jsonl(path, "data.train_file")


# --- the command line, end to end ----------------------------------------------------------------------------


def _cli(args: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(args)
    return code, err.getvalue()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOCUMENT)
def test_the_cli_answers_generated_configs_with_one_line_and_exit_2(document):
    document = {**document, "model": {"name": "/nonexistent/model"}}  # a valid config still stops before a model
    document["output"] = {"dir": tempfile.mkdtemp()}
    path = _write(yaml.safe_dump(document, allow_unicode=True).encode())
    try:
        code, err = _cli(["-q", "distill", str(path)])
    finally:
        path.unlink()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("internalize: error: "), err
    assert "Traceback" not in err
    TALLY["command line: generated configs"]["exit 2, one line"] += 1


def test_an_output_directory_that_cannot_be_written_is_one_line(tiny_model_dir, tmp_path, monkeypatch):
    import internalize.run

    def refuse(cfg, path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(internalize.run, "save_config", refuse)  # as a read-only directory does (root ignores modes)
    path = write_yaml(tmp_path / "cfg.yaml", tiny_config_dict(tiny_model_dir, tmp_path / "run"))
    code, err = _cli(["-q", "distill", str(path)])
    assert code == 2 and err.strip() == (f"internalize: error: output.dir='{tmp_path / 'run'}' is not writable "
                                         "(Permission denied); choose another output.dir")


def test_a_full_disk_after_training_is_one_line_and_keeps_the_model(tiny_model_dir, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "metrics.json"))

    monkeypatch.setattr(pipeline, "write_report", full)
    path = write_yaml(tmp_path / "cfg.yaml", tiny_config_dict(tiny_model_dir, tmp_path / "run"))
    code, err = _cli(["-q", "distill", str(path)])
    assert code == 2 and err.strip() == (f"internalize: error: {tmp_path / 'run' / 'metrics.json'}: No space left on "
                                         "device; free space or fix the permissions, then run again (a run with "
                                         "checkpoints continues with --resume)")
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()  # nothing already written is lost
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("name", ["../x", "a/b", "..", "", "base"])
def test_a_behaviour_name_that_is_a_path_or_a_condition_is_refused(name):
    with pytest.raises(InternalizeError, match=r"behaviours\[0\]\.name="):
        config_from_dict({"behaviours": [{"name": name, "prompt": {"context": "c"}}]})
