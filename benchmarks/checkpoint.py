"""Checkpoints of the main job: size on disk and time to write, verify and load one.

Loads SmolLM2 with the main job's LoRA settings (``examples/over.yaml``), takes one training step
on the teacher's answers to 8 questions (so the optimizer has its moments), then writes the
checkpoint three times, finds it again (sha256 of every file) and loads it.

    python benchmarks/checkpoint.py          # writes benchmarks/results/checkpoint.json
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from internalize import checkpoint
from internalize.behaviours import load_behaviours
from internalize.config import load_config
from internalize.models import load_model, make_student
from internalize.runtime import Runtime
from internalize.sources import OfflineBatches
from internalize.teacher import answer
from internalize.training import fit


def main() -> None:
    cfg = load_config(Path(__file__).resolve().parents[1] / "examples/over.yaml", ["teacher.cache_dir="])
    runtime = Runtime.local("cpu")
    model, tok = load_model(cfg.model, runtime)
    behaviour = load_behaviours(cfg)[0]
    student = make_student(model, cfg.model)
    targets = answer(student, tok, behaviour.train[:8], behaviour.prompt, cfg.teacher, runtime)
    train = dataclasses.replace(cfg.train, max_steps=1)
    state = fit(student, OfflineBatches(targets, tok.pad_token_id, train.batch_size, 1, 0), train, runtime)
    directory = Path(tempfile.mkdtemp())
    writes = []
    for step in (1, 2, 3):
        state.step = step
        start = time.perf_counter()
        path = checkpoint.save(directory, student, state, keep=2)
        writes.append(time.perf_counter() - start)
    start = time.perf_counter()
    assert checkpoint.latest(directory) == path
    verify = time.perf_counter() - start
    start = time.perf_counter()
    checkpoint.load(path, student)
    load = time.perf_counter() - start
    flags = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    result = {
        "command": "python benchmarks/checkpoint.py",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "cpu_flags": sorted(f for f in ("avx2", "avx512f", "amx_tile") if f" {f}" in flags),
        "what": "main job (SmolLM2-135M, LoRA r=16 on all linear layers), AdamW state after one step",
        "files_bytes": {p.name: p.stat().st_size for p in sorted(path.iterdir())},
        "total_mb": round(sum(p.stat().st_size for p in path.iterdir()) / 2**20, 1),
        "write_s": [round(t, 3) for t in writes], "find_and_verify_s": round(verify, 3), "load_s": round(load, 3),
    }
    out = Path(__file__).with_name("results") / "checkpoint.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
