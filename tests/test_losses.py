"""losses.py: true divergences, masking, the top-k + tail form, and the combined objective."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from internalize.losses import (
    MIN_LOGP,
    cross_entropy,
    distillation_loss,
    forward_kl,
    generalized_jsd,
    masked_mean,
    reverse_kl,
    to_classes,
)
from internalize.targets import topk_with_tail as _topk_with_tail

B, A, V = 3, 5, 11


def _logits(seed: int, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, A, V, generator=g) * scale


def _mask() -> torch.Tensor:
    mask = torch.ones(B, A, dtype=torch.bool)
    mask[0, 3:] = False
    mask[2, 1:] = False
    return mask


DIVERGENCES = [forward_kl, reverse_kl, generalized_jsd]


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_zero_for_identical_distributions(divergence):
    logp = F.log_softmax(_logits(0), -1)
    assert divergence(logp, logp.clone(), _mask()).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_positive_for_different_distributions(divergence):
    s, t = F.log_softmax(_logits(0), -1), F.log_softmax(_logits(1), -1)
    assert divergence(s, t, _mask()).item() > 1e-3


def test_forward_kl_matches_torch_kl_div():
    s, t = F.log_softmax(_logits(0), -1), F.log_softmax(_logits(1), -1)
    mask = torch.ones(B, A, dtype=torch.bool)
    expected = F.kl_div(s, t, log_target=True, reduction="sum") / mask.sum()
    torch.testing.assert_close(forward_kl(s, t, mask), expected, rtol=1e-5, atol=1e-6)


def test_forward_kl_matches_torch_kl_div_on_unmasked_tokens():
    s, t = F.log_softmax(_logits(0), -1), F.log_softmax(_logits(1), -1)
    mask = _mask()
    expected = F.kl_div(s[mask], t[mask], log_target=True, reduction="sum") / mask.sum()
    torch.testing.assert_close(forward_kl(s, t, mask), expected, rtol=1e-5, atol=1e-6)


def test_reverse_kl_is_kl_student_to_teacher_by_hand():
    s, t = F.log_softmax(_logits(0), -1), F.log_softmax(_logits(1), -1)
    mask = _mask()
    per_token = (s.exp() * (s - t)).sum(-1)
    expected = per_token[mask].sum() / mask.sum()
    torch.testing.assert_close(reverse_kl(s, t, mask), expected, rtol=1e-5, atol=1e-6)
    # and it is the forward KL with the roles swapped
    torch.testing.assert_close(reverse_kl(s, t, mask), forward_kl(t, s, mask), rtol=1e-5, atol=1e-6)


def test_jsd_symmetric_at_half_and_bounded_by_log2():
    s, t = F.log_softmax(_logits(0, 5.0), -1), F.log_softmax(_logits(1, 5.0), -1)
    mask = _mask()
    a, b = generalized_jsd(s, t, mask, 0.5), generalized_jsd(t, s, mask, 0.5)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert 0 < a.item() <= torch.log(torch.tensor(2.0)).item() + 1e-6


def test_jsd_matches_definition_by_hand():
    s, t = F.log_softmax(_logits(0), -1), F.log_softmax(_logits(1), -1)
    mask = _mask()
    beta = 0.3
    m = beta * t.exp() + (1 - beta) * s.exp()
    kl_tm = (t.exp() * (t - m.log())).sum(-1)
    kl_sm = (s.exp() * (s - m.log())).sum(-1)
    expected = (beta * kl_tm + (1 - beta) * kl_sm)[mask].sum() / mask.sum()
    torch.testing.assert_close(generalized_jsd(s, t, mask, beta), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_masked_positions_do_not_matter(divergence):
    s, t = F.log_softmax(_logits(0), -1), F.log_softmax(_logits(1), -1)
    mask = _mask()
    s2, t2 = s.clone(), t.clone()
    s2[~mask] = F.log_softmax(torch.randn(int((~mask).sum()), V) * 7, -1)
    t2[~mask] = 0.0  # what pad_stack puts there
    torch.testing.assert_close(divergence(s, t, mask), divergence(s2, t2, mask))


def test_masked_positions_do_not_matter_for_cross_entropy():
    logits, labels, mask = _logits(0), torch.randint(0, V, (B, A)), _mask()
    logits2, labels2 = logits.clone(), labels.clone()
    logits2[~mask] = 100.0
    labels2[~mask] = 0
    torch.testing.assert_close(cross_entropy(logits, labels, mask), cross_entropy(logits2, labels2, mask))


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd", "ce"])
def test_all_masked_is_exactly_zero_with_finite_gradients(kind):
    logits = _logits(0).requires_grad_(True)
    teacher = F.log_softmax(_logits(1), -1)
    mask = torch.zeros(B, A, dtype=torch.bool)
    loss = distillation_loss(logits, teacher, None, torch.zeros(B, A, dtype=torch.long), mask, kind)
    assert loss.item() == 0.0
    assert not torch.isnan(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad == 0).all()


def test_masked_mean_empty_mask_is_zero():
    assert masked_mean(torch.full((2, 3), 5.0), torch.zeros(2, 3, dtype=torch.bool)).item() == 0.0
    assert masked_mean(torch.arange(6.0).view(2, 3), torch.tensor([[1, 0, 1], [0, 0, 0]])).item() == 1.0


def test_to_classes_full_form_is_log_softmax():
    logits = _logits(0)
    torch.testing.assert_close(to_classes(logits, None), F.log_softmax(logits, -1))


def test_to_classes_topk_form_is_a_distribution():
    logits = _logits(0)
    ids = logits.topk(4, -1).indices
    classes = to_classes(logits, ids)
    assert classes.shape == (B, A, 5)
    torch.testing.assert_close(classes.logsumexp(-1), torch.zeros(B, A), atol=1e-5, rtol=0)
    torch.testing.assert_close(classes[..., :4], F.log_softmax(logits, -1).gather(-1, ids))


def _teacher_topk(teacher_logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence ``targets.topk_with_tail`` (as teacher.answer stores it), stacked into a batch."""
    logp = F.log_softmax(teacher_logits, -1)
    rows = [_topk_with_tail(logp[b], k) for b in range(logp.shape[0])]
    return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_topk_with_tail_equals_full_form_when_k_covers_vocabulary(kind):
    student, teacher = _logits(0, 1.0), _logits(1, 1.0)
    mask = _mask()
    labels = torch.zeros(B, A, dtype=torch.long)
    full = distillation_loss(student, F.log_softmax(teacher, -1), None, labels, mask, kind)
    t_logp, t_ids = _teacher_topk(teacher, V - 1)  # V - 1 ids plus a tail holding the last token
    topk = distillation_loss(student, t_logp, t_ids, labels, mask, kind)
    torch.testing.assert_close(topk, full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_topk_forward_kl_is_a_lower_bound_of_the_full_kl(k):
    student, teacher = _logits(0), _logits(1)
    mask = _mask()
    full = forward_kl(to_classes(student, None), F.log_softmax(teacher, -1), mask)
    t_logp, t_ids = _teacher_topk(teacher, k)
    topk = forward_kl(to_classes(student, t_ids), t_logp, mask)
    assert topk.item() <= full.item() + 1e-6
    assert topk.item() >= 0.0


def test_topk_with_tail_rows_are_log_probabilities():
    logp = F.log_softmax(_logits(0)[0], -1)
    values, ids = _topk_with_tail(logp, 3)
    assert values.shape == (A, 4) and ids.shape == (A, 3)
    torch.testing.assert_close(values.logsumexp(-1), torch.zeros(A), atol=1e-5, rtol=0)
    torch.testing.assert_close(values[:, :3], logp.gather(-1, ids))


def test_cross_entropy_matches_torch():
    logits, labels = _logits(0), torch.randint(0, V, (B, A))
    mask = torch.ones(B, A, dtype=torch.bool)
    torch.testing.assert_close(cross_entropy(logits, labels, mask), F.cross_entropy(logits.flatten(0, 1), labels.flatten()))
    mask = _mask()
    expected = F.cross_entropy(logits[mask], labels[mask])
    torch.testing.assert_close(cross_entropy(logits, labels, mask), expected)


def test_distillation_loss_kinds_and_ce_weight():
    student, teacher = _logits(0), F.log_softmax(_logits(1), -1)
    labels, mask = torch.randint(0, V, (B, A)), _mask()
    s = to_classes(student, None)
    kl = distillation_loss(student, teacher, None, labels, mask, "forward_kl")
    torch.testing.assert_close(kl, forward_kl(s, teacher, mask))
    torch.testing.assert_close(distillation_loss(student, teacher, None, labels, mask, "reverse_kl"),
                               reverse_kl(s, teacher, mask))
    torch.testing.assert_close(distillation_loss(student, teacher, None, labels, mask, "jsd", beta=0.2),
                               generalized_jsd(s, teacher, mask, 0.2))
    ce = cross_entropy(student, labels, mask)
    torch.testing.assert_close(distillation_loss(student, teacher, None, labels, mask, "ce"), ce)
    with_ce = distillation_loss(student, teacher, None, labels, mask, "forward_kl", ce_weight=0.5)
    torch.testing.assert_close(with_ce, kl + 0.5 * ce)
    with pytest.raises(ValueError, match="unknown loss"):
        distillation_loss(student, teacher, None, labels, mask, "bogus")


def test_zero_probability_teacher_class_is_finite():
    student = F.log_softmax(_logits(0), -1)
    teacher = F.log_softmax(_logits(1), -1)
    teacher[..., 0] = float("-inf")  # a class the teacher never picks
    teacher = teacher - teacher.logsumexp(-1, keepdim=True)
    mask = _mask()
    for divergence in DIVERGENCES:
        assert torch.isfinite(divergence(student, teacher, mask))
    assert MIN_LOGP < 0


def test_gradients_flow_to_student_logits():
    logits = _logits(0).requires_grad_(True)
    teacher = F.log_softmax(_logits(1), -1)
    loss = distillation_loss(logits, teacher, None, torch.zeros(B, A, dtype=torch.long), _mask(), "forward_kl")
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[_mask()].abs().sum() > 0
    assert (logits.grad[~_mask()] == 0).all()


def test_losses_are_fp32_for_bf16_inputs():
    logits = _logits(0).to(torch.bfloat16)
    teacher = F.log_softmax(_logits(1), -1)
    loss = distillation_loss(logits, teacher, None, torch.zeros(B, A, dtype=torch.long), _mask(), "forward_kl")
    assert loss.dtype == torch.float32
