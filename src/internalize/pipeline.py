"""The whole job: ``distill`` (inputs -> teacher -> fit -> artifact -> evaluation and report), and
``evaluate_artifact`` (the three-way report for a student saved earlier), ``synthesize_inputs``.

``distill`` reads as its recipe: for each behaviour, the teacher's targets and the evaluation
reference; evaluate before; fit; save; evaluate after; report. With ``train.report_to`` each
step's loss and the final metrics also go to Accelerate's experiment trackers (``OUT/logs``).
The CLI (``internalize distill CONFIG``, ``internalize eval CONFIG --student DIR``) and the Python
API call these same functions:

    from internalize import load_config, distill
    metrics = distill(load_config("examples/over.yaml", ["output.dir=runs/over"]))
    metrics["main"]["student"]["score"]
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .behaviours import Behaviour, fit_window, load_behaviours
from .config import Config, InternalizeError, TeacherConfig, TrainConfig
from .data import Record, read_jsonl, split_inputs
from .evaluation import ConditionResult, evaluate_behaviours, forgetting, mean_kl, metrics_of, retention
from .models import TeacherWeights, inference_mode, load_model, make_student, save_artifact
from .report import write_report
from .run import Run, origin, provenance, write_provenance
from .runtime import Runtime
from .sources import OfflineBatches, OnPolicyBatches
from .synthesis import check_synthesis, synthesize
from .targets import Reference, Targets
from .teacher import answer, cache_dir, given_answers, teacher_prompts
from .tracking import eval_values, step_values, trackers
from .training import fit

log = logging.getLogger(__name__)

def _teacher_is_base(behaviour: Behaviour, cfg: Config) -> bool:
    """No context and no extractor (plain fine-tuning on the data): the teacher's answers are the base model's."""
    prompt = behaviour.prompt
    return not prompt.context and not prompt.demonstrations and cfg.teacher.extractor == "none"


def _references(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, behaviours: list[Behaviour], cfg: Config,
                runtime: Runtime) -> list[Reference]:
    """The greedy teacher's answers on each behaviour's held-out inputs: what every condition is compared with
    (where the teacher is the base model, at the evaluation's length: they are the base condition's answers too)."""
    def teacher(b: Behaviour) -> TeacherConfig:
        greedy = cfg.teacher.greedy()
        return dataclasses.replace(greedy, max_new_tokens=cfg.eval.max_new_tokens) if _teacher_is_base(b, cfg) else greedy

    return [Reference.from_targets(answer(model, tokenizer, b.held_out, b.prompt, teacher(b), runtime,
                                          desc=f"teacher[{b.name} eval]"), len(b.held_out)) for b in behaviours]


def _before(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, behaviours: list[Behaviour],
            references: list[Reference], cfg: Config, runtime: Runtime) -> dict[str, dict[str, ConditionResult]]:
    """Base and teacher on each behaviour's held-out inputs. Where the teacher is the base model and kept an answer
    for every input, the base condition is that reference, not generated a second time."""
    results: dict[str, dict[str, ConditionResult]] = {}
    for b, ref in zip(behaviours, references, strict=True):
        same = _teacher_is_base(b, cfg) and all(a is not None for a in ref.answers)
        evaluate_behaviours({"teacher": model} if same else {"base": model, "teacher": model}, tokenizer, [b], [ref],
                            cfg.eval, runtime, results)
        if same:
            results[b.name] = {"base": results[b.name]["teacher"], "teacher": results[b.name]["teacher"]}
    return results


def _packaged(name: str, setting: str, key: str) -> list[Record]:
    """A prompt set: the one shipped with the package ('builtin'), a user's JSONL file, or none ('')."""
    if setting == "builtin":
        return read_jsonl(Path(__file__).with_name(name), key)
    return read_jsonl(setting, key) if setting else []


def _own_answers(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, records: list[Record], max_new_tokens: int,
                 cfg: Config, runtime: Runtime, desc: str) -> Targets:
    """The original model's greedy answers and distributions to ``records`` (no context, whole answers)."""
    plain = dataclasses.replace(cfg.teacher.greedy(), extractor="none", extract_pattern="", max_new_tokens=max_new_tokens)
    return answer(model, tokenizer, records, None, plain, runtime, desc=desc)


