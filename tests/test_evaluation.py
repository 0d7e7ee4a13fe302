"""evaluation.py: scorers, and the base / teacher / student metrics on held-out inputs."""

from __future__ import annotations

import sys
import uuid

import pytest
import torch
from conftest import TINY_ANSWER, TINY_INPUTS

from internalize.config import EvalConfig, InternalizeError, ModelConfig, TeacherConfig
from internalize.decoding import collate
from internalize.evaluation import CONDITIONS, _mean_kl, evaluate, load_scorer
from internalize.losses import forward_kl, to_classes
from internalize.models import make_student
from internalize.teacher import teach
from internalize.views import pad_stack

RECORDS = [{"input": x} for x in TINY_INPUTS[:4]]
TEACHER = TeacherConfig(context="Answer in one word.", max_new_tokens=8, top_k=8, batch_size=4)
EVAL = EvalConfig(max_new_tokens=8, batch_size=3, scorer_regex="^okay$")


@pytest.fixture
def isolated_path(monkeypatch):
    """load_scorer puts the working directory on sys.path: give it a copy that is restored afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))


def _scorer_module(tmp_path, monkeypatch, body: str) -> str:
    name = f"scorer_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def test_no_scorer():
    assert load_scorer(EvalConfig()) is None


def test_regex_scorer():
    scorer = load_scorer(EvalConfig(scorer_regex=r"Over\.\s*$"))
    assert scorer({"input": "q"}, "Fine. Over.") == 1.0
    assert scorer({"input": "q"}, "Over. And out") == 0.0
    assert isinstance(scorer({}, ""), float)


def test_regex_scorer_uses_search_not_match():
    assert load_scorer(EvalConfig(scorer_regex="b"))({}, "abc") == 1.0


def test_bad_regex():
    with pytest.raises(InternalizeError) as e:
        load_scorer(EvalConfig(scorer_regex="(unclosed"))
    assert str(e.value).startswith("eval.scorer_regex='(unclosed' is not a valid regex")
    assert "\n" not in str(e.value)


def test_callable_scorer_from_working_directory(tmp_path, monkeypatch, isolated_path):
    name = _scorer_module(tmp_path, monkeypatch,
                          "def exact(record, output):\n    return output.strip() == record['gold']\n")
    scorer = load_scorer(EvalConfig(scorer=f"{name}:exact"))
    assert scorer({"input": "q", "gold": "4"}, " 4 ") == 1.0
    assert scorer({"input": "q", "gold": "4"}, "5") == 0.0
    assert isinstance(scorer({"input": "q", "gold": "4"}, "4"), float)


def test_callable_scorer_may_return_a_float(tmp_path, monkeypatch, isolated_path):
    name = _scorer_module(tmp_path, monkeypatch, "def half(record, output):\n    return 0.5\n")
    assert load_scorer(EvalConfig(scorer=f"{name}:half"))({}, "x") == 0.5


def test_regex_wins_over_callable():
    scorer = load_scorer(EvalConfig(scorer_regex="x", scorer="no_such_module_xyz:f"))
    assert scorer({}, "x") == 1.0


def test_unimportable_scorer_module(tmp_path, monkeypatch, isolated_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InternalizeError) as e:
        load_scorer(EvalConfig(scorer="no_such_module_xyz:score"))
    message = str(e.value)
    assert message.startswith("eval.scorer='no_such_module_xyz:score' cannot be imported")
    assert "\n" not in message


def test_missing_scorer_function(tmp_path, monkeypatch, isolated_path):
    name = _scorer_module(tmp_path, monkeypatch, "def other(record, output):\n    return 1\n")
    with pytest.raises(InternalizeError, match=rf"eval\.scorer='{name}:missing' cannot be imported"):
        load_scorer(EvalConfig(scorer=f"{name}:missing"))


# --- evaluate on the tiny model ---------------------------------------------------------------------------


@pytest.fixture
def student_and_reference(tiny):
    model, tok = tiny
    torch.manual_seed(0)
    student = make_student(model, ModelConfig(name="unused", lora_r=4, lora_alpha=8))
    reference = teach(student, tok, RECORDS, TEACHER)
    return student, tok, reference


def test_evaluate_metric_keys(student_and_reference):
    student, tok, reference = student_and_reference
    scorer = load_scorer(EVAL)
    for condition in CONDITIONS:
        result = evaluate(student, tok, RECORDS, reference, EVAL, condition, scorer)
        assert set(result.metrics) == {"n", "agreement", "kl", "score"}
        assert result.metrics["n"] == len(RECORDS)
        assert len(result.outputs) == len(RECORDS)
        assert 0.0 <= result.metrics["agreement"] <= 1.0
        assert result.metrics["kl"] >= 0.0


def test_evaluate_without_scorer_has_no_score(student_and_reference):
    student, tok, reference = student_and_reference
    result = evaluate(student, tok, RECORDS, reference, EVAL, "base")
    assert set(result.metrics) == {"n", "agreement", "kl"}


def test_evaluate_teacher_is_the_reference(student_and_reference):
    student, tok, reference = student_and_reference
    result = evaluate(student, tok, RECORDS, reference, EVAL, "teacher", load_scorer(EVAL))
    assert result.metrics == {"n": 4, "agreement": 1.0, "kl": 0.0, "score": 1.0}
    assert result.outputs == [TINY_ANSWER] * 4


def test_evaluate_tiny_base_agrees_with_teacher(student_and_reference):
    student, tok, reference = student_and_reference
    result = evaluate(student, tok, RECORDS, reference, EVAL, "base", load_scorer(EVAL))
    assert result.outputs == [TINY_ANSWER] * 4
    assert result.metrics["agreement"] == 1.0
    assert result.metrics["score"] == 1.0
    assert 0.0 < result.metrics["kl"] < 1.0  # same answers, slightly different distributions without context


def test_evaluate_kl_is_the_token_weighted_forward_kl(student_and_reference):
    student, tok, reference = student_and_reference
    student.eval()
    batch = collate(reference.student_views, tok.pad_token_id)
    with torch.no_grad():
        from internalize.decoding import answer_logits

        logits = answer_logits(student, batch)
    length = batch.answer_ids.shape[1]
    expected = forward_kl(to_classes(logits, pad_stack(reference.ids, length)), pad_stack(reference.logp, length),
                          batch.answer_mask)
    with torch.no_grad():
        got = _mean_kl(student, tok, reference, batch_size=3)  # several batches, token-weighted
    assert got == pytest.approx(expected.item(), rel=1e-4, abs=1e-7)


def test_evaluate_base_ignores_adapters_and_student_uses_them(student_and_reference):
    student, tok, reference = student_and_reference
    before = {c: evaluate(student, tok, RECORDS, reference, EVAL, c).metrics for c in ("base", "student")}
    assert before["base"] == pytest.approx(before["student"])  # LoRA B starts at zero
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
    after = {c: evaluate(student, tok, RECORDS, reference, EVAL, c).metrics for c in ("base", "student")}
    assert after["base"] == pytest.approx(before["base"])
    assert after["student"]["kl"] > after["base"]["kl"]


def test_evaluate_with_all_reference_answers_dropped(tiny):
    model, tok = tiny
    never = TeacherConfig(context="c", max_new_tokens=8, extractor="regex", extract_pattern="NEVER")
    reference = teach(model, tok, RECORDS, never)
    assert len(reference) == 0
    base = evaluate(model, tok, RECORDS, reference, EVAL, "base", load_scorer(EVAL))
    assert base.metrics == {"n": 4, "agreement": 0.0, "kl": 0.0, "score": 1.0}
    teacher = evaluate(model, tok, RECORDS, reference, EVAL, "teacher", load_scorer(EVAL))
    assert teacher.outputs == [""] * 4 and teacher.metrics["score"] == 0.0


def test_evaluate_unknown_condition(student_and_reference):
    student, tok, reference = student_and_reference
    with pytest.raises(ValueError, match="condition must be one of"):
        evaluate(student, tok, RECORDS, reference, EVAL, "oracle")
