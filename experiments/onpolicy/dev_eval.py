"""Score every on-policy/retention arm on the dev splits, where the recipe is chosen.

The held-out questions and the 120 retention questions of ``results/*.json`` are the test sets: they
report, they never choose. This script scores each run's saved student on two dev sets that no run
saw and no report uses: the task's dev split (``examples/data/questions_dev.jsonl``, 30 questions, for
the main job; ``experiments/instructions/data/sentiment_dev.jsonl``, 40 sentences, for the
explained-sentiment job) and 60 dev retention questions (``src/internalize/retention_dev.jsonl``).
Base and teacher are scored once per task, the original model's dev retention once. Writes
``results/dev.json`` (command, machine, wall time, per-task base/teacher/original, per-run student
score and retention), which ``summarize.py`` uses to pick the recommended arm.

    python experiments/onpolicy/dev_eval.py             # every record in results/ whose model is still in runs/
    python experiments/onpolicy/dev_eval.py --results experiments/recipe/results   # another experiment's runs

A second call scores only the runs ``results/dev.json`` does not hold yet (base, teacher and the
original's retention are kept from the first).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
RESULTS = Path(__file__).parent / "results"
TASKS = {  # record name prefix -> (config, dev split)
    "over": ("examples/over.yaml", "examples/data/questions_dev.jsonl"),
    "weather": ("experiments/instructions/weather_explained.yaml", "experiments/instructions/data/sentiment_dev.jsonl"),
}
RETENTION_DEV = "src/internalize/retention_dev.jsonl"


def output_dir(record: dict) -> Path:
    """The run's output folder: the last ``output.dir=`` of its command."""
    dirs = [a.split("=", 1)[1] for a in shlex.split(record["command"]) if a.startswith("output.dir=")]
    return ROOT / dirs[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="the records' folder; dev.json is written there")
    args = parser.parse_args()
    results = args.results.resolve()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import dataclasses

    import torch

    from internalize import load_config
    from internalize.behaviours import load_behaviours
    from internalize.data import read_jsonl
    from internalize.evaluation import evaluate, retention
    from internalize.models import load_model
    from internalize.runtime import Runtime
    from internalize.targets import Reference
    from internalize.teacher import answer

    start = time.perf_counter()
    earlier = json.loads((results / "dev.json").read_text()) if (results / "dev.json").exists() else {}
    command = "python experiments/onpolicy/dev_eval.py" + ("" if results == RESULTS else
                                                          f" --results {results.relative_to(ROOT)}")
    out: dict = {"command": command,
                 "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
                            f"{torch.__version__}, {torch.get_num_threads()} threads",
                 "dev_files": {task: dev for task, (_, dev) in TASKS.items()} | {"retention": RETENTION_DEV},
                 "tasks": earlier.get("tasks", {}), "runs": earlier.get("runs", {})}
    questions = read_jsonl(ROOT / RETENTION_DEV, "retention_dev")
    for task, (config, dev) in TASKS.items():
        cfg = load_config(ROOT / config, [f"data.eval_file={ROOT / dev}", "output.dir=runs/dev_eval"])
        runtime = Runtime.local(cfg.model.device)
        behaviour = load_behaviours(cfg, need_train=False)[0]
        todo = [p for p in sorted(results.glob(f"{task}_*.json")) if p.stem not in out["runs"]]
        if not todo:
            continue
        model, tokenizer = load_model(cfg.model, runtime)
        reference = Reference.from_targets(answer(model, tokenizer, behaviour.held_out, behaviour.prompt,
                                                  cfg.teacher.greedy(), runtime), len(behaviour.held_out))
        if task not in out["tasks"]:
            score = {c: evaluate(model, tokenizer, behaviour.held_out, reference, cfg.eval, c, behaviour.scorer,
                                 runtime).metrics["score"] for c in ("base", "teacher")}
            original = retention(model, tokenizer, questions, cfg.eval, runtime)
            out["tasks"][task] = {"config": config, "dev_inputs": len(behaviour.held_out), **score,
                                  "original_retention": original}
        score, original = out["tasks"][task], out["tasks"][task]["original_retention"]
        logging.info("%s: base %.3f, teacher %.3f, original retention %.3f", task, score["base"], score["teacher"],
                     original)
        for path in todo:
            record = json.loads(path.read_text())
            model_dir = output_dir(record) / "model"
            if not model_dir.is_dir():
                logging.warning("%s: no model at %s, skipped", path.stem, model_dir)
                continue
            student, _ = load_model(dataclasses.replace(cfg.model, name=str(model_dir)), runtime)
            got = evaluate(student, tokenizer, behaviour.held_out, reference, cfg.eval, "student", behaviour.scorer,
                           runtime).metrics["score"]
            kept = retention(student, tokenizer, questions, cfg.eval, runtime)
            out["runs"][path.stem] = {"task": task, "score": got, "retention": kept,
                                      "retention_kept": kept / original if original else None,
                                      "gain_recovered": (got - score["base"]) / (score["teacher"] - score["base"])
                                      if score["teacher"] != score["base"] else None}
            logging.info("%s: dev score %.3f, dev retention %.3f", path.stem, got, kept)
            del student
            out["wall_s"] = round(earlier.get("wall_s", 0) + time.perf_counter() - start, 1)
            (results / "dev.json").write_text(json.dumps(out, indent=2) + "\n")  # after each run: a kill loses one


if __name__ == "__main__":
    main()
