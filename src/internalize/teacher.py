"""Teacher: generate with the context, extract the final answer, record its token distributions.

The teacher is the model conditioned on context + input, run in ``eval()`` under ``no_grad``
(with LoRA: the same weights, adapters disabled). For each input it generates ``num_samples``
continuations; a configured extractor pulls the final answer out of a scratch-pad (generations
whose answer cannot be extracted, or that never finished, are dropped and counted). The
distributions over the answer tokens are kept per token as the top-k log-probs plus the tail mass
(or the full vocabulary when ``top_k=0``), as recorded while generating. With an extractor, that
holds when the scratch-pad and the extracted answer, tokenized apart (as the views are built), are
the generated tokens; any other answer is scored once more, conditioned on context + input +
scratch-pad. The shared context is computed once (``decoding.Prefix``), and the targets are cached
on disk (``cache``) for later runs. Generations written earlier (``teacher.generations_file``) are not
made again: their answers are extracted and scored after their own scratch-pads.

Demonstrations split over several contexts (``prompt.demonstrations_per_context``) teach either
as one averaged teacher (its next-token distribution is the mean of the contexts', while
generating and while scoring) or routed (input i to context i mod n). ``given_answers`` takes the
answers from the records instead (``train.targets=data``: plain fine-tuning, no teacher run), and
``score`` gives the teacher's distributions over answers it did not write.

    targets = answer(model, tokenizer, records, behaviour.prompt, cfg.teacher, runtime)
    targets.student_views[i], targets.logp[i]  # [A_i, k + 1]
    dists = score(model, tokenizer, views, top_k=128, batch_size=64, runtime=runtime)
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from . import cache
from .config import InternalizeError, PromptConfig, TeacherConfig
from .data import Record, read_jsonl
from .decoding import Generation, Prefix, answer_logits, batches, generate, mean_over_contexts
from .models import cache_root, teacher_mode
from .runtime import Runtime
from .targets import Targets, topk_with_tail
from .views import View, answer_ids, prompt_ids

log = logging.getLogger(__name__)

def extract_answer(generation: str, extractor: str, pattern: str) -> tuple[str, str] | None:
    """Split a generation into (scratch-pad prefix, final answer); None if no answer is found.

    none: the whole generation is the answer. regex: the last match's first group (or whole match).
    delimiter: the text after the last occurrence of ``pattern``.
    """
    if extractor == "none":
        prefix, answer = "", generation
    elif extractor == "regex":
        matches = list(re.finditer(pattern, generation, flags=re.DOTALL))
        if not matches:
            return None
        m = matches[-1]
        group = 1 if m.re.groups else 0
        if m.group(group) is None:  # an optional group that took no part in the match
            return None
        prefix, answer = generation[: m.start(group)], m.group(group)
    elif extractor == "delimiter":
        at = generation.rfind(pattern)
        if at < 0:
            return None
        prefix, answer = generation[: at + len(pattern)], generation[at + len(pattern) :]
    else:
        raise ValueError(f"unknown extractor {extractor!r}")
    stripped = answer.lstrip()
    prefix += answer[: len(answer) - len(stripped)]
    answer = stripped.rstrip()
    return (prefix, answer) if answer else None


def cache_dir(cfg: TeacherConfig) -> Path | None:
    """Where this teacher's targets are cached (None: caching is off)."""
    if not cfg.cache_dir:
        return None
    return cache_root() / "teacher" if cfg.cache_dir == "auto" else Path(cfg.cache_dir).expanduser()


def teacher_prompts(tokenizer: PreTrainedTokenizerBase, records: list[Record], prompt: PromptConfig | None,
                    ) -> tuple[list[tuple[int, ...]], int]:
    """The teacher's prompt ids for ``records``, and how many there are per input (``group``): one per input (the
    only context, or routed: input i to context i mod n), or one per context of an averaged teacher."""
    contexts = prompt.split() if prompt is not None else [None]
    group = len(contexts) if prompt is not None and prompt.combine == "average" else 1
    if group > 1:
        return [prompt_ids(tokenizer, r["input"], c) for r in records for c in contexts], group
    return [prompt_ids(tokenizer, r["input"], contexts[k]) for r, k in zip(records, routes(len(records), prompt),
                                                                            strict=True)], 1


def routes(inputs: int, prompt: PromptConfig | None) -> list[int]:
    """The context each of ``inputs`` inputs is taught under by a teacher of one context per input: input i,
    context i mod n of the n contexts ``prompt`` routes over (0 for all when it has one, or is averaged)."""
    n = len(prompt.split()) if prompt is not None and prompt.combine == "route" else 1
    return [i % n for i in range(inputs)]


