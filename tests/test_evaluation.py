"""evaluation.py: the base / teacher / student metrics on held-out inputs, and the forgetting check."""

from __future__ import annotations

import dataclasses
import logging
import re

import pytest
import torch
from conftest import TINY_ANSWER, TINY_INPUTS

from internalize import evaluation
from internalize.behaviours import load_scorer
from internalize.config import BehaviourConfig, EvalConfig, ModelConfig, PromptConfig, TeacherConfig
from internalize.decoding import collate, generate
from internalize.evaluation import evaluate, forgetting, mean_kl
from internalize.losses import forward_kl, to_classes
from internalize.models import make_student, teacher_mode
from internalize.runtime import Runtime
from internalize.targets import Reference, pad_stack
from internalize.teacher import answer
from internalize.views import prompt_ids

RECORDS = [{"input": x} for x in TINY_INPUTS[:4]]
PROMPT = PromptConfig(context="Answer in one word.")
TEACHER = TeacherConfig(max_new_tokens=8, top_k=8, batch_size=4)
EVAL = EvalConfig(max_new_tokens=8, batch_size=3)
SCORER = load_scorer(BehaviourConfig(scorer_regex="^okay$"))
CPU = Runtime.local("cpu")


def _reference(model, tok, records=RECORDS, prompt=PROMPT, teacher=TEACHER):
    return Reference.from_targets(answer(model, tok, records, prompt, teacher, CPU), len(records))


# --- evaluate on the tiny model ---------------------------------------------------------------------------


@pytest.fixture
def student_and_reference(tiny):
    model, tok = tiny
    torch.manual_seed(0)
    student = make_student(model, ModelConfig(name="unused", lora_r=4, lora_alpha=8))
    reference = _reference(student, tok)
    return student, tok, reference


def _noisy(model, scale: float = 2.0):
    """The tiny model with seeded noise on every weight: greedy answers that differ from input to input."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * p.std())
    return model


def test_evaluate_metrics_are_computed_from_the_answers(tiny):
    model, tok = tiny
    student = make_student(_noisy(model), ModelConfig(name="unused", lora_r=4, lora_alpha=8))
    reference = _reference(student, tok, prompt=PromptConfig(context="Reply."))
    scorer = load_scorer(BehaviourConfig(scorer_regex="a"))
    result = evaluate(student, tok, RECORDS, reference, EVAL, "base", scorer, CPU)
    assert set(result.metrics) == {"n", "agreement", "kl", "score"} and result.metrics["n"] == len(RECORDS)
    pairs = [(out, ref) for out, ref in zip(result.outputs, reference.answers, strict=True) if ref is not None]
    assert result.metrics["agreement"] == pytest.approx(sum(out == ref for out, ref in pairs) / len(pairs))
    assert result.metrics["score"] == pytest.approx(sum("a" in out for out in result.outputs) / len(RECORDS))
    assert result.metrics["kl"] > 0.01  # without the context the noisy model's distributions move


def test_evaluate_without_scorer_has_no_score(student_and_reference):
    student, tok, reference = student_and_reference
    result = evaluate(student, tok, RECORDS, reference, EVAL, "base", None, CPU)
    assert set(result.metrics) == {"n", "agreement", "kl"}


def test_evaluate_teacher_answers_are_the_greedy_generations_with_the_context(tiny):
    """The teacher condition's answers (taken from the reference) are what the model writes with the context."""
    model, tok = tiny
    student = make_student(_noisy(model), ModelConfig(name="unused", lora_r=4, lora_alpha=8))
    prompt = PromptConfig(context="Reply.")
    reference = _reference(student, tok, prompt=prompt, teacher=TeacherConfig(max_new_tokens=8, batch_size=2))
    result = evaluate(student, tok, RECORDS, reference, EVAL, "teacher", SCORER, CPU)
    with teacher_mode(student):
        own = generate(student, tok, [prompt_ids(tok, r["input"], prompt) for r in RECORDS], 8, 3, CPU.device)
    expected = [s[0].text if s[0].finished else "" for s in own]
    assert result.outputs == expected
    assert len(set(expected)) > 1  # the answers depend on the input: the order is checked too
    assert result.metrics["score"] == pytest.approx(sum(SCORER({}, e) for e in expected) / len(expected))


