"""Killed runs resume to the result of an uninterrupted one (run.py, checkpoint.py, training.py).

Each kill test starts a tiny ``internalize distill`` in a child process that sends itself SIGKILL at
one point (nothing is cleaned up, as after a crash or an out-of-memory kill), then resumes the run
with ``output.resume`` and compares the final metrics and weights with an uninterrupted run of the
same config and seed. Checkpoints every 2 of 6 steps, LoRA with dropout (so the random state counts).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import tiny_config_dict, write_yaml
from safetensors.torch import load_file

import internalize.teacher
from internalize import distill
from internalize.config import InternalizeError, load_config

CHILD = textwrap.dedent('''
    import os, signal, sys
    import internalize.checkpoint as checkpoint
    import internalize.pipeline as pipeline
    from internalize.cli import main

    point, config = sys.argv[1], sys.argv[2]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "teacher":  # in the third of the teacher's three parts (two are done and cached)
        import internalize.teacher as teacher
        real_part, parts = teacher._answer_part, []
        def answer_part(*args, **kwargs):
            parts.append(1)
            if len(parts) == 3:
                die()
            return real_part(*args, **kwargs)
        teacher._answer_part = answer_part
    elif point == "training":  # right after the checkpoint of step 4
        real_save = checkpoint.save
        def save(directory, model, state, keep):
            path = real_save(directory, model, state, keep)
            if state.step == 4:
                die()
            return path
        checkpoint.save = save
    elif point == "checkpoint_write":  # half-way through writing the checkpoint of step 4
        real_file = checkpoint.save_file
        def save_file(tensors, path):
            real_file(tensors, path)
            if "step-00000004" in str(path) and path.name == "state.safetensors":
                die()
        checkpoint.save_file = save_file
    elif point == "artifact":  # half-way through writing the model
        def save_artifact(model, tokenizer, out, mode, base_dir, **_):
            out.mkdir(parents=True, exist_ok=True)
            (out / "model.safetensors").write_bytes(b"half a file")
            die()
        pipeline.save_artifact = save_artifact
    sys.exit(main(["-q", "distill", config]))
''')


def _config(tiny_model_dir, out, **train):
    raw = tiny_config_dict(tiny_model_dir, out)
    raw["model"]["lora_dropout"] = 0.1
    raw["train"].update(max_steps=6, batch_size=2, save_every=2, keep_checkpoints=2, **train)
    raw["teacher"]["shard_inputs"] = 3  # the 8 training inputs are taught in 3 parts
    return raw


def _weights(run_dir):
    return load_file(run_dir / "model" / "model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory):
    """The same run, never stopped: (metrics, weights)."""
    out = tmp_path_factory.mktemp("whole") / "run"
    metrics = distill(load_config(write_yaml(out.parent / "cfg.yaml", _config(tiny_model_dir, out))))
    return metrics, _weights(out)


def _kill(point, config_path):
    env = {**os.environ, "INTERNALIZE_CACHE": str(internalize.teacher.cache_root())}  # this test's teacher cache
    child = subprocess.run([sys.executable, "-c", CHILD, point, str(config_path)], env=env, capture_output=True,
                           text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]


# 1e-5: the resumed run trains in another process, and on some CPUs the kernels are not bitwise the same from
# process to process (an AMD EPYC with AVX2 only: 1.2e-6 to 1.8e-6 apart); a lost or repeated step moves the
# tiny model's weights by orders of magnitude more
def _assert_same_result(out, uninterrupted, atol: float = 1e-5):
    metrics, weights = uninterrupted
    resumed_metrics = json.loads((out / "metrics.json").read_text())
    assert resumed_metrics.keys() == metrics.keys()
    for name, conditions in metrics.items():
        for condition, m in conditions.items():
            assert resumed_metrics[name][condition] == pytest.approx(m, abs=1e-6)
    resumed = _weights(out)
    assert set(resumed) == set(weights)
    for name, value in weights.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=atol)


@pytest.mark.parametrize("point", ["teacher", "training", "checkpoint_write", "artifact"])
def test_a_run_killed_anywhere_resumes_to_the_uninterrupted_result(point, tiny_model_dir, tmp_path, uninterrupted,
                                                                   caplog):
    out = tmp_path / "run"
    path = write_yaml(tmp_path / "cfg.yaml", _config(tiny_model_dir, out))
    _kill(point, path)
    assert not (out / "metrics.json").exists()
    with pytest.raises(InternalizeError, match="--resume to continue it" if point != "teacher" else "already holds"):
        distill(load_config(path))  # neither silently restarted nor overwritten
    steps = sorted(p.name for p in (out / "checkpoints").glob("step-*")) if (out / "checkpoints").exists() else []
    expected = {"teacher": [], "training": ["step-00000002", "step-00000004"], "checkpoint_write": ["step-00000002"],
                "artifact": ["step-00000004", "step-00000006"]}[point]
    assert steps == expected
    if point == "checkpoint_write":
        assert list((out / "checkpoints").glob(".tmp-step-00000004-*"))  # the half-written one, never loaded
    with caplog.at_level("INFO", logger="internalize.teacher"):
        distill(load_config(path, ["output.resume=true"]))
    _assert_same_result(out, uninterrupted)
    if point == "teacher":  # the teacher stage continued after its last complete part
        assert "teacher[main]: reused 2 of 3 parts of the teacher's targets" in caplog.text
    info = json.loads((out / "run.json").read_text())
    if steps:
        assert info["resumed_from"]["step"] == int(steps[-1].split("-")[1])
    else:
        assert "resumed_from" not in info


def test_a_killed_run_resumes_to_the_same_result_with_the_generation_engine(tiny_model_dir, tmp_path):
    """teacher.engine=static: the engine's teacher, made in the killed child (a process of its own), trains the same
    weights as the uninterrupted run's, made in this one."""
    whole = _config(tiny_model_dir, tmp_path / "whole")
    whole["teacher"].update(engine="static", cache_dir=str(tmp_path / "whole-cache"))  # the child makes its own
    uninterrupted = distill(load_config(write_yaml(tmp_path / "whole.yaml", whole))), _weights(tmp_path / "whole")
    raw = _config(tiny_model_dir, tmp_path / "run")
    raw["teacher"]["engine"] = "static"
    path = write_yaml(tmp_path / "cfg.yaml", raw)
    _kill("training", path)
    distill(load_config(path, ["output.resume=true"]))
    # the fused CPU attention of the engine's shared prefix is not bitwise the same from process to process on
    # every CPU: on an AMD EPYC (no AMX) the two teachers' targets trained weights 6e-6 apart
    _assert_same_result(tmp_path / "run", uninterrupted, atol=2e-5)


