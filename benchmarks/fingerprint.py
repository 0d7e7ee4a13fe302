"""Teacher cache key: hashing the weights once per loaded model against once per teacher run.

The teacher cache is keyed by a hash of the frozen weights. ``distill`` runs the teacher three
times (training inputs, held-out inputs, neutral prompts), and each run needs the key; before the
engine refactor each computed the hash again, copying every weight to the host. Now the hash is
memoised per model and recomputed only when a weight changes (its version counter, storage or
dtype). This loads SmolLM2 and times, in one process:

- **first**: ``cache.weights_fingerprint`` on freshly loaded weights (one full hash);
- **memoised**: the same call again (what the second and third teacher runs now pay);
- **after a change**: one weight changed in place, then the call (a full hash again, a new key).

    python benchmarks/fingerprint.py                 # writes benchmarks/results/fingerprint.json
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

import torch

from internalize import cache
from internalize.config import ModelConfig
from internalize.models import load_model


def _timed(fn, repeats: int) -> tuple[float, str]:
    times, out = [], ""
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    model, _ = load_model(ModelConfig(name="smollm2-135m", device="cpu"))
    params = sum(p.numel() for p in model.parameters())
    cache._fingerprints.clear()
    start = time.perf_counter()
    first = cache.weights_fingerprint(model)
    first_s = time.perf_counter() - start
    memo_s, again = _timed(lambda: cache.weights_fingerprint(model), 20)
    assert again == first
    full_s = []
    for _ in range(3):  # what every teacher run paid before: a full hash each time
        cache._fingerprints.clear()
        full_s.append(_timed(lambda: cache.weights_fingerprint(model), 1)[0])
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    changed_s, changed = _timed(lambda: cache.weights_fingerprint(model), 1)
    assert changed != first
    flags = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    result = {
        "command": "python benchmarks/fingerprint.py",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "cpu_flags": sorted(f for f in ("avx2", "avx512f", "amx_tile") if f" {f}" in flags),
        "model": "smollm2-135m (fp32)", "parameters": params,
        "first_s": round(first_s, 3), "full_hash_s_min_of_3": round(min(full_s), 3),
        "memoised_s": round(memo_s, 6), "after_a_change_s": round(changed_s, 3),
        "per_distill_before_s": round(3 * min(full_s), 3), "per_distill_now_s": round(min(full_s) + 2 * memo_s, 3),
    }
    out = Path(__file__).with_name("results") / "fingerprint.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
