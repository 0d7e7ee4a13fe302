"""report.py: metrics.json, run.json, answers.jsonl, plots and report.md for a run directory: one behaviour or
several, the forgetting check and the chain of runs."""

from __future__ import annotations

import json

from internalize.behaviours import Behaviour
from internalize.config import config_from_dict
from internalize.evaluation import ConditionResult
from internalize.report import _cell, write_report

CFG = config_from_dict({"model": {"name": "tiny"}, "teacher": {"context": "Line one.\nLine two."},
                        "eval": {"num_examples": 2}})
HELD_OUT = [{"input": "q1 | pipe"}, {"input": "q2\nnewline"}, {"input": "q3"}]
MAIN = [Behaviour(CFG.behaviours[0], [], HELD_OUT, None)]


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
    metrics = write_report(tmp_path, {"main": _results()}, MAIN, history, info, CFG)
    assert set(metrics) == {"main"} and set(metrics["main"]) == {"base", "teacher", "student"}
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
    write_report(tmp_path, {"main": _results(score=False)}, MAIN, [], {}, CFG)
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


def test_several_behaviours_get_a_section_each_and_one_plot(tmp_path):
    cfg = config_from_dict({"model": {"name": "tiny"}, "behaviours": [
        {"name": "over", "prompt": {"context": "End with Over.", "position": "after_input"}},
        {"name": "keep", "prompt": {"demonstrations": [{"input": "a", "output": "b"}] * 3,
                                    "demonstrations_per_context": 2, "combine": "route"}},
    ]})
    behaviours = [Behaviour(cfg.behaviours[0], [], HELD_OUT, None), Behaviour(cfg.behaviours[1], [], HELD_OUT[:1], None)]
    keep = _results()
    keep["student"] = ConditionResult({"n": 1, "agreement": 1.0, "kl": 0.125, "score": 0.75}, ["k1"])
    keep = {c: ConditionResult(r.metrics, r.outputs[:1]) for c, r in keep.items()}
    metrics = write_report(tmp_path, {"over": _results(), "keep": keep}, behaviours, [], {}, cfg)
    assert list(metrics) == ["over", "keep"]
    assert metrics["keep"]["student"]["score"] == 0.75
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    report = (tmp_path / "report.md").read_text()
    over, keep_section = report.split("## Behaviour `over`")[1].split("## Behaviour `keep`")
    assert "> End with Over." in over and "position `after_input`" in over and "| student | 0.500 |" in over
    assert "(demonstrations only)" in keep_section and "in 2 contexts of up to 2 (input i taught by context i mod n)" \
        in keep_section
    assert "| student | 0.750 | 1.000 | 0.125 |" in keep_section
    assert "## Side by side: `over`" in report and "## Side by side: `keep`" in report
    answers = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert [(a["behaviour"], a["input"], a["student"]) for a in answers] == [
        ("over", "q1 | pipe", "s1"), ("over", "q2\nnewline", "s2"), ("over", "q3", "s3"), ("keep", "q1 | pipe", "k1")]
    assert (tmp_path / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_forgetting_check_is_reported_with_its_figures(tmp_path):
    info = {"forgetting": {"n": 20, "agreement_with_original": 0.85, "kl_original_student": 0.3125}}
    write_report(tmp_path, {"main": _results()}, MAIN, [], info, CFG)
    report = (tmp_path / "report.md").read_text()
    assert "Forgetting check on 20 neutral prompts" in report
    assert "equal the original model's on 85% of them" in report
    assert "KL(original || student) on the original's answers 0.3125" in report
    write_report(tmp_path, {"main": _results()}, MAIN, [], {}, CFG)
    assert "Forgetting check" not in (tmp_path / "report.md").read_text()


def test_the_chain_lists_every_earlier_run_back_to_the_first_model(tmp_path):
    first = {"model": "smollm2-135m", "path": "/cache/smollm2"}
    second = {"model": "runs/a/model", "path": "runs/a/model", "run": {"dir": "runs/a", "added": ["End with Over."],
                                                                       "started_from": first}}
    third = {"model": "runs/b/model", "path": "runs/b/model", "run": {"dir": "runs/b", "added": ["over", "keep"],
                                                                      "started_from": second}}
    write_report(tmp_path, {"main": _results()}, MAIN, [], {"started_from": third}, CFG)
    report = (tmp_path / "report.md").read_text()
    chain = report.split("## Chain")[1].split("Context:")[0]
    assert chain.index("- `runs/b` added 'over'; 'keep'") < chain.index("- `runs/a` added 'End with Over.'") \
        < chain.index("- started from `smollm2-135m`")
    write_report(tmp_path, {"main": _results()}, MAIN, [], {"started_from": first}, CFG)
    assert "## Chain" not in (tmp_path / "report.md").read_text()  # a run from a plain model has no chain
