"""Text-to-SQL: the saved models of ``run.py`` and ``window.py`` scored on 60 more test questions per database.

Twenty test questions per database decide a comparison by one question in five points. This scores
every saved model again, greedy, on each database's ``extra_test`` part (60 questions that no run saw:
not an example, not a dev or unlabeled input), with the product's ``evaluate``: the warmed-up model
without examples (base) and with the k examples (teacher), the distilled student and the
gradient-descent model of each k, and two past-one-window students where they exist. Scores are
execution accuracy on the 60, and pooled with the 20 of ``sql_examples.json`` / ``sql_window.json``
(80 per database). Writes ``experiments/sql/results/sql_examples_more.json``.

    python -m experiments.sql.run --k 4 8 && python -m experiments.sql.window   # first: the models
    python -m experiments.sql.score_more
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import time
from typing import Any

from experiments.sql import task
from experiments.sql.run import CONFIG, DBS, N_EXTRA, N_TEST, ROOT, split
from internalize import load_config
from internalize.behaviours import load_scorer
from internalize.evaluation import evaluate
from internalize.models import load_model
from internalize.runtime import Runtime
from internalize.targets import Reference
from internalize.teacher import answer

# window.py's students (budget 4, 8 examples). Not "sequential": its saved adapter names the warm-up model as its
# base instead of the chunk-1 student it was trained on (fixed since in models.save_artifact); window.py scored it
# in memory, on the 20 test questions, correctly.
WINDOW = ("chunk2", "average")
log = logging.getLogger("sql.more")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dbs", nargs="+", default=list(DBS))
    parser.add_argument("--k", type=int, nargs="+", default=[4, 8])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    first = {(r["db"], r["k"]): r for r in json.loads((ROOT / "experiments/sql/results/sql_examples.json").read_text())["runs"]}
    window_file = ROOT / "experiments/sql/results/sql_window.json"
    window = json.loads(window_file.read_text())["dbs"] if window_file.is_file() else {}
    cfg = load_config(ROOT / CONFIG)
    behaviour, runtime = cfg.behaviours[0], Runtime.local(cfg.model.device)
    model, tok = load_model(cfg.model, runtime)
    scorer = load_scorer(behaviour, (cfg.config_dir,))
    teacher = dataclasses.replace(cfg.teacher, cache_dir="")
    rows: list[dict[str, Any]] = []
    for db in args.dbs:
        parts = split(db)
        records = parts["extra_test"]
        for k in args.k:
            where = ROOT / "runs/sql" / db
            prompt = dataclasses.replace(behaviour.prompt, demonstrations=task.demonstrations(parts["pool"][:k]))
            reference = Reference.from_targets(answer(model, tok, records, prompt, teacher, runtime,
                                                      desc=f"{db} k{k} teacher"), len(records))
            extra = {c: evaluate(model, tok, records, reference, cfg.eval, c, scorer, runtime).metrics["score"]
                     for c in ("base", "teacher")}
            artifacts = {"student": where / f"distill_k{k}", "gradient_descent": where / f"gd_k{k}"}
            if k == 4 and db in window:
                artifacts |= {f"window_{name}": where / f"window_{name}" for name in WINDOW}
            for name, run_dir in artifacts.items():
                student, _ = load_model(dataclasses.replace(cfg.model, name=str(run_dir / "model")), runtime)
                extra[name] = evaluate(student, tok, records, reference, cfg.eval, "student", scorer,
                                       runtime).metrics["score"]
            earlier = {c: first[db, k][c] for c in ("base", "teacher", "student", "gradient_descent")}
            if k == 4 and db in window:
                w = window[db] | {"chunk2": window[db]["single"][1]}
                earlier |= {f"window_{n}": w[n]["student"] for n in WINDOW}
            pooled = {c: (N_TEST * earlier[c] + N_EXTRA * extra[c]) / (N_TEST + N_EXTRA) for c in extra}
            rows.append({"db": db, "k": k, "extra_test": extra, "pooled_80": pooled})
            log.info("%s k %d: extra %s", db, k, extra)
    summary = {k: {c: {"extra_test": statistics.mean(r["extra_test"][c] for r in rows if r["k"] == k),
                       "pooled_80": statistics.mean(r["pooled_80"][c] for r in rows if r["k"] == k)}
                   for c in next(r for r in rows if r["k"] == k)["extra_test"]} for k in args.k}
    result = {"command": "python -m experiments.sql.score_more --dbs " + " ".join(args.dbs)
                         + " --k " + " ".join(map(str, args.k)),
              "extra_test_per_db": N_EXTRA, "rows": rows, "summary": summary,
              "wall_s": round(time.perf_counter() - start, 1)}
    (ROOT / "experiments/sql/results/sql_examples_more.json").write_text(json.dumps(result, indent=2) + "\n")
    log.info("summary %s (%.0f s)", summary, result["wall_s"])


if __name__ == "__main__":
    main()
