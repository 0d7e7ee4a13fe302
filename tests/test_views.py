"""views.py: chat messages, teacher/student views sharing the answer ids, and aligned answer logits."""

from __future__ import annotations

import pytest
import torch

from internalize.config import TeacherConfig
from internalize.views import (
    View,
    answer_ids,
    answer_logits,
    batches,
    chat_messages,
    collate,
    pad_stack,
    prompt_ids,
)

DEMOS = [{"input": "2+2?", "output": "4"}, {"input": "3+3?", "output": "6"}]


def test_chat_messages_student_is_the_input_alone():
    assert chat_messages("hi") == [{"role": "user", "content": "hi"}]


def test_chat_messages_system_position():
    teacher = TeacherConfig(context="  Be brief.  ", position="system")
    assert chat_messages("hi", teacher) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]


def test_chat_messages_before_input():
    teacher = TeacherConfig(context="Be brief.", position="before_input")
    assert chat_messages("hi", teacher) == [{"role": "user", "content": "Be brief.\n\nhi"}]


def test_chat_messages_after_input():
    teacher = TeacherConfig(context="Be brief.", position="after_input")
    assert chat_messages("hi", teacher) == [{"role": "user", "content": "hi\n\nBe brief."}]


@pytest.mark.parametrize("position", ["system", "before_input", "after_input"])
def test_chat_messages_demonstrations_come_before_the_input(position):
    teacher = TeacherConfig(context="Ctx", position=position, demonstrations=DEMOS)
    messages = chat_messages("5+5?", teacher)
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
    teacher = TeacherConfig(context="", demonstrations=DEMOS[:1])
    assert chat_messages("x", teacher) == [
        {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}, {"role": "user", "content": "x"},
    ]


def test_prompt_ids_render_the_chat_template(tiny):
    _, tok = tiny
    ids = prompt_ids(tok, "Hi!")
    assert tok.decode(list(ids)) == "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    teacher = TeacherConfig(context="Be brief.", position="system")
    assert tok.decode(list(prompt_ids(tok, "Hi!", teacher))) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize("position", ["system", "before_input", "after_input"])
def test_teacher_prompt_contains_context_and_student_prompt_does_not(tiny, position):
    _, tok = tiny
    teacher = TeacherConfig(context="Always rhyme.", position=position, demonstrations=DEMOS)
    t_text = tok.decode(list(prompt_ids(tok, "Why?", teacher)))
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


def _views(tok, inputs, answers, teacher):
    t_views = [View(prompt_ids(tok, x, teacher), answer_ids(tok, a)) for x, a in zip(inputs, answers, strict=True)]
    s_views = [View(prompt_ids(tok, x), v.answer_ids) for x, v in zip(inputs, t_views, strict=True)]
    return t_views, s_views


INPUTS = ["Hi", "What is the capital of France?", "x y z"]
ANSWERS = ["Hello. Over.", "Paris", "abc def gh"]


def test_collate_places_answer_tokens_after_each_prompt(tiny):
    _, tok = tiny
    teacher = TeacherConfig(context="Answer briefly, then say Over.", position="system")
    for views in _views(tok, INPUTS, ANSWERS, teacher):
        batch = collate(views, tok.pad_token_id)
        length = max(len(v.prompt_ids) + len(v.answer_ids) for v in views)
        assert batch.input_ids.shape == (len(views), length)
        assert batch.answer_ids.shape == batch.answer_mask.shape == batch.answer_pos.shape
        offset = length - batch.keep  # absolute position of kept logit 0
        for b, v in enumerate(views):
            P, A = len(v.prompt_ids), len(v.answer_ids)
            assert batch.input_ids[b, :P].tolist() == list(v.prompt_ids)
            for j in range(A):
                assert batch.input_ids[b, P + j].item() == v.answer_ids[j]
                assert batch.answer_ids[b, j].item() == v.answer_ids[j]
                # the kept logit at answer_pos predicts answer token j: absolute position P + j - 1
                assert batch.answer_pos[b, j].item() + offset == P + j - 1
            assert batch.answer_mask[b].tolist() == [True] * A + [False] * (batch.answer_ids.shape[1] - A)
            assert batch.attention_mask[b].tolist() == [1] * (P + A) + [0] * (length - P - A)
            assert (batch.input_ids[b, P + A :] == tok.pad_token_id).all()


