"""Playground: a model's (or an artifact's) answers to a few prompts, with or without a context.

``answers`` loads any model ``model.name`` accepts (a directory, a run's ``model/``, a ``.gguf``
file, ``smollm2-135m``) and answers each input greedily or by sampling, optionally with a
context (a ``PromptConfig``, or a plain string placed as the system message). With ``student``
it answers each input three ways, as the report does: base (the model without the context),
teacher (the model with it) and student (the artifact, without it). Batches go through
``decoding.generate``; a single input can be streamed token by token (``stream``), with the same
result. ``prompt_from`` reads a behaviour's prompt from a config file or a run directory.
``internalize generate`` calls these functions:

    answers("runs/over/model", ["How many legs does a cat have?"])   # [{"input": ..., "output": ...}]
    answers("smollm2-135m", ["Hi"], prompt=prompt_from("runs/over"), student="runs/over/model")
    # [{"input": "Hi", "base": ..., "teacher": ..., "student": ...}]
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from .config import CONDITIONS, InternalizeError, ModelConfig, PromptConfig, load_config
from .decoding import Generation, Prefix, answer_text, choose_token, collate, forward, generate, stop_strings
from .models import inference_mode, load_model
from .runtime import Runtime
from .views import View, prompt_ids, stop_ids

log = logging.getLogger(__name__)

Stream = Callable[[str, str], None]  # (condition, text piece): called as each piece of an answer is generated


def prompt_from(path: str | Path, behaviour: str | None = None) -> PromptConfig:
    """The prompt of one behaviour of a config file, or of a run directory's ``config.yaml``.

    ``behaviour`` names it; it may be left out when there is only one."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.yaml").is_file():
            raise InternalizeError(f"{path}: no config.yaml in this directory; give a run directory or a config file")
        path = path / "config.yaml"
    cfg = load_config(path)
    names = [b.name for b in cfg.behaviours]
    if behaviour is None:
        if len(names) > 1:
            raise InternalizeError(f"{path} has several behaviours ({', '.join(names)}); choose one with --behaviour")
        return cfg.behaviours[0].prompt
    if behaviour not in names:
        raise InternalizeError(f"{path} has no behaviour {behaviour!r}; its behaviours: {', '.join(names)}")
    return cfg.behaviours[names.index(behaviour)].prompt


def _inputs(inputs: Sequence[str | dict[str, Any]]) -> list[str]:
    texts = []
    for i, item in enumerate(inputs):
        text = item.get("input") if isinstance(item, dict) else item
        if not isinstance(text, str) or not text.strip():
            raise InternalizeError(f"input {i + 1}={item!r} is invalid: give a non-empty string (or {{\"input\": ...}})")
        texts.append(text)
    if not texts:
        raise InternalizeError("no inputs: give at least one prompt")
    return texts


def _prompts(tokenizer: PreTrainedTokenizerBase, texts: list[str], prompt: PromptConfig | None,
             ) -> tuple[list[tuple[int, ...]], int]:
    """Prompt ids for each input, and how many prompts each input has (several contexts averaged), as the
    teacher builds them: split contexts are averaged token by token, or routed (input i to context i mod n)."""
    contexts = prompt.split() if prompt is not None else [None]
    if prompt is not None and prompt.combine == "average" and len(contexts) > 1:
        return [prompt_ids(tokenizer, t, c) for t in texts for c in contexts], len(contexts)
    return [prompt_ids(tokenizer, t, contexts[i % len(contexts)]) for i, t in enumerate(texts)], 1


def _streamed(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], max_new_tokens: int,
              device: torch.device, do_sample: bool, temperature: float, top_p: float,
              emit: Callable[[str], None]) -> Generation:
    """One prompt, generated as ``decoding.generate`` does it for a batch of one (same operations, same result),
    handing each new piece of text to ``emit`` as soon as it decodes to whole characters."""
    stops, strings = stop_ids(tokenizer), stop_strings(model)
    held = max(map(len, strings), default=1) - 1  # characters that may be the start of a stop string: not shown yet
    prefix = Prefix.shared([ids]).prefill(model, device)
    batch = collate([View(tuple(ids), ())], tokenizer.pad_token_id, len(prefix)).to(device)
    cache = prefix.expanded(model, 1) if prefix.cache is not None else DynamicCache(config=model.config)
    logits = forward(model, batch, cache, keep=1)[:, -1]
    mask, position = batch.attention_mask, batch.position_ids[:, -1:]
    tokens: list[int] = []
    shown = ""
    for step in range(max_new_tokens):
        chosen = choose_token(torch.log_softmax(logits.float(), dim=-1), do_sample, temperature, top_p)
        token = int(chosen.item())
        tokens.append(token)
        if token in stops or (strings and answer_text(tokenizer, tokens, stops, strings)[1]):
            break
        text = tokenizer.decode(tokens, skip_special_tokens=True).lstrip()
        text = text[: len(text) - held]
        if text.startswith(shown) and len(text) > len(shown) and not text.endswith("\ufffd"):  # whole characters only
            emit(text[len(shown):])
            shown = text
        if step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
        position = position + 1
        logits = model(input_ids=chosen[:, None], attention_mask=mask, position_ids=position, cache=cache,
                       use_cache=True).logits[:, -1]
    text, finished = answer_text(tokenizer, tokens, stops, strings)
    if text.startswith(shown) and len(text) > len(shown):
        emit(text[len(shown):])
    return Generation(text, finished, tuple(tokens))


