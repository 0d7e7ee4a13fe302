"""Report: ``metrics.json``, ``run.json``, plots, ``report.md`` and ``report.html`` for one run directory.

``metrics.json`` holds ``{behaviour: {"base": {...}, "teacher": {...}, "student": {...}}}`` (one
behaviour, named ``main`` unless the config names it, or several); ``run.json`` the timings and
counts; ``answers.jsonl`` every held-out input with each condition's final answer; ``metrics.png``
a bar plot of the three conditions (per behaviour when there are several); ``loss.png`` the loss
curve; ``report.md`` the tables, both plots, the forgetting check, the chain of runs and
side-by-side generations; ``report.html`` the same as one self-contained page (``html_report``). The facts
both reports state are computed once (``collect``) and rendered twice (``markdown`` here, ``page`` in
``html_report``, which also rebuilds report.html from a run directory's files: ``render_html``).

    write_report(out_dir, {"main": {"base": r0, "teacher": r1, "student": r2}}, behaviours, history, info, cfg)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .behaviours import Behaviour
from .config import CONDITIONS, Config, PromptConfig
from .data import write_jsonl
from .evaluation import ConditionResult, metrics_of

COLORS = {"base": "#9e9e9e", "teacher": "#1f77b4", "student": "#ff7f0e"}
LABELS = {"score": "score (user scorer)", "agreement": "agreement with teacher", "kl": "KL(teacher || model)"}
CONDITIONS_NOTE = "base and student answer without the context; the teacher has it."


def number(value: float) -> str:
    """A metric as both reports print it."""
    return f"{value:.3f}"


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
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], marker=".", label="training loss")
    measured = [h for h in history if "val_kl" in h]
    if measured:  # train.validation: the student's KL to the teacher on the validation split
        ax.plot([h["step"] for h in measured], [h["val_kl"] for h in measured], marker="o", label="validation KL")
        ax.legend()
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss / KL per token")
    ax.set_title("student training loss" + (" and validation KL" if measured else ""))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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


def _cell(text: str, limit: int = 160) -> str:
    text = text.replace("\n", " ").replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class BehaviourFacts:
    """One behaviour's part of the report: its prompt, its metrics and its first answers."""

    name: str
    context: str  # the context text, "(demonstrations only)" or "(none)"
    prompt_note: str  # how the prompt is given: demonstrations, contexts, position (inline `code` marks)
    demonstrations: list[dict[str, str]]
    keys: list[str]  # the metrics shown, in order (score, agreement, kl)
    metrics: dict[str, dict[str, float]]  # {condition: {key: value}}
    held_out: int
    examples: list[dict[str, str]]  # the first eval.num_examples rows of answers.jsonl: input, base, teacher, student


@dataclass
class ReportFacts:
    """Everything report.md and report.html say, computed once (``collect``) and rendered twice.

    Sentences mark names and paths with `backticks`: markdown keeps them, HTML turns them into <code>."""

    model: str
    finetune: str
    train_answers: int
    held_out: int
    summary: str
    notices: list[str]  # said right under the summary (the model's own code was run)
    chain: list[str]  # the runs this one descends from, newest first; empty for a run from a plain model
    behaviours: list[BehaviourFacts]
    plots: list[str]  # the PNG files of the run directory to show: metrics.png, then loss.png when there is one
    loss: str | None  # "Loss a -> b over n steps." when the history is known
    notes: list[tuple[str, str]] = field(default_factory=list)  # (title, sentence): synthesis, forgetting, drops, cache
    timings: dict[str, float] = field(default_factory=dict)
    steps: int | None = None
    total_s: float | None = None


def _prompt_note(prompt: PromptConfig) -> str:
    turns = f"{len(prompt.demonstrations)} demonstration" + (
        "(s) as text in the context" if prompt.demonstration_template else " turn(s)")
    if len(prompt.split()) > 1:
        how = "averaged token by token" if prompt.combine == "average" else "input i taught by context i mod n"
        turns += f" in {len(prompt.split())} contexts of up to {prompt.demonstrations_per_context} ({how})"
    return f"{turns}, position `{prompt.position}`."


