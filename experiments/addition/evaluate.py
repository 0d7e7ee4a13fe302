"""Score the reasoning experiment's models on unseen addition problems, by digit length, and on word problems.

For each ``NAME=MODEL`` it generates greedily, with no context, the direct answer to
``--per-length`` problems of each digit length (none of them in any training file) and to
``--word`` template word problems, and scores exact match (``task.direct``). With ``--scratchpad
NAME`` that model is also scored with the scratch-pad request (``task.scratchpad_answer``) on
``--scratchpad-per-length`` problems per length; ``--fewer NAME=N`` scores a model known to fail on
only the first N problems of each length. Mean generated tokens per answer give the inference cost.
Writes ``experiments/addition/results/OUT.json`` and ``OUT.png`` beside it (``--out``, default addition).
The lengths are ``--digits`` (default ``task.DIGITS``, 1-5) and the excluded problems those of the JSONL
files in ``--data`` (default ``experiments/addition/data``); the 1-8 digit rerun (README.md) passes
``--digits 1 2 3 4 5 6 7 8 --data experiments/addition/data8 --out addition8``.

    python -m experiments.addition.evaluate --scratchpad teacher --scratchpad-per-length 100 \\
        --fewer base=200 --fewer teacher=200 base=smollm2-135m teacher=runs/addition_teacher/model \\
        student=runs/addition_student/model direct_finetune=runs/addition_direct_finetune/model \\
        multitask=runs/addition_multitask/model
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from experiments.addition import task
from internalize.config import ModelConfig
from internalize.decoding import generate
from internalize.models import load_model
from internalize.runtime import Runtime
from internalize.views import prompt_ids

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("addition")


DATA = task.HERE / "data"


def _seen(folders: list[Path]) -> set[tuple[int, int]]:
    """Every problem in the training and dev files (``*.jsonl``) of ``folders``."""
    seen = set()
    for path in (p for folder in folders for p in sorted(Path(folder).glob("*.jsonl"))):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            seen.add((row["a"], row["b"]))
    return seen


def test_sets(per_length: int, scratch_per_length: int, words: int, seed: int, digits: list[int] | None = None,
              data: list[Path] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Unseen problems per length (direct and scratch-pad) and word problems; ``digits`` default ``task.DIGITS``,
    ``data`` (the folders whose problems are excluded) default ``data/``."""
    digits = digits or task.DIGITS
    seen = _seen(data or [DATA])
    if not seen:
        raise FileNotFoundError(f"no training files in {[str(f) for f in data or [DATA]]}: write them first (task.py)")
    sets = {}
    for d in digits:  # 1 digit has only 100 problems, all seen in training: it is scored on all of them
        pairs = sorted(task.all_problems(1)) if d == 1 else task.problems(per_length, [d], seed + 100 + d, exclude=seen)
        sets[f"direct_{d}"] = [task.record(a, b) for a, b in pairs]
        sets[f"scratchpad_{d}"] = [task.with_context(task.record(a, b, "scratchpad")) for a, b in pairs[:scratch_per_length]]
    sets["word"] = task.word_problems(words, digits, seed + 7)
    return sets


def answers(model, tokenizer, records: list[dict[str, Any]], max_new_tokens: int, batch_size: int,
            device: torch.device, engine: str = "dynamic") -> list:
    """Each record's greedy answer to its ``input`` with no context (a ``Generation``: ``.text``, ``.ids``)."""
    prompts = [prompt_ids(tokenizer, r["input"]) for r in records]
    with torch.inference_mode():
        return [g[0] for g in generate(model, tokenizer, prompts, max_new_tokens, batch_size, device, desc="eval",
                                       engine=engine)]


def score(model, tokenizer, records: list[dict[str, Any]], scorer, max_new_tokens: int,
          batch_size: int, device: torch.device, engine: str = "dynamic") -> dict[str, float]:
    outs = answers(model, tokenizer, records, max_new_tokens, batch_size, device, engine)
    return {"accuracy": sum(scorer(r, g.text) for r, g in zip(records, outs, strict=True)) / len(records),
            "tokens": sum(len(g.ids) for g in outs) / len(outs), "n": len(records),
            "examples": [[r["input"][-60:], g.text[-80:]] for r, g in zip(records[:3], outs[:3], strict=True)]}


