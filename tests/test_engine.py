"""engine.py: the generation engine equals today's DynamicCache loop, with the prefix stored once, a preallocated
cache written in place, finished rows refilled from waiting prompts, and the model's attention restored."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from conftest import TINY_INPUTS, perturb_lora
from test_families import FAMILIES, PROMPT, TOK, build

from internalize import engine
from internalize.config import ModelConfig, PromptConfig
from internalize.decoding import Prefix, generate
from internalize.models import inference_mode, make_student
from internalize.views import prompt_ids

CPU = torch.device("cpu")
LORA = ModelConfig(name="unused", finetune="lora", lora_r=4, lora_alpha=8)
# log-probs: the shared prefix goes through PyTorch's fused CPU attention, whose fast exp differs from plain
# softmax by up to 4.3e-5 on an AMD EPYC (AVX-512, no AMX) and 7.6e-5 on AMX (test_decoding); same tokens always
CLOSE = {"atol": 1e-4, "rtol": 1e-5}


def _student(tiny):
    model, tok = tiny
    student = make_student(model, LORA)
    perturb_lora(student, 0.3)
    return student.eval(), tok


def _prompts(tok, context: str = "Be brief and kind."):
    prompt = PromptConfig(context=context, demonstrations=[{"input": "2+2?", "output": "4"}])
    return [prompt_ids(tok, x, prompt) for x in TINY_INPUTS]


def _same(static, dynamic, ordered: bool = True):
    """Same tokens, texts and ends; log-probs and kept ids to float tolerance."""
    assert len(static) == len(dynamic)
    for mine, theirs in zip(static, dynamic, strict=True):
        if not ordered:  # samples of one input may finish in another order
            mine, theirs = sorted(mine, key=lambda g: g.ids), sorted(theirs, key=lambda g: g.ids)
        assert [(g.ids, g.text, g.finished) for g in mine] == [(g.ids, g.text, g.finished) for g in theirs]
        for a, b in zip(mine, theirs, strict=True):
            if b.logp is not None:
                torch.testing.assert_close(a.logp, b.logp, **CLOSE)
                assert (a.top is None and b.top is None) or torch.equal(a.top, b.top)


@pytest.mark.parametrize(("batch_size", "distributions", "share"), [
    (4, 8, True),  # 12 inputs through 4 rows: finished rows are refilled, then the batch shrinks
    (12, 8, True),  # all at once
    (1, 0, True),  # one row, full-vocabulary distributions
    (5, None, False),  # no prefix kept, no distributions
])
def test_static_equals_dynamic(tiny, batch_size, distributions, share):
    student, tok = _student(tiny)
    prompts = _prompts(tok)
    with inference_mode(student):
        runs = [generate(student, tok, prompts, max_new_tokens=10, batch_size=batch_size, device=CPU,
                         distributions=distributions, share_prefix=share, engine=e) for e in ("static", "dynamic")]
    _same(*runs)
    assert len({g[0].ids for g in runs[0]}) > 3 and len({len(g[0].ids) for g in runs[0]}) > 2  # answers differ


def test_static_equals_dynamic_with_contexts_averaged_and_several_samples(tiny):
    student, tok = _student(tiny)
    contexts = [_prompts(tok, c) for c in ("Be brief.", "Answer in one long sentence, please, with care.")]
    grouped = [p for pair in zip(*contexts, strict=True) for p in pair]  # each input under both contexts
    with inference_mode(student):
        runs = [generate(student, tok, grouped, max_new_tokens=8, batch_size=3, device=CPU, distributions=4, group=2,
                         num_samples=2, engine=e) for e in ("static", "dynamic")]
    _same(*runs)
    assert all(len(s) == 2 for s in runs[0])


def test_each_averaged_context_runs_once(tiny, monkeypatch):
    """Averaged contexts share only the header: each context's own tokens run once, copied into every row that
    shows it; the rows run only the input's tokens (before, each row ran its whole context again)."""
    student, tok = _student(tiny)
    contexts = [_prompts(tok, c) for c in ("Be brief.", "Answer in one long sentence, please, with care.")]
    grouped = [p for pair in zip(*contexts, strict=True) for p in pair]
    skip = len(Prefix.shared(grouped))
    own = engine.context_ids(grouped, engine.context_kinds(len(grouped), 2, None), skip)
    assert [len(c) for c in own] == [len(Prefix.shared(c)) - skip for c in contexts] and min(map(len, own)) > 10
    calls: list[tuple[int, int]] = []  # (rows, query length) of each forward
    real = engine._forward
    monkeypatch.setattr(engine, "_forward", lambda m, b, tokens, *a, **k: calls.append(tuple(tokens.shape))
                        or real(m, b, tokens, *a, **k))
    with inference_mode(student):
        generate(student, tok, grouped, max_new_tokens=8, batch_size=3, device=CPU, group=2, engine="static")
    assert calls[:2] == [(1, len(own[0])), (1, len(own[1]))]  # each context once, first
    inputs = max(len(p) for p in grouped) - skip - min(map(len, own))
    assert all(t <= inputs for _, t in calls[2:])  # the rows run their input only