def answer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, records: list[Record],
           prompt: PromptConfig | None, cfg: TeacherConfig, runtime: Runtime, desc: str = "teacher") -> Targets:
    """Run the teacher on ``records`` (or reuse its cached run): generate, extract, keep the distributions.

    The inputs are taught in parts of ``teacher.shard_inputs``, each cached as soon as it is done, so
    a run killed in the teacher stage continues after its last complete part. ``prompt`` None: the
    frozen model with no context (the reference of the forgetting check)."""
    top_k = cfg.top_k if cfg.top_k < model.config.vocab_size else 0  # k covering the vocabulary = full form
    prompts, group = teacher_prompts(tokenizer, records, prompt)
    contexts = len(prompt.split()) if prompt is not None else 1
    if contexts > 1 and cfg.engine == "dynamic" and records:
        log.info("%s: %d %s contexts with teacher.engine=dynamic run again for every input; teacher.engine=static "
                 "runs each context once (same answers)", desc, contexts, "averaged" if group > 1 else "routed")
    given = given_generations(cfg.generations_file) if prompt is not None else {}  # they were written with the context
    where = cache_dir(cfg)
    parts, reused, answered, started = [], 0, 0, time.perf_counter()
    for start in range(0, max(len(records), 1), cfg.shard_inputs):
        end = min(start + cfg.shard_inputs, len(records))
        part_prompts = prompts[start * group : end * group]
        part = None
        if where is not None:
            part_given = [given.get(r["input"], []) for r in records[start:end]]
            key = cache.cache_key(model, part_prompts, records[start:end], cfg, tokenizer.eos_token_id,
                                  part_given if any(part_given) else None)  # a part with none given: its usual key
            part = cache.load(where, key)
            reused += part is not None
        if part is None:
            label = f"{desc} {start + 1}-{end}" if end - start < len(records) else desc
            part = _answer_shared(model, tokenizer, records, prompts, start, end, group, top_k, cfg, runtime, label,
                                  given, routes(len(records), prompt) if group == 1 else None)
            if where is not None and runtime.is_main:  # one writer: the part gathered from every process
                cache.save(where, key, part)
            answered += end - start
            if end < len(records):  # progress in the logs too, where no bar shows
                elapsed = time.perf_counter() - started
                log.info("%s: %d of %d inputs answered, %.0f s, about %.0f s left", desc, end, len(records), elapsed,
                         elapsed / answered * (len(records) - end))
        part.source = [i + start for i in part.source]
        parts.append(part)
    targets = Targets.concat(parts)
    targets.cache_hit = reused == len(parts)
    if reused:
        log.info("%s: reused %d of %d parts of the teacher's targets from %s", desc, reused, len(parts), where)
    if targets.dropped:
        log.warning("%s: dropped %s teacher samples of %d inputs: %s", desc, sum(targets.dropped.values()),
                    len(records), targets.dropped)
    return targets


def given_generations(path: str) -> dict[str, list[str]]:
    """``teacher.generations_file`` read: input text -> its given generations, in file order ({} when unset)."""
    if not path:
        return {}
    given: dict[str, list[str]] = {}
    for number, record in enumerate(read_jsonl(path, "teacher.generations_file", output_column="generation"), 1):
        text = record.get("output")
        if not isinstance(text, str) or not text.strip():
            raise InternalizeError(f"{path}: record {number} has no 'generation' text; teacher.generations_file "
                                   "needs {\"input\": ..., \"generation\": ...} on every line")
        given.setdefault(record["input"], []).append(text)
    return given


def _answer_shared(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, records: list[Record],
                   prompts: list[tuple[int, ...]], start: int, end: int, group: int, top_k: int, cfg: TeacherConfig,
                   runtime: Runtime, desc: str, given: dict[str, list[str]], kinds: list[int] | None) -> Targets:
    """The targets of ``records[start:end]``, each process answering its contiguous share (seeded by where the
    share starts), joined in input order on every process. ``kinds``: the context each input shows (``routes``)."""
    mine = runtime.split(range(start, end))
    if mine:
        lo, hi = mine[0], mine[-1] + 1
        part = _answer_part(model, tokenizer, records[lo:hi], prompts[lo * group : hi * group], group, top_k, cfg,
                            runtime, cfg.seed + lo, desc, given, kinds[lo:hi] if kinds is not None else None)
        part.source = [i + lo - start for i in part.source]
    else:  # more processes than inputs
        part = Targets(ids=[] if top_k else None)
    return Targets.concat(runtime.gather_objects([part]))