def _rehearsal(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task_answers: int, cfg: Config,
               runtime: Runtime) -> Targets:
    """``train.retain``: the original model's own answers to general prompts, as that share of the task's answers."""
    prompts = _packaged("rehearsal.jsonl", cfg.train.retain_file, "train.retain_file")
    wanted = max(1, round(cfg.train.retain * task_answers))
    if wanted > len(prompts):
        log.warning("train.retain=%s asks for %d rehearsal answers; train.retain_file has %d prompts: using them all",
                    cfg.train.retain, wanted, len(prompts))
    return _own_answers(model, tokenizer, prompts[:wanted], cfg.teacher.max_new_tokens, cfg, runtime,
                        "base[rehearsal]")


def _teacher_prompts(tokenizer: PreTrainedTokenizerBase, behaviours: list[Behaviour], taught: list[Targets],
                     rehearsal: Targets | None) -> list[tuple[int, ...]]:
    """For on-policy training, the prompt the teacher scores each target's samples after: its behaviour's context and
    the input (a rehearsal target: the input alone, as the original model answered it)."""
    prompts: list[tuple[int, ...]] = []
    for b, t in zip(behaviours, taught, strict=True):
        mine, group = teacher_prompts(tokenizer, b.train, b.prompt)
        if group > 1:
            raise InternalizeError(f"train.mode=on_policy/mixed: behaviour '{b.name}' averages several contexts "
                                   "(prompt.combine: average), which on-policy scoring does not do; use combine: route")
        prompts += [mine[i] for i in t.source]
    return prompts + ([v.prompt_ids for v in rehearsal.student_views] if rehearsal is not None else [])


def _targets(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, behaviours: list[Behaviour], cfg: Config,
             runtime: Runtime) -> list[Targets]:
    """What the student learns, per behaviour: the teacher's answers, or the records' own (train.targets=data)."""
    if cfg.train.targets == "data":
        return [given_answers(tokenizer, b.train, b.prompt, b.source) for b in behaviours]
    taught = [answer(model, tokenizer, b.train, b.prompt, cfg.teacher, runtime, desc=f"teacher[{b.name}]")
              for b in behaviours]
    if not sum(map(len, taught)):
        dropped = Targets.concat(taught).dropped
        raise InternalizeError(f"the teacher kept no answers out of {sum(len(b.train) for b in behaviours)} inputs "
                               f"({dropped}); check teacher.extract_pattern and teacher.max_new_tokens")
    return taught


def _window(model: PreTrainedModel) -> int | None:
    """The longest sequence the model takes (None when its config does not say)."""
    return getattr(model.config, "max_position_embeddings", None)


def _synthesis_path(cfg: Config) -> Path:
    return Path(cfg.data.synthesize.output or Path(cfg.output.dir) / "synthesized.jsonl")


def _check_retention(questions: list[Record]) -> list[Record]:
    """The retention questions, each with a valid ``answer`` regex (one line naming the first that has none)."""
    for i, q in enumerate(questions):
        try:
            re.compile(q["answer"])
        except (KeyError, TypeError, re.error) as e:
            raise InternalizeError(f"eval.retention_file: record {i + 1} needs an 'answer' regex ({e!s}); write "
                                   "{\"input\": QUESTION, \"answer\": REGEX} on every line") from None
    return questions


def _source(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, targets: Targets, behaviours: list[Behaviour],
            taught: list[Targets], rehearsal: Targets | None, cfg: Config, runtime: Runtime,
            ) -> tuple[OfflineBatches | OnPolicyBatches, TeacherWeights | None]:
    """What ``fit`` trains on (``train.mode``): the targets as they are, or the student's samples scored by the
    teacher (all micro-batches, or a share of them), with the teacher's weights (None offline)."""
    offline = OfflineBatches(targets, tokenizer.pad_token_id, cfg.train.batch_size, cfg.train.length_buckets,
                             cfg.train.seed, runtime.process_index, runtime.num_processes, share_prefix=not runtime.fsdp)
    if cfg.train.mode == "offline":
        return offline, None
    weights = TeacherWeights(model, {"base": 1.0, "ema": cfg.teacher.ema_rate, "live": 0.0}[cfg.teacher.weights])
    share = 1.0 if cfg.train.mode == "on_policy" else cfg.train.on_policy_share
    return OnPolicyBatches(offline, model, tokenizer, _teacher_prompts(tokenizer, behaviours, taught, rehearsal),
                           weights, cfg.train, cfg.teacher, runtime, share), weights


