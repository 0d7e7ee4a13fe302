"""Text-to-SQL with k examples: context distillation against gradient descent, per held-out database.

The model is SmolLM2 warmed up on the gold SQL of the training databases, half of it shown after
examples of the same database (``warmup_examples.yaml``); the evaluation databases belong to domains
that warm-up never saw. For each evaluation database the generator's questions are cut into disjoint
parts: the 20 test questions of ``data/eval.jsonl``, a pool whose first k are the examples, 10 dev
questions (the baseline's sweep), 80 unlabeled questions (their gold SQL is dropped) that the student
learns from, and 60 extra test questions (``score_more.py``). For each k:

- **base**: the warmed-up model, no examples; **teacher**: the k examples in context, as question -> SQL
  text before the input (``teacher.demonstration_template``; ``task.examples_block``, the form the warm-up
  trains on);
- **student**: ``internalize distill`` with that context, trained on the teacher's answers to the unlabeled
  questions, scored without it;
- **gradient descent**: hard-label fine-tuning on the same k examples, learning rate x epochs chosen
  on dev, the best setting rerun and scored on test (``experiments.examples.run.gradient_descent``).

Scores are execution accuracy (result rows equal the gold query's) and exact match. Writes
``experiments/sql/results/sql_examples.json`` and ``experiments/sql/results/examples.png``; each database's question
files go to ``experiments/sql/data/DB/``.

    python -m experiments.sql.run --k 4 8 --dbs zoo-5000 hospital-5001 zoo-5002 hospital-5003
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

from experiments.examples.run import gradient_descent, plot, run_config
from experiments.sql import task
from internalize.data import write_jsonl

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "experiments/sql/examples.yaml"
N_TEST, N_POOL, N_DEV, N_INPUTS, N_EXTRA = 20, 8, 10, 80, 60
DBS = ("zoo-5000", "hospital-5001", "zoo-5002", "hospital-5003")  # the evaluation databases of data/eval.jsonl
CONDITIONS = ("base", "teacher", "student", "gradient_descent")
log = logging.getLogger("sql")


def split(db: str) -> dict[str, list[dict]]:
    """Disjoint questions on one database: test (= its rows of data/eval.jsonl), example pool, dev, unlabeled
    inputs, and extra test questions (``score_more.py``)."""
    qs = task.questions(db, N_TEST + N_POOL + N_DEV + N_INPUTS + N_EXTRA)
    cut = [N_TEST, N_TEST + N_POOL, N_TEST + N_POOL + N_DEV, N_TEST + N_POOL + N_DEV + N_INPUTS]
    inputs = [{k: v for k, v in r.items() if k != "output"} for r in qs[cut[2] : cut[3]]]
    return {"test": qs[: cut[0]], "pool": qs[cut[0] : cut[1]], "dev": qs[cut[1] : cut[2]], "inputs": inputs,
            "extra_test": qs[cut[3]:]}


def files(db: str, parts: dict[str, list[dict]]) -> dict[str, str]:
    """Write each part of ``split(db)`` to experiments/sql/data/DB/PART.jsonl; their paths by part."""
    return {name: write_jsonl(ROOT / "experiments/sql/data" / db / f"{name}.jsonl", rows) for name, rows in parts.items()}


def labelled(examples: list[dict]) -> str:
    """The examples as gradient descent's training records (JSON): each full prompt (instruction, schema, question)
    with its gold SQL."""
    return json.dumps([{"input": r["input"], "output": r["output"]} for r in examples])


def exact_match(run_dir: Path, test: list[dict]) -> dict[str, float]:
    """Exact match of each condition's answers (the run's answers.jsonl) against the gold SQL."""
    rows = [json.loads(line) for line in (run_dir / "answers.jsonl").read_text().splitlines()]
    return {c: statistics.mean(task.exact_match(r, row[c]) for r, row in zip(test, rows, strict=True))
            for c in CONDITIONS[:3]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--dbs", nargs="+", default=list(DBS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    runs: list[dict[str, Any]] = []
    parts = {db: split(db) for db in args.dbs}
    paths = {db: files(db, parts[db]) for db in args.dbs}
    for k in args.k:  # every database at the first k before the next k: a run stopped early still covers each
        for db in args.dbs:
            where = ROOT / "runs/sql" / db
            examples = parts[db]["pool"][:k]
            t0 = time.perf_counter()
            m = run_config([f"teacher.demonstrations={json.dumps(task.demonstrations(examples))}",
                            f"data.train_file={paths[db]['inputs']}", f"data.eval_file={paths[db]['test']}",
                            f"output.dir={where}/distill_k{k}"], CONFIG)
            distill_s = time.perf_counter() - t0
            gd = gradient_descent(k, labelled(examples), paths[db]["dev"], paths[db]["test"], where, 0, CONFIG)
            runs.append({"db": db, "k": k, **{c: m[c]["score"] for c in CONDITIONS[:3]},
                         "gradient_descent": gd["test"], "gd_best": gd["best"], "gd_sweep": gd["sweep"],
                         "exact_match": exact_match(where / f"distill_k{k}", parts[db]["test"])
                         | {"gradient_descent": exact_match(where / f"gd_k{k}", parts[db]["test"])["student"]},
                         "distill_s": round(distill_s, 1)})
            log.info("%s k %d: %s", db, k, {c: runs[-1][c] for c in CONDITIONS})
            write(runs, args, start)  # after every cell: a stopped run keeps what it measured


def write(runs: list[dict[str, Any]], args: argparse.Namespace, start: float) -> None:
    """The results so far, their summary over databases per k, and the plot."""
    ks = [k for k in args.k if any(r["k"] == k for r in runs)]
    summary = {k: {c: {"mean": statistics.mean(r[c] for r in runs if r["k"] == k),
                       "std": statistics.pstdev(r[c] for r in runs if r["k"] == k),
                       "exact_match": statistics.mean(r["exact_match"][c] for r in runs if r["k"] == k)}
                   for c in CONDITIONS} for k in ks}
    result = {"command": f"python -m experiments.sql.run --k {' '.join(map(str, args.k))} --dbs {' '.join(args.dbs)}",
              "dbs": args.dbs,
              "test_per_db": N_TEST, "unlabeled_inputs_per_db": N_INPUTS, "dev_per_db": N_DEV, "runs": runs,
              "summary": summary, "wall_s": round(time.perf_counter() - start, 1)}
    (ROOT / "experiments/sql/results/sql_examples.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(summary, ROOT / "experiments/sql/results/examples.png", "execution accuracy (test)",
         "Text-to-SQL: mean and spread over held-out databases")
    log.info("summary %s (%.0f s)", summary, result["wall_s"])


if __name__ == "__main__":
    main()
