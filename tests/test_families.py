"""A model-family matrix: decoding, training and saving on tiny random models of each architecture.

Every family is a 2-layer model built from its config (nothing is downloaded), with the character
tokenizer's vocabulary and end-of-turn id, and weights drawn wider than usual (``initializer_range``
0.2) so that greedy choices are clear-cut. For each: shared-prefix answer logits equal each input's
own uncached forward, our batched greedy ``generate`` equals ``model.generate`` one prompt at a
time, teacher and student answer logits align, a few ``fit`` steps lower the loss, and the saved
artifact reloads with equal logits. Gemma 2 runs with logit soft-capping small enough to bite.

The ``-sw16`` families have a 16-token sliding window, far shorter than the sequences: padding after
a cached prefix would take window slots (transformers counts the window in cache slots, not
positions), so ``decoding`` runs padded batches whole and says so once in the log.
"""

from __future__ import annotations

import logging
import math
import random

import pytest
import torch
import transformers
from conftest import TINY_INPUTS, build_tiny_tokenizer

import internalize.decoding as decoding
from internalize.config import ModelConfig, PromptConfig, TrainConfig
from internalize.decoding import Prefix, answer_logits, collate, generate, sliding_window
from internalize.models import inference_mode, make_student, save_artifact
from internalize.runtime import Runtime
from internalize.sources import OfflineBatches
from internalize.targets import Targets, topk_with_tail
from internalize.training import fit
from internalize.views import View, answer_ids, prompt_ids

TOK = build_tiny_tokenizer()
WINDOW = 16
SOFTCAP = 2.0  # Gemma 2's final logit soft-capping, small enough that random logits reach it
ATOL = 1e-5

# family -> (config class, model class, extra config); a missing class skips the family with the reason
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 8}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {}),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", {}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
               {"head_dim": 8, "final_logit_softcapping": SOFTCAP, "attn_logit_softcapping": 5.0}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {"head_dim": 8}),
    "gemma2-sw16": ("Gemma2Config", "Gemma2ForCausalLM",
                    {"head_dim": 8, "final_logit_softcapping": SOFTCAP, "sliding_window": WINDOW}),
    "gemma3-sw16": ("Gemma3TextConfig", "Gemma3ForCausalLM", {"head_dim": 8, "sliding_window": WINDOW}),
    "mistral-sw16": ("MistralConfig", "MistralForCausalLM", {"sliding_window": WINDOW}),
    "phi3-sw16": ("Phi3Config", "Phi3ForCausalLM", {"sliding_window": WINDOW}),
    "qwen2-sw16": ("Qwen2Config", "Qwen2ForCausalLM",
                   {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 0}),
}
WINDOWED = [name for name in FAMILIES if name.endswith("-sw16")]


def build(family: str, seed: int = 0):
    """A fresh tiny random model of ``family`` in eval mode (fp32, CPU)."""
    config_name, model_name, extra = FAMILIES[family]
    config_cls, model_cls = getattr(transformers, config_name, None), getattr(transformers, model_name, None)
    if config_cls is None or model_cls is None:
        pytest.skip(f"transformers {transformers.__version__} has no {config_name if config_cls is None else model_name}")
    ids = {"vocab_size": len(TOK), "eos_token_id": TOK.eos_token_id, "pad_token_id": TOK.pad_token_id,
           "bos_token_id": None, "initializer_range": 0.2}
    if family == "gpt2":
        config = config_cls(**ids, n_embd=32, n_layer=2, n_head=4, n_positions=512)
    else:
        config = config_cls(**ids, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            intermediate_size=64, max_position_embeddings=512, **extra)
    torch.manual_seed(seed)
    return model_cls(config).eval()


@pytest.fixture(params=list(FAMILIES))
def family(request) -> str:
    return request.param


@pytest.fixture(autouse=True)
def _fresh_window_warnings(monkeypatch):
    monkeypatch.setattr(decoding, "_WARNED", set())


def _context(length: int = 160) -> str:
    rng = random.Random(0)
    return "".join(rng.choice("abcdefgh ") for _ in range(length))


