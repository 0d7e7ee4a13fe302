"""Record one distillation run as committed evidence.

Runs the same ``distill`` as ``internalize distill CONFIG``, times the whole process (model load
included), then writes ``experiments/results/NAME.json`` (command, seed, machine, wall time,
stage times, metrics) and copies the report and plots to ``experiments/NAME/``.

    python experiments/run.py over examples/over.yaml                  # the main job
    python experiments/run.py over_synth examples/over_synth.yaml      # synthesized inputs
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


def main(name: str, config: str, overrides: list[str]) -> None:
    start = time.perf_counter()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from internalize import distill, load_config

    cfg = load_config(ROOT / config, [f"output.dir=runs/{name}", "output.overwrite=true", *overrides])
    metrics = distill(cfg)
    wall = time.perf_counter() - start
    run = json.loads((Path(cfg.output.dir) / "run.json").read_text())
    result = {
        "command": " ".join(["python", "experiments/run.py", name, config, *overrides]),
        "config": config,
        "seed": cfg.train.seed,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "wall_s": round(wall, 1),
        "stage_s": run["timings"],
        "train_answers": run["train_answers"],
        "dropped": run["dropped"],
        "metrics": metrics,
    }
    for key in ("forgetting", "started_from", "behaviours", "teacher_cache"):
        if key in run:
            result[key] = run[key]
    (ROOT / "experiments/results").mkdir(parents=True, exist_ok=True)
    (ROOT / f"experiments/results/{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    dest = ROOT / "experiments" / name
    dest.mkdir(exist_ok=True)
    for file in ("report.md", "metrics.png", "loss.png", "config.yaml", "synthesized.jsonl", "synthesized.provenance.json"):
        if (Path(cfg.output.dir) / file).exists():
            shutil.copy(Path(cfg.output.dir) / file, dest / file)
    logging.info("wall time %.1f s; results in experiments/results/%s.json", wall, name)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python experiments/run.py NAME CONFIG [section.key=value ...]")
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