def _answer_part(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, records: list[Record],
                 prompts: list[tuple[int, ...]], group: int, top_k: int, cfg: TeacherConfig, runtime: Runtime,
                 seed: int, desc: str, given: dict[str, list[str]], kinds: list[int] | None = None) -> Targets:
    """The teacher's targets for ``records`` (``group`` prompts each): generate (or take the ``given`` generations
    of an input), extract, keep or score again."""
    targets = Targets(ids=[] if top_k else None)
    dropped: Counter[str] = Counter()
    rescore: list[View] = []  # kept answers whose tokens differ from the generation's, under each averaged context
    pending: list[int] = []  # their places in targets.logp
    with teacher_mode(model), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        todo = [i for i, r in enumerate(records) if r["input"] not in given]
        made = iter(generate(model, tokenizer, [p for i in todo for p in prompts[i * group : (i + 1) * group]],
                             cfg.max_new_tokens, cfg.batch_size, runtime.device, cfg.do_sample, cfg.temperature,
                             cfg.top_p, cfg.num_samples, distributions=top_k, group=group, desc=f"{desc}: generate",
                             engine=cfg.engine, routes=[kinds[i] for i in todo] if kinds is not None else None)
                    if todo else [])
        # a given generation has no recorded distributions: its answer is scored below, after its scratch-pad
        samples = [next(made) if r["input"] not in given else
                   [Generation(text, True, tuple(tokenizer(text, add_special_tokens=False).input_ids))
                    for text in given[r["input"]]] for r in records]
        if len(todo) < len(records):
            log.info("%s: %d of %d inputs took their generations from teacher.generations_file", desc,
                     len(records) - len(todo), len(records))
        student_prompts = [prompt_ids(tokenizer, r["input"]) for r in records]
        for i, (record, outs) in enumerate(zip(records, samples, strict=True)):
            prompt_i = prompts[i * group]  # the teacher view keeps the first context's prompt
            for gen in outs:
                if not gen.finished:
                    dropped["unfinished (raise teacher.max_new_tokens)"] += 1
                    continue
                split = extract_answer(gen.text, cfg.extractor, cfg.extract_pattern)
                if split is None:
                    dropped["answer not extracted"] += 1
                    continue
                scratch, final = split
                if cfg.extractor == "none":  # the answer is the generation
                    scratch_tok, view = (), View(prompt_i, gen.ids)
                else:
                    # spaces before the answer go with it ("...negative:" + " rainy"), as the teacher wrote
                    # them: a scratch-pad ending in a lone space token is a state the teacher never saw
                    body = scratch.rstrip(" ")
                    scratch_tok = tuple(tokenizer(body, add_special_tokens=False).input_ids) if body else ()
                    view = View(prompt_i + scratch_tok, answer_ids(tokenizer, scratch[len(body):] + final))
                if gen.logp is not None and gen.ids == scratch_tok + view.answer_ids:  # as generated: reuse
                    logp, ids = gen.logp[len(scratch_tok):], None if gen.top is None else gen.top[len(scratch_tok):]
                else:  # re-tokenized differently (or cut before the end): score the answer as the student sees it
                    pending.append(len(targets))
                    logp = ids = None
                    rescore += [View(p + scratch_tok, view.answer_ids) for p in prompts[i * group : (i + 1) * group]]
                targets.keep(record, i, gen.text, final, view, student_prompts[i], logp, ids)
        targets.dropped = dict(dropped)
        if rescore:
            for at, (logp, ids) in zip(pending, score(model, tokenizer, rescore, top_k, cfg.batch_size, runtime, desc,
                                                      group), strict=True):
                targets.logp[at] = logp
                if targets.ids is not None:
                    targets.ids[at] = ids
        if cfg.extractor != "none":
            log.info("%s: %d of %d answers took their distributions from the generation, %d were scored again", desc,
                     len(targets) - len(pending), len(targets), len(pending))
    return targets


def given_answers(tokenizer: PreTrainedTokenizerBase, records: list[Record], prompt: PromptConfig | None,
                  where: str = "the training file") -> Targets:
    """Targets from each record's ``output`` text, for hard-label fine-tuning (``train.targets=data``).

    No model runs: the answers are given, so there are no teacher distributions (zero-width log-probs)."""
    targets = Targets(ids=None)
    for i, record in enumerate(records):
        output = record.get("output")
        if not isinstance(output, str) or not output.strip():
            raise InternalizeError(f"{where}: record {i + 1} has no 'output' text; train.targets=data needs "
                                   "{\"input\": ..., \"output\": ...} on every line")
        given = output.strip()
        view = View(prompt_ids(tokenizer, record["input"], prompt), answer_ids(tokenizer, given))
        targets.keep(record, i, given, given, view, prompt_ids(tokenizer, record["input"]),
                     torch.zeros(len(view.answer_ids), 0))
    return targets


def score(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, views: list[View], top_k: int,
          batch_size: int, runtime: Runtime, desc: str = "teacher", group: int = 1, prefix: Prefix | None = None,
          progress: bool = True) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """The model's log-probs on each view's answer tokens: [A_i, k + 1] and [A_i, k] ids (or [A_i, V], None).

    Runs the model as it is (call under ``teacher_mode`` for the frozen teacher). ``group`` > 1: runs of
    ``group`` views (one answer under several contexts) give one result, the mean. ``prefix``: a prefilled prefix
    every view starts with, computed by these weights (reused across calls), instead of the views' own."""
    if prefix is None:
        prefix = Prefix.shared([v.prompt_ids for v in views]).prefill(model, runtime.device)
    scored: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
    for idx, batch in tqdm(batches(views, batch_size, tokenizer.pad_token_id, len(prefix), group),
                           desc=f"{desc}: score", unit="batch", disable=None if progress else True):
        logits = answer_logits(model, batch.to(runtime.device), prefix).float()
        logp = mean_over_contexts(torch.log_softmax(logits, dim=-1), group).cpu()
        for row, i in enumerate(idx[::group]):
            scored[i // group] = topk_with_tail(logp[row, : len(views[i].answer_ids)], top_k)
    return [scored[i] for i in range(len(views) // group)]
