"""checkpoint.py: a TrainState and the trainable weights on disk, atomic, checksummed, without pickle."""

from __future__ import annotations

import json

import pytest
import torch
from test_training import CPU, LORA, _targets

from internalize import checkpoint
from internalize.config import TrainConfig
from internalize.models import make_student
from internalize.sources import OfflineBatches
from internalize.training import fit


@pytest.fixture
def trained(tiny):
    model, tok = tiny
    student = make_student(model, LORA)
    cfg = TrainConfig(max_steps=3, batch_size=2, lr=1e-2, seed=0)
    state = fit(student, OfflineBatches(_targets(tok), tok.pad_token_id, 2, 1, 0), cfg, CPU)
    return student, state


def _equal(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_a_checkpoint_restores_the_state_and_the_weights(trained, tmp_path):
    student, state = trained
    path = checkpoint.save(tmp_path, student, state, keep=2)
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "state.json", "state.safetensors",
                                                      "weights.safetensors"]  # JSON and safetensors: no pickle
    saved = {n: p.detach().clone() for n, p in student.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for p in saved:
            dict(student.named_parameters())[p].add_(1.0)
    loaded = checkpoint.load(checkpoint.latest(tmp_path), student)
    for name, value in saved.items():
        assert torch.equal(dict(student.named_parameters())[name], value)
    assert loaded.step == state.step == 3 and loaded.history == state.history
    for field in ("optimizer", "scheduler", "batches", "rng"):
        assert _equal(getattr(loaded, field), getattr(state, field)), field
    assert isinstance(next(iter(loaded.optimizer["state"])), int)  # the optimizer's int keys come back as ints


def test_only_the_newest_are_kept_and_a_half_written_one_is_never_taken(trained, tmp_path):
    student, state = trained
    for step in (2, 4, 6):
        state.step = step
        checkpoint.save(tmp_path, student, state, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000004", "step-00000006"]
    (tmp_path / ".tmp-step-00000008-1").mkdir()  # a write killed before its rename
    (tmp_path / "step-00000010").mkdir()  # a directory without its manifest
    assert checkpoint.latest(tmp_path) == tmp_path / "step-00000006"


@pytest.mark.parametrize("damage", ["flip", "truncate", "manifest"])
def test_a_damaged_checkpoint_is_skipped(trained, tmp_path, damage):
    student, state = trained
    for step in (2, 4):
        state.step = step
        checkpoint.save(tmp_path, student, state, keep=2)
    newest = tmp_path / "step-00000004"
    target = newest / "state.safetensors"
    if damage == "flip":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:10])
    else:
        (newest / "manifest.json").write_text(json.dumps({"format": 99}))
    assert checkpoint.latest(tmp_path) == tmp_path / "step-00000002"


def test_a_checkpoint_of_other_weights_is_refused(trained, tiny_model_dir, tmp_path):
    from internalize.config import ModelConfig
    from internalize.models import load_model

    student, state = trained
    path = checkpoint.save(tmp_path, student, state, keep=1)
    other, _ = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu"))
    full = make_student(other, ModelConfig(name="unused", finetune="full"))
    with pytest.raises(ValueError, match="other trainable weights than the model"):
        checkpoint.load(path, full)
