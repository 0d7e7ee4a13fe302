"""decoding.py: shared-prefix KV cache, left-padded batches, answer logits and our own decode loop."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import TINY_INPUTS, perturb_lora

from internalize import engine as static_engine
from internalize.config import ModelConfig, PromptConfig
from internalize.decoding import (
    Batch,
    Generation,
    Prefix,
    answer_logits,
    answer_text,
    batches,
    choose_token,
    collate,
    common_prefix_length,
    generate,
    mean_over_contexts,
    settled,
)
from internalize.models import inference_mode, make_student
from internalize.targets import topk_with_tail
from internalize.views import View, answer_ids, prompt_ids

LORA = ModelConfig(name="unused", finetune="lora", lora_r=4, lora_alpha=8)
DEMOS = [{"input": "2+2?", "output": "4"}, {"input": "3+3?", "output": "6"}]
INPUTS = ["Hi", "What is the capital of France?", "x y z"]
ANSWERS = ["Hello. Over.", "Paris", "abc def gh"]
# prompts of different lengths on which the perturbed student (below) finishes at different steps, or not at all
GEN_INPUTS = TINY_INPUTS
CPU = torch.device("cpu")


def _student(tiny):
    model, tok = tiny
    student = make_student(model, LORA)
    perturb_lora(student, 0.3)
    student.eval()
    return student, tok


def _views(tok, inputs, answers, prompt):
    t_views = [View(prompt_ids(tok, x, prompt), answer_ids(tok, a)) for x, a in zip(inputs, answers, strict=True)]
    s_views = [View(prompt_ids(tok, x), v.answer_ids) for x, v in zip(inputs, t_views, strict=True)]
    return t_views, s_views


def _reference_logits(model, view: View) -> torch.Tensor:
    """Unbatched, uncached, full logits at positions P - 1 + j: the logits predicting answer token j."""
    seq = torch.tensor([view.prompt_ids + view.answer_ids])
    with torch.no_grad():
        logits = model(input_ids=seq, use_cache=False).logits[0]
    P, A = len(view.prompt_ids), len(view.answer_ids)
    return logits[P - 1 : P - 1 + A]


# --- common_prefix_length and Prefix ---------------------------------------------------------------------


@pytest.mark.parametrize(("sequences", "expected"), [
    ([], 0),
    ([(1, 2, 3)], 3),
    ([(1, 2, 3), (1, 2, 3)], 3),
    ([(1, 2), ()], 0),
    ([(), (1, 2)], 0),
    ([(1, 2), (2, 2)], 0),
    ([(1, 2, 3), (1, 2, 4), (1, 2)], 2),
    ([(1, 2, 3, 4), (1, 2, 3, 4), (1, 9, 3, 4)], 1),
    ([(1, 2), (1, 2, 3)], 2),
])
def test_common_prefix_length(sequences, expected):
    assert common_prefix_length(sequences) == expected


@pytest.mark.parametrize(("prompts", "expected"), [
    ([], ()),
    ([(7,)], ()),  # a single token cannot be shared: it must be run
    ([(1, 2, 3)], (1, 2)),
    ([(1, 2, 3), (1, 2, 3)], (1, 2)),
    ([(1, 2, 3, 4), (1, 2)], (1,)),  # one prompt is a prefix of the other
    ([(1, 2, 3, 4), (1, 2, 3, 5)], (1, 2, 3)),
    ([(1, 2), ()], ()),
    ([(1, 2), (2, 2)], ()),
])
def test_prefix_shared_leaves_a_token_of_every_prompt(prompts, expected):
    prefix = Prefix.shared(prompts)
    assert prefix.ids == expected and len(prefix) == len(expected)
    assert prefix.cache is None
    for p in prompts:
        assert tuple(p[: len(prefix)]) == prefix.ids
        assert len(p) == 0 or len(p) > len(prefix)


def test_prefix_cache_can_be_disabled():
    prompts = [(1, 2, 3, 4), (1, 2, 3, 5)]
    assert len(Prefix.shared(prompts)) == 3
    assert len(Prefix.shared(prompts, share=True)) == 3
    prefix = Prefix.shared(prompts, share=False)
    assert prefix.ids == () and len(prefix) == 0 and prefix.cache is None


def test_empty_prefix_prefills_to_nothing(tiny):
    model, _ = tiny
    prefix = Prefix().prefill(model, CPU)
    assert prefix.cache is None and prefix.expanded(model, 3) is None


def test_teacher_prompts_share_chat_header_context_and_demonstrations(tiny):
    model, tok = tiny
    prompt = PromptConfig(context="Answer briefly.", position="system", demonstrations=DEMOS)
    prompts = [prompt_ids(tok, x, prompt) for x in INPUTS]
    prefix = Prefix.shared(prompts)
    text = tok.decode(list(prefix.ids))
    assert text.startswith("<|im_start|>system\nAnswer briefly.<|im_end|>") and "3+3?" in text and "6" in text
    assert all(tok.decode(list(p[len(prefix):])).endswith("<|im_start|>assistant\n") for p in prompts)
    prefilled = prefix.prefill(model, CPU)
    assert prefilled.ids == prefix.ids
    for layer in prefilled.cache.layers:
        assert layer.keys.shape[0] == 1 and layer.keys.shape[-2] == len(prefix)
    expanded = prefilled.expanded(model, 4)
    assert expanded.get_seq_length() == len(prefix)
    for mine, theirs in zip(expanded.layers, prefilled.cache.layers, strict=True):
        assert mine.keys.shape[0] == 4
        torch.testing.assert_close(mine.keys, theirs.keys.expand(4, -1, -1, -1))
        torch.testing.assert_close(mine.values, theirs.values.expand(4, -1, -1, -1))


# --- collate and batches -----------------------------------------------------------------------------------


def test_collate_synthetic_layout():
    views = [View((1, 2, 3), (7, 8)), View((1,), (9, 9, 9)), View((4, 5), (6,))]
    batch = collate(views, pad_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 7, 8], [0, 1, 9, 9, 9], [0, 0, 4, 5, 6]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [0, 1, 1, 1, 1], [0, 0, 1, 1, 1]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 0, 1, 2, 3], [0, 0, 0, 1, 2]]
    assert batch.keep == 4  # the longest answer, plus the prompt's last token that predicts its first token
    assert batch.answer_pos.tolist() == [[1, 2, 0], [0, 1, 2], [2, 0, 0]]
    assert batch.answer_ids.tolist() == [[7, 8, 0], [9, 9, 9], [6, 0, 0]]
    assert batch.answer_mask.tolist() == [[True, True, False], [True, True, True], [True, False, False]]


def test_collate_synthetic_after_a_prefix():
    views = [View((1, 2, 3), (7,)), View((1, 2, 5, 6), (8, 9))]
    batch = collate(views, pad_id=0, prefix_len=2)
    assert batch.input_ids.tolist() == [[0, 0, 3, 7], [5, 6, 8, 9]]  # the prefix's tokens are not in the batch
    assert batch.attention_mask.tolist() == [[1, 1, 0, 0, 1, 1], [1, 1, 1, 1, 1, 1]]  # prefix, then the rest
    assert batch.position_ids.tolist() == [[2, 2, 2, 3], [2, 3, 4, 5]]  # continue after the prefix
    assert batch.keep == 3
    assert batch.answer_pos.tolist() == [[1, 0], [0, 1]]
    assert batch.answer_ids.tolist() == [[7, 0], [8, 9]]
    assert batch.answer_mask.tolist() == [[True, False], [True, True]]


def test_batch_padding_share():
    views = [View((1, 2, 3), (7, 8)), View((1,), (9, 9, 9)), View((4, 5), (6,))]
    assert collate(views, pad_id=0).padding_share == pytest.approx(3 / 15)
    # prefix slots never count, padded or not
    after = collate([View((1, 2, 3), (7,)), View((1, 2, 5, 6), (8, 9))], pad_id=0, prefix_len=2)
    assert after.padding_share == pytest.approx(2 / 8)
    assert collate([View((1, 2), (3,)), View((4, 5), (6,))], pad_id=0).padding_share == 0.0


@pytest.mark.parametrize("shared", [False, True])
def test_collate_places_answer_tokens_after_each_prompt(tiny, shared):
    _, tok = tiny
    prompt = PromptConfig(context="Answer briefly, then say Over.", position="system")
    for views in _views(tok, INPUTS, ANSWERS, prompt):
        n = len(Prefix.shared([v.prompt_ids for v in views])) if shared else 0
        assert not shared or n > 0
        batch = collate(views, tok.pad_token_id, n)
        S = max(len(v.prompt_ids) + len(v.answer_ids) for v in views) - n
        A = max(len(v.answer_ids) for v in views)
        assert batch.input_ids.shape == batch.position_ids.shape == (len(views), S)
        assert batch.attention_mask.shape == (len(views), n + S)
        assert batch.answer_ids.shape == batch.answer_mask.shape == batch.answer_pos.shape == (len(views), A)
        assert batch.keep == A + 1
        offset = S - batch.keep  # index in input_ids of kept logit 0
        for b, v in enumerate(views):
            seq = list(v.prompt_ids[n:] + v.answer_ids)
            pad, a = S - len(seq), len(v.answer_ids)
            assert batch.input_ids[b].tolist() == [tok.pad_token_id] * pad + seq
            assert batch.attention_mask[b].tolist() == [1] * n + [0] * pad + [1] * len(seq)
            assert batch.position_ids[b, pad:].tolist() == list(range(n, n + len(seq)))
            for j in range(a):
                assert batch.answer_ids[b, j].item() == v.answer_ids[j] == batch.input_ids[b, S - a + j].item()
                # the kept logit at answer_pos predicts answer token j: it sits one position before it
                assert batch.answer_pos[b, j].item() + offset == S - a + j - 1
            assert batch.answer_mask[b].tolist() == [True] * a + [False] * (A - a)


def test_batches_are_length_sorted_and_cover_all_views():
    views = [View(tuple(range(n)), (1,)) for n in (5, 1, 3, 4, 2)]
    groups = batches(views, 2, pad_id=0)
    indices = [i for idx, _ in groups for i in idx]
    assert sorted(indices) == list(range(5))
    lengths = [len(views[i].prompt_ids) for i in indices]
    assert lengths == sorted(lengths)
    assert [len(idx) for idx, _ in groups] == [2, 2, 1]
    for idx, batch in groups:
        assert batch.input_ids.shape[0] == len(idx)
        expected = collate([views[i] for i in idx], 0)
        assert torch.equal(batch.input_ids, expected.input_ids)


def test_batches_pass_the_prefix_length_on():
    views = [View((1, 2) + tuple(range(3, n)), (9,)) for n in (6, 4, 5)]
    for idx, batch in batches(views, 2, pad_id=0, prefix_len=2):
        assert batch.attention_mask.shape[1] == 2 + batch.input_ids.shape[1]
        assert batch.input_ids[-1, 0].item() == views[idx[-1]].prompt_ids[2]  # the longest starts after the prefix


def test_batch_to_device_keeps_keep():
    batch = collate([View((1, 2), (3,))], pad_id=0)
    moved = batch.to("cpu")
    assert isinstance(moved, Batch)
    assert moved.keep == batch.keep and torch.equal(moved.input_ids, batch.input_ids)
    assert torch.equal(moved.position_ids, batch.position_ids) and torch.equal(moved.answer_mask, batch.answer_mask)


# --- answer_logits -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("position", ["system", "before_input", "after_input"])
def test_answer_logits_batched_equal_unbatched(tiny, position):
    model, tok = tiny
    prompt = PromptConfig(context="Answer briefly.", position=position, demonstrations=DEMOS[:1])
    for views in _views(tok, INPUTS, ANSWERS, prompt):
        assert len({len(v.prompt_ids) for v in views}) == len(views)  # prompts of different lengths
        batch = collate(views, tok.pad_token_id)
        with torch.no_grad():
            logits = answer_logits(model, batch)
        assert logits.shape == (len(views), batch.answer_ids.shape[1], len(tok))
        for b, v in enumerate(views):
            expected = _reference_logits(model, v)
            torch.testing.assert_close(logits[b, : len(v.answer_ids)], expected, atol=1e-5, rtol=1e-5)


def test_answer_logits_predict_the_answer_for_the_tiny_model(tiny):
    model, tok = tiny
    views = [View(prompt_ids(tok, x), answer_ids(tok, "okay")) for x in INPUTS]
    batch = collate(views, tok.pad_token_id)
    with torch.no_grad():
        logits = answer_logits(model, batch)
    # the tiny model was trained to answer "okay": each logit predicts the answer token at its position
    assert torch.equal(logits.argmax(-1), batch.answer_ids)


def test_answer_logits_single_view(tiny):
    model, tok = tiny
    view = View(prompt_ids(tok, "Hi"), answer_ids(tok, "Yo"))
    batch = collate([view], tok.pad_token_id)
    assert batch.keep == len(view.answer_ids) + 1
    with torch.no_grad():
        logits = answer_logits(model, batch)
    torch.testing.assert_close(logits[0], _reference_logits(model, view), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("position", ["system", "before_input", "after_input"])
def test_answer_logits_with_the_prefix_cache_equal_uncached(tiny, position):
    student, tok = _student(tiny)  # prompt-dependent outputs: a misplaced position or mask would show
    prompt = PromptConfig(context="Answer briefly, then say Over.", position=position, demonstrations=DEMOS)
    views = _views(tok, INPUTS, ANSWERS, prompt)[0]
    assert len({len(v.answer_ids) for v in views}) == len(views)
    prefix = Prefix.shared([v.prompt_ids for v in views])
    assert len(prefix) > len("<|im_start|>user\n2+2?")  # the demonstrations are shared, at least
    with torch.no_grad():
        prefix = prefix.prefill(student, CPU)
        cached_batch = collate(views, tok.pad_token_id, len(prefix))
        cached = answer_logits(student, cached_batch, prefix)
        again = answer_logits(student, cached_batch, prefix)  # the prefix's cache is not grown by a batch
        uncached_batch = collate(views, tok.pad_token_id)
        uncached = answer_logits(student, uncached_batch)
    assert cached_batch.input_ids.shape[1] == uncached_batch.input_ids.shape[1] - len(prefix)
    assert torch.equal(cached_batch.answer_mask, uncached_batch.answer_mask)
    mask = uncached_batch.answer_mask
    torch.testing.assert_close(cached[mask], uncached[mask], atol=2e-5, rtol=1e-5)  # logits up to ~8 in size
    torch.testing.assert_close(again, cached, atol=0, rtol=0)
    for b, v in enumerate(views):
        torch.testing.assert_close(cached[b, : len(v.answer_ids)], _reference_logits(student, v), atol=2e-5, rtol=1e-5)


def test_answer_logits_and_generate_leave_no_hook_on_the_model(tiny):
    """The contiguous-input hook on the output projection lives for one forward pass, never on the caller's model."""
    model, tok = tiny
    head = model.get_output_embeddings()
    assert head is not None and not head._forward_pre_hooks
    views = [View(prompt_ids(tok, x), answer_ids(tok, a)) for x, a in zip(INPUTS, ANSWERS, strict=True)]
    with torch.no_grad():
        logits = answer_logits(model, collate(views, tok.pad_token_id))
    assert logits.shape[0] == len(views)
    assert not head._forward_pre_hooks
    with inference_mode(model):
        out = generate(model, tok, [v.prompt_ids for v in views], max_new_tokens=6, batch_size=2, device=CPU)
    assert len(out) == len(views)
    assert not head._forward_pre_hooks
    bad = collate([View((len(tok) + 5,), (1,))], tok.pad_token_id)  # an id past the vocabulary: the forward raises
    with pytest.raises(IndexError), torch.no_grad():
        answer_logits(model, bad)
    assert not head._forward_pre_hooks  # removed on the way out too

