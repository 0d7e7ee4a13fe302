"""The CUDA path (``-m gpu``; skipped without a CUDA device, so CI never runs it).

On the GPU: ``model.dtype=auto`` loads bfloat16 weights, the shared-prefix cache gives each input's
own uncached logits for every family of the matrix (fp32, then bf16 within bf16's rounding), our
batched greedy generation equals ``model.generate``, and a tiny run distills end to end on
``cuda`` with an artifact that reloads with the logits it had in memory.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config_dict
from test_families import FAMILIES, TOK, _views, build

from internalize.config import ModelConfig, config_from_dict
from internalize.decoding import Prefix, answer_logits, collate, generate
from internalize.models import load_model
from internalize.views import prompt_ids

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def _uncached(model, view) -> torch.Tensor:
    ids = torch.tensor([view.prompt_ids + view.answer_ids], device=CUDA)
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0].float()
    P, A = len(view.prompt_ids), len(view.answer_ids)
    return logits[P - 1 : P - 1 + A]


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shared_prefix_logits_equal_uncached_on_cuda(family, dtype):
    model = build(family).to(CUDA, dtype)
    views = _views()
    with torch.no_grad():
        prefix = Prefix.shared([v.prompt_ids for v in views]).prefill(model, CUDA)
        got = answer_logits(model, collate(views, TOK.pad_token_id, len(prefix)).to(CUDA), prefix).float()
    atol = 1e-4 if dtype == torch.float32 else 0.1  # bf16 keeps 8 bits of mantissa
    for b, view in enumerate(views):
        ref = _uncached(model, view)
        torch.testing.assert_close(got[b, : len(view.answer_ids)], ref, atol=atol, rtol=0)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3", "phi3"])
def test_batched_greedy_generation_equals_hf_generate_on_cuda(family):
    model = build(family).to(CUDA)
    prompts = [prompt_ids(TOK, x) for x in ("Hi", "What is the capital of France?", "x y z")]
    ours = generate(model, TOK, prompts, 12, 4, CUDA)
    for prompt, samples in zip(prompts, ours, strict=True):
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt], device=CUDA), max_new_tokens=12, do_sample=False,
                                 eos_token_id=TOK.eos_token_id, pad_token_id=TOK.pad_token_id)
        theirs = out[0, len(prompt):].tolist()
        assert list(samples[0].ids) == theirs[: len(samples[0].ids)]


def test_dtype_auto_loads_bfloat16_on_cuda(tiny_model_dir):
    model, _ = load_model(ModelConfig(name=str(tiny_model_dir), device="cuda"))
    assert next(model.parameters()).device.type == "cuda"
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    assert next(model.parameters()).dtype == expected


def test_distill_end_to_end_on_cuda(tiny_model_dir, tmp_path):
    from internalize import distill

    raw = tiny_config_dict(tiny_model_dir, tmp_path / "run")
    raw["model"]["device"] = "cuda"
    metrics = distill(config_from_dict(raw))
    assert set(metrics["main"]) == {"base", "teacher", "student"}
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["steps"] == 4
    model, tok = load_model(ModelConfig(name=str(tmp_path / "run" / "model"), device="cuda", dtype="float32"))
    assert next(model.parameters()).device.type == "cuda"