def _earlier(out: Path, sizes: dict[str, Any]) -> dict[str, Any]:
    """The results in ``out`` that ``--add`` adds to; they must have been scored on the same problems."""
    if not out.is_file():
        raise SystemExit(f"--add: {out} does not exist yet; run without --add first")
    results = json.loads(out.read_text())
    differ = {k: (results.get(k), v) for k, v in sizes.items() if results.get(k) != v}
    if differ:
        raise SystemExit(f"--add: {out} was scored on other problems ({differ}, as (there, here)); use another --out")
    return results


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    digits = results["digits"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, res in results["models"].items():
        ax.plot(digits, [res[f"direct_{d}"]["accuracy"] for d in digits], marker="o", label=f"{name} (direct)")
        if f"scratchpad_{digits[0]}" in res:
            ax.plot(digits, [res[f"scratchpad_{d}"]["accuracy"] for d in digits], marker="s",
                    linestyle="--", label=f"{name} (scratch-pad)")
    ax.set(xlabel="digits per number", ylabel="exact-match accuracy", ylim=(-0.02, 1.02), xticks=digits,
           title="Addition: direct answers after context distillation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="NAME=MODEL (a run's model directory or smollm2-135m)")
    parser.add_argument("--scratchpad", default="", help="NAME of the model also scored with the scratch-pad")
    parser.add_argument("--per-length", type=int, default=2000)
    parser.add_argument("--scratchpad-per-length", type=int, default=200)
    parser.add_argument("--word", type=int, default=300)
    parser.add_argument("--fewer", action="append", default=[], metavar="NAME=N",
                        help="score NAME's direct answers on only the first N problems per length (a model known to "
                             "fail); repeat for several models")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--digits", type=int, nargs="+", default=task.DIGITS, help="the digit lengths scored")
    parser.add_argument("--data", type=Path, nargs="+", default=[DATA],
                        help="folders of the models' training and dev JSONL files: their problems are not tested")
    parser.add_argument("--out", default="addition")
    parser.add_argument("--engine", choices=("dynamic", "static"), default="dynamic",
                        help="the generation path (decoding.generate; the same tokens either way)")
    parser.add_argument("--add", action="store_true",
                        help="add these models to OUT.json (same digits, seed and sizes) instead of replacing it: "
                             "a table built over several sessions")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    start = time.perf_counter()
    sets = test_sets(args.per_length, args.scratchpad_per_length, args.word, args.seed, args.digits, args.data)
    options = ([f"--digits {' '.join(map(str, args.digits))}"] if args.digits != task.DIGITS else []) \
        + ([f"--data {' '.join(map(str, args.data))}"] if args.data != [DATA] else []) \
        + ([f"--out {args.out}"] if args.out != "addition" else []) \
        + ([f"--engine {args.engine}"] if args.engine != "dynamic" else []) + (["--add"] if args.add else [])
    command = "python -m experiments.addition.evaluate " + " ".join(
        ([f"--scratchpad {args.scratchpad}"] if args.scratchpad else [])
        + [f"--scratchpad-per-length {args.scratchpad_per_length}"] + [f"--fewer {f}" for f in args.fewer]
        + options + args.models)
    out = ROOT / "experiments/addition/results" / f"{args.out}.json"
    sizes = {"seed": args.seed, "digits": args.digits, "per_length": args.per_length, "word": args.word}
    results: dict[str, Any] = {"command": command, **sizes, "models": {}}
    if args.add:
        results = _earlier(out, sizes)
        results.setdefault("added", []).append({"command": command, "models": [m.partition("=")[0] for m in args.models]})
    fewer = {name: int(n) for name, _, n in (spec.partition("=") for spec in args.fewer)}
    runtime = Runtime.local(ModelConfig().device)
    for spec in args.models:
        name, _, path = spec.partition("=")
        model, tokenizer = load_model(ModelConfig(name=path), runtime)
        res: dict[str, Any] = {"model": path}
        model_start = time.perf_counter()
        for d in args.digits:
            res[f"direct_{d}"] = score(model, tokenizer, sets[f"direct_{d}"][: fewer.get(name)], task.direct, 16,
                                       args.batch_size, runtime.device, args.engine)
            if name == args.scratchpad:
                res[f"scratchpad_{d}"] = score(model, tokenizer, sets[f"scratchpad_{d}"], task.scratchpad_answer,
                                               task.scratchpad_tokens(d), args.batch_size, runtime.device, args.engine)
            log.info("%s %d digits: %s", name, d, {k: v["accuracy"] for k, v in res.items() if k.endswith(f"_{d}")})
        res["word"] = score(model, tokenizer, sets["word"], task.direct, 16, args.batch_size, runtime.device,
                            args.engine)
        res["wall_s"] = round(time.perf_counter() - model_start, 1)
        log.info("%s word problems: %.3f", name, res["word"]["accuracy"])
        results["models"][name] = res
    if args.add:
        results["added"][-1]["wall_s"] = round(time.perf_counter() - start, 1)
    else:
        results["wall_s"] = round(time.perf_counter() - start, 1)
    out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out.with_suffix(".png"))
    log.info("wrote %s (%.0f s)", out, time.perf_counter() - start)


if __name__ == "__main__":
    main()
