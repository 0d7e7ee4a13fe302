"""Inputs: a behaviour's unlabeled task inputs from a JSONL file or the YAML, split into train and held-out.

Each record is a dict with an ``"input"`` string; extra fields are kept for scorers.

    train, held_out = load_inputs(cfg.behaviours[0], cfg.data)
    write_jsonl("inputs.jsonl", [{"input": "..."}])
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .config import BehaviourConfig, DataConfig, InternalizeError

Record = dict[str, Any]


def read_jsonl(path: str | Path, key: str) -> list[Record]:
    """Read ``{"input": ...}`` records; a bad line raises an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise InternalizeError(f"{key}='{path}': file not found; check the path")
    records = []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InternalizeError(f"{path}:{number}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                                   "save the file as UTF-8") from None
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InternalizeError(
                f"{path}:{number}: malformed JSON ({e.msg}); each line must be {{\"input\": \"...\"}}"
            ) from None
        records.append(_check(record, f"{path}:{number}"))
    return records


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` (parents created) through a temporary file: a reader never sees half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_jsonl(path: str | Path, records: Iterable[Record]) -> str:
    """Write one JSON object per line (``write_atomic``); returns the path as a string, for a config."""
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return str(path)


def _check(record: Any, where: str) -> Record:
    if isinstance(record, str):
        record = {"input": record}
    if not isinstance(record, dict) or not isinstance(record.get("input"), str) or not record["input"].strip():
        raise InternalizeError(f"{where}: a record needs a non-empty string field 'input', e.g. {{\"input\": \"...\"}}")
    return record


def read_inputs(behaviour: BehaviourConfig) -> tuple[list[Record], list[Record]]:
    """Parse a behaviour's (train, held-out) records as given, before any split."""
    if behaviour.train_file:
        train = read_jsonl(behaviour.train_file, behaviour.key("train_file"))
    else:
        train = [_check(r, f"{behaviour.key('inputs')}[{i}]") for i, r in enumerate(behaviour.inputs)]
    if behaviour.eval_file:
        held_out = read_jsonl(behaviour.eval_file, behaviour.key("eval_file"))
    else:
        held_out = [_check(r, f"{behaviour.key('eval_inputs')}[{i}]") for i, r in enumerate(behaviour.eval_inputs)]
    return train, held_out


def split_inputs(cfg: DataConfig, train: list[Record], held_out: list[Record],
                 behaviour: BehaviourConfig) -> tuple[list[Record], list[Record]]:
    """Without a held-out set, split ``num_eval`` off the training inputs at random (seeded)."""
    key = behaviour.key
    if not train:
        raise InternalizeError(f"no training inputs: set {key('train_file')} (JSONL), {key('inputs')} (a list) "
                               "or data.synthesize (seeds for model-written inputs)")
    if not held_out and cfg.num_eval:
        if cfg.num_eval >= len(train):
            raise InternalizeError(f"data.num_eval={cfg.num_eval} leaves no training inputs out of {len(train)}; "
                                   f"lower it or add {key('eval_file')}")
        shuffled = train[:]
        random.Random(cfg.seed).shuffle(shuffled)
        held_out, train = shuffled[: cfg.num_eval], shuffled[cfg.num_eval :]
    if not held_out:
        raise InternalizeError(f"no held-out inputs: set {key('eval_file')}, {key('eval_inputs')} or data.num_eval > 0")
    if cfg.max_train:
        train = train[: cfg.max_train]
    return train, held_out


def load_inputs(behaviour: BehaviourConfig, cfg: DataConfig) -> tuple[list[Record], list[Record]]:
    """Return (train, held-out) records. Without a held-out set, ``num_eval`` are split off at random."""
    return split_inputs(cfg, *read_inputs(behaviour), behaviour)


def uses_synthesis(behaviours: list[BehaviourConfig], cfg: DataConfig) -> bool:
    """True when training inputs are to be written by the model: one behaviour, no file or inline inputs."""
    return len(behaviours) == 1 and not (behaviours[0].train_file or behaviours[0].inputs) and cfg.synthesize.enabled
