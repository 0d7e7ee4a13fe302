"""Text-to-SQL past one context window: 8 examples of a held-out database when a context holds only 4.

For each held-out database, with its 8 pool examples and a budget of k = 4 per context, students
trained on the same 80 unlabeled questions and scored on the same 20 test questions:

- **single**: one context of 4 examples: chunk 1 (the k = 4 run of ``run.py``, reused) and chunk 2;
  the better of the two is the single-context student to beat;
- **average**: the 8 examples split into 2 contexts of 4, the teacher's distributions averaged token by
  token (``teacher.demonstrations_per_context=4``, ``teacher.combine=average``);
- **sequential**: chunk 2 distilled into the chunk-1 student (``model.name`` = its artifact);
- **one context of 8** (no budget: the k = 8 run of ``run.py``, reused), for reference.

Writes ``experiments/sql/results/sql_window.json``.

    python -m experiments.sql.run --k 4 8       # first: the k = 4 and k = 8 runs reused here
    python -m experiments.sql.window
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from typing import Any

from experiments.examples.run import scored_run
from experiments.sql import task
from experiments.sql.run import CONDITIONS, CONFIG, DBS, ROOT, split

N, K = 8, 4
log = logging.getLogger("sql.window")


def distil(db: str, name: str, shown: list[dict], *overrides: str) -> dict[str, Any]:
    """One student of ``db``, its teacher showing ``shown``; base, teacher and student scores on its test split."""
    data = ROOT / "experiments/sql/data" / db
    out = scored_run([f"data.train_file={data / 'inputs.jsonl'}", f"data.eval_file={data / 'test.jsonl'}",
                      f"teacher.demonstrations={json.dumps(task.demonstrations(shown))}", *overrides,
                      f"output.dir={ROOT / 'runs/sql' / db / f'window_{name}'}"], CONFIG)
    log.info("%s %s: %s", db, name, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dbs", nargs="+", default=list(DBS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    earlier = {(r["db"], r["k"]): {c: r[c] for c in CONDITIONS[:3]} for r in
               json.loads((ROOT / "experiments/sql/results/sql_examples.json").read_text())["runs"]}
    results: dict[str, Any] = {"n": N, "k": K, "dbs": {}}
    for db in args.dbs:
        examples = split(db)["pool"][:N]
        results["dbs"][db] = {
            "single": [earlier[db, K], distil(db, "chunk2", examples[K:])],
            "average": distil(db, "average", examples, f"teacher.demonstrations_per_context={K}", "teacher.combine=average"),
            "sequential": distil(db, "sequential", examples[K:], f"model.name={ROOT / 'runs/sql' / db / f'distill_k{K}/model'}"),
            "one_context_of_8": earlier[db, N]}
        rows = results["dbs"].values()
        results["student_mean"] = {"best_single": statistics.mean(max(s["student"] for s in r["single"]) for r in rows)} | {
            way: statistics.mean(r[way]["student"] for r in rows) for way in ("average", "sequential", "one_context_of_8")}
        results["wall_s"] = round(time.perf_counter() - start, 1)
        results["command"] = "python -m experiments.sql.window --dbs " + " ".join(args.dbs)
        (ROOT / "experiments/sql/results/sql_window.json").write_text(json.dumps(results, indent=2) + "\n")
        log.info("student means so far: %s", results["student_mean"])  # written after every database


if __name__ == "__main__":
    main()
