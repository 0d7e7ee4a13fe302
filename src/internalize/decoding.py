"""Decoding: batched forward passes and generation that compute the shared prompt prefix once.

Every teacher prompt of a run starts with the same tokens (chat header, context, demonstration
turns), and every student prompt with the same chat header and default system prompt.
``Prefix.shared`` finds the longest common prefix of a set of prompts and ``prefill`` runs the
model on it once; each batch then runs only the rest of its sequences, left-padded after the
prefix with explicit positions, attending to the prefix's key/value cache. Results equal the
uncached forward (tested to tolerance on a tiny model and on SmolLM2). In training the prefix is
re-run with gradients once per micro-batch, instead of once per sequence.

    prefix = Prefix.shared([v.prompt_ids for v in views]).prefill(model, device)
    logits = answer_logits(model, collate(views, pad_id, len(prefix)), prefix)  # [B, A, V]
    outs = generate(model, tokenizer, prompts, max_new_tokens=64, batch_size=32, device=device, distributions=128)

``generate`` is greedy or sampled decoding; with ``distributions`` it also keeps, for every
generated token, the model's log-probs (top-k plus the tail mass, or the full vocabulary): the
teacher's distributions come free with its answers. By default it runs the loop below over Hugging
Face's ``DynamicCache`` (rows leave the batch as they finish); ``engine="static"`` runs the generation
engine of ``internalize.engine`` (the prefix's keys and values once for the whole batch, a
preallocated cache, finished rows refilled from waiting prompts, exact with sliding windows).

Sliding-window attention (Gemma 2/3, Mistral, Qwen2/3 with ``use_sliding_window``, Phi-3 with a
window): transformers counts the window in cache slots, not positions, so padding between the
cached prefix and a row's own tokens takes slots inside the window and hides real tokens (measured:
answer logits off by 0.01-2 with a 16-token window). Padding at the very start, or a cached prefix
without padding after it, is exact. So when ``sliding_window(model)`` is shorter than the sequences,
padded batches run whole, left-padded from their first token (``answer_logits``), and the dynamic
``generate`` does not share the prefix unless its batches hold a single prompt; ``_short_window``
logs it once. The static engine masks by position and always shares the prefix.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from .targets import topk_with_tail
from .views import View, stop_ids

log = logging.getLogger(__name__)
_WARNED: set[tuple[str, int]] = set()  # (model type, window) already logged


def sliding_window(model: PreTrainedModel) -> int | None:
    """The model's sliding attention window in tokens, or None when every layer attends to all of the sequence."""
    config = model.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(config, "sliding_window", None)
    if not isinstance(window, int) or window <= 0:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:  # transformers 5 names each layer's attention
        return window if any("sliding" in str(t) for t in layer_types) else None
    if getattr(config, "use_sliding_window", True) is False:  # Qwen2/3 without layer_types
        return None
    return window  # Mistral, Phi-3 (every layer slides), configs with only a sliding_window_pattern