def test_each_routed_context_runs_once_and_answers_as_the_dynamic_loop(tiny, monkeypatch):
    """A routed teacher (input i under context i mod n): each context's own tokens run once, the rows only their
    input, with the dynamic loop's answers; the routes must name one context per prompt."""
    student, tok = _student(tiny)
    contexts = [_prompts(tok, c) for c in ("Be brief.", "Answer in one long sentence, please, with care.")]
    kinds = [i % 2 for i in range(len(contexts[0]))]
    routed = [contexts[k][i] for i, k in enumerate(kinds)]
    skip = len(Prefix.shared(routed))
    own = engine.context_ids(routed, kinds, skip)
    assert min(map(len, own)) > 10
    calls: list[tuple[int, int]] = []
    real = engine._forward
    monkeypatch.setattr(engine, "_forward", lambda m, b, tokens, *a, **k: calls.append(tuple(tokens.shape))
                        or real(m, b, tokens, *a, **k))
    with inference_mode(student):
        runs = [generate(student, tok, routed, max_new_tokens=8, batch_size=3, device=CPU, distributions=4,
                         engine=e, routes=kinds) for e in ("static", "dynamic")]
        assert calls[:2] == [(1, len(own[0])), (1, len(own[1]))]
        assert all(t <= max(len(p) for p in routed) - skip - min(map(len, own)) for _, t in calls[2:])
        _same(*runs)
        with pytest.raises(ValueError, match="one context index"):
            generate(student, tok, routed, max_new_tokens=2, batch_size=3, device=CPU, engine="static", routes=[0])


def test_sampling_is_seeded_and_scores_the_sampled_tokens(tiny):
    student, tok = _student(tiny)
    prompts = _prompts(tok)
    with inference_mode(student):
        runs = []
        for _ in range(2):
            torch.manual_seed(3)
            runs.append(generate(student, tok, prompts, max_new_tokens=8, batch_size=3, device=CPU, do_sample=True,
                                 temperature=1.5, distributions=0, num_samples=2, engine="static"))
    _same(*runs)
    for samples in runs[0]:
        for g in samples:  # full-vocabulary log-probs: each sampled token's own is among them
            assert torch.all(g.logp.gather(-1, torch.tensor(g.ids)[:, None]) > -float("inf"))
    assert len({g.ids for s in runs[0] for g in s}) > len(prompts)  # samples differ


@pytest.mark.parametrize("contexts", ["one", "averaged", "routed"])
@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "gpt2"])
def test_static_equals_dynamic_on_each_family(family, contexts):
    """Every family, the 16-token sliding windows included (the engine masks by position: the prefix stays shared);
    two contexts, averaged (each input under both) or routed (input i under context i mod 2): each context's keys
    and values are copied into its rows."""
    model = build(family)
    prompts = [prompt_ids(TOK, x, PROMPT) for x in TINY_INPUTS[:6]]
    assert len(Prefix.shared(prompts)) > 150
    group, routes = 1, None
    if contexts != "one":  # the second context: the first with a longer context text
        other = dataclasses.replace(PROMPT, context="Think it over. " + PROMPT.context)
        pairs = list(zip(prompts, [prompt_ids(TOK, x, other) for x in TINY_INPUTS[:6]], strict=True))
        group, routes = (2, None) if contexts == "averaged" else (1, [i % 2 for i in range(len(pairs))])
        prompts = ([p for pair in pairs for p in pair] if group == 2
                   else [pair[k] for pair, k in zip(pairs, routes, strict=True)])
        kinds = engine.context_kinds(len(prompts), group, routes)
        assert min(map(len, engine.context_ids(prompts, kinds, len(Prefix.shared(prompts))))) > 150
    with inference_mode(model):
        runs = [generate(model, TOK, prompts, max_new_tokens=8, batch_size=4, device="cpu", distributions=8,
                         group=group, engine=e, routes=routes) for e in ("static", "dynamic")]
    _same(*runs)


