"""Text-to-SQL: how the student's score grows with more unlabeled inputs and with sampled teacher answers.

Issue 19: the student's only advantage over gradient descent (section 6.2) is the teacher's soft labels on
unlabeled inputs, and section 6.2 gave it 80. This measures the student of ``run.py`` (the k examples
``split(db)["pool"][:k]`` in the teacher's context via ``teacher.demonstrations``, the recipe of
``examples.yaml``: LoRA, lr 1e-3, 2 epochs, ``min_steps`` 0, ``validation`` 0, from the warmed-up model
``runs/sql_warmup_examples/model``, seed 0) per held-out database and k, changing only its training inputs
or the teacher's answers on them:

- **given_80**: the 80 unlabeled questions of ``run.py`` (``data/DB/inputs.jsonl``: the question generator's
  own, gold SQL dropped), i.e. run.py's student arm again: the reference at N = 80;
- **synth_N**: the first N model-written questions (default N = 80, 320, 1,280; nested: each size holds the
  smaller ones) instead;
- **synth_N_samplesS_tT** (at one size, default 80): the teacher samples S answers per input
  (``teacher.do_sample=true``, ``teacher.num_samples=S``, ``teacher.temperature=T``, default S = 4,
  T = 0.7); S = 1 is the greedy arm synth_N itself, not run again.

Training takes a fixed 2 epochs, as in run.py, so its steps grow with the number of answers.

**The model-written questions** (``data.synthesize`` through the product's ``synthesize_inputs``, one file
per database and k, ``runs/sql_scaling/DB/synthesized_kK.jsonl`` with its ``.provenance.json``):

- **Written by** the warmed-up model of ``examples.yaml`` (``model.name``), the teacher's own weights.
- **Seeds: the k examples' questions**, not the whole pool's. The k examples are everything the student
  arm knows about the database. Questions of pool[k:] would give the synthesizer questions that this k's
  student does not have; they are the extra examples of a larger k.
- **How the prompt knows the database.** ``synthesis.synthesis_prompt`` puts ``data.synthesize.task`` in
  the user turn and pre-fills the reply with a numbered list of seeds. So the task names the database:
  it is a request for questions on it followed by its schema, ``task.schema_text(db)``, the CREATE TABLE
  lines every SQL prompt shows. The seeds are the bare questions (each prompt shows 3 of the k), since
  the list must stay one line per item. The examples' SQL is not shown: the list is of questions, and
  SQL lines in it would invite SQL.
- **Validator.** ``is_question`` (``data.synthesize.validator``) keeps only lines of 3 or more words
  that end in '?' or '.' and hold no SELECT. The synthesizer's own filters already drop unfinished,
  duplicate, near-duplicate (3-gram Jaccard >= 0.7) and seed-copying lines.
- **Count.** ``--margin`` (default 10%) more than the largest size, so a size survives the removal
  below.
- **Held-out removal.** Then, as in ``experiments.examples.run.synthesized_inputs``, every question
  equal to one of that database's dev, test or extra_test questions is removed. The match ignores
  case, whitespace and punctuation (``synthesis.normalize``). Near-copies differing in a value are
  kept: the generator's own 80 inputs are just as close to the test questions.
- **Inputs.** Each kept question becomes a record with the full SQL prompt, ``task.prompt(db, q)``.
  The first N are ``runs/sql_scaling/DB/synth_kK_nN.jsonl``.
- **Reuse.** A synthesized file that exists is reused, never rewritten. If a rerun
  needs more questions than it holds, the script stops and says to remove it.

**Scores.** Execution accuracy. Every run is scored on ``data/DB/test80_dev10.jsonl``: the pooled 80 test
questions of ``sql_examples_more.json`` (``test`` + ``extra_test``), then the database's 10 dev questions.
``distill`` scores one eval file per behaviour. This script splits the run's ``answers.jsonl`` (one row per
eval question, in file order) into ``test80`` and ``dev10`` and rescores each part with
``task.execution_match``, so one run gives both. ``run_score_90``, the run's own score over all 90, is kept
as a check. The script chooses nothing. Sizes and sample counts form a curve, and every arm is reported.
The dev scores are there for anyone who later picks a setting: pick it on dev10, never on test80. The
summary per k gives the mean over databases of each arm, with the same databases' section 6.2 pooled-80
numbers from ``results/sql_examples_more.json`` (base, teacher, student, gradient descent) beside it.

Runs go to ``runs/sql_scaling/DB/kK_ARM/``. Writes ``experiments/sql/results/sql_scaling.json`` after every
run. Each run records its wall time, training answers and steps; the synthesis records its counts and
filter summary. A rerun skips the (database, k, arm) cells that file holds. Every database gets an arm
before the next arm starts (given_80, synth_80, its sampled arm, synth_320, synth_1280), so a run stopped
early has whole rows of the cheaper arms.

Cost, an estimate from section 6.2's figures, not measured. A run there took ~60 s on 80 inputs and 20 test
questions; scoring 80 test questions instead costs 2-3 min per run. Take ~30 s of the 60 to grow with the
teacher's answers (teacher and training) and ~3 min for the rest, with 90 eval questions. A run with A
answers then takes ~(0.5 A/80 + 3) min: ~3.5 min each for given_80 and synth_80, ~5 min for the sampled
arm (4 answers per input) and for synth_320, ~11 min for synth_1280. That is ~28 min per database at
k = 4, plus the synthesis of ~1,400 questions (guessed at 5-15 min). The 4 databases would take ~2.5-3 h
on the machine of section 6.2. The 2-core CPU machine is slower. There, ``runs/sql_seq/zoo-5000/gd_then_cd_k4``
(80 inputs, 80 eval questions, 234 s) spent ~1.5 s per answer on teacher and training and ~2 min on the
rest. That rate gives ~1 h per database, ~4-5 h in all, most of it in synth_1280.

    python experiments/sql/task.py                                  # if experiments/sql/data/ is missing
    python experiments/run.py sql sql_warmup_examples experiments/sql/warmup_examples.yaml   # the warm-up model
    python -m experiments.sql.scaling --k 4 --dbs zoo-5000 hospital-5001 zoo-5002 hospital-5003 \\
        --sizes 80 320 1280 --samples 1 4 --samples-size 80 --temperature 0.7
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import statistics
import time
from pathlib import Path
from typing import Any, NamedTuple

from experiments.examples.run import scored_run
from experiments.sql import task
from experiments.sql.run import CONFIG, DBS, N_DEV, N_EXTRA, N_INPUTS, N_TEST, ROOT, files, split
from internalize import load_config
from internalize.data import write_jsonl
from internalize.pipeline import synthesize_inputs
from internalize.synthesis import normalize

RESULT = ROOT / "experiments/sql/results/sql_scaling.json"
RUNS = ROOT / "runs/sql_scaling"
N_EVAL = N_TEST + N_EXTRA  # the pooled 80 test questions come first in the eval file, the dev questions after them
CONDITIONS = ("base", "teacher", "student")
SECTION6 = ("base", "teacher", "student", "gradient_descent")  # sql_examples_more.json's pooled_80 conditions
SYNTH_TASK = ("Questions a user could ask about the data in this SQLite database, each answered by one SQL "
              "query. The database:\n\n{schema}")
VALIDATOR = "experiments.sql.scaling:is_question"  # imported by the synthesizer from the working directory (repo root)
log = logging.getLogger("sql.scaling")


class Arm(NamedTuple):
    """One way to train the student: its inputs (the given 80 or the first ``size`` synthesized) and teacher answers."""

    name: str
    size: int
    given: bool = False
    samples: int = 1  # teacher answers per input; > 1 samples at ``temperature``
    temperature: float = 0.0


def is_question(text: str) -> bool:
    """Validator of synthesized inputs (``data.synthesize.validator``): a question or request of 3+ words ending in
    '?' or '.', with no SQL in it."""
    return (len(text.split()) >= 3 and text.rstrip().endswith(("?", "."))
            and re.search(r"\b(SELECT|CREATE TABLE)\b", text) is None)


def arms(args: argparse.Namespace) -> list[Arm]:
    """The arms to run, in order: the given 80, then the synthesized sizes ascending, the sampled arms after the
    greedy one of their size."""
    sampled = [s for s in args.samples if s > 1]
    sizes = set(args.sizes) | ({args.samples_size} if 1 in args.samples else set())
    out = [Arm(f"synth_{n}", n) for n in sizes]
    out += [Arm(f"synth_{args.samples_size}_samples{s}_t{args.temperature:g}", args.samples_size, samples=s,
                temperature=args.temperature) for s in sampled]
    return [Arm(f"given_{N_INPUTS}", N_INPUTS, given=True), *sorted(out, key=lambda a: (a.size, a.samples))]


def synthesized(db: str, k: int, examples: list[dict], held_out: list[dict], count: int) -> dict[str, Any]:
    """The model-written questions on ``db`` for the k examples: synthesized (or reused) in
    runs/sql_scaling/DB/synthesized_kK.jsonl, held-out questions removed. Returns the kept questions and counts."""
    raw = RUNS / db / f"synthesized_k{k}.jsonl"
    provenance = raw.with_suffix(".provenance.json")
    info: dict[str, Any] = {"file": str(raw.relative_to(ROOT)), "seeds": [r["question"] for r in examples],
                            "task": SYNTH_TASK.format(schema=task.schema_text(db))}
    if raw.is_file() and provenance.is_file():
        target = json.loads(provenance.read_text())["settings"]["count"]
        if target < count:
            raise SystemExit(f"{raw} was synthesized for {target} questions, fewer than the {count} asked now: remove it "
                             f"(and the cells of {db} k {k} in {RESULT.name}) to synthesize again")
        log.info("%s k %d: reusing %s", db, k, raw)
    else:
        t0 = time.perf_counter()
        synthesize_inputs(load_config(ROOT / CONFIG, [
            f"data.synthesize.task={info['task']}", f"data.synthesize.seeds={json.dumps(info['seeds'])}",
            f"data.synthesize.count={count}", f"data.synthesize.output={raw}", "data.synthesize.seed=0",
            "data.synthesize.max_new_tokens=96", "data.synthesize.max_chars=200",
            f"data.synthesize.validator={VALIDATOR}",
            "output.overwrite=true"]))
        info["wall_s"] = round(time.perf_counter() - t0, 1)
    rows = [json.loads(line) for line in raw.read_text().splitlines()]
    banned = {normalize(r["question"]) for r in held_out}
    kept = [r["input"] for r in rows if normalize(r["input"]) not in banned]
    info |= {"synthesized": len(rows), "removed_held_out": len(rows) - len(kept), "kept": len(kept),
             "summary": json.loads(provenance.read_text())["summary"], "questions": kept}
    log.info("%s k %d: %d synthesized questions, %d kept (%d equal to a dev or test question)", db, k, len(rows),
             len(kept), info["removed_held_out"])
    return info


def train_file(db: str, k: int, arm: Arm, paths: dict[str, str], questions: list[str]) -> str:
    """The arm's training inputs: the given file, or the first ``arm.size`` synthesized questions as SQL prompts."""
    if arm.given:
        return paths["inputs"]
    domain = db.rsplit("-", 1)[0]  # a database is named DOMAIN-SEED (task.py)
    return write_jsonl(RUNS / db / f"synth_k{k}_n{arm.size}.jsonl",
                       [{"db": db, "domain": domain, "question": q, "input": task.prompt(db, q), "synthesized": True}
                        for q in questions[: arm.size]])


