"""Teacher cost per input as the context grows, with and without the shared-prefix KV cache.

For contexts of about 256 to 4,096 tokens (the main job's instruction followed by more and more
demonstration turns), runs the teacher on held-out questions in one process: cached (the context
computed once, ``decoding.Prefix``, on 16 questions) and uncached (``generate(..., share_prefix=False)``
and ``Prefix.shared(..., share=False)``: every prompt computed whole, on the first 4). Times
generation (answers with their distributions) and scoring (``answer_logits`` over the teacher
views). The cached per-input cost is reported both with the one-off prefix computation spread over
the questions and without it (the marginal cost of one more input). Checks the two paths agree on
the shared questions: same answers, max |log-prob difference|.

    python benchmarks/prefix_cache.py            # SmolLM2-135M, 16 (4) questions, 12 new tokens
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from internalize.config import load_config
from internalize.data import read_jsonl
from internalize.decoding import Prefix, answer_logits, collate, generate
from internalize.models import load_model, teacher_mode
from internalize.runtime import Runtime
from internalize.views import View, prompt_ids

POOL = [  # demonstration turns that pad the context, in the main job's style
    ("What is the capital of Austria?", "The capital of Austria is Vienna. Over."),
    ("How many legs does a cat have?", "A cat has four legs. Over."),
    ("What color is the sun?", "The sun looks yellow from Earth. Over."),
    ("What is the boiling point of water?", "Water boils at 100 degrees Celsius at sea level. Over."),
    ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet. Over."),
    ("What is the largest ocean?", "The Pacific is the largest ocean. Over."),
    ("How many days are in a week?", "A week has seven days. Over."),
    ("What do bees make?", "Bees make honey. Over."),
]


def context_of(tokenizer, base, target: int, first: int = 0):
    """The main job's prompt with demonstrations (POOL's, from entry ``first`` on) in place of its own, added until
    the prompt reaches ``target`` tokens."""
    demos = []
    while len(prompt_ids(tokenizer, "?", dataclasses.replace(base, demonstrations=demos))) < target:
        q, a = POOL[(first + len(demos)) % len(POOL)]
        demos.append({"input": q, "output": a})
    return dataclasses.replace(base, demonstrations=demos)


def run(model, tokenizer, teacher, questions, max_new_tokens: int, device, cached: bool) -> dict:
    prompts = [prompt_ids(tokenizer, q, teacher) for q in questions]
    with teacher_mode(model):
        start = time.perf_counter()
        gens = generate(model, tokenizer, prompts, max_new_tokens, len(prompts), device, distributions=0,
                        desc="generate", share_prefix=cached)
        gen_s = time.perf_counter() - start
        views = [View(p, g[0].ids) for p, g in zip(prompts, gens, strict=True)]
        start = time.perf_counter()
        prefix = Prefix.shared(prompts, share=cached).prefill(model, device)
        logits = answer_logits(model, collate(views, tokenizer.pad_token_id, len(prefix)).to(device), prefix)
        score_s = time.perf_counter() - start
        start = time.perf_counter()
        Prefix.shared(prompts, share=cached).prefill(model, device)
        prefill_s = time.perf_counter() - start
    logp = [torch.log_softmax(logits[b, : len(v.answer_ids)].float(), -1) for b, v in enumerate(views)]
    return {"prompt_tokens": len(prompts[0]), "prefix_tokens": len(prefix), "generate_s": gen_s, "score_s": score_s,
            "prefill_s": prefill_s if cached else 0.0,
            "texts": [g[0].text for g in gens], "gen_logp": [g[0].logp for g in gens], "score_logp": logp}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--questions", type=int, default=16, help="cached path; the uncached path takes the first 4")
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--out", default="benchmarks/results/prefix_cache.json")
    args = parser.parse_args()
    cfg = load_config("examples/over.yaml")
    runtime = Runtime.local(cfg.model.device)
    model, tokenizer = load_model(cfg.model, runtime)
    device, behaviour = runtime.device, cfg.behaviours[0]
    questions = [r["input"] for r in read_jsonl(behaviour.eval_file, behaviour.key("eval_file"))[: args.questions]]
    rows = []
    for target in args.lengths:
        teacher = context_of(tokenizer, behaviour.prompt, target)
        cached = run(model, tokenizer, teacher, questions, args.max_new_tokens, device, cached=True)
        plain = run(model, tokenizer, teacher, questions[:4], args.max_new_tokens, device, cached=False)
        small = run(model, tokenizer, teacher, questions[:4], args.max_new_tokens, device, cached=True)  # same batch as plain
        diff = max(max((a - b).abs().max().item() for a, b in zip(small[k], plain[k], strict=True))
                   for k in ("gen_logp", "score_logp"))
        n, m = len(questions), 4
        row = {"context_tokens": cached["prompt_tokens"], "prefix_tokens": cached["prefix_tokens"],
               "prefix_prefill_s": round(cached["prefill_s"], 3),
               "cached_generate_s_per_input": round(cached["generate_s"] / n, 3),
               "cached_generate_marginal_s_per_input": round((cached["generate_s"] - cached["prefill_s"]) / n, 3),
               "uncached_generate_s_per_input": round(plain["generate_s"] / m, 3),
               "cached_score_s_per_input": round(cached["score_s"] / n, 3),
               "cached_score_marginal_s_per_input": round((cached["score_s"] - cached["prefill_s"]) / n, 3),
               "uncached_score_s_per_input": round(plain["score_s"] / m, 3),
               "speedup_generate": round(plain["generate_s"] / m / (cached["generate_s"] / n), 2),
               "speedup_score": round(plain["score_s"] / m / (cached["score_s"] / n), 2),
               "same_answers": small["texts"] == plain["texts"], "max_abs_logp_diff": diff}
        rows.append(row)
        print(json.dumps(row), flush=True)
    first, last = rows[0], rows[-1]
    report = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "model": cfg.model.name, "questions": {"cached": len(questions), "uncached": 4},
        "max_new_tokens": args.max_new_tokens, "rows": rows,
        "growth_first_to_last": {  # how much the per-input cost grows over the range, per path
            key: round(last[key] / first[key], 2) for key in first
            if key.endswith("_per_input")
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["growth_first_to_last"]))


if __name__ == "__main__":
    main()