def _retained(original: float, student: float, n: int) -> dict[str, Any]:
    """The retention check as reported: both scores, and the share of the original's the student keeps."""
    return {"n": n, "original": original, "student": student, "kept": student / original if original else None}


def _on_policy_info(stats: dict[str, Any], train_s: float) -> dict[str, Any]:
    """What on-policy training did: micro-batches sampled, answers cut off, and the share of time it took."""
    return {**stats, "share_cut_off": stats["cut_off"] / max(stats["samples"], 1),
            "share_of_train_time_sampling_and_scoring": (stats["sample_s"] + stats["score_s"]) / max(train_s, 1e-9)}


def _check_fsdp(cfg: Config) -> None:
    """What an FSDP launch does not do yet, refused before anything runs."""
    if cfg.model.finetune != "full":
        raise InternalizeError("accelerate launch with FSDP shards full fine-tuning: set model.finetune=full, or "
                               "launch LoRA with examples/accelerate/multi_gpu.yaml (its weights are frozen, a copy "
                               "per process costs no optimizer state)")
    if cfg.train.save_every or cfg.output.resume:
        raise InternalizeError("train.save_every / --resume: checkpoints are not written under FSDP yet; set "
                               "train.save_every=0 (or launch with examples/accelerate/multi_gpu.yaml)")
    if cfg.train.mode != "offline":
        raise InternalizeError("train.mode=on_policy/mixed is not run under FSDP yet (each process samples answers of "
                               "its own lengths); launch with examples/accelerate/multi_gpu.yaml")


