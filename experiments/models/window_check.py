"""The shared-prefix path against each input's own forward pass on Gemma 3 270M (sliding window 512).

The model-family issue measured, on this model with a 990-token few-shot prompt and 4 inputs, that the
prefix-cached answer logits differed from each input's own uncached forward by up to 7.9 (argmax
agreement 81%, KL up to 0.70 per token): padding after the cached prefix took sliding-window slots.
Since then a padded batch longer than the window runs whole. This script repeats the measurement
with the code as it is (``decoding.answer_logits`` on a padded batch after the shared prefix) and,
for the record, with the padded batch forced after the cached prefix (the old path), and writes
``experiments/models/results/window_check.json``.

    python experiments/models/window_check.py
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from pathlib import Path
from unittest import mock

import torch

import internalize.decoding as decoding
from internalize.config import ModelConfig, PromptConfig
from internalize.decoding import Prefix, answer_logits, collate
from internalize.models import load_model
from internalize.views import View, answer_ids, prompt_ids

OUT = Path(__file__).parent / "results" / "window_check.json"
TEMPLATE = "{context}\n\nInput: {input}\nOutput:"


def main() -> None:
    torch.manual_seed(0)
    model, tok = load_model(ModelConfig(name="gemma3-270m", device="cpu", prompt_template=TEMPLATE))
    model.eval()
    rng = random.Random(0)
    countries = ["France", "Spain", "Italy", "Japan", "Kenya", "Peru", "Norway", "Egypt", "Chile", "Nepal"]
    demos = []
    while len(tok(" ".join(demos)).input_ids) < 900:  # a few-shot context of about 990 prompt tokens
        c = rng.choice(countries)
        demos.append(f"Input: Tell me one fact about {c}.\nOutput: {c} is a country with a long history. Over.")
    prompt = PromptConfig(context="Answer briefly and end with 'Over.'\n\n" + "\n\n".join(demos))
    inputs = ["What is the capital of Greece?", "Name a colour.", "How many legs does a spider have?",
              "What season comes after summer, and why do leaves fall?"]
    answers = ["Athens. Over.", "Blue. Over.", "Eight. Over.", "Autumn; the days get shorter. Over."]
    views = [View(prompt_ids(tok, x, prompt), answer_ids(tok, a)) for x, a in zip(inputs, answers, strict=True)]
    window = decoding.sliding_window(model)

    def own(view: View) -> torch.Tensor:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([view.prompt_ids + view.answer_ids]), use_cache=False).logits[0]
        P = len(view.prompt_ids)
        return logits[P - 1 : P - 1 + len(view.answer_ids)].float()

    def shared(force_prefix: bool) -> torch.Tensor:
        old_path = mock.patch.object(decoding, "_short_window", lambda m, n: False)
        with torch.no_grad(), old_path if force_prefix else contextlib.nullcontext():
            prefix = Prefix.shared([v.prompt_ids for v in views]).prefill(model, "cpu")
            return answer_logits(model, collate(views, tok.pad_token_id, len(prefix)), prefix).float()

    started = time.perf_counter()
    reference = [own(v) for v in views]
    result = {"model": "gemma3-270m (Gemma 3 270M base, Q4_K_M de-quantised to fp32)", "sliding_window": window,
              "prompt_tokens": [len(v.prompt_ids) for v in views], "answer_tokens": [len(v.answer_ids) for v in views],
              "shared_prefix_tokens": len(Prefix.shared([v.prompt_ids for v in views]))}
    for name, force in (("now", False), ("padded_after_cached_prefix", True)):
        got = shared(force)
        diffs, agree, kls, total = [], 0, [], 0
        for b, ref in enumerate(reference):
            mine = got[b, : len(ref)]
            diffs.append(float((mine - ref).abs().max()))
            agree += int((mine.argmax(-1) == ref.argmax(-1)).sum())
            total += len(ref)
            p, q = torch.log_softmax(ref, -1), torch.log_softmax(mine, -1)
            kls.append(float((p.exp() * (p - q)).sum(-1).max()))
        result[name] = {"max_abs_logit_difference": max(diffs), "argmax_agreement": agree / total,
                        "max_kl_per_token": max(kls)}
    result["wall_s"] = round(time.perf_counter() - started, 1)
    result["command"] = "python experiments/models/window_check.py"
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