def _short_window(model: PreTrainedModel, length: int) -> bool:
    """Whether the model's sliding window is no longer than sequences of ``length`` tokens; logs it once."""
    window = sliding_window(model)
    if window is None or window > length:
        return False
    model_type = getattr(model.config, "model_type", type(model).__name__)
    if (model_type, window) not in _WARNED:
        _WARNED.add((model_type, window))
        log.warning("%s has a sliding attention window of %d tokens, shorter than these sequences (%d tokens): padded "
                    "batches run without the shared prefix cache (exact, slower)", model_type, window, length)
    return True


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest prefix all ``sequences`` share (0 for none or an empty list)."""
    if not sequences:
        return 0
    first, n = sequences[0], min(map(len, sequences))
    for other in sequences[1:]:
        n = next((i for i in range(n) if other[i] != first[i]), n)
    return n


@dataclass
class Prefix:
    """Prompt tokens every sequence of a batch starts with, and (after ``prefill``) their key/value cache."""

    ids: tuple[int, ...] = ()
    cache: DynamicCache | None = None  # batch size 1

    @classmethod
    def shared(cls, prompts: Sequence[Sequence[int]], share: bool = True) -> Prefix:
        """The common prefix of ``prompts``, leaving at least one token of every prompt after it
        (``share=False``: none, every sequence runs whole; for side-by-side benchmarks)."""
        if not share or not prompts:
            return cls()
        n = min(common_prefix_length(prompts), min(map(len, prompts)) - 1)
        return cls(tuple(prompts[0][: max(n, 0)]))

    def __len__(self) -> int:
        return len(self.ids)

    def prefill(self, model: PreTrainedModel, device: torch.device | str) -> Prefix:
        """Run the model (on ``device``) on the prefix, with gradients if enabled, and keep its cache."""
        if not self.ids:
            return self
        out = model(input_ids=torch.tensor([self.ids], device=device), use_cache=True, logits_to_keep=1)
        return Prefix(self.ids, out.cache)

    def expanded(self, model: PreTrainedModel, batch_size: int) -> DynamicCache | None:
        """A fresh cache holding the prefix ``batch_size`` times (the prefix's own cache is never changed)."""
        if self.cache is None:
            return None
        cache = DynamicCache(config=model.config)
        for i, layer in enumerate(self.cache.layers):
            cache.update(layer.keys.expand(batch_size, -1, -1, -1), layer.values.expand(batch_size, -1, -1, -1), i)
        return cache


@dataclass
class Batch:
    """Views after a shared prefix, left-padded. ``answer_pos[b, j]`` indexes the kept logits predicting answer token j."""

    input_ids: torch.Tensor  # [B, S] prompt (after the prefix) then answer, left-padded
    attention_mask: torch.Tensor  # [B, P + S]: the prefix, then 0 on padding
    position_ids: torch.Tensor  # [B, S] positions continue after the prefix, skipping padding
    answer_pos: torch.Tensor  # [B, A] indices into the last `keep` logits
    answer_ids: torch.Tensor  # [B, A]
    answer_mask: torch.Tensor  # [B, A] bool, False on padding
    keep: int  # logits_to_keep: only the positions that predict answer tokens are projected

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.position_ids,
                                               self.answer_pos, self.answer_ids, self.answer_mask)), self.keep)

    def whole(self, prefix_ids: Sequence[int]) -> Batch:
        """The same rows run whole: ``prefix_ids`` then each row's own tokens, left-padded from the first token
        (answer positions unchanged: every row still ends at the last position)."""
        B, S = self.input_ids.shape
        P = len(prefix_ids)
        own = self.attention_mask[:, -S:].bool()
        pad = int(self.input_ids[~own][0]) if not own.all() else 0  # any id: padding is masked
        input_ids = self.input_ids.new_full((B, P + S), pad)
        attention_mask = torch.zeros_like(input_ids)
        position_ids = torch.zeros_like(input_ids)
        prefix = torch.tensor(prefix_ids, dtype=self.input_ids.dtype, device=self.input_ids.device)
        for b in range(B):
            seq = torch.cat([prefix, self.input_ids[b][own[b]]])
            input_ids[b, P + S - len(seq) :] = seq
            attention_mask[b, P + S - len(seq) :] = 1
            position_ids[b, P + S - len(seq) :] = torch.arange(len(seq), device=seq.device)
        return Batch(input_ids, attention_mask, position_ids, self.answer_pos, self.answer_ids, self.answer_mask,
                     self.keep)

    @property
    def padding_share(self) -> float:
        """Share of the batch's (non-prefix) token slots that are padding."""
        return 1.0 - self.attention_mask[:, -self.input_ids.shape[1] :].float().mean().item()


