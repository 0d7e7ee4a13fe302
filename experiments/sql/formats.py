"""Text-to-SQL: how the k examples are shown to the teacher, measured before anything is distilled.

The first four-way run showed the examples as whole chat turns (instruction, schema and question,
then the SQL), and the warmed-up teacher scored *below* the model without them. This probe scores
the teacher alone, greedy, on each held-out database's dev and test questions (30 per database),
under each way of showing the same k examples:

- ``turns``: one user/assistant turn per example, each repeating instruction and schema;
- ``before_input``: one block "Examples on this database:" with only question -> SQL pairs, in the
  same user message before the input (instruction and schema appear once);
- ``system``: that block as the system message.

Writes ``experiments/sql/results/sql_formats_<warm-up run>.json``: accuracy on the 30 per database, on the
10 dev and on the 20 test apart, and the form the dev questions alone choose per k (``dev_choice``).

    python -m experiments.sql.formats --k 4 8 --model runs/sql_warmup/model
    python -m experiments.sql.formats --k 4 8 --model runs/sql_warmup_examples/model
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

from experiments.sql import task
from experiments.sql.run import DBS, ROOT, split
from internalize.config import ModelConfig, PromptConfig, TeacherConfig
from internalize.models import load_model
from internalize.runtime import Runtime
from internalize.targets import Reference
from internalize.teacher import answer

FORMATS = ("none", "turns", "before_input", "system")
TEACHER = TeacherConfig(max_new_tokens=64, cache_dir="", top_k=1)  # greedy and uncached
log = logging.getLogger("sql.formats")


def prompt_config(form: str, examples: list[dict]) -> PromptConfig | None:
    """How the teacher shows ``examples``, as ``form`` says ("none": no examples, no context)."""
    if form == "turns":
        return PromptConfig(demonstrations=[{"input": r["input"], "output": r["output"]} for r in examples])
    if form in ("before_input", "system"):
        return PromptConfig(context=task.examples_block(examples), position=form)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--dbs", nargs="+", default=list(DBS))
    parser.add_argument("--model", default="runs/sql_warmup_examples/model", help="a warmed-up model (run directory/model)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    model_cfg = ModelConfig(name=str(ROOT / args.model))
    runtime = Runtime.local(model_cfg.device)
    model, tok = load_model(model_cfg, runtime)
    scores: dict[str, dict[str, dict[str, float]]] = {}  # split -> form -> database -> accuracy
    for db in args.dbs:
        parts = split(db)
        held = parts["dev"] + parts["test"]
        for k in args.k:
            for form in FORMATS:
                if form == "none" and k != args.k[0]:
                    continue
                targets = answer(model, tok, held, prompt_config(form, parts["pool"][:k]), TEACHER, runtime,
                                 desc=f"{db} {form} k{k}")
                answers = Reference.from_targets(targets, len(held)).answers
                right = [task.execution_match(r, a or "") for r, a in zip(held, answers, strict=True)]
                name = "none" if form == "none" else f"{form}_k{k}"
                dev = len(parts["dev"])  # held is dev, then test
                for where, part in (("all", right), ("dev", right[:dev]), ("test", right[dev:])):
                    scores.setdefault(where, {}).setdefault(name, {})[db] = statistics.mean(part)
                log.info("%s %s: %.3f", db, name, statistics.mean(right))
    result = {"command": f"python -m experiments.sql.formats --k {' '.join(map(str, args.k))} --model {args.model}",
              "model": args.model, "questions_per_db": 30, "execution_accuracy": scores["all"],
              "mean": {name: statistics.mean(v.values()) for name, v in scores["all"].items()},
              "mean_dev": {name: statistics.mean(v.values()) for name, v in scores["dev"].items()},
              "mean_test": {name: statistics.mean(v.values()) for name, v in scores["test"].items()},
              "by_split": {"dev": scores["dev"], "test": scores["test"]},
              "wall_s": round(time.perf_counter() - start, 1)}
    # the form chosen on the dev questions alone, per k (the first best wins ties, in FORMATS order)
    result["dev_choice"] = {k: max((f"{form}_k{k}" for form in FORMATS if form != "none"),
                                   key=lambda name: result["mean_dev"][name]) for k in args.k}
    out = ROOT / f"experiments/sql/results/sql_formats_{Path(args.model).parent.name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    log.info("mean %s", result["mean"])


if __name__ == "__main__":
    main()
