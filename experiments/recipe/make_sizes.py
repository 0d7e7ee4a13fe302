"""Cut the synthesized pool into issue 17's three training sets: 30, 300 and 3,000 inputs.

Reads ``runs/recipe_pool/synthesized.jsonl`` (``internalize synthesize experiments/recipe/synth.yaml``),
drops any question that is also in the main job's held-out or dev questions (normalised text), and
writes ``experiments/recipe/data/train_{30,300,3000}.jsonl``: the first N of the pool, so each set
holds the smaller ones.

    python experiments/recipe/make_sizes.py
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SIZES = (30, 300, 3000)


def _norm(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


def main() -> None:
    pool = [json.loads(line) for line in (ROOT / "runs/recipe_pool/synthesized.jsonl").open()]
    held = {_norm(json.loads(line)["input"]) for name in ("questions_eval", "questions_dev")
            for line in (ROOT / f"examples/data/{name}.jsonl").open()}
    kept = [r for r in pool if _norm(r["input"]) not in held]
    if len(kept) < max(SIZES):
        sys.exit(f"make_sizes: {len(kept)} usable questions, {max(SIZES)} needed; raise data.synthesize.count")
    out = ROOT / "experiments/recipe/data"
    out.mkdir(exist_ok=True)
    for n in SIZES:
        with (out / f"train_{n}.jsonl").open("w") as f:
            f.writelines(json.dumps({"input": r["input"]}) + "\n" for r in kept[:n])
    print(f"{len(pool)} synthesized, {len(pool) - len(kept)} dropped (in eval or dev), sets of {SIZES} written")


if __name__ == "__main__":
    main()
