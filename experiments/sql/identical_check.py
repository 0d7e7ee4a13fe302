"""Why did the averaged student and the chunk-2 student of ``window.py`` score alike on every database?

Issue 19 asks before building on the window run: in ``results/sql_window.json`` and
``sql_examples_more.json`` the student taught by the 8 examples averaged over two contexts of 4 and
the student taught by the second 4 alone score the same on all four databases. The committed files
hold scores only. This reruns the two arms on one database into their own folders (the committed
runs are not touched) and compares what the scores hide: the teachers' answers and the students'
answers question by question (``answers.jsonl``), each differing answer executed against the
database (right or wrong), the teacher's targets on the 80 training questions (whether they came from
the teacher cache), and the two adapters' sha256. Writes ``results/identical_check.json``. Needs the
warmed-up model the SQL runs start from (``runs/sql_warmup_examples/model``: the README's second
command). ``--reuse`` compares the two runs already in ``runs/sql/DB/`` without training them again.

    python experiments/run.py sql sql_warmup_examples experiments/sql/warmup_examples.yaml   # if missing
    python -m experiments.sql.identical_check --db zoo-5000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path

from experiments.sql import task
from experiments.sql.run import DBS, ROOT, split
from experiments.sql.window import K, N, distil


def answers(run: Path) -> dict[str, list[str]]:
    """Each condition's answers on the held-out questions, in order."""
    rows = [json.loads(line) for line in (run / "answers.jsonl").read_text().splitlines()]
    return {c: [r[c] for r in rows] for c in ("base", "teacher", "student") if c in rows[0]}


def sha256(run: Path) -> str:
    files = sorted((run / "model").glob("*.safetensors"))
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="zoo-5000", choices=list(DBS))
    parser.add_argument("--reuse", action="store_true", help="compare the runs already made, without training again")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    runs = {arm: ROOT / "runs/sql" / args.db / f"window_check_{arm}" for arm in ("chunk2", "average")}
    if args.reuse:
        scores = {arm: json.loads((run / "metrics.json").read_text())["main"] for arm, run in runs.items()}
        scores = {arm: {c: m[c]["score"] for c in ("base", "teacher", "student")} for arm, m in scores.items()}
    else:
        examples = split(args.db)["pool"][:N]
        scores = {"chunk2": distil(args.db, "check_chunk2", examples[K:]),
                  "average": distil(args.db, "check_average", examples, f"teacher.demonstrations_per_context={K}",
                                    "teacher.combine=average")}
    got = {arm: answers(run) for arm, run in runs.items()}
    info = {arm: json.loads((run / "run.json").read_text()) for arm, run in runs.items()}
    n = len(got["chunk2"]["student"])
    test = split(args.db)["test"]  # the held-out questions, in the order of answers.jsonl
    assert [r["input"] for r in test] == [json.loads(line)["input"] for line in
                                          (runs["chunk2"] / "answers.jsonl").read_text().splitlines()]
    result = {
        "command": f"python -m experiments.sql.identical_check --db {args.db}" + " --reuse" * args.reuse,
        "db": args.db, "scores": scores,
        "teacher_cache_hit": {arm: i["teacher_cache"]["hit"] for arm, i in info.items()},
        "train_answers": {arm: i["train_answers"] for arm, i in info.items()},
        "held_out_questions": n,
        "teacher_answers_differ": sum(a != b for a, b in zip(got["chunk2"]["teacher"], got["average"]["teacher"],
                                                             strict=True)),
        "student_answers_differ": sum(a != b for a, b in zip(got["chunk2"]["student"], got["average"]["student"],
                                                             strict=True)),
        "adapter_sha256": {arm: sha256(run) for arm, run in runs.items()},
        "differing_student_answers": [
            {"question": i, **{f"{arm}_{what}": value for arm in runs for what, value in
                               (("student", got[arm]["student"][i]),
                                ("right", bool(task.execution_match(test[i], got[arm]["student"][i]))))}}
            for i in range(n) if got["chunk2"]["student"][i] != got["average"]["student"][i]],
        "wall_s": round(time.perf_counter() - start, 1),
    }
    result["same_adapter"] = len(set(result["adapter_sha256"].values())) == 1
    (ROOT / "experiments/sql/results/identical_check.json").write_text(json.dumps(result, indent=2) + "\n")
    logging.info("%s", {k: v for k, v in result.items() if k != "examples"})


if __name__ == "__main__":
    main()