def _chain(origin: dict[str, Any] | None) -> list[str]:
    """Which artifact the run started from, and what each earlier run in the chain added."""
    lines = []
    while origin:
        run = origin.get("run")
        if not run:
            lines.append(f"started from `{origin['model']}`")
            break
        added = "; ".join(f"'{a}'" for a in run["added"])
        lines.append(f"`{run['dir']}` added {added}")
        origin = run.get("started_from")
    return lines if len(lines) > 1 else []


def _counts(counts: dict[str, int] | int) -> str:
    if isinstance(counts, dict):
        return ", ".join(f"{why} {n}" for why, n in counts.items())
    return str(counts)


def _notes(info: dict[str, Any]) -> list[tuple[str, str]]:
    notes = []
    if info.get("synthesis"):
        syn = info["synthesis"]
        notes.append(("Inputs written by the model", f"Training inputs written by the model: kept {syn['kept']} of "
                      f"{syn['generated']} generated (dropped {syn['dropped']}), distinct 2-grams "
                      f"{syn['distinct_2grams']:.3f}."))
    if info.get("forgetting"):
        f = info["forgetting"]
        notes.append(("Forgetting check", f"Forgetting check on {f['n']} neutral prompts (`eval.neutral_file`): the "
                      f"student's greedy answers equal the original model's on {f['agreement_with_original']:.0%} of "
                      f"them (100% before distillation); mean per-token KL(original || student) on the original's "
                      f"answers {f['kl_original_student']:.4f} (0 before)."))
    if info.get("retention"):
        r = info["retention"]
        kept = f" ({r['kept']:.0%} of the original's score)" if r.get("kept") is not None else ""
        notes.append(("Retention check", f"Retention check on {r['n']} general questions with answer keys "
                      f"(`eval.retention_file`), no context: the student answers {r['student']:.0%} right, the "
                      f"original model {r['original']:.0%}{kept}."))
    if info.get("on_policy"):
        o = info["on_policy"]
        notes.append(("On-policy training", f"On-policy training: the student sampled the answers of {o['on_policy']} "
                      f"of {o['micro_batches']} micro-batches ({o['samples']} answers, {o['share_cut_off']:.0%} cut off "
                      f"at the length limit); sampling and scoring took "
                      f"{o['share_of_train_time_sampling_and_scoring']:.0%} of the training time."))
    if info.get("dropped"):
        notes.append(("Dropped teacher samples", f"Teacher samples dropped: {_counts(info['dropped'])}."))
    if info.get("too_long"):
        notes.append(("Inputs too long", "Inputs dropped because they do not fit the model's window with their "
                      f"context (`data.too_long`): {_counts(info['too_long'])}."))
    if info.get("teacher_cache", {}).get("hit"):
        notes.append(("Teacher cache", f"The teacher's answers and distributions were reused from the cache in "
                      f"`{info['teacher_cache']['dir']}` (same weights, context, inputs and teacher settings)."))
    return notes


def collect(cfg: Config, metrics: dict[str, dict[str, dict[str, float]]], answers: list[dict[str, str]],
            info: dict[str, Any], history: list[dict[str, float]] | None, plots: list[str]) -> ReportFacts:
    """The facts of a report, from what a run directory holds: the config, metrics.json, answers.jsonl (rows with
    ``behaviour`` when there are several), run.json, the loss history (None when unknown) and the plots' file names."""
    prompts = {b.name: b.prompt for b in cfg.behaviours}
    behaviours = []
    for name, m in metrics.items():
        rows = [a for a in answers if a.get("behaviour", name) == name]
        prompt = prompts.get(name)
        if prompt is None:
            context, note, demonstrations = "(not in config.yaml)", "", []
        else:
            context = prompt.context.strip() or ("(demonstrations only)" if prompt.demonstrations else "(none)")
            note, demonstrations = _prompt_note(prompt), [dict(d) for d in prompt.demonstrations]
        behaviours.append(BehaviourFacts(
            name=name, context=context, prompt_note=note, demonstrations=demonstrations,
            keys=[k for k in ("score", "agreement", "kl") if k in m["base"]], metrics=m,
            held_out=len(rows) if rows else int(m["base"].get("n", 0)), examples=rows[: cfg.eval.num_examples]))
    held_out = sum(b.held_out for b in behaviours)
    train_answers = info.get("train_answers", 0)
    loss = None
    if history:
        loss = f"Loss {history[0]['loss']:.4f} -> {history[-1]['loss']:.4f} over {len(history)} steps."
    return ReportFacts(
        model=cfg.model.name, finetune=cfg.model.finetune, train_answers=train_answers, held_out=held_out,
        summary=f"Model `{cfg.model.name}` ({cfg.model.finetune}), {train_answers} teacher answers for training, "
                f"{held_out} held-out inputs.",
        notices=["The model's own modelling code was run (`model.trust_remote_code: true`)."]
        if cfg.model.trust_remote_code else [],
        chain=_chain(info.get("started_from")), behaviours=behaviours, plots=plots, loss=loss, notes=_notes(info),
        timings=dict(info.get("timings") or {}), steps=info.get("steps"), total_s=info.get("total_s"))