def _lora_grads(model) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return grads


def test_answer_logits_gradients_through_the_prefix(tiny):
    student, tok = _student(tiny)
    prompt = PromptConfig(context="Answer briefly.", position="system", demonstrations=DEMOS[:1])
    views = _views(tok, INPUTS, ANSWERS, prompt)[0]
    assert torch.is_grad_enabled()

    def loss(prefix: Prefix) -> torch.Tensor:
        batch = collate(views, tok.pad_token_id, len(prefix))
        lse = answer_logits(student, batch, prefix.prefill(student, CPU)).logsumexp(-1)
        return (lse * batch.answer_mask).sum() / batch.answer_mask.sum()  # padding answer slots are masked out

    prefix = Prefix.shared([v.prompt_ids for v in views])
    assert len(prefix) > 0
    with_prefix = loss(prefix)
    assert with_prefix.requires_grad
    with_prefix.backward()
    cached = _lora_grads(student)
    without = loss(Prefix())
    without.backward()
    uncached = _lora_grads(student)
    torch.testing.assert_close(with_prefix, without, atol=1e-5, rtol=1e-6)
    assert cached.keys() == uncached.keys() and cached and all("lora_" in n for n in cached)
    assert all(g.abs().sum() > 0 for g in cached.values())  # the prefix's own LoRA weights get gradients too
    for name in cached:  # float32 sums in another order (and other CPU kernels) move single entries by ~1e-5
        error = (cached[name] - uncached[name]).norm() / uncached[name].norm()
        assert error < 1e-4, (name, error.item())  # the same gradient; a wrong one would be off by O(1)


