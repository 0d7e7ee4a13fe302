"""The retention check's generations (diagnostic): the original SmolLM2 on the 120 packaged questions, each engine
with and without ``until`` (an answer stops once its key's match is settled), seconds, tokens and score; every arm
twice, in turns.
    python experiments/demo/profile_retention.py"""

import json
import os
import re
import sys
import time
from pathlib import Path

import torch

from internalize.config import ModelConfig
from internalize.data import read_jsonl
from internalize.decoding import generate
from internalize.models import load_model, teacher_mode
from internalize.views import prompt_ids

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from throughput import cpu_flags  # noqa: E402

ARMS = [("dynamic", 32, False), ("dynamic", 32, True), ("static", 32, True), ("static", 128, False),
        ("static", 128, True)]
model, tok = load_model(ModelConfig(name="smollm2-135m", device="cpu"))
records = read_jsonl(Path(__file__).resolve().parents[2] / "src/internalize/retention.jsonl", "retention")
prompts = [prompt_ids(tok, r["input"]) for r in records]
keys = [re.compile(r["answer"], re.IGNORECASE) for r in records]
arms = []
with teacher_mode(model):
    for run, (engine, batch, cut) in [(run, arm) for run in (1, 2) for arm in ARMS]:  # all arms, then all again
        t = time.perf_counter()
        out = generate(model, tok, prompts, 64, batch, "cpu", engine=engine, progress=False,
                       until=keys if cut else None)
        seconds = time.perf_counter() - t
        right = sum(k.search(g[0].text) is not None for k, g in zip(keys, out, strict=True))
        arms.append({"run": run, "engine": engine, "batch_size": batch, "until": cut, "seconds": round(seconds, 2),
                     "tokens": sum(len(g[0].ids) for g in out), "right": right, "n": len(records)})
        print(arms[-1], flush=True)
json.dump({"command": "python experiments/demo/profile_retention.py", "torch": torch.__version__,
           "cores": os.cpu_count(), "cpu_flags": cpu_flags(), "max_new_tokens": 64, "arms": arms},
          open(Path(__file__).with_name("results") / "profile_retention.json", "w"), indent=1)
