"""The saved models of ``sequence.py`` scored on each database's 10 dev questions: which arm dev would pick.

``sequence.py`` scores its four arms (gradient descent alone, distillation alone, GD then CD, CD then GD) on
the pooled 80 test questions only, so picking the arm to recommend from those numbers would choose on test.
This loads each saved model (``runs/sql_seq/DB/ARM_kK/model``), answers the dev questions greedily without
examples (the student's view, as the runs' evaluation), and executes the answers. As a check that this
scoring is the runs' own, one model per database (``--check``, default GD then CD) is also scored on the
pooled 80 and compared with ``results/sql_sequence.json``. Writes ``results/sql_sequence_dev.json``.

    python -m experiments.sql.sequence --k 4 8     # first: the models
    python -m experiments.sql.sequence_dev --k 4 8
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time

from experiments.sql import task
from experiments.sql.run import CONFIG, ROOT, split
from internalize import load_config
from internalize.decoding import generate
from internalize.models import inference_mode, load_model
from internalize.runtime import Runtime
from internalize.views import prompt_ids

ARMS = ("gd", "cd", "gd_then_cd", "cd_then_gd")
RESULT = ROOT / "experiments/sql/results/sql_sequence_dev.json"
log = logging.getLogger("sql.sequence_dev")


def score(run: str, records: list[dict], runtime: Runtime, max_new_tokens: int) -> float:
    """Execution accuracy of the model saved in ``run`` on ``records``, asked without examples."""
    cfg = load_config(ROOT / CONFIG, [f"model.name={run}"]).model
    model, tok = load_model(cfg, runtime)
    with inference_mode(model):
        outs = generate(model, tok, [prompt_ids(tok, r["input"]) for r in records], max_new_tokens, 32, runtime.device,
                        progress=False)
    return statistics.mean(task.execution_match(r, o[0].text) for r, o in zip(records, outs, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--check", default="gd_then_cd", choices=ARMS, help="the arm also scored on the pooled 80")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    cfg = load_config(ROOT / CONFIG)
    runtime = Runtime.local(cfg.model.device)
    recorded = json.loads((ROOT / "experiments/sql/results/sql_sequence.json").read_text())["runs"]
    test_key = {"gd": "gd_alone_80", "cd": "cd_alone_80", "gd_then_cd": "gd_then_cd", "cd_then_gd": "cd_then_gd"}
    rows = []
    for cell in recorded:
        if cell["k"] not in args.k:
            continue
        db, k = cell["db"], cell["k"]
        parts = split(db)
        runs = {arm: str(ROOT / "runs/sql_seq" / db / f"{arm}_k{k}" / "model") for arm in ARMS}
        row = {"db": db, "k": k, "dev": {arm: score(run, parts["dev"], runtime, cfg.eval.max_new_tokens)
                                         for arm, run in runs.items()}}
        row["check"] = {"arm": args.check, "test80_here": score(runs[args.check], parts["test"] + parts["extra_test"],
                                                                runtime, cfg.eval.max_new_tokens),
                        "test80_recorded": cell[test_key[args.check]]}
        rows.append(row)
        log.info("%s k %d: %s", db, k, row)
    summary = {k: {arm: statistics.mean(r["dev"][arm] for r in rows if r["k"] == k) for arm in ARMS}
               for k in sorted({r["k"] for r in rows})}
    result = {"command": "python -m experiments.sql.sequence_dev --k " + " ".join(map(str, args.k)),
              "dev_per_db": len(split(rows[0]["db"])["dev"]) if rows else 0, "rows": rows,
              "dev_mean": summary, "dev_choice": {k: max(ARMS, key=lambda a: s[a]) for k, s in summary.items()},
              "wall_s": round(time.perf_counter() - start, 1)}
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    log.info("dev means %s, choice %s (%.0f s)", summary, result["dev_choice"], result["wall_s"])


if __name__ == "__main__":
    main()
