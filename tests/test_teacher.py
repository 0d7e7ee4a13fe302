"""teacher.py: answer extraction and ``answer`` (generate, extract, score) on the tiny model; targets.py's types."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil

import pytest
import torch
from conftest import TINY_ANSWER, TINY_INPUTS

from internalize import cache, engine, teacher
from internalize.config import InternalizeError, PromptConfig, TeacherConfig
from internalize.decoding import Generation
from internalize.runtime import Runtime
from internalize.targets import Reference, Targets
from internalize.targets import topk_with_tail as _topk_with_tail
from internalize.teacher import extract_answer, given_answers, score
from internalize.views import View, answer_ids, prompt_ids

RUNTIME = Runtime.local("cpu")


# --- extract_answer ----------------------------------------------------------------------------


def test_extract_none_is_the_whole_generation():
    assert extract_answer("Paris. Over.", "none", "") == ("", "Paris. Over.")


def test_extract_none_moves_leading_space_into_prefix():
    assert extract_answer("  Paris  ", "none", "") == ("  ", "Paris")


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_extract_none_of_blank_is_none(text):
    assert extract_answer(text, "none", "") is None


def test_extract_regex_group_takes_last_match():
    text = "Answer: 3, no wait. Answer: 42 done"
    prefix, answer = extract_answer(text, "regex", r"Answer: (\d+)")
    assert answer == "42"
    assert prefix == "Answer: 3, no wait. Answer: "
    assert text.startswith(prefix + answer)


def test_extract_regex_without_group_is_the_whole_match():
    prefix, answer = extract_answer("think think 17 then 99!", "regex", r"\d+")
    assert (prefix, answer) == ("think think 17 then ", "99")


def test_extract_regex_is_dotall():
    prefix, answer = extract_answer("step 1\nstep 2\n#### yes\nno", "regex", r"#### (.*)")
    assert answer == "yes\nno"
    assert prefix == "step 1\nstep 2\n#### "


def test_extract_regex_no_match_is_none():
    assert extract_answer("no digits here", "regex", r"\d+") is None


def test_extract_regex_empty_group_is_none():
    assert extract_answer("Answer: ", "regex", r"Answer:(\s*)") is None


def test_extract_regex_with_non_participating_group_is_none():
    assert extract_answer("Answer: ", "regex", r"Answer: (\d+)?") is None


def test_extract_delimiter_takes_text_after_last_occurrence():
    text = "scratch #### 3 more #### 42 "
    prefix, answer = extract_answer(text, "delimiter", "####")
    assert answer == "42"
    assert prefix == "scratch #### 3 more #### "
    assert text.startswith(prefix + answer)


def test_extract_delimiter_missing_or_empty_is_none():
    assert extract_answer("no delimiter", "delimiter", "####") is None
    assert extract_answer("text ####   ", "delimiter", "####") is None


def test_extract_unknown_extractor():
    with pytest.raises(ValueError, match="unknown extractor"):
        extract_answer("x", "json", "")


# --- _topk_with_tail ---------------------------------------------------------------------------


def test_topk_with_tail_shapes_and_mass():
    logp = torch.log_softmax(torch.randn(4, 20, generator=torch.Generator().manual_seed(0)) * 3, -1)
    values, ids = _topk_with_tail(logp, 5)
    assert values.shape == (4, 6) and ids.shape == (4, 5)
    torch.testing.assert_close(values[:, :5], logp.topk(5, -1).values)
    torch.testing.assert_close(values.logsumexp(-1), torch.zeros(4), atol=1e-5, rtol=0)
    tail = logp.scatter(-1, ids, float("-inf")).logsumexp(-1)
    torch.testing.assert_close(values[:, 5], tail, atol=1e-4, rtol=1e-4)


# --- teacher.answer on the tiny model ---------------------------------------------------------------


def _check_aligned(targets: Targets, tok, prompt: PromptConfig) -> None:
    for record, t_view, s_view, answer in zip(targets.records, targets.teacher_views, targets.student_views,
                                              targets.answers, strict=True):
        assert t_view.answer_ids == s_view.answer_ids == answer_ids(tok, answer)
        assert t_view.answer_ids[-1] == tok.eos_token_id
        assert s_view.prompt_ids == prompt_ids(tok, record["input"])
        teacher_prompt = prompt_ids(tok, record["input"], prompt)
        assert t_view.prompt_ids[: len(teacher_prompt)] == teacher_prompt


def test_answer_none_extractor_topk(tiny):
    model, tok = tiny
    prompt = PromptConfig(context="Answer in one word.")
    cfg = TeacherConfig(max_new_tokens=8, top_k=8, batch_size=5)
    records = [{"input": x, "i": i} for i, x in enumerate(TINY_INPUTS[:6])]
    targets = teacher.answer(model, tok, records, prompt, cfg, RUNTIME)
    assert len(targets) == 6 and targets.dropped == {}
    assert targets.answers == [TINY_ANSWER] * 6
    assert Reference.from_targets(targets, len(records)).answers == [TINY_ANSWER] * 6
    assert targets.generations == [TINY_ANSWER] * 6
    assert targets.source == list(range(6))
    assert targets.records == records  # extra fields kept
    _check_aligned(targets, tok, prompt)
    for record, t_view, logp, ids in zip(records, targets.teacher_views, targets.logp, targets.ids, strict=True):
        A = len(t_view.answer_ids)
        assert t_view.prompt_ids == prompt_ids(tok, record["input"], prompt)  # no scratch-pad with extractor none
        assert logp.shape == (A, 9) and ids.shape == (A, 8)
        assert logp.dtype == torch.float32
        assert (logp <= 0).all()
        # top-k log-probs plus the tail are a distribution
        torch.testing.assert_close(logp.logsumexp(-1), torch.zeros(A), atol=1e-4, rtol=0)
        # the greedy answer is the teacher's most likely token at each position
        assert ids[:, 0].tolist() == list(t_view.answer_ids)


def test_the_static_engine_teaches_the_same_targets(tiny, monkeypatch):
    """teacher.engine=static (the generation engine) gives the same answers, views and distributions."""
    from conftest import build_tiny_model

    _, tok = tiny
    model = build_tiny_model(tok, echo=True).eval()  # answers start with the input's first two characters
    ran = []  # the engine's own runs
    real = engine.generate
    monkeypatch.setattr(engine, "generate", lambda *a, **k: ran.append(1) or real(*a, **k))
    prompt = PromptConfig(context="Answer in one word.", demonstrations=[{"input": "2+2?", "output": "4"}])
    records = [{"input": x} for x in TINY_INPUTS]
    got = {e: teacher.answer(model, tok, records, prompt, TeacherConfig(max_new_tokens=16, top_k=8, batch_size=3,
                                                                           engine=e, cache_dir=""), RUNTIME)
           for e in ("dynamic", "static")}
    assert ran == [1]  # once: teacher.engine=static, and only then
    assert got["static"].answers == got["dynamic"].answers and got["static"].source == got["dynamic"].source
    assert len(set(got["static"].generations)) > 2
    assert [v.answer_ids for v in got["static"].teacher_views] == [v.answer_ids for v in got["dynamic"].teacher_views]
    for a, b in zip(got["static"].logp, got["dynamic"].logp, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_answer_logp_equal_the_models_distribution(tiny):
    model, tok = tiny
    prompt = PromptConfig(context="Be brief.", position="after_input")
    cfg = TeacherConfig(max_new_tokens=8, top_k=0, batch_size=3)
    records = [{"input": x} for x in TINY_INPUTS[:3]]
    targets = teacher.answer(model, tok, records, prompt, cfg, RUNTIME)
    assert targets.ids is None
    for view, logp in zip(targets.teacher_views, targets.logp, strict=True):
        seq = torch.tensor([view.prompt_ids + view.answer_ids])
        with torch.no_grad():
            full = torch.log_softmax(model(input_ids=seq).logits[0].float(), -1)
        P, A = len(view.prompt_ids), len(view.answer_ids)
        assert logp.shape == (A, len(tok))
        torch.testing.assert_close(logp, full[P - 1 : P - 1 + A], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logp.exp().sum(-1), torch.ones(A), atol=1e-5, rtol=0)


def test_answer_top_k_covering_the_vocabulary_uses_the_full_form(tiny):
    model, tok = tiny
    cfg = TeacherConfig(max_new_tokens=8, top_k=len(tok))
    targets = teacher.answer(model, tok, [{"input": "hi"}], PromptConfig(context="c"), cfg, RUNTIME)
    assert targets.ids is None
    assert targets.logp[0].shape[-1] == len(tok)


def test_answer_without_a_prompt_is_the_model_alone(tiny):
    """``prompt=None`` (the forgetting check's reference): the teacher sees what the student sees."""
    model, tok = tiny
    records = [{"input": x} for x in TINY_INPUTS[:3]]
    targets = teacher.answer(model, tok, records, None, TeacherConfig(max_new_tokens=8, top_k=4), RUNTIME)
    assert targets.answers == [TINY_ANSWER] * 3
    assert targets.teacher_views == targets.student_views
    assert [v.prompt_ids for v in targets.student_views] == [prompt_ids(tok, r["input"]) for r in records]


def test_answer_delimiter_keeps_scratch_pad_in_teacher_view(tiny):
    model, tok = tiny
    prompt = PromptConfig(context="Think first.")
    cfg = TeacherConfig(max_new_tokens=8, extractor="delimiter", extract_pattern="ok", top_k=4, batch_size=2)
    records = [{"input": x} for x in TINY_INPUTS[:3]]
    targets = teacher.answer(model, tok, records, prompt, cfg, RUNTIME)
    assert targets.answers == ["ay"] * 3
    assert targets.generations == [TINY_ANSWER] * 3
    _check_aligned(targets, tok, prompt)
    for record, view, logp, ids in zip(records, targets.teacher_views, targets.logp, targets.ids, strict=True):
        scratch = tuple(tok("ok", add_special_tokens=False).input_ids)
        assert view.prompt_ids == prompt_ids(tok, record["input"], prompt) + scratch
        assert view.answer_ids == answer_ids(tok, "ay")
        seq = torch.tensor([view.prompt_ids + view.answer_ids])
        with torch.no_grad():
            full = torch.log_softmax(model(input_ids=seq).logits[0], -1)
        P, A = len(view.prompt_ids), len(view.answer_ids)
        expected, expected_ids = _topk_with_tail(full[P - 1 : P - 1 + A], 4)
        torch.testing.assert_close(logp, expected, atol=1e-5, rtol=1e-5)
        assert torch.equal(ids, expected_ids)


def _spy_on_score(monkeypatch) -> list[int]:
    """Record how many views each call of teacher.score scores."""
    calls: list[int] = []

    def spy(model, tok, views, *args, **kwargs):
        calls.append(len(views))
        return score(model, tok, views, *args, **kwargs)

    monkeypatch.setattr(teacher, "score", spy)
    return calls


def _assert_scored_afresh(model, tok, targets, top_k: int) -> None:
    """Each kept answer's targets equal ``teacher.score`` (a fresh forward pass) over its teacher view."""
    assert len(targets) > 0
    fresh = score(model, tok, targets.teacher_views, top_k, 2, RUNTIME, "check")
    assert len(fresh) == len(targets)
    for n, ((logp, ids), got) in enumerate(zip(fresh, targets.logp, strict=True)):
        torch.testing.assert_close(got, logp, atol=1e-5, rtol=1e-5)
        if top_k:
            assert torch.equal(targets.ids[n], ids)
        else:
            assert ids is None and targets.ids is None


@pytest.mark.parametrize(("extractor", "top_k"), [("delimiter", 4), ("none", 4), ("none", 0)])
def test_score_on_the_teachers_views_gives_the_distributions_recorded_while_generating(
        tiny, monkeypatch, caplog, extractor, top_k):
    """Answers as generated keep the generation's distributions (no second pass), and they are the model's."""
    model, tok = tiny
    cfg = TeacherConfig(max_new_tokens=8, extractor=extractor, extract_pattern="ok" * (extractor != "none"),
                        top_k=top_k, batch_size=2)
    calls = _spy_on_score(monkeypatch)
    with caplog.at_level(logging.INFO, logger="internalize.teacher"):
        targets = teacher.answer(model, tok, [{"input": x} for x in TINY_INPUTS[:3]], PromptConfig(context="Think first."),
                                 cfg, RUNTIME)
    assert calls == [] and len(targets) == 3
    if extractor != "none":
        assert "3 of 3 answers took their distributions from the generation, 0 were" in caplog.text
    _assert_scored_afresh(model, tok, targets, top_k)


def test_an_answer_tokenized_unlike_its_generation_is_scored_again(tiny, monkeypatch):
    model, tok = tiny
    records = [{"input": x} for x in TINY_INPUTS[:2]]
    # the teacher wrote " ok:yes"; its text is stripped, so the scratch-pad "ok:" re-tokenizes one token short
    written = tuple(tok(" ok:yes", add_special_tokens=False).input_ids) + (tok.eos_token_id,)
    assert written != tuple(tok("ok:", add_special_tokens=False).input_ids) + answer_ids(tok, "yes")
    noise = torch.zeros(len(written), 5)  # distributions one position off: must not be used
    monkeypatch.setattr(teacher, "generate", lambda *a, **k: [[Generation("ok:yes", True, written, noise, noise[:, :4])]
                                                              for _ in records])
    calls = _spy_on_score(monkeypatch)
    targets = teacher.answer(model, tok, records, PromptConfig(context="Think first."),
                             TeacherConfig(extractor="delimiter", extract_pattern=":", top_k=4), RUNTIME)
    assert calls == [2]
    _assert_scored_afresh(model, tok, targets, 4)


def test_answer_counts_answers_that_cannot_be_extracted(tiny):
    model, tok = tiny
    cfg = TeacherConfig(max_new_tokens=8, extractor="regex", extract_pattern=r"NEVER\d{9}")
    records = [{"input": x} for x in TINY_INPUTS[:5]]
    targets = teacher.answer(model, tok, records, PromptConfig(context="c"), cfg, RUNTIME)
    assert len(targets) == 0
    assert targets.dropped == {"answer not extracted": 5}
    assert Reference.from_targets(targets, len(records)).answers == [None] * 5
    assert targets.logp == []
    assert targets.teacher_views == [] and targets.student_views == []


def test_answer_counts_unfinished_generations(tiny):
    model, tok = tiny
    cfg = TeacherConfig(max_new_tokens=2)  # "okay" + eos needs 5 tokens
    records = [{"input": x} for x in TINY_INPUTS[:3]]
    targets = teacher.answer(model, tok, records, PromptConfig(context="c"), cfg, RUNTIME)
    assert len(targets) == 0
    assert targets.dropped == {"unfinished (raise teacher.max_new_tokens)": 3}
    assert Reference.from_targets(targets, len(records)).answers == [None] * 3


def test_answer_several_samples(tiny):
    model, tok = tiny
    torch.manual_seed(0)
    prompt = PromptConfig(context="c")
    cfg = TeacherConfig(max_new_tokens=8, do_sample=True, num_samples=3, temperature=0.5, top_k=4)
    records = [{"input": x} for x in TINY_INPUTS[:2]]
    targets = teacher.answer(model, tok, records, prompt, cfg, RUNTIME)
    kept = len(targets)
    assert kept + sum(targets.dropped.values()) == 6
    assert len(Reference.from_targets(targets, len(records)).answers) == 2
    assert targets.source == sorted(targets.source)
    assert all(targets.records[n] is records[i] for n, i in enumerate(targets.source))
    _check_aligned(targets, tok, prompt)


def test_answer_restores_training_mode(tiny):
    model, tok = tiny
    model.train()
    teacher.answer(model, tok, [{"input": "hi"}], PromptConfig(context="c"), TeacherConfig(max_new_tokens=8), RUNTIME)
    assert model.training
    assert all(p.grad is None for p in model.parameters())


# --- targets.Targets and targets.Reference -------------------------------------------------------------


def test_targets_len():
    targets = Targets(answers=["a", "b"], teacher_views=[View((1,), (2,))] * 2)
    assert len(targets) == 2


def test_targets_concat_keeps_every_field_in_order():
    def part(tag, n, ids=True):
        return Targets(records=[{"input": f"{tag}{i}"} for i in range(n)], source=list(range(n)),
                       generations=[f"g{tag}{i}" for i in range(n)], answers=[f"a{tag}{i}" for i in range(n)],
                       teacher_views=[View((i,), (9,)) for i in range(n)],
                       student_views=[View((i, i), (9,)) for i in range(n)],
                       logp=[torch.full((1, 3), float(i)) for i in range(n)],
                       ids=[torch.zeros(1, 2, dtype=torch.long)] * n if ids else None,
                       dropped={"unfinished": 1})

    both = Targets.concat([part("x", 2), part("y", 3)])
    assert len(both) == 5 and both.answers == ["ax0", "ax1", "ay0", "ay1", "ay2"]
    assert [r["input"] for r in both.records] == ["x0", "x1", "y0", "y1", "y2"]
    assert both.generations == ["gx0", "gx1", "gy0", "gy1", "gy2"] and both.source == [0, 1, 0, 1, 2]
    assert [v.prompt_ids for v in both.student_views] == [(0, 0), (1, 1), (0, 0), (1, 1), (2, 2)]
    assert [x[0, 0].item() for x in both.logp] == [0.0, 1.0, 0.0, 1.0, 2.0]
    assert len(both.ids) == 5 and both.dropped == {"unfinished": 2}
    assert Targets.concat([part("x", 2), part("y", 1, ids=False)]).ids is None
    single = part("z", 1)
    assert Targets.concat([single]) is single


def test_reference_from_targets_is_each_inputs_first_kept_answer():
    targets = Targets(source=[0, 2, 2, 4], answers=["a", "b", "c", "d"])
    reference = Reference.from_targets(targets, num_inputs=6)
    assert reference.answers == ["a", None, "b", None, "d", None]  # inputs 1, 3 and 5 kept nothing
    assert reference.targets is targets
    assert Reference.from_targets(Targets(), 3).answers == [None, None, None]


def test_reference_from_the_teacher_is_none_where_its_sample_was_dropped(tiny, monkeypatch):
    """Inputs whose generation was dropped get None, the others the teacher's answer, in input order."""
    model, tok = tiny
    records = [{"input": x} for x in TINY_INPUTS[:5]]
    okay, unfinished = tuple(answer_ids(tok, "okay")), tuple(answer_ids(tok, "ok")[:-1])

    def generate(model, tok, prompts, *args, **kwargs):  # inputs 1 and 3 never finish
        return [[Generation("ok", False, unfinished) if i in (1, 3) else Generation(f"okay{i}", True, okay)]
                for i in range(len(prompts))]

    monkeypatch.setattr(teacher, "generate", generate)
    targets = teacher.answer(model, tok, records, PromptConfig(context="c"), TeacherConfig(top_k=4), RUNTIME)
    assert targets.source == [0, 2, 4] and targets.dropped == {"unfinished (raise teacher.max_new_tokens)": 2}
    assert Reference.from_targets(targets, len(records)).answers == ["okay0", None, "okay2", None, "okay4"]


def test_given_answers_are_the_records_outputs_in_both_views(tiny):
    model, tok = tiny
    prompt = PromptConfig(context="Be brief.", position="before_input")
    records = [{"input": "hello", "output": " ok fine "}, {"input": "bye", "output": "see you"}]
    targets = given_answers(tok, records, prompt)
    assert targets.answers == ["ok fine", "see you"]
    assert Reference.from_targets(targets, len(records)).answers == targets.answers
    for record, t, s in zip(records, targets.teacher_views, targets.student_views, strict=True):
        assert t.answer_ids == s.answer_ids == answer_ids(tok, record["output"].strip())
        assert t.prompt_ids == prompt_ids(tok, record["input"], prompt) and s.prompt_ids == prompt_ids(tok, record["input"])
    assert [x.shape for x in targets.logp] == [(len(v.answer_ids), 0) for v in targets.student_views]
    longest = max(len(v.answer_ids) for v in targets.student_views)
    logp, ids = targets.stacked([0, 1], longest)
    assert logp.shape == (2, longest, 0) and ids is None


def test_given_answers_name_the_file_and_record_without_output(tiny):
    _, tok = tiny
    with pytest.raises(InternalizeError, match=r"data/x\.jsonl: record 2 has no 'output' text"):
        given_answers(tok, [{"input": "a", "output": "b"}, {"input": "c"}], PromptConfig(), "data/x.jsonl")


def test_answer_keeps_the_space_before_an_extracted_answer_with_the_answer(tiny, monkeypatch):
    model, tok = tiny
    records = [{"input": x} for x in TINY_INPUTS[:2]]
    written = tuple(tok("ok: yes", add_special_tokens=False).input_ids) + (tok.eos_token_id,)
    monkeypatch.setattr(teacher, "generate", lambda *a, **k: [[Generation("ok: yes", True, written)] for _ in records])
    prompt = PromptConfig(context="Think first.")
    cfg = TeacherConfig(extractor="delimiter", extract_pattern=":", top_k=4)
    targets = teacher.answer(model, tok, records, prompt, cfg, RUNTIME)
    assert targets.answers == ["yes"] * 2  # the text is stripped; the ids keep the space, as the teacher wrote it
    for record, t, s in zip(records, targets.teacher_views, targets.student_views, strict=True):
        assert t.answer_ids == s.answer_ids == answer_ids(tok, " yes")
        assert t.prompt_ids == prompt_ids(tok, record["input"], prompt) + tuple(tok("ok:", add_special_tokens=False).input_ids)


# --- several contexts for one task: demonstrations split into chunks, averaged or routed -----------

DEMOS = [{"input": f"q{i}", "output": f"a{i}"} for i in range(5)]


def _single_context_logp(model, tok, record, context, answer):
    """The model's full-vocabulary log-probs on ``answer`` ids under one context's prompt."""
    prompt = prompt_ids(tok, record["input"], context)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + answer])).logits[0]
    return torch.log_softmax(logits[len(prompt) - 1 : len(prompt) - 1 + len(answer)], -1)