def test_a_corrupt_checkpoint_is_skipped_for_the_one_before(tiny_model_dir, tmp_path, uninterrupted, caplog):
    out = tmp_path / "run"
    path = write_yaml(tmp_path / "cfg.yaml", _config(tiny_model_dir, out))
    _kill("training", path)
    weights = out / "checkpoints" / "step-00000004" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the newest checkpoint
    weights.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        distill(load_config(path, ["output.resume=true"]))
    assert "step-00000004 is incomplete or corrupt" in caplog.text
    assert json.loads((out / "run.json").read_text())["resumed_from"]["step"] == 2
    _assert_same_result(out, uninterrupted)


def test_resume_refuses_another_config_and_a_finished_run(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    path = write_yaml(tmp_path / "cfg.yaml", _config(tiny_model_dir, out))
    _kill("training", path)
    with pytest.raises(InternalizeError, match=r"was started with train\.lr=0\.001, not 0\.002; resume with the config"):
        distill(load_config(path, ["output.resume=true", "train.lr=0.002"]))
    assert (out / "checkpoints" / "step-00000004").is_dir()  # the refusal touched nothing
    distill(load_config(path, ["output.resume=true"]))
    with pytest.raises(InternalizeError, match="holds a finished run"):
        distill(load_config(path, ["output.resume=true"]))
    with pytest.raises(InternalizeError, match="holds no run to resume"):
        distill(load_config(path, ["output.resume=true", f"output.dir={tmp_path / 'none'}"]))
