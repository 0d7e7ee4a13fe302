"""Losses: pure functions on answer-token distributions, fp32, masked, normalised by token count.

Shapes: ``B`` sequences, ``A`` answer positions, ``C`` classes. A class is either a vocabulary
entry (``C = V``, the full form) or, in the top-k form, one of the teacher's k most likely tokens
plus one *tail* class holding the rest of the mass (``C = k + 1``); ``to_classes`` maps student
logits onto the teacher's classes. When k covers the vocabulary both forms are equal; otherwise
the top-k KL is a lower bound of the full KL (fewer, coarser classes).

Every divergence is the true KL, not a cross-entropy: zero when the distributions match.
Each returns the sum over unmasked tokens divided by their count (0, not NaN, if none).

    s = to_classes(student_logits, teacher_ids)          # [B, A, C] log-probs
    loss = forward_kl(s, teacher_logp, mask)             # KL(teacher || student)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Teacher log-probs are clamped here so that a zero-probability class costs a large, finite amount.
MIN_LOGP = -100.0


def to_classes(student_logits: torch.Tensor, teacher_ids: torch.Tensor | None) -> torch.Tensor:
    """Student log-probs over the teacher's classes.

    student_logits: [B, A, V]; teacher_ids: [B, A, k] top-k ids, or None for the full vocabulary.
    Returns [B, A, V] (full) or [B, A, k + 1] (top-k then tail), fp32.
    """
    logp = F.log_softmax(student_logits.float(), dim=-1)
    if teacher_ids is None:
        return logp
    top = logp.gather(-1, teacher_ids)
    tail = logp.scatter(-1, teacher_ids, float("-inf")).logsumexp(-1, keepdim=True)
    return torch.cat([top, tail], dim=-1)


def masked_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of per_token [B, A] over mask [B, A]; 0 when the mask is empty."""
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


def _kl_per_token(p_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per position: sum_c p_c (log p_c - log q_c). [B, A, C] -> [B, A]."""
    return (p_logp.exp() * (p_logp - q_logp)).sum(-1)


def forward_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student), mean over answer tokens. Log-probs [B, A, C], mask [B, A] -> scalar."""
    return masked_mean(_kl_per_token(teacher_logp.float().clamp_min(MIN_LOGP), student_logp.float()), mask)


def reverse_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(student || teacher), mean over answer tokens. Log-probs [B, A, C], mask [B, A] -> scalar."""
    return masked_mean(_kl_per_token(student_logp.float(), teacher_logp.float().clamp_min(MIN_LOGP)), mask)


def generalized_jsd(student_logp: torch.Tensor, teacher_logp: torch.Tensor, mask: torch.Tensor,
                    beta: float = 0.5) -> torch.Tensor:
    """beta KL(t || m) + (1 - beta) KL(s || m), m = beta t + (1 - beta) s; beta in (0, 1).

    Log-probs [B, A, C], mask [B, A] -> scalar. beta = 0.5 is the symmetric Jensen-Shannon divergence.
    """
    s = student_logp.float()
    t = teacher_logp.float().clamp_min(MIN_LOGP)
    m = torch.logsumexp(torch.stack([t + torch.log(torch.tensor(beta)), s + torch.log(torch.tensor(1 - beta))]), 0)
    per_token = beta * _kl_per_token(t, m) + (1 - beta) * _kl_per_token(s, m)
    return masked_mean(per_token, mask)


def cross_entropy(student_logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hard-label cross-entropy on answer tokens. Logits [B, A, V], labels [B, A], mask [B, A] -> scalar."""
    nll = F.cross_entropy(student_logits.float().flatten(0, 1), labels.flatten(), reduction="none")
    return masked_mean(nll.view(labels.shape), mask)


def distillation_loss(student_logits: torch.Tensor, teacher_logp: torch.Tensor, teacher_ids: torch.Tensor | None,
                      labels: torch.Tensor, mask: torch.Tensor, kind: str = "forward_kl", beta: float = 0.5,
                      ce_weight: float = 0.0) -> torch.Tensor:
    """The training objective named by ``train.loss`` plus ``ce_weight`` times the hard-label CE.

    student_logits [B, A, V]; teacher_logp [B, A, C]; teacher_ids [B, A, k] or None; labels, mask [B, A].
    """
    if kind == "ce":
        return cross_entropy(student_logits, labels, mask)
    student_logp = to_classes(student_logits, teacher_ids)
    if kind == "forward_kl":
        loss = forward_kl(student_logp, teacher_logp, mask)
    elif kind == "reverse_kl":
        loss = reverse_kl(student_logp, teacher_logp, mask)
    elif kind == "jsd":
        loss = generalized_jsd(student_logp, teacher_logp, mask, beta)
    else:
        raise ValueError(f"unknown loss {kind!r}")
    if ce_weight:
        loss = loss + ce_weight * cross_entropy(student_logits, labels, mask)
    return loss
