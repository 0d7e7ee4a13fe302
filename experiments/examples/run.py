"""Concrete examples: context distillation against gradient descent on the same k examples, over seeds.

For each seed: split the countries (``capitals.split``), let the model write country names
(``internalize synthesize``; names in the dev or test split are removed), then for each k:

- **distilled**: ``internalize distill`` with the first k pool examples as demonstrations, trained on
  the synthesized names: base (no context), teacher (k examples in context), student (no context);
- **gradient descent**: hard-label fine-tuning on the same k examples (``train.targets=data``,
  ``train.loss=ce``), with a learning-rate x epochs sweep scored on the dev split; the best setting
  is rerun and scored on the test split.

Everything is the product's own ``synthesize_inputs`` and ``distill``. Writes
``experiments/examples/results/examples_capitals.json`` and ``experiments/examples/results/capitals.png``.

    python -m experiments.examples.run --seeds 0 1 2 --k 4 8
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
from internalize import distill, load_config
from internalize.data import write_jsonl
from internalize.pipeline import synthesize_inputs

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "experiments/examples/capitals.yaml"
SWEEP = [(lr, epochs) for lr in (3e-4, 1e-3, 3e-3) for epochs in (5, 20)]
log = logging.getLogger("examples")


def conditions(metrics: dict[str, Any]) -> dict[str, Any]:
    """The ``{base, teacher, student}`` metrics of a one-behaviour run, from ``distill``'s (or a metrics.json's)
    ``{behaviour: {base, teacher, student}}`` or the flat form that runs wrote before behaviours."""
    if "base" in metrics:  # the flat form (no behaviour may be named base)
        return metrics
    (only,) = metrics.values()
    return only


def run_config(overrides: list[str], config: str = CONFIG) -> dict[str, Any]:
    """``distill`` on ``config`` (relative to the repo root) with ``overrides``, replacing an earlier run;
    its one behaviour's ``{base, teacher, student}`` metrics."""
    return conditions(distill(load_config(ROOT / config, [*overrides, "output.overwrite=true"])))


def scored_run(overrides: list[str], config: str = CONFIG) -> dict[str, Any]:
    """``run_config``'s base, teacher and student scores, with its wall time."""
    start = time.perf_counter()
    m = run_config(overrides, config)
    return {c: m[c]["score"] for c in ("base", "teacher", "student")} | {"wall_s": round(time.perf_counter() - start, 1)}


def synthesized_inputs(seed: int, split: dict[str, list[dict]], where: Path) -> str:
    """Country names written by the model, seeded with the example pool; dev and test names removed."""
    names = [r["input"] for r in split["pool"]]
    raw = where / "synthesized.jsonl"
    synthesize_inputs(load_config(ROOT / CONFIG, [f"data.synthesize.seeds={json.dumps(names)}",
                                                  f"data.synthesize.output={raw}", f"data.synthesize.seed={seed}",
                                                  "output.overwrite=true"]))
    held_out = {r["input"].lower() for r in split["dev"] + split["test"]}
    rows = [json.loads(line) for line in raw.read_text().splitlines()]
    kept = [r for r in rows if r["input"].strip().lower() not in held_out]
    log.info("seed %d: %d synthesized names, %d kept (dev/test names removed)", seed, len(rows), len(kept))
    return write_jsonl(where / "train.jsonl", kept)


def gd_overrides(demos: str, seed: int) -> list[str]:
    """The overrides that make a run hard-label fine-tuning on the examples ``demos`` (JSON) alone: no teacher
    context, no other training inputs; learning rate, epochs, eval file and output dir are the caller's."""
    return [f"data.inputs={demos}", "data.num_eval=0", "train.targets=data", "train.loss=ce", "teacher.demonstrations=[]",
            "teacher.context=", "data.train_file=", "data.synthesize.seeds=[]", "data.synthesize.task=", f"train.seed={seed}"]


