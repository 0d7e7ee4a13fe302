"""Generated tokens per second: the generation engine against today's loop and Hugging Face ``generate``.

One process, side by side, SmolLM2-135M-Instruct on the CPU, four workloads:

(a) ``main``: the main job's teacher (``examples/over.yaml``: its context and three demonstrations
    before each of the 130 training questions), 64 new tokens, top-k distributions kept;
(b) ``addition``: 256 scratch-pads, 32 sums each of 1 to 8 digits, after the addition experiment's
    request for a scratch-pad (its context); the base model works each sum out in words, 60 to 330
    tokens, longer for longer sums (the trained scratch-pad teacher of ``experiments/addition``
    stands in for no one here: its lengths are similar, its text is not); up to 328 new tokens;
(c) ``context``: the context-length benchmark of ``benchmarks/prefix_cache.py`` (274 to 4,117 context
    tokens, 16 held-out questions, 12 new tokens, full-vocabulary distributions); the marginal
    cost per input leaves out the one-off prefill of the shared context (timed apart), and the slope
    (static, dynamic) is the run on all of them minus the run on the first alone, over the 15 inputs
    added, where the prefill cancels; each timing the median of ``--repeats`` runs (3).

(d) ``averaged``: the main job's teacher with its three demonstrations replaced by about 500 tokens of others,
    four such contexts (different demonstrations) averaged token by token (``teacher.combine=average``), on the
    first ``--averaged-inputs`` training questions (32), 64 new tokens, top-k; the four contexts share only the
    instruction. The engine runs each context once; today's loop runs all four again for every input. Static
    against dynamic (``model.generate`` cannot average).
(e) ``routed``: the same four contexts and questions, question i under context i mod 4 alone
    (``teacher.combine=route``). The engine, told each prompt's context (``routes``), runs each context once;
    without it (``static_unrouted``, the engine before it was told) and in today's loop every row runs its whole
    context.

Paths: ``static`` (``internalize.engine``: the prefix once, a preallocated cache, finished rows
refilled), ``dynamic`` (today's loop over ``DynamicCache``, ``generate(..., engine="dynamic")``) and
``hf`` (``model.generate`` on left-padded batches, no distributions; on fewer inputs, it is slow).
For each: seconds, generated tokens per second, and achieved FLOP/s against the measured fp32
matmul peak (useful FLOPs only: the prefix counted once, 2 x non-embedding parameters per token,
the output head per generated token, attention scores and values over each token's context).
Also checks the engine against today's loop: same answers, max |log-prob difference|.

    python benchmarks/generation.py                       # all five; benchmarks/results/generation.json
    python benchmarks/generation.py --only main --hf-inputs 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import torch
from prefix_cache import POOL, context_of
from throughput import cpu_flags, flops_per_token, head_flops, matmul_peak

from internalize import engine
from internalize.config import PromptConfig, load_config
from internalize.data import read_jsonl
from internalize.decoding import Prefix, generate
from internalize.models import load_model, teacher_mode
from internalize.runtime import Runtime
from internalize.views import prompt_ids, stop_ids

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from experiments.addition import task  # noqa: E402


def useful_flops(model, prompts, outputs, prefix_len: int) -> float:
    """FLOPs of the work itself: the shared prefix once, each prompt's own tokens, each generated token."""
    cfg = model.config
    layers, width = cfg.num_hidden_layers, cfg.num_attention_heads * getattr(cfg, "head_dim", cfg.hidden_size //
                                                                              cfg.num_attention_heads)
    attention = 4.0 * layers * width  # scores and values, per query token and key
    total = flops_per_token(model) * prefix_len + attention * prefix_len * (prefix_len + 1) / 2
    for prompt, ids in zip(prompts, outputs, strict=True):
        own, new = len(prompt) - prefix_len, len(ids)
        total += flops_per_token(model) * (own + new) + head_flops(model) * new
        total += attention * sum(range(prefix_len + 1, len(prompt) + new + 1))
    return total


def hf_generate(model, tokenizer, prompts, max_new_tokens: int, batch_size: int, device) -> list[tuple[int, ...]]:
    """``model.generate``, greedy, on length-sorted left-padded batches; each answer through its stop token."""
    stops, pad = stop_ids(tokenizer), tokenizer.pad_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: dict[int, tuple[int, ...]] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(idx):
            ids[r, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[r, width - len(prompts[i]) :] = 1
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=pad, eos_token_id=stops)[:, width:].tolist()
        for r, i in enumerate(idx):
            row = gen[r]
            end = next((j for j, t in enumerate(row) if t in stops), None)
            out[i] = tuple(row if end is None else row[: end + 1])
    return [out[i] for i in range(len(prompts))]


