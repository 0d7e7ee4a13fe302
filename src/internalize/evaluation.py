"""Evaluation: base (no context), teacher (with context) and student (no context) on held-out inputs.

Metrics per condition:
- ``agreement``: share of held-out inputs whose greedy answer equals the teacher's final answer;
- ``kl``: mean per-token KL(teacher || model) on the teacher's answer tokens (top-k form when
  ``teacher.top_k > 0``, a lower bound of the full KL);
- ``score``: the behaviour's scorer on the final answer.
The teacher's own agreement and KL are 1 and 0 by definition (its answers are the reference).

Under several processes each generates and scores its share of the inputs; every process gets the
whole result.

``retention`` scores a set of general questions with answer keys (the package's ``retention.jsonl``):
the student's score against the original model's says whether it still knows what it knew.

``evaluate_behaviours`` runs a set of conditions on every behaviour; ``distill`` and
``evaluate_artifact`` both call it. ``forgetting`` is the check on prompts the context says nothing
about: the student against the original model's own answers.

    reference = Reference.from_targets(answer(model, tok, held_out, prompt, teacher_cfg.greedy(), rt), len(held_out))
    result = evaluate(model, tok, held_out, reference, cfg.eval, "student", scorer, rt)
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from . import cache
from .behaviours import Behaviour, Scorer
from .config import CONDITIONS, EvalConfig
from .data import Record
from .decoding import Prefix, answer_logits, batches, generate, stop_strings
from .losses import forward_kl, to_classes
from .models import inference_mode, teacher_mode
from .runtime import Runtime
from .targets import Reference, Targets
from .views import prompt_ids

log = logging.getLogger(__name__)


@dataclass
class ConditionResult:
    metrics: dict[str, float]
    outputs: list[str]  # final answer per held-out input


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def mean_kl(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, targets: Targets, batch_size: int,
            runtime: Runtime) -> float:
    """Token-weighted mean KL(teacher || model) over the teacher's answers (student view), each process taking its
    share of the answers. Runs the model as it is (call under ``inference_mode``)."""
    mine = runtime.split(range(len(targets)))
    views = [targets.student_views[i] for i in mine]
    total, count = 0.0, 0
    if views:
        prefix = Prefix.shared([v.prompt_ids for v in views]).prefill(model, runtime.device)
        for idx, batch in batches(views, batch_size, tokenizer.pad_token_id, len(prefix)):
            teacher_logp, teacher_ids = targets.stacked([mine[i] for i in idx], batch.answer_ids.shape[1])
            logits = answer_logits(model, batch.to(runtime.device), prefix).cpu()
            kl = forward_kl(to_classes(logits, teacher_ids), teacher_logp, batch.answer_mask)
            tokens = int(batch.answer_mask.sum())
            total, count = total + kl.item() * tokens, count + tokens
    total, count = runtime.sum(torch.tensor([total, count], dtype=torch.float64, device=runtime.device)).tolist()
    return total / max(count, 1)


def evaluate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, records: list[Record], reference: Reference,
             cfg: EvalConfig, condition: str, scorer: Scorer | None, runtime: Runtime) -> ConditionResult:
    """Metrics and answers of one condition on held-out ``records``.

    ``reference`` is the greedy teacher on the same records. ``base`` and ``teacher`` run the frozen
    weights (LoRA adapters disabled), ``student`` the weights as trained.
    """
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS}")
    metrics: dict[str, Any] = {"n": len(records)}
    if condition == "teacher":
        outputs = [answer or "" for answer in reference.answers]
        metrics.update(agreement=1.0, kl=0.0)
    else:
        mode = teacher_mode if condition == "base" else inference_mode
        with mode(model):
            prompts = [prompt_ids(tokenizer, r["input"]) for r in runtime.split(records)]  # this process's share
            generations = generate(model, tokenizer, prompts, cfg.max_new_tokens, cfg.batch_size, runtime.device,
                                   desc=condition, engine=cfg.engine or "dynamic") if prompts else []
            outputs = runtime.gather_objects([samples[0].text for samples in generations])
            metrics["agreement"] = _mean([float(out == ref) for out, ref in zip(outputs, reference.answers, strict=True)
                                          if ref is not None])
            metrics["kl"] = (mean_kl(model, tokenizer, reference.targets, cfg.batch_size, runtime)
                             if len(reference.targets) else 0.0)
    if scorer is not None:
        metrics["score"] = _mean([scorer(r, out) for r, out in zip(records, outputs, strict=True)])
    return ConditionResult(metrics, outputs)


def evaluate_behaviours(models: dict[str, PreTrainedModel], tokenizer: PreTrainedTokenizerBase,
                        behaviours: list[Behaviour], references: list[Reference], cfg: EvalConfig, runtime: Runtime,
                        results: dict[str, dict[str, ConditionResult]] | None = None,
                        ) -> dict[str, dict[str, ConditionResult]]:
    """``{behaviour: {condition: result}}`` for each condition of ``models`` (condition -> the model that runs it)
    on every behaviour's held-out inputs, added to ``results`` when given."""
    results = {} if results is None else results
    for b, ref in zip(behaviours, references, strict=True):
        for condition, model in models.items():
            results.setdefault(b.name, {})[condition] = evaluate(model, tokenizer, b.held_out, ref, cfg, condition,
                                                                 b.scorer, runtime)
    return results


