"""Past one context window: n examples when a context holds only k of them.

With n = 12 capitals examples (each seed's pool) and a budget of k = 4 per context, compare students
trained on the same synthesized country names by:

- **single**: one context of 4 examples (each of the 3 chunks; the best is the baseline to beat),
- **average**: all 12, split into 3 contexts, teacher distributions averaged token by token
  (``teacher.demonstrations_per_context=4``, ``teacher.combine=average``),
- **route**: the same 3 contexts, input i taught by context i mod 3 (``teacher.combine=route``),
- **sequential**: chunk 1 distilled into the base, chunk 2 into that artifact, chunk 3 into the next.

All are scored on the seed's test countries. The synthesized names are ``run.py``'s (written by it, or
here when missing). Writes ``experiments/examples/results/examples_window.json`` (per seed, and mean and
spread over seeds).

    python -m experiments.examples.window --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

from experiments.examples import capitals
from experiments.examples.run import ROOT, scored_run, synthesized_inputs

N, K = 12, 4
WAYS = ("best_single", "average", "route", "sequential")
log = logging.getLogger("window")


def one_seed(seed: int) -> dict[str, Any]:
    """Every way of using the seed's 12 examples: each a student on the same inputs, scored on the same test."""
    where = ROOT / "runs/examples/window" / f"seed{seed}"
    split = capitals.split(seed)
    train = ROOT / "runs/examples" / f"seed{seed}" / "train.jsonl"
    if not train.is_file():
        synthesized_inputs(seed, split, train.parent)
    examples = split["pool"][:N]
    chunks = [examples[i : i + K] for i in range(0, N, K)]
    common = [f"data.train_file={train}", f"data.eval_file={ROOT / 'experiments/examples/data' / f'seed{seed}/test.jsonl'}",
              f"train.seed={seed}"]

    def run(name: str, *overrides: str) -> dict[str, Any]:
        out = scored_run([*common, *overrides, f"output.dir={where / name}"])
        log.info("seed %d %s: %s", seed, name, out)
        return out

    result: dict[str, Any] = {"single": [run(f"single{i}", f"teacher.demonstrations={json.dumps(c)}", "output.save=merged")
                                         for i, c in enumerate(chunks)]}
    for combine in ("average", "route"):
        result[combine] = run(combine, f"teacher.demonstrations={json.dumps(examples)}",
                              f"teacher.demonstrations_per_context={K}", f"teacher.combine={combine}")
    sequential, previous = [result["single"][0]], where / "single0" / "model"
    for i, chunk in enumerate(chunks[1:], start=1):
        sequential.append(run(f"sequential{i}", f"teacher.demonstrations={json.dumps(chunk)}",
                              f"model.name={previous}", "output.save=merged"))
        previous = where / f"sequential{i}" / "model"
    result["sequential"] = sequential
    return result


def students(result: dict[str, Any]) -> dict[str, float]:
    """Each way's student score: the best single context, average, route, and the end of the sequence."""
    return {"best_single": max(r["student"] for r in result["single"]), "average": result["average"]["student"],
            "route": result["route"]["student"], "sequential": result["sequential"][-1]["student"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    results: dict[str, Any] = {"n": N, "k": K, "seeds": {}}
    for seed in args.seeds:
        results["seeds"][seed] = one_seed(seed)
        scores = [students(r) for r in results["seeds"].values()]
        results["student"] = {way: {"mean": statistics.mean(s[way] for s in scores),
                                    "std": statistics.stdev(s[way] for s in scores) if len(scores) > 1 else 0.0}
                              for way in WAYS}
        results["wall_s"] = round(time.perf_counter() - start, 1)
        results["command"] = "python -m experiments.examples.window --seeds " + " ".join(map(str, args.seeds))
        Path(ROOT / "experiments/examples/results/examples_window.json").write_text(json.dumps(results, indent=2) + "\n")
        log.info("students so far: %s (%.0f s)", results["student"], results["wall_s"])


if __name__ == "__main__":
    main()
