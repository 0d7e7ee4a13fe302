"""Report: ``metrics.json``, ``run.json``, plots and ``report.md`` for one run directory.

``metrics.json`` holds ``{behaviour: {"base": {...}, "teacher": {...}, "student": {...}}}`` (one
behaviour, named ``main`` unless the config names it, or several); ``run.json`` the timings and
counts; ``answers.jsonl`` every held-out input with each condition's final answer; ``metrics.png``
a bar plot of the three conditions (per behaviour when there are several); ``loss.png`` the loss
curve; ``report.md`` the tables, both plots, the forgetting check, the chain of runs and
side-by-side generations.

    write_report(out_dir, {"main": {"base": r0, "teacher": r1, "student": r2}}, behaviours, history, info, cfg)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .behaviours import Behaviour
from .config import CONDITIONS, Config, PromptConfig
from .data import Record, write_jsonl
from .evaluation import ConditionResult

COLORS = {"base": "#9e9e9e", "teacher": "#1f77b4", "student": "#ff7f0e"}
LABELS = {"score": "score (user scorer)", "agreement": "agreement with teacher", "kl": "KL(teacher || model)"}


def _plot_metrics(metrics: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [k for k in ("score", "agreement") if k in metrics["base"]]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), gridspec_kw={"width_ratios": [max(1, len(rates)), 1]})
    width = 0.8 / len(CONDITIONS)
    for c, condition in enumerate(CONDITIONS):
        xs = [i + (c - 1) * width for i in range(len(rates))]
        bars = axes[0].bar(xs, [metrics[condition][k] for k in rates], width, label=condition, color=COLORS[condition])
        axes[0].bar_label(bars, fmt="%.2f", fontsize=7)
        bars = axes[1].bar([c], [metrics[condition]["kl"]], 0.6, color=COLORS[condition])
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


def _plot_behaviours(metrics: dict[str, dict[str, dict[str, float]]], path: Path) -> None:
    """Score (or agreement) per behaviour: base, teacher and student side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(metrics)
    key = "score" if all("score" in m["base"] for m in metrics.values()) else "agreement"
    fig, ax = plt.subplots(figsize=(max(5, 1.8 * len(names) + 2), 3.5))
    width = 0.8 / len(CONDITIONS)
    for c, condition in enumerate(CONDITIONS):
        xs = [i + (c - 1) * width for i in range(len(names))]
        bars = ax.bar(xs, [metrics[n][condition][key] for n in names], width, label=condition, color=COLORS[condition])
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel(LABELS[key])
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("held-out inputs per behaviour")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _context_lines(prompt: PromptConfig) -> list[str]:
    text = prompt.context.strip() or ("(demonstrations only)" if prompt.demonstrations else "(none)")
    turns = f"{len(prompt.demonstrations)} demonstration" + (
        "(s) as text in the context" if prompt.demonstration_template else " turn(s)")
    if len(prompt.split()) > 1:
        how = "averaged token by token" if prompt.combine == "average" else "input i taught by context i mod n"
        turns += f" in {len(prompt.split())} contexts of up to {prompt.demonstrations_per_context} ({how})"
    return ["Context:", "", *[f"> {line}" for line in text.splitlines()], "", f"{turns}, position `{prompt.position}`.", ""]


def _table(metrics: dict[str, dict[str, float]]) -> list[str]:
    keys = [k for k in ("score", "agreement", "kl") if k in metrics["base"]]
    lines = ["| condition | " + " | ".join(LABELS[k] for k in keys) + " |", "|---|" + "---:|" * len(keys)]
    lines += [f"| {c} | " + " | ".join(f"{metrics[c][k]:.3f}" for k in keys) + " |" for c in CONDITIONS]
    return lines + [""]


def _side_by_side(results: dict[str, ConditionResult], held_out: list[Record], n: int) -> list[str]:
    n = min(n, len(held_out))
    if not n:
        return []
    lines = ["| input | base | teacher | student |", "|---|---|---|---|"]
    for i in range(n):
        cells = [_cell(held_out[i]["input"])] + [_cell(results[c].outputs[i]) for c in CONDITIONS]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _chain(origin: dict[str, Any] | None) -> list[str]:
    """Which artifact the run started from, and what each earlier run in the chain added."""
    lines = []
    while origin:
        run = origin.get("run")
        if not run:
            lines.append(f"- started from `{origin['model']}`")
            break
        added = "; ".join(f"'{a}'" for a in run["added"])
        lines.append(f"- `{run['dir']}` added {added}")
        origin = run.get("started_from")
    return ["## Chain", "", "This run started from the artifact of an earlier run:", "", *lines, ""] if len(lines) > 1 \
        else []


def _write_answers(path: Path, results: dict[str, dict[str, ConditionResult]], behaviours: list[Behaviour]) -> None:
    """Every held-out input with the final answer of each condition, one JSON object per line."""
    write_jsonl(path, [{**({"behaviour": b.name} if len(behaviours) > 1 else {}), "input": record["input"],
                        **{c: results[b.name][c].outputs[i] for c in CONDITIONS}}
                       for b in behaviours for i, record in enumerate(b.held_out)])


def write_report(out: Path, results: dict[str, dict[str, ConditionResult]], behaviours: list[Behaviour],
                 history: list[dict[str, float]], info: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """Write metrics.json, run.json, answers.jsonl, metrics.png, loss.png and report.md into ``out``.

    ``results`` is ``{behaviour: {condition: result}}``; returns the metrics as written to metrics.json."""
    metrics = {name: {c: r[c].metrics for c in CONDITIONS} for name, r in results.items()}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    _write_answers(out / "answers.jsonl", results, behaviours)
    if len(metrics) == 1:
        _plot_metrics(next(iter(metrics.values())), out / "metrics.png")
    else:
        _plot_behaviours(metrics, out / "metrics.png")
    if history:
        _plot_loss(history, out / "loss.png")
    lines = [
        "# internalize report",
        "",
        f"Model `{cfg.model.name}` ({cfg.model.finetune}), {info.get('train_answers', 0)} teacher answers for training, "
        f"{sum(len(b.held_out) for b in behaviours)} held-out inputs.",
        "",
    ]
    if cfg.model.trust_remote_code:
        lines += ["The model's own modelling code was run (`model.trust_remote_code: true`).", ""]
    lines += _chain(info.get("started_from"))
    for b in behaviours:
        if len(behaviours) > 1:
            lines += [f"## Behaviour `{b.name}`", ""]
        lines += [*_context_lines(b.prompt), *_table(metrics[b.name])]
    lines += ["base and student answer without the context; the teacher has it.", "", "![metrics](metrics.png)", ""]
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
    if info.get("too_long"):
        lines += [f"Inputs dropped because they do not fit the model's window with their context (`data.too_long`): "
                  f"{info['too_long']}.", ""]
    if info.get("teacher_cache", {}).get("hit"):
        lines += [f"The teacher's answers and distributions were reused from the cache in "
                  f"`{info['teacher_cache']['dir']}` (same weights, context, inputs and teacher settings).", ""]
    if info.get("timings"):
        lines += ["Wall time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in info["timings"].items()) + ".", ""]
    for b in behaviours:
        side = _side_by_side(results[b.name], b.held_out, cfg.eval.num_examples)
        if side:
            lines += ["## Side by side" + (f": `{b.name}`" if len(behaviours) > 1 else ""), "", *side]
    (out / "report.md").write_text("\n".join(lines))
    return metrics