def collate(views: Sequence[View], pad_id: int, prefix_len: int = 0) -> Batch:
    """Left-pad the views (minus their first ``prefix_len`` tokens, shared by all) into one batch."""
    seqs = [v.prompt_ids[prefix_len:] + v.answer_ids for v in views]
    length, answers = max(map(len, seqs)), max(len(v.answer_ids) for v in views)
    keep = answers + 1
    input_ids = torch.full((len(views), length), pad_id, dtype=torch.long)
    attention_mask = torch.ones(len(views), prefix_len + length, dtype=torch.long)
    position_ids = torch.full((len(views), length), prefix_len, dtype=torch.long)
    answer_pos = torch.zeros(len(views), answers, dtype=torch.long)
    answer_tok = torch.full((len(views), answers), pad_id, dtype=torch.long)
    answer_mask = torch.zeros(len(views), answers, dtype=torch.bool)
    for b, (v, seq) in enumerate(zip(views, seqs, strict=True)):
        pad, n = length - len(seq), len(v.answer_ids)
        input_ids[b, pad:] = torch.tensor(seq)
        attention_mask[b, prefix_len : prefix_len + pad] = 0
        position_ids[b, pad:] = torch.arange(prefix_len, prefix_len + len(seq))
        # answer token j sits at length - n + j and is predicted by the logits one position earlier
        answer_pos[b, :n] = torch.arange(n) + keep - n - 1
        answer_tok[b, :n] = torch.tensor(v.answer_ids)
        answer_mask[b, :n] = True
    return Batch(input_ids, attention_mask, position_ids, answer_pos, answer_tok, answer_mask, keep)


def batches(views: Sequence[View], batch_size: int, pad_id: int, prefix_len: int = 0,
            group: int = 1) -> list[tuple[list[int], Batch]]:
    """Length-sorted batches (little padding) with the original indices of their views.

    ``group`` > 1: each run of ``group`` consecutive views (one input under several contexts) stays
    together and in order in one batch; ``batch_size`` counts runs."""
    def length(g: int) -> int:
        return max(len(v.prompt_ids) + len(v.answer_ids) for v in views[g * group : (g + 1) * group])

    order = sorted(range(len(views) // group), key=length)
    chunks = [[i for g in order[s : s + batch_size] for i in range(g * group, (g + 1) * group)]
              for s in range(0, len(order), batch_size)]
    return [(idx, collate([views[i] for i in idx], pad_id, prefix_len)) for idx in chunks]


def mean_over_contexts(logp: torch.Tensor, group: int) -> torch.Tensor:
    """[R * group, ..., V] log-probs -> [R, ..., V]: the log of the mean probability over each run of ``group``."""
    if group == 1:
        return logp
    return torch.logsumexp(logp.view(-1, group, *logp.shape[1:]), dim=1) - math.log(group)


def _contiguous(module: torch.nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(), *args[1:])


def forward(model: PreTrainedModel, batch: Batch, cache: DynamicCache | None, keep: int) -> torch.Tensor:
    """Logits ``[B, keep, V]`` of the batch's last ``keep`` positions; ``cache`` holds the prefix (grows in place).

    For this call only, the output projection sees a contiguous input: the kept positions are a slice,
    which ``F.linear`` would otherwise run as a batched matmul with the [V, d] weight broadcast (2x slower)."""
    head = model.get_output_embeddings()
    hook = head.register_forward_pre_hook(_contiguous) if head is not None else None
    try:
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                    cache=cache, use_cache=cache is not None, logits_to_keep=keep)
    finally:
        if hook is not None:
            hook.remove()
    return out.logits


def answer_logits(model: PreTrainedModel, batch: Batch, prefix: Prefix | None = None) -> torch.Tensor:
    """Logits ``[B, A, V]`` predicting each answer token; only answer positions are projected.

    With a sliding window shorter than the sequences, a batch with padding runs whole (``Batch.whole``), without
    the prefix's cache: padding after a cached prefix would fall inside the window."""
    if (prefix is not None and len(prefix) and not bool(batch.attention_mask.all())
            and _short_window(model, batch.attention_mask.shape[1])):
        batch, prefix = batch.whole(prefix.ids), None
    cache = prefix.expanded(model, batch.input_ids.shape[0]) if prefix is not None else None
    logits = forward(model, batch, cache, batch.keep)
    return logits.gather(1, batch.answer_pos.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))


def answer_text(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], stops: Sequence[int],
                strings: Sequence[str] = ()) -> tuple[str, bool]:
    """The text of generated ``ids`` up to the first stop token or stop string, and whether there was one (the
    answer finished)."""
    end = next((j for j, token in enumerate(ids) if token in stops), None)
    text = tokenizer.decode(ids[:end], skip_special_tokens=True)
    cut = min((at for at in (text.find(s) for s in strings) if at >= 0), default=None)
    if cut is not None:
        return text[:cut].strip(), True
    return text.strip(), end is not None


