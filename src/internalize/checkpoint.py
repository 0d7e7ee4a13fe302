"""Checkpoints: a training run's state on disk, written atomically, checked before it is loaded.

A checkpoint is a directory ``OUT/checkpoints/step-NNNNNNNN/`` holding the trainable weights (the
LoRA adapters, or every weight when fine-tuning fully) and the ``TrainState`` (step, loss history,
optimizer, schedule, data position, random states). Tensors go to safetensors files, everything
else to JSON: nothing is pickled. The files are written under a temporary name, their sha256
recorded in ``manifest.json`` (written last), then the directory is renamed into place, so a
checkpoint is either complete or absent; the newest ``keep`` are kept. ``latest`` returns the
newest checkpoint whose files match their checksums, skipping (and logging) any that do not.

    path = save(run.dir / "checkpoints", model, state, keep=2)
    found = latest(run.dir / "checkpoints")          # None when there is none
    state = load(found, model)                       # weights restored in place
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from .training import TrainState

log = logging.getLogger(__name__)

FORMAT = 1
PREFIX = "step-"


def _split(value: Any, tensors: dict[str, torch.Tensor], key: str) -> Any:
    """``value`` with every tensor replaced by a reference into ``tensors`` (JSON-able then)."""
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(value, dict):
        if not all(isinstance(k, (str, int)) for k in value):
            raise TypeError(f"{key}: only str or int keys can be saved")
        return {"__dict__": [[k, _split(v, tensors, f"{key}.{k}")] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_split(v, tensors, f"{key}.{i}") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{key}: a {type(value).__name__} cannot be saved without pickle")


def _join(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of ``_split``."""
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        return {k: _join(v, tensors) for k, v in value["__dict__"]}
    if isinstance(value, list):
        return [_join(v, tensors) for v in value]
    return value


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _trainable(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def save(directory: Path, model: PreTrainedModel, state: TrainState, keep: int) -> Path:
    """Write the checkpoint of ``state.step`` (atomically) and remove all but the newest ``keep``."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{PREFIX}{state.step:08d}"
    tmp = directory / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in _trainable(model).items()}, tmp / "weights.safetensors")
    tensors: dict[str, torch.Tensor] = {}
    fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}  # asdict would copy every tensor
    (tmp / "state.json").write_text(json.dumps({"format": FORMAT, "state": _split(fields, tensors, "state")}))
    save_file(tensors, tmp / "state.safetensors")
    files = {name: _sha256(tmp / name) for name in ("weights.safetensors", "state.safetensors", "state.json")}
    (tmp / "manifest.json").write_text(json.dumps({"format": FORMAT, "step": state.step, "sha256": files}))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(directory.glob(f"{PREFIX}*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint at step %d: %s", state.step, final)
    return final


def _verified(path: Path) -> bool:
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        return manifest.get("format") == FORMAT and all(_sha256(path / name) == digest
                                                        for name, digest in manifest["sha256"].items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def latest(directory: Path) -> Path | None:
    """The newest complete checkpoint whose files match their checksums (others are logged and skipped)."""
    for path in sorted(directory.glob(f"{PREFIX}*"), reverse=True):
        if _verified(path):
            return path
        log.warning("checkpoint %s is incomplete or corrupt (checksums); skipping it", path)
    return None


def load(path: Path, model: PreTrainedModel) -> TrainState:
    """Restore the trainable weights of ``model`` in place and return the checkpoint's ``TrainState``."""
    try:
        weights = load_file(path / "weights.safetensors")
        fields = _join(json.loads((path / "state.json").read_text())["state"], load_file(path / "state.safetensors"))
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise ValueError(f"checkpoint {path} cannot be read ({e})") from None
    trainable = _trainable(model)
    if set(weights) != set(trainable):
        raise ValueError(f"checkpoint {path} holds other trainable weights than the model ({len(weights)} tensors "
                         f"against {len(trainable)}); was it written with another model.finetune or LoRA setting?")
    with torch.no_grad():
        for name, p in trainable.items():
            p.copy_(weights[name])
    return TrainState(**fields)