PROMPT = PromptConfig(context=_context())  # a system message: 180+ shared teacher prompt tokens
INPUTS = ["Hi", "What is the capital of France?", "x y z", "Count to three, slowly."]
ANSWERS = ["Hello. Over.", "Paris", "abc def gh", "one"]


def _views(prompt=PROMPT):
    return [View(prompt_ids(TOK, x, prompt), answer_ids(TOK, a)) for x, a in zip(INPUTS, ANSWERS, strict=True)]


def _reference(model, view: View) -> torch.Tensor:
    """Uncached, unbatched logits predicting each answer token."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([view.prompt_ids + view.answer_ids]), use_cache=False).logits[0]
    P, A = len(view.prompt_ids), len(view.answer_ids)
    return logits[P - 1 : P - 1 + A]


def _batched(model, views) -> torch.Tensor:
    with torch.no_grad():
        prefix = Prefix.shared([v.prompt_ids for v in views]).prefill(model, "cpu")
        return answer_logits(model, collate(views, TOK.pad_token_id, len(prefix)), prefix)


# --- 1. shared-prefix answer logits --------------------------------------------------------------------


def test_shared_prefix_answer_logits_equal_uncached(family):
    model = build(family)
    views = _views()
    prefix = Prefix.shared([v.prompt_ids for v in views])
    assert len(prefix) >= 150
    assert len({len(v.prompt_ids) for v in views}) == len(views)  # every row padded differently
    got = _batched(model, views)
    for b, view in enumerate(views):
        ref = _reference(model, view)
        torch.testing.assert_close(got[b, : len(view.answer_ids)], ref, atol=ATOL, rtol=0)
    if "gemma2" in family:  # the comparison covers soft-capped logits
        assert got.abs().max() <= SOFTCAP and got.abs().max() > SOFTCAP / 2


# --- 2. greedy generation ------------------------------------------------------------------------------


def test_generate_equals_hf_generate_one_prompt_at_a_time(family):
    model = build(family)
    prompts = [prompt_ids(TOK, x, PromptConfig(context=_context(40))) for x in TINY_INPUTS[:5]]
    with inference_mode(model):
        ours = generate(model, TOK, prompts, max_new_tokens=12, batch_size=3, device="cpu")
        for p, (gen,) in zip(prompts, ours, strict=True):
            ids = torch.tensor([p])
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                                 pad_token_id=TOK.pad_token_id, eos_token_id=TOK.eos_token_id)
            assert gen.ids == tuple(out[0, len(p) :].tolist())
    assert len({g[0].ids for g in ours}) > 1  # the prompts lead to different answers


# --- 3. teacher and student views align ----------------------------------------------------------------


def test_teacher_and_student_answer_logits_align(family):
    model = build(family)
    t_views = _views()
    s_views = [View(prompt_ids(TOK, x), v.answer_ids) for x, v in zip(INPUTS, t_views, strict=True)]
    t_logits, s_logits = _batched(model, t_views), _batched(model, s_views)
    assert t_logits.shape == s_logits.shape == (len(INPUTS), max(len(v.answer_ids) for v in t_views), len(TOK))
    for b, (t, s) in enumerate(zip(t_views, s_views, strict=True)):
        assert t.answer_ids == s.answer_ids and t.answer_ids[-1] == TOK.eos_token_id
        A = len(t.answer_ids)
        # position j of either view predicts answer token j: equal to the uncached logits at P - 1 + j
        torch.testing.assert_close(t_logits[b, :A], _reference(model, t), atol=ATOL, rtol=0)
        torch.testing.assert_close(s_logits[b, :A], _reference(model, s), atol=ATOL, rtol=0)


# --- 4. training ---------------------------------------------------------------------------------------


def _targets(answers=("hello!", "Bye", "A-OK", "no", "yes please", "42"), sharpness=6.0) -> Targets:
    """Hand-made teacher targets (as tests/test_training.py builds them): sharp distributions on given answers."""
    targets = Targets(ids=None)
    for i, (text, answer) in enumerate(zip(TINY_INPUTS, answers, strict=False)):
        a_ids = answer_ids(TOK, answer)
        logits = torch.zeros(len(a_ids), len(TOK))
        logits[torch.arange(len(a_ids)), torch.tensor(a_ids)] = sharpness
        logp, ids = topk_with_tail(torch.log_softmax(logits, -1), 0)
        view = View(prompt_ids(TOK, text, PromptConfig(context=_context(40))), a_ids)
        targets.keep({"input": text}, i, answer, answer, view, view.prompt_ids, logp, ids)
    return targets


def test_fit_lowers_the_loss(family):
    student = make_student(build(family), ModelConfig(name="unused", finetune="full"))
    cfg = TrainConfig(max_steps=5, batch_size=3, lr=1e-2, warmup_ratio=0.0, schedule="constant", seed=0)
    source = OfflineBatches(_targets(), TOK.pad_token_id, cfg.batch_size, cfg.length_buckets, cfg.seed)
    assert len(source.prefix) > WINDOW
    history = fit(student, source, cfg, Runtime.local("cpu")).history
    assert all(math.isfinite(h["loss"]) for h in history)
    assert history[-1]["loss"] < history[0]["loss"]


# --- 5. the artifact -----------------------------------------------------------------------------------


def test_artifact_reloads_with_equal_logits(family, tmp_path):
    model = build(family)
    save_artifact(model, TOK, tmp_path / "model", "merged", str(tmp_path))
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    assert type(loaded) is type(model)
    ids = torch.tensor([_views()[1].prompt_ids])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=ATOL, rtol=0)


# --- sliding windows -----------------------------------------------------------------------------------


def test_sliding_window_of_each_family(family):
    model = build(family)
    expected = {"mistral": 4096, "gemma2": 4096, "gemma3": 4096}.get(family, WINDOW if family in WINDOWED else None)
    assert sliding_window(model) == expected


@pytest.mark.parametrize("windowed", WINDOWED)
def test_short_sliding_window_falls_back_exactly_and_says_so_once(windowed, caplog):
    model = build(windowed)
    views = _views()
    with caplog.at_level(logging.WARNING, logger="internalize.decoding"):
        first, second = _batched(model, views), _batched(model, views)
        prompts = [v.prompt_ids for v in views]
        with inference_mode(model):
            ours = generate(model, TOK, prompts, max_new_tokens=6, batch_size=4, device="cpu")
    for b, view in enumerate(views):
        ref = _reference(model, view)
        torch.testing.assert_close(first[b, : len(view.answer_ids)], ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(second, first, atol=0, rtol=0)
    with torch.no_grad():
        for p, (gen,) in zip(prompts, ours, strict=True):
            out = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                 max_new_tokens=6, do_sample=False, pad_token_id=TOK.pad_token_id)
            assert gen.ids == tuple(out[0, len(p) :].tolist())
    records = [r for r in caplog.records if "sliding attention window" in r.getMessage()]
    assert len(records) == 1
    assert model.config.model_type in records[0].getMessage() and f"window of {WINDOW} tokens" in records[0].getMessage()


@pytest.mark.parametrize("windowed", WINDOWED)
def test_short_sliding_window_keeps_the_prefix_without_padding(windowed, caplog, monkeypatch):
    """Rows of equal length (no padding after the prefix) keep the cached prefix, and stay exact."""
    model = build(windowed)
    view = _views()[0]
    calls = []
    monkeypatch.setattr(decoding.Batch, "whole", lambda self, ids: calls.append(ids))
    with caplog.at_level(logging.WARNING, logger="internalize.decoding"):
        got = _batched(model, [view, view])
    torch.testing.assert_close(got[1], _reference(model, view), atol=ATOL, rtol=0)
    assert calls == [] and not caplog.records


def test_a_long_window_keeps_the_prefix(caplog):
    model = build("gemma3")  # window 4096: longer than every sequence here
    views = _views()
    with caplog.at_level(logging.WARNING, logger="internalize.decoding"):
        got = _batched(model, views)
    assert not caplog.records
    torch.testing.assert_close(got[0, : len(views[0].answer_ids)], _reference(model, views[0]), atol=ATOL, rtol=0)