@pytest.mark.parametrize("extractor", ["none", "delimiter"])
def test_averaged_teacher_is_the_mean_of_the_single_context_distributions(tiny, extractor):
    model, tok = tiny
    prompt = PromptConfig(context="Answer.", demonstrations=DEMOS, demonstrations_per_context=2)
    cfg = TeacherConfig(top_k=0, max_new_tokens=8, batch_size=2, extractor=extractor,
                        extract_pattern="o" * (extractor != "none"))
    contexts = prompt.split()
    assert [c.demonstrations for c in contexts] == [DEMOS[:2], DEMOS[2:4], DEMOS[4:]]
    records = [{"input": x} for x in TINY_INPUTS[:3]]
    targets = teacher.answer(model, tok, records, prompt, cfg, RUNTIME)
    assert len(targets) == 3
    for record, t_view, logp in zip(records, targets.teacher_views, targets.logp, strict=True):
        scratch = t_view.prompt_ids[len(prompt_ids(tok, record["input"], contexts[0])) :]
        singles = torch.stack([_single_context_logp(model, tok, record, c, scratch + t_view.answer_ids)[len(scratch):]
                               for c in contexts])
        assert not torch.allclose(singles[0], singles[1], atol=1e-3)  # the contexts do disagree
        torch.testing.assert_close(logp, singles.exp().mean(0).log(), atol=1e-4, rtol=1e-4)