# --- topk_with_tail and choose_token --------------------------------------------------------------------------------


def test_topk_with_tail():
    logp = torch.log_softmax(torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.0, 0.0, 5.0, 1.0]]), dim=-1)
    full, none = topk_with_tail(logp, 0)
    assert none is None and torch.equal(full, logp)
    assert topk_with_tail(logp, 4)[1] is None
    kept, ids = topk_with_tail(logp, 2)
    assert ids.tolist() == [[0, 2], [2, 3]]
    assert kept.shape == (2, 3)
    torch.testing.assert_close(kept[:, :2], logp.gather(1, ids))
    torch.testing.assert_close(kept.logsumexp(-1), torch.zeros(2), atol=1e-6, rtol=0)  # top-k plus tail sum to 1


def test_topk_tail_of_a_peaked_distribution_is_exact():
    logits = torch.tensor([[30.0, 0.0, 0.0, 0.0], [30.0, 10.0, 0.0, 0.0]], dtype=torch.float64)
    kept, _ = topk_with_tail(torch.log_softmax(logits.float(), dim=-1), 1)
    exact = torch.log_softmax(logits, dim=-1)[:, 1:].logsumexp(-1)  # 3e-13 and 2e-9: below fp32's 1 - sum
    torch.testing.assert_close(kept[:, 1].double(), exact, atol=1e-4, rtol=0)


