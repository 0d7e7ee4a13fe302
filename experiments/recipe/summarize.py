"""Table and plot of issue 17's recipe comparison: one recipe for 30, 300 and 3,000 training inputs.

Every record ``experiments/recipe/results/over_{SIZE}_{ARM}[_seedN].json`` is one run of the main job
(examples/over.yaml) on the first SIZE model-written questions. The arms:

- **A**: examples/over.yaml as a user copies it (lr 1e-3, one epoch, batch 8);
- **B**: A with ``train.min_steps=50``;
- **C**: A with ``train.min_steps=50 train.validation=0.1`` (patience 3, measured ten times a run);
- **D**: A with ``train.min_steps=100 train.validation=0.1``;
- **E**, **F**: A with ``train.min_steps=16`` and ``32``: smaller floors, added after A-D had run (to find the
  smallest floor that works: 16 leaves the main job's 130 inputs at their 17 steps);
- **G**: the new defaults (D) at the library's own lr 2e-4 and 2 epochs, run after the choice, at 30
  inputs only (it has no cell at the other sizes, so the choice never sees it).

An epoch is 36 steps at 300 inputs and 355 at 3,000, so some arms are the same run there: B equals A
at 3,000 and D equals C; E and F equal A at 300 and 3,000. Those runs are shared.
For each size and arm: steps taken (and the validation's best step), held-out score on the 30 test
questions, the share of the teacher's gain, the retention score kept (120 questions), KL to the
original model on neutral prompts, wall time. With ``results/dev.json``
(``python experiments/onpolicy/dev_eval.py --results experiments/recipe/results``: each student on 30
dev questions and 60 dev retention questions) it picks the arm with the largest worst case over the
three sizes of min(dev gain, dev kept), each capped at 100% (ties: the fewer steps), a rule fixed
before the dev figures existed. Writes ``results/summary.md`` and ``results/summary.png``.

    python experiments/recipe/summarize.py
    python experiments/recipe/summarize.py --results experiments/demo/results --sizes 130   # the demo's arms

``--results`` and ``--sizes`` apply the same table and rule to another folder of ``over_{SIZE}_{ARM}`` records
(experiments/demo: the main job's own 130 inputs, EXPERIMENTS.md section 12).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parents[1]))
from experiments.onpolicy.summarize import _row as onpolicy_row  # noqa: E402

RESULTS = HERE / "results"
SIZES = (30, 300, 3000)
ARMS = {"A": "over.yaml (lr 1e-3, 1 epoch)", "B": "A + min_steps 50", "C": "A + min_steps 50 + validation 0.1",
        "D": "A + min_steps 100 + validation 0.1", "E": "A + min_steps 16", "F": "A + min_steps 32",
        "G": "D at the library's lr 2e-4, 2 epochs (after the choice; 30 inputs, test only)"}
SHARED = {("B", 3000): "A", ("D", 3000): "C", ("E", 300): "A", ("E", 3000): "A", ("F", 300): "A",
          ("F", 3000): "A"}  # the same run: the floor is below what the epochs give


def records(results: Path = RESULTS) -> dict[tuple[str, int], list[dict]]:
    """The runs by (arm, size), each with its name; shared runs are listed under both arms."""
    out: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for path in sorted(results.glob("over_*.json")):
        m = re.fullmatch(r"over_(\d+)_([A-Z])(?:_seed\d+)?", path.stem)
        if m:
            out[(m[2], int(m[1]))].append(json.loads(path.read_text()) | {"name": path.stem})
    for (arm, size), same in SHARED.items():
        out.setdefault((arm, size), out.get((same, size), []))
    return out


def _mean(values: list[float], percent: bool = False) -> str:
    if not values:
        return "-"
    one = (lambda v: f"{v:.0%}") if percent else (lambda v: f"{v:.3f}")
    mean = statistics.fmean(values)
    return one(mean) if len(values) == 1 else f"{one(mean)} ({one(min(values))}-{one(max(values))})"


def test_row(runs: list[dict]) -> dict[str, list[float]]:
    """The on-policy comparison's columns of these runs (score, gain, kept, kl_neutral, wall_s, ...), with the
    steps taken and the validation's best step."""
    out = onpolicy_row(runs)
    for r in runs:
        out["steps"].append(r["steps"])
        out["best"].append(r.get("best_step", r["steps"]))
    return out


