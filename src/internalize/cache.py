"""Teacher cache: the teacher's answers and distributions on disk, reused across runs.

The teacher is frozen, so a run that changes only student settings (learning rate, epochs, LoRA
rank, loss) needs none of its work again. ``teacher.answer`` stores its targets under
``teacher.cache_dir/<key>/``: safetensors shards of answer-token log-probs (top-k plus the tail
mass, or the full vocabulary) and a JSON manifest (views, answers, per-shard sha256). The key
hashes everything the teacher's output depends on: the weights themselves (not their path), the
prompt token ids (so the context, the inputs, the tokenizer and the chat template), and the
teacher's generation, extraction and top-k settings. A shard whose checksum does not match is
reported and recomputed, never used; a cache from another model or context has another key.

    key = cache_key(model, prompts, records, cfg)
    targets = load(directory, key)          # None when absent or corrupt
    save(directory, key, targets)

The original model's retention score (``evaluation.retention``) is kept beside them, in ``scores/<key>.json``
(``score_key``, ``load_score``, ``save_score``), keyed by the same weights fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import weakref
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from .config import TeacherConfig
from .targets import Targets
from .views import View

log = logging.getLogger(__name__)

# 2: the space before an extracted answer belongs to the answer; 3: the tail mass summed directly;
# 4: no per-input answer list (evaluation derives it from the kept answers)
FORMAT = 4
SAMPLES_PER_SHARD = 4096

# model -> (what identifies its frozen weights' contents, their hash): hashing copies every weight to the host,
# so it is done once per set of weights. An in-place update (an optimizer step) bumps a tensor's version counter;
# a replaced tensor (model.to(dtype), p.data = ...) has another storage or dtype: either means a rehash.
_fingerprints: weakref.WeakKeyDictionary[PreTrainedModel, tuple[tuple, str]] = weakref.WeakKeyDictionary()


def _frozen(model: PreTrainedModel) -> list[tuple[str, torch.Tensor]]:
    """The weights the teacher uses: all but LoRA adapters, named as without LoRA."""
    return [(name.removeprefix("base_model.model.").replace(".base_layer", ""), p)
            for name, p in model.named_parameters() if "lora_" not in name]


def weights_fingerprint(model: PreTrainedModel) -> str:
    """Hash of the frozen weights (LoRA adapters excluded) and the architecture; not of their path.

    Computed once per loaded weights: later calls check only each parameter's version counter, storage and dtype."""
    weights = _frozen(model)
    versions = tuple((p._version, p.data_ptr(), p.dtype, p.device) for _, p in weights)
    known = _fingerprints.get(model)
    if known is not None and known[0] == versions:
        return known[1]
    digest = hashlib.sha1(usedforsecurity=False)
    config = {k: v for k, v in model.config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, p in weights:
        digest.update(f"{name}:{p.dtype}:{tuple(p.shape)}".encode())
        digest.update(memoryview(p.detach().cpu().contiguous().view(torch.uint8).numpy()))
    _fingerprints[model] = (versions, digest.hexdigest())
    return digest.hexdigest()


def _digest(value: Any) -> str:
    """sha256 of ``value`` as canonical JSON (keys sorted; anything else as its str)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def cache_key(model: PreTrainedModel, prompts: list[tuple[int, ...]], records: list[dict[str, Any]],
              cfg: TeacherConfig, eos_id: int, given: list[list[str]] | None = None) -> str:
    """The key of a teacher run: weights, prompt ids, inputs, teacher settings and any given generations."""
    settings = {k: getattr(cfg, k) for k in ("max_new_tokens", "do_sample", "num_samples", "extractor",
                                             "extract_pattern", "top_k")}
    if cfg.do_sample:
        settings |= {"temperature": cfg.temperature, "top_p": cfg.top_p, "seed": cfg.seed}
    parts = {"format": FORMAT, "weights": weights_fingerprint(model), "eos": eos_id, "settings": settings,
             "prompts": _digest(prompts), "records": _digest(records)}
    if given:  # teacher.generations_file: the texts it answered from are part of what it did
        parts["given"] = _digest(given)
    return _digest(parts)[:32]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save(directory: str | Path, key: str, targets: Targets) -> Path:
    """Write ``targets`` under ``directory/key`` atomically (shards, then the manifest, then a rename)."""
    final = Path(directory).expanduser() / key
    tmp = final.with_name(f"{key}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shards = []
    for n, start in enumerate(range(0, max(len(targets), 1), SAMPLES_PER_SHARD)):
        idx = range(start, min(start + SAMPLES_PER_SHARD, len(targets)))
        tensors = {"lengths": torch.tensor([targets.logp[i].shape[0] for i in idx], dtype=torch.long)}
        if len(idx):
            tensors["logp"] = torch.cat([targets.logp[i] for i in idx]).float().contiguous()
            if targets.ids is not None:
                tensors["ids"] = torch.cat([targets.ids[i] for i in idx]).to(torch.int32).contiguous()
        name = f"shard-{n:05d}.safetensors"
        save_file(tensors, tmp / name)
        shards.append({"file": name, "samples": len(idx), "sha256": _sha256(tmp / name)})
    manifest = {
        "format": FORMAT, "key": key, "shards": shards, "topk": targets.ids is not None,
        "records": targets.records, "source": targets.source, "generations": targets.generations,
        "answers": targets.answers, "dropped": targets.dropped,
        "teacher_views": [[v.prompt_ids, v.answer_ids] for v in targets.teacher_views],
        "student_views": [[v.prompt_ids, v.answer_ids] for v in targets.student_views],
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def load(directory: str | Path, key: str) -> Targets | None:
    """The cached targets for ``key``; None when there are none or they fail a check (then logged)."""
    where = Path(directory).expanduser() / key
    if not (where / "manifest.json").exists():
        return None
    try:
        manifest = json.loads((where / "manifest.json").read_text())
        if manifest.get("format") != FORMAT or manifest.get("key") != key:
            raise ValueError("written for another key or format")
        logp: list[torch.Tensor] = []
        ids: list[torch.Tensor] = []
        for shard in manifest["shards"]:
            path = where / shard["file"]
            if _sha256(path) != shard["sha256"]:
                raise ValueError(f"{shard['file']} fails its sha256 checksum")
            tensors = load_file(path)
            lengths = tensors["lengths"].tolist()
            if len(lengths) != shard["samples"]:
                raise ValueError(f"{shard['file']} holds {len(lengths)} samples, the manifest says {shard['samples']}")
            if lengths:
                logp += list(tensors["logp"].split(lengths))
                if manifest["topk"]:
                    ids += [t.long() for t in tensors["ids"].split(lengths)]
        views = {k: [View(tuple(p), tuple(a)) for p, a in manifest[k]] for k in ("teacher_views", "student_views")}
        if len(logp) != len(manifest["answers"]):
            raise ValueError("shards and manifest disagree on the number of answers")
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:  # JSONDecodeError is a ValueError
        log.warning("teacher cache %s is unusable (%s); recomputing the teacher", where, e)
        return None
    return Targets(
        records=manifest["records"], source=manifest["source"], generations=manifest["generations"],
        answers=manifest["answers"], teacher_views=views["teacher_views"], student_views=views["student_views"],
        logp=logp, ids=ids if manifest["topk"] else None, dropped=manifest["dropped"],
    )


def score_key(model: PreTrainedModel, prompts: list[tuple[int, ...]], keys: list[str], max_new_tokens: int,
              eos_id: int, strings: tuple[str, ...]) -> str:
    """The key of the original model's retention score: its frozen weights, the prompt ids, the answer keys and
    what ends an answer (length, end-of-turn token, stop strings). Call only for weights with no adapter active."""
    parts = {"kind": "retention", "format": FORMAT, "weights": weights_fingerprint(model), "eos": eos_id,
             "max_new_tokens": max_new_tokens, "stop_strings": list(strings),
             "prompts": _digest(prompts), "keys": _digest(keys)}
    return _digest(parts)[:32]


def load_score(directory: str | Path, key: str) -> float | None:
    """The cached score for ``key`` (``directory/scores/key.json``); None when absent or unreadable (logged)."""
    where = Path(directory).expanduser() / "scores" / f"{key}.json"
    if not where.exists():
        return None
    try:
        record = json.loads(where.read_text())
        if record.get("key") != key or not isinstance(record.get("score"), float | int):
            raise ValueError("written for another key, or without a score")
    except (OSError, ValueError) as e:
        log.warning("ignoring the cached score in %s (%s); computing it again", where, e)
        return None
    return float(record["score"])


def save_score(directory: str | Path, key: str, score: float) -> None:
    """Write ``score`` for ``key`` atomically."""
    where = Path(directory).expanduser() / "scores" / f"{key}.json"
    where.parent.mkdir(parents=True, exist_ok=True)
    tmp = where.with_name(f"{key}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"key": key, "score": score}))
    os.replace(tmp, where)
