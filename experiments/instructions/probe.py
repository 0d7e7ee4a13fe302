"""Teacher-only probe: how well does the model follow each config's context on its held-out inputs?

Runs base (no context) and teacher (with context) greedily on the config's held-out file and
prints their scores; no training. Used to pick the contexts of the instruction experiments.

    python experiments/instructions/probe.py experiments/instructions/french.yaml experiments/instructions/french_explained.yaml
    python experiments/instructions/probe.py --set teacher.position=before_input experiments/instructions/french*.yaml
"""

from __future__ import annotations

import json
import sys
import time

from internalize.config import load_config
from internalize.data import load_inputs
from internalize.evaluation import evaluate, load_scorer
from internalize.models import load_model
from internalize.teacher import teach


def main(args: list[str]) -> None:
    overrides = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    paths = [a for i, a in enumerate(args) if a != "--set" and (i == 0 or args[i - 1] != "--set")]
    model = tokenizer = None
    for path in paths:
        start = time.perf_counter()
        cfg = load_config(path, ["teacher.cache_dir=", *overrides])
        if model is None:
            model, tokenizer = load_model(cfg.model)
        _, held_out = load_inputs(cfg.data)
        reference = teach(model, tokenizer, held_out, cfg.teacher, desc="teacher")
        scores = {c: evaluate(model, tokenizer, held_out, reference, cfg.eval, c, load_scorer(cfg.eval)).metrics["score"]
                  for c in ("base", "teacher")}
        print(json.dumps({"config": path, "overrides": overrides, **scores,
                          "seconds": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
