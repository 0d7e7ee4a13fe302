"""Text-to-SQL past one window with many examples: 32 examples of a held-out database, at most 8 per context.

Issue 19 asks how a user with more examples than one context holds should use them. For each held-out database,
N examples (default 32) are cut into C = N / K chunks of K (default 8). The examples are the 8 of ``run.py``'s pool
followed by the next N - 8 questions the generator writes after every part of ``run.split(db)``
(``task.questions`` is prefix-stable, so they are disjoint from the test, dev and unlabeled questions; checked in
``tests/test_sql_task.py``). Every student is ``run.py``'s student arm with another teacher: the recipe of
``examples.yaml`` (LoRA, lr 1e-3, 2 epochs, ``min_steps`` 0, ``validation`` 0, seed 0) from the warmed-up model
``runs/sql_warmup_examples/model``, trained on the same 80 unlabeled questions (``data/DB/inputs.jsonl``):

- **single_c** (c = 1..C): the teacher shows chunk c alone. **best_single** is the chunk whose student scores
  highest on dev10 (the first on ties): the single context a user could pick. The chunk best on test80 is kept
  beside it as ``oracle_single``, for comparison with section 6.1's oracle, never as the baseline;
- **average**: all N examples, K per context, the teacher's distributions averaged token by token
  (``teacher.demonstrations_per_context=K``, ``teacher.combine=average``), the teacher on the static engine, which
  runs each context once (``AVERAGE_ENGINE``; zoo-5000 and hospital-5001 ran on the dynamic one, which runs every
  context again for every input: ``--recheck-average`` runs such an arm again on the static engine and records
  how many answers are the same);
- **route**: the same C contexts, input i taught by context i mod C (``teacher.combine=route``);
- **sequential**: single_1's student, then chunk 2 distilled into it (``model.name`` = its artifact), and so on to
  chunk C; every step is scored, the last one is the arm;
- **gradient_descent**: hard-label fine-tuning on all N examples (``experiments.examples.run.gradient_descent``:
  learning rate x epochs swept on the 10 dev questions, the best rerun and scored on the pooled 80 test questions).

**Scores.** Execution accuracy. The students are scored as in ``scaling.py``: one run on ``data/DB/test80_dev10.jsonl``
(the pooled 80 test questions of section 6.2, then the 10 dev questions), its ``answers.jsonl`` split into test80
and dev10 (``scaling.split_scores``). Only dev10 chooses (the best single chunk, gradient descent's setting).

Writes ``experiments/sql/results/sql_many.json`` after every cell (a cell: one database's arm); a rerun skips the
cells it holds, so the databases can be run in several sessions. Every database gets an arm before the next arm
starts; the plot ``sql_many.png`` is drawn at the end. Runs go to ``runs/sql_many/DB/``; the warmed-up model is
needed first (``README.md``).

Cost, measured on zoo-5000 and hospital-5001 (2-core AMD EPYC, AVX2): a single-context student run 3-6 min, the
averaged one ~20 min on the dynamic engine (its 4 contexts share no prefix, so every input recomputed all of them),
routed ~6 min, each sequential step ~3.5 min, gradient descent (6 dev runs, 1 test run) 18-22 min: ~73 min per
database; the averaged arm on the static engine (zoo-5002, hospital-5003) ~5.5 min, so ~58 min per database.

    python -m experiments.sql.many --dbs zoo-5000 hospital-5001 zoo-5002 hospital-5003 --n 32 --budget 8
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

from experiments.examples.run import gradient_descent, scored_run
from experiments.sql import task
from experiments.sql.run import CONFIG, DBS, N_DEV, N_EXTRA, N_INPUTS, N_POOL, N_TEST, ROOT, files, labelled, split
from experiments.sql.scaling import CONDITIONS, N_EVAL, split_scores
from internalize import load_config

RESULT = ROOT / "experiments/sql/results/sql_many.json"
PLOT = RESULT.with_suffix(".png")
RUNS = ROOT / "runs/sql_many"
N_SPLIT = N_TEST + N_POOL + N_DEV + N_INPUTS + N_EXTRA  # the questions run.split(db) cuts into parts
# the averaged teacher on the static engine: each context runs once, not once per input (same answers, checked by
# --recheck-average on the databases whose averaged arm ran on the dynamic engine)
AVERAGE_ENGINE = ("teacher.engine=static", "eval.engine=dynamic")
ARMS = ("single", "average", "route", "sequential", "gradient_descent")  # in the order they run
log = logging.getLogger("sql.many")


def examples(db: str, n: int) -> list[dict]:
    """The first ``n`` examples of ``db``: run.py's pool, then the generator's questions after all of split(db)."""
    pool = split(db)["pool"]
    return (pool + task.questions(db, N_SPLIT + n - len(pool))[N_SPLIT:])[:n]


def chunks(shown: list[dict], budget: int) -> list[list[dict]]:
    """``shown`` cut into contexts of ``budget`` examples, in order (the last may be shorter)."""
    return [shown[i : i + budget] for i in range(0, len(shown), budget)]


def best_single(singles: list[dict[str, Any]], part: str) -> int:
    """The index of the chunk whose student scores highest on ``part`` ('dev10' chooses; 'test80' is the oracle);
    the first on ties."""
    return max(range(len(singles)), key=lambda i: (singles[i][part]["student"], -i))


def student(db: str, name: str, shown: list[dict], records: list[dict], eval_file: str, train_file: str,
            *overrides: str) -> dict[str, Any]:
    """One student of ``db`` whose teacher shows ``shown``: base, teacher and student on test80 and dev10."""
    out = RUNS / db / name
    scores = scored_run([f"teacher.demonstrations={json.dumps(task.demonstrations(shown))}",
                         f"data.train_file={train_file}", f"data.eval_file={eval_file}", *overrides,
                         f"output.dir={out}"], CONFIG)
    info = json.loads((out / "run.json").read_text())
    row = {"examples": len(shown), **split_scores(out, records), "train_answers": info.get("train_answers"),
           "steps": info.get("steps"), "wall_s": scores["wall_s"], "model": str((out / "model").relative_to(ROOT))}
    log.info("%s %s: test80 %s, dev10 %s, %.0f s", db, name, row["test80"], row["dev10"], row["wall_s"])
    return row


def cell(db: str, arm: str, n: int, budget: int, paths: dict[str, str], records: list[dict],
         done: dict[str, Any]) -> Any:
    """One arm of ``db``; ``done`` holds the database's earlier arms (sequential starts from single_1's student)."""
    shown = examples(db, n)
    parts = chunks(shown, budget)

    def run(name: str, show: list[dict], *overrides: str) -> dict[str, Any]:
        return student(db, name, show, records, paths["test80_dev10"], paths["inputs"], *overrides)

    if arm == "single":
        return [run(f"single_{c + 1}", chunk) for c, chunk in enumerate(parts)]
    if arm in ("average", "route"):
        return run(arm, shown, f"teacher.demonstrations_per_context={budget}", f"teacher.combine={arm}",
                   *(AVERAGE_ENGINE if arm == "average" else ()))
    if arm == "sequential":  # step 1 is single_1; each later step starts from the previous step's artifact
        steps, previous = [done["single"][0]], done["single"][0]["model"]
        if not (ROOT / previous).is_dir():  # runs/ is not kept between machines; the record is
            raise SystemExit(f"{previous} is missing (single ran elsewhere): remove {db}'s 'single' from "
                             f"{RESULT.name} and run single and sequential together")
        for c, chunk in enumerate(parts[1:], start=2):
            steps.append(run(f"sequential_{c}", chunk, f"model.name={ROOT / previous}"))
            previous = steps[-1]["model"]
        return steps
    if arm == "gradient_descent":
        start = time.perf_counter()
        gd = gradient_descent(n, labelled(shown), paths["dev"], paths["test80"], RUNS / db, 0, CONFIG)
        return {"test80": gd["test"], "dev10_sweep": gd["sweep"], "best": gd["best"],
                "wall_s": round(time.perf_counter() - start, 1)}
    raise ValueError(f"unknown arm {arm!r}")


def recheck_average(db: str, n: int, budget: int, paths: dict[str, str], records: list[dict]) -> dict[str, Any]:
    """The averaged arm again with ``AVERAGE_ENGINE`` and the teacher cache off (the dynamic run's targets would be
    reused), beside the recorded run: its scores, and per condition how many of the eval answers are the same."""
    row = student(db, "average_static", examples(db, n), records, paths["test80_dev10"], paths["inputs"],
                  f"teacher.demonstrations_per_context={budget}", "teacher.combine=average", *AVERAGE_ENGINE,
                  "teacher.cache_dir=")
    before, after = ([json.loads(line) for line in (RUNS / db / name / "answers.jsonl").read_text().splitlines()]
                     for name in ("average", "average_static"))
    row["same_answers"] = {c: sum(a[c] == b[c] for a, b in zip(before, after, strict=True)) for c in CONDITIONS}
    row["of"] = len(before)
    return row


def ways(row: dict[str, Any]) -> dict[str, float]:
    """Each way's test80 student score on one database (only the ways it has run)."""
    out: dict[str, float] = {}
    if "single" in row:
        out["best_single"] = row["single"][row["best_single_dev10"]]["test80"]["student"]
        out["oracle_single"] = row["single"][row["best_single_test80"]]["test80"]["student"]
    for arm in ("average", "route"):
        if arm in row:
            out[arm] = row[arm]["test80"]["student"]
    if "sequential" in row:
        out["sequential"] = row["sequential"][-1]["test80"]["student"]
    if "gradient_descent" in row:
        out["gradient_descent"] = row["gradient_descent"]["test80"]
    return out


