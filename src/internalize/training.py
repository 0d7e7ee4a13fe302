"""Training: one readable loop that fits the student (input alone) to the teacher's distributions.

``fit(model, batches, cfg, runtime, state)`` runs AdamW over the trainable parameters (warmup, then
a cosine or constant schedule) on micro-batches from a batch source (``sources``: precomputed
teacher targets, or later on-policy samples), with gradient accumulation, clipping and a tqdm bar
showing the loss. The loss of a step is normalised by the answer-token count of its whole
accumulation window, so every answer token weighs the same however the tokens fall into
micro-batches (length bucketing makes their counts differ). The prompt prefix every student view
shares (chat header, default system prompt) runs once per micro-batch, with gradients.

Everything a resumed run needs is in the ``TrainState`` passed in and returned: the step, the loss
history, and the optimizer's, scheduler's, source's and random number generator's states; every
``train.save_every`` steps (and at the last) ``on_checkpoint`` receives it (``checkpoint.save``
writes it), and ``on_step`` receives each step's history record as it is made (the experiment
trackers). A step whose loss or gradient is NaN or infinite is skipped (no update), logged with
its inputs, and after ``train.max_bad_steps`` of them the run stops with a one-line error. With a
validation measure (``validate``), the best weights seen are the ones the run ends with, and it
stops early once they stop improving (``train.patience``).

    state = fit(student, OfflineBatches(targets, pad_id, 8, 16), cfg.train, runtime)
    state.history  # [{step, loss, lr, padding}, ...]
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from .config import InternalizeError, TrainConfig
from .decoding import answer_logits
from .losses import distillation_loss
from .runtime import Runtime
from .sources import BatchSource

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Where a training run stands: enough, with the model's weights, to continue it exactly."""

    step: int = 0  # optimizer steps taken
    history: list[dict[str, float]] = field(default_factory=list)  # one record per step
    optimizer: dict[str, Any] | None = None  # state dicts, None before the first step
    scheduler: dict[str, Any] | None = None
    batches: dict[str, Any] | None = None
    rng: torch.Tensor | None = None  # torch's CPU generator (dropout, sampling)
    cuda_rng: list[torch.Tensor] | None = None  # each CUDA device's generator, when there are any
    best: dict[str, Any] | None = None  # with validation: {"step", "kl", "weights"} of the best measurement so far
    stale: int = 0  # measurements since the best one


def _schedule(step: int, total: int, warmup: int, kind: str) -> float:
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def num_steps(num_examples: int, cfg: TrainConfig, processes: int = 1) -> int:
    """Optimizer steps the run takes: ``max_steps`` or ``epochs`` passes over the examples (a step uses
    ``batch_size`` x ``grad_accum`` examples on each of ``processes``)."""
    if cfg.max_steps:
        return cfg.max_steps
    per_epoch = max(1, math.ceil(num_examples / (cfg.batch_size * cfg.grad_accum * processes)))
    return max(cfg.epochs * per_epoch, cfg.min_steps)