def dev_row(runs: list[dict], dev: dict) -> dict[str, list[float]]:
    out: dict[str, list[float]] = defaultdict(list)
    for r in runs:
        got = dev.get("runs", {}).get(r["name"])
        if got is not None:
            out["gain"].append(min(1.0, got["gain_recovered"]))
            out["kept"].append(min(1.0, got["retention_kept"]))
    return out


def choose(table: dict[tuple[str, int], list[dict]], dev: dict, sizes: tuple[int, ...] = SIZES,
           ) -> tuple[str | None, dict[str, float]]:
    """The arm with the largest worst case over the sizes of min(dev gain, dev kept); its worst cases by arm."""
    worst = {}
    for arm in ARMS:
        cells = [dev_row(table.get((arm, size), []), dev) for size in sizes]
        if all(c["gain"] for c in cells):
            worst[arm] = min(min(statistics.fmean(c["gain"]), statistics.fmean(c["kept"])) for c in cells)
    if not worst:
        return None, worst
    steps = {arm: sum(statistics.fmean(test_row(table[(arm, s)])["steps"]) for s in sizes) for arm in worst}
    return max(worst, key=lambda a: (worst[a], -steps[a])), worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="the folder of over_{SIZE}_{ARM} records")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="the training sizes in the table")
    args = parser.parse_args()
    results, sizes = args.results, tuple(args.sizes)
    table = records(results)
    dev = json.loads((results / "dev.json").read_text()) if (results / "dev.json").exists() else {}
    title = ("Issue 17: one recipe from 30 to 3,000 inputs (main job)" if sizes == SIZES
             else f"The main job's arms at {', '.join(map(str, sizes))} inputs")
    lines = [f"# {title}", "",
             "Test: 30 held-out questions and 120 retention questions; dev: 30 dev questions and 60 dev retention "
             "questions (choice only). Mean (range) over the seeds each cell has.", "",
             "| inputs | arm | seeds | steps (best) | test score | gain | retention kept | KL neutral | wall s "
             "| dev gain | dev kept |", "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for size in sizes:
        for arm in ARMS:
            runs = table.get((arm, size), [])
            if not runs:
                continue
            t, d = test_row(runs), dev_row(runs, dev)
            shared = f" (= {SHARED[(arm, size)]})" if (arm, size) in SHARED else ""
            lines.append(f"| {size} | {arm}{shared} | {len(runs)} | "
                         f"{statistics.fmean(t['steps']):.0f} ({statistics.fmean(t['best']):.0f}) | "
                         f"{_mean(t['score'], True)} | {_mean(t['gain'], True)} | {_mean(t['kept'], True)} | "
                         f"{_mean(t['kl_neutral'])} | {statistics.fmean(t['wall_s']):.0f} | {_mean(d['gain'], True)} | "
                         f"{_mean(d['kept'], True)} |")
    arm, worst = choose(table, dev, sizes)
    shown = {a for (a, size), runs in table.items() if size in sizes and runs}
    lines += ["", "Arms: " + "; ".join(f"**{a}** {text}" for a, text in ARMS.items() if a in shown) + ".", ""]
    if arm:
        lines.append("Worst case over the sizes of min(dev gain, dev kept): "
                     + ", ".join(f"{a} {w:.0%}" for a, w in worst.items()) + f". **Dev choice: {arm}.**")
    (results / "summary.md").write_text("\n".join(lines) + "\n")
    plot(table, results, sizes)
    print("\n".join(lines))


def plot(table: dict[tuple[str, int], list[dict]], results: Path = RESULTS, sizes: tuple[int, ...] = SIZES) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for arm in ARMS:
        have = [s for s in sizes if table.get((arm, s))]
        if not have:
            continue
        rows = [test_row(table[(arm, s)]) for s in have]
        for ax, key in zip(axes, ("gain", "kept"), strict=True):
            ax.plot(have, [statistics.fmean(r[key]) for r in rows], marker="o", label=f"{arm}: {ARMS[arm]}")
    for ax, title in zip(axes, ("share of the teacher's gain (test)", "retention score kept (test)"), strict=True):
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.axhline(0.95, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("training inputs")
        ax.set_title(title)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(results / "summary.png", dpi=120)


if __name__ == "__main__":
    main()
