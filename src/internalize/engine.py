"""Generation engine: many prompts that share a prefix, decoded with a preallocated cache.

The teacher answers hundreds of prompts that all begin with the same tokens (chat header, context,
demonstrations); evaluation and on-policy sampling do the same without the context. ``generate``
here runs the model on that shared prefix once and keeps its keys and values once for the whole
batch. Each row's own tokens go to a key/value buffer preallocated for prompt plus answer and
written in place: no per-step concatenation, no per-row copy of the prefix. An attention function
registered with transformers' ``AttentionInterface`` (``ATTENTION``) attends each query to the
prefix and to its own row, masked by position, so sliding windows are exact with any padding. A
row that finishes is refilled from the waiting prompts at the next step (continuous batching), and
tokens and kept distributions stay on the model's device until their row finishes.

An averaged teacher (``group`` > 1) shows each input under several contexts that share only the chat header;
a routed one (``routes``: the context each prompt shows) one context per input. Each context's own tokens (after
the common prefix) run once: their keys and values are copied into a row's first slots when it is filled, and
only the input's tokens run. Before, every input ran its contexts again (an averaged SQL teacher of 4 contexts
on 80 inputs: 489 s on the dynamic loop, 52.5 s here, EXPERIMENTS.md 6.5; a routed one of 4 contexts on 32
inputs: 4.25x the loop's tokens/s, BENCHMARKS.md).

    with inference_mode():
        outs = generate(model, tokenizer, prompts, max_new_tokens=64, batch_size=32, device="cpu", distributions=128)

``decoding.generate(..., engine="static")`` runs it; the default is still the loop over Hugging Face's
``DynamicCache`` (``decoding.generate`` says why). Results are the same: greedy tokens equal,
log-probs to float tolerance (``tests/test_engine.py``, on the tiny families and on SmolLM2).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from tqdm.auto import tqdm
from transformers import AttentionInterface, DynamicCache, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from .decoding import Generation, Prefix, answer_text, choose_token, ends_here, mean_over_contexts, stop_strings
from .targets import topk_with_tail
from .views import stop_ids

ATTENTION = "internalize_prefix"  # the attention implementation registered below
ON_DEVICE_BYTES = 1 << 30  # kept distributions larger than this wait on the CPU instead


class KVBuffer:
    """Keys and values: the shared prefix's once ``[1, Hkv, P, D]`` per layer, and each row's preallocated
    ``[rows, Hkv, length + 1, D]`` (the last slot is scratch, written by padding and idle rows, never read).

    Row ``r``'s slot ``j`` holds the token at position ``P + j``. Before each forward, ``set_call`` says which rows
    the call runs (``index``; None: all), the slot each query token writes (``slots`` [n, T]) and how many leading
    slots the queries may see (``span``); ``update`` (called by every attention layer) writes in place."""

    def __init__(self, rows: int, length: int, prefix: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None):
        self.rows, self.length = rows, length
        self.prefix = prefix or {}
        self.prefix_len = next(iter(self.prefix.values()))[0].shape[2] if self.prefix else 0
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.index: torch.Tensor | None = None
        self.slots = torch.zeros(0, 0, dtype=torch.long)
        self.span = 0
        self._masks: dict[int | None, torch.Tensor] = {}

    @property
    def scratch(self) -> int:
        return self.length

    def set_call(self, slots: torch.Tensor, span: int, index: torch.Tensor | None = None) -> None:
        self.slots, self.span, self.index = slots, span, index
        self._masks = {}

    def get_seq_length(self, layer_idx: int = 0) -> int:  # read by some models when no positions are given
        return self.prefix_len + self.span

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args, **kwargs,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this call's ``keys``/``values`` [n, Hkv, T, D] at their slots; return the rows' visible slots."""
        k, v = self._layer(layer_idx, keys, values)
        rows = self.index if self.index is not None else torch.arange(self.rows, device=keys.device)
        k[rows[:, None], :, self.slots] = keys.transpose(1, 2)
        v[rows[:, None], :, self.slots] = values.transpose(1, 2)
        k, v = k[:, :, : self.span], v[:, :, : self.span]
        if self.index is not None:
            k, v = k[self.index], v[self.index]
        return k, v

    def _layer(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's row buffers, allocated at first use like ``keys``/``values`` ([..., Hkv, T, D])."""
        if layer not in self.keys:
            shape = (self.rows, keys.shape[-3], self.length + 1, keys.shape[-1])
            self.keys[layer], self.values[layer] = keys.new_zeros(shape), values.new_zeros(shape)
        return self.keys[layer], self.values[layer]

    def copy_in(self, rows: torch.Tensor, kv: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Write precomputed keys and values ``[Hkv, c, D]`` per layer (a context's) into slots ``0..c-1`` of
        ``rows``: those rows' tokens from position ``P`` to ``P + c - 1``."""
        for layer, (keys, values) in kv.items():
            k, v = self._layer(layer, keys, values)
            k[rows, :, : keys.shape[1]] = keys
            v[rows, :, : values.shape[1]] = values

    def mask(self, window: int | None) -> torch.Tensor:
        """Which keys each query sees, ``[n, 1, 1, T, P + span]``: the prefix, then its own row.

        A query at slot s sees its row's slots j <= s and the whole prefix; with a sliding ``window``, only keys
        less than ``window`` positions back (the row's slot j is position P + j, the prefix's slot i position i)."""
        if window not in self._masks:
            q = self.slots[:, :, None]  # [n, T, 1]
            keys = torch.arange(-self.prefix_len, self.span, device=q.device)  # prefix slots count back from -1
            seen = keys <= q
            if window is not None:
                seen &= (q - keys) < window
            self._masks[window] = seen[:, None, None]
        return self._masks[window]

    def select(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (in that order): the batch shrinks once nothing waits."""
        for layer in self.keys:
            self.keys[layer] = self.keys[layer].index_select(0, rows)
            self.values[layer] = self.values[layer].index_select(0, rows)
        self.rows = len(rows)


_BUFFER: ContextVar[KVBuffer | None] = ContextVar("internalize_kv_buffer", default=None)


def prefix_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                     sliding_window: int | None = None, softcap: float | None = None, **kwargs,
                     ) -> tuple[torch.Tensor, None]:
    """Attention of ``query`` [n, H, T, D] to the shared prefix and to each row's own ``key``/``value``
    [n, Hkv, S, D] (from ``KVBuffer.update``), one softmax over both, in fp32. Returns [n, T, H, D].

    Every query sees the whole prefix unless a sliding window or a logit soft-cap says otherwise, so the prefix
    part is one fused attention of all rows' queries against the one prefix (no mask, no score tensor kept), and
    the row part a small masked one; the two are joined by their log-sum-exps. With a window or a soft-cap, the
    scores over prefix and row are formed together and masked (``_joint``); with a soft-cap, even with no prefix."""
    buffer = _BUFFER.get()
    if buffer is None:
        raise RuntimeError(f"the {ATTENTION!r} attention runs only inside internalize.engine.generate")
    if kwargs.get("s_aux") is not None:
        raise NotImplementedError("attention sinks are not supported by the generation engine; use engine='dynamic'")
    n, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    scaling = dim**-0.5 if scaling is None else scaling
    q = query.reshape(n, kv_heads, heads // kv_heads * length, dim)  # query heads grouped by the key head they read
    if softcap is not None or (buffer.prefix_len and sliding_window is not None):
        out = _joint(buffer, module.layer_idx, q, key, value, scaling, sliding_window, softcap)
    else:
        own = buffer.mask(sliding_window)[..., buffer.prefix_len :]  # [n, 1, 1, T, S]: the row's own slots
        own = own.expand(n, 1, heads // kv_heads, length, -1).flatten(2, 3)
        out, lse = _attend(q, key, value, scaling, own)
        if buffer.prefix_len:
            pk, pv = buffer.prefix[module.layer_idx]
            flat = q.transpose(0, 1).reshape(1, kv_heads, -1, dim)  # every row's queries against the one prefix
            shared, shared_lse = _attend(flat, pk, pv, scaling)
            shared = shared[0].view(kv_heads, n, -1, dim).transpose(0, 1)
            shared_lse = shared_lse[0].view(kv_heads, n, -1).transpose(0, 1)
            total = torch.logaddexp(lse, shared_lse)
            out = out * (lse - total).exp()[..., None] + shared.float() * (shared_lse - total).exp()[..., None]
    return out.to(value.dtype).view(n, heads, length, dim).transpose(1, 2).contiguous(), None


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float, seen: torch.Tensor | None = None,
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of ``q`` [B, Hkv, L, D] over ``k``/``v`` [B, Hkv, S, D] where ``seen`` [B, 1, L, S]
    (None: everywhere): the output [B, Hkv, L, D] and each query's log-sum-exp [B, Hkv, L], both fp32. Unmasked on
    the CPU, PyTorch's fused flash attention (no [L, S] scores held)."""
    if seen is None and q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, scale=scaling)
        return out.float(), lse.float()
    scores = torch.matmul(q, k.transpose(2, 3)).float() * scaling
    if seen is not None:
        scores = scores.masked_fill(~seen, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    return torch.matmul((scores - lse[..., None]).exp().to(v.dtype), v).float(), lse


def _joint(buffer: KVBuffer, layer: int, q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float,
           window: int | None, softcap: float | None) -> torch.Tensor:
    """``prefix_attention`` with the prefix's and the row's scores formed together, soft-capped and masked by
    position (a sliding window may hide part of the prefix): [n, Hkv, groups * T, D] in fp32."""
    n, kv_heads, rows, dim = q.shape
    length = buffer.slots.shape[1]
    scores = torch.matmul(q, key.transpose(2, 3))
    if buffer.prefix_len:
        pk, pv = buffer.prefix[layer]
        flat = q.transpose(0, 1).reshape(kv_heads, n * rows, dim)  # every row against the one prefix
        shared = torch.matmul(flat, pk[0].transpose(1, 2)).view(kv_heads, n, rows, -1).transpose(0, 1)
        scores = torch.cat([shared, scores], dim=-1)
    scores = scores.float() * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.view(n, kv_heads, rows // length, length, -1).masked_fill(~buffer.mask(window), float("-inf"))
    probs = torch.softmax(scores, dim=-1).view(n, kv_heads, rows, -1).to(value.dtype)
    out = torch.matmul(probs[..., buffer.prefix_len :], value).float()
    if not buffer.prefix_len:
        return out
    p = probs[..., : buffer.prefix_len].transpose(0, 1).reshape(kv_heads, n * rows, -1)
    return out + torch.matmul(p, pv[0]).view(kv_heads, n, rows, dim).transpose(0, 1).float()


AttentionInterface.register(ATTENTION, prefix_attention)


def supported(model: PreTrainedModel) -> bool:
    """Whether the model's attention goes through ``AttentionInterface`` (else ``engine='dynamic'`` runs)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(base, "_supports_attention_backend", False))


@contextmanager
def use_engine_attention(model: PreTrainedModel) -> Iterator[None]:
    """Every config the model's modules read switched to ``ATTENTION`` for the duration, then restored."""
    configs = {id(c): c for m in model.modules() if isinstance(c := getattr(m, "config", None), PretrainedConfig)}
    saved = [(c, c._attn_implementation_internal) for c in configs.values()]
    for config, _ in saved:
        config._attn_implementation_internal = ATTENTION
    try:
        yield
    finally:
        for config, implementation in saved:
            config._attn_implementation_internal = implementation


def _forward(model: PreTrainedModel, buffer: KVBuffer, tokens: torch.Tensor, slots: torch.Tensor, span: int,
             index: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [n, V] after the last column of ``tokens`` [n, T], whose keys go to ``slots`` [n, T]."""
    buffer.set_call(slots, span, index)
    positions = buffer.prefix_len + slots.clamp(max=buffer.length - 1)
    token = _BUFFER.set(buffer)
    try:
        out = model(input_ids=tokens, position_ids=positions, cache=buffer, use_cache=True, logits_to_keep=1)
    finally:
        _BUFFER.reset(token)
    return out.logits[:, -1]


def prefill(model: PreTrainedModel, ids: Sequence[int], device: torch.device | str,
            ) -> dict[int, tuple[torch.Tensor, torch.Tensor]] | None:
    """The prefix's keys and values per layer, ``[1, Hkv, P, D]`` each (None for no prefix), computed by the model's
    own attention (one unpadded sequence: its masks, sliding windows included, are exact)."""
    if not ids:
        return None
    out = model(input_ids=torch.tensor([ids], device=device), cache=DynamicCache(), use_cache=True, logits_to_keep=1)
    return {i: (layer.keys, layer.values) for i, layer in enumerate(out.cache.layers)}


def context_ids(prompts: Sequence[Sequence[int]], kinds: Sequence[int], skip: int) -> list[tuple[int, ...]]:
    """Each context's own tokens, ``kinds[i]`` being the context prompt ``i`` shows (0, 1, ...): the common prefix
    of the prompts showing context ``c`` after the ``skip`` tokens all prompts share, leaving at least one token of
    each prompt."""
    return [Prefix.shared([p[skip:] for p, k in zip(prompts, kinds, strict=True) if k == c]).ids
            for c in range(max(kinds, default=-1) + 1)]


def context_kinds(prompts: int, group: int, routes: Sequence[int] | None) -> list[int]:
    """The context each of ``prompts`` prompts shows: the ``g``-th of each ``group`` (averaged contexts), else
    ``routes`` (a routed teacher's), else one context for all."""
    if group > 1:
        return [g for _ in range(prompts // group) for g in range(group)]
    if routes is not None:
        if len(routes) != prompts or min(routes, default=0) < 0:
            raise ValueError(f"routes: one context index (>= 0) per prompt, {prompts} in all; got {len(routes)}")
        return list(routes)
    return [0] * prompts


def prefill_context(model: PreTrainedModel, ids: Sequence[int], prefix: dict[int, tuple[torch.Tensor, torch.Tensor]]
                    | None, device: torch.device | str) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Keys and values ``[Hkv, c, D]`` per layer of a context's own tokens ``ids``, run once after the shared
    ``prefix`` by this engine's attention (call under ``use_engine_attention``); ``KVBuffer.copy_in`` writes them
    into a row."""
    buffer = KVBuffer(1, len(ids), prefix)
    _forward(model, buffer, torch.tensor([ids], device=device), torch.arange(len(ids), device=device)[None], len(ids))
    return {layer: (buffer.keys[layer][0, :, : len(ids)], buffer.values[layer][0, :, : len(ids)])
            for layer in buffer.keys}


class _Kept:
    """Each unit's generated tokens and kept distributions, on the device until the unit finishes."""

    def __init__(self, units: int, steps: int, device: torch.device | str):
        self.tokens = torch.zeros(units, steps, dtype=torch.long, device=device)
        self.logp: torch.Tensor | None = None
        self.top: torch.Tensor | None = None
        self.steps = steps

    def write(self, units: torch.Tensor, steps: torch.Tensor, chosen: torch.Tensor,
              kept: tuple[torch.Tensor, torch.Tensor | None] | None) -> None:
        self.tokens[units, steps] = chosen
        if kept is None:
            return
        if self.logp is None:  # allocated at the first step, once the kept width is known
            n, width = self.tokens.shape[0], kept[0].shape[-1]
            on = chosen.device if n * self.steps * width * 4 <= ON_DEVICE_BYTES else torch.device("cpu")
            self.logp = torch.zeros(n, self.steps, width, dtype=torch.float32, device=on)
            if kept[1] is not None:
                self.top = torch.zeros(n, self.steps, kept[1].shape[-1], dtype=torch.long, device=on)
        on = self.logp.device
        self.logp[units.to(on), steps.to(on)] = kept[0].to(on)
        if self.top is not None:
            self.top[units.to(on), steps.to(on)] = kept[1].to(on)

    def take(self, unit: int, count: int) -> tuple[list[int], torch.Tensor | None, torch.Tensor | None]:
        """Unit ``unit``'s first ``count`` tokens and distributions, on the CPU."""
        logp = None if self.logp is None else self.logp[unit, :count].to("cpu", copy=True)  # the slot will be reused
        top = None if self.top is None else self.top[unit, :count].to("cpu", copy=True)
        return self.tokens[unit, :count].tolist(), logp, top

    def select(self, units: torch.Tensor) -> None:
        self.tokens = self.tokens.index_select(0, units)
        if self.logp is not None:
            self.logp = self.logp.index_select(0, units.to(self.logp.device))
        if self.top is not None:
            self.top = self.top.index_select(0, units.to(self.top.device))


def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Sequence[int]],
             max_new_tokens: int, batch_size: int, device: torch.device | str, do_sample: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, num_samples: int = 1, distributions: int | None = None,
             group: int = 1, desc: str = "generate", share_prefix: bool = True, progress: bool = True,
             routes: Sequence[int] | None = None, until: Sequence[re.Pattern[str] | None] | None = None,
             ) -> list[list[Generation]]:
    """``decoding.generate``'s contract (see there), run by this engine: ``batch_size`` inputs (times
    ``num_samples``, each with ``group`` context rows) decode at once, and a finished one's rows take the next
    waiting input at the next step. Inputs are taken shortest prompt first (measured a little faster on the main
    job than longest first). Each context (``context_kinds``) runs once after the shared prefix."""
    stops, strings, pad = stop_ids(tokenizer), stop_strings(model), tokenizer.pad_token_id or 0
    stop = torch.tensor(stops, device=device)
    inputs = len(prompts) // group
    results: list[list[Generation]] = [[] for _ in range(inputs)]
    if not inputs:
        return results
    prefix_ids = Prefix.shared(prompts, share_prefix).ids
    skip = len(prefix_ids)
    kinds = context_kinds(len(prompts), group, routes)
    contexts = context_ids(prompts, kinds, skip) if share_prefix else [()] * (max(kinds) + 1)
    order = sorted(range(inputs), key=lambda i: max(map(len, prompts[i * group : (i + 1) * group])))
    waiting = deque(i for i in order for _ in range(num_samples))
    width = min(batch_size * num_samples, len(waiting))  # units (input, sample) decoding at once
    length = max(len(p) for p in prompts) - skip + max_new_tokens
    bar = tqdm(total=len(waiting), desc=desc, unit="answer", disable=None if progress else True)
    prefix = prefill(model, prefix_ids, device)
    with use_engine_attention(model):
        context_kv = [prefill_context(model, ids, prefix, device) if ids else {} for ids in contexts]
        buffer = KVBuffer(width * group, length, prefix)
        kept = _Kept(width, max_new_tokens, device)
        holder: list[int | None] = [None] * width  # the input each unit slot decodes (None: free)
        count = [0] * width  # tokens generated per unit slot
        filled = [0] * (width * group)  # slots written per row
        logits: torch.Tensor | None = None  # [rows, V] the next-token logits of every row
        while waiting or any(h is not None for h in holder):
            new = [u for u in range(width) if holder[u] is None][: len(waiting)]
            if new:  # refill free unit slots: each row's context copied in, the rest of its prompt run, left-padded
                for u in new:
                    holder[u], count[u] = waiting.popleft(), 0
                rows = [u * group + g for u in new for g in range(group)]
                shown = [holder[u] * group + g for u in new for g in range(group)]  # the prompt of each row
                for c, kv in enumerate(context_kv):
                    if kv and (mine := [row for row, i in zip(rows, shown, strict=True) if kinds[i] == c]):
                        buffer.copy_in(torch.tensor(mine, device=device), kv)
                own = [prompts[i][skip + len(contexts[kinds[i]]) :] for i in shown]
                columns = max(map(len, own))
                tokens = torch.full((len(rows), columns), pad, dtype=torch.long)
                slots = torch.full((len(rows), columns), buffer.scratch, dtype=torch.long)
                for r, (row, i, ids) in enumerate(zip(rows, shown, own, strict=True)):
                    first = len(contexts[kinds[i]])  # the slot after the row's context
                    tokens[r, columns - len(ids) :] = torch.tensor(ids)
                    slots[r, columns - len(ids) :] = torch.arange(first, first + len(ids))
                    filled[row] = first + len(ids)
                fresh = _forward(model, buffer, tokens.to(device), slots.to(device), max(filled[r] for r in rows),
                                 torch.tensor(rows, device=device))
                if logits is None:
                    logits = fresh.new_zeros(width * group, fresh.shape[-1])
                logits[torch.tensor(rows, device=device)] = fresh
            units = [u for u in range(width) if holder[u] is not None]
            unit_idx = torch.tensor(units, device=device)
            row_idx = (unit_idx[:, None] * group + torch.arange(group, device=device)).flatten()
            logp = mean_over_contexts(torch.log_softmax(logits[row_idx].float(), dim=-1), group)
            chosen = choose_token(logp, do_sample, temperature, top_p)
            steps = torch.tensor([count[u] for u in units], device=device)
            kept.write(unit_idx, steps, chosen, topk_with_tail(logp, distributions) if distributions is not None else None)
            done = torch.isin(chosen, stop).tolist()
            going = []
            for u, finished in zip(units, done, strict=True):
                count[u] += 1
                finished = finished or count[u] == max_new_tokens
                if (strings or until is not None) and not finished:  # distributions move once, when it finishes
                    finished = ends_here(tokenizer, kept.tokens[u, : count[u]].tolist(), stops, strings,
                                         until and until[holder[u]])
                if finished:
                    ids, logp_u, top_u = kept.take(u, count[u])
                    text, ended = answer_text(tokenizer, ids, stops, strings)
                    results[holder[u]].append(Generation(text, ended, tuple(ids), logp_u, top_u))
                    holder[u] = None
                    bar.update()
                else:
                    going.append(u)
            if not going:
                continue
            chosen = chosen[[units.index(u) for u in going]]
            if not waiting and len(going) <= width // 2:  # nothing waits: shrink the batch to the units still going
                keep = torch.tensor(going, device=device)
                buffer.select((keep[:, None] * group + torch.arange(group, device=device)).flatten())
                kept.select(keep)
                filled = [filled[u * group + g] for u in going for g in range(group)]
                count, holder = [count[u] for u in going], [holder[u] for u in going]
                going, width = list(range(len(going))), len(going)
            # one decode step for every row; rows of free or finished units write to the scratch slot
            tokens = torch.full((width * group,), pad, dtype=torch.long, device=device)
            slots = [buffer.scratch] * (width * group)
            going_rows = [u * group + g for u in going for g in range(group)]
            tokens[torch.tensor(going_rows, device=device)] = chosen.repeat_interleave(group)
            for row in going_rows:
                slots[row] = filled[row]
                filled[row] += 1
            span = max(filled[row] for row in going_rows)
            logits = _forward(model, buffer, tokens[:, None], torch.tensor(slots, device=device)[:, None], span)
    bar.close()
    return results


