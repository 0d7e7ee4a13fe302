"""Past one context window: n examples when a context holds only k of them.

With n = 12 capitals examples (seed 0's pool) and a budget of k = 4 per context, compare students
trained on the same synthesized country names (from ``run.py``) by:

- **single**: one context of 4 examples (each of the 3 chunks; the best is the baseline to beat),
- **average**: all 12, split into 3 contexts, teacher distributions averaged token by token
  (``teacher.demonstrations_per_context=4``, ``teacher.combine=average``),
- **route**: the same 3 contexts, input i taught by context i mod 3 (``teacher.combine=route``),
- **sequential**: chunk 1 distilled into the base, chunk 2 into that artifact, chunk 3 into the next.

All are scored on seed 0's test countries. Writes ``experiments/results/examples_window.json``.

    python -m experiments.examples.run --seeds 0 --k 4     # first: the synthesized inputs
    python -m experiments.examples.window
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from experiments.examples import capitals
from experiments.examples.run import CONFIG, ROOT
from internalize import distill, load_config

N, K, SEED = 12, 4, 0
log = logging.getLogger("window")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    where = ROOT / "runs/examples/window"
    examples = capitals.split(SEED)["pool"][:N]
    chunks = [examples[i : i + K] for i in range(0, N, K)]
    common = [f"data.train_file={ROOT / 'runs/examples/seed0/train.jsonl'}",
              f"data.eval_file={ROOT / 'experiments/examples/data/seed0/test.jsonl'}", "output.overwrite=true"]

    def run(name: str, *overrides: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        m = distill(load_config(ROOT / CONFIG, [*common, *overrides, f"output.dir={where / name}"]))
        out = {c: m[c]["score"] for c in ("base", "teacher", "student")} | {"wall_s": round(time.perf_counter() - t0, 1)}
        log.info("%s: %s", name, out)
        return out

    results: dict[str, Any] = {"n": N, "k": K, "seed": SEED}
    results["single"] = [run(f"single{i}", f"teacher.demonstrations={json.dumps(c)}", "output.save=merged")
                         for i, c in enumerate(chunks)]
    for combine in ("average", "route"):
        results[combine] = run(combine, f"teacher.demonstrations={json.dumps(examples)}",
                               f"teacher.demonstrations_per_context={K}", f"teacher.combine={combine}")
    sequential, previous = [results["single"][0]], where / "single0" / "model"
    for i, chunk in enumerate(chunks[1:], start=1):
        sequential.append(run(f"sequential{i}", f"teacher.demonstrations={json.dumps(chunk)}",
                              f"model.name={previous}", "output.save=merged"))
        previous = where / f"sequential{i}" / "model"
    results["sequential"] = sequential
    results["wall_s"] = round(time.perf_counter() - start, 1)
    results["command"] = "python -m experiments.examples.window"
    Path(ROOT / "experiments/results/examples_window.json").write_text(json.dumps(results, indent=2) + "\n")
    log.info("wrote experiments/results/examples_window.json (%.0f s)", results["wall_s"])


if __name__ == "__main__":
    main()
