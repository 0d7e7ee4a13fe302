"""The whole job: ``distill`` (inputs -> teacher -> fit -> evaluate -> artifact and report), and
``evaluate_artifact`` (the three-way report for a student saved earlier).

The CLI (``internalize distill CONFIG``, ``internalize eval CONFIG --student DIR``) and the Python
API call these same functions:

    from internalize import load_config, distill
    metrics = distill(load_config("examples/over.yaml", ["output.dir=runs/over"]))
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from . import cache
from .config import Config, InternalizeError, OutputConfig, TeacherConfig, save_config
from .data import Record, read_inputs, read_jsonl, split_inputs, uses_synthesis
from .evaluation import ConditionResult, Scorer, evaluate, load_scorer
from .models import load_model, make_student, save_artifact
from .report import write_report
from .synthesis import check_synthesis, synthesize
from .teacher import TeacherTargets, given_answers, teach
from .teacher import cache_dir as teacher_cache_dir
from .training import fit

log = logging.getLogger(__name__)

# What a run writes. synthesized.jsonl is not among them: it may be the input of a later run
# (data.train_file), so it is never cleared, only replaced atomically when inputs are synthesized again.
RUN_FILES = ("config.yaml", "metrics.json", "run.json", "answers.jsonl", "report.md", "metrics.png", "loss.png", "model")


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


@dataclass
class Task:
    """One behaviour of a run: its teacher (context), training and held-out inputs, and scorer."""

    name: str
    teacher: TeacherConfig
    train: list[Record] | None  # None: the model writes them (data.synthesize)
    held_out: list[Record]
    scorer: Scorer | None
    train_file: str = ""  # where the training records came from, for error messages


def _tasks(cfg: Config) -> list[Task]:
    """The run's behaviours: the one context, or each entry of ``teacher.contexts`` with its own files."""
    if not cfg.teacher.contexts:
        train, held_out = _inputs(cfg)
        return [Task("main", cfg.teacher, train, held_out, load_scorer(cfg.eval), cfg.data.train_file or "data.inputs")]
    if not any(str(e.get("context", "")).strip() or e.get("demonstrations") for e in cfg.teacher.contexts):
        raise InternalizeError("teacher.contexts: no entry has a context or demonstrations; give at least one")
    tasks = []
    for i, entry in enumerate(cfg.teacher.contexts):
        key = f"teacher.contexts[{i}]"
        train = read_jsonl(entry["train_file"], f"{key}.train_file")
        held_out = read_jsonl(entry["eval_file"], f"{key}.eval_file")
        if cfg.data.max_train:
            train = train[: cfg.data.max_train]
        own = {k: entry.get(k, "") for k in ("scorer_regex", "scorer")}
        scorer = load_scorer(dataclasses.replace(cfg.eval, **own) if any(own.values()) else cfg.eval)
        tasks.append(Task(entry["name"], cfg.teacher.for_context(entry), train, held_out, scorer, entry["train_file"]))
    return tasks


def _neutral(cfg: Config) -> list[Record]:
    """The forgetting check's prompts: the packaged set, a user file, or none."""
    if cfg.eval.neutral_file == "builtin":
        return read_jsonl(Path(__file__).with_name("neutral.jsonl"), "eval.neutral_file")
    return read_jsonl(cfg.eval.neutral_file, "eval.neutral_file") if cfg.eval.neutral_file else []


def _original_answers(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, neutral: list[Record],
                      cfg: Config) -> TeacherTargets:
    """The original model's greedy answers and distributions on the neutral prompts (no context)."""
    plain = dataclasses.replace(_greedy(cfg.teacher), extractor="none", extract_pattern="",
                                max_new_tokens=cfg.eval.max_new_tokens)
    return teach(model, tokenizer, neutral, plain, desc="base[neutral]", with_context=False)


def _forgetting(metrics: dict[str, float], n: int) -> dict[str, Any]:
    return {"n": n, "agreement_with_original": metrics["agreement"], "kl_original_student": metrics["kl"]}


def _greedy(teacher: TeacherConfig) -> TeacherConfig:
    return dataclasses.replace(teacher, do_sample=False, num_samples=1)


