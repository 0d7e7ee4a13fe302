"""Student recipe sweep on the main job: how few updates reach the teacher's held-out score.

The teacher runs once (or comes from the teacher cache); each setting then trains a fresh LoRA
student from the same targets and scores it on the 30 held-out questions. Used to choose the
main job's recipe (BENCHMARKS.md, "Time to quality").

    python benchmarks/recipe_sweep.py [--settings lr=5e-4,epochs=2 lr=2e-3,max_steps=8 ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch

from internalize.behaviours import load_scorer
from internalize.config import load_config
from internalize.data import load_inputs
from internalize.evaluation import evaluate
from internalize.models import load_model, make_student
from internalize.runtime import Runtime
from internalize.sources import OfflineBatches
from internalize.targets import Reference
from internalize.teacher import answer
from internalize.training import fit

DEFAULT = ["lr=5e-4,epochs=2", "lr=5e-4,epochs=1", "lr=1e-3,epochs=1", "lr=2e-3,max_steps=8",
           "lr=2e-3,max_steps=12", "lr=1e-3,max_steps=8,batch_size=16"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="examples/over.yaml")
    parser.add_argument("--settings", nargs="+", default=DEFAULT, help="comma-separated train.* overrides per run")
    parser.add_argument("--out", default="benchmarks/results/recipe_sweep.json")
    args = parser.parse_args()
    cfg = load_config(args.config)
    behaviour = cfg.behaviours[0]
    runtime = Runtime.local(cfg.model.device)
    train, held_out = load_inputs(behaviour, cfg.data)
    base, tokenizer = load_model(cfg.model, runtime)
    scorer = load_scorer(behaviour, (cfg.config_dir,))
    start = time.perf_counter()
    targets = answer(base, tokenizer, train, behaviour.prompt, cfg.teacher, runtime, desc="teacher[train]")
    teacher_s = time.perf_counter() - start
    greedy = dataclasses.replace(cfg.teacher, do_sample=False, num_samples=1)
    reference = Reference.from_targets(answer(base, tokenizer, held_out, behaviour.prompt, greedy, runtime,
                                              desc="teacher[eval]"), len(held_out))
    runs = []
    for setting in args.settings:
        overrides = dict(kv.split("=") for kv in setting.split(","))
        pinned = ["train.min_steps=0", "train.validation=0"]  # as measured, before those defaults (EXPERIMENTS.md 11)
        train_cfg = load_config(args.config, [*pinned, *(f"train.{k}={v}" for k, v in overrides.items())]).train
        model, _ = load_model(cfg.model, runtime)
        student = make_student(model, cfg.model)
        torch.manual_seed(train_cfg.seed)
        start = time.perf_counter()
        batches = OfflineBatches(targets, tokenizer.pad_token_id, train_cfg.batch_size, train_cfg.length_buckets,
                                 train_cfg.seed)
        history = fit(student, batches, train_cfg, runtime).history
        train_s = time.perf_counter() - start
        result = evaluate(student, tokenizer, held_out, reference, cfg.eval, "student", scorer, runtime)
        runs.append({"setting": setting, "steps": len(history), "train_s": round(train_s, 2),
                     "s_per_step": round(train_s / len(history), 3), **result.metrics})
        print(json.dumps(runs[-1]), flush=True)
    report = {
        "command": "python " + " ".join(sys.argv), "config": args.config,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "teacher_s": round(teacher_s, 2), "teacher_cache_hit": targets.cache_hit, "train_answers": len(targets),
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