def _answer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], prompt: PromptConfig | None,
            condition: str, runtime: Runtime, settings: dict[str, Any], stream: Stream | None) -> list[str]:
    prompts, group = _prompts(tokenizer, texts, prompt)
    seed = settings["seed"]
    with inference_mode(model), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if stream is not None and len(texts) == 1 and group == 1:
            stream(condition, "")  # the answer starts (it may be empty)
            gens = [_streamed(model, tokenizer, prompts[0], settings["max_new_tokens"], runtime.device,
                              settings["do_sample"], settings["temperature"], settings["top_p"],
                              lambda piece: stream(condition, piece))]
        else:
            gens = [samples[0] for samples in generate(
                model, tokenizer, prompts, settings["max_new_tokens"], settings["batch_size"], runtime.device,
                settings["do_sample"], settings["temperature"], settings["top_p"], group=group, desc=condition)]
            if stream is not None:
                for gen in gens:
                    stream(condition, gen.text)
    unfinished = sum(not g.finished for g in gens)
    if unfinished:
        log.warning("%s: %d of %d answers stopped at max_new_tokens=%d before their end", condition, unfinished,
                    len(gens), settings["max_new_tokens"])
    return [g.text for g in gens]


def answers(model: str, inputs: Sequence[str | dict[str, Any]], prompt: PromptConfig | str | None = None,
            student: str | None = None, *, max_new_tokens: int = 128, do_sample: bool = False,
            temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, batch_size: int = 16, device: str = "auto",
            dtype: str = "float32", trust_remote_code: bool = False, stream: Stream | None = None,
            ) -> list[dict[str, str]]:
    """Answer each input with ``model`` (any ``model.name``): greedy, or sampled at ``temperature`` from the
    ``top_p`` nucleus (seeded).

    ``prompt``: a context to answer with (a ``PromptConfig``, or a string placed as the system message).
    Returns ``[{"input", "output"}]``; with ``student`` (a saved artifact) ``[{"input", "base", "teacher",
    "student"}]``: the model without and with ``prompt``, and the student without it. ``stream``: with a
    single input, called with (condition, "") as each answer starts, then with (condition, piece) as it is
    generated (with several inputs, once per answer, with the whole of it). The answers are the whole
    generations (no extractor), special tokens dropped; the condition is "output" without ``student``."""
    texts = _inputs(inputs)
    for ok, name, value, why in ((max_new_tokens >= 1, "max_new_tokens", max_new_tokens, "must be >= 1"),
                                 (temperature > 0, "temperature", temperature, "must be > 0"),
                                 (0 < top_p <= 1, "top_p", top_p, "must be in (0, 1]"),
                                 (batch_size >= 1, "batch_size", batch_size, "must be >= 1")):
        if not ok:
            raise InternalizeError(f"{name}={value!r} is invalid: {why}")
    if isinstance(prompt, str):
        prompt = PromptConfig(context=prompt)
    if student is not None and (prompt is None or prompt.empty):
        raise InternalizeError("comparing with a student needs the teacher's context: give one (--context or --config)")
    runtime = Runtime.local(device)
    settings = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "temperature": temperature, "top_p": top_p,
                "seed": seed, "batch_size": batch_size}
    base, tokenizer = load_model(ModelConfig(name=model, device=device, dtype=dtype,
                                             trust_remote_code=trust_remote_code), runtime)
    if student is None:
        outputs = _answer(base, tokenizer, texts, prompt, "output", runtime, settings, stream)
        return [{"input": t, "output": o} for t, o in zip(texts, outputs, strict=True)]
    loaded, student_tokenizer = load_model(ModelConfig(name=student, device=device, dtype=dtype,
                                                       trust_remote_code=trust_remote_code), runtime)
    runs = {"base": (base, tokenizer, None), "teacher": (base, tokenizer, prompt),
            "student": (loaded, student_tokenizer, None)}
    found = {c: _answer(m, tok, texts, p, c, runtime, settings, stream) for c, (m, tok, p) in runs.items()}
    return [{"input": t, **{c: found[c][i] for c in CONDITIONS}} for i, t in enumerate(texts)]
