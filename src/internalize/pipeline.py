"""The whole job: ``distill`` (inputs -> teacher -> fit -> evaluate -> artifact and report), and
``evaluate_artifact`` (the three-way report for a student saved earlier).

The CLI (``internalize distill CONFIG``, ``internalize eval CONFIG --student DIR``) and the Python
API call these same functions:

    from internalize import load_config, distill
    metrics = distill(load_config("examples/over.yaml", ["output.dir=runs/over"]))
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from . import cache
from .config import Config, InternalizeError, OutputConfig, save_config
from .data import Record, read_inputs, read_jsonl, split_inputs, uses_synthesis
from .evaluation import evaluate, load_scorer
from .models import load_model, make_student, save_artifact
from .report import write_report
from .synthesis import check_synthesis, synthesize
from .teacher import cache_dir as teacher_cache_dir
from .teacher import teach
from .training import fit

log = logging.getLogger(__name__)

# What a run writes. synthesized.jsonl is not among them: it may be the input of a later run
# (data.train_file), so it is never cleared, only replaced atomically when inputs are synthesized again.
RUN_FILES = ("config.yaml", "metrics.json", "run.json", "report.md", "metrics.png", "loss.png", "model")


def _output_dir(cfg: OutputConfig) -> Path:
    """Check the run directory before anything is written: refuse to clobber a run unless asked."""
    out = Path(cfg.dir)
    if out.exists() and not out.is_dir():
        raise InternalizeError(f"output.dir='{out}' is a file; choose a directory")
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if existing and not cfg.overwrite:
        raise InternalizeError(f"output.dir='{out}' already holds a run ({', '.join(existing)}); "
                               "pass --overwrite or choose another output.dir")
    return out


def _inputs(cfg: Config) -> tuple[list[Record] | None, list[Record]]:
    """(train, held-out) records as configured; train is None when the model is to write it."""
    train, held_out = read_inputs(cfg.data)
    if not uses_synthesis(cfg.data):
        return split_inputs(cfg.data, train, held_out)
    if not held_out:
        raise InternalizeError("synthesized training inputs need a real held-out set: set data.eval_file or data.eval_inputs")
    return None, held_out


def _clear(out: Path) -> None:
    for name in RUN_FILES:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


@contextmanager
def _run_dir(cfg: Config) -> Iterator[Path]:
    """The run directory with the resolved config saved; a run that fails leaves none of its files."""
    out = _output_dir(cfg.output)
    _clear(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    except OSError as e:
        raise InternalizeError(f"output.dir='{out}' is not writable ({e.strerror}); choose another output.dir") from None
    try:
        yield out
    except BaseException:
        _clear(out)
        raise


@contextmanager
def _timed(timings: dict[str, float], stage: str):
    start = time.perf_counter()
    yield
    timings[stage] = round(time.perf_counter() - start, 2)
    log.info("%s took %.1f s", stage, timings[stage])


def distill(cfg: Config) -> dict[str, dict[str, float]]:
    """Distill ``cfg.teacher``'s context into the student; returns ``{base, teacher, student}`` metrics."""
    timings: dict[str, float] = {}
    train, held_out = _inputs(cfg)
    neutral = read_jsonl(cfg.eval.neutral_file, "eval.neutral_file") if cfg.eval.neutral_file else []
    scorer = load_scorer(cfg.eval)
    _output_dir(cfg.output)
    if train is None:
        check_synthesis(cfg.data.synthesize, _synthesis_path(cfg))
    torch.manual_seed(cfg.train.seed)
    with _timed(timings, "load"):
        model, tokenizer = load_model(cfg.model)
        base_dir = model.name_or_path
    with _run_dir(cfg) as out:
        synthesis: dict[str, Any] = {}
        if train is None:
            with _timed(timings, "synthesize"):
                records, synthesis = synthesize(model, tokenizer, cfg.data.synthesize, _synthesis_path(cfg), cfg.model.name)
                train, held_out = split_inputs(cfg.data, records, held_out)
        model = make_student(model, cfg.model)
        with _timed(timings, "teacher"):
            targets = teach(model, tokenizer, train, cfg.teacher, desc="teacher[train]")
            if not len(targets):
                raise InternalizeError(f"the teacher kept no answers out of {len(train)} inputs ({targets.dropped}); "
                                       "check teacher.extract_pattern and teacher.max_new_tokens")
        with _timed(timings, "reference"):  # the greedy teacher on the held-out inputs, for evaluation
            greedy = dataclasses.replace(cfg.teacher, do_sample=False, num_samples=1)
            reference = teach(model, tokenizer, held_out, greedy, desc="teacher[eval]")
        if neutral:  # the original model's own answers: what the student should not lose
            with _timed(timings, "neutral_before"):
                plain = dataclasses.replace(greedy, extractor="none", extract_pattern="",
                                            max_new_tokens=cfg.eval.max_new_tokens)
                original = teach(model, tokenizer, neutral, plain, desc="base[neutral]", with_context=False)
        with _timed(timings, "eval_before"):
            results = {c: evaluate(model, tokenizer, held_out, reference, cfg.eval, c, scorer) for c in ("base", "teacher")}
        with _timed(timings, "train"):
            history = fit(model, tokenizer, targets, cfg.train)
        with _timed(timings, "eval_after"):
            results["student"] = evaluate(model, tokenizer, held_out, reference, cfg.eval, "student", scorer)
            if neutral:
                forgetting = evaluate(model, tokenizer, neutral, original, cfg.eval, "student").metrics
        with _timed(timings, "save"):
            save_artifact(model, tokenizer, out / "model", cfg.output.save, base_dir)
        info: dict[str, Any] = {
            "train_inputs": len(train), "train_answers": len(targets), "eval_inputs": len(held_out),
            "dropped": targets.dropped, "steps": len(history), "timings": timings,
            "total_s": round(sum(timings.values()), 2),
            "teacher_cache": {"hit": targets.cache_hit, "dir": str(teacher_cache_dir(cfg.teacher) or ""),
                              "bytes_per_answer_token": cache.bytes_per_token(targets),
                              "full_vocabulary_bytes_per_token": 4 * model.config.vocab_size},
            "train_padding_share": round(sum(h["padding"] for h in history) / max(len(history), 1), 4),
        }
        if synthesis:
            info["synthesis"] = synthesis
        if neutral:
            info["forgetting"] = {"n": len(neutral), "agreement_with_original": forgetting["agreement"],
                                  "kl_original_student": forgetting["kl"]}
        metrics = write_report(out, results, history, held_out, info, cfg)
        log.info("wrote %s: %s", out / "report.md", _summary(metrics))
    return metrics


