"""Synthesis: the model writes its own unlabeled task inputs from a task description and seeds.

Each generation prompt shows the task description and asks for a numbered list, the reply
pre-filled with a few seed inputs drawn at random; every complete line the model adds is a
candidate. Candidates pass quality filters, each counted: unfinished generations,
length bounds, exact duplicates (normalised text), near-duplicates (word n-gram Jaccard overlap
with a kept input), copies of a seed, and an optional user validator. Generation stops at the
target count, or after ``max_batches`` with a message saying what was reached and why.
The JSONL and a provenance record (model, prompt, settings, summary) are written atomically.

    internalize synthesize examples/over_synth.yaml        # -> OUT/synthesized.jsonl
    records, summary = synthesize(model, tokenizer, cfg.data.synthesize, "out.jsonl", runtime, model_name)
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .config import InternalizeError, SynthesizeConfig, import_callable
from .data import Record, write_atomic, write_jsonl
from .decoding import generate
from .models import inference_mode
from .runtime import Runtime

log = logging.getLogger(__name__)


def synthesis_prompt(tokenizer: PreTrainedTokenizerBase, task: str, examples: list[str]) -> str:
    """A chat prompt asking for a numbered list of inputs, the reply pre-filled with the examples.

    The model continues the list, so its next line is a new input: small models follow a list far
    better than an instruction to "write one new input".
    """
    request = f"{task.strip()}\n\n" if task.strip() else ""
    request += f"Write a numbered list of {len(examples) + 10} different examples, one per line."
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": request}], tokenize=False,
                                             add_generation_prompt=True)
    listed = "".join(f"{i}. {e}\n" for i, e in enumerate(examples, start=1))
    return f"{rendered}{listed}{len(examples) + 1}."


def candidate_lines(text: str, finished: bool) -> list[tuple[str, bool]]:
    """The list items in a continuation, each with whether it is complete (the last line of a
    generation cut off by max_new_tokens is not)."""
    lines = [ln for ln in text.split("\n") if ln.strip()]
    return [(ln, finished or i < len(lines) - 1) for i, ln in enumerate(lines)]


def clean(text: str) -> str:
    """The first non-empty line, without list markers, labels or wrapping quotes."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = re.sub(r"^(?:[-*•]|\d+[.)])\s*", "", line)
    line = re.sub(r"^(?:new input|input|example|question)\s*:\s*", "", line, flags=re.IGNORECASE)
    return line.strip().strip("\"'“”").strip()


def normalize(text: str) -> str:
    """Lowercase words only: the key for exact-duplicate detection."""
    return " ".join(re.findall(r"\w+", text.lower()))


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = normalize(text).split()
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a and b else float(a == b)