def measure(model, tokenizer, prompts, max_new_tokens: int, batch_size: int, device, path: str,
            distributions: int | None, peak: float, group: int = 1, routes: list[int] | None = None,
            flops: bool = True) -> dict:
    """One path on ``prompts``: seconds, tokens/s, FLOP/s and MFU; the answers and log-probs for the checks.
    ``group`` > 1: ``group`` prompts per input, averaged; ``routes``: each prompt's context (the engine's hint).
    ``flops`` False: none counted (useful_flops counts one shared prefix, not several contexts)."""
    with teacher_mode(model):
        start = time.perf_counter()
        if path == "hf":
            ids, logp = hf_generate(model, tokenizer, prompts, max_new_tokens, batch_size, device), None
        else:
            gens = [g[0] for g in generate(model, tokenizer, prompts, max_new_tokens, batch_size, device,
                                           distributions=distributions, group=group, engine=path, progress=False,
                                           routes=routes)]
            ids, logp = [g.ids for g in gens], [g.logp for g in gens]
        seconds = time.perf_counter() - start
    tokens = sum(map(len, ids))
    row = {"inputs": len(prompts) // group, "seconds": round(seconds, 2), "generated_tokens": tokens,
           "tokens_per_s": round(tokens / seconds, 1), "ids": ids, "logp": logp}
    if flops:
        useful = useful_flops(model, prompts, ids, len(Prefix.shared(prompts)))
        row |= {"gflop_per_s": round(useful / seconds / 1e9, 2), "mfu": round(useful / seconds / peak, 4)}
    return row


def agreement(a: dict, b: dict) -> dict:
    """Same answers (ids) on the inputs both ran, and the largest log-prob difference where they agree."""
    n = min(a["inputs"], b["inputs"])
    same = sum(x == y for x, y in zip(a["ids"][:n], b["ids"][:n], strict=True))
    diff = 0.0
    if a["logp"] is not None and b["logp"] is not None:
        diff = max((x - y).abs().max().item() for x, y, i, j in
                   zip(a["logp"][:n], b["logp"][:n], a["ids"][:n], b["ids"][:n], strict=True) if i == j)
    return {"same_answers": f"{same}/{n}", "max_abs_logp_diff": float(f"{diff:.2g}")}


def workload(model, tokenizer, name: str, prompts, max_new_tokens: int, batch_size: int, device, distributions,
             peak: float, hf_inputs: int, larger: int = 0) -> dict:
    """The three paths at ``batch_size`` (and the engine alone at ``larger`` rows, when given) on one workload."""
    runs = {path: measure(model, tokenizer, prompts if path != "hf" else prompts[:hf_inputs], max_new_tokens,
                          batch_size, device, path, distributions, peak) for path in ("static", "dynamic", "hf")}
    row = {"workload": name, "prompts": len(prompts), "prefix_tokens": len(Prefix.shared(prompts)),
           "max_new_tokens": max_new_tokens, "batch_size": batch_size, "distributions": distributions,
           **{path: {k: v for k, v in r.items() if k not in ("ids", "logp")} for path, r in runs.items()},
           "static_over_dynamic": round(runs["static"]["tokens_per_s"] / runs["dynamic"]["tokens_per_s"], 2),
           "static_over_hf": round(runs["static"]["tokens_per_s"] / runs["hf"]["tokens_per_s"], 2),
           "static_vs_dynamic": agreement(runs["static"], runs["dynamic"]),
           "static_vs_hf": agreement(runs["static"], runs["hf"])}
    if larger:
        big = measure(model, tokenizer, prompts, max_new_tokens, larger, device, "static", distributions, peak)
        row[f"static_batch_{larger}"] = {k: v for k, v in big.items() if k not in ("ids", "logp")}
        row[f"static_batch_{larger}_over_dynamic"] = round(big["tokens_per_s"] / runs["dynamic"]["tokens_per_s"], 2)
        row[f"static_batch_{larger}_vs_dynamic"] = agreement(big, runs["dynamic"])
    print(json.dumps(row), flush=True)
    return row


