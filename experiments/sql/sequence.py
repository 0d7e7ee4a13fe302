"""Text-to-SQL, both in sequence: gradient descent then context distillation, and the other way round.

Issue 19: section 6.2 compares the student of the k examples (context distillation, CD) with
hard-label fine-tuning on them (gradient descent, GD) as alternatives. This runs them one after
the other, on the same split as ``run.py`` (the k examples are ``split(db)["pool"][:k]``, the
student learns from the 80 unlabeled questions), from the same warmed-up model
(``runs/sql_warmup_examples/model``, the ``model.name`` of ``examples.yaml``), seed 0, per held-out
database and k:

- **gd_then_cd**: (1) GD on the k examples (``gd_k{k}``), then (2) ``internalize distill`` from that
  model (``model.name`` = its artifact), so the fine-tuned model is both the teacher (the k examples
  in its context, as in ``run.py``) and the student's start (``gd_then_cd_k{k}``);
- **cd_then_gd**: (1) CD exactly as ``run.py`` (``cd_k{k}``), then (2) GD on the k examples from that
  student (``cd_then_gd_k{k}``).

GD runs are ``experiments.examples.run.gradient_descent``'s (``gd_overrides``) at the learning rate
and epochs that ``run.py``'s sweep chose on dev for that database and k (``gd_best`` of
``results/sql_examples.json``), not swept again. In cd_then_gd this is the plain-GD arm's dev
choice, not one chosen for GD from the CD student.

Every run is scored on the pooled 80 test questions per database (its 20 ``test`` and 60
``extra_test``, written as ``data/DB/test80.jsonl``): the 80 of ``sql_examples_more.json``. Each
sequence's final student is its score; the first stage's is recorded too (``gd_alone_80``,
``cd_alone_80``: they should come close to section 6.2's pooled gradient descent and student), as are
the first stage's base and teacher (the warm-up model without and with the examples) and the teacher
of gd_then_cd (the fine-tuned model with the examples in context). Runs go to
``runs/sql_seq/DB/``. Writes ``experiments/sql/results/sql_sequence.json`` after every database and k,
with section 6.2's four pooled arms beside the summary; a rerun skips the cells that file holds.

    python experiments/sql/task.py                                  # if experiments/sql/data/ is missing
    python experiments/run.py sql sql_warmup_examples experiments/sql/warmup_examples.yaml   # the warm-up model
    python -m experiments.sql.sequence --k 4 8 --dbs zoo-5000 hospital-5001 zoo-5002 hospital-5003
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

from experiments.examples.run import gd_overrides, scored_run
from experiments.sql import task
from experiments.sql.run import CONFIG, DBS, N_EXTRA, N_TEST, ROOT, files, labelled, split
from internalize import load_config

RESULT = ROOT / "experiments/sql/results/sql_sequence.json"
ARMS = ("gd_alone_80", "cd_alone_80", "gd_then_cd", "cd_then_gd", "teacher_gd_then_cd", "base_80", "teacher_80")
SECTION6 = ("base", "teacher", "student", "gradient_descent")  # sql_examples_more.json's pooled_80 conditions
log = logging.getLogger("sql.sequence")


def cell(db: str, k: int, examples: list[dict], paths: dict[str, str], gd: dict[str, Any]) -> dict[str, Any]:
    """The four runs of one database and k; every score on its pooled 80 test questions."""
    where = ROOT / "runs/sql_seq" / db
    demos = f"teacher.demonstrations={json.dumps(task.demonstrations(examples))}"
    inputs, test80 = f"data.train_file={paths['inputs']}", f"data.eval_file={paths['test80']}"
    gd_run = [*gd_overrides(labelled(examples), 0), f"train.lr={gd['lr']}", f"train.epochs={gd['epochs']}", test80]
    stages = {"gd": scored_run([*gd_run, f"output.dir={where}/gd_k{k}"], CONFIG)}
    log.info("%s k %d gd: %s", db, k, stages["gd"])
    stages["gd_then_cd"] = scored_run([demos, inputs, test80, f"model.name={where / f'gd_k{k}' / 'model'}",
                                       f"output.dir={where}/gd_then_cd_k{k}"], CONFIG)
    log.info("%s k %d gd_then_cd: %s", db, k, stages["gd_then_cd"])
    stages["cd"] = scored_run([demos, inputs, test80, f"output.dir={where}/cd_k{k}"], CONFIG)
    log.info("%s k %d cd: %s", db, k, stages["cd"])
    stages["cd_then_gd"] = scored_run([*gd_run, f"model.name={where / f'cd_k{k}' / 'model'}",
                                       f"output.dir={where}/cd_then_gd_k{k}"], CONFIG)
    log.info("%s k %d cd_then_gd: %s", db, k, stages["cd_then_gd"])
    return {"db": db, "k": k, "gd_then_cd": stages["gd_then_cd"]["student"],
            "cd_then_gd": stages["cd_then_gd"]["student"], "gd_alone_80": stages["gd"]["student"],
            "cd_alone_80": stages["cd"]["student"], "teacher_gd_then_cd": stages["gd_then_cd"]["teacher"],
            "base_80": stages["cd"]["base"], "teacher_80": stages["cd"]["teacher"],
            "gd_setting": {"lr": gd["lr"], "epochs": gd["epochs"], "dev": gd["dev"]},
            "stages": {name: {c: s[c] for c in ("base", "teacher", "student")} for name, s in stages.items()},
            "wall_s": {name: s["wall_s"] for name, s in stages.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--dbs", nargs="+", default=list(DBS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    warm = load_config(ROOT / CONFIG).model.name  # relative to the repo root, as every run of run.py
    if not Path(warm).is_dir():
        parser.error(f"{warm} is missing: run python experiments/run.py sql sql_warmup_examples "
                     "experiments/sql/warmup_examples.yaml first (from the repo root)")
    start = time.perf_counter()
    gd_best = {(r["db"], r["k"]): r["gd_best"]
               for r in json.loads((ROOT / "experiments/sql/results/sql_examples.json").read_text())["runs"]}
    missing = [(db, k) for k in args.k for db in args.dbs if (db, k) not in gd_best]
    if missing:
        parser.error(f"results/sql_examples.json has no gd_best for {missing}: run experiments.sql.run for them first")
    more = {(r["db"], r["k"]): r["pooled_80"] for r in
            json.loads((ROOT / "experiments/sql/results/sql_examples_more.json").read_text())["rows"]}
    earlier = json.loads(RESULT.read_text()) if RESULT.is_file() else {"runs": [], "wall_s": 0.0}
    runs: list[dict[str, Any]] = earlier["runs"]
    done = {(r["db"], r["k"]) for r in runs}
    if done:
        log.info("%s holds %d cells; they are skipped: %s", RESULT.name, len(done), sorted(done))
    parts = {db: split(db) for db in args.dbs}
    paths = {db: files(db, parts[db] | {"test80": parts[db]["test"] + parts[db]["extra_test"]}) for db in args.dbs}
    for k in args.k:  # every database at the first k before the next k, as run.py
        for db in args.dbs:
            if (db, k) in done:
                continue
            runs.append(cell(db, k, parts[db]["pool"][:k], paths[db], gd_best[db, k]))
            if (db, k) in more:  # section 6.2's four arms on the same 80 questions, side by side
                runs[-1]["section6_pooled_80"] = {c: more[db, k][c] for c in SECTION6}
            log.info("%s k %d: %s", db, k, {a: runs[-1][a] for a in ARMS})
            write(runs, args, more, earlier["wall_s"] + time.perf_counter() - start)  # after every cell: a rerun resumes


def write(runs: list[dict[str, Any]], args: argparse.Namespace, more: dict[tuple[str, int], dict[str, float]],
          wall_s: float) -> None:
    """The cells so far, and per k the mean over their databases beside section 6.2's four pooled arms (``more``:
    ``sql_examples_more.json``'s pooled 80 by database and k)."""
    summary: dict[int, dict[str, Any]] = {}
    for k in sorted({r["k"] for r in runs}):
        rows = [r for r in runs if r["k"] == k]
        summary[k] = {"dbs": [r["db"] for r in rows]}
        summary[k] |= {a: {"mean": statistics.mean(r[a] for r in rows), "std": statistics.pstdev(r[a] for r in rows)}
                       for a in ARMS}
        if all((r["db"], k) in more for r in rows):  # the same databases' pooled 80 in sql_examples_more.json
            summary[k]["section6_pooled_80"] = {c: statistics.mean(more[r["db"], k][c] for r in rows) for c in SECTION6}
    result = {"command": f"python -m experiments.sql.sequence --k {' '.join(map(str, args.k))} --dbs {' '.join(args.dbs)}",
              "dbs": list(dict.fromkeys(r["db"] for r in runs)),
              "test_per_db": N_TEST + N_EXTRA,
              "gd_setting": "each cell's gd_best of results/sql_examples.json: the plain-GD arm's dev choice for that "
                            "database and k, used for both GD stages (in cd_then_gd not re-chosen for that arm)",
              "runs": runs, "summary": summary, "wall_s": round(wall_s, 1)}
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    log.info("summary %s (%.0f s)", summary, result["wall_s"])


if __name__ == "__main__":
    main()