def summary(dbs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per way, the mean test80 student score over the databases that have it, and which they are."""
    scored = {db: ways(row) for db, row in dbs.items()}
    names = dict.fromkeys(w for s in scored.values() for w in s)
    return {w: {"mean_test80": statistics.mean(s[w] for s in scored.values() if w in s),
                "dbs": [db for db, s in scored.items() if w in s]} for w in names}


def plot(result: dict[str, Any], path: Path) -> None:
    """Left: each way's test80 student score per database and their mean (over the databases that have the way).
    Right: sequential distillation step by step (chunk 1, then 2 on top, ...), each database's test80 and dev10."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = {db: ways(row) for db, row in result["dbs"].items()}
    names = list(dict.fromkeys(w for s in scored.values() for w in s))
    if not names:
        return
    groups = [*scored, "mean"]
    fig, (bars, steps) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [scored[db].get(name, float("nan")) for db in scored] + [result["summary"][name]["mean_test80"]]
        bars.bar([g + (i - (len(names) - 1) / 2) * width for g in range(len(groups))], values, width,
                 label=name.replace("_", " "), hatch="//" if name == "oracle_single" else None,
                 color="tab:red" if name == "gradient_descent" else None)
    bars.set_xticks(range(len(groups)), groups)
    bars.set(ylabel="student execution accuracy (test80)", ylim=(0.5, 1.02),
             title=f"{result['n']} examples, {result['budget']} per context: the ways to use them")
    bars.legend(fontsize=7, loc="lower left", ncol=3)
    for db, row in result["dbs"].items():
        for part, style in (("test80", "-"), ("dev10", ":")) if "sequential" in row else ():
            ys = [s[part]["student"] for s in row["sequential"]]
            steps.plot(range(1, len(ys) + 1), ys, style, marker="o", label=f"{db} {part}")
    steps.set(xlabel="chunks distilled in sequence", ylabel="student execution accuracy", ylim=(0.5, 1.02),
              title="Sequential distillation, step by step")
    if steps.lines:
        steps.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dbs", nargs="+", default=list(DBS))
    parser.add_argument("--n", type=int, default=32, help="examples per database")
    parser.add_argument("--budget", type=int, default=8, help="examples per context")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--recheck-average", nargs="+", default=[], metavar="DB",
                        help="after the arms: DB's averaged arm again on AVERAGE_ENGINE (once per DB; needs its run dir)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not 1 <= args.budget < args.n:
        parser.error("need 1 <= --budget < --n: more examples than one context holds")
    if not set(args.recheck_average) <= set(args.dbs):
        parser.error("--recheck-average: give those databases in --dbs too")
    if "sequential" in args.arms and "single" not in args.arms:
        parser.error("--arms sequential starts from single_1's student: give single too")
    warm = load_config(ROOT / CONFIG).model.name
    if not Path(warm).is_dir():
        parser.error(f"{warm} is missing: run python experiments/run.py sql sql_warmup_examples "
                     "experiments/sql/warmup_examples.yaml first (from the repo root)")
    result = json.loads(RESULT.read_text()) if RESULT.is_file() else {"n": args.n, "budget": args.budget, "dbs": {},
                                                                       "wall_s": 0.0}
    if (result["n"], result["budget"]) != (args.n, args.budget):
        parser.error(f"{RESULT} holds --n {result['n']} --budget {result['budget']}: move it away to run others")
    start, before = time.perf_counter(), result["wall_s"]
    parts = {db: split(db) for db in args.dbs}
    records = {db: parts[db]["test"] + parts[db]["extra_test"] + parts[db]["dev"] for db in args.dbs}
    assert all(len(r) == N_EVAL + N_DEV for r in records.values())
    paths = {db: files(db, parts[db] | {"test80": records[db][:N_EVAL], "test80_dev10": records[db]})
             for db in args.dbs}
    for arm in [a for a in ARMS if a in args.arms]:  # every database in one arm before the next arm
        for db in args.dbs:
            row = result["dbs"].setdefault(db, {})
            if arm in row:
                continue
            row[arm] = cell(db, arm, args.n, args.budget, paths[db], records[db], row)
            if arm == "single":
                row["best_single_dev10"] = best_single(row["single"], "dev10")
                row["best_single_test80"] = best_single(row["single"], "test80")
            result |= {"summary": summary(result["dbs"]), "wall_s": round(before + time.perf_counter() - start, 1),
                       "command": f"python -m experiments.sql.many --dbs {' '.join(result['dbs'])} --n {args.n} "
                                  f"--budget {args.budget}",
                       "scores": "execution accuracy of the student (no examples in context) on the pooled 80 test "
                                 "questions; best_single is chosen on dev10, oracle_single on test80 (not a baseline)"}
            RESULT.write_text(json.dumps(result, indent=2) + "\n")
            log.info("%s %s done; means so far %s", db, arm, {w: s["mean_test80"] for w, s in result["summary"].items()})
    for db in args.recheck_average:  # the static engine against the dynamic one on a recorded averaged arm
        row = result["dbs"][db]
        if "average_recheck" not in row:
            if not (RUNS / db / "average/answers.jsonl").is_file():
                raise SystemExit(f"{RUNS / db / 'average'} is missing (average ran elsewhere): nothing to recheck")
            row["average_recheck"] = recheck_average(db, args.n, args.budget, paths[db], records[db])
            RESULT.write_text(json.dumps(result, indent=2) + "\n")
            log.info("%s average recheck: %s of %d answers the same", db, row["average_recheck"]["same_answers"],
                     row["average_recheck"]["of"])
    if result["dbs"]:
        plot(result, PLOT)  # also when every cell was already held: a rerun only redraws it


if __name__ == "__main__":
    main()