def markdown(facts: ReportFacts) -> str:
    """report.md."""
    several = len(facts.behaviours) > 1
    lines = ["# internalize report", "", facts.summary, ""]
    for notice in facts.notices:
        lines += [notice, ""]
    if facts.chain:
        lines += ["## Chain", "", "This run started from the artifact of an earlier run:", "",
                  *[f"- {item}" for item in facts.chain], ""]
    for b in facts.behaviours:
        if several:
            lines += [f"## Behaviour `{b.name}`", ""]
        lines += ["Context:", "", *[f"> {line}" for line in b.context.splitlines()], "", b.prompt_note, ""]
        lines += ["| condition | " + " | ".join(LABELS[k] for k in b.keys) + " |", "|---|" + "---:|" * len(b.keys)]
        lines += [f"| {c} | " + " | ".join(number(b.metrics[c][k]) for k in b.keys) + " |" for c in CONDITIONS]
        lines += [""]
    lines += [CONDITIONS_NOTE, ""]
    for plot in facts.plots:
        lines += [f"![{Path(plot).stem}]({plot})", ""]
        if plot == "loss.png" and facts.loss:
            lines += [facts.loss, ""]
    lines += [sentence for _, note in facts.notes for sentence in (note, "")]
    if facts.timings:
        lines += ["Wall time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in facts.timings.items()) + ".", ""]
    for b in facts.behaviours:
        if b.examples:
            lines += ["## Side by side" + (f": `{b.name}`" if several else ""), "",
                      "| input | base | teacher | student |", "|---|---|---|---|"]
            lines += ["| " + " | ".join(_cell(row[k]) for k in ("input", *CONDITIONS)) + " |" for row in b.examples]
            lines += [""]
    return "\n".join(lines)


def _answer_rows(results: dict[str, dict[str, ConditionResult]], behaviours: list[Behaviour]) -> list[dict[str, str]]:
    """Every held-out input with the final answer of each condition (the lines of answers.jsonl)."""
    return [{**({"behaviour": b.name} if len(behaviours) > 1 else {}), "input": record["input"],
             **{c: results[b.name][c].outputs[i] for c in CONDITIONS}}
            for b in behaviours for i, record in enumerate(b.held_out)]


def write_report(out: Path, results: dict[str, dict[str, ConditionResult]], behaviours: list[Behaviour],
                 history: list[dict[str, float]], info: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """Write metrics.json, run.json, answers.jsonl, metrics.png, loss.png, report.md and report.html into ``out``.

    ``results`` is ``{behaviour: {condition: result}}``; returns the metrics as written to metrics.json."""
    metrics = metrics_of(results)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    answers = _answer_rows(results, behaviours)
    write_jsonl(out / "answers.jsonl", answers)
    if len(metrics) == 1:
        _plot_metrics(next(iter(metrics.values())), out / "metrics.png")
    else:
        _plot_behaviours(metrics, out / "metrics.png")
    if history:
        _plot_loss(history, out / "loss.png")
    facts = collect(cfg, metrics, answers, info, history, ["metrics.png", *(["loss.png"] * bool(history))])
    (out / "report.md").write_text(markdown(facts))
    from .html_report import page  # html_report renders this module's facts: imported here, not at the top

    (out / "report.html").write_text(page(facts, out), encoding="utf-8")
    return metrics
