"""Teacher: generate with the context, extract the final answer, record its token distributions.

The teacher is the model conditioned on context + input, run in ``eval()`` under ``no_grad``
(with LoRA: the same weights, adapters disabled). For each input it generates ``num_samples``
continuations; a configured extractor pulls the final answer out of a scratch-pad (generations
whose answer cannot be extracted, or that never finished, are dropped and counted). Then it
scores the answer tokens conditioned on context + input + scratch-pad and keeps, per token,
the top-k log-probs plus the tail mass (or the full vocabulary when ``top_k=0``).

    targets = teach(model, tokenizer, records, cfg.teacher)
    targets.student_views[i], targets.logp[i]  # [A_i, k + 1]
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .config import TeacherConfig
from .data import Record
from .models import generate, teacher_mode
from .views import View, answer_ids, answer_logits, batches, pad_stack, prompt_ids

log = logging.getLogger(__name__)


def extract_answer(generation: str, extractor: str, pattern: str) -> tuple[str, str] | None:
    """Split a generation into (scratch-pad prefix, final answer); None if no answer is found.

    none: the whole generation is the answer. regex: the last match's first group (or whole match).
    delimiter: the text after the last occurrence of ``pattern``.
    """
    if extractor == "none":
        prefix, answer = "", generation
    elif extractor == "regex":
        matches = list(re.finditer(pattern, generation, flags=re.DOTALL))
        if not matches:
            return None
        m = matches[-1]
        group = 1 if m.re.groups else 0
        if m.group(group) is None:  # an optional group that took no part in the match
            return None
        prefix, answer = generation[: m.start(group)], m.group(group)
    elif extractor == "delimiter":
        at = generation.rfind(pattern)
        if at < 0:
            return None
        prefix, answer = generation[: at + len(pattern)], generation[at + len(pattern) :]
    else:
        raise ValueError(f"unknown extractor {extractor!r}")
    stripped = answer.lstrip()
    prefix += answer[: len(answer) - len(stripped)]
    answer = stripped.rstrip()
    return (prefix, answer) if answer else None


@dataclass
class TeacherTargets:
    """The teacher's answers and distributions for the kept (input, sample) pairs."""

    records: list[Record] = field(default_factory=list)  # the input record of each kept sample
    source: list[int] = field(default_factory=list)  # index of that record in the input list
    generations: list[str] = field(default_factory=list)  # full teacher generation (scratch-pad + answer)
    answers: list[str] = field(default_factory=list)  # extracted final answer
    teacher_views: list[View] = field(default_factory=list)
    student_views: list[View] = field(default_factory=list)
    logp: list[torch.Tensor] = field(default_factory=list)  # [A_i, C] fp32 log-probs (C = k + 1 or V)
    ids: list[torch.Tensor] | None = None  # [A_i, k] top-k ids, None for the full vocabulary
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count
    all_answers: list[str | None] = field(default_factory=list)  # first sample's answer per input (None = dropped)

    def __len__(self) -> int:
        return len(self.answers)

    def stacked(self, idx: list[int], length: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher log-probs [B, length, C] and top-k ids [B, length, k] (or None) for samples ``idx``."""
        logp = pad_stack([self.logp[i] for i in idx], length)
        return logp, None if self.ids is None else pad_stack([self.ids[i] for i in idx], length)


def _topk_with_tail(logp: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[A, V] log-probs -> ([A, k + 1] top-k then tail log-probs, [A, k] ids)."""
    values, ids = logp.topk(k, dim=-1)
    tail = torch.log1p(-values.exp().sum(-1, keepdim=True).clamp(max=1.0 - 1e-7))
    return torch.cat([values, tail], dim=-1), ids


def teach(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, records: list[Record], cfg: TeacherConfig,
          desc: str = "teacher", with_context: bool = True) -> TeacherTargets:
    """Run the teacher on ``records``: generate, extract, then score the final-answer tokens.

    ``with_context=False`` gives the frozen base model's own answers and distributions (the
    reference of the forgetting check)."""
    top_k = cfg.top_k if cfg.top_k < model.config.vocab_size else 0  # k covering the vocabulary = full form
    targets = TeacherTargets(ids=[] if top_k else None)
    dropped: Counter[str] = Counter()
    with teacher_mode(model):
        prompts = [prompt_ids(tokenizer, r["input"], cfg if with_context else None) for r in records]
        samples = generate(model, tokenizer, prompts, cfg.max_new_tokens, cfg.batch_size, cfg.do_sample,
                           cfg.temperature, cfg.top_p, cfg.num_samples, desc=f"{desc}: generate")
        for i, (record, prompt, outs) in enumerate(zip(records, prompts, samples, strict=True)):
            student_prompt = prompt_ids(tokenizer, record["input"])
            for n, (text, finished) in enumerate(outs):
                split = extract_answer(text, cfg.extractor, cfg.extract_pattern) if finished else None
                if n == 0:
                    targets.all_answers.append(split[1] if split else None)
                if not finished:
                    dropped["unfinished (raise teacher.max_new_tokens)"] += 1
                    continue
                if split is None:
                    dropped["answer not extracted"] += 1
                    continue
                scratch, answer = split
                answer_tok = answer_ids(tokenizer, answer)
                scratch_tok = tuple(tokenizer(scratch, add_special_tokens=False).input_ids) if scratch else ()
                targets.records.append(record)
                targets.source.append(i)
                targets.generations.append(text)
                targets.answers.append(answer)
                targets.teacher_views.append(View(prompt + scratch_tok, answer_tok))
                targets.student_views.append(View(student_prompt, answer_tok))
        targets.dropped = dict(dropped)
        if dropped:
            log.warning("%s: dropped %s of %d teacher samples: %s", desc, sum(dropped.values()),
                        sum(map(len, samples)), dict(dropped))
        scored: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        device = next(model.parameters()).device
        groups = batches(targets.teacher_views, cfg.batch_size, tokenizer.pad_token_id) if len(targets) else []
        for idx, batch in tqdm(groups, desc=f"{desc}: score", unit="batch", disable=None):
            logp = torch.log_softmax(answer_logits(model, batch.to(device)).float(), dim=-1).cpu()
            for row, i in enumerate(idx):
                token_logp = logp[row, : len(targets.teacher_views[i].answer_ids)]
                scored[i] = _topk_with_tail(token_logp, top_k) if top_k else (token_logp, None)
    targets.logp = [scored[i][0] for i in range(len(targets))]
    if targets.ids is not None:
        targets.ids = [scored[i][1] for i in range(len(targets))]
    return targets