def split_scores(run_dir: Path, records: list[dict]) -> dict[str, dict[str, float]]:
    """Each condition's execution accuracy on the test80 and dev10 parts of the eval file, from the run's
    answers.jsonl (one row per eval record, in order)."""
    rows = [json.loads(line) for line in (run_dir / "answers.jsonl").read_text().splitlines()]
    if len(rows) != len(records) or any(r["input"] != row["input"] for r, row in zip(records, rows, strict=True)):
        raise SystemExit(f"{run_dir}/answers.jsonl does not follow the eval file's order: cannot split it")
    hits = {c: [task.execution_match(r, row[c]) for r, row in zip(records, rows, strict=True)] for c in CONDITIONS}
    return {part: {c: statistics.mean(hits[c][lo:hi]) for c in CONDITIONS}
            for part, (lo, hi) in {"test80": (0, N_EVAL), "dev10": (N_EVAL, len(records))}.items()}


def cell(db: str, k: int, arm: Arm, examples: list[dict], paths: dict[str, str], records: list[dict],
         synth: dict[str, Any] | None) -> dict[str, Any]:
    """One student: the arm's inputs and teacher answers, scored on test80 and dev10."""
    out = RUNS / db / f"k{k}_{arm.name}"
    train = train_file(db, k, arm, paths, synth["questions"] if synth else [])
    sampling = (["teacher.do_sample=true", f"teacher.num_samples={arm.samples}", f"teacher.temperature={arm.temperature}",
                 "teacher.seed=0"] if arm.samples > 1 else [])
    scores = scored_run([f"teacher.demonstrations={json.dumps(task.demonstrations(examples))}",
                         f"data.train_file={train}", f"data.eval_file={paths['test80_dev10']}", *sampling,
                         f"output.dir={out}"], CONFIG)
    parts = split_scores(out, records)
    info = json.loads((out / "run.json").read_text())
    row = {"db": db, "k": k, "arm": arm.name, **parts,
           "inputs": "given" if arm.given else "synthesized", "n_inputs": arm.size,
           "train_file": str(Path(train).relative_to(ROOT)),
           "teacher_sampling": {"do_sample": arm.samples > 1, "num_samples": arm.samples,
                                "temperature": arm.temperature if arm.samples > 1 else None},
           "run_score_90": {c: scores[c] for c in CONDITIONS}, "train_answers": info.get("train_answers"),
           "steps": info.get("steps"), "wall_s": scores["wall_s"]}
    whole = {c: (N_EVAL * parts["test80"][c] + len(records[N_EVAL:]) * parts["dev10"][c]) / len(records)
             for c in CONDITIONS}
    if any(abs(whole[c] - scores[c]) > 1e-9 for c in CONDITIONS):
        log.warning("%s k %d %s: rescored answers %s differ from the run's own scores %s", db, k, arm.name, whole,
                    row["run_score_90"])
    log.info("%s k %d %s (%d inputs): test80 %s, dev10 %s, %.0f s", db, k, arm.name, arm.size, parts["test80"],
             parts["dev10"], scores["wall_s"])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, nargs="+", default=[4])
    parser.add_argument("--dbs", nargs="+", default=list(DBS))
    parser.add_argument("--sizes", type=int, nargs="+", default=[80, 320, 1280],
                        help="numbers of synthesized unlabeled inputs (first N of one synthesized list)")
    parser.add_argument("--samples", type=int, nargs="+", default=[1, 4],
                        help="teacher answers per input at --samples-size (1 = the greedy arm of that size)")
    parser.add_argument("--samples-size", type=int, default=80, help="the synthesized size of the sampled arms")
    parser.add_argument("--temperature", type=float, default=0.7, help="teacher sampling temperature of the sampled arms")
    parser.add_argument("--margin", type=float, default=0.1,
                        help="synthesize this share more than the largest size, for the held-out questions removed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if min([*args.sizes, args.samples_size, *args.samples]) < 1 or args.temperature <= 0 or args.margin < 0:
        parser.error("--sizes, --samples-size and --samples must be >= 1, --temperature > 0, --margin >= 0")
    warm = load_config(ROOT / CONFIG).model.name  # relative to the repo root, as every run of run.py
    if not Path(warm).is_dir():
        parser.error(f"{warm} is missing: run python experiments/run.py sql sql_warmup_examples "
                     "experiments/sql/warmup_examples.yaml first (from the repo root)")
    start = time.perf_counter()
    plan = arms(args)
    count = math.ceil((1 + args.margin) * max(a.size for a in plan if not a.given))
    more = {(r["db"], r["k"]): r["pooled_80"] for r in
            json.loads((ROOT / "experiments/sql/results/sql_examples_more.json").read_text())["rows"]}
    earlier = json.loads(RESULT.read_text()) if RESULT.is_file() else {"runs": [], "wall_s": 0.0}
    runs: list[dict[str, Any]] = earlier["runs"]
    done = {(r["db"], r["k"], r["arm"]) for r in runs}
    if done:
        log.info("%s holds %d cells; they are skipped", RESULT.name, len(done))
    parts = {db: split(db) for db in args.dbs}
    records = {db: parts[db]["test"] + parts[db]["extra_test"] + parts[db]["dev"] for db in args.dbs}
    paths = {db: files(db, parts[db] | {"test80_dev10": records[db]}) for db in args.dbs}
    synthesis: dict[str, dict[str, Any]] = earlier.get("synthesis", {})
    skipped: list[str] = []
    for k in args.k:
        synth = {}
        for db in args.dbs:
            if all((db, k, a.name) in done for a in plan if not a.given):
                continue
            held_out = parts[db]["dev"] + parts[db]["test"] + parts[db]["extra_test"]
            synth[db] = synthesized(db, k, parts[db]["pool"][:k], held_out, count)
            previous = synthesis.get(db, {}).get(str(k), {})
            synthesis.setdefault(db, {})[str(k)] = ({"wall_s": previous["wall_s"]} if "wall_s" in previous else {}) | {
                key: v for key, v in synth[db].items() if key != "questions"}
            write(runs, synthesis, skipped, args, more, earlier["wall_s"] + time.perf_counter() - start)
        for arm in plan:  # every database in one arm before the next arm: a stopped run keeps whole rows
            for db in args.dbs:
                if (db, k, arm.name) in done:
                    continue
                if not arm.given and synth[db]["kept"] < arm.size:
                    log.warning("%s k %d %s: only %d synthesized questions kept; skipped", db, k, arm.name,
                                synth[db]["kept"])
                    skipped.append(f"{db} k{k} {arm.name}: {synth[db]['kept']} questions kept")
                    continue
                runs.append(cell(db, k, arm, parts[db]["pool"][:k], paths[db], records[db], synth.get(db)))
                if (db, k) in more:  # section 6.2's four arms on the same 80 questions, side by side
                    runs[-1]["section6_pooled_80"] = {c: more[db, k][c] for c in SECTION6}
                write(runs, synthesis, skipped, args, more, earlier["wall_s"] + time.perf_counter() - start)


def write(runs: list[dict[str, Any]], synthesis: dict[str, dict[str, Any]], skipped: list[str],
          args: argparse.Namespace, more: dict[tuple[str, int], dict[str, float]], wall_s: float) -> None:
    """The cells so far, the synthesis counts, and per k and arm the mean over its databases, with section 6.2's
    pooled 80 (``more``: ``sql_examples_more.json`` by database and k) of the same databases beside it."""
    summary: dict[int, dict[str, Any]] = {}
    for k in sorted({r["k"] for r in runs}):
        summary[k] = {}
        for name in dict.fromkeys(r["arm"] for r in runs if r["k"] == k):
            rows = [r for r in runs if r["k"] == k and r["arm"] == name]
            summary[k][name] = {"dbs": [r["db"] for r in rows], "n_inputs": rows[0]["n_inputs"],
                                "teacher_sampling": rows[0]["teacher_sampling"],
                                "test80": {c: statistics.mean(r["test80"][c] for r in rows) for c in CONDITIONS},
                                "dev10": {c: statistics.mean(r["dev10"][c] for r in rows) for c in CONDITIONS},
                                "student_test80_std": statistics.pstdev(r["test80"]["student"] for r in rows)}
            if all((r["db"], k) in more for r in rows):
                summary[k][name]["section6_pooled_80"] = {c: statistics.mean(more[r["db"], k][c] for r in rows)
                                                          for c in SECTION6}
        summary[k]["curve"] = [{"arm": a, "n_inputs": s["n_inputs"], "student_test80": s["test80"]["student"],
                                "student_dev10": s["dev10"]["student"], "dbs": len(s["dbs"])}
                               for a, s in summary[k].items() if not s["teacher_sampling"]["do_sample"]]
    result = {"command": f"python -m experiments.sql.scaling --k {' '.join(map(str, args.k))} --dbs {' '.join(args.dbs)} "
                         f"--sizes {' '.join(map(str, args.sizes))} --samples {' '.join(map(str, args.samples))} "
                         f"--samples-size {args.samples_size} --temperature {args.temperature:g} --margin {args.margin:g}",
              "test_per_db": N_EVAL, "dev_per_db": N_DEV,
              "scores": "execution accuracy; test80 = the pooled test + extra_test questions, dev10 = the dev questions, "
                        "both split from one run's answers.jsonl; nothing here is chosen on test80",
              "inputs": {f"given_{N_INPUTS}": "data/DB/inputs.jsonl: the question generator's 80 unlabeled questions",
                         "synth_N": "the first N of runs/sql_scaling/DB/synthesized_kK.jsonl after the held-out removal"},
              "synthesis": synthesis, "skipped": skipped, "runs": runs, "summary": summary, "wall_s": round(wall_s, 1)}
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, RESULT.with_suffix(".png"))
    log.info("summary %s (%.0f s)", {k: {c["arm"]: c["student_test80"] for c in v["curve"]} for k, v in summary.items()},
             result["wall_s"])