def test_the_prefix_is_kept_once_and_the_cache_written_in_place(tiny, monkeypatch):
    student, tok = _student(tiny)
    prompts = _prompts(tok)
    prefix = len(Prefix.shared(prompts))
    seen: list[tuple[int, tuple, int, tuple]] = []  # per layer-0 write: buffer storage, shape, prefix storage, shape
    real = engine.KVBuffer.update

    def update(self, keys, values, layer_idx, *args, **kwargs):
        out = real(self, keys, values, layer_idx, *args, **kwargs)
        if layer_idx == 0 and self.prefix:
            pk = self.prefix[0][0]
            seen.append((self.keys[0].data_ptr(), tuple(self.keys[0].shape), pk.data_ptr(), tuple(pk.shape)))
        return out

    monkeypatch.setattr(engine.KVBuffer, "update", update)
    with inference_mode(student):
        generate(student, tok, prompts, max_new_tokens=10, batch_size=4, device=CPU, engine="static")
    assert len(seen) > 10
    for before, after in zip(seen, seen[1:], strict=False):  # a new buffer only when the batch shrank once nothing waited
        assert before[0] == after[0] or after[1][0] < before[1][0]
    rows, kv_heads, slots, dim = seen[0][1]
    assert rows == 4 and slots < prefix  # the rows hold their own tokens only, not the prefix
    assert {(s[2], s[3]) for s in seen} == {(seen[0][2], (1, kv_heads, prefix, dim))}  # one prefix for every row


def test_finished_rows_are_refilled_from_waiting_inputs(tiny, monkeypatch):
    student, tok = _student(tiny)
    prompts = _prompts(tok)
    calls: list[tuple[int, int]] = []  # (rows, query length) of each forward
    real = engine._forward
    monkeypatch.setattr(engine, "_forward", lambda m, b, tokens, *a, **k: calls.append(tuple(tokens.shape))
                        or real(m, b, tokens, *a, **k))
    with inference_mode(student):
        out = generate(student, tok, prompts, max_new_tokens=10, batch_size=3, device=CPU, engine="static")
    lengths = [len(s[0].ids) for s in out]
    decode = [c for c in calls if c[1] == 1]
    refills = [c for c in calls[1:] if c[1] > 1]  # after the first three prompts
    assert refills and all(c[0] < 3 for c in refills)  # single rows refilled while the others decode
    # fewer decode steps than batches of 3 that run until their longest answer (today's loop, prompts by length)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    batches = [[lengths[i] for i in order[k : k + 3]] for k in range(0, len(order), 3)]
    assert len(decode) < sum(max(b) for b in batches) - len(batches)


def test_large_distributions_wait_on_the_cpu_and_stay_equal(tiny, monkeypatch):
    student, tok = _student(tiny)
    prompts = _prompts(tok)[:5]
    with inference_mode(student):
        on_device = generate(student, tok, prompts, max_new_tokens=6, batch_size=2, device=CPU, distributions=0,
                             engine="static")
        monkeypatch.setattr(engine, "ON_DEVICE_BYTES", 0)
        on_cpu = generate(student, tok, prompts, max_new_tokens=6, batch_size=2, device=CPU, distributions=0,
                          engine="static")
    _same(on_device, on_cpu)


