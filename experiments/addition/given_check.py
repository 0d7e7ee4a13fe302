"""Check ``teacher.generations_file`` on the real teacher: scoring its committed scratch-pads gives the targets it
recorded while generating them.

A later session continues the 1-8 digit distillation from ``data8/teacher_scratchpads.jsonl`` instead of
generating those scratch-pads again (README.md, "The 1-8 digit rerun"). This loads the scratch-pad teacher,
takes the first ``--n`` distillation inputs, reads the targets its distillation run cached while generating
(``--cache``, a cache hit: nothing is generated), computes them again from the JSONL (extract, then one
forward pass after each given scratch-pad), and writes how far apart they are and how long each took to
``results/OUT.json``.

    python -m experiments.addition.given_check --model runs/addition_teacher8/model --cache runs/teacher_cache8 \\
        --n 500 --out addition8_given_check
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

from internalize.config import ModelConfig, load_config
from internalize.data import load_inputs
from internalize.models import load_model
from internalize.runtime import Runtime
from internalize.teacher import answer

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("addition")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the scratch-pad teacher's model directory")
    parser.add_argument("--cache", required=True, help="the distillation run's teacher.cache_dir")
    parser.add_argument("--config", default="experiments/addition/distill8.yaml")
    parser.add_argument("--generations", default="experiments/addition/data8/teacher_scratchpads.jsonl")
    parser.add_argument("--n", type=int, default=500, help="the first N inputs (whole parts of teacher.shard_inputs)")
    parser.add_argument("--out", default="addition8_given_check")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = load_config(ROOT / args.config, [f"model.name={args.model}", f"data.max_train={args.n}"])
    behaviour = cfg.behaviours[0]
    records, _ = load_inputs(behaviour, cfg.data)  # as the distillation run read them (its first N)
    runtime = Runtime.local(cfg.model.device)
    model, tokenizer = load_model(ModelConfig(name=args.model), runtime)
    start = time.perf_counter()
    cached = answer(model, tokenizer, records, behaviour.prompt, dataclasses.replace(cfg.teacher, cache_dir=args.cache),
                    runtime)
    cached_s = time.perf_counter() - start
    if not cached.cache_hit:
        raise SystemExit(f"--cache {args.cache}: the run's targets for these {args.n} inputs were not all cached; "
                         "the check compares against them")
    start = time.perf_counter()
    given = answer(model, tokenizer, records, behaviour.prompt,
                   dataclasses.replace(cfg.teacher, cache_dir="", generations_file=args.generations), runtime)
    given_s = time.perf_counter() - start
    by_source = {s: i for i, s in enumerate(given.source)}
    pairs = [(i, by_source[s]) for i, s in enumerate(cached.source) if s in by_source]
    diffs = [float((cached.logp[i] - given.logp[j]).abs().max()) for i, j in pairs]
    result = {
        "command": "python -m experiments.addition.given_check " + " ".join(
            f"--{k} {v}" for k, v in vars(args).items()),
        "inputs": len(records), "kept_generated": len(cached), "kept_given": len(given), "compared": len(pairs),
        "same_answers": sum(cached.answers[i] == given.answers[j] for i, j in pairs),
        "same_ids": sum(cached.ids is not None and bool((cached.ids[i] == given.ids[j]).all()) for i, j in pairs),
        "same_views": sum(cached.teacher_views[i] == given.teacher_views[j] for i, j in pairs),
        "max_abs_logp_diff": max(diffs, default=None), "mean_max_abs_logp_diff": sum(diffs) / max(len(diffs), 1),
        "seconds": {"from_the_cache": round(cached_s, 1), "scored_from_the_jsonl": round(given_s, 1)},
        "dropped_given": given.dropped,
    }
    out = ROOT / "experiments/addition/results" / f"{args.out}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    log.info("%s", {k: v for k, v in result.items() if k != "command"})
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()