def test_choose_greedy_is_argmax():
    logp = torch.log_softmax(torch.randn(5, 11, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert torch.equal(choose_token(logp, False, 1.0, 1.0), logp.argmax(-1))
    assert torch.equal(choose_token(logp, False, 0.1, 0.5), logp.argmax(-1))  # sampling settings are ignored


def test_choose_tiny_top_p_keeps_only_the_argmax():
    logp = torch.log_softmax(torch.randn(8, 11, generator=torch.Generator().manual_seed(0)), dim=-1)
    torch.manual_seed(0)
    for _ in range(20):
        assert torch.equal(choose_token(logp, True, 1.0, 1e-6), logp.argmax(-1))


def test_choose_top_p_samples_from_the_nucleus():
    logp = torch.tensor([[0.05, 0.5, 0.15, 0.3]]).log().expand(4000, -1)
    torch.manual_seed(0)
    drawn = choose_token(logp, True, 1.0, 0.7)  # 0.5 then 0.3 reach 0.7: tokens 1 and 3 only
    assert set(drawn.tolist()) == {1, 3}
    assert 0.55 < (drawn == 1).float().mean().item() < 0.70  # renormalised: 0.5 / 0.8
    everything = choose_token(logp, True, 1.0, 1.0)
    assert set(everything.tolist()) == {0, 1, 2, 3}


def test_choose_sampling_respects_the_seed():
    logp = torch.log_softmax(torch.zeros(64, 50), dim=-1)
    torch.manual_seed(3)
    first = choose_token(logp, True, 0.7, 0.9)
    torch.manual_seed(3)
    second = choose_token(logp, True, 0.7, 0.9)
    third = choose_token(logp, True, 0.7, 0.9)
    assert torch.equal(first, second)
    assert not torch.equal(second, third)
    assert len(set(first.tolist())) > 10  # a uniform distribution is sampled, not argmaxed


# --- generate --------------------------------------------------------------------------------------------------


def test_generate_finishes_and_strips(tiny):
    model, tok = tiny
    prompts = [prompt_ids(tok, x) for x in ("hi", "What is the capital of France?", "x")]
    with inference_mode(model):
        out = generate(model, tok, prompts, max_new_tokens=8, batch_size=2, device=CPU)
    okay = tuple(answer_ids(tok, "okay"))  # through the end-of-turn token
    assert out == [[Generation("okay", True, okay)]] * 3
    assert all(samples[0].logp is None and samples[0].top is None for samples in out)


def test_generate_unfinished(tiny):
    model, tok = tiny
    with inference_mode(model):
        out = generate(model, tok, [prompt_ids(tok, "hi")], max_new_tokens=2, batch_size=1, device=CPU)
    assert out == [[Generation("ok", False, tuple(answer_ids(tok, "ok")[:-1]))]]


@pytest.mark.parametrize(("strings", "text", "generated"), [
    (["ka"], "o", "oka"), (["y", "k"], "o", "ok"), (["ay"], "ok", "okay"), (["zz"], "okay", None)])
def test_generate_stops_at_the_first_stop_string(tiny, strings, text, generated):
    model, tok = tiny
    model.generation_config.stop_strings = strings
    prompts = [prompt_ids(tok, x) for x in ("hi", "What is the capital of France?", "x")]
    try:
        with inference_mode(model):
            out = generate(model, tok, prompts, max_new_tokens=8, batch_size=2, device=CPU)
    finally:
        model.generation_config.stop_strings = None
    # the text before the string; generation ends as soon as the string is complete (None: at the end of turn)
    ids = tuple(answer_ids(tok, "okay")) if generated is None else tuple(tok.convert_tokens_to_ids(list(generated)))
    assert out == [[Generation(text, True, ids)]] * 3


def test_a_stop_string_finishes_an_answer_the_length_limit_would_cut(tiny):
    model, tok = tiny
    with inference_mode(model):
        assert not generate(model, tok, [prompt_ids(tok, "hi")], 2, 1, CPU)[0][0].finished
        model.generation_config.stop_strings = ["k"]
        try:
            assert generate(model, tok, [prompt_ids(tok, "hi")], 2, 1, CPU) == [[Generation("o", True, (
                tok.convert_tokens_to_ids("o"), tok.convert_tokens_to_ids("k")))]]
        finally:
            model.generation_config.stop_strings = None


def test_answer_text_cuts_at_the_earliest_stop_string_or_token(tiny):
    _, tok = tiny
    ids = tok("ab\n\nInput: c", add_special_tokens=False).input_ids
    eot = tok.eos_token_id
    assert answer_text(tok, ids, [eot]) == ("ab\n\nInput: c", False)
    assert answer_text(tok, ids, [eot], ["\n\n"]) == ("ab", True)
    assert answer_text(tok, ids, [eot], ["Input:", "\n\n"]) == ("ab", True)  # the earliest, whatever the order
    assert answer_text(tok, ids[:2] + [eot] + ids[2:], [eot], ["\n\n"]) == ("ab", True)  # the token comes first


def test_generate_batched_equals_unbatched_with_left_padding(tiny):
    student, tok = _student(tiny)
    texts = ["a", "What is 1 plus 2?", "Tell me a joke, please! Or two."]
    prompts = [prompt_ids(tok, x) for x in texts]
    with inference_mode(student):
        batched = generate(student, tok, prompts, max_new_tokens=6, batch_size=3, device=CPU)
        alone = [generate(student, tok, [p], max_new_tokens=6, batch_size=1, device=CPU)[0] for p in prompts]
    assert batched == alone
    assert len({samples[0].text for samples in batched}) > 1  # prompts of different lengths gave different outputs


def test_generate_batched_equals_one_at_a_time_when_rows_finish_early(tiny):
    student, tok = _student(tiny)
    prompts = [prompt_ids(tok, x) for x in GEN_INPUTS]
    with inference_mode(student):
        batched = [s[0] for s in generate(student, tok, prompts, max_new_tokens=6, batch_size=6, device=CPU,
                                          distributions=4)]
        alone = [generate(student, tok, [p], max_new_tokens=6, batch_size=1, device=CPU, distributions=4)[0][0]
                 for p in prompts]
    # rows left their batch at different steps, and some ran to max_new_tokens
    assert len({len(g.ids) for g in batched if g.finished}) > 1
    assert any(g.finished for g in batched) and not all(g.finished for g in batched)
    for mine, single in zip(batched, alone, strict=True):
        assert (mine.text, mine.finished, mine.ids) == (single.text, single.finished, single.ids)
        assert torch.equal(mine.top, single.top)
        torch.testing.assert_close(mine.logp, single.logp, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("engine", ["static", "dynamic"])
def test_generate_without_the_prefix_cache_is_the_same(tiny, monkeypatch, engine):
    prefixes = []  # the prefix each generate call shares
    if engine == "dynamic":
        real = Prefix.prefill
        monkeypatch.setattr(Prefix, "prefill", lambda self, *a, **k: prefixes.append(len(self)) or real(self, *a, **k))
    else:
        real_prefill = static_engine.prefill
        monkeypatch.setattr(static_engine, "prefill", lambda m, ids, d: prefixes.append(len(ids)) or real_prefill(m, ids, d))
    student, tok = _student(tiny)
    prompt = PromptConfig(context="Be brief.", position="system", demonstrations=DEMOS[:1])
    prompts = [prompt_ids(tok, x, prompt) for x in GEN_INPUTS]
    assert len(Prefix.shared(prompts)) > 0
    with inference_mode(student):
        cached = generate(student, tok, prompts, max_new_tokens=8, batch_size=4, device=CPU, distributions=4,
                          engine=engine)
        uncached = generate(student, tok, prompts, max_new_tokens=8, batch_size=4, device=CPU, distributions=4,
                            share_prefix=False, engine=engine)
    assert prefixes[0] == len(Prefix.shared(prompts)) and prefixes[1:] == [0]  # the second ran every prompt whole
    assert [[g.ids for g in s] for s in cached] == [[g.ids for g in s] for s in uncached]
    assert len({s[0].ids for s in cached}) > 1
    for (mine,), (theirs,) in zip(cached, uncached, strict=True):  # the engine's prefix goes through PyTorch's fused
        torch.testing.assert_close(mine.logp, theirs.logp, atol=1e-4, rtol=1e-4)  # CPU attention (a faster exp)


def test_generate_greedy_equals_hugging_face_generate(tiny):
    student, tok = _student(tiny)
    prompt = PromptConfig(context="Be brief.", position="system")
    prompts = [prompt_ids(tok, x) for x in GEN_INPUTS] + [prompt_ids(tok, x, prompt) for x in GEN_INPUTS[:2]]
    eos = tok.eos_token_id
    with inference_mode(student):
        ours = generate(student, tok, prompts, max_new_tokens=8, batch_size=3, device=CPU)
        padded = collate([View(p, ()) for p in prompts], tok.pad_token_id)
        theirs = student.generate(input_ids=padded.input_ids, attention_mask=padded.attention_mask, do_sample=False,
                                  max_new_tokens=8, use_cache=False, eos_token_id=eos, pad_token_id=tok.pad_token_id)
    theirs = theirs[:, padded.input_ids.shape[1]:].tolist()
    for (gen,), row in zip(ours, theirs, strict=True):
        expected = row[: row.index(eos) + 1] if eos in row else row
        assert list(gen.ids) == expected
        assert gen.finished == (eos in row)
    assert len({g.ids for (g,) in ours}) > 2


@pytest.mark.parametrize("k", [5, 0])
def test_generate_distributions_are_those_of_the_scored_view(tiny, k):
    student, tok = _student(tiny)
    prompts = [prompt_ids(tok, x) for x in GEN_INPUTS]
    with inference_mode(student):
        out = generate(student, tok, prompts, max_new_tokens=6, batch_size=4, device=CPU, distributions=k)
    gens = [s[0] for s in out]
    assert any(g.finished for g in gens) and not all(g.finished for g in gens)
    for prompt, gen in zip(prompts, gens, strict=True):
        # one distribution per generated token, through the end-of-turn token, finished or not
        assert gen.logp.shape == (len(gen.ids), k + 1 if k else len(tok))
        assert gen.finished == (gen.ids[-1] == tok.eos_token_id) and (gen.finished or len(gen.ids) == 6)
        view = View(tuple(prompt), gen.ids)
        with torch.no_grad():
            reference = torch.log_softmax(answer_logits(student, collate([view], tok.pad_token_id))[0], dim=-1)
        expected, top = topk_with_tail(reference, k)
        torch.testing.assert_close(gen.logp, expected, atol=1e-4, rtol=1e-4)
        if k:
            assert gen.top.shape == (len(gen.ids), k) and torch.equal(gen.top, top)
        else:
            assert gen.top is None
        # log-probabilities: full rows, or top-k plus the tail, each sum to 1
        torch.testing.assert_close(gen.logp.logsumexp(-1), torch.zeros(len(gen.ids)), atol=1e-5, rtol=0)
        # greedy: every generated token is the argmax of its distribution
        best = gen.top[:, 0] if k else gen.logp.argmax(-1)
        assert best.tolist() == list(gen.ids)


def test_generate_several_samples(tiny):
    model, tok = tiny
    prompts = [prompt_ids(tok, x) for x in ("hi", "hello")]

    def sample(seed: int) -> list[list[Generation]]:
        torch.manual_seed(seed)
        return generate(model, tok, prompts, max_new_tokens=8, batch_size=2, device=CPU, do_sample=True,
                        temperature=2.0, num_samples=3)

    with inference_mode(model):
        out, again, other = sample(0), sample(0), sample(1)
        greedy = generate(model, tok, prompts, max_new_tokens=8, batch_size=2, device=CPU, num_samples=2)
    assert [len(samples) for samples in out] == [3, 3]
    assert out == again and out != other  # the seed fixes the samples
    for samples in out:
        assert len({gen.ids for gen in samples}) > 1  # independent samples of one prompt
        for gen in samples:
            assert isinstance(gen.text, str) and gen.finished == (tok.eos_token_id in gen.ids)
            assert 0 < len(gen.ids) <= 8 and gen.logp is None
    assert greedy == [[Generation("okay", True, tuple(answer_ids(tok, "okay")))] * 2] * 2


def test_generate_sampled_distributions_score_the_sampled_tokens(tiny):
    student, tok = _student(tiny)
    prompts = [prompt_ids(tok, x) for x in GEN_INPUTS[:3]]
    torch.manual_seed(0)
    with inference_mode(student):
        out = generate(student, tok, prompts, max_new_tokens=6, batch_size=3, device=CPU, do_sample=True,
                       temperature=1.5, num_samples=2, distributions=0)
    for prompt, samples in zip(prompts, out, strict=True):
        for gen in samples:
            view = View(tuple(prompt), gen.ids)
            with torch.no_grad():
                reference = torch.log_softmax(answer_logits(student, collate([view], tok.pad_token_id))[0], dim=-1)
            # log-probs at temperature 1 (as scored), whatever the sampling temperature
            torch.testing.assert_close(gen.logp, reference, atol=1e-4, rtol=1e-4)


def test_mean_over_contexts_is_the_log_of_the_mean_probability():
    logp = torch.log_softmax(torch.randn(6, 3, 5), -1)
    mean = mean_over_contexts(logp, 3)
    assert mean.shape == (2, 3, 5)
    torch.testing.assert_close(mean, logp.exp().view(2, 3, 3, 5).mean(1).log())
    assert mean_over_contexts(logp, 1) is logp


def test_batches_keep_each_group_together_and_in_order():
    views = [View((1,) * n, (2,)) for n in (5, 1, 1, 9, 3, 3, 2, 2)]
    out = batches(views, 2, 0, group=2)
    assert [idx for idx, _ in out] == [[6, 7, 4, 5], [0, 1, 2, 3]]  # groups sorted by their longest view


def test_generate_group_of_identical_prompts_equals_plain_generate(tiny):
    model, tok = tiny
    prompts = [prompt_ids(tok, x) for x in TINY_INPUTS[:3]]
    with torch.inference_mode():
        plain = generate(model, tok, prompts, 8, 2, CPU, distributions=0)
        grouped = generate(model, tok, [p for p in prompts for _ in range(3)], 8, 2, CPU, distributions=0, group=3)
    for a, b in zip(plain, grouped, strict=True):
        assert a[0].ids == b[0].ids
        torch.testing.assert_close(a[0].logp, b[0].logp, atol=1e-5, rtol=1e-5)


# --- settled: a match that no continuation can take away ------------------------------------------------------


def test_settled_is_a_match_that_no_continuation_can_undo():
    key = re.compile(r"\bParis\b", re.IGNORECASE)
    assert settled(key, "It is paris, of course")
    assert not settled(key, "It is Paris")  # "Parisian" may follow
    assert not settled(key, "It is Parisian") and not settled(key, "It is Par")
    assert not settled(re.compile("Paris$"), "Paris is")  # an end anchor: more text undoes it
    assert not settled(re.compile(r"Paris\Z"), "Paris is")
    assert not settled(re.compile("Paris(?= is)"), "Paris is")  # a lookahead may look past the text
    assert not settled(re.compile("Paris(?! is)"), "Paris i")
    assert settled(re.compile("(?<=is )Paris"), "is Paris.")  # a lookbehind only looks back
    assert not settled(re.compile(r"caf\b"), "caf\ufffd")  # the bytes of an "é" are still coming
    assert settled(re.compile("Paris"), "Paris.")
    assert not settled(re.compile("Paris"), "Paris.", strings=(". Q",))  # a stop string may be starting at the "."
    assert settled(re.compile("Paris"), "Paris..", strings=(". Q",))  # it would cut after the match's next character
    for text in ("Paris. Q", "Paris is"):  # what a settled match says: the whole answer, however it goes on, matches
        for cut in range(len(text) + 1):
            if settled(re.compile("Paris", re.I), text[:cut], strings=(". Q",)):
                assert re.search("Paris", text.split(". Q")[0])