def retention(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, records: list[Record], cfg: EvalConfig,
              runtime: Runtime, original: bool = False, cache_dir: Path | None = None) -> float:
    """The share of the retention questions the model answers right (each record's ``answer`` regex found in the
    greedy answer, case-insensitive), with no context; ``original``: the frozen initial weights (LoRA adapters
    off), else the weights as they are. Each answer stops once its key's match is ``settled``: the same score as
    whole answers, from a third fewer tokens on the 120 packaged questions (experiments/demo/README.md).
    ``cache_dir`` (the teacher cache) with ``original``: the score is read from, or written to, the cache, keyed by
    the weights, prompts, keys and answer length, so later runs from the same model skip these generations."""
    mode = teacher_mode if original else inference_mode
    with mode(model):
        prompts = [prompt_ids(tokenizer, r["input"]) for r in records]
        key = None
        if original and cache_dir is not None:
            key = cache.score_key(model, prompts, [r["answer"] for r in records], cfg.max_new_tokens,
                                  tokenizer.eos_token_id, stop_strings(model))
            if (score := cache.load_score(cache_dir, key)) is not None:
                log.info("retention: the original model's score %.3f read from the cache %s", score, cache_dir)
                return score
        mine = runtime.split(range(len(records)))  # this process's share
        keys = [re.compile(records[i]["answer"], re.IGNORECASE) for i in mine]  # an answer ends once its key settles
        generations = generate(model, tokenizer, [prompts[i] for i in mine], cfg.max_new_tokens, cfg.batch_size,
                               runtime.device, desc="retention", engine=cfg.engine or "dynamic",
                               until=keys) if mine else []
        outputs = runtime.gather_objects([samples[0].text for samples in generations])
    score = _mean([float(re.search(r["answer"], out, re.IGNORECASE) is not None)
                   for r, out in zip(records, outputs, strict=True)])
    if key is not None and runtime.is_main:  # one writer: the score gathered from every process
        cache.save_score(cache_dir, key, score)
    return score


def metrics_of(results: dict[str, dict[str, ConditionResult]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{behaviour: {condition: metrics}}`` of ``evaluate_behaviours``' results, in the order of ``CONDITIONS``."""
    return {name: {c: r[c].metrics for c in CONDITIONS if c in r} for name, r in results.items()}


def forgetting(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, neutral: list[Record], original: Reference,
               cfg: EvalConfig, runtime: Runtime) -> dict[str, Any]:
    """How far the model has moved from the original on neutral prompts: agreement with the original's greedy
    answers, and the mean per-token KL(original || model) on them."""
    metrics = evaluate(model, tokenizer, neutral, original, cfg, "student", None, runtime).metrics
    return {"n": len(neutral), "agreement_with_original": metrics["agreement"], "kl_original_student": metrics["kl"]}
