"""report.py: metrics.json, run.json, plots and report.md for a run directory."""

from __future__ import annotations

import json

from internalize.config import config_from_dict
from internalize.evaluation import ConditionResult
from internalize.report import _cell, write_report

CFG = config_from_dict({"model": {"name": "tiny"}, "teacher": {"context": "Line one.\nLine two."},
                        "eval": {"num_examples": 2}})
HELD_OUT = [{"input": "q1 | pipe"}, {"input": "q2\nnewline"}, {"input": "q3"}]


def _results(score: bool = True):
    def metrics(agreement, kl, s):
        m = {"n": 3, "agreement": agreement, "kl": kl}
        if score:
            m["score"] = s
        return m

    return {
        "base": ConditionResult(metrics(0.0, 1.25, 0.0), ["b1", "b2", "b3"]),
        "teacher": ConditionResult(metrics(1.0, 0.0, 1.0), ["t1", "t2", "t3"]),
        "student": ConditionResult(metrics(0.5, 0.25, 0.5), ["s1", "s2", "s3"]),
    }


def test_write_report_files_and_table(tmp_path):
    history = [{"step": 1, "loss": 2.0, "lr": 1e-3}, {"step": 2, "loss": 1.0, "lr": 5e-4}]
    info = {"train_answers": 9, "dropped": {"answer not extracted": 1}, "timings": {"load": 1.234, "train": 5.0}}
    metrics = write_report(tmp_path, {"main": _results()}, history, {"main": HELD_OUT}, info, CFG)
    assert set(metrics) == {"base", "teacher", "student"}
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert json.loads((tmp_path / "run.json").read_text()) == info
    for name in ("metrics.png", "loss.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (tmp_path / "report.md").read_text()
    assert "| condition | score (user scorer) | agreement with teacher | KL(teacher || model) |" in report
    assert "| base | 0.000 | 0.000 | 1.250 |" in report
    assert "| teacher | 1.000 | 1.000 | 0.000 |" in report
    assert "| student | 0.500 | 0.500 | 0.250 |" in report
    assert "> Line one.\n> Line two." in report
    assert "9 teacher answers for training, 3 held-out inputs" in report
    assert "Loss 2.0000 -> 1.0000 over 2 steps." in report
    assert "![loss](loss.png)" in report and "![metrics](metrics.png)" in report
    assert "answer not extracted" in report
    assert "load 1.2" in report
    # side by side: num_examples rows, table-safe cells
    assert "| q1 \\| pipe | b1 | t1 | s1 |" in report
    assert "| q2 newline | b2 | t2 | s2 |" in report
    assert "q3" not in report


def test_write_report_without_history_or_scorer(tmp_path):
    write_report(tmp_path, {"main": _results(score=False)}, [], {"main": HELD_OUT}, {}, CFG)
    assert not (tmp_path / "loss.png").exists()
    assert (tmp_path / "metrics.png").is_file()
    report = (tmp_path / "report.md").read_text()
    assert "| condition | agreement with teacher | KL(teacher || model) |" in report
    assert "score (user scorer)" not in report
    assert "Loss " not in report


def test_cell_escapes_and_truncates():
    assert _cell("a|b\nc") == "a\\|b c"
    long = _cell("x" * 500, limit=10)
    assert len(long) == 10 and long.endswith("…")
