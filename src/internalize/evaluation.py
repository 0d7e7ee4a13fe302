"""Evaluation: base (no context), teacher (with context) and student (no context) on held-out inputs.

Metrics per condition:
- ``agreement``: share of held-out inputs whose greedy answer equals the teacher's final answer;
- ``kl``: mean per-token KL(teacher || model) on the teacher's answer tokens (top-k form when
  ``teacher.top_k > 0``, a lower bound of the full KL);
- ``score``: the user's scorer (``eval.scorer_regex`` or ``eval.scorer``) on the final answer.
The teacher's own agreement and KL are 1 and 0 by definition.

    reference = teach(model, tok, held_out, greedy_teacher_cfg)
    result = evaluate(model, tok, held_out, reference, cfg.eval, "student")
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .config import EvalConfig, InternalizeError, import_callable
from .data import Record
from .decoding import Prefix, answer_logits, batches, generate
from .losses import forward_kl, to_classes
from .models import inference_mode, teacher_mode
from .teacher import TeacherTargets
from .views import prompt_ids

Scorer = Callable[[Record, str], float]
CONDITIONS = ("base", "teacher", "student")


@dataclass
class ConditionResult:
    metrics: dict[str, float]
    outputs: list[str]  # final answer per held-out input


def load_scorer(cfg: EvalConfig) -> Scorer | None:
    """The configured scorer, or None. Import and regex errors name the key and the fix."""
    if cfg.scorer_regex:
        try:
            pattern = re.compile(cfg.scorer_regex)
        except re.error as e:
            raise InternalizeError(f"eval.scorer_regex={cfg.scorer_regex!r} is not a valid regex ({e})") from None
        return lambda record, output: float(pattern.search(output) is not None)
    if cfg.scorer:
        fn = import_callable(cfg.scorer, "eval.scorer")
        return lambda record, output: float(fn(record, output))
    return None


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _mean_kl(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, reference: TeacherTargets,
             batch_size: int) -> float:
    """Token-weighted mean KL(teacher || model) over the reference answers (student view)."""
    total, count = 0.0, 0
    device = next(model.parameters()).device
    prefix = Prefix.shared([v.prompt_ids for v in reference.student_views]).prefill(model)
    for idx, batch in batches(reference.student_views, batch_size, tokenizer.pad_token_id, len(prefix)):
        teacher_logp, teacher_ids = reference.stacked(idx, batch.answer_ids.shape[1])
        logits = answer_logits(model, batch.to(device), prefix).cpu()
        kl = forward_kl(to_classes(logits, teacher_ids), teacher_logp, batch.answer_mask)
        tokens = int(batch.answer_mask.sum())
        total, count = total + kl.item() * tokens, count + tokens
    return total / max(count, 1)


def evaluate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, records: list[Record],
             reference: TeacherTargets, cfg: EvalConfig, condition: str,
             scorer: Scorer | None = None) -> ConditionResult:
    """Metrics and answers of one condition on held-out ``records``.

    ``reference`` is the greedy teacher on the same records. ``base`` and ``teacher`` run the frozen
    weights (LoRA adapters disabled), ``student`` the weights as trained.
    """
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS}")
    metrics: dict[str, Any] = {"n": len(records)}
    if condition == "teacher":
        outputs = [answer or "" for answer in reference.all_answers]
        metrics.update(agreement=1.0, kl=0.0)
    else:
        mode = teacher_mode if condition == "base" else inference_mode
        with mode(model):
            prompts = [prompt_ids(tokenizer, r["input"]) for r in records]
            generations = generate(model, tokenizer, prompts, cfg.max_new_tokens, cfg.batch_size, desc=condition)
            outputs = [samples[0].text for samples in generations]
            metrics["agreement"] = _mean([float(outputs[i] == reference.all_answers[i])
                                          for i in range(len(records)) if reference.all_answers[i] is not None])
            metrics["kl"] = _mean_kl(model, tokenizer, reference, cfg.batch_size) if len(reference) else 0.0
    if scorer is not None:
        metrics["score"] = _mean([scorer(r, out) for r, out in zip(records, outputs, strict=True)])
    return ConditionResult(metrics, outputs)