def distinct_ngrams(texts: list[str], n: int) -> float:
    """Distinct-n: unique word n-grams over all word n-grams (1 = no repetition across inputs)."""
    grams = [g for t in texts for g in _ngram_list(t, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _ngram_list(text: str, n: int) -> list[tuple[str, ...]]:
    words = normalize(text).split()
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


class InputFilter:
    """Decides, candidate by candidate, whether a generated input is kept; counts each reason."""

    def __init__(self, cfg: SynthesizeConfig, validator: Callable[[str], bool] | None = None):
        self.cfg = cfg
        self.validator = validator
        self.seed_keys = {normalize(s) for s in cfg.seeds}
        self.seed_grams = [ngrams(s, cfg.ngram) for s in cfg.seeds]
        self.kept: list[str] = []
        self.kept_keys: set[str] = set()
        self.kept_grams: list[set] = []
        self.dropped: Counter[str] = Counter()

    def _reason(self, text: str, finished: bool) -> str | None:
        cfg = self.cfg
        if not finished:
            return "unfinished"
        if len(text) < cfg.min_chars:
            return "too short"
        if len(text) > cfg.max_chars:
            return "too long"
        key = normalize(text)
        grams = ngrams(text, cfg.ngram)
        if key in self.seed_keys or any(jaccard(grams, g) >= cfg.near_duplicate for g in self.seed_grams):
            return "copies a seed"
        if key in self.kept_keys:
            return "exact duplicate"
        if any(jaccard(grams, g) >= cfg.near_duplicate for g in self.kept_grams):
            return "near duplicate"
        if self.validator is not None:
            try:
                ok = bool(self.validator(text))
            except Exception as e:  # the user's code: report it as a one-line error
                raise InternalizeError(f"data.synthesize.validator={cfg.validator!r} raised on {text!r}: "
                                       f"{type(e).__name__}: {e}") from None
            if not ok:
                return "rejected by validator"
        return None

    def offer(self, raw: str, finished: bool = True) -> bool:
        text = clean(raw)
        reason = self._reason(text, finished)
        if reason is not None:
            self.dropped[reason] += 1
            return False
        self.kept.append(text)
        self.kept_keys.add(normalize(text))
        self.kept_grams.append(ngrams(text, self.cfg.ngram))
        return True


def check_writable(path: Path) -> None:
    """Fail before any generation if the output cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".check-"):
            pass
    except OSError as e:
        raise InternalizeError(f"data.synthesize.output='{path}' is not writable ({e.strerror}); choose another path") from None


def check_synthesis(cfg: SynthesizeConfig, output: Path, search: tuple[Path | None, ...] = ()) -> Callable[[str], bool] | None:
    """Everything that can be checked before loading a model: seeds, validator (imported from ``search``
    or the working directory), output path. Returns the validator (or None)."""
    if not cfg.seeds:
        raise InternalizeError("data.synthesize.seeds is empty; give a few real example inputs")
    validator = import_callable(cfg.validator, "data.synthesize.validator", search) if cfg.validator else None
    check_writable(output)
    return validator


def synthesize(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cfg: SynthesizeConfig, output: str | Path,
               runtime: Runtime, model_name: str = "", search: tuple[Path | None, ...] = (),
               ) -> tuple[list[Record], dict[str, Any]]:
    """Generate ``cfg.count`` filtered inputs; write JSONL + provenance; return (records, summary)."""
    output = Path(output)
    keep = InputFilter(cfg, check_synthesis(cfg, output, search))
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    max_batches = cfg.max_batches or 5 * math.ceil(cfg.count / cfg.batch_size)
    generated = batches = 0
    bar = tqdm(total=cfg.count, desc="synthesize", unit="input", disable=None)
    with inference_mode(model):
        while len(keep.kept) < cfg.count and batches < max_batches:
            prompts = []
            for _ in range(cfg.batch_size):
                shown = rng.sample(cfg.seeds, min(cfg.seeds_per_prompt, len(cfg.seeds)))
                rendered = synthesis_prompt(tokenizer, cfg.task, shown)
                prompts.append(tuple(tokenizer(rendered, add_special_tokens=False).input_ids))
            outs = generate(model, tokenizer, prompts, cfg.max_new_tokens, cfg.batch_size, runtime.device, do_sample=True,
                            temperature=cfg.temperature, top_p=cfg.top_p, desc="synthesize: batch")
            batches += 1
            lines = [c for samples in outs for g in samples for c in candidate_lines(g.text, g.finished)]
            for line, complete in lines:
                if len(keep.kept) >= cfg.count:
                    break  # lines past the target are not examined, nor counted
                generated += 1
                if keep.offer(line, complete):
                    bar.update(1)
    bar.close()
    kept = keep.kept[: cfg.count]
    if not kept:
        raise InternalizeError(f"synthesis kept no inputs after {batches} batches ({dict(keep.dropped)}); "
                               "loosen data.synthesize filters or give better seeds")
    reached = len(kept) >= cfg.count
    summary = {
        "target": cfg.count, "generated": generated, "kept": len(kept), "dropped": dict(keep.dropped),
        "batches": batches, "reached_target": reached,
        f"distinct_{cfg.ngram}grams": round(distinct_ngrams(kept, cfg.ngram), 4),
        "distinct_2grams": round(distinct_ngrams(kept, 2), 4),
    }
    if not reached:
        log.warning("synthesis stopped at %d of %d inputs after %d batches (data.synthesize.max_batches): the model "
                    "kept producing rejected inputs %s", len(kept), cfg.count, batches, dict(keep.dropped))
    provenance = {
        "model": model_name, "prompt_template": synthesis_prompt(tokenizer, cfg.task, ["<seed>"] * cfg.seeds_per_prompt),
        "settings": asdict(cfg), "summary": summary,
    }
    records = [{"input": text} for text in kept]
    write_jsonl(output, records)
    write_atomic(output.with_suffix(".provenance.json"), json.dumps(provenance, indent=2, ensure_ascii=False) + "\n")
    log.info("synthesized %d inputs into %s: %s", len(kept), output, summary)
    return records, summary