def plot(result: dict[str, Any], path: Path) -> None:
    """Per k, the student's test80 score against its number of unlabeled inputs: each database's greedy synthesized
    arms (thin) and their mean (thick), the given 80 and the sampled arms as markers, section 6.2's gradient descent
    and teacher means over the same databases as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = {int(k): v for k, v in result["summary"].items()}  # int keys in memory, str once read from JSON
    ks = sorted(summary)
    if not ks:
        return
    fig, axes = plt.subplots(1, len(ks), figsize=(6 * len(ks), 4), squeeze=False)
    for ax, k in zip(axes[0], ks, strict=True):
        runs = [r for r in result["runs"] if r["k"] == k]
        greedy = [r for r in runs if r["inputs"] == "synthesized" and not r["teacher_sampling"]["do_sample"]]
        for db in dict.fromkeys(r["db"] for r in greedy):
            mine = sorted((r["n_inputs"], r["test80"]["student"]) for r in greedy if r["db"] == db)
            ax.plot(*zip(*mine, strict=True), color="tab:blue", alpha=0.3, lw=1, marker=".")
        for name, s in summary[k].items():
            if name == "curve":
                continue
            label = f"{name} (mean of {len(s['dbs'])})"
            if s["teacher_sampling"]["do_sample"]:
                ax.plot(s["n_inputs"], s["test80"]["student"], "s", color="tab:orange", label=label)
            elif name.startswith("given_"):
                ax.plot(s["n_inputs"], s["test80"]["student"], "D", color="tab:green", label=label)
        curve = [(c["n_inputs"], c["student_test80"]) for c in summary[k]["curve"] if c["arm"].startswith("synth_")]
        if curve:
            ax.plot(*zip(*sorted(curve), strict=True), color="tab:blue", lw=2.5, marker="o",
                    label="synthesized inputs, greedy teacher (mean)")
        first = next(iter(summary[k].values()))  # write()'s section 6.2 means over the first arm's databases
        for cond, style in (("gradient_descent", "tab:red"), ("teacher", "tab:gray")) if "section6_pooled_80" in first else ():
            ax.axhline(first["section6_pooled_80"][cond], ls="--", color=style,
                       label=f"6.2 {cond.replace('_', ' ')} (mean of {len(first['dbs'])})")
        sizes = sorted({r["n_inputs"] for r in runs})
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.set_xlim(sizes[0] / 1.5, sizes[-1] * 1.5)
        ax.set(xlabel="unlabeled training inputs", ylabel="student execution accuracy (test80)",
               title=f"Text-to-SQL, k = {k}: the student against its inputs", ylim=(0.5, 1.02))
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)  # write() plots after every cell


if __name__ == "__main__":
    main()
