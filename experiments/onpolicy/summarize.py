"""Table and plot of the on-policy comparison: every record in experiments/onpolicy/results/ (one per run).

Groups the runs by task (over: the main job; weather: the explained-sentiment job), training mode and
rehearsal, and gives for each group the mean (and range, over the seeds it has) of: the held-out
score, the share of the teacher's gain the student recovers ((student - base) / (teacher - base)),
the retention score kept (student / original model, 120 general questions), KL(original || student)
on the neutral prompts, the wall time and the share of training time spent sampling and scoring.
Writes ``results/summary.md`` and ``results/summary.png``.

    python experiments/onpolicy/summarize.py
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results"
MODES = ("offline", "on_policy", "mixed")


def _group(record: dict) -> tuple[str, str, float]:
    """(task, train.mode, train.retain) of a run, read off its command line."""
    words = record["command"].split()
    settings = dict(w.split("=", 1) for w in words if "=" in w)
    task = "over" if words[words.index("onpolicy") + 2] == "examples/over.yaml" else "weather"
    return task, settings.get("train.mode", "offline"), float(settings.get("train.retain", 0))


def _row(records: list[dict]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = defaultdict(list)
    for r in records:
        m = r["metrics"]["main"]
        base, teacher, student = (m[c]["score"] for c in ("base", "teacher", "student"))
        out["score"].append(student)
        out["gain"].append((student - base) / (teacher - base) if teacher != base else float("nan"))
        out["teacher"].append(teacher)
        out["kept"].append(r["retention"]["kept"])
        out["kl_neutral"].append(r["forgetting"]["kl_original_student"])
        out["wall_s"].append(r["wall_s"])
        o = r.get("on_policy")
        out["sampling"].append(o["share_of_train_time_sampling_and_scoring"] if o else 0.0)
        out["cut_off"].append(o["share_cut_off"] if o and o["samples"] else 0.0)
    return out


def _fmt(values: list[float], percent: bool = False, digits: int = 3) -> str:
    def one(v: float) -> str:
        return f"{v:.0%}" if percent else f"{v:.{digits}f}"

    mean = statistics.fmean(values)
    return one(mean) if len(values) == 1 else f"{one(mean)} ({one(min(values))}-{one(max(values))})"


def main() -> None:
    groups: dict[tuple[str, str, float], list[dict]] = defaultdict(list)
    for path in sorted(RESULTS.glob("*.json")):
        record = json.loads(path.read_text())
        groups[_group(record)].append(record)
    lines = ["| task | mode | rehearsal | seeds | held-out score | teacher's gain recovered | retention kept | "
             "KL(original ‖ student), neutral | wall time (s) | training time sampling + scoring | samples cut off |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for (task, mode, retain), records in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2],
                                                                               MODES.index(kv[0][1]))):
        r = _row(records)
        rows.append((task, mode, retain, r))
        lines.append(f"| {task} | {mode} | {retain if retain else 'off'} | {len(records)} | "
                     f"{_fmt(r['score'], True)} | {_fmt(r['gain'], True)} | {_fmt(r['kept'], True)} | "
                     f"{_fmt(r['kl_neutral'])} | {_fmt(r['wall_s'], digits=0)} | {_fmt(r['sampling'], True)} | "
                     f"{_fmt(r['cut_off'], True)} |")
    (RESULTS / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for task, mode, retain, r in rows:
        x, y = statistics.fmean(r["kept"]), statistics.fmean(r["gain"])
        ax.scatter(x, y, marker="o" if task == "over" else "s", s=60,
                   color={"offline": "tab:blue", "on_policy": "tab:orange", "mixed": "tab:green"}[mode],
                   edgecolors="black" if retain else "none", linewidths=1.5)
        ax.annotate(f"{task} {mode}{f' +retain {retain}' if retain else ''}", (x, y), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    ax.axvline(0.95, color="grey", lw=0.8, ls="--")
    ax.axhline(0.95, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("retention score kept (student / original model)")
    ax.set_ylabel("teacher's gain recovered by the student")
    ax.set_title("Target: top right of the dashed lines (both at least 95%)")
    fig.tight_layout()
    fig.savefig(RESULTS / "summary.png", dpi=120)


if __name__ == "__main__":
    main()
