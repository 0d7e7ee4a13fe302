"""compare.py and ``internalize compare``: the table holds each run's numbers (nested and flat metrics.json,
experiment records), the chain and wall time come from run.json, the plot is a PNG, bad runs are one line."""

from __future__ import annotations

import json

import pytest
from conftest import error_line, tiny_config_dict

from internalize import distill
from internalize.cli import main
from internalize.compare import Row, chain, load_runs, per_behaviour, plot, table
from internalize.config import InternalizeError, config_from_dict

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def chained_runs(tiny_model_dir, tmp_path_factory):
    """Two tiny distillations, the second starting from the first's artifact (a chain of two runs)."""
    root = tmp_path_factory.mktemp("runs")
    first = tiny_config_dict(tiny_model_dir, root / "first")
    first["teacher"]["cache_dir"] = ""  # module scope: keep the teacher cache out of the user's directory
    distill(config_from_dict(first))
    second = tiny_config_dict(root / "first" / "model", root / "second")
    second["teacher"] |= {"cache_dir": "", "context": "Answer politely."}
    second["eval"]["neutral_file"] = "builtin"  # a forgetting figure in run.json
    distill(config_from_dict(second))
    return root / "first", root / "second"


def _write(directory, metrics, info=None):
    directory.mkdir(parents=True)
    (directory / "metrics.json").write_text(json.dumps(metrics))
    if info is not None:
        (directory / "run.json").write_text(json.dumps(info))
    return directory


def _conditions(base, teacher, student, kl, score=True):
    def one(value, k):
        return {"n": 4, "agreement": value, "kl": k, **({"score": value} if score else {})}

    return {"base": one(base, 0.9), "teacher": one(teacher, 0.0), "student": one(student, kl)}


def _line(text: str, run: str, behaviour: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(run))
    return next(line for line in lines[start:] if f" {behaviour} " in line).split()