_OPEN_ENDED = re.compile(r"\$|\\[Zz]|\(\?[=!]")  # an end anchor or a lookahead: a later character can undo a match


def settled(pattern: re.Pattern[str], text: str, strings: Sequence[str] = ()) -> bool:
    """Whether answer ``text`` (so far, as ``answer_text`` gives it) holds a match of ``pattern`` that no
    continuation can take away, so that generating further cannot change whether the answer matches.

    The match must end before the text's last character (which settles a ``\\b`` after it; trailing
    ``\\ufffd`` is a character whose bytes are still coming) and before any stop string that may be starting
    at the end (it would cut the answer there). Never for a pattern with an end anchor or a lookahead."""
    if _OPEN_ENDED.search(pattern.pattern):
        return False
    text = text.rstrip("\ufffd")
    end = min([len(text)] + [len(text) - k for s in strings for k in range(1, len(s)) if text.endswith(s[:k])])
    return any(m.end() < end for m in pattern.finditer(text))


def ends_here(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], stops: Sequence[int], strings: Sequence[str],
              until: re.Pattern[str] | None) -> bool:
    """Whether an answer with no stop token yet ends at ``ids``: its text holds a stop string, or a ``settled``
    match of ``until``."""
    text, ended = answer_text(tokenizer, ids, stops, strings)
    return ended or (until is not None and settled(until, text, strings))


def stop_strings(model: PreTrainedModel) -> tuple[str, ...]:
    """The strings that end an answer (``model.stop_strings``, kept in the model's generation config)."""
    config = getattr(model, "generation_config", None)
    return tuple(getattr(config, "stop_strings", None) or ())


@dataclass
class Generation:
    """One generated continuation."""

    text: str  # decoded, special tokens skipped, stripped
    finished: bool  # ended with the end-of-turn token (False: hit max_new_tokens)
    ids: tuple[int, ...]  # generated ids, through the end-of-turn token when finished
    logp: torch.Tensor | None = None  # [len(ids), C] the model's log-probs at each generated token
    top: torch.Tensor | None = None  # [len(ids), k] their token ids (None: full vocabulary)


