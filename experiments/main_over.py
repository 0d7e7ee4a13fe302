"""The main job, recorded: distill examples/over.yaml on SmolLM2-135M and commit its evidence.

Runs the same ``distill`` as ``internalize distill examples/over.yaml``, times the whole process
(model load included), then writes ``experiments/results/over.json`` (command, seed, machine,
wall time, metrics) and copies the report and plots to ``experiments/over/``.

    python experiments/main_over.py [section.key=value ...]
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(overrides: list[str]) -> None:
    start = time.perf_counter()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from internalize import distill, load_config

    cfg = load_config(ROOT / "examples/over.yaml", ["output.dir=runs/over", "output.overwrite=true", *overrides])
    metrics = distill(cfg)
    wall = time.perf_counter() - start
    run = json.loads((Path(cfg.output.dir) / "run.json").read_text())
    result = {
        "command": " ".join(["python", "experiments/main_over.py", *overrides]),
        "config": "examples/over.yaml",
        "seed": cfg.train.seed,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "wall_s": round(wall, 1),
        "stage_s": run["timings"],
        "train_answers": run["train_answers"],
        "dropped": run["dropped"],
        "metrics": metrics,
    }
    (ROOT / "experiments/results").mkdir(parents=True, exist_ok=True)
    (ROOT / "experiments/results/over.json").write_text(json.dumps(result, indent=2) + "\n")
    dest = ROOT / "experiments/over"
    dest.mkdir(exist_ok=True)
    for name in ("report.md", "metrics.png", "loss.png", "config.yaml"):
        shutil.copy(Path(cfg.output.dir) / name, dest / name)
    logging.info("wall time %.1f s; results in experiments/results/over.json", wall)


if __name__ == "__main__":
    main(sys.argv[1:])
