"""Batch sources: what ``fit`` trains on, one micro-batch at a time.

A source yields ``MicroBatch``es: student views after their shared prompt prefix, collated, with the
teacher's log-probs over each answer token in the top-k + tail form (``targets``). ``fit`` neither
knows nor cares where they came from. ``OfflineBatches`` serves precomputed teacher targets
(the teacher ran before training); ``OnPolicyBatches``, whose student samples and teacher scores
are made while training (all micro-batches, or a share of them), yields the same type.

Sources say how many examples an epoch holds (``num_examples``) and can save and restore their
position (``state_dict`` / ``load_state_dict``), so that a resumed run sees the batches it would have.

    source = OfflineBatches(targets, pad_id, batch_size=8, buckets=16, seed=0)
    mb = next(source)   # mb.batch.answer_ids [B, A], mb.teacher_logp [B, A, C]
    OfflineBatches(targets, pad_id, 8, 16, 0, rank=runtime.process_index, processes=runtime.num_processes)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .config import TeacherConfig, TrainConfig
from .decoding import Batch, Prefix, collate, generate
from .models import TeacherWeights, inference_mode
from .runtime import Runtime
from .targets import Targets, pad_stack
from .teacher import score
from .views import View


@dataclass
class MicroBatch:
    """Student views after a shared prefix, and the teacher's distributions over their answer tokens."""

    batch: Batch  # the views after the prefix (decoding.collate), on the CPU
    prefix: Prefix  # the prompt tokens every view starts with (not prefilled: fit runs it with gradients)
    teacher_logp: torch.Tensor  # [B, A, C] (C = k + 1 top-k then tail, V, or 0 for given answers)
    teacher_ids: torch.Tensor | None  # [B, A, k] ids of the top-k classes, None for the full vocabulary
    inputs: list[str] = field(default_factory=list)  # the input texts, for messages

    @property
    def tokens(self) -> int:
        """Answer tokens in the micro-batch (the loss is normalised by their count over a whole step)."""
        return int(self.batch.answer_mask.sum())


class BatchSource(Protocol):
    num_examples: int  # examples in one epoch (fit's step count follows from it)

    def __next__(self) -> MicroBatch: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def micro_batches(views: list[View], batch_size: int, buckets: int, generator: torch.Generator) -> Iterator[list[int]]:
    """Endless epochs of shuffled micro-batches (indices into ``views``), length-bucketed.

    Each epoch is a random permutation cut into pools of ``buckets`` micro-batches; a pool is sorted
    by sequence length before it is cut into micro-batches, and the micro-batches are shuffled again.
    ``buckets=1`` is plain shuffling.
    """
    while True:
        yield from _epoch(views, batch_size, buckets, generator)