def several(model, tokenizer, base: PromptConfig, texts: list[str], contexts: int, target: int, max_new_tokens: int,
            batch_size: int, device, distributions: int, peak: float, combine: str) -> dict:
    """(d), (e): ``contexts`` contexts of about ``target`` tokens (``base`` with its demonstrations replaced by
    POOL's, each context starting at another POOL entry), averaged on every question (``combine`` "average") or
    question i under context i mod ``contexts`` ("route"); static against dynamic (and, routed, the engine
    not told the routes)."""
    shown = [context_of(tokenizer, base, target, g * len(POOL) // contexts) for g in range(contexts)]
    if combine == "average":
        group, routes = contexts, None
        prompts = [prompt_ids(tokenizer, q, c) for q in texts for c in shown]
    else:
        group, routes = 1, [i % contexts for i in range(len(texts))]
        prompts = [prompt_ids(tokenizer, q, shown[k]) for q, k in zip(texts, routes, strict=True)]
    own = engine.context_ids(prompts, engine.context_kinds(len(prompts), group, routes), len(Prefix.shared(prompts)))
    paths = {"static": ("static", routes), "dynamic": ("dynamic", None)}
    if routes is not None:
        paths["static_unrouted"] = ("static", None)
    runs = {name: measure(model, tokenizer, prompts, max_new_tokens, batch_size, device, path, distributions, peak,
                          group, told, flops=False) for name, (path, told) in paths.items()}
    row = {"workload": "averaged" if routes is None else "routed", "inputs": len(texts), "contexts": contexts,
           "prompt_tokens": [len(prompts[g]) for g in range(contexts)], "prefix_tokens": len(Prefix.shared(prompts)),
           "context_own_tokens": [len(c) for c in own], "max_new_tokens": max_new_tokens, "batch_size": batch_size,
           "distributions": distributions,
           **{name: {k: v for k, v in r.items() if k not in ("ids", "logp")} for name, r in runs.items()},
           **{f"{name}_over_dynamic": round(runs[name]["tokens_per_s"] / runs["dynamic"]["tokens_per_s"], 2)
              for name in runs if name != "dynamic"},
           **{f"{name}_vs_dynamic": agreement(runs[name], runs["dynamic"]) for name in runs if name != "dynamic"}}
    print(json.dumps(row), flush=True)
    return row


def addition_prompts(tokenizer, n_per_length: int = 32) -> list[list[int]]:
    """Sums of 1 to 8 digits after the scratch-pad request."""
    prompt = PromptConfig(context=task.SCRATCHPAD)
    rng = random.Random(0)
    sums = [(rng.randrange(10 ** (d - 1), 10**d), rng.randrange(10 ** (d - 1), 10**d))
            for d in range(1, 9) for _ in range(n_per_length)]
    return [prompt_ids(tokenizer, task.question(a, b), prompt) for a, b in sums]


def context_rows(model, tokenizer, cfg, device, peak: float, lengths: list[int], questions: int, hf_inputs: int,
                 repeats: int) -> dict:
    """(c): per context length, each path's marginal seconds per input, two ways: its run on all ``questions`` less
    its own prefill of the context (timed apart), and the slope (the run on all less the run on the first question
    alone, over the inputs added: the prefill cancels). Each timing is the median of ``repeats`` runs."""
    behaviour = cfg.behaviours[0]
    texts = [r["input"] for r in read_jsonl(behaviour.eval_file, behaviour.key("eval_file"))[:questions]]
    rows = []

    def median_run(path: str, prompts: list) -> dict:
        runs = [measure(model, tokenizer, prompts, 12, len(texts), device, path, 0, peak) for _ in range(repeats)]
        return sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2] | {"all_seconds": [r["seconds"] for r in runs]}

    for target in lengths:
        teacher = context_of(tokenizer, behaviour.prompt, target)
        prompts = [prompt_ids(tokenizer, q, teacher) for q in texts]
        prefix = Prefix.shared(prompts)
        prefill = {"static": [], "dynamic": [], "hf": [0.0]}
        with teacher_mode(model):
            for _ in range(repeats):
                start = time.perf_counter()
                engine.prefill(model, prefix.ids, device)
                prefill["static"].append(time.perf_counter() - start)
                start = time.perf_counter()
                prefix.prefill(model, device)
                prefill["dynamic"].append(time.perf_counter() - start)
        prefill = {p: sorted(t)[len(t) // 2] for p, t in prefill.items()}
        runs = {path: median_run(path, prompts) for path in ("static", "dynamic")}
        runs["hf"] = measure(model, tokenizer, prompts[:hf_inputs], 12, len(prompts), device, "hf", 0, peak)
        one = {path: median_run(path, prompts[:1]) for path in ("static", "dynamic")}
        slope = {p: (runs[p]["seconds"] - one[p]["seconds"]) / (runs[p]["inputs"] - 1) for p in one}
        row = {"context_tokens": len(prompts[0]), "prefix_tokens": len(prefix), "repeats": repeats,
               **{f"{p}_marginal_s_per_input": round((r["seconds"] - prefill[p]) / r["inputs"], 3)
                  for p, r in runs.items()},
               **{f"{p}_slope_s_per_input": round(slope[p], 3) for p in slope},
               **{f"{p}_prefill_s": round(prefill[p], 3) for p in ("static", "dynamic")},
               **{f"{p}_seconds_all_runs": runs[p]["all_seconds"] for p in ("static", "dynamic")},
               **{f"{p}_seconds_one_input_runs": one[p]["all_seconds"] for p in ("static", "dynamic")},
               **{f"{p}_tokens_per_s": r["tokens_per_s"] for p, r in runs.items()},
               **{f"{p}_mfu": r["mfu"] for p, r in runs.items()},
               "static_vs_dynamic": agreement(runs["static"], runs["dynamic"])}
        rows.append(row)
        print(json.dumps(row), flush=True)
    first, last = rows[0], rows[-1]
    growth = {p: round(last[f"{p}_marginal_s_per_input"] / first[f"{p}_marginal_s_per_input"], 2)
              for p in ("static", "dynamic", "hf")}
    slope_growth = {p: round(last[f"{p}_slope_s_per_input"] / first[f"{p}_slope_s_per_input"], 2)
                    for p in ("static", "dynamic")}
    return {"rows": rows, "marginal_growth_first_to_last": growth, "slope_growth_first_to_last": slope_growth}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["main", "addition", "context", "averaged", "routed"], nargs="+",
                        default=["main", "addition", "context", "averaged", "routed"])
    parser.add_argument("--hf-inputs", type=int, default=64, help="inputs Hugging Face generate runs on (a) and (b)")
    parser.add_argument("--larger", type=int, default=128, help="(a), (b): the engine alone at this many rows too")
    parser.add_argument("--per-length", type=int, default=32, help="(b) sums per digit count, 1 to 8 digits")
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 4096], help="(c) context targets in tokens")
    parser.add_argument("--repeats", type=int, default=3, help="(c) runs per timing, the median kept")
    parser.add_argument("--averaged-inputs", type=int, default=32, help="(d), (e) questions")
    parser.add_argument("--contexts", type=int, default=4, help="(d), (e) contexts averaged or routed over")
    parser.add_argument("--context-tokens", type=int, default=500, help="(d), (e) tokens of each context's prompt")
    parser.add_argument("--out", default="benchmarks/results/generation.json")
    args = parser.parse_args()
    cfg = load_config(ROOT / "examples/over.yaml")
    runtime = Runtime.local(cfg.model.device)
    model, tokenizer = load_model(cfg.model, runtime)
    device = runtime.device
    peak = matmul_peak(torch.float32)
    report: dict = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"{torch.get_num_threads()} threads, torch {torch.__version__}",
        "cpu_flags": cpu_flags(), "matmul_peak_gflop_per_s_fp32": round(peak / 1e9, 1), "model": cfg.model.name,
    }
    behaviour = cfg.behaviours[0]
    if "main" in args.only:
        texts = [r["input"] for r in read_jsonl(behaviour.train_file, behaviour.key("train_file"))]
        prompts = [prompt_ids(tokenizer, q, behaviour.prompt) for q in texts]
        report["main"] = workload(model, tokenizer, "main", prompts, cfg.teacher.max_new_tokens, cfg.teacher.batch_size,
                                  device, cfg.teacher.top_k, peak, args.hf_inputs, args.larger)
    if "addition" in args.only:
        prompts = addition_prompts(tokenizer, args.per_length)
        report["addition"] = workload(model, tokenizer, "addition", prompts, task.scratchpad_tokens(8),
                                      cfg.teacher.batch_size, device, cfg.teacher.top_k, peak, args.hf_inputs,
                                      args.larger)
    if "context" in args.only:
        report["context"] = context_rows(model, tokenizer, cfg, device, peak, args.lengths, 16, 4, args.repeats)
    for name, combine in (("averaged", "average"), ("routed", "route")):
        if name in args.only:
            texts = [r["input"] for r in read_jsonl(behaviour.train_file, behaviour.key("train_file"))]
            report[name] = several(model, tokenizer, behaviour.prompt, texts[: args.averaged_inputs], args.contexts,
                                   args.context_tokens, cfg.teacher.max_new_tokens, cfg.teacher.batch_size, device,
                                   cfg.teacher.top_k, peak, combine)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