def gradient_descent(k: int, demos: str, dev: str, test: str, out: Path, seed: int,
                     config: str = CONFIG) -> dict[str, Any]:
    """Hard-label fine-tuning on the k examples (``demos``, JSON): the sweep on dev, then the best setting on test."""
    base = gd_overrides(demos, seed)
    sweep = []
    for lr, epochs in SWEEP:
        m = run_config([*base, f"train.lr={lr}", f"train.epochs={epochs}", f"data.eval_file={dev}", f"output.dir={out}/gd_sweep"],
                 config)
        sweep.append({"lr": lr, "epochs": epochs, "dev": m["student"]["score"]})
    best = max(sweep, key=lambda s: s["dev"])  # first best: the lower rate and fewer epochs win ties
    m = run_config([*base, f"train.lr={best['lr']}", f"train.epochs={best['epochs']}", f"data.eval_file={test}",
              f"output.dir={out}/gd_k{k}"], config)
    return {"sweep": sweep, "best": best, "test": m["student"]["score"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--k", type=int, nargs="+", default=[4, 8])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        where = ROOT / "runs/examples" / f"seed{seed}"
        split = capitals.split(seed)
        data = ROOT / "experiments/examples/data" / f"seed{seed}"
        dev, test = write_jsonl(data / "dev.jsonl", split["dev"]), write_jsonl(data / "test.jsonl", split["test"])
        train = synthesized_inputs(seed, split, where)
        for k in args.k:
            demos = json.dumps(split["pool"][:k])
            t0 = time.perf_counter()
            m = run_config([f"teacher.demonstrations={demos}", f"data.train_file={train}", f"data.eval_file={test}",
                      f"train.seed={seed}", f"output.dir={where}/distill_k{k}"])
            distill_s = time.perf_counter() - t0
            gd = gradient_descent(k, demos, dev, test, where, seed)
            runs.append({"seed": seed, "k": k, "base": m["base"]["score"], "teacher": m["teacher"]["score"],
                         "student": m["student"]["score"], "gradient_descent": gd["test"], "gd_best": gd["best"],
                         "gd_sweep": gd["sweep"], "distill_s": round(distill_s, 1)})
            log.info("seed %d k %d: %s", seed, k, {c: runs[-1][c] for c in ("base", "teacher", "student", "gradient_descent")})
    summary = {}
    for k in args.k:
        rows = [r for r in runs if r["k"] == k]
        summary[k] = {c: {"mean": statistics.mean(r[c] for r in rows),
                          "std": statistics.stdev(r[c] for r in rows) if len(rows) > 1 else 0.0}
                      for c in ("base", "teacher", "student", "gradient_descent")}
    result = {"command": "python -m experiments.examples.run --seeds " + " ".join(map(str, args.seeds)) + " --k "
              + " ".join(map(str, args.k)), "test_size": len(capitals.split(0)["test"]), "runs": runs,
              "summary": summary, "wall_s": round(time.perf_counter() - start, 1)}
    (ROOT / "experiments/examples/results/examples_capitals.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(summary, ROOT / "experiments/examples/results/capitals.png")
    log.info("summary %s (%.0f s)", summary, result["wall_s"])


def plot(summary: dict[int, Any], path: Path, ylabel: str = "exact match on test countries",
         title: str = "Capitals: k examples, mean and std over seeds") -> None:
    """Bars of each condition's mean (error bars: its spread) per k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = ("base", "teacher", "student", "gradient_descent")
    fig, ax = plt.subplots(figsize=(7.5, 3.5))
    width = 0.8 / len(conditions)
    for i, c in enumerate(conditions):
        xs = [j + i * width for j in range(len(summary))]
        ax.bar(xs, [s[c]["mean"] for s in summary.values()], width, yerr=[s[c]["std"] for s in summary.values()],
               label=c.replace("_", " "), capsize=3)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(summary))], [f"k = {k}" for k in summary])
    ax.set(ylabel=ylabel, ylim=(0, 1), title=title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