def test_averaged_teacher_generates_from_the_mean_distribution(tiny):
    model, tok = tiny
    prompt = PromptConfig(context="Answer.", demonstrations=DEMOS, demonstrations_per_context=2)
    cfg = TeacherConfig(top_k=0, max_new_tokens=8, batch_size=4)
    targets = teacher.answer(model, tok, [{"input": TINY_INPUTS[0]}], prompt, cfg, RUNTIME)
    assert [int(row.argmax()) for row in targets.logp[0]] == list(targets.teacher_views[0].answer_ids)


def test_routed_teacher_gives_input_i_the_context_i_mod_n(tiny):
    model, tok = tiny
    prompt = PromptConfig(context="Answer.", demonstrations=DEMOS[:4], demonstrations_per_context=2, combine="route")
    cfg = TeacherConfig(max_new_tokens=8, top_k=4, batch_size=2)
    contexts = prompt.split()
    records = [{"input": x} for x in TINY_INPUTS[:5]]
    targets = teacher.answer(model, tok, records, prompt, cfg, RUNTIME)
    for i, (record, view) in enumerate(zip(records, targets.teacher_views, strict=True)):
        assert view.prompt_ids == prompt_ids(tok, record["input"], contexts[i % 2])


def test_routed_teacher_on_the_engine_tells_it_each_inputs_context_and_answers_as_the_dynamic_loop(tiny,
                                                                                                   monkeypatch):
    """In parts of 3 inputs, input i (not its place in the part) goes to context i mod 2, and the engine is told so
    (it then runs each context once); the targets equal the dynamic loop's."""
    model, tok = tiny
    prompt = PromptConfig(context="Answer.", demonstrations=DEMOS[:4], demonstrations_per_context=2, combine="route")
    records = [{"input": x} for x in TINY_INPUTS[:7]]
    told: list[list[int] | None] = []
    real = engine.generate
    monkeypatch.setattr(engine, "generate", lambda *a, **k: told.append(a[-1]) or real(*a, **k))
    runs = [teacher.answer(model, tok, records, prompt, TeacherConfig(max_new_tokens=8, top_k=4, batch_size=2,
                                                                      shard_inputs=3, cache_dir="", engine=e), RUNTIME)
            for e in ("static", "dynamic")]
    assert told == [[0, 1, 0], [1, 0, 1], [0]]  # inputs 0-2, 3-5, 6
    assert runs[0].answers == runs[1].answers and runs[0].teacher_views == runs[1].teacher_views
    for a, b in zip(runs[0].logp, runs[1].logp, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


def test_the_teacher_in_parts_equals_the_teacher_in_one_go_and_caches_each_part(tiny, tmp_path, monkeypatch, caplog):
    model, tok = tiny
    records = [{"input": x} for x in TINY_INPUTS[:8]]
    prompt = PromptConfig(context="Answer in one word.")
    whole = teacher.answer(model, tok, records, prompt, TeacherConfig(max_new_tokens=8, top_k=4, cache_dir=""), RUNTIME)
    cfg = TeacherConfig(max_new_tokens=8, top_k=4, shard_inputs=3, cache_dir=str(tmp_path))
    with caplog.at_level(logging.INFO, logger="internalize.teacher"):
        parts = teacher.answer(model, tok, records, prompt, cfg, RUNTIME)
    progress = [r.getMessage() for r in caplog.records if "inputs answered" in r.getMessage()]
    assert [m.split(",")[0] for m in progress] == ["teacher: 3 of 8 inputs answered", "teacher: 6 of 8 inputs answered"]
    assert parts.source == whole.source and parts.answers == whole.answers
    assert parts.student_views == whole.student_views
    for a, b in zip(parts.logp, whole.logp, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert len(list(tmp_path.iterdir())) == 3  # 3 + 3 + 2 inputs, each part cached on its own
    computed = []
    real = teacher._answer_part
    monkeypatch.setattr(teacher, "_answer_part", lambda *a, **k: computed.append(len(a[2])) or real(*a, **k))
    shutil.rmtree(next(p for p in sorted(tmp_path.iterdir()) if p.is_dir()))  # as if killed before one part was saved
    again = teacher.answer(model, tok, records, prompt, cfg, RUNTIME)
    assert len(computed) == 1 and not again.cache_hit  # only the missing part ran again
    assert again.answers == whole.answers and again.source == whole.source


# --- teacher.generations_file ---------------------------------------------------------------------


def _write_generations(path, rows) -> str:
    path.write_text("".join(json.dumps({"input": i, "generation": g}) + "\n" for i, g in rows))
    return str(path)


def _spy_on_generate(monkeypatch) -> list[int]:
    """Record how many prompts each call of teacher.generate gets."""
    calls: list[int] = []
    real = teacher.generate
    monkeypatch.setattr(teacher, "generate", lambda m, t, prompts, *a, **k: calls.append(len(prompts)) or
                        real(m, t, prompts, *a, **k))
    return calls


def test_given_generations_are_not_generated_again_and_teach_the_same_targets(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    records = [{"input": x} for x in TINY_INPUTS[:4]]
    prompt = PromptConfig(context="Think first.")
    cfg = TeacherConfig(max_new_tokens=8, extractor="delimiter", extract_pattern="ok", top_k=4, batch_size=2,
                        cache_dir="")
    own = teacher.answer(model, tok, records, prompt, cfg, RUNTIME)
    calls = _spy_on_generate(monkeypatch)
    for given in ([0, 2], [0, 1, 2, 3]):  # some inputs given (the rest generated), then all of them
        path = _write_generations(tmp_path / f"given{len(given)}.jsonl",
                                  [(records[i]["input"], own.generations[i]) for i in given])
        calls.clear()
        got = teacher.answer(model, tok, records, prompt, dataclasses.replace(cfg, generations_file=path), RUNTIME)
        assert calls == ([2] if len(given) == 2 else [])
        assert got.answers == own.answers and got.source == own.source and got.generations == own.generations
        assert got.teacher_views == own.teacher_views and got.student_views == own.student_views
        for a, b in zip(got.logp, own.logp, strict=True):  # scored after the given scratch-pad = as generated
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        assert all(torch.equal(a, b) for a, b in zip(got.ids, own.ids, strict=True))
    calls.clear()  # the model without the context (the forgetting check's reference) never takes them
    alone = teacher.answer(model, tok, records, None, dataclasses.replace(cfg, extractor="none", generations_file=path),
                           RUNTIME)
    assert calls == [4] and len(alone) == 4


def test_a_given_generation_is_extracted_and_scored_after_its_own_scratch_pad(tiny, tmp_path):
    model, tok = tiny
    records = [{"input": x} for x in TINY_INPUTS[:3]]
    prompt = PromptConfig(context="Think first.")
    path = _write_generations(tmp_path / "g.jsonl", [(records[0]["input"], "step one, step two ok yes"),
                                                     (records[1]["input"], "no delimiter at all")])
    cfg = TeacherConfig(max_new_tokens=8, extractor="delimiter", extract_pattern="ok", top_k=4, batch_size=2,
                        cache_dir="", generations_file=path)
    targets = teacher.answer(model, tok, records, prompt, cfg, RUNTIME)
    assert targets.dropped == {"answer not extracted": 1}  # the second given text has no answer
    assert targets.source == [0, 2] and targets.answers == ["yes", "ay"]
    scratch = tuple(tok("step one, step two ok", add_special_tokens=False).input_ids)
    assert targets.teacher_views[0] == View(prompt_ids(tok, records[0]["input"], prompt) + scratch,
                                            answer_ids(tok, " yes"))
    _assert_scored_afresh(model, tok, targets, 4)


def test_given_generations_are_part_of_the_cache_key(tiny):
    model, tok = tiny
    records = [{"input": x} for x in TINY_INPUTS[:2]]
    prompts = [prompt_ids(tok, r["input"]) for r in records]
    cfg = TeacherConfig()
    key = cache.cache_key(model, prompts, records, cfg, tok.eos_token_id)
    assert cache.cache_key(model, prompts, records, cfg, tok.eos_token_id, None) == key  # earlier keys still hold
    assert len({key, cache.cache_key(model, prompts, records, cfg, tok.eos_token_id, [["a ok b"], []]),
                cache.cache_key(model, prompts, records, cfg, tok.eos_token_id, [["a ok c"], []])}) == 3


def test_a_bad_generations_file_is_named_with_the_fix(tmp_path):
    with pytest.raises(InternalizeError, match="teacher.generations_file='.*missing.jsonl': file not found"):
        teacher.given_generations(str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "a", "generation": "x"}\n{"input": "b"}\n')
    with pytest.raises(InternalizeError, match=r"bad.jsonl: record 2 has no 'generation' text"):
        teacher.given_generations(str(bad))
    assert teacher.given_generations("") == {}
    bad.write_text('{"input": "a", "generation": "x"}\n{"input": "a", "generation": "y"}\n')
    assert teacher.given_generations(str(bad)) == {"a": ["x", "y"]}
