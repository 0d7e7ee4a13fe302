"""The teacher's scratch-pads of a distillation run, out of the teacher cache: JSONL, and accuracy by length.

A distillation run caches its teacher's work (``teacher.cache_dir``, one entry per part of
``teacher.shard_inputs`` inputs; each entry's ``manifest.json`` holds the kept generations). This reads
the entries under ``--cache`` whose inputs are those of ``--data`` (the run's training file), writes one
line per kept generation (``input``, ``a``, ``b``, ``digits``, ``generation``, ``answer``, ``correct``) to
``--jsonl`` (a ``teacher.generations_file``: a later run scores these instead of generating them again),
and a summary by digit length to ``--out``: inputs, teacher answers kept, kept answers that are the true
sum. The inputs were never in the teacher's fine-tuning data, so the last is the scratch-pad teacher's
accuracy on unseen problems, measured by the distillation's own generations (no extra generation).
Dropped generations (no answer, or unfinished) are not in the file: a later run generates those inputs again.

    python -m experiments.addition.scratchpads --cache runs/teacher_cache8 \\
        --data experiments/addition/data8/distill.jsonl --first 2000 \\
        --jsonl experiments/addition/data8/teacher_scratchpads.jsonl \\
        --out experiments/addition/results/addition_student8_2000_scratchpads.json
    python -m experiments.addition.scratchpads --cache ~/.cache/internalize/teacher \\
        --data experiments/addition/data8/distill.jsonl --skip 2000 \\
        --jsonl experiments/addition/data8/teacher_scratchpads_2001_4000.jsonl \\
        --out experiments/addition/results/addition_student8_scratchpads.json
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from internalize.data import write_jsonl

log = logging.getLogger("addition")


def collect(cache: Path, data: Path, first: int = 0, skip: int = 0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The kept generations of ``data``'s inputs (its ``first`` lines, 0: all; after its first ``skip``) found in
    ``cache``, and the accuracy by digit length."""
    every = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    inputs = every[skip : first or None]
    wanted, known = {(r["a"], r["b"]) for r in inputs}, {(r["a"], r["b"]) for r in every}
    rows, seen = [], set()
    for manifest in sorted(cache.glob("*/manifest.json")):
        m = json.loads(manifest.read_text())
        records = m.get("records", [])
        if not records or not {(r.get("a"), r.get("b")) for r in records} <= known:
            continue  # another run's entry
        for rec, generation, answer in zip(records, m["generations"], m["answers"], strict=True):
            if (rec["a"], rec["b"]) not in wanted:
                continue
            seen.add((rec["a"], rec["b"]))
            rows.append({"input": rec["input"], "a": rec["a"], "b": rec["b"], "digits": len(str(rec["a"])),
                         "generation": generation,
                         "answer": answer.strip(), "correct": answer.strip() == str(rec["a"] + rec["b"])})
    order = {(r["a"], r["b"]): i for i, r in enumerate(inputs)}
    rows.sort(key=lambda r: order[(r["a"], r["b"])])  # in the data file's order, not the cache's
    by_length: dict[int, dict[str, int]] = defaultdict(lambda: {"inputs": 0, "kept": 0, "correct": 0})
    for r in inputs:
        by_length[len(str(r["a"]))]["inputs"] += 1
    for r in rows:
        by_length[r["digits"]]["kept"] += 1
        by_length[r["digits"]]["correct"] += r["correct"]
    summary = {"cache": str(cache), "data": str(data), "first": first, "skip": skip, "inputs_found": len(seen),
               "inputs": len(inputs),
               "by_length": {str(d): {**c, "accuracy": round(c["correct"] / c["inputs"], 4)}
                             for d, c in sorted(by_length.items())}}
    return rows, summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, required=True, help="the run's teacher.cache_dir")
    parser.add_argument("--data", type=Path, required=True, help="the run's training file (data.train_file)")
    parser.add_argument("--first", type=int, default=0,
                        help="the run's data.max_train: only the file's first N inputs were taught (0: all)")
    parser.add_argument("--skip", type=int, default=0,
                        help="leave out the file's first N inputs (those a teacher.generations_file gave)")
    parser.add_argument("--jsonl", type=Path, required=True, help="where the scratch-pads go")
    parser.add_argument("--out", type=Path, required=True, help="where the summary by length goes (JSON)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rows, summary = collect(args.cache, args.data, args.first, args.skip)
    if not rows:
        raise SystemExit(f"--cache {args.cache}: no teacher entry for the inputs of {args.data}; run the distillation "
                         "with teacher.cache_dir set to it first")
    write_jsonl(args.jsonl, rows)
    summary["jsonl"] = str(args.jsonl)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    for d, c in summary["by_length"].items():
        log.info("%s digits: %d inputs, %d kept, teacher right on %.1f%%", d, c["inputs"], c["kept"],
                 100 * c["accuracy"])
    log.info("%d of %d inputs found; wrote %s and %s", summary["inputs_found"], summary["inputs"], args.jsonl, args.out)


if __name__ == "__main__":
    main()