def distill(cfg: Config) -> dict[str, Any]:
    """Distill each behaviour's context into the student; returns ``{behaviour: {base, teacher, student}}`` metrics."""
    runtime = Runtime.distributed(cfg.model.device)  # one process unless started by torchrun or accelerate launch
    if not runtime.is_main:  # the main process tells the story; the others only warn
        logging.getLogger(__package__).setLevel(logging.WARNING)
    behaviours = load_behaviours(cfg)
    neutral = _packaged("neutral.jsonl", cfg.eval.neutral_file, "eval.neutral_file")
    questions = _check_retention(_packaged("retention.jsonl", cfg.eval.retention_file, "eval.retention_file"))
    if runtime.fsdp:
        _check_fsdp(cfg)
    run = Run(cfg, writer=runtime.is_main)
    synthesizing = behaviours[0].train is None
    if synthesizing:
        check_synthesis(cfg.data.synthesize, _synthesis_path(cfg), (cfg.config_dir,))
    torch.manual_seed(cfg.train.seed)
    with run.stage("load"):
        model, tokenizer = load_model(cfg.model, runtime)
        base_dir = model.name_or_path
        started_from = origin(cfg.model.name, base_dir)
        too_long = fit_window(behaviours, tokenizer, _window(model), cfg)
    with run.open(), trackers(cfg, run.dir / "logs", runtime) as track:
        info: dict[str, Any] = {}
        if synthesizing:
            with run.stage("synthesize"):
                records, info["synthesis"] = synthesize(model, tokenizer, cfg.data.synthesize, _synthesis_path(cfg),
                                                        runtime, cfg.model.name, (cfg.config_dir,))
                b = behaviours[0]
                b.train, b.held_out = split_inputs(cfg.data, records, b.held_out, b.config)
                too_long |= fit_window(behaviours, tokenizer, _window(model), cfg)
        model = make_student(model, cfg.model)
        with run.stage("teacher"):
            taught = _targets(model, tokenizer, behaviours, cfg, runtime)
            taught, validation = _validation_split(taught, cfg.train)
            rehearsal = (_rehearsal(model, tokenizer, sum(map(len, taught)), cfg, runtime) if cfg.train.retain
                         else None)
            targets = Targets.concat(taught + ([rehearsal] if rehearsal is not None else []))
        with run.stage("reference"):
            references = _references(model, tokenizer, behaviours, cfg, runtime)
        if neutral:  # the original model's own answers: what the student should not lose
            with run.stage("neutral_before"):
                original = Reference.from_targets(_own_answers(model, tokenizer, neutral, cfg.eval.max_new_tokens, cfg,
                                                               runtime, "base[neutral]"), len(neutral))
        with run.stage("eval_before"):
            results = _before(model, tokenizer, behaviours, references, cfg, runtime)
            if questions:  # the original model's score on the retention questions
                before = retention(model, tokenizer, questions, cfg.eval, runtime, original=True,
                                   cache_dir=cache_dir(cfg.teacher))
        with run.stage("train"):
            batches, weights = _source(model, tokenizer, targets, behaviours, taught, rehearsal, cfg, runtime)

            def on_step(record: dict[str, Any]) -> None:
                if weights is not None:
                    weights.step(model)  # ema: the teacher moves toward the student
                track(step_values(record), record["step"])

            def validate() -> float:
                with inference_mode(model):
                    return mean_kl(model, tokenizer, validation, cfg.eval.batch_size, runtime.after_sharding)

            state = fit(model, batches, cfg.train, runtime, run.resume_state(model), on_checkpoint=run.checkpointer(model),
                        on_step=on_step, validate=validate if validation is not None else None)
        if isinstance(batches, OnPolicyBatches):
            info["on_policy"] = _on_policy_info(batches.stats, run.timings["train"])
        with run.stage("save"):  # the trained weights are the same in every process: the main one writes them
            model = save_artifact(model, tokenizer, run.model_dir, cfg.output.save, base_dir, write=runtime.is_main,
                                  state_dict=runtime.full_state_dict(model))
            run.saved(provenance(cfg, started_from))
        with run.stage("eval_after"):
            after = runtime.after_sharding  # FSDP: every process runs every input
            evaluate_behaviours({"student": model}, tokenizer, behaviours, references, cfg.eval, after, results)
            if neutral:
                info["forgetting"] = forgetting(model, tokenizer, neutral, original, cfg.eval, after)
            if questions:
                info["retention"] = _retained(before, retention(model, tokenizer, questions, cfg.eval, after),
                                              len(questions))
        if not runtime.is_main:  # every process has the results; the main one reports
            runtime.barrier()
            return metrics_of(results)
        if run.resumed_from:
            info["resumed_from"] = run.resumed_from
        if too_long:
            info["too_long"] = too_long
        info |= {
            "started_from": started_from,
            "train_inputs": sum(len(b.train) for b in behaviours), "train_answers": len(targets),
            "rehearsal_answers": len(rehearsal) if rehearsal is not None else 0,
            "validation_answers": len(validation) if validation is not None else 0,
            **({"best_step": state.best["step"], "best_val_kl": state.best["kl"]} if state.best else {}),
            "eval_inputs": sum(len(b.held_out) for b in behaviours), "dropped": targets.dropped,
            "steps": state.step, "processes": runtime.num_processes,
            "sharding": "fsdp" if runtime.fsdp else "data parallel" if runtime.num_processes > 1 else "none",
            "timings": run.timings, "total_s": round(sum(run.timings.values()), 2),
            "teacher_cache": {"hit": targets.cache_hit, "dir": str(cache_dir(cfg.teacher) or ""),
                              "bytes_per_answer_token": targets.bytes_per_token(),
                              "full_vocabulary_bytes_per_token": 4 * model.config.vocab_size},
            "train_padding_share": round(sum(h["padding"] for h in state.history) / max(len(state.history), 1), 4),
            "behaviours": {b.name: {"train_answers": len(t), "eval_inputs": len(b.held_out)}
                           for b, t in zip(behaviours, taught, strict=True)},
        }
        metrics = write_report(run.dir, results, behaviours, state.history, info, cfg)
        write_provenance(run.model_dir, provenance(cfg, started_from, metrics, info.get("forgetting")))
        track(eval_values(metrics, info.get("forgetting")), state.step)
        log.info("wrote %s: %s", run.dir / "report.md", summary(metrics))
    runtime.barrier()  # the other processes wait for the report
    return metrics


MIN_VALIDATION_INPUTS = 10  # a behaviour with fewer training inputs keeps them all for training


