"""The report as one self-contained HTML page: ``OUT/report.html``, beside ``report.md``.

``page`` renders the facts ``report.collect`` gathers (the same ones report.md states) as a single
file: inline CSS, the plots embedded as base64 ``data:`` URIs, no external resource and no
JavaScript. It holds the header facts (model, counts), the chain of runs, a section per behaviour
(its context, the base / teacher / student metrics and the side-by-side answers, every text escaped
and wrapped), the forgetting check and other notes, the timings and the plots. ``write_report``
writes it with every run; ``render_html`` rebuilds it from a run directory's files, e.g. for a run
written before report.html existed.

    html = page(facts, out_dir)              # facts = report.collect(...); the plots are read from out_dir
    render_html("runs/over")                 # -> runs/over/report.html
"""

from __future__ import annotations

import base64
import html
import json
import logging
import re
from pathlib import Path

from .config import CONDITIONS, InternalizeError, load_config
from .report import COLORS, CONDITIONS_NOTE, LABELS, BehaviourFacts, ReportFacts, collect, number

log = logging.getLogger(__name__)

RATES = ("score", "agreement")  # metrics in [0, 1], drawn as a bar behind the number

CSS = """
:root { --ink: #1d1f23; --muted: #5f6670; --line: #d9dde3; --soft: #f5f7fa; --same: #e3f4e1; }
* { box-sizing: border-box; }
body { margin: 0; background: #fff; color: var(--ink);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 28px 32px 48px; }
h1 { font-size: 26px; margin: 0 0 6px; }
h2 { font-size: 20px; margin: 36px 0 12px; padding-bottom: 6px; border-bottom: 2px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 8px; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; }
p { margin: 6px 0 10px; }
code { font: 13px/1.4 ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; background: var(--soft);
  padding: 1px 4px; border-radius: 3px; overflow-wrap: anywhere; }
.muted, .note { color: var(--muted); }
.note { font-size: 13px; }
.facts { display: flex; flex-wrap: wrap; gap: 10px; margin: 14px 0 4px; padding: 0; }
.facts div { background: var(--soft); border: 1px solid var(--line); border-radius: 6px; padding: 6px 12px; }
.facts dt { font-size: 12px; color: var(--muted); }
.facts dd { margin: 0; font-weight: 600; overflow-wrap: anywhere; }
.notice { background: #fff6e0; border-left: 4px solid #e0a100; padding: 6px 12px; }
.chain li { margin: 2px 0; }
.split { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 28px; align-items: start; }
@media (max-width: 900px) { .split { grid-template-columns: minmax(0, 1fr); } }
blockquote { margin: 0 0 6px; padding: 8px 14px; border-left: 4px solid #1f77b4; background: var(--soft);
  white-space: pre-wrap; overflow-wrap: anywhere; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid var(--line); padding: 6px 9px; vertical-align: top; text-align: left; }
th { background: var(--soft); font-weight: 600; }
table.metrics td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.metrics th.num { text-align: right; }
table.metrics th[scope=row] { white-space: nowrap; }
.dot { display: inline-block; width: 10px; height: 10px; border-radius: 50%; margin-right: 6px; }
table.answers { table-layout: fixed; font-size: 13.5px; }
table.answers td { white-space: pre-wrap; overflow-wrap: anywhere; }
table.answers tbody tr:nth-child(even) td { background: #fafbfc; }
table.answers tbody tr td.same { background: var(--same); }
table.answers td.input { font-weight: 600; }
table.demos { font-size: 13px; table-layout: fixed; }
table.demos td { white-space: pre-wrap; overflow-wrap: anywhere; }
details { margin: 6px 0; }
summary { cursor: pointer; color: var(--muted); font-size: 13px; }
.legend { display: inline-block; width: 12px; height: 12px; background: var(--same); border: 1px solid var(--line);
  vertical-align: -1px; }
figure { margin: 12px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { font-size: 13px; color: var(--muted); }
.figures { display: flex; flex-wrap: wrap; gap: 20px; align-items: flex-start; }
dl.notes { display: grid; grid-template-columns: 220px minmax(0, 1fr); gap: 6px 16px; margin: 0; }
dl.notes dt { font-weight: 600; }
dl.notes dd { margin: 0; }
table.timings { width: auto; min-width: 420px; font-size: 13.5px; }
table.timings td.num { text-align: right; font-variant-numeric: tabular-nums; }
.bar { height: 10px; background: #1f77b4; border-radius: 2px; }
footer { margin-top: 40px; font-size: 12px; color: var(--muted); }
"""


