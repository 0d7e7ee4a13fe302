"""Report: ``metrics.json``, ``run.json``, plots and ``report.md`` for one run directory.

``metrics.json`` holds ``{"base": {...}, "teacher": {...}, "student": {...}}``; ``run.json`` the
timings and counts; ``metrics.png`` a bar plot of the three conditions; ``loss.png`` the loss
curve; ``report.md`` the table, both plots and side-by-side generations.

    write_report(out_dir, results, history, held_out, info, cfg)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .config import Config
from .data import Record
from .evaluation import CONDITIONS, ConditionResult

LABELS = {"score": "score (user scorer)", "agreement": "agreement with teacher", "kl": "KL(teacher || model)"}


def _plot_metrics(metrics: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [k for k in ("score", "agreement") if k in metrics["base"]]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), gridspec_kw={"width_ratios": [max(1, len(rates)), 1]})
    colors = {"base": "#9e9e9e", "teacher": "#1f77b4", "student": "#ff7f0e"}
    width = 0.8 / len(CONDITIONS)
    for c, condition in enumerate(CONDITIONS):
        xs = [i + (c - 1) * width for i in range(len(rates))]
        bars = axes[0].bar(xs, [metrics[condition][k] for k in rates], width, label=condition, color=colors[condition])
        axes[0].bar_label(bars, fmt="%.2f", fontsize=7)
        bars = axes[1].bar([c], [metrics[condition]["kl"]], 0.6, color=colors[condition])
        axes[1].bar_label(bars, fmt="%.3f", fontsize=7)
    axes[0].set_xticks(range(len(rates)), [LABELS[k] for k in rates])
    axes[0].set_ylim(0, 1.12)
    axes[0].legend(loc="upper left", fontsize=8)
    axes[0].set_title("held-out inputs (higher is better)")
    axes[1].set_xticks(range(len(CONDITIONS)), CONDITIONS)
    axes[1].set_title("KL(teacher || model) per token")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_loss(history: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], marker=".")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("student training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _cell(text: str, limit: int = 160) -> str:
    text = text.replace("\n", " ").replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def write_report(out: Path, results: dict[str, ConditionResult], history: list[dict[str, float]],
                 held_out: list[Record], info: dict[str, Any], cfg: Config) -> dict[str, dict[str, float]]:
    """Write metrics.json, run.json, metrics.png, loss.png and report.md into ``out``."""
    metrics = {c: results[c].metrics for c in CONDITIONS}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    _plot_metrics(metrics, out / "metrics.png")
    if history:
        _plot_loss(history, out / "loss.png")
    keys = [k for k in ("score", "agreement", "kl") if k in metrics["base"]]
    lines = [
        "# internalize report",
        "",
        f"Model `{cfg.model.name}` ({cfg.model.finetune}), context position `{cfg.teacher.position}`, "
        f"{info.get('train_answers', 0)} teacher answers for training, {len(held_out)} held-out inputs.",
        "",
        "Context:",
        "",
        *[f"> {line}" for line in (cfg.teacher.context.strip() or "(demonstrations only)").splitlines()],
        "",
        f"{len(cfg.teacher.demonstrations)} demonstration turn(s).",
        "",
        "| condition | " + " | ".join(LABELS[k] for k in keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    for c in CONDITIONS:
        lines.append(f"| {c} | " + " | ".join(f"{metrics[c][k]:.3f}" for k in keys) + " |")
    lines += ["", "base and student answer without the context; the teacher has it.", "", "![metrics](metrics.png)", ""]
    if history:
        lines += ["![loss](loss.png)", "", f"Loss {history[0]['loss']:.4f} -> {history[-1]['loss']:.4f} "
                  f"over {len(history)} steps.", ""]
    if info.get("synthesis"):
        syn = info["synthesis"]
        lines += [f"Training inputs written by the model: kept {syn['kept']} of {syn['generated']} generated "
                  f"(dropped {syn['dropped']}), distinct 2-grams {syn['distinct_2grams']:.3f}.", ""]
    if info.get("forgetting"):
        f = info["forgetting"]
        lines += [f"Forgetting check on {f['n']} neutral prompts (`eval.neutral_file`): the student's greedy answers "
                  f"equal the original model's on {f['agreement_with_original']:.0%} of them (100% before "
                  f"distillation); mean per-token KL(original || student) on the original's answers "
                  f"{f['kl_original_student']:.4f} (0 before).", ""]
    if info.get("dropped"):
        lines += [f"Teacher samples dropped: {info['dropped']}.", ""]
    if info.get("teacher_cache", {}).get("hit"):
        lines += [f"The teacher's answers and distributions were reused from the cache in "
                  f"`{info['teacher_cache']['dir']}` (same weights, context, inputs and teacher settings).", ""]
    if info.get("timings"):
        lines += ["Wall time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in info["timings"].items()) + ".", ""]
    n = min(cfg.eval.num_examples, len(held_out))
    if n:
        lines += ["## Side by side", "", "| input | base | teacher | student |", "|---|---|---|---|"]
        for i in range(n):
            cells = [_cell(held_out[i]["input"])] + [_cell(results[c].outputs[i]) for c in CONDITIONS]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    (out / "report.md").write_text("\n".join(lines))
    return metrics