def test_the_model_attention_is_restored_even_after_an_error(tiny, monkeypatch):
    student, tok = _student(tiny)
    before = student.config._attn_implementation
    monkeypatch.setattr(engine, "choose_token", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with inference_mode(student), pytest.raises(RuntimeError, match="boom"):
        generate(student, tok, _prompts(tok)[:2], max_new_tokens=4, batch_size=2, device=CPU, engine="static")
    assert student.config._attn_implementation == before != engine.ATTENTION


def test_the_attention_refuses_to_run_outside_the_engine(tiny):
    model, _ = tiny
    q = torch.zeros(1, 4, 1, 8)
    with pytest.raises(RuntimeError, match="only inside"):
        engine.prefix_attention(model.model.layers[0].self_attn, q, q, q, None)


def test_an_unknown_engine_is_refused(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="'static' or 'dynamic'"):
        generate(model, tok, [[1, 2]], max_new_tokens=2, batch_size=1, device=CPU, engine="paged")


def test_static_equals_dynamic_with_stop_strings(tiny):
    student, tok = _student(tiny)
    student.generation_config.stop_strings = ["k", "ab"]  # rows end mid-answer at a string, not a token
    with inference_mode(student):
        runs = [generate(student, tok, _prompts(tok), max_new_tokens=10, batch_size=4, device=CPU, distributions=4,
                         engine=e) for e in ("static", "dynamic")]
    _same(*runs)
    assert any(g[0].finished for g in runs[0])


@pytest.mark.parametrize(("window", "softcap"), [(None, None), (6, None), (None, 5.0)])
def test_prefix_attention_is_one_softmax_over_prefix_and_row(window, softcap):
    """The fused prefix part joined to the masked row part by log-sum-exp (or, with a window or soft-cap, the scores
    formed together) equals plain attention over each row's prefix + own keys, masked by slot."""
    torch.manual_seed(0)
    n, heads, kv_heads, T, S, P, D = 3, 4, 2, 2, 5, 7, 8
    prefix = {0: (torch.randn(1, kv_heads, P, D), torch.randn(1, kv_heads, P, D))}
    buffer = engine.KVBuffer(n, S, prefix)
    slots = torch.tensor([[3, 4], [0, 1], [5, 5]])  # the last row: padding queries at the scratch slot
    buffer.set_call(slots, S)
    query, key, value = torch.randn(n, heads, T, D), torch.randn(n, kv_heads, S, D), torch.randn(n, kv_heads, S, D)
    token = engine._BUFFER.set(buffer)
    try:
        out, _ = engine.prefix_attention(type("Layer", (), {"layer_idx": 0})(), query, key, value, None,
                                         sliding_window=window, softcap=softcap)
    finally:
        engine._BUFFER.reset(token)
    keys = torch.cat([prefix[0][0].expand(n, -1, -1, -1), key], 2).repeat_interleave(heads // kv_heads, 1)
    values = torch.cat([prefix[0][1].expand(n, -1, -1, -1), value], 2).repeat_interleave(heads // kv_heads, 1)
    scores = query @ keys.transpose(2, 3) * D**-0.5
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    position = torch.arange(P + S)  # the prefix at 0..P-1, row slot j at P + j
    seen = (position <= (P + slots)[:, None, :, None]) & ((P + slots)[:, None, :, None] - position < (window or P + S + 1))
    expected = torch.softmax(scores.masked_fill(~seen, float("-inf")), -1) @ values
    torch.testing.assert_close(out, expected.transpose(1, 2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("engine_name", ["static", "dynamic"])
def test_until_cuts_an_answer_once_its_key_is_settled_and_keeps_whether_it_matches(tiny, engine_name):
    student, tok = _student(tiny)
    prompts = _prompts(tok)
    with inference_mode(student):
        full = generate(student, tok, prompts, max_new_tokens=12, batch_size=3, device=CPU, engine=engine_name)
        # per input a key its answer holds near the start, near the end, or not at all
        keys = [re.compile(re.escape(g[0].text[:2]) if i % 3 == 0 else re.escape(g[0].text[-2:]) if i % 3 == 1
                           else "no such answer") for i, g in enumerate(full)]
        short = generate(student, tok, prompts, max_new_tokens=12, batch_size=3, device=CPU, engine=engine_name,
                         until=keys)
    assert sum(len(g[0].text) > 3 for g in full[::3]) >= 2  # keys found early: these answers have room to be cut
    for key, (f,), (s,) in zip(keys, full, short, strict=True):
        assert f.ids[: len(s.ids)] == s.ids  # the same answer, cut
        assert (key.search(s.text) is None) == (key.search(f.text) is None)
    assert sum(len(g[0].ids) for g in short) < sum(len(g[0].ids) for g in full)
    assert [g[0].ids for g in short[2::3]] == [g[0].ids for g in full[2::3]]  # never found: never cut