def _esc(text: object) -> str:
    return html.escape(str(text))


def _inline(sentence: str) -> str:
    """Escape a report sentence and turn its `backtick` spans into <code>."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", _esc(sentence))


def _image(out: Path, name: str, alt: str) -> str:
    data = base64.b64encode((out / name).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_esc(alt)}">'


def _dot(condition: str) -> str:
    return f'<span class="dot" style="background:{COLORS[condition]}"></span>'


def _metrics_table(b: BehaviourFacts) -> list[str]:
    head = "".join(f'<th class="num">{_esc(LABELS[k])}</th>' for k in b.keys)
    rows = []
    for c in CONDITIONS:
        cells = []
        for k in b.keys:
            value = b.metrics[c][k]
            style = ""
            if k in RATES:  # the share drawn behind the number, in the condition's colour
                share = max(0.0, min(1.0, value)) * 100
                style = (f' style="background:linear-gradient(90deg,{COLORS[c]}33 {share:.1f}%,'
                         f'transparent {share:.1f}%)"')
            cells.append(f'<td class="num" data-condition="{c}" data-key="{k}" data-value="{json.dumps(value)}"'
                         f'{style}>{number(value)}</td>')
        rows.append(f'<tr><th scope="row">{_dot(c)}{c}</th>{"".join(cells)}</tr>')
    return [f'<table class="metrics" data-behaviour="{_esc(b.name)}">',
            f"<thead><tr><th>condition</th>{head}</tr></thead>", "<tbody>", *rows, "</tbody></table>"]


def _answers_table(b: BehaviourFacts) -> list[str]:
    rows = []
    for row in b.examples:
        cells = [f'<td class="input">{_esc(row["input"])}</td>']
        for c in CONDITIONS:
            same = c != "teacher" and row[c] == row["teacher"]
            cells.append(f'<td class="{c}{" same" * same}">{_esc(row[c])}</td>')
        rows.append(f"<tr>{''.join(cells)}</tr>")
    head = "".join(f"<th>{_dot(c)}{c}</th>" for c in CONDITIONS)
    return ['<h3>Answers side by side</h3>',
            f'<p class="note">The first {len(b.examples)} of {b.held_out} held-out inputs (all of them are in '
            '<code>answers.jsonl</code>); <span class="legend"></span> the same answer as the teacher\'s.</p>',
            f'<table class="answers" data-behaviour="{_esc(b.name)}">',
            '<colgroup><col style="width:19%"><col style="width:27%"><col style="width:27%"><col style="width:27%">'
            "</colgroup>",
            f"<thead><tr><th>input</th>{head}</tr></thead>", "<tbody>", *rows, "</tbody></table>"]


def _behaviour(b: BehaviourFacts) -> list[str]:
    parts = [f'<section class="behaviour" id="behaviour-{_esc(b.name)}">']
    parts.append(f"<h2>Behaviour <code>{_esc(b.name)}</code></h2>")
    parts += ['<div class="split">', "<div>", "<h3>Context</h3>", f"<blockquote>{_esc(b.context)}</blockquote>"]
    if b.prompt_note:
        parts.append(f'<p class="note">{_inline(b.prompt_note)}</p>')
    if b.demonstrations:
        rows = "".join(f"<tr><td>{_esc(d.get('input', ''))}</td><td>{_esc(d.get('output', ''))}</td></tr>"
                       for d in b.demonstrations)
        parts.append(f"<details><summary>{len(b.demonstrations)} demonstration(s)</summary>"
                     f'<table class="demos"><thead><tr><th>input</th><th>output</th></tr></thead><tbody>{rows}'
                     "</tbody></table></details>")
    parts += ["</div>", "<div>", f"<h3>Held-out inputs: {b.held_out}</h3>", *_metrics_table(b),
              f'<p class="note">{_esc(CONDITIONS_NOTE)}</p>', "</div>", "</div>"]
    if b.examples:
        parts += _answers_table(b)
    return parts + ["</section>"]


def _header(facts: ReportFacts) -> list[str]:
    items = [("model", f"<code>{_esc(facts.model)}</code>"), ("fine-tuning", _esc(facts.finetune)),
             ("teacher answers for training", _esc(facts.train_answers)), ("held-out inputs", _esc(facts.held_out)),
             ("behaviours", _esc(len(facts.behaviours)))]
    if facts.steps is not None:
        items.append(("optimizer steps", _esc(facts.steps)))
    if facts.total_s is not None:
        items.append(("wall time", f"{facts.total_s:.0f} s" if facts.total_s >= 10 else f"{facts.total_s:.1f} s"))
    dl = "".join(f"<div><dt>{_esc(k)}</dt><dd>{v}</dd></div>" for k, v in items)
    parts = ["<header>", "<h1>internalize report</h1>", f'<p class="summary">{_inline(facts.summary)}</p>',
             f'<dl class="facts">{dl}</dl>']
    parts += [f'<p class="notice">{_inline(n)}</p>' for n in facts.notices]
    return parts + ["</header>"]


def _run(facts: ReportFacts, out: Path) -> list[str]:
    parts = ['<section id="run">', "<h2>The run</h2>"]
    if facts.notes:
        parts.append('<dl class="notes">' + "".join(f"<dt>{_esc(title)}</dt><dd>{_inline(sentence)}</dd>"
                                                    for title, sentence in facts.notes) + "</dl>")
    if "loss.png" in facts.plots:
        parts += ["<h3>Training</h3>", "<figure>", _image(out, "loss.png", "student training loss"),
                  f"<figcaption>{_esc(facts.loss or 'The student training loss per optimizer step.')}</figcaption>",
                  "</figure>"]
    if facts.timings:
        longest = max(facts.timings.values()) or 1.0
        rows = "".join(f'<tr><td>{_esc(k)}</td><td class="num">{v:.1f}</td><td style="width:240px">'
                       f'<div class="bar" style="width:{100 * v / longest:.1f}%"></div></td></tr>'
                       for k, v in facts.timings.items())
        parts += ["<h3>Wall time per stage</h3>", '<table class="timings"><thead><tr><th>stage</th>'
                  f'<th class="num">seconds</th><th></th></tr></thead><tbody>{rows}</tbody></table>']
    return parts + ["</section>"]


def page(facts: ReportFacts, out: str | Path) -> str:
    """report.html for ``facts``; the plots named in ``facts.plots`` are read from ``out`` and embedded."""
    out = Path(out)
    several = len(facts.behaviours) > 1
    body = _header(facts)
    if facts.chain:
        body += ['<section id="chain">', "<h2>Chain of runs</h2>",
                 "<p>This run started from the artifact of an earlier run (newest first):</p>",
                 '<ol class="chain">', *[f"<li>{_inline(item)}</li>" for item in facts.chain], "</ol>", "</section>"]
    if "metrics.png" in facts.plots:
        caption = "Held-out inputs per behaviour" if several else "Held-out inputs"
        body += ['<section id="overview">', "<h2>Overview</h2>", "<figure>",
                 _image(out, "metrics.png", "metrics per condition"), f"<figcaption>{caption} ({_esc(CONDITIONS_NOTE)})"
                 "</figcaption>", "</figure>", "</section>"]
    for b in facts.behaviours:
        body += _behaviour(b)
    body += _run(facts, out)
    body.append('<footer>Written by internalize. The same facts are in <code>report.md</code>; the numbers in '
                "<code>metrics.json</code>, every answer in <code>answers.jsonl</code>, timings and counts in "
                "<code>run.json</code>.</footer>")
    return "\n".join(["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
                      '<meta name="viewport" content="width=device-width, initial-scale=1">',
                      f"<title>internalize report: {_esc(facts.model)}</title>", f"<style>{CSS}</style>", "</head>",
                      "<body>", "<main>", *body, "</main>", "</body>", "</html>", ""])


def render_html(run_dir: str | Path) -> Path:
    """Rebuild ``report.html`` from a run directory's files (config.yaml, metrics.json, run.json, answers.jsonl and
    the plots); returns its path. The directory does not keep the loss history: the loss plot is shown without the
    first and last loss figures."""
    out = Path(run_dir)
    for name in ("config.yaml", "metrics.json"):
        if not (out / name).is_file():
            raise InternalizeError(f"{out}: no {name}; give a run directory written by internalize")
    cfg = load_config(out / "config.yaml")
    metrics = json.loads((out / "metrics.json").read_text())
    if set(metrics) == set(CONDITIONS):  # one behaviour, from before behaviours were named
        metrics = {cfg.behaviours[0].name: metrics}
    info = json.loads((out / "run.json").read_text()) if (out / "run.json").is_file() else {}
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text(encoding="utf-8").splitlines()
               if line.strip()] if (out / "answers.jsonl").is_file() else []
    plots = [name for name in ("metrics.png", "loss.png") if (out / name).is_file()]
    path = out / "report.html"
    path.write_text(page(collect(cfg, metrics, answers, info, None, plots), out), encoding="utf-8")
    log.info("wrote %s", path)
    return path
