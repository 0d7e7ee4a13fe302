"""Record one distillation run as committed evidence of one experiment.

Runs the same ``distill`` as ``internalize distill CONFIG``, times the whole process (model load
included), then writes the record ``experiments/EXPERIMENT/results/NAME.json`` (command, seed,
machine, wall time, stage times, metrics) and copies the run's report, plots and resolved config
to ``experiments/EXPERIMENT/runs/NAME/``. The full output, the model included, goes to
``runs/NAME/`` at the repo root (not committed). EXPERIMENT is one of the folders of
``experiments/`` (see ``experiments/README.md``); NAME names the run, its record and its output.

    python experiments/run.py main_job over examples/over.yaml                    # the main job
    python experiments/run.py synthesis over_synth examples/over_synth.yaml       # synthesized inputs
    python experiments/run.py instructions instructions_sure experiments/instructions/sure.yaml teacher.cache_dir=

Records written before this layout hold the older command form ``python experiments/run.py NAME
CONFIG [overrides]``; they are kept as they were run.
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
EXPERIMENTS = ROOT / "experiments"
COPIED = ("report.md", "metrics.png", "loss.png", "config.yaml", "synthesized.jsonl", "synthesized.provenance.json")


def experiments() -> list[str]:
    """The experiment folders: every directory of ``experiments/`` with a README.md."""
    return sorted(p.name for p in EXPERIMENTS.iterdir() if (p / "README.md").is_file())


def main(experiment: str, name: str, config: str, overrides: list[str]) -> None:
    if experiment not in experiments():
        sys.exit(f"unknown experiment {experiment!r}; one of: {', '.join(experiments())} "
                 "(a new one needs experiments/NAME/README.md)")
    start = time.perf_counter()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from internalize import distill, load_config

    cfg = load_config(ROOT / config, [f"output.dir=runs/{name}", "output.overwrite=true", *overrides])
    metrics = distill(cfg)
    wall = time.perf_counter() - start
    run = json.loads((Path(cfg.output.dir) / "run.json").read_text())
    result = {
        "command": " ".join(["python", "experiments/run.py", experiment, name, config, *overrides]),
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
    for key in ("forgetting", "retention", "on_policy", "rehearsal_answers", "started_from", "behaviours", "teacher_cache",
                "steps", "validation_answers", "best_step", "best_val_kl", "resumed_from"):
        if key in run:
            result[key] = run[key]
    results = EXPERIMENTS / experiment / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    dest = EXPERIMENTS / experiment / "runs" / name
    dest.mkdir(parents=True, exist_ok=True)
    for file in COPIED:
        if (Path(cfg.output.dir) / file).exists():
            shutil.copy(Path(cfg.output.dir) / file, dest / file)
    logging.info("wall time %.1f s; record in %s, report in %s", wall, (results / f"{name}.json").relative_to(ROOT),
                 dest.relative_to(ROOT))


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit("usage: python experiments/run.py EXPERIMENT NAME CONFIG [section.key=value ...]\n"
                 f"EXPERIMENT: one of {', '.join(experiments())}")
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