def choose_token(logp: torch.Tensor, do_sample: bool, temperature: float, top_p: float) -> torch.Tensor:
    """Next token per row: argmax, or a sample at ``temperature`` from the ``top_p`` nucleus."""
    if not do_sample:
        return logp.argmax(-1)
    probs = torch.softmax(logp / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        sorted_probs[(sorted_probs.cumsum(-1) - sorted_probs) > top_p] = 0.0  # always keeps the top token
        return order.gather(-1, torch.multinomial(sorted_probs, 1)).squeeze(-1)
    return torch.multinomial(probs, 1).squeeze(-1)


def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Sequence[int]],
             max_new_tokens: int, batch_size: int, device: torch.device | str, do_sample: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, num_samples: int = 1, distributions: int | None = None,
             group: int = 1, desc: str = "generate", share_prefix: bool = True, progress: bool = True,
             engine: str = "dynamic", routes: Sequence[int] | None = None,
             until: Sequence[re.Pattern[str] | None] | None = None) -> list[list[Generation]]:
    """Generate ``num_samples`` continuations per prompt (ids) with the model on ``device``. Call under
    ``teacher_mode`` or ``inference_mode``.

    ``engine="dynamic"`` (default): the loop below over Hugging Face's ``DynamicCache``; ``"static"``: the
    generation engine of ``internalize.engine`` (the prefix's keys and values once, a preallocated cache, finished
    rows refilled from waiting prompts; the dynamic loop still runs for models whose attention it cannot replace).
    Not the default: with short contexts and long answers it was no faster on a 2-core CPU (BENCHMARKS.md).

    Batches are length-sorted; rows leave the batch as they finish. ``distributions``: None keeps
    no log-probs, 0 the full vocabulary, k the top-k plus the tail mass (temperature 1, as scored).
    ``group`` > 1: each run of ``group`` consecutive prompts is one input under several contexts; the
    next-token distribution is the mean of theirs (``mean_over_contexts``), all of them continue with
    the token chosen from it, and there is one result per run (``batch_size`` counts runs).
    ``routes`` (``group`` 1): the context each prompt shows (a routed teacher's: input i, context i mod n), so the
    engine runs each context once; the answers do not depend on it, and the dynamic loop ignores it.
    ``until`` (one per input, or None): a pattern whose ``settled`` match ends that input's answer early, as a stop
    string would (``finished`` False): for a check that only asks whether the answer matches (``retention``).
    With a sliding window shorter than prompt plus ``max_new_tokens``, the prefix is shared only when every batch
    holds one prompt (padding after a cached prefix would fall inside the window).
    """
    if engine not in ("static", "dynamic"):
        raise ValueError(f"engine must be 'static' or 'dynamic', not {engine!r}")
    from . import engine as static  # imports this module: loaded on first use

    if engine == "static" and static.supported(model):
        return static.generate(model, tokenizer, prompts, max_new_tokens, batch_size, device, do_sample, temperature,
                               top_p, num_samples, distributions, group, desc, share_prefix, progress, routes, until=until)
    stops, strings, pad = stop_ids(tokenizer), stop_strings(model), tokenizer.pad_token_id
    stop = torch.tensor(stops, device=device)
    if share_prefix and prompts and (batch_size > 1 or group > 1):
        share_prefix = not _short_window(model, max(map(len, prompts)) + max_new_tokens)
    prefix = Prefix.shared(prompts, share_prefix).prefill(model, device)
    inputs = len(prompts) // group
    order = sorted(range(inputs), key=lambda i: max(map(len, prompts[i * group : (i + 1) * group])))
    results: list[list[Generation]] = [[] for _ in range(inputs)]
    contexts = torch.arange(group)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=None if progress else True):
        rows = [i for i in order[start : start + batch_size] for _ in range(num_samples)]  # one per sequence
        batch = collate([View(tuple(prompts[i * group + g]), ()) for i in rows for g in range(group)], pad,
                        len(prefix)).to(device)
        cache = prefix.expanded(model, len(rows) * group) if prefix.cache is not None else DynamicCache(config=model.config)
        logits = forward(model, batch, cache, keep=1)[:, -1]
        mask, position = batch.attention_mask, batch.position_ids[:, -1:]
        active = torch.arange(len(rows))  # sequences still generating
        tokens: list[list[int]] = [[] for _ in rows]
        dists: list[list[tuple[torch.Tensor, torch.Tensor | None]]] = [[] for _ in rows]
        for step in range(max_new_tokens):
            logp = mean_over_contexts(torch.log_softmax(logits.float(), dim=-1), group)
            chosen = choose_token(logp, do_sample, temperature, top_p)
            kept = topk_with_tail(logp, distributions) if distributions is not None else None
            for r, (row, token) in enumerate(zip(active.tolist(), chosen.tolist(), strict=True)):
                tokens[row].append(token)
                if kept is not None:
                    dists[row].append((kept[0][r].cpu(), None if kept[1] is None else kept[1][r].cpu()))
            going = (~torch.isin(chosen, stop)).nonzero().squeeze(1)
            if strings or until is not None:  # rows whose text now holds a stop string (or ``until``) finish too
                open_ = [not ends_here(tokenizer, tokens[row], stops, strings, until and until[rows[row]])
                         for row in active[going].tolist()]
                going = going[torch.tensor(open_, dtype=torch.bool, device=going.device)]
            if step == max_new_tokens - 1 or len(going) == 0:
                break
            if len(going) < len(active):  # finished sequences leave the batch, with all their contexts
                keep = (going[:, None] * group + contexts).flatten()
                cache.batch_select_indices(keep)
                active, chosen, mask, position = active[going], chosen[going], mask[keep], position[keep]
            mask = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=1)
            position = position + 1
            logits = model(input_ids=chosen.repeat_interleave(group)[:, None], attention_mask=mask,
                           position_ids=position, cache=cache, use_cache=True).logits[:, -1]
        for row, i in enumerate(rows):
            text, finished = answer_text(tokenizer, tokens[row], stops, strings)
            gen = Generation(text, finished, tuple(tokens[row]))
            if distributions is not None:
                gen.logp = torch.stack([d[0] for d in dists[row]])
                gen.top = None if dists[row][0][1] is None else torch.stack([d[1] for d in dists[row]])
            results[i].append(gen)
    return results

