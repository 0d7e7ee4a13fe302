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

from internalize.behaviours import load_scorer
from internalize.config import load_config
from internalize.data import load_inputs
from internalize.evaluation import evaluate
from internalize.models import load_model
from internalize.runtime import Runtime
from internalize.targets import Reference
from internalize.teacher import answer


def main(args: list[str]) -> None:
    overrides = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    paths = [a for i, a in enumerate(args) if a != "--set" and (i == 0 or args[i - 1] != "--set")]
    model = tokenizer = runtime = None
    for path in paths:
        start = time.perf_counter()
        cfg = load_config(path, ["teacher.cache_dir=", *overrides])
        behaviour = cfg.behaviours[0]
        if model is None:
            runtime = Runtime.local(cfg.model.device)
            model, tokenizer = load_model(cfg.model, runtime)
        _, held_out = load_inputs(behaviour, cfg.data)
        reference = Reference.from_targets(answer(model, tokenizer, held_out, behaviour.prompt, cfg.teacher, runtime,
                                                  desc="teacher"), len(held_out))
        scorer = load_scorer(behaviour, (cfg.config_dir,))
        scores = {c: evaluate(model, tokenizer, held_out, reference, cfg.eval, c, scorer, runtime).metrics["score"]
                  for c in ("base", "teacher")}
        print(json.dumps({"config": path, "overrides": overrides, **scores,
                          "seconds": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
