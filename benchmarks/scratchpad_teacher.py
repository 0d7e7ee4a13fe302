"""Scratch-pad teacher: the answer's distributions taken from the generation against a second forward pass.

With an extractor, the teacher writes scratch-pad + answer, and the student learns the teacher's
distributions over the answer after the scratch-pad. Those distributions were already computed while
generating; they are the right ones whenever the scratch-pad and the answer, tokenized apart (as the
two views are built), are the tokens the teacher generated. ``teacher.answer`` now reuses them then and
scores only the other answers again. This runs ``teacher.answer`` twice on the same inputs in one process,
cache off:

- **reuse** (the product): as ``teacher.answer`` runs;
- **rescore every answer** (before): the generations handed to ``teacher.answer`` without their distributions,
  so every kept answer is scored again (the generation still records them, as it did before).

Reports wall time of each and the ratio, how many answers reused their generation's distributions,
the largest |log-prob difference| between the two paths on the same answers (top-k + tail form), and
whether they keep the same top-k token ids.

    python benchmarks/scratchpad_teacher.py                                          # explained sentiment, SmolLM2
    python benchmarks/scratchpad_teacher.py --config experiments/addition/distill.yaml --n 128   # needs the addition teacher
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import torch

from internalize import teacher
from internalize.config import load_config
from internalize.data import read_jsonl
from internalize.models import load_model
from internalize.runtime import Runtime
from internalize.targets import Targets

ROOT = Path(__file__).resolve().parents[1]


def without_distributions(generate):
    """``generate`` whose results carry no log-probs, so ``teacher.answer`` must score every answer again."""
    def wrapped(*args, **kwargs):
        out = generate(*args, **kwargs)
        return [[dataclasses.replace(g, logp=None, top=None) for g in gens] for gens in out]
    return wrapped


def run(model, tok, records, prompt, cfg, runtime) -> tuple[float, Targets, int]:
    """``teacher.answer`` timed, with the number of answers it scored again."""
    score, rescored = teacher.score, []

    def counting(model, tok, views, *args, **kwargs):
        rescored.append(len(views))
        return score(model, tok, views, *args, **kwargs)

    teacher.score = counting
    try:
        start = time.perf_counter()
        targets = teacher.answer(model, tok, records, prompt, cfg, runtime)
        return time.perf_counter() - start, targets, sum(rescored) // len(prompt.split())
    finally:
        teacher.score = score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="experiments/instructions/weather_explained.yaml")
    parser.add_argument("--n", type=int, default=90, help="training inputs to teach")
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = load_config(ROOT / args.config)
    tcfg = dataclasses.replace(cfg.teacher, cache_dir="")
    behaviour, runtime = cfg.behaviours[0], Runtime.local(cfg.model.device)
    model, tok = load_model(cfg.model, runtime)
    records = read_jsonl(ROOT / behaviour.train_file, behaviour.key("train_file"))[: args.n]
    run(model, tok, records[:4], behaviour.prompt, tcfg, runtime)  # warm-up: first-call costs out of both timings
    reuse_s, reused, scored_again = run(model, tok, records, behaviour.prompt, tcfg, runtime)
    original = teacher.generate
    teacher.generate = without_distributions(original)
    try:
        rescore_s, rescored, _ = run(model, tok, records, behaviour.prompt, tcfg, runtime)
    finally:
        teacher.generate = original
    assert reused.answers == rescored.answers, "both paths must keep the same answers"
    diff = max((a - b).abs().max().item() for a, b in zip(reused.logp, rescored.logp, strict=True))
    pairs = list(zip(reused.ids, rescored.ids, strict=True)) if reused.ids is not None else []
    argmax_equal = all(torch.equal(a[:, 0], b[:, 0]) for a, b in pairs)  # the teacher's most likely token
    positions = sum(len(a) for a, _ in pairs)  # top-k id sets may differ only where the k-th and (k+1)-th tie
    same_sets = sum(int((a.sort(-1).values == b.sort(-1).values).all(-1).sum()) for a, b in pairs)
    result = {
        "command": f"python benchmarks/scratchpad_teacher.py --config {args.config} --n {args.n}",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "inputs": len(records), "kept_answers": len(reused),
        "answer_tokens": sum(len(v.answer_ids) for v in reused.teacher_views),
        "answers_from_the_generation": len(reused) - scored_again, "answers_scored_again": scored_again,
        "reuse_s": round(reuse_s, 1), "rescore_every_answer_s": round(rescore_s, 1),
        "speedup": round(rescore_s / reuse_s, 2), "max_abs_logp_diff": diff, "argmax_ids_equal": argmax_equal,
        "positions_with_the_same_top_k_ids": f"{same_sets} of {positions}",
    }
    out = ROOT / "benchmarks/results" / f"scratchpad_teacher_{Path(args.config).stem}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