def test_teacher_and_student_views_share_answer_ids(tiny):
    _, tok = tiny
    teacher = TeacherConfig(context="Be brief.", position="before_input")
    t_views, s_views = _views(tok, INPUTS, ANSWERS, teacher)
    t_batch, s_batch = collate(t_views, tok.pad_token_id), collate(s_views, tok.pad_token_id)
    assert torch.equal(t_batch.answer_ids, s_batch.answer_ids)
    assert torch.equal(t_batch.answer_mask, s_batch.answer_mask)
    for t, s in zip(t_views, s_views, strict=True):
        assert len(t.prompt_ids) > len(s.prompt_ids)


def _reference_logits(model, view: View) -> torch.Tensor:
    """Unbatched, full logits at positions P - 1 + j: the logits predicting answer token j."""
    seq = torch.tensor([view.prompt_ids + view.answer_ids])
    with torch.no_grad():
        logits = model(input_ids=seq, use_cache=False).logits[0]
    P, A = len(view.prompt_ids), len(view.answer_ids)
    return logits[P - 1 : P - 1 + A]


@pytest.mark.parametrize("position", ["system", "before_input", "after_input"])
def test_answer_logits_batched_equal_unbatched(tiny, position):
    model, tok = tiny
    model.eval()
    teacher = TeacherConfig(context="Answer briefly.", position=position, demonstrations=DEMOS[:1])
    for views in _views(tok, INPUTS, ANSWERS, teacher):
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
    with torch.no_grad():
        logits = answer_logits(model, collate(views, tok.pad_token_id))
    # the tiny model was trained to answer "okay": each logit predicts the answer token at its position
    assert torch.equal(logits.argmax(-1), collate(views, tok.pad_token_id).answer_ids)


def test_answer_logits_single_view(tiny):
    model, tok = tiny
    view = View(prompt_ids(tok, "Hi"), answer_ids(tok, "Yo"))
    batch = collate([view], tok.pad_token_id)
    assert batch.keep == len(view.answer_ids) + 1
    with torch.no_grad():
        logits = answer_logits(model, batch)
    torch.testing.assert_close(logits[0], _reference_logits(model, view), atol=1e-5, rtol=1e-5)


def test_collate_synthetic_positions():
    views = [View((1, 2, 3), (7, 8)), View((1,), (9, 9, 9)), View((4, 5), (6,))]
    batch = collate(views, pad_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 7, 8], [1, 9, 9, 9, 0], [4, 5, 6, 0, 0]]
    assert batch.keep == 5  # from the shortest prompt's last token to the end
    assert batch.answer_pos.tolist() == [[2, 3, 0], [0, 1, 2], [1, 0, 0]]
    assert batch.answer_ids.tolist() == [[7, 8, 0], [9, 9, 9], [6, 0, 0]]
    assert batch.answer_mask.tolist() == [[True, True, False], [True, True, True], [True, False, False]]


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


def test_pad_stack():
    rows = [torch.ones(2, 3), torch.full((4, 3), 2.0)]
    out = pad_stack(rows, 5)
    assert out.shape == (2, 5, 3)
    assert (out[0, :2] == 1).all() and (out[0, 2:] == 0).all()
    assert (out[1, :4] == 2).all() and (out[1, 4:] == 0).all()
    ids = pad_stack([torch.tensor([[3, 4]]), torch.tensor([[5, 6], [7, 8]])], 2)
    assert ids.dtype == torch.long and ids.tolist() == [[[3, 4], [0, 0]], [[5, 6], [7, 8]]]


def test_batch_to_device_keeps_keep():
    batch = collate([View((1, 2), (3,))], pad_id=0)
    moved = batch.to("cpu")
    assert moved.keep == batch.keep and torch.equal(moved.input_ids, batch.input_ids)
