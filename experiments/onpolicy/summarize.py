"""Table and plot of the on-policy comparison: every record in experiments/onpolicy/results/ (one per run).

Groups the runs by task (over: the main job; weather: the explained-sentiment job), training mode and
rehearsal, and gives for each group the mean (and range, over the seeds it has) of: the held-out
score, the share of the teacher's gain the student recovers ((student - base) / (teacher - base)),
the retention score kept (student / original model, 120 general questions), KL(original || student)
on the neutral prompts, the wall time and the share of training time spent sampling and scoring.
With ``results/dev.json`` (``dev_eval.py``: every run's student on dev splits no report uses), it adds
each group's dev gain and dev retention kept and chooses, per task, the arm with the largest
min(dev gain recovered, dev retention kept) (each capped at 100%; ties: the faster), then reports
that arm's test figures. Writes ``results/summary.md`` and ``results/summary.png``.

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


def _dev(records: list[dict], dev: dict) -> dict[str, list[float]]:
    """The group's dev gain recovered and dev retention kept, over the seeds dev.json scored."""
    out: dict[str, list[float]] = defaultdict(list)
    for r in records:
        got = dev.get("runs", {}).get(r["name"])
        if got is not None:
            out["gain"].append(got["gain_recovered"])
            out["kept"].append(got["retention_kept"])
    return out


def _choice(rows: list[tuple], task: str) -> tuple | None:
    """The task's arm with the largest min(dev gain, dev kept), each capped at 1; ties go to the faster arm."""
    scored = [(min(1.0, statistics.fmean(d["gain"])), min(1.0, statistics.fmean(d["kept"])), row)
              for row in rows if row[0] == task and (d := row[4])["gain"]]
    if not scored:
        return None
    return max(scored, key=lambda s: (min(s[0], s[1]), -statistics.fmean(s[2][3]["wall_s"])))[2]


def main() -> None:
    groups: dict[tuple[str, str, float], list[dict]] = defaultdict(list)
    for path in sorted(RESULTS.glob("*.json")):
        if path.name == "dev.json":
            continue
        record = json.loads(path.read_text()) | {"name": path.stem}
        groups[_group(record)].append(record)
    dev = json.loads((RESULTS / "dev.json").read_text()) if (RESULTS / "dev.json").exists() else {}
    lines = ["| task | mode | rehearsal | seeds | held-out score | teacher's gain recovered | retention kept | "
             "KL(original ‖ student), neutral | wall time (s) | training time sampling + scoring | samples cut off | "
             "dev: gain recovered | dev: retention kept |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for (task, mode, retain), records in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2],
                                                                               MODES.index(kv[0][1]))):
        r, d = _row(records), _dev(records, dev)
        rows.append((task, mode, retain, r, d))
        lines.append(f"| {task} | {mode} | {retain if retain else 'off'} | {len(records)} | "
                     f"{_fmt(r['score'], True)} | {_fmt(r['gain'], True)} | {_fmt(r['kept'], True)} | "
                     f"{_fmt(r['kl_neutral'])} | {_fmt(r['wall_s'], digits=0)} | {_fmt(r['sampling'], True)} | "
                     f"{_fmt(r['cut_off'], True)} | {_fmt(d['gain'], True) if d['gain'] else '-'} | "
                     f"{_fmt(d['kept'], True) if d['kept'] else '-'} |")
    for task in ("over", "weather"):
        chosen = _choice(rows, task)
        if chosen is not None:
            t, mode, retain, r, d = chosen
            lines.append(f"\n**{task}: chosen on dev** {mode}, rehearsal {retain if retain else 'off'} (dev: gain "
                         f"{_fmt(d['gain'], True)}, retention kept {_fmt(d['kept'], True)}); **test**: gain "
                         f"{_fmt(r['gain'], True)}, retention kept {_fmt(r['kept'], True)}, {len(r['score'])} seed(s).")
    (RESULTS / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for task, mode, retain, r, _ in rows:
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
