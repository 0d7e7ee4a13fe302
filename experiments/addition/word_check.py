"""Why a model misses the word problems: is the sum wrong, or is it right with words after it?

``evaluate.py`` scores word problems by exact match (``task.direct``: the whole answer is the sum). This
diagnostic regenerates the same problems (``evaluate.test_sets``, same seed and lengths) for each
``NAME=MODEL`` and splits every answer into: exact (the reported figure), right number with text around it
(``"93984625 apples"``), wrong number, and no number. It changes no reported figure; it says what the exact
match hides. Writes ``experiments/addition/results/OUT.json`` with every answer.

    python -m experiments.addition.word_check --digits 1 2 3 4 5 6 7 8 --data experiments/addition/data8 \\
        --out addition8_word_check student=runs/addition_student8_chain/model
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections import Counter
from pathlib import Path

from experiments.addition import task
from experiments.addition.evaluate import DATA, ROOT, answers, test_sets
from internalize.config import ModelConfig
from internalize.models import load_model
from internalize.runtime import Runtime

NUMBER = re.compile(r"\d[\d,]*")


def kind(rec: dict, answer: str) -> str:
    """``exact``, ``number_with_text`` (the first number is the sum, with other text), ``wrong`` or ``none``."""
    if task.direct(rec, answer):
        return "exact"
    found = NUMBER.search(answer)
    if not found:
        return "none"
    return "number_with_text" if found.group().replace(",", "") == str(rec["a"] + rec["b"]) else "wrong"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="NAME=MODEL")
    parser.add_argument("--word", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--digits", type=int, nargs="+", default=task.DIGITS)
    parser.add_argument("--data", type=Path, nargs="+", default=[DATA])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", default="word_check")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    records = test_sets(1, 0, args.word, args.seed, args.digits, args.data)["word"]
    runtime = Runtime.local(ModelConfig().device)
    command = "python -m experiments.addition.word_check " + " ".join(
        ([f"--word {args.word}"] if args.word != 300 else []) + ([f"--seed {args.seed}"] if args.seed else [])
        + [f"--digits {' '.join(map(str, args.digits))}", f"--data {' '.join(map(str, args.data))}",
           f"--out {args.out}"] + args.models)
    results = {"command": command, "seed": args.seed, "digits": args.digits, "word": args.word, "models": {}}
    for spec in args.models:
        name, _, path = spec.partition("=")
        model, tokenizer = load_model(ModelConfig(name=path), runtime)
        outs = [g.text for g in answers(model, tokenizer, records, 16, args.batch_size, runtime.device, "static")]
        kinds = [kind(r, o) for r, o in zip(records, outs, strict=True)]
        counts = Counter(kinds)
        results["models"][name] = {
            "model": path, "counts": {k: counts[k] for k in ("exact", "number_with_text", "wrong", "none")},
            "exact": counts["exact"] / len(records),
            "number_right": (counts["exact"] + counts["number_with_text"]) / len(records),
            "answers": [{"input": r["input"], "sum": r["a"] + r["b"], "answer": o, "kind": k}
                        for r, o, k in zip(records, outs, kinds, strict=True)]}
        logging.info("%s: %s", name, results["models"][name]["counts"])
    out = ROOT / "experiments/addition/results" / f"{args.out}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    logging.info("wrote %s", out)


if __name__ == "__main__":
    main()
