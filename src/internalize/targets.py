"""Targets: what the teacher hands to training, and what evaluation compares against.

Two types, one representation of a distribution over an answer token:

- ``Targets``: the kept (input, sample) pairs with their aligned teacher and student views and the
  teacher's log-probs over each answer token, what ``fit`` and the teacher cache need;
- ``Reference``: the teacher's greedy answer per held-out input (None where it kept none), with its
  ``Targets`` for the KL of each condition, what ``evaluate`` needs.

A distribution is stored per answer token either as the full vocabulary (``[A, V]`` log-probs) or
in the top-k form: the k most likely tokens' log-probs, then the *tail* class holding the rest of
the mass (``[A, k + 1]`` log-probs and ``[A, k]`` ids). ``topk_with_tail`` builds it (with the
tail summed directly, never as ``1 - sum(top-k)``, which loses a peaked distribution's tail to
rounding); ``Targets.stacked`` pads a batch of them; ``losses.to_classes`` maps student logits onto
the same classes.

    logp, ids = topk_with_tail(log_softmax(logits), k=128)   # [A, k + 1], [A, k]
    teacher_logp, teacher_ids = targets.stacked([0, 3], length=A)
    reference = Reference.from_targets(targets, num_inputs=len(held_out))
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch

from .views import View

Record = dict[str, Any]


def topk_with_tail(logp: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[..., V] log-probs -> ([..., k + 1] top-k then tail log-probs, [..., k] ids); k = 0 keeps all."""
    if not k or k >= logp.shape[-1]:
        return logp, None
    values, ids = logp.topk(k, dim=-1)
    tail = logp.scatter(-1, ids, float("-inf")).logsumexp(-1, keepdim=True)
    return torch.cat([values, tail], dim=-1), ids


def pad_stack(rows: list[torch.Tensor], length: int) -> torch.Tensor:
    """Stack per-view [A_i, C] tensors into [B, length, C], zero-padded (padding is masked out)."""
    out = rows[0].new_zeros((len(rows), length, rows[0].shape[-1]))
    for b, row in enumerate(rows):
        out[b, : row.shape[0]] = row
    return out


@dataclass
class Targets:
    """The teacher's answers and distributions for the kept (input, sample) pairs."""

    records: list[Record] = field(default_factory=list)  # the input record of each kept sample
    source: list[int] = field(default_factory=list)  # index of that record in the input list
    generations: list[str] = field(default_factory=list)  # full teacher generation (scratch-pad + answer)
    answers: list[str] = field(default_factory=list)  # extracted final answer
    teacher_views: list[View] = field(default_factory=list)
    student_views: list[View] = field(default_factory=list)
    logp: list[torch.Tensor] = field(default_factory=list)  # [A_i, C] fp32 log-probs (C = k + 1 or V; 0: given answers)
    ids: list[torch.Tensor] | None = None  # [A_i, k] top-k ids, None for the full vocabulary
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count
    cache_hit: bool = False  # loaded from the teacher cache rather than computed

    def __len__(self) -> int:
        return len(self.answers)

    @classmethod
    def concat(cls, parts: list[Targets]) -> Targets:
        """Several targets as one: the teachers of several behaviours, or the parts of one teacher run, in order."""
        if len(parts) == 1:
            return parts[0]
        out = cls(ids=None if any(p.ids is None for p in parts) else [])
        for p in parts:
            for name in ("records", "source", "generations", "answers", "teacher_views", "student_views", "logp"):
                getattr(out, name).extend(getattr(p, name))
            if out.ids is not None:
                out.ids.extend(p.ids)
            for reason, n in p.dropped.items():
                out.dropped[reason] = out.dropped.get(reason, 0) + n
        out.cache_hit = all(p.cache_hit for p in parts)
        return out

    def subset(self, keep: list[int]) -> Targets:
        """The targets ``keep`` (indices), in that order."""
        out = Targets(ids=None if self.ids is None else [self.ids[i] for i in keep], dropped=dict(self.dropped),
                      cache_hit=self.cache_hit)
        for name in ("records", "source", "generations", "answers", "teacher_views", "student_views", "logp"):
            setattr(out, name, [getattr(self, name)[i] for i in keep])
        return out

    def split(self, share: float, seed: int) -> tuple[Targets, Targets]:
        """(the rest, a validation split): the targets of ``share`` of the inputs (at least one, at random, seeded),
        so that no input has answers on both sides."""
        inputs = sorted(set(self.source))
        chosen = set(random.Random(seed).sample(inputs, max(1, round(share * len(inputs))))) if inputs else set()
        return (self.subset([i for i, s in enumerate(self.source) if s not in chosen]),
                self.subset([i for i, s in enumerate(self.source) if s in chosen]))

    def keep(self, record: Record, source: int, generation: str, answer: str, view: View,
             student_prompt: tuple[int, ...], logp: torch.Tensor | None, ids: torch.Tensor | None = None) -> None:
        """Add one kept sample: its record, the teacher's text and answer, both aligned views and its distributions
        (``logp`` None: to be filled in once scored)."""
        self.records.append(record)
        self.source.append(source)
        self.generations.append(generation)
        self.answers.append(answer)
        self.teacher_views.append(view)
        self.student_views.append(View(student_prompt, view.answer_ids))
        self.logp.append(logp)
        if self.ids is not None:
            self.ids.append(ids)

    def stacked(self, idx: list[int], length: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher log-probs [B, length, C] and top-k ids [B, length, k] (or None) for samples ``idx``."""
        logp = pad_stack([self.logp[i] for i in idx], length)
        return logp, None if self.ids is None else pad_stack([self.ids[i] for i in idx], length)

    def bytes_per_token(self) -> float:
        """Stored bytes per answer token (log-probs fp32, ids int32)."""
        if not len(self):
            return 0.0
        return float(self.logp[0].shape[-1] * 4 + (self.ids[0].shape[-1] * 4 if self.ids is not None else 0))


@dataclass
class Reference:
    """What a condition is compared with on the held-out inputs: the teacher's greedy answer per input."""

    answers: list[str | None]  # per held-out input; None where the teacher kept no answer
    targets: Targets  # the kept answers with their distributions (for the KL)

    @classmethod
    def from_targets(cls, targets: Targets, num_inputs: int) -> Reference:
        """Each input's first kept answer (the greedy teacher keeps at most one)."""
        answers: list[str | None] = [None] * num_inputs
        for source, answer in zip(reversed(targets.source), reversed(targets.answers), strict=True):
            answers[source] = answer
        return cls(answers, targets)
