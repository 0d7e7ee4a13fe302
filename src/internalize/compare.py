"""Compare: several finished runs side by side, one row per run and behaviour, one table and one plot.

For sweeps (the same job with other settings) and for chains of runs (each starting from the
artifact of the one before; rows keep the order the runs are given in). Each row holds the
behaviour's base, teacher and student score (its scorer's, or agreement with the teacher when it
has none), the student's KL(teacher || student), and from the run's ``run.json`` the forgetting
check, the chain of artifacts the run started from and its wall time. ``metrics.json`` is read in
both forms: ``{behaviour: {base, teacher, student}}`` and the older flat ``{base, teacher, student}``
(one behaviour, named ``main``). A committed experiment record (``experiments/*/results/NAME.json``,
``metrics`` beside ``stage_s`` and ``wall_s``) is read as a run too. ``internalize compare`` calls
these functions:

    rows = load_runs(["runs/over", "runs/over_lr3e-4"])
    print(table(rows))
    plot(rows, "compare.png")
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import CONDITIONS, InternalizeError

log = logging.getLogger(__name__)


@dataclass
class Row:
    """One behaviour of one run."""

    run: str  # the run directory (or results file) as given
    behaviour: str
    metric: str  # "score" (the behaviour's scorer) or "agreement" (with the teacher's answers)
    base: float | None
    teacher: float | None
    student: float | None
    student_kl: float | None  # mean per-token KL(teacher || student) on the teacher's held-out answers
    forgetting: dict[str, float] | None = None  # run.json "forgetting": agreement_with_original, kl_original_student
    chain: list[str] = field(default_factory=list)  # the models this run started from, oldest first
    wall_s: float | None = None  # the run's wall time in seconds

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InternalizeError(f"{path}: not valid JSON ({e}); rerun the run or remove it from the list") from None
    except OSError as e:
        raise InternalizeError(f"{path}: cannot be read ({e.strerror})") from None


def per_behaviour(metrics: Any, where: str) -> dict[str, dict[str, dict[str, Any]]]:
    """``{behaviour: {base, teacher, student}}`` from either form of ``metrics.json`` (flat: one behaviour, ``main``)."""
    def conditions(value: Any) -> bool:
        return isinstance(value, dict) and all(isinstance(value.get(c), dict) for c in CONDITIONS)

    if conditions(metrics):
        return {"main": {c: metrics[c] for c in CONDITIONS}}
    if isinstance(metrics, dict) and metrics and all(conditions(v) for v in metrics.values()):
        return metrics
    raise InternalizeError(f"{where}: not a run's metrics (expected {{behaviour: {{base, teacher, student}}}} or "
                           "{base, teacher, student})")


def chain(started_from: Any) -> list[str]:
    """The models a run started from, oldest first: the original model, then each earlier run's directory
    (run.json ``started_from``, which nests the earlier runs' own origins)."""
    links: list[str] = []
    origin = started_from
    while isinstance(origin, dict):
        run = origin.get("run")
        if isinstance(run, dict):
            links.append(str(run.get("dir", origin.get("model", "?"))))
            origin = run.get("started_from")
        else:
            links.append(str(origin.get("model", "?")))
            break
    return links[::-1]


def _wall(info: dict[str, Any], total: str, stages: str) -> float | None:
    if isinstance(info.get(total), (int, float)):
        return float(info[total])
    timings = info.get(stages)
    if isinstance(timings, dict) and timings:
        return round(sum(v for v in timings.values() if isinstance(v, (int, float))), 2)
    return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def load_run(path: str | Path) -> list[Row]:
    """The rows of one run: a run directory (``metrics.json``, ``run.json``) or an experiment record (a .json file
    with ``metrics``)."""
    given = str(path)
    path = Path(path)
    if path.is_dir():
        metrics_file = path / "metrics.json"
        if not metrics_file.is_file():
            failed = ""
            if (path / "run.json").is_file():
                info = _read_json(path / "run.json")
                if isinstance(info, dict) and info.get("status") == "failed":
                    failed = f" (the run failed after {info.get('after_stage', '?')}: {info.get('error', '?')})"
            raise InternalizeError(f"{given}: no metrics.json{failed}; give the directory of a finished run")
        metrics = per_behaviour(_read_json(metrics_file), str(metrics_file))
        info = _read_json(path / "run.json") if (path / "run.json").is_file() else {}
        if not isinstance(info, dict):
            raise InternalizeError(f"{path / 'run.json'}: not a run's record (expected a JSON object)")
        wall = _wall(info, "total_s", "timings")
    elif path.is_file():
        record = _read_json(path)
        if not isinstance(record, dict) or "metrics" not in record:
            raise InternalizeError(f"{given}: not a run directory, nor an experiment record with 'metrics'; give the "
                                   "directory of a finished run")
        metrics = per_behaviour(record["metrics"], f"{given}: metrics")
        info = record
        wall = _wall(info, "wall_s", "stage_s")
    else:
        raise InternalizeError(f"{given}: no such run directory; give the directory of a finished run (output.dir)")
    forgetting = info.get("forgetting") if isinstance(info.get("forgetting"), dict) else None
    links = chain(info.get("started_from"))
    rows = []
    for name, by_condition in metrics.items():
        metric = "score" if all("score" in by_condition[c] for c in CONDITIONS) else "agreement"
        rows.append(Row(given, name, metric, *(_number(by_condition[c].get(metric)) for c in CONDITIONS),
                        _number(by_condition["student"].get("kl")), forgetting, links, wall))
    return rows


def load_runs(paths: Sequence[str | Path]) -> list[Row]:
    """Every behaviour of every run, in the order the runs are given."""
    if not paths:
        raise InternalizeError("no runs to compare: give one or more run directories")
    rows = [row for path in paths for row in load_run(path)]
    log.info("read %d behaviour(s) from %d run(s)", len(rows), len(paths))
    return rows


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


COLUMNS = ("run", "behaviour", "metric", "base", "teacher", "student", "student KL", "forgetting agree/KL", "wall s",
           "chain")


def table(rows: Sequence[Row]) -> str:
    """A plain-text table: one line per run and behaviour; run-wide columns (forgetting, wall time, chain) on the
    first line of each run."""
    lines = []
    previous = None
    for row in rows:
        first = row.run != previous
        previous = row.run
        f = row.forgetting or {}
        forgetting = (f"{_f(_number(f.get('agreement_with_original')), 2)}/{_f(_number(f.get('kl_original_student')))}"
                      if f else "-")
        lines.append([row.run if first else "", row.behaviour, row.metric, _f(row.base), _f(row.teacher),
                      _f(row.student), _f(row.student_kl, 4), forgetting if first else "",
                      _f(row.wall_s, 1) if first else "", " > ".join(row.chain) if first and row.chain else ""])
    widths = [max(len(c), *(len(line[i]) for line in lines)) for i, c in enumerate(COLUMNS)]
    numeric = {3, 4, 5, 6, 8}

    def render(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([render(COLUMNS), render(["-" * w for w in widths]), *map(render, lines)])


def _names(rows: Sequence[Row]) -> dict[str, str]:
    """A short label per run: its directory's (or record's) name, or the path as given where two names clash."""
    runs = list(dict.fromkeys(r.run for r in rows))
    short = {run: Path(run).stem if run.endswith(".json") else Path(run).name or run for run in runs}
    clash = {name for name in short.values() if list(short.values()).count(name) > 1}
    return {run: _wrap(run if short[run] in clash else short[run]) for run in runs}


def _wrap(name: str, width: int = 16) -> str:
    """A long label on several lines, broken after '/', '_' or '-' where it can be."""
    marked = name.replace("/", "/\0").replace("_", "_\0").replace("-", "-\0")
    lines, line = [], ""
    for piece in marked.split("\0"):
        if line and len(line) + len(piece) > width:
            lines.append(line)
            line = ""
        while len(piece) > width:  # longer than a line on its own: cut it
            lines.append(piece[:width])
            piece = piece[width:]
        line += piece
    return "\n".join([*lines, line] if line else lines)


def plot(rows: Sequence[Row], path: str | Path) -> Path:
    """Two panels over the rows (in order): base / teacher / student score (or agreement), and the student's
    KL(teacher || student) beside the run's forgetting KL(original || student). Returns the path written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import COLORS

    path = Path(path)
    names = _names(rows)
    first = [i == 0 or rows[i - 1].run != r.run for i, r in enumerate(rows)]
    labels = [(names[r.run] + "\n" if start else "") + r.behaviour + ("" if r.metric == "score" else "\n(agreement)")
              for r, start in zip(rows, first, strict=True)]
    xs = list(range(len(rows)))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 1.5 * len(rows) + 3.5), 7), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})
    width = 0.8 / len(CONDITIONS)
    for c, condition in enumerate(CONDITIONS):
        values = [getattr(r, condition) for r in rows]
        bars = top.bar([x + (c - 1) * width for x in xs], [v or 0.0 for v in values], width, label=condition,
                       color=COLORS[condition])
        top.bar_label(bars, labels=[_f(v, 2) for v in values], fontsize=7)
    top.set_ylim(0, 1.12)
    top.set_ylabel("score (or agreement)")
    top.set_title("held-out inputs per run and behaviour (higher is better)")
    kl = [r.student_kl for r in rows]
    forgot = [_number((r.forgetting or {}).get("kl_original_student")) if start else None
              for r, start in zip(rows, first, strict=True)]  # one figure per run: on its first behaviour
    bars = bottom.bar([x - 0.2 for x in xs], [v or 0.0 for v in kl], 0.4, color=COLORS["student"],
                      label="student:\nKL(teacher || student)")
    bottom.bar_label(bars, labels=[_f(v) for v in kl], fontsize=7)
    if any(v is not None for v in forgot):
        bars = bottom.bar([x + 0.2 for x in xs], [v or 0.0 for v in forgot], 0.4, color=COLORS["base"],
                          label="forgetting (per run):\nKL(original || student)")
        bottom.bar_label(bars, labels=["" if v is None else _f(v) for v in forgot], fontsize=7)
    highest = max([v for v in kl + forgot if v is not None] or [0.0])
    bottom.set_ylim(0, highest * 1.2 or 1.0)
    bottom.set_ylabel("KL per token (lower is better)")
    bottom.set_xticks(xs, labels, fontsize=8)
    for ax in (top, bottom):
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        for x, start in zip(xs, first, strict=True):
            if start and x:
                ax.axvline(x - 0.5, color="#cccccc", linewidth=0.8, linestyle=":")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    log.info("wrote %s", path)
    return path