def test_evaluate_tiny_base_agrees_with_teacher(student_and_reference):
    student, tok, reference = student_and_reference
    result = evaluate(student, tok, RECORDS, reference, EVAL, "base", SCORER, CPU)
    assert result.outputs == [TINY_ANSWER] * 4
    assert result.metrics["agreement"] == 1.0
    assert result.metrics["score"] == 1.0
    assert 0.0 < result.metrics["kl"] < 1.0  # same answers, slightly different distributions without context


def test_evaluate_kl_is_the_token_weighted_forward_kl(student_and_reference):
    student, tok, reference = student_and_reference
    student.eval()
    batch = collate(reference.targets.student_views, tok.pad_token_id)
    with torch.no_grad():
        from internalize.decoding import answer_logits

        logits = answer_logits(student, batch)
    length = batch.answer_ids.shape[1]
    targets = reference.targets
    expected = forward_kl(to_classes(logits, pad_stack(targets.ids, length)), pad_stack(targets.logp, length),
                          batch.answer_mask)
    with torch.no_grad():
        got = mean_kl(student, tok, reference.targets, 3, CPU)  # several batches, token-weighted
    assert got == pytest.approx(expected.item(), rel=1e-4, abs=1e-7)


def test_evaluate_base_ignores_adapters_and_student_uses_them(student_and_reference):
    student, tok, reference = student_and_reference
    before = {c: evaluate(student, tok, RECORDS, reference, EVAL, c, None, CPU).metrics for c in ("base", "student")}
    assert before["base"] == pytest.approx(before["student"])  # LoRA B starts at zero
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
    after = {c: evaluate(student, tok, RECORDS, reference, EVAL, c, None, CPU).metrics for c in ("base", "student")}
    assert after["base"] == pytest.approx(before["base"])
    assert after["student"]["kl"] > after["base"]["kl"]


def test_evaluate_with_all_reference_answers_dropped(tiny):
    model, tok = tiny
    never = TeacherConfig(max_new_tokens=8, extractor="regex", extract_pattern="NEVER")
    reference = _reference(model, tok, teacher=never)
    assert len(reference.targets) == 0 and reference.answers == [None] * 4
    base = evaluate(model, tok, RECORDS, reference, EVAL, "base", SCORER, CPU)
    assert base.metrics == {"n": 4, "agreement": 0.0, "kl": 0.0, "score": 1.0}
    teacher = evaluate(model, tok, RECORDS, reference, EVAL, "teacher", SCORER, CPU)
    assert teacher.outputs == [""] * 4 and teacher.metrics["score"] == 0.0


def test_evaluate_unknown_condition(student_and_reference):
    student, tok, reference = student_and_reference
    with pytest.raises(ValueError, match="condition must be one of"):
        evaluate(student, tok, RECORDS, reference, EVAL, "oracle", None, CPU)


def test_forgetting_is_zero_for_the_original_model_and_grows_as_the_student_moves(student_and_reference):
    student, tok, _ = student_and_reference
    neutral = [{"input": x} for x in TINY_INPUTS[4:8]]
    plain = TeacherConfig(max_new_tokens=8, top_k=8, batch_size=4)
    original = Reference.from_targets(answer(student, tok, neutral, None, plain, CPU), len(neutral))
    same = forgetting(student, tok, neutral, original, EVAL, CPU)
    assert same["n"] == 4 and same["agreement_with_original"] == 1.0
    assert same["kl_original_student"] == pytest.approx(0.0, abs=1e-6)  # LoRA B starts at zero: the same model
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
    moved = forgetting(student, tok, neutral, original, EVAL, CPU)
    assert moved["kl_original_student"] > 0.01


def test_evaluation_generates_with_the_engine_it_is_given_and_answers_the_same(tiny, monkeypatch):
    from internalize import evaluation

    model, tok = tiny
    student = make_student(_noisy(model), ModelConfig(name="unused", lora_r=4, lora_alpha=8))
    reference = _reference(student, tok, prompt=PromptConfig(context="Reply."))
    engines: list[str] = []
    monkeypatch.setattr(evaluation, "generate", lambda *a, **k: engines.append(k["engine"]) or generate(*a, **k))
    results = {e: evaluate(student, tok, RECORDS, reference, EvalConfig(max_new_tokens=8, batch_size=3, engine=e),
                           "student", SCORER, CPU) for e in ("", "dynamic", "static")}
    assert engines == ["dynamic", "dynamic", "static"]  # '' alone (no run config to follow): today's loop
    assert results["static"].outputs == results["dynamic"].outputs == results[""].outputs
    assert results["static"].metrics == pytest.approx(results["dynamic"].metrics, abs=1e-5)


