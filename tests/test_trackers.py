"""train.report_to: the loss, learning rate and padding of every step and the evaluation metrics at the end go to
Accelerate's trackers (TensorBoard here, read back offline); unknown names are refused at load; off by default."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import tiny_config_dict, write_yaml

from internalize import distill, pipeline, tracking
from internalize.config import InternalizeError, config_from_dict, load_config

pytest.importorskip("tensorboard")


def _scalars(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_gets_every_steps_loss_and_the_metrics(tiny_model_dir, tmp_path, monkeypatch):
    states = []
    fit = pipeline.fit
    monkeypatch.setattr(pipeline, "fit", lambda *a, **kw: states.append(fit(*a, **kw)) or states[-1])
    out = tmp_path / "run"
    raw = tiny_config_dict(tiny_model_dir, out)
    raw["train"]["report_to"] = ["tensorboard"]
    metrics = distill(config_from_dict(raw))
    logdir = out / "logs" / tracking.TRACKER_PROJECT
    assert list(logdir.glob("events.out.tfevents.*"))
    scalars = _scalars(logdir)
    history = states[0].history
    assert len(history) == raw["train"]["max_steps"]
    for key in ("loss", "lr", "padding"):
        logged = scalars[f"train/{key}"]
        assert [step for step, _ in logged] == [h["step"] for h in history]
        assert [value for _, value in logged] == pytest.approx([h[key] for h in history], rel=1e-6)  # float32
    for condition, m in metrics["main"].items():
        for key in ("score", "agreement", "kl"):
            assert scalars[f"eval/main/{condition}/{key}"] == [(len(history), pytest.approx(m[key], rel=1e-6, abs=1e-9))]


def test_the_trackers_are_closed_when_the_run_fails(tiny_model_dir, tmp_path, monkeypatch):
    from accelerate.tracking import TensorBoardTracker

    closed = []
    finish = TensorBoardTracker.finish
    monkeypatch.setattr(TensorBoardTracker, "finish", lambda self: closed.append(self) or finish(self))

    def broken_fit(*args, on_step, **kwargs):
        on_step({"step": 1, "loss": 2.5, "lr": 1e-3, "padding": 0.0})
        raise RuntimeError("the training broke")

    monkeypatch.setattr(pipeline, "fit", broken_fit)
    raw = tiny_config_dict(tiny_model_dir, tmp_path / "run")
    raw["train"]["report_to"] = ["tensorboard"]
    with pytest.raises(RuntimeError, match="the training broke"):
        distill(config_from_dict(raw))
    assert len(closed) == 1
    assert _scalars(tmp_path / "run" / "logs" / tracking.TRACKER_PROJECT)["train/loss"] == [(1, 2.5)]


def test_an_unknown_tracker_is_refused_at_load(tiny_model_dir, tmp_path):
    path = write_yaml(tmp_path / "c.yaml", tiny_config_dict(tiny_model_dir, tmp_path / "run"))
    with pytest.raises(InternalizeError) as e:
        load_config(path, ["train.report_to=[tensorboard, nosuchtracker]"])
    message = str(e.value)
    assert "\n" not in message and "train.report_to=" in message and "nosuchtracker" in message
    assert "tensorboard, trackio, wandb" in message  # Accelerate's names, listed
    assert load_config(path, ["train.report_to=tensorboard"]).train.report_to == ["tensorboard"]
    assert load_config(path).train.report_to == []  # off by default


def test_no_trackers_import_nothing_of_tensorboard(tmp_path):
    code = ("import sys; from pathlib import Path; from internalize import tracking; "
            "from internalize.config import config_from_dict; from internalize.runtime import Runtime; "
            "cfg = config_from_dict({'teacher': {'context': 'x'}})\n"
            "with tracking.trackers(cfg, Path('unused'), Runtime.local('cpu')) as track: track({'a': 1.0}, 1)\n"
            "assert not Path('unused').exists()\n"
            "assert not [m for m in sys.modules if 'tensorboard' in m], sorted(m for m in sys.modules if 'tensorboard' in m)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
