"""views.py: chat messages, prompt and answer ids, teacher/student views sharing the answer ids; targets.pad_stack."""

from __future__ import annotations

import pytest
import torch

from internalize.config import PromptConfig
from internalize.decoding import collate
from internalize.targets import pad_stack
from internalize.views import View, answer_ids, chat_messages, prompt_ids

DEMOS = [{"input": "2+2?", "output": "4"}, {"input": "3+3?", "output": "6"}]


def test_chat_messages_student_is_the_input_alone():
    assert chat_messages("hi") == [{"role": "user", "content": "hi"}]


def test_chat_messages_system_position():
    prompt = PromptConfig(context="  Be brief.  ", position="system")
    assert chat_messages("hi", prompt) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]


def test_chat_messages_before_input():
    prompt = PromptConfig(context="Be brief.", position="before_input")
    assert chat_messages("hi", prompt) == [{"role": "user", "content": "Be brief.\n\nhi"}]


def test_chat_messages_after_input():
    prompt = PromptConfig(context="Be brief.", position="after_input")
    assert chat_messages("hi", prompt) == [{"role": "user", "content": "hi\n\nBe brief."}]


@pytest.mark.parametrize("position", ["system", "before_input", "after_input"])
def test_chat_messages_demonstrations_come_before_the_input(position):
    prompt = PromptConfig(context="Ctx", position=position, demonstrations=DEMOS)
    messages = chat_messages("5+5?", prompt)
    demo_turns = [
        {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
        {"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"},
    ]
    if position == "system":
        assert messages == [{"role": "system", "content": "Ctx"}, *demo_turns, {"role": "user", "content": "5+5?"}]
    else:
        last = "Ctx\n\n5+5?" if position == "before_input" else "5+5?\n\nCtx"
        assert messages == [*demo_turns, {"role": "user", "content": last}]
    # the context decorates only the real input, never a demonstration
    assert all("Ctx" not in m["content"] for m in messages[-5:-1])


def test_chat_messages_demonstrations_only():
    prompt = PromptConfig(context="", demonstrations=DEMOS[:1])
    assert chat_messages("x", prompt) == [
        {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}, {"role": "user", "content": "x"},
    ]


@pytest.mark.parametrize("position", ["system", "before_input", "after_input"])
def test_demonstration_template_shows_the_demonstrations_as_text_in_the_context(position):
    prompt = PromptConfig(context="Examples:", position=position, demonstrations=DEMOS,
                            demonstration_template="Q: {input}\nA: {output}")
    block = "Examples:\n\nQ: 2+2?\nA: 4\n\nQ: 3+3?\nA: 6"
    expected = {"system": [{"role": "system", "content": block}, {"role": "user", "content": "5+5?"}],
                "before_input": [{"role": "user", "content": f"{block}\n\n5+5?"}],
                "after_input": [{"role": "user", "content": f"5+5?\n\n{block}"}]}[position]
    assert chat_messages("5+5?", prompt) == expected  # no demonstration turns
    no_context = PromptConfig(position="before_input", demonstrations=DEMOS, demonstration_template="{input} = {output}")
    assert chat_messages("5+5?", no_context) == [{"role": "user", "content": "2+2? = 4\n\n3+3? = 6\n\n5+5?"}]


def test_demonstration_template_splits_into_contexts_like_turns():
    prompt = PromptConfig(demonstrations=DEMOS, demonstrations_per_context=1, demonstration_template="{input} {output}")
    assert [chat_messages("x", c)[0]["content"] for c in prompt.split()] == ["2+2? 4", "3+3? 6"]


def test_prompt_ids_render_the_chat_template(tiny):
    _, tok = tiny
    ids = prompt_ids(tok, "Hi!")
    assert tok.decode(list(ids)) == "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    prompt = PromptConfig(context="Be brief.", position="system")
    assert tok.decode(list(prompt_ids(tok, "Hi!", prompt))) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize("position", ["system", "before_input", "after_input"])
def test_teacher_prompt_contains_context_and_student_prompt_does_not(tiny, position):
    _, tok = tiny
    prompt = PromptConfig(context="Always rhyme.", position=position, demonstrations=DEMOS)
    t_text = tok.decode(list(prompt_ids(tok, "Why?", prompt)))
    s_text = tok.decode(list(prompt_ids(tok, "Why?")))
    assert "Always rhyme." in t_text and "Always rhyme." not in s_text
    assert "2+2?" in t_text and "2+2?" not in s_text
    # both end with the same generation prompt, right after the same input
    assert t_text.endswith("<|im_start|>assistant\n") and s_text.endswith("<|im_start|>assistant\n")
    if position == "before_input":
        assert "Always rhyme.\n\nWhy?<|im_end|>" in t_text
    elif position == "after_input":
        assert "Why?\n\nAlways rhyme.<|im_end|>" in t_text
    else:
        assert t_text.startswith("<|im_start|>system\nAlways rhyme.<|im_end|>")


def test_answer_ids_end_with_eos_and_roundtrip(tiny):
    _, tok = tiny
    ids = answer_ids(tok, "Paris. Over.")
    assert ids[-1] == tok.eos_token_id
    assert tok.decode(list(ids[:-1])) == "Paris. Over."
    assert len(ids) == len("Paris. Over.") + 1  # one token per character


def _views(tok, inputs, answers, prompt):
    t_views = [View(prompt_ids(tok, x, prompt), answer_ids(tok, a)) for x, a in zip(inputs, answers, strict=True)]
    s_views = [View(prompt_ids(tok, x), v.answer_ids) for x, v in zip(inputs, t_views, strict=True)]
    return t_views, s_views


INPUTS = ["Hi", "What is the capital of France?", "x y z"]
ANSWERS = ["Hello. Over.", "Paris", "abc def gh"]


def test_teacher_and_student_views_share_answer_ids(tiny):
    _, tok = tiny
    prompt = PromptConfig(context="Be brief.", position="before_input")
    t_views, s_views = _views(tok, INPUTS, ANSWERS, prompt)
    t_batch, s_batch = collate(t_views, tok.pad_token_id), collate(s_views, tok.pad_token_id)
    assert torch.equal(t_batch.answer_ids, s_batch.answer_ids)
    assert torch.equal(t_batch.answer_mask, s_batch.answer_mask)
    for t, s in zip(t_views, s_views, strict=True):
        assert len(t.prompt_ids) > len(s.prompt_ids)


def test_pad_stack():
    rows = [torch.ones(2, 3), torch.full((4, 3), 2.0)]
    out = pad_stack(rows, 5)
    assert out.shape == (2, 5, 3)
    assert (out[0, :2] == 1).all() and (out[0, 2:] == 0).all()
    assert (out[1, :4] == 2).all() and (out[1, 4:] == 0).all()
    ids = pad_stack([torch.tensor([[3, 4]]), torch.tensor([[5, 6], [7, 8]])], 2)
    assert ids.dtype == torch.long and ids.tolist() == [[[3, 4], [0, 0]], [[5, 6], [7, 8]]]


def test_answer_ids_end_with_the_templates_end_of_turn_not_eos():
    """A template that closes assistant turns with a token other than eos_token (Llama 3's <|eot_id|>, Gemma's
    <end_of_turn>): the answer ends with that token; the probe follows a changed chat template."""
    from conftest import build_tiny_tokenizer

    from internalize.views import end_of_turn_id

    tok = build_tiny_tokenizer()
    assert answer_ids(tok, "ok")[-1] == tok.eos_token_id == end_of_turn_id(tok)
    tok.chat_template = tok.chat_template.replace("<|im_end|>", "<unk>")  # stand-in for another end-of-turn token
    assert end_of_turn_id(tok) == tok.convert_tokens_to_ids("<unk>") != tok.eos_token_id
    assert answer_ids(tok, "ok") == (*tok("ok", add_special_tokens=False).input_ids, end_of_turn_id(tok))