def _synthesis_path(cfg: Config) -> Path:
    return Path(cfg.data.synthesize.output or Path(cfg.output.dir) / "synthesized.jsonl")


def synthesize_inputs(cfg: Config) -> dict[str, Any]:
    """``internalize synthesize``: write model-generated inputs (JSONL + provenance); returns the summary."""
    syn = cfg.data.synthesize
    path = _synthesis_path(cfg)
    if path.exists() and not cfg.output.overwrite:
        raise InternalizeError(f"data.synthesize.output='{path}' exists; pass --overwrite or choose another path")
    check_synthesis(syn, path)
    model, tokenizer = load_model(cfg.model)
    _, summary = synthesize(model, tokenizer, syn, path, cfg.model.name)
    return summary


def evaluate_artifact(cfg: Config, student: str) -> dict[str, dict[str, float]]:
    """Report base / teacher (``cfg.model`` with and without context) against a saved student."""
    timings: dict[str, float] = {}
    _, held_out = _inputs(cfg)
    scorer = load_scorer(cfg.eval)
    _output_dir(cfg.output)
    with _timed(timings, "load"):
        model, tokenizer = load_model(cfg.model)
        student_model, _ = load_model(dataclasses.replace(cfg.model, name=student))
    with _run_dir(cfg) as out:
        with _timed(timings, "teacher"):
            greedy = dataclasses.replace(cfg.teacher, do_sample=False, num_samples=1)
            reference = teach(model, tokenizer, held_out, greedy, desc="teacher[eval]")
        with _timed(timings, "eval"):
            results = {c: evaluate(model, tokenizer, held_out, reference, cfg.eval, c, scorer) for c in ("base", "teacher")}
            results["student"] = evaluate(student_model, tokenizer, held_out, reference, cfg.eval, "student", scorer)
        info = {"student": student, "eval_inputs": len(held_out), "timings": timings}
        metrics = write_report(out, results, [], held_out, info, cfg)
        log.info("wrote %s: %s", out / "report.md", _summary(metrics))
    return metrics


def _summary(metrics: dict[str, dict[str, float]]) -> str:
    key = "score" if "score" in metrics["base"] else "agreement"
    return ", ".join(f"{c} {key} {m[key]:.3f}" for c, m in metrics.items())
