"""A real run killed mid-training resumes to the same result (RELIABILITY.md).

Runs the main job (``examples/over.yaml``, SmolLM2-135M) three ways, each with checkpoints every
4 of its 17 steps, as the README's commands do:

1. **whole**: ``internalize distill examples/over.yaml output.dir=runs/reliability_whole train.save_every=4``;
2. **killed**: the same into ``runs/reliability_killed``, sent SIGKILL as soon as its step-8 checkpoint
   appears (from outside, as an out-of-memory killer or a lost machine would);
3. **resumed**: ``internalize distill examples/over.yaml output.dir=runs/reliability_killed train.save_every=4 --resume``.

Writes ``experiments/reliability/results/reliability_kill_resume.json``: where it was killed, where it resumed,
both runs' held-out metrics and the largest difference between their saved weights.

    python experiments/reliability/kill_resume.py
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "internalize.cli", "-q", "distill", "examples/over.yaml", "train.save_every=4"]


def run(out: str, *extra: str) -> float:
    start = time.perf_counter()
    subprocess.run([*CLI, f"output.dir={out}", *extra], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return round(time.perf_counter() - start, 1)


def main() -> None:
    for name in ("runs/reliability_whole", "runs/reliability_killed"):
        shutil.rmtree(ROOT / name, ignore_errors=True)
    whole_s = run("runs/reliability_whole")
    killed = ROOT / "runs/reliability_killed"
    start = time.perf_counter()
    child = subprocess.Popen([*CLI, "output.dir=runs/reliability_killed"], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    while not (killed / "checkpoints" / "step-00000008" / "manifest.json").exists():
        if child.poll() is not None:
            raise SystemExit("the run ended before its step-8 checkpoint")
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    killed_s = round(time.perf_counter() - start, 1)
    left = sorted(p.name for p in (killed / "checkpoints").iterdir())
    resumed_s = run("runs/reliability_killed", "--resume")
    info = json.loads((killed / "run.json").read_text())
    a = load_file(ROOT / "runs/reliability_whole/model/model.safetensors")
    b = load_file(killed / "model/model.safetensors")
    result = {
        "command": "python experiments/reliability/kill_resume.py",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "killed": {"signal": "SIGKILL", "after_s": killed_s, "checkpoints_left": left, "exit": child.returncode},
        "resumed_from": info["resumed_from"],
        "teacher_cache_hit_on_resume": info["teacher_cache"]["hit"],
        "wall_s": {"whole": whole_s, "killed_run": killed_s, "resume": resumed_s},
        "metrics": {"whole": json.loads((ROOT / "runs/reliability_whole/metrics.json").read_text()),
                    "resumed": json.loads((killed / "metrics.json").read_text())},
        "max_abs_weight_difference": max((a[k].float() - b[k].float()).abs().max().item() for k in a),
    }
    out = ROOT / "experiments/reliability/results/reliability_kill_resume.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