def fit(model: PreTrainedModel, batches: BatchSource, cfg: TrainConfig, runtime: Runtime,
        state: TrainState | None = None, stop_at: int | None = None,
        on_checkpoint: Callable[[TrainState], None] | None = None,
        on_step: Callable[[dict[str, Any]], None] | None = None,
        validate: Callable[[], float] | None = None) -> TrainState:
    """Train ``model`` in place from ``state`` (default: a fresh start) to the last step, or to ``stop_at``.

    Returns the state after the last step taken; passing it back (with the same model) continues the run.
    ``on_checkpoint`` is called with the state every ``cfg.save_every`` steps and at the last step; ``on_step``
    with each step's history record as it is made (the experiment trackers). ``validate`` (the student's KL to
    the teacher on a validation split) runs every ``cfg.validate_every`` steps and at the last: the weights of the
    best measurement are kept and put back at the end, and after ``cfg.patience`` measurements without a better
    one training stops early."""
    # setup
    state = state or TrainState()
    runtime.shard(model)  # FSDP: from here on each process holds its shard of the weights and of what trains them
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    params = list(trainable.values())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = num_steps(batches.num_examples, cfg, runtime.num_processes)
    warmup = int(cfg.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _schedule(s, total, warmup, cfg.schedule))
    if state.optimizer is None:
        torch.manual_seed(cfg.seed)
    else:
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        batches.load_state_dict(state.batches)
        torch.set_rng_state(state.rng)
        if state.cuda_rng is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state.cuda_rng)
    end = total if stop_at is None else min(stop_at, total)
    log.info("training steps %d-%d of %d on %d examples (%d trainable parameters)", state.step + 1, end, total,
             batches.num_examples, sum(p.numel() for p in params))

    def snapshot() -> TrainState:
        state.optimizer, state.scheduler = optimizer.state_dict(), scheduler.state_dict()
        state.batches, state.rng = batches.state_dict(), torch.get_rng_state()
        state.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        return state

    every = cfg.validate_every or max(1, total // 10)
    model.train()
    first = state.step
    bad = 0
    bar = tqdm(range(first, end), desc="train", unit="step", disable=None if runtime.is_main else True)
    started = time.perf_counter()
    # loop
    for step in bar:
        window = [next(batches) for _ in range(cfg.grad_accum)]
        tokens = runtime.sum(torch.tensor(float(sum(mb.tokens for mb in window)), device=runtime.device)).clamp(min=1)
        loss_sum = torch.zeros((), device=runtime.device)
        for mb in window:
            batch = mb.batch.to(runtime.device)
            teacher_ids = None if mb.teacher_ids is None else mb.teacher_ids.to(runtime.device)
            logits = answer_logits(model, batch, mb.prefix.prefill(model, runtime.device))
            loss = distillation_loss(logits, mb.teacher_logp.to(runtime.device), teacher_ids, batch.answer_ids,
                                     batch.answer_mask, cfg.loss, cfg.jsd_beta, cfg.ce_weight)
            share = mb.tokens / tokens  # the micro-batch's share of the window's answer tokens
            (loss * share * runtime.num_processes).backward()  # gradients are averaged over processes
            loss_sum += loss.detach() * share
        runtime.average_gradients(params)  # several processes: one step on all their micro-batches
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or math.inf)  # the norm, clipped or not
        loss_value = runtime.sum(loss_sum).item()
        lr = scheduler.get_last_lr()[0]  # the rate this step used
        finite = math.isfinite(loss_value) and bool(torch.isfinite(norm))
        if finite:
            optimizer.step()
        else:  # skip the update; the step still counts (its batches are used up, the schedule moves on)
            bad += 1
            inputs = [text for mb in window for text in mb.inputs]
            log.warning("step %d skipped: loss %s, gradient norm %s (%d of at most %d); its inputs: %s", step + 1,
                        loss_value, norm.item(), bad, cfg.max_bad_steps, inputs)
            if bad > cfg.max_bad_steps:
                optimizer.zero_grad(set_to_none=True)
                raise InternalizeError(f"train: {bad} steps had a NaN or infinite loss or gradient (train.max_bad_steps="
                                       f"{cfg.max_bad_steps}); the last checkpoint is kept; lower train.lr or check the "
                                       "teacher's targets")
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        # log
        padding = sum(mb.batch.padding_share for mb in window) / len(window)
        record = {"step": step + 1, "loss": loss_value, "lr": lr, "padding": round(padding, 4)}
        if not finite:
            record["skipped"] = True
        state.history.append(record)
        state.step = step + 1
        stop = False
        if validate is not None and (state.step % every == 0 or state.step == end):
            record["val_kl"] = validate()
            if state.best is None or record["val_kl"] < state.best["kl"]:
                state.best = {"step": state.step, "kl": record["val_kl"],
                              "weights": {n: p.detach().clone() for n, p in trainable.items()}}
                state.stale = 0
            else:
                state.stale += 1
                stop = bool(cfg.patience) and state.stale >= cfg.patience
            model.train()
        if on_step is not None:
            on_step(record)
        if on_checkpoint is not None and cfg.save_every and (state.step % cfg.save_every == 0 or state.step == total):
            on_checkpoint(snapshot())
        bar.set_postfix(loss=f"{record['loss']:.4f}")
        if (step + 1) % max(1, total // 10) == 0 and step + 1 < total and runtime.is_main:  # progress in logs too
            elapsed = time.perf_counter() - started
            log.info("step %d/%d, loss %.4f, %.0f s, about %.0f s left", step + 1, total, record["loss"], elapsed,
                     elapsed / (step + 1 - first) * (end - step - 1))
        if stop:
            log.info("validation KL has not improved for %d measurements: stopping at step %d of %d", state.stale,
                     state.step, total)
            break
    if state.best is not None and state.best["step"] != state.step:
        with torch.no_grad():
            for name, p in trainable.items():
                p.copy_(state.best["weights"][name])
        log.info("kept the weights of step %d (validation KL %.4f; %.4f at step %d)", state.best["step"],
                 state.best["kl"], state.history[-1].get("val_kl", float("nan")), state.step)
    model.eval()
    return snapshot()