# --- retention -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["static", "dynamic"])
def test_retention_cuts_answers_at_their_key_with_the_score_of_whole_answers(tiny, monkeypatch, engine):
    model, tok = tiny
    cfg = EvalConfig(max_new_tokens=12, batch_size=3, engine=engine)
    prompts = [prompt_ids(tok, x) for x in TINY_INPUTS]
    with teacher_mode(model):
        whole = [g[0].text for g in generate(model, tok, prompts, 12, 3, "cpu", engine=engine)]
    # keys found at the start of an answer, at its end, not at all (and one a regex, case-insensitive)
    keys = [re.escape(t[:2]) if i % 3 == 0 else re.escape(t[-2:]) if i % 3 == 1 else "no such answer"
            for i, t in enumerate(whole)]
    keys[0] = re.escape(whole[0][:2].swapcase()) + ".?"
    records = [{"input": x, "answer": k} for x, k in zip(TINY_INPUTS, keys, strict=True)]
    seen = []

    def spy(*args, **kwargs):
        seen.append(generate(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(evaluation, "generate", spy)
    score = evaluation.retention(model, tok, records, cfg, CPU, original=True)
    assert score == pytest.approx(sum(re.search(k, t, re.IGNORECASE) is not None
                                      for k, t in zip(keys, whole, strict=True)) / len(keys))
    assert 0 < score < 1
    cut = [g[0].text for g in seen[0]]
    assert all(w.startswith(c) for c, w in zip(cut, whole, strict=True)) and sum(map(len, cut)) < sum(map(len, whole))


def test_the_original_models_retention_score_is_cached_by_its_weights_prompts_and_keys(tiny, tmp_path, monkeypatch,
                                                                                     caplog):
    model, tok = tiny
    records = [{"input": x, "answer": k} for x, k in zip(TINY_INPUTS, "aeiouyo kay", strict=False)]
    calls = []

    def spy(*args, **kwargs):
        calls.append(len(args[2]))
        return generate(*args, **kwargs)

    monkeypatch.setattr(evaluation, "generate", spy)
    uncached = evaluation.retention(model, tok, records, EVAL, CPU, original=True)
    first = evaluation.retention(model, tok, records, EVAL, CPU, original=True, cache_dir=tmp_path)
    assert first == uncached and len(calls) == 2 and len(list((tmp_path / "scores").glob("*.json"))) == 1
    with caplog.at_level(logging.INFO, logger="internalize.evaluation"):
        assert evaluation.retention(model, tok, records, EVAL, CPU, original=True, cache_dir=tmp_path) == first
    assert len(calls) == 2 and "read from the cache" in caplog.text  # no generation: the cached score
    # other keys, another answer length, other weights, or weights as they are (adapters may be active): computed
    other = [{"input": r["input"], "answer": "zz"} for r in records]
    assert evaluation.retention(model, tok, other, EVAL, CPU, original=True, cache_dir=tmp_path) == 0.0
    longer = dataclasses.replace(EVAL, max_new_tokens=EVAL.max_new_tokens + 1)
    evaluation.retention(model, tok, records, longer, CPU, original=True, cache_dir=tmp_path)
    evaluation.retention(model, tok, records, EVAL, CPU, cache_dir=tmp_path)
    assert len(calls) == 5
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    evaluation.retention(model, tok, records, EVAL, CPU, original=True, cache_dir=tmp_path)
    assert len(calls) == 6 and len(list((tmp_path / "scores").glob("*.json"))) == 4
    for path in (tmp_path / "scores").glob("*.json"):  # a damaged cache is computed again, never used
        path.write_text("{not json")
    assert evaluation.retention(model, tok, records, EVAL, CPU, original=True, cache_dir=tmp_path) is not None
    assert len(calls) == 7
