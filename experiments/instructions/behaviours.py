"""Score several models on every behaviour of the instruction experiments, without any context.

For the base model and each run's artifact: greedy answers to the 30 held-out questions (does the
answer end with "Over." / "Roger.", begin with "Sure thing!", come in French?), to the 30 held-out
sentiment sentences (is it exactly the right label?), and to the 20 neutral prompts (does it equal
the base model's answer?). This is the matrix behind EXPERIMENTS.md's recursive-update and
overwrite tables: what each distillation added, kept and disturbed.

    python experiments/instructions/behaviours.py base=smollm2-135m M1=runs/instructions_multi/model ...
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: experiments/ is importable from the repo root

from experiments.instructions import checkers  # noqa: E402
from internalize.config import ModelConfig  # noqa: E402
from internalize.data import read_jsonl  # noqa: E402
from internalize.decoding import generate  # noqa: E402
from internalize.models import inference_mode, load_model  # noqa: E402
from internalize.runtime import Runtime  # noqa: E402
from internalize.views import prompt_ids  # noqa: E402

SETS = {"questions": "examples/data/questions_eval.jsonl", "sentiment": "experiments/instructions/data/sentiment_eval.jsonl",
        "neutral": "examples/data/neutral.jsonl"}
CHECKS = {  # behaviour -> (input set, checker)
    "over": ("questions", lambda r, a: float(re.search(r"Over\.\s*$", a) is not None)),
    "roger": ("questions", lambda r, a: float(re.search(r"Roger\.\s*$", a) is not None)),
    "sure": ("questions", lambda r, a: float(a.startswith("Sure thing!"))),
    "french": ("questions", checkers.french),
    "sentiment": ("sentiment", checkers.sentiment),
}


def answers(name: str) -> dict[str, list[str]]:
    model_cfg = ModelConfig(name=name)
    runtime = Runtime.local(model_cfg.device)
    model, tokenizer = load_model(model_cfg, runtime)
    out = {}
    with inference_mode(model):
        for key, path in SETS.items():
            prompts = [prompt_ids(tokenizer, r["input"]) for r in read_jsonl(ROOT / path, key)]
            out[key] = [g[0].text for g in generate(model, tokenizer, prompts, 64, 32, runtime.device, desc=key)]
    return out


def main(pairs: list[str]) -> None:
    start = time.perf_counter()
    models = dict(p.split("=", 1) for p in pairs)
    records = {k: read_jsonl(ROOT / p, k) for k, p in SETS.items()}
    outputs = {label: answers(name) for label, name in models.items()}
    base = outputs[next(iter(models))]
    table = {}
    for label, out in outputs.items():
        row = {b: sum(check(r, a) for r, a in zip(records[s], out[s], strict=True)) / len(records[s])
               for b, (s, check) in CHECKS.items()}
        same = [a == b for a, b in zip(out["neutral"], base["neutral"], strict=True)]
        row["neutral_same_as_base"] = sum(same) / len(same)
        table[label] = row
    result = {"command": "python experiments/instructions/behaviours.py " + " ".join(pairs), "models": models,
              "wall_s": round(time.perf_counter() - start, 1), "rates": table,
              "examples": {label: {k: v[:3] for k, v in out.items()} for label, out in outputs.items()}}
    (ROOT / "experiments/instructions/results/instructions_behaviours.json").write_text(json.dumps(result, indent=2) + "\n")
    cols = [*CHECKS, "neutral_same_as_base"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    lines += [f"| {label} (`{models[label]}`) | " + " | ".join(f"{row[c]:.2f}" for c in cols) + " |"
              for label, row in table.items()]
    (ROOT / "experiments/instructions/results/behaviours.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