def _epoch(views: list[View], batch_size: int, buckets: int, generator: torch.Generator) -> list[list[int]]:
    def length(i: int) -> int:
        return len(views[i].prompt_ids) + len(views[i].answer_ids)

    order = torch.randperm(len(views), generator=generator).tolist()
    chunks = []
    for start in range(0, len(order), batch_size * buckets):
        pool = sorted(order[start : start + batch_size * buckets], key=length)
        chunks += [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
    return [chunks[i] for i in torch.randperm(len(chunks), generator=generator).tolist()]


class OfflineBatches:
    """Endless length-bucketed epochs (``micro_batches``) over precomputed teacher targets."""

    def __init__(self, targets: Targets, pad_id: int, batch_size: int, buckets: int = 1, seed: int = 0,
                 rank: int = 0, processes: int = 1, share_prefix: bool = True) -> None:
        self.targets, self.pad_id, self.batch_size, self.buckets = targets, pad_id, batch_size, buckets
        self.rank, self.processes = rank, processes  # of several processes, each takes every processes-th micro-batch
        self.num_examples = len(targets)
        # share_prefix False: each micro-batch runs its views whole (FSDP cannot backpropagate into a cache that
        # an earlier forward pass of its sharded blocks made)
        self.prefix = Prefix.shared([v.prompt_ids for v in targets.student_views], share=share_prefix)
        self.generator = torch.Generator().manual_seed(seed)
        self._start_epoch()

    def _start_epoch(self) -> None:
        self.epoch_rng = self.generator.get_state()  # what the epoch's order is drawn from: enough to redraw it
        self.order = _epoch(self.targets.student_views, self.batch_size, self.buckets, self.generator)
        self.position = 0

    def __iter__(self) -> OfflineBatches:
        return self

    def _next_indices(self) -> list[int]:
        if self.position == len(self.order):
            self._start_epoch()
        self.position += 1
        return self.order[self.position - 1]

    def next_indices(self) -> list[int]:
        """The targets of this process's next micro-batch (every process walks the same order, each takes its own)."""
        return [self._next_indices() for _ in range(self.processes)][self.rank]

    def batch(self, idx: list[int]) -> MicroBatch:
        """The micro-batch of targets ``idx``: their student views and the teacher's distributions."""
        views = [self.targets.student_views[i] for i in idx]
        batch = collate(views, self.pad_id, len(self.prefix))
        logp, ids = self.targets.stacked(idx, batch.answer_ids.shape[1])
        return MicroBatch(batch, self.prefix, logp, ids, [self.targets.records[i]["input"] for i in idx])

    def __next__(self) -> MicroBatch:
        return self.batch(self.next_indices())

    def state_dict(self) -> dict[str, Any]:
        return {"epoch_rng": self.epoch_rng, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["epoch_rng"])
        self._start_epoch()
        self.position = state["position"]


class OnPolicyBatches:
    """Micro-batches whose answers the student samples as it trains, scored by the teacher with the context.

    Each micro-batch takes the next inputs of ``offline`` (the same order, epochs and sharding across
    processes). With probability ``share`` (1: ``train.mode=on_policy``; between 0 and 1: ``mixed``)
    the student, as it is now, samples an answer to each input from its own prompt (no context), and
    the teacher (``weights`` applied: base, ema or live) scores exactly those tokens after its own
    prompt (``teacher_prompts[i]``: the context and input of target i); otherwise the micro-batch is
    the offline one. Answers cut off at ``max_new_tokens`` are trained on as sampled and counted in
    ``stats``, which also holds the time spent sampling and scoring.

        source = OnPolicyBatches(offline, student, tok, prompts, TeacherWeights(student, 1.0), cfg.train,
                                 cfg.teacher, runtime, share=1.0)
        mb = next(source)   # mb.batch.answer_ids: the student's sample; mb.teacher_logp: the teacher's view of it
    """

    def __init__(self, offline: OfflineBatches, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 teacher_prompts: list[tuple[int, ...]], weights: TeacherWeights, cfg: TrainConfig,
                 teacher: TeacherConfig, runtime: Runtime, share: float) -> None:
        if len(teacher_prompts) != len(offline.targets):
            raise ValueError("one teacher prompt per target")
        self.offline, self.model, self.tokenizer, self.weights = offline, model, tokenizer, weights
        self.teacher_prompts, self.cfg, self.teacher, self.runtime, self.share = (
            teacher_prompts, cfg, teacher, runtime, share)
        self.num_examples = offline.num_examples
        self.max_new_tokens = cfg.sample_max_new_tokens or teacher.max_new_tokens
        self.top_k = teacher.top_k if teacher.top_k < model.config.vocab_size else 0
        self.generator = torch.Generator().manual_seed(cfg.seed + 1)  # which micro-batches are on-policy
        self.teacher_prefix = Prefix.shared(teacher_prompts)
        self.prefilled: Prefix | None = None  # the teacher prefix's cache, kept while the teacher's weights stay put
        self.stats = {"micro_batches": 0, "on_policy": 0, "samples": 0, "cut_off": 0, "sample_s": 0.0, "score_s": 0.0}

    def __next__(self) -> MicroBatch:
        idx = self.offline.next_indices()
        self.stats["micro_batches"] += 1
        if self.share < 1.0 and torch.rand((), generator=self.generator).item() >= self.share:
            return self.offline.batch(idx)
        targets = self.offline.targets
        started = time.perf_counter()
        with inference_mode(self.model):
            samples = generate(self.model, self.tokenizer, [targets.student_views[i].prompt_ids for i in idx],
                               self.max_new_tokens, len(idx), self.runtime.device, do_sample=True,
                               temperature=self.cfg.sample_temperature, top_p=self.cfg.sample_top_p,
                               desc="student: sample", progress=False)
        answers = [s[0].ids for s in samples]
        scored_at = time.perf_counter()
        with self.weights.applied(self.model):
            if self.prefilled is None or self.weights.rate < 1.0:
                self.prefilled = self.teacher_prefix.prefill(self.model, self.runtime.device)
            scored = score(self.model, self.tokenizer, [View(self.teacher_prompts[i], a) for i, a in zip(idx, answers,
                           strict=True)], self.top_k, len(idx), self.runtime, "teacher[on-policy]",
                           prefix=self.prefilled, progress=False)
        self.stats["sample_s"] += scored_at - started
        self.stats["score_s"] += time.perf_counter() - scored_at
        self.stats["on_policy"] += 1
        self.stats["samples"] += len(idx)
        self.stats["cut_off"] += sum(not s[0].finished for s in samples)
        views = [View(targets.student_views[i].prompt_ids, a) for i, a in zip(idx, answers, strict=True)]
        batch = collate(views, self.offline.pad_id, len(self.offline.prefix))
        length = batch.answer_ids.shape[1]
        logp = pad_stack([lp for lp, _ in scored], length)
        ids = None if scored[0][1] is None else pad_stack([i for _, i in scored], length)
        return MicroBatch(batch, self.offline.prefix, logp, ids, [targets.records[i]["input"] for i in idx])

    def state_dict(self) -> dict[str, Any]:
        return {"offline": self.offline.state_dict(), "generator": self.generator.get_state(),
                "weights": self.weights.state_dict(), "stats": dict(self.stats)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.offline.load_state_dict(state["offline"])
        self.generator.set_state(state["generator"])
        self.weights.load_state_dict(state["weights"])
        self.stats = dict(state["stats"])
        self.prefilled = None
