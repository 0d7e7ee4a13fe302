"""Throughput on the main job: fp32 vs bf16 autocast, MFU, padding share, teacher-cache size.

In one process, on SmolLM2-135M and the main job's teacher targets (examples/over.yaml):
- the machine's measured matmul peak (fp32 and bf16, 2048^3) and whether the CPU has
  AVX-512 / AMX (bf16 is only fast with them);
- teacher scoring (``answer_logits`` over the teacher views, shared prefix: all 129 in fp32, then
  the same 8 in fp32 and in bf16) and training (``fit``-equivalent LoRA steps, batch 8: 6 in fp32,
  1 in bf16) in tokens/s, fp32 and bf16 autocast side by side, with the
  achieved FLOP/s as a share of the measured fp32 peak (MFU). FLOPs: 2 x non-embedding
  parameters per token processed, plus 2 x d x V per projected (answer) position; LoRA training
  counts the forward twice more for the backward (activations only, the base weights are frozen);
  attention score FLOPs are left out (short sequences);
- the bf16 teacher's distributions against fp32 (mean KL, argmax agreement): the quality cost;
- the padded share of token slots in training micro-batches with plain shuffling vs length buckets,
  and of teacher generation batches in input order vs length-sorted;
- the teacher cache's bytes per answer token against the full vocabulary.

    python benchmarks/throughput.py
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from internalize.config import load_config
from internalize.data import load_inputs
from internalize.decoding import Prefix, answer_logits, batches, collate
from internalize.losses import distillation_loss
from internalize.models import load_model, make_student, teacher_mode
from internalize.runtime import Runtime
from internalize.sources import micro_batches
from internalize.teacher import answer
from internalize.views import View, prompt_ids


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def cpu_flags() -> dict[str, bool]:
    try:
        flags = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        flags = ""
    return {f: f in flags for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")}


def autocast(dtype: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()


def flops_per_token(model) -> float:
    body = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n and "lora_" not in n
               and "lm_head" not in n)
    return 2.0 * body


def head_flops(model) -> float:
    return 2.0 * model.config.hidden_size * model.config.vocab_size


def tokens_of(views, prefix_len: int) -> int:
    return sum(len(v.prompt_ids) - prefix_len + len(v.answer_ids) for v in views) + prefix_len


def score_pass(model, tokenizer, views, dtype: str, device):
    """One scoring pass over ``views``: (seconds, FLOPs, log-probs per view)."""
    prefix = Prefix.shared([v.prompt_ids for v in views])
    out: dict[int, torch.Tensor] = {}
    with teacher_mode(model), autocast(dtype):
        start = time.perf_counter()
        prefix = prefix.prefill(model, device)
        for idx, batch in batches(views, 32, tokenizer.pad_token_id, len(prefix)):
            logp = torch.log_softmax(answer_logits(model, batch.to(device), prefix).float(), -1)
            for row, i in enumerate(idx):
                out[i] = logp[row, : len(views[i].answer_ids)]
        seconds = time.perf_counter() - start
    answer_tokens = sum(len(v.answer_ids) for v in views)
    flops = flops_per_token(model) * tokens_of(views, len(prefix)) + head_flops(model) * answer_tokens
    return seconds, flops, [out[i] for i in range(len(views))]


def train_steps(model, tokenizer, targets, dtype: str, device, steps: int = 6, batch_size: int = 8):
    """``steps`` LoRA training steps as ``fit`` runs them: (seconds, FLOPs, tokens)."""
    views = targets.student_views
    shared = Prefix.shared([v.prompt_ids for v in views])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    stream = micro_batches(views, batch_size, 16, torch.Generator().manual_seed(0))
    model.train()
    flops = tokens = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        idx = next(stream)
        batch = collate([views[i] for i in idx], tokenizer.pad_token_id, len(shared)).to(device)
        with autocast(dtype):
            logits = answer_logits(model, batch, shared.prefill(model, device))
        logp, ids = targets.stacked(idx, batch.answer_ids.shape[1])
        logp, ids = logp.to(device), None if ids is None else ids.to(device)
        loss = distillation_loss(logits.float(), logp, ids, batch.answer_ids, batch.answer_mask, "forward_kl", 0.5, 0.0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        n = tokens_of([views[i] for i in idx], len(shared))
        tokens += n
        flops += 3 * (flops_per_token(model) * n + head_flops(model) * int(batch.answer_mask.sum()))
    return time.perf_counter() - start, flops, tokens


def padding_shares(targets, tokenizer, cfg, train) -> dict[str, float]:
    views = targets.student_views

    def share(groups) -> float:
        real = sum(len(views[i].prompt_ids) + len(views[i].answer_ids) for g in groups for i in g)
        slots = sum(len(g) * max(len(views[i].prompt_ids) + len(views[i].answer_ids) for i in g) for g in groups)
        return round(1 - real / slots, 4)

    n_batches = (len(views) + cfg.train.batch_size - 1) // cfg.train.batch_size
    shares = {}
    for name, buckets in (("train_plain_shuffle", 1), ("train_length_buckets", cfg.train.length_buckets)):
        stream = micro_batches(views, cfg.train.batch_size, buckets, torch.Generator().manual_seed(0))
        shares[name] = share([next(stream) for _ in range(n_batches * 4)])
    prompts = [View(prompt_ids(tokenizer, r["input"], cfg.behaviours[0].prompt), ()) for r in train]
    prefix = len(Prefix.shared([p.prompt_ids for p in prompts]))
    size = cfg.teacher.batch_size
    in_order = [collate(prompts[i : i + size], tokenizer.pad_token_id, prefix) for i in range(0, len(prompts), size)]
    shares["teacher_prompts_input_order"] = round(sum(b.padding_share * len(b.input_ids) for b in in_order) / len(prompts), 4)
    grouped = batches(prompts, size, tokenizer.pad_token_id, prefix)
    shares["teacher_prompts_length_sorted"] = round(sum(b.padding_share * len(b.input_ids) for _, b in grouped) / len(prompts), 4)
    return shares


def rates(seconds: float, flops: float, tokens: float, peak: float) -> dict[str, float]:
    return {"seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
            "gflops_per_s": round(flops / seconds / 1e9, 1), "mfu_vs_fp32_peak": round(flops / seconds / peak, 3)}


def main() -> None:
    cfg = load_config("examples/over.yaml")
    runtime = Runtime.local(cfg.model.device)
    device = runtime.device
    train, _ = load_inputs(cfg.behaviours[0], cfg.data)
    model, tokenizer = load_model(cfg.model, runtime)
    targets = answer(model, tokenizer, train, cfg.behaviours[0].prompt, cfg.teacher, runtime)
    peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16, repeats=1)}
    report = {"command": "python " + " ".join(sys.argv),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
                         f"torch {torch.__version__}",
              "cpu_flags": cpu_flags(), "matmul_peak_gflops": {k: round(v / 1e9, 1) for k, v in peak.items()}}
    scoring, training, logps = {}, {}, {}
    seconds, flops, _ = score_pass(model, tokenizer, targets.teacher_views, "fp32", device)
    scoring["fp32_all_answers"] = rates(seconds, flops, tokens_of(targets.teacher_views, 0), peak["fp32"])
    few = targets.teacher_views[:8]  # bf16 is slow here: both dtypes on the same 8 views for the ratio
    for dtype in ("fp32", "bf16"):
        seconds, flops, logps[dtype] = score_pass(model, tokenizer, few, dtype, device)
        scoring[dtype] = rates(seconds, flops, tokens_of(few, 0), peak["fp32"])
        student = make_student(load_model(cfg.model, runtime)[0], cfg.model)
        training[dtype] = rates(*train_steps(student, tokenizer, targets, dtype, device,
                                             steps=6 if dtype == "fp32" else 1), peak["fp32"])
        print(dtype, scoring[dtype], training[dtype], flush=True)
    stored, full = targets.bytes_per_token(), 4 * model.config.vocab_size
    kl = [torch.sum(a.exp() * (a - b.float()), -1).mean().item() for a, b in zip(logps["fp32"], logps["bf16"], strict=True)]
    agree = [float((a.argmax(-1) == b.argmax(-1)).float().mean()) for a, b in zip(logps["fp32"], logps["bf16"], strict=True)]
    report |= {
        "teacher_scoring": scoring, "training": training,
        "bf16_over_fp32_speed": {"scoring": round(scoring["bf16"]["tokens_per_s"] / scoring["fp32"]["tokens_per_s"], 3),
                                 "training": round(training["bf16"]["tokens_per_s"] / training["fp32"]["tokens_per_s"], 3)},
        "bf16_teacher_quality": {"mean_kl_fp32_to_bf16": round(sum(kl) / len(kl), 5),
                                 "argmax_agreement": round(sum(agree) / len(agree), 4)},
        "padding_share": padding_shares(targets, tokenizer, cfg, train),
        "teacher_cache_bytes_per_answer_token": {"top_k": cfg.teacher.top_k, "stored": stored, "full_vocabulary": full,
                                                 "ratio": round(full / stored, 1)},
    }
    out = Path("benchmarks/results/throughput.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("matmul_peak_gflops", "bf16_over_fp32_speed", "bf16_teacher_quality",
                                             "padding_share")}, indent=1))


if __name__ == "__main__":
    main()
