"""sources.py: batch sources for fit. On-policy micro-batches hold the student's own samples, scored by the teacher
with the context; mixed sources draw the configured share on-policy, the rest offline."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_INPUTS, perturb_lora

from internalize.config import ModelConfig, PromptConfig, TeacherConfig, TrainConfig
from internalize.decoding import generate
from internalize.models import TeacherWeights, inference_mode, make_student, teacher_mode
from internalize.runtime import Runtime
from internalize.sources import OfflineBatches, OnPolicyBatches
from internalize.targets import topk_with_tail
from internalize.teacher import answer, teacher_prompts
from internalize.views import prompt_ids

CPU = Runtime.local("cpu")
PROMPT = PromptConfig(context="Answer in one word.")
TEACHER = TeacherConfig(max_new_tokens=8, top_k=16, cache_dir="")


def _source(tiny, share=1.0, rate=1.0, batch_size=4):
    model, tok = tiny
    torch.manual_seed(0)
    student = make_student(model, ModelConfig(name="unused", lora_r=4, lora_alpha=8))
    perturb_lora(student, 0.5)  # the student answers otherwise than the teacher (the base weights), input by input
    records = [{"input": t} for t in TINY_INPUTS[:8]]
    targets = answer(student, tok, records, PROMPT, TEACHER, CPU)
    prompts, _ = teacher_prompts(tok, records, PROMPT)
    offline = OfflineBatches(targets, tok.pad_token_id, batch_size, 1, 0)
    cfg = TrainConfig(sample_max_new_tokens=6, sample_temperature=1.5, seed=0)
    source = OnPolicyBatches(offline, student, tok, [prompts[i] for i in targets.source], TeacherWeights(student, rate),
                             cfg, TEACHER, CPU, share)
    return source, student, tok


def _rows(mb):
    """Each row's answer ids (unpadded)."""
    return [tuple(mb.batch.answer_ids[b][mb.batch.answer_mask[b]].tolist()) for b in range(len(mb.inputs))]


def test_on_policy_batches_score_exactly_the_students_samples_with_the_teachers_context(tiny):
    source, student, tok = _source(tiny)
    idx_state, rng = source.offline.state_dict(), torch.get_rng_state()
    mb = next(source)
    # the answers are what the student samples from its own prompt (no context), at the configured settings
    source.offline.load_state_dict(idx_state)
    idx = source.offline.next_indices()
    torch.set_rng_state(rng)
    with inference_mode(student):
        again = generate(student, tok, [source.offline.targets.student_views[i].prompt_ids for i in idx], 6, len(idx),
                         "cpu", do_sample=True, temperature=1.5)
    assert _rows(mb) == [s[0].ids for s in again]
    teacher_answers = {source.offline.targets.records[i]["input"]: source.offline.targets.teacher_views[i].answer_ids
                       for i in range(len(source.offline.targets))}
    assert any(row != teacher_answers[x] for row, x in zip(_rows(mb), mb.inputs, strict=True))  # not the teacher's
    # the student view: its own prompt, then the sample
    prefix = list(mb.prefix.ids)
    for b, (x, row) in enumerate(zip(mb.inputs, _rows(mb), strict=True)):
        ids = prefix + mb.batch.input_ids[b][mb.batch.attention_mask[b, len(prefix):].bool()].tolist()  # mask: prefix too
        assert ids[: len(ids) - len(row) + 1] == list(prompt_ids(tok, x)) + [row[0]]
    # the teacher's distributions: the frozen model with the context, on exactly those tokens (uncached forward)
    for b, (x, row) in enumerate(zip(mb.inputs, _rows(mb), strict=True)):
        teacher_prompt = list(prompt_ids(tok, x, PROMPT))
        with teacher_mode(student):
            logits = student(input_ids=torch.tensor([teacher_prompt + list(row)])).logits[0].float()
        P = len(teacher_prompt)
        logp, ids = topk_with_tail(torch.log_softmax(logits[P - 1 : P - 1 + len(row)], -1), 16)
        torch.testing.assert_close(mb.teacher_logp[b, : len(row)], logp, atol=1e-5, rtol=0)
        assert torch.equal(mb.teacher_ids[b, : len(row)], ids)
    assert source.stats["on_policy"] == 1 and source.stats["samples"] == len(mb.inputs)


def test_mixed_draws_the_configured_share_and_serves_the_rest_offline(tiny):
    source, _, _ = _source(tiny, share=0.3, batch_size=2)
    offline = OfflineBatches(source.offline.targets, source.offline.pad_id, 2, 1, 0)  # the same order, alone
    on = 0
    for _ in range(60):
        mb, expected = next(source), next(offline)
        if torch.equal(mb.teacher_logp, expected.teacher_logp) and torch.equal(mb.batch.input_ids,
                                                                                expected.batch.input_ids):
            continue  # an offline micro-batch: the teacher's own answers and distributions
        on += 1
    assert on == source.stats["on_policy"]
    assert 0.15 <= on / 60 <= 0.45  # 30% drawn, 60 draws


def test_the_on_policy_source_resumes_where_it_stopped(tiny):
    source, _, _ = _source(tiny, share=0.5, batch_size=2)
    for _ in range(3):
        next(source)
    state, rng = source.state_dict(), torch.get_rng_state()
    after = [next(source) for _ in range(3)]
    source.load_state_dict(state)
    torch.set_rng_state(rng)
    again = [next(source) for _ in range(3)]
    for a, b in zip(after, again, strict=True):
        assert torch.equal(a.batch.input_ids, b.batch.input_ids) and torch.equal(a.teacher_logp, b.teacher_logp)


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_teacher_weights_base_never_move_ema_moves_by_its_rate_live_is_the_student(tiny_model_dir, finetune):
    from internalize.models import load_model

    def fresh():
        model, _ = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu"))
        torch.manual_seed(0)
        return make_student(model, ModelConfig(name="unused", finetune=finetune, lora_r=4, lora_alpha=8))

    def trainable(model):
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    x = torch.tensor([[3, 4, 5, 6]])
    for rate in (1.0, 0.9, 0.0):
        student = fresh()
        start = trainable(student)
        base_logits = student(input_ids=x).logits.detach()  # LoRA starts as a no-op: the base model's
        weights = TeacherWeights(student, rate)
        for _ in range(2):  # two optimizer steps that move every weight by +0.01
            with torch.no_grad():
                for p in student.parameters():
                    if p.requires_grad:
                        p.add_(0.01)
            weights.step(student)
        now = trainable(student)
        with weights.applied(student):
            inside = trainable(student)
            logits = student(input_ids=x).logits
        assert all(torch.equal(now[n], p) for n, p in trainable(student).items())  # the student's weights are back
        if rate == 1.0:  # base: the initial weights, whatever happened since
            torch.testing.assert_close(logits, base_logits, atol=1e-6, rtol=0)
            if finetune == "full":
                assert all(torch.equal(inside[n], start[n]) for n in start)
        elif rate == 0.0:  # live: the student as it is
            assert all(torch.equal(inside[n], now[n]) for n in now)
        else:  # ema: t1 = r s0 + (1 - r)(s0 + .01), t2 = r t1 + (1 - r)(s0 + .02) = s0 + .01 (1 - r)(2 + r)
            expected_shift = 0.01 * (1 - rate) * (2 + rate)
            for n in start:
                torch.testing.assert_close(inside[n], start[n] + expected_shift, atol=1e-6, rtol=0)
