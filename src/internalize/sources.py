"""Batch sources: what ``fit`` trains on, one micro-batch at a time.

A source yields ``MicroBatch``es: student views after their shared prompt prefix, collated, with the
teacher's log-probs over each answer token in the top-k + tail form (``targets``). ``fit`` neither
knows nor cares where they came from. ``OfflineBatches`` serves precomputed teacher targets
(the teacher ran before training); an on-policy source, whose student samples and teacher scores
are made while training, yields the same type.

Sources say how many examples an epoch holds (``num_examples``) and can save and restore their
position (``state_dict`` / ``load_state_dict``), so that a resumed run sees the batches it would have.

    source = OfflineBatches(targets, pad_id, batch_size=8, buckets=16, seed=0)
    mb = next(source)   # mb.batch.answer_ids [B, A], mb.teacher_logp [B, A, C]
    OfflineBatches(targets, pad_id, 8, 16, 0, rank=runtime.process_index, processes=runtime.num_processes)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from .decoding import Batch, Prefix, collate
from .targets import Targets
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

    def __next__(self) -> MicroBatch:
        idx = [self._next_indices() for _ in range(self.processes)][self.rank]  # every process walks the same order
        views = [self.targets.student_views[i] for i in idx]
        batch = collate(views, self.pad_id, len(self.prefix))
        logp, ids = self.targets.stacked(idx, batch.answer_ids.shape[1])
        return MicroBatch(batch, self.prefix, logp, ids, [self.targets.records[i]["input"] for i in idx])

    def state_dict(self) -> dict[str, Any]:
        return {"epoch_rng": self.epoch_rng, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["epoch_rng"])
        self._start_epoch()
        self.position = state["position"]
