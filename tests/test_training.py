"""training.py and sources.py: the schedule, step counting, ``fit`` lowering the distillation loss over a batch
source, the loss normalised over the whole accumulation window, and a run continued from its state."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY_INPUTS

import internalize.sources as sources
import internalize.training as training
from internalize.config import ModelConfig, TrainConfig
from internalize.models import make_student
from internalize.runtime import Runtime
from internalize.sources import OfflineBatches
from internalize.targets import Targets, topk_with_tail
from internalize.training import _schedule, fit, num_steps
from internalize.views import View, answer_ids, prompt_ids

LORA = ModelConfig(name="unused", lora_r=4, lora_alpha=8)
CPU = Runtime.local("cpu")


def _fit(student, tok, targets, cfg, **kw):
    """The history of ``fit`` over offline batches of ``targets``, as the pipeline builds them."""
    batches = OfflineBatches(targets, tok.pad_token_id, cfg.batch_size, cfg.length_buckets, cfg.seed)
    return fit(student, batches, cfg, CPU, **kw).history


def test_schedule_linear_warmup_then_cosine():
    total, warmup = 10, 4
    assert [_schedule(s, total, warmup, "cosine") for s in range(warmup)] == [0.25, 0.5, 0.75, 1.0]
    assert _schedule(4, total, warmup, "cosine") == pytest.approx(1.0)
    assert _schedule(7, total, warmup, "cosine") == pytest.approx(0.5)  # half way through the decay
    assert _schedule(10, total, warmup, "cosine") == pytest.approx(0.0, abs=1e-12)
    values = [_schedule(s, total, warmup, "cosine") for s in range(warmup, total)]
    assert values == sorted(values, reverse=True)
    for s in range(warmup, total):
        expected = 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))
        assert _schedule(s, total, warmup, "cosine") == pytest.approx(expected)


def test_schedule_constant_and_no_warmup():
    assert [_schedule(s, 5, 2, "constant") for s in range(5)] == [0.5, 1.0, 1.0, 1.0, 1.0]
    assert _schedule(0, 5, 0, "cosine") == 1.0
    assert _schedule(0, 1, 0, "cosine") == 1.0  # a single step does not divide by zero


@pytest.mark.parametrize(
    "n, cfg, expected",
    [
        (100, TrainConfig(max_steps=7), 7),
        (10, TrainConfig(epochs=2, batch_size=4, min_steps=0), 6),
        (10, TrainConfig(epochs=1, batch_size=4, grad_accum=2, min_steps=0), 2),
        (3, TrainConfig(epochs=3, batch_size=8, min_steps=0), 3),
        (0, TrainConfig(epochs=2, batch_size=8, min_steps=0), 2),
        (10, TrainConfig(epochs=1, batch_size=4, min_steps=8), 8),  # few inputs: more epochs, up to min_steps
        (100, TrainConfig(epochs=1, batch_size=4, min_steps=8), 25),
        (10, TrainConfig(max_steps=5, min_steps=8), 5),  # max_steps says it all
    ],
)
def test_num_steps(n, cfg, expected):
    assert num_steps(n, cfg) == expected


def _targets(tok, answers=("hello!", "Bye", "A-OK", "no", "yes please", "42"), k: int = 0, sharpness=6.0):
    """Hand-made teacher targets: sharp distributions on answers the tiny model does not give ('okay')."""
    targets = Targets(ids=[] if k else None)
    for i, (text, answer) in enumerate(zip(TINY_INPUTS, answers, strict=False)):
        a_ids = answer_ids(tok, answer)
        logits = torch.zeros(len(a_ids), len(tok))
        logits[torch.arange(len(a_ids)), torch.tensor(a_ids)] = sharpness
        logp, ids = topk_with_tail(torch.log_softmax(logits, -1), k)
        view = View(prompt_ids(tok, text), a_ids)
        targets.keep({"input": text}, i, answer, answer, view, view.prompt_ids, logp, ids)
    return targets


@pytest.mark.parametrize("finetune, lr", [("lora", 2e-2), ("full", 5e-3)])
def test_fit_lowers_the_loss(tiny, finetune, lr):
    model, tok = tiny
    student = make_student(model, ModelConfig(name="unused", finetune=finetune, lora_r=4, lora_alpha=8))
    cfg = TrainConfig(max_steps=8, batch_size=6, lr=lr, warmup_ratio=0.0, schedule="constant", seed=0)
    history = _fit(student, tok, _targets(tok), cfg)
    assert len(history) == 8
    assert [h["step"] for h in history] == list(range(1, 9))
    assert all(math.isfinite(h["loss"]) for h in history)
    assert history[-1]["loss"] < history[0]["loss"]
    assert not student.training


@pytest.mark.parametrize("loss", ["forward_kl", "reverse_kl", "jsd", "ce"])
def test_fit_every_loss_kind_lowers_the_loss(tiny, loss):
    model, tok = tiny
    student = make_student(model, LORA)
    cfg = TrainConfig(loss=loss, max_steps=6, batch_size=6, lr=2e-2, warmup_ratio=0.0, seed=0)
    history = _fit(student, tok, _targets(tok), cfg)
    assert history[-1]["loss"] < history[0]["loss"]


def test_fit_topk_targets(tiny):
    model, tok = tiny
    student = make_student(model, LORA)
    cfg = TrainConfig(max_steps=6, batch_size=3, lr=2e-2, warmup_ratio=0.0, ce_weight=0.5, seed=0)
    history = _fit(student, tok, _targets(tok, k=5), cfg)
    assert len(history) == 6 and history[-1]["loss"] < history[0]["loss"]


def test_fit_counts_steps_and_micro_batches(tiny, monkeypatch):
    model, tok = tiny
    student = make_student(model, LORA)
    calls = []
    real = training.answer_logits

    def counting(model, batch, prefix=None):
        calls.append(batch.input_ids.shape[0])
        return real(model, batch, prefix)

    monkeypatch.setattr(training, "answer_logits", counting)
    cfg = TrainConfig(max_steps=3, batch_size=2, grad_accum=3, seed=0)
    history = _fit(student, tok, _targets(tok), cfg)
    assert len(history) == 3
    assert len(calls) == 9  # max_steps x grad_accum micro-batches
    assert calls == [2] * 9


def test_fit_logs_progress_for_runs_without_a_terminal(tiny, caplog):
    model, tok = tiny
    student = make_student(model, LORA)
    with caplog.at_level("INFO", logger="internalize.training"):
        _fit(student, tok, _targets(tok), TrainConfig(max_steps=20, batch_size=6, seed=0))
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [m.split(",")[0] for m in progress] == [f"step {n}/20" for n in range(2, 20, 2)]
    assert all("s left" in m for m in progress)


def test_fit_epochs_when_no_max_steps(tiny):
    model, tok = tiny
    student = make_student(model, LORA)
    targets = _targets(tok)  # 6 answers
    cfg = TrainConfig(epochs=2, batch_size=4, grad_accum=1, seed=0, min_steps=0)
    history = _fit(student, tok, targets, cfg)
    assert len(history) == num_steps(len(targets), cfg) == 4


def test_fit_is_deterministic_with_a_seed(tiny_model_dir):
    from internalize.models import load_model

    histories = []
    for _ in range(2):
        model, tok = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu"))
        torch.manual_seed(0)  # LoRA A matrices are drawn at wrap time (the pipeline seeds before it too)
        student = make_student(model, LORA)
        histories.append(_fit(student, tok, _targets(tok), TrainConfig(max_steps=3, batch_size=2, lr=1e-2, seed=5)))
    assert histories[0] == histories[1]


def test_fit_with_lora_leaves_base_weights_untouched(tiny):
    model, tok = tiny
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    student = make_student(model, LORA)
    _fit(student, tok, _targets(tok), TrainConfig(max_steps=2, batch_size=3, lr=1e-2, seed=0))
    after = {n.replace("base_model.model.", "").replace(".base_layer", ""): p for n, p in student.named_parameters()
             if "lora_" not in n}
    for name, value in before.items():
        torch.testing.assert_close(after[name], value, rtol=0, atol=0)


def test_fit_learning_rates_follow_the_schedule(tiny):
    model, tok = tiny
    student = make_student(model, LORA)
    cfg = TrainConfig(max_steps=10, batch_size=3, lr=1e-3, warmup_ratio=0.2, seed=0)
    history = _fit(student, tok, _targets(tok), cfg)
    lrs = [h["lr"] for h in history]
    assert max(lrs) == pytest.approx(1e-3)
    assert all(0 <= lr <= 1e-3 + 1e-12 for lr in lrs)
    assert lrs[2:] == sorted(lrs[2:], reverse=True)  # cosine decay after warmup


def test_fit_history_lr_is_the_lr_used_at_that_step(tiny):
    model, tok = tiny
    student = make_student(model, LORA)
    cfg = TrainConfig(max_steps=10, batch_size=3, lr=1e-3, warmup_ratio=0.2, seed=0)
    history = _fit(student, tok, _targets(tok), cfg)
    expected = [1e-3 * _schedule(s, 10, 2, "cosine") for s in range(10)]
    assert [h["lr"] for h in history] == pytest.approx(expected)


def test_length_buckets_cut_padding_and_keep_every_example(tiny_model_dir, monkeypatch):
    """Bucketed micro-batches pad less than plain shuffling and still visit every answer once per epoch."""
    from internalize.models import load_model

    model, tok = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu"))
    texts = ["a", "What is the capital of France?", "Hi", "Tell me a joke, please! Or two, or three.", "x y",
             "Count to three, slowly and clearly.", "2+2", "Why is grass green and not blue?"]
    views = [View(prompt_ids(tok, t), answer_ids(tok, "okay")) for t in texts]
    targets = Targets(ids=None)
    for i, (text, view) in enumerate(zip(texts, views, strict=True)):
        targets.keep({"input": text}, i, "okay", "okay", view, view.prompt_ids, torch.zeros(len(view.answer_ids), 3))
    seen: dict[int, list[list[int]]] = {}
    real = sources.collate

    def recording(batch_views, pad_id, prefix_len=0):
        seen.setdefault(id(recording), []).append([views.index(v) for v in batch_views])
        return real(batch_views, pad_id, prefix_len)

    monkeypatch.setattr(sources, "collate", recording)
    monkeypatch.setattr(training, "distillation_loss", lambda logits, *a, **k: logits.float().mean() * 0)
    padding = {}
    for buckets in (1, 4):
        seen.clear()
        cfg = TrainConfig(epochs=1, batch_size=2, length_buckets=buckets, seed=3, warmup_ratio=0.0, min_steps=0)
        model, _ = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu"))
        history = _fit(make_student(model, LORA), tok, targets, cfg)
        assert sorted(i for b in seen[id(recording)] for i in b) == list(range(len(views)))  # each once
        padding[buckets] = sum(h["padding"] for h in history) / len(history)
    assert padding[4] < padding[1]


def _gradients(monkeypatch, student, tok, targets, batch_size, grad_accum):
    """The gradients of the first optimizer step (recorded where fit clips them)."""
    recorded = []
    clip = torch.nn.utils.clip_grad_norm_

    def record(params, max_norm):
        recorded.append([p.grad.clone() for p in params])
        return clip(params, max_norm)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", record)
    cfg = TrainConfig(max_steps=1, batch_size=batch_size, grad_accum=grad_accum, length_buckets=1, seed=0)
    _fit(student, tok, targets, cfg)
    return recorded[0]


def test_the_loss_is_normalised_by_the_answer_tokens_of_the_whole_accumulation_window(tiny, monkeypatch):
    """2 micro-batches of 2 give the gradients of 1 micro-batch of 4, though their answer-token counts differ."""
    model, tok = tiny
    student = make_student(model, ModelConfig(name="unused", finetune="full"))
    targets = _targets(tok, answers=("a", "no", "yes", "a much longer answer"), k=5)  # 2, 3, 4 and 21 tokens
    initial = {n: p.detach().clone() for n, p in student.named_parameters()}
    whole = _gradients(monkeypatch, student, tok, targets, batch_size=4, grad_accum=1)
    with torch.no_grad():
        for n, p in student.named_parameters():
            p.copy_(initial[n])
    split = _gradients(monkeypatch, student, tok, targets, batch_size=2, grad_accum=2)
    for a, b in zip(whole, split, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # any way of cutting 2 + 3 + 4 + 21 tokens in two pairs gives unequal counts: weighting the micro-batches
    # equally (the old normalisation) would give other gradients
    assert len({sum(len(targets.student_views[i].answer_ids) for i in pair) for pair in ([0, 1], [2, 3])}) == 2


def test_fit_continues_from_its_state_as_if_never_stopped(tiny_model_dir):
    """4 steps in one go equal 2 steps, then 2 more from the returned state (optimizer, schedule, data, RNG)."""
    from internalize.models import load_model

    cfg = TrainConfig(max_steps=4, batch_size=2, lr=1e-2, warmup_ratio=0.5, seed=3)
    runs = []
    for stops in ([None], [2, None]):
        model, tok = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu"))
        torch.manual_seed(0)
        student = make_student(model, ModelConfig(name="unused", lora_r=4, lora_alpha=8, lora_dropout=0.1))
        state = None
        for stop in stops:
            batches = OfflineBatches(_targets(tok), tok.pad_token_id, cfg.batch_size, cfg.length_buckets, cfg.seed)
            state = fit(student, batches, cfg, CPU, state, stop_at=stop)
        runs.append((state, {n: p.detach().clone() for n, p in student.named_parameters()}))
    (whole, weights), (resumed, weights_resumed) = runs
    assert resumed.step == whole.step == 4
    assert [h["step"] for h in resumed.history] == [1, 2, 3, 4]
    assert resumed.history == whole.history
    for name, value in weights.items():
        torch.testing.assert_close(weights_resumed[name], value, rtol=0, atol=0)


def test_offline_batches_restore_their_position(tiny):
    _, tok = tiny
    targets = _targets(tok)
    source = OfflineBatches(targets, tok.pad_token_id, batch_size=2, buckets=2, seed=1)
    for _ in range(4):  # into the second epoch
        next(source)
    again = OfflineBatches(targets, tok.pad_token_id, batch_size=2, buckets=2, seed=99)
    again.load_state_dict(source.state_dict())
    for _ in range(5):
        a, b = next(source), next(again)
        assert torch.equal(a.batch.input_ids, b.batch.input_ids) and torch.equal(a.teacher_logp, b.teacher_logp)


class _Poisoned(OfflineBatches):
    """Offline batches whose teacher log-probs are NaN on the micro-batches numbered in ``bad``."""

    def __init__(self, *args, bad=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.bad, self.served = set(bad), 0

    def __next__(self):
        mb = super().__next__()
        self.served += 1
        if self.served in self.bad:
            mb.teacher_logp = torch.full_like(mb.teacher_logp, float("nan"))
        return mb


def test_a_nan_step_is_skipped_and_logged_with_its_inputs(tiny, caplog):
    model, tok = tiny
    student = make_student(model, LORA)
    cfg = TrainConfig(max_steps=4, batch_size=2, lr=1e-2, seed=0, max_bad_steps=1)
    source = _Poisoned(_targets(tok), tok.pad_token_id, 2, 1, 0, bad={2})
    weights = []
    with caplog.at_level("WARNING", logger="internalize.training"):
        state = fit(student, source, cfg, CPU, on_checkpoint=None, stop_at=1)
        weights.append({n: p.detach().clone() for n, p in student.named_parameters() if p.requires_grad})
        state = fit(student, source, cfg, CPU, state, stop_at=2)  # the poisoned step
    after = {n: p for n, p in student.named_parameters() if p.requires_grad}
    for name, value in weights[0].items():
        assert torch.equal(after[name], value)  # no update from a NaN gradient
    assert state.history[1]["skipped"] and math.isnan(state.history[1]["loss"]) and state.step == 2
    message = next(r.getMessage() for r in caplog.records if "skipped" in r.getMessage())
    assert message.startswith("step 2 skipped") and any(text in message for text in TINY_INPUTS)
    state = fit(student, source, cfg, CPU, state)
    assert state.step == 4 and all(math.isfinite(h["loss"]) for h in state.history[2:])


def test_too_many_bad_steps_stop_the_run_with_a_clear_message(tiny):
    from internalize.config import InternalizeError

    model, tok = tiny
    student = make_student(model, LORA)
    cfg = TrainConfig(max_steps=6, batch_size=2, lr=1e-2, seed=0, max_bad_steps=2)
    source = _Poisoned(_targets(tok), tok.pad_token_id, 2, 1, 0, bad={2, 3, 5})
    with pytest.raises(InternalizeError, match=r"train: 3 steps had a NaN or infinite loss .*train\.max_bad_steps=2"):
        fit(student, source, cfg, CPU)


@pytest.mark.parametrize("patience", [2, 0])
def test_fit_keeps_the_best_validated_weights_and_stops_when_they_stop_improving(tiny, patience):
    model, tok = tiny
    torch.manual_seed(0)
    student = make_student(model, LORA)
    cfg = TrainConfig(max_steps=10, batch_size=2, lr=2e-2, seed=0, length_buckets=1, validate_every=2,
                      patience=patience)
    scripted = iter([3.0, 2.0, 2.5, 2.6, 2.7])  # best at the second measurement (step 4), worse after it
    seen: dict[int, dict[str, torch.Tensor]] = {}

    def validate() -> float:
        step = len(seen) * 2 + 2
        seen[step] = {n: p.detach().clone() for n, p in student.named_parameters() if p.requires_grad}
        return next(scripted)

    state = fit(student, OfflineBatches(_targets(tok), tok.pad_token_id, 2, 1, 0), cfg, CPU, validate=validate)
    assert [h["step"] for h in state.history if "val_kl" in h] == list(seen) == (
        [2, 4, 6, 8] if patience else [2, 4, 6, 8, 10])
    assert state.step == (8 if patience else 10)  # stopped after two measurements without a better KL
    assert state.best["step"] == 4 and state.best["kl"] == 2.0
    for name, p in student.named_parameters():
        if p.requires_grad:  # the weights of step 4, not of the last step
            assert torch.equal(p, seen[4][name]) and not torch.equal(p, seen[max(seen)][name])


def test_fit_without_validation_keeps_no_best_weights(tiny):
    model, tok = tiny
    student = make_student(model, LORA)
    state = fit(student, OfflineBatches(_targets(tok), tok.pad_token_id, 2, 1, 0),
                TrainConfig(max_steps=3, batch_size=2, seed=0), CPU)
    assert state.best is None and all("val_kl" not in h for h in state.history)