def distill(cfg: Config) -> dict[str, Any]:
    """Distill the context(s) into the student; returns ``{base, teacher, student}`` metrics (per behaviour
    name when ``teacher.contexts`` lists several)."""
    timings: dict[str, float] = {}
    tasks = _tasks(cfg)
    neutral = _neutral(cfg)
    _output_dir(cfg.output)
    if tasks[0].train is None:
        check_synthesis(cfg.data.synthesize, _synthesis_path(cfg))
    torch.manual_seed(cfg.train.seed)
    with _timed(timings, "load"):
        model, tokenizer = load_model(cfg.model)
        base_dir = model.name_or_path
    with _run_dir(cfg) as out:
        synthesis: dict[str, Any] = {}
        if tasks[0].train is None:
            with _timed(timings, "synthesize"):
                records, synthesis = synthesize(model, tokenizer, cfg.data.synthesize, _synthesis_path(cfg), cfg.model.name)
                tasks[0].train, tasks[0].held_out = split_inputs(cfg.data, records, tasks[0].held_out)
        model = make_student(model, cfg.model)
        with _timed(timings, "teacher"):
            taught = [given_answers(tokenizer, t.train, t.teacher, t.train_file) if cfg.train.targets == "data"
                      else teach(model, tokenizer, t.train, t.teacher, desc=f"teacher[{t.name}]") for t in tasks]
            targets = TeacherTargets.concat(taught)
            if not len(targets):
                raise InternalizeError(f"the teacher kept no answers out of {sum(len(t.train) for t in tasks)} inputs "
                                       f"({targets.dropped}); check teacher.extract_pattern and teacher.max_new_tokens")
        with _timed(timings, "reference"):  # the greedy teacher on the held-out inputs, for evaluation
            references = [teach(model, tokenizer, t.held_out, _greedy(t.teacher), desc=f"teacher[{t.name} eval]")
                          for t in tasks]
        if neutral:  # the original model's own answers: what the student should not lose
            with _timed(timings, "neutral_before"):
                original = _original_answers(model, tokenizer, neutral, cfg)
        results: list[dict[str, ConditionResult]] = []
        with _timed(timings, "eval_before"):
            for t, ref in zip(tasks, references, strict=True):
                results.append({c: evaluate(model, tokenizer, t.held_out, ref, cfg.eval, c, t.scorer)
                                for c in ("base", "teacher")})
        with _timed(timings, "train"):
            history = fit(model, tokenizer, targets, cfg.train)
        with _timed(timings, "eval_after"):
            for t, ref, result in zip(tasks, references, results, strict=True):
                result["student"] = evaluate(model, tokenizer, t.held_out, ref, cfg.eval, "student", t.scorer)
            if neutral:
                forgetting = evaluate(model, tokenizer, neutral, original, cfg.eval, "student").metrics
        with _timed(timings, "save"):
            save_artifact(model, tokenizer, out / "model", cfg.output.save, base_dir)
        info: dict[str, Any] = {
            "started_from": _origin(cfg.model.name, base_dir),
            "train_inputs": sum(len(t.train) for t in tasks), "train_answers": len(targets),
            "eval_inputs": sum(len(t.held_out) for t in tasks), "dropped": targets.dropped, "steps": len(history),
            "timings": timings, "total_s": round(sum(timings.values()), 2),
            "teacher_cache": {"hit": all(t.cache_hit for t in taught), "dir": str(teacher_cache_dir(cfg.teacher) or ""),
                              "bytes_per_answer_token": cache.bytes_per_token(targets),
                              "full_vocabulary_bytes_per_token": 4 * model.config.vocab_size},
            "train_padding_share": round(sum(h["padding"] for h in history) / max(len(history), 1), 4),
        }
        if len(tasks) > 1:
            info["behaviours"] = {t.name: {"train_answers": len(x), "eval_inputs": len(t.held_out)}
                                  for t, x in zip(tasks, taught, strict=True)}
        if synthesis:
            info["synthesis"] = synthesis
        if neutral:
            info["forgetting"] = _forgetting(forgetting, len(neutral))
        metrics = write_report(out, {t.name: r for t, r in zip(tasks, results, strict=True)}, history,
                               {t.name: t.held_out for t in tasks}, info, cfg)
        log.info("wrote %s: %s", out / "report.md", _summary(metrics))
    return metrics


def _origin(name: str, resolved: str) -> dict[str, Any]:
    """Which model a run started from; for an earlier run's artifact, that run's own origin and context (the chain)."""
    origin: dict[str, Any] = {"model": name, "path": str(resolved)}
    run_json = Path(resolved).parent / "run.json"
    run_config = Path(resolved).parent / "config.yaml"
    if Path(resolved).name == "model" and run_json.exists() and run_config.exists():
        earlier = json.loads(run_json.read_text())
        settings = yaml.safe_load(run_config.read_text())
        teacher, train = settings.get("teacher", {}), settings.get("train", {})
        if train.get("targets") == "data":
            added = [f"fine-tuning on {settings.get('data', {}).get('train_file') or 'data.inputs'}"]
        else:
            added = [c.get("name") for c in teacher.get("contexts", [])] or [teacher.get("context", "")]
        origin["run"] = {"dir": str(Path(resolved).parent), "added": added,
                         "started_from": earlier.get("started_from")}
    return origin


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


def evaluate_artifact(cfg: Config, student: str) -> dict[str, Any]:
    """Report base / teacher (``cfg.model`` with and without context) against a saved student."""
    timings: dict[str, float] = {}
    tasks = _tasks(cfg)
    if tasks[0].train is None:
        tasks[0].train = []
    _output_dir(cfg.output)
    with _timed(timings, "load"):
        model, tokenizer = load_model(cfg.model)
        student_model, _ = load_model(dataclasses.replace(cfg.model, name=student))
    with _run_dir(cfg) as out:
        results = {}
        for t in tasks:
            with _timed(timings, f"teacher[{t.name}]"):
                reference = teach(model, tokenizer, t.held_out, _greedy(t.teacher), desc=f"teacher[{t.name} eval]")
            with _timed(timings, f"eval[{t.name}]"):
                results[t.name] = {c: evaluate(model, tokenizer, t.held_out, reference, cfg.eval, c, t.scorer)
                                   for c in ("base", "teacher")}
                results[t.name]["student"] = evaluate(student_model, tokenizer, t.held_out, reference, cfg.eval,
                                                      "student", t.scorer)
        info: dict[str, Any] = {"student": student, "eval_inputs": sum(len(t.held_out) for t in tasks),
                                "timings": timings}
        neutral = _neutral(cfg)
        if neutral:
            with _timed(timings, "forgetting"):
                original = _original_answers(model, tokenizer, neutral, cfg)
                info["forgetting"] = _forgetting(
                    evaluate(student_model, tokenizer, neutral, original, cfg.eval, "student").metrics, len(neutral))
        metrics = write_report(out, results, [], {t.name: t.held_out for t in tasks}, info, cfg)
        log.info("wrote %s: %s", out / "report.md", _summary(metrics))
    return metrics


def _summary(metrics: dict[str, Any]) -> str:
    if "base" not in metrics:
        return "; ".join(f"{name}: {_summary(m)}" for name, m in metrics.items())
    key = "score" if "score" in metrics["base"] else "agreement"
    return ", ".join(f"{c} {key} {m[key]:.3f}" for c, m in metrics.items())