def _validation_split(taught: list[Targets], cfg: TrainConfig) -> tuple[list[Targets], Targets | None]:
    """(what each behaviour trains on, the validation split or None): ``cfg.validation`` of each behaviour's inputs,
    measured during training and never trained on; none for given outputs or behaviours of few inputs."""
    if not cfg.validation or cfg.targets == "data":  # given outputs have no teacher distributions to measure KL to
        return taught, None
    kept, held = [], []
    for t in taught:
        if len(set(t.source)) < MIN_VALIDATION_INPUTS:
            kept.append(t)
            continue
        train, val = t.split(cfg.validation, cfg.seed)
        kept.append(train)
        held.append(val)
    if not held:
        log.info("no validation split (train.validation): every behaviour has fewer than %d training inputs",
                 MIN_VALIDATION_INPUTS)
        return taught, None
    return kept, Targets.concat(held)


def synthesize_inputs(cfg: Config) -> dict[str, Any]:
    """``internalize synthesize``: write model-generated inputs (JSONL + provenance); returns the summary."""
    syn = cfg.data.synthesize
    path = _synthesis_path(cfg)
    if path.exists() and not cfg.output.overwrite:
        raise InternalizeError(f"data.synthesize.output='{path}' exists; pass --overwrite or choose another path")
    check_synthesis(syn, path, (cfg.config_dir,))
    runtime = Runtime.local(cfg.model.device)
    model, tokenizer = load_model(cfg.model, runtime)
    _, result = synthesize(model, tokenizer, syn, path, runtime, cfg.model.name, (cfg.config_dir,))
    return result


def evaluate_artifact(cfg: Config, student: str) -> dict[str, Any]:
    """Report base / teacher (``cfg.model`` without and with each behaviour's context) against a saved student."""
    runtime = Runtime.local(cfg.model.device)
    behaviours = load_behaviours(cfg, need_train=False)
    neutral = _packaged("neutral.jsonl", cfg.eval.neutral_file, "eval.neutral_file")
    questions = _check_retention(_packaged("retention.jsonl", cfg.eval.retention_file, "eval.retention_file"))
    run = Run(cfg)
    with run.stage("load"):
        model, tokenizer = load_model(cfg.model, runtime)
        student_model, _ = load_model(dataclasses.replace(cfg.model, name=student), runtime)
        too_long = fit_window(behaviours, tokenizer, _window(model), cfg)
    with run.open():
        with run.stage("reference"):
            references = _references(model, tokenizer, behaviours, cfg, runtime)
        with run.stage("eval"):
            results = _before(model, tokenizer, behaviours, references, cfg, runtime)
            evaluate_behaviours({"student": student_model}, tokenizer, behaviours, references, cfg.eval, runtime, results)
        info: dict[str, Any] = {"student": student, "eval_inputs": sum(len(b.held_out) for b in behaviours),
                                "timings": run.timings, **({"too_long": too_long} if too_long else {})}
        if neutral:
            with run.stage("forgetting"):
                original = Reference.from_targets(_own_answers(model, tokenizer, neutral, cfg.eval.max_new_tokens, cfg,
                                                               runtime, "base[neutral]"), len(neutral))
                info["forgetting"] = forgetting(student_model, tokenizer, neutral, original, cfg.eval, runtime)
        if questions:
            with run.stage("retention"):
                info["retention"] = _retained(retention(model, tokenizer, questions, cfg.eval, runtime, original=True,
                                                        cache_dir=cache_dir(cfg.teacher)),
                                              retention(student_model, tokenizer, questions, cfg.eval, runtime),
                                              len(questions))
        metrics = write_report(run.dir, results, behaviours, [], info, cfg)
        log.info("wrote %s: %s", run.dir / "report.md", summary(metrics))
    return metrics


def summary(metrics: dict[str, dict[str, dict[str, float]]]) -> str:
    """One line of ``{behaviour: {condition: metrics}}``: each condition's score (or agreement), per behaviour."""
    parts = []
    for name, m in metrics.items():
        key = "score" if "score" in m["base"] else "agreement"
        scores = ", ".join(f"{c} {key} {v[key]:.3f}" for c, v in m.items())
        parts.append(scores if len(metrics) == 1 else f"{name}: {scores}")
    return "; ".join(parts)
