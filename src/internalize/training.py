"""Training: one readable loop that fits the student (input alone) to the teacher's distributions.

Setup (AdamW over the trainable parameters, warmup then cosine or constant schedule), loop
(micro-batches with gradient accumulation, clipping, a tqdm bar showing the loss), and a loss
history the report plots. The teacher is not run here: its distributions were computed by
``teacher.teach`` before training. Micro-batches are length-bucketed (shuffled, then sorted by
length within pools of ``train.length_buckets`` micro-batches) so little compute goes to padding,
and the prompt prefix every student view shares (chat header, default system prompt) runs once
per micro-batch, with gradients, instead of once per sequence.

    history = fit(student, tokenizer, targets, cfg.train)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .config import TrainConfig
from .decoding import Prefix, answer_logits, collate
from .losses import distillation_loss
from .teacher import TeacherTargets
from .views import View

log = logging.getLogger(__name__)


def _schedule(step: int, total: int, warmup: int, kind: str) -> float:
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def num_steps(num_examples: int, cfg: TrainConfig) -> int:
    """Optimizer steps the run takes: ``max_steps`` or ``epochs`` passes over the examples."""
    if cfg.max_steps:
        return cfg.max_steps
    return cfg.epochs * max(1, math.ceil(num_examples / (cfg.batch_size * cfg.grad_accum)))


def micro_batches(views: list[View], batch_size: int, buckets: int, generator: torch.Generator) -> Iterator[list[int]]:
    """Endless epochs of shuffled micro-batches (indices into ``views``), length-bucketed.

    Each epoch is a random permutation cut into pools of ``buckets`` micro-batches; a pool is sorted
    by sequence length before it is cut into micro-batches, and the micro-batches are shuffled again.
    ``buckets=1`` is plain shuffling.
    """
    def length(i: int) -> int:
        return len(views[i].prompt_ids) + len(views[i].answer_ids)

    while True:
        order = torch.randperm(len(views), generator=generator).tolist()
        chunks = []
        for start in range(0, len(order), batch_size * buckets):
            pool = sorted(order[start : start + batch_size * buckets], key=length)
            chunks += [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
        yield from (chunks[i] for i in torch.randperm(len(chunks), generator=generator).tolist())


def fit(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, targets: TeacherTargets,
        cfg: TrainConfig) -> list[dict[str, float]]:
    """Train ``model`` in place; returns the history [{step, loss, lr}, ...]."""
    # setup
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = num_steps(len(targets), cfg)
    warmup = int(cfg.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _schedule(s, total, warmup, cfg.schedule))
    device = next(model.parameters()).device
    log.info("training %d steps on %d teacher answers (%d trainable parameters)", total, len(targets),
             sum(p.numel() for p in params))

    views = targets.student_views
    shared = Prefix.shared([v.prompt_ids for v in views])

    stream = micro_batches(views, cfg.batch_size, cfg.length_buckets, generator)
    history: list[dict[str, float]] = []
    model.train()
    bar = tqdm(range(total), desc="train", unit="step", disable=None)
    started = time.perf_counter()
    # loop
    for step in bar:
        loss_sum = torch.zeros((), device=device)
        padding = 0.0
        for _ in range(cfg.grad_accum):
            idx = next(stream)
            batch = collate([views[i] for i in idx], tokenizer.pad_token_id, len(shared)).to(device)
            padding += batch.padding_share / cfg.grad_accum
            teacher_logp, teacher_ids = targets.stacked(idx, batch.answer_ids.shape[1])
            teacher_logp = teacher_logp.to(device)
            teacher_ids = None if teacher_ids is None else teacher_ids.to(device)
            logits = answer_logits(model, batch, shared.prefill(model))
            loss = distillation_loss(logits, teacher_logp, teacher_ids, batch.answer_ids, batch.answer_mask,
                                     cfg.loss, cfg.jsd_beta, cfg.ce_weight)
            (loss / cfg.grad_accum).backward()
            loss_sum += loss.detach() / cfg.grad_accum
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        lr = scheduler.get_last_lr()[0]  # the rate this step used
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        # log
        record = {"step": step + 1, "loss": loss_sum.item(), "lr": lr, "padding": round(padding, 4)}
        history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.4f}")
        if (step + 1) % max(1, total // 10) == 0 and step + 1 < total:  # progress in logs too (no tty, no bar)
            elapsed = time.perf_counter() - started
            log.info("step %d/%d, loss %.4f, %.0f s, about %.0f s left", step + 1, total, record["loss"], elapsed,
                     elapsed / (step + 1) * (total - step - 1))
    model.eval()
    return history