def test_real_runs_in_order_with_their_chain(chained_runs, tiny_model_dir, tmp_path, capsys):
    first, second = chained_runs
    out = tmp_path / "out"
    assert main(["-q", "compare", str(first), str(second), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for run in (first, second):
        metrics = json.loads((run / "metrics.json").read_text())["main"]
        info = json.loads((run / "run.json").read_text())
        cells = _line(text, str(run), "main")
        assert cells[:3] == [str(run), "main", "score"]
        assert cells[3:7] == [f"{metrics[c]['score']:.3f}" for c in ("base", "teacher", "student")] + [
            f"{metrics['student']['kl']:.4f}"]
        assert f"{info['total_s']:.1f}" in cells
    assert text.index(str(first)) < text.index(str(second))  # runs keep the order given
    assert _line(text, str(first), "main")[-1] == str(tiny_model_dir)  # started from the tiny model
    second_line = _line(text, str(second), "main")
    assert second_line[-3:] == [str(tiny_model_dir), ">", str(first)]  # the chain: the tiny model, then the first run
    forgetting = json.loads((second / "run.json").read_text())["forgetting"]
    assert f"{forgetting['agreement_with_original']:.2f}/{forgetting['kl_original_student']:.3f}" in second_line
    assert (out / "compare.png").read_bytes().startswith(PNG)
    assert (out / "compare.txt").read_text() == text
    rows = json.loads((out / "compare.json").read_text())
    assert [r["run"] for r in rows] == [str(first), str(second)]
    assert rows[1]["chain"] == [str(tiny_model_dir), str(first)]


def test_flat_and_nested_metrics_and_an_experiment_record(tmp_path, capsys, monkeypatch):
    flat = _write(tmp_path / "old", _conditions(0.1, 0.9, 0.8, 0.25),
                  {"timings": {"teacher": 1.5, "train": 2.25}})  # no total_s: the sum of the timings
    nested = _write(tmp_path / "multi", {"over": _conditions(0.0, 1.0, 0.95, 0.125),
                                         "keep": _conditions(0.3, 0.6, 0.55, 0.0625, score=False)},
                    {"total_s": 42.0, "forgetting": {"n": 20, "agreement_with_original": 0.5,
                                                     "kl_original_student": 0.2},
                     "started_from": {"model": "runs/old/model", "path": "/x/runs/old/model",
                                      "run": {"dir": "runs/old", "added": ["c"],
                                              "started_from": {"model": "smollm2-135m", "path": "/cache/x"}}}})
    record = tmp_path / "record.json"
    record.write_text(json.dumps({"wall_s": 249.1, "stage_s": {"a": 1.0}, "metrics": _conditions(0.0, 1.0, 0.7, 0.5)}))
    monkeypatch.chdir(tmp_path)
    assert main(["-q", "compare", "old", "multi", "record.json"]) == 0
    text = capsys.readouterr().out
    assert _line(text, "old", "main") == ["old", "main", "score", "0.100", "0.900", "0.800", "0.2500", "-", "3.8"]
    assert _line(text, "multi", "over") == ["multi", "over", "score", "0.000", "1.000", "0.950", "0.1250", "0.50/0.200",
                                            "42.0", "smollm2-135m", ">", "runs/old"]
    assert _line(text, "multi", "keep") == ["keep", "agreement", "0.300", "0.600", "0.550", "0.0625"]
    assert _line(text, "record.json", "main") == ["record.json", "main", "score", "0.000", "1.000", "0.700", "0.5000",
                                                  "-", "249.1"]
    assert (tmp_path / "compare.png").read_bytes().startswith(PNG)  # the default: compare.png in the working directory
    assert flat.is_dir() and nested.is_dir()


def test_the_python_api(tmp_path):
    run = _write(tmp_path / "r", {"main": _conditions(0.25, 1.0, 0.75, 0.5)})
    rows = load_runs([run])
    assert rows == [Row(str(run), "main", "score", 0.25, 1.0, 0.75, 0.5)]
    assert "0.750" in table(rows)
    assert plot(rows, tmp_path / "sub" / "p.png").read_bytes().startswith(PNG)
    assert per_behaviour(_conditions(0, 1, 1, 0), "x") == {"main": _conditions(0, 1, 1, 0)}
    assert chain({"model": "smollm2-135m", "path": "/p"}) == ["smollm2-135m"]
    assert chain(None) == []


def test_json_output_and_no_plot(tmp_path, capsys, monkeypatch):
    run = _write(tmp_path / "r", {"main": _conditions(0.25, 1.0, 0.75, 0.5)})
    monkeypatch.chdir(tmp_path)
    assert main(["-q", "compare", str(run), "--json", "--no-plot"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["student"] == 0.75 and rows[0]["student_kl"] == 0.5
    assert not (tmp_path / "compare.png").exists()
    assert main(["-q", "compare", str(run), "--plot", "x/y.png"]) == 0
    assert (tmp_path / "x" / "y.png").read_bytes().startswith(PNG)


def _failed(d):
    d.mkdir()
    (d / "run.json").write_text(json.dumps({"status": "failed", "after_stage": "train", "error": "OSError: full"}))


def _empty(d):
    d.mkdir()


def _broken_json(d):
    d.mkdir()
    (d / "metrics.json").write_text('{"main": {"base": ')


def _not_metrics(d):
    d.mkdir()
    (d / "metrics.json").write_text('{"main": {"base": 1}}')


def _not_a_record(d):
    d.with_suffix(".json").write_text('{"rates": []}')


@pytest.mark.parametrize("make, name, expected", [
    (None, "missing", "missing: no such run directory"),
    (_empty, "empty", "empty: no metrics.json; give the directory of a finished run"),
    (_failed, "failed", "failed: no metrics.json (the run failed after train: OSError: full)"),
    (_broken_json, "broken", "metrics.json: not valid JSON"),
    (_not_metrics, "odd", "metrics.json: not a run's metrics"),
    (_not_a_record, "record", "record.json: not a run directory, nor an experiment record"),
])
def test_a_bad_run_is_one_line_exit_2(tmp_path, capsys, monkeypatch, make, name, expected):
    good = _write(tmp_path / "good", {"main": _conditions(0.25, 1.0, 0.75, 0.5)})
    if make is not None:
        make(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    target = f"{name}.json" if make is _not_a_record else name
    assert main(["-q", "compare", str(good), target]) == 2
    assert expected in error_line(capsys)
    assert not (tmp_path / "compare.png").exists()  # nothing is written before every run is read
    with pytest.raises(InternalizeError):
        load_runs([target])
