"""Views: the teacher's and the student's token sequences for one input, and their batches.

The teacher view is the chat template applied to the context plus the input (the context as a
system message, or before or after the input in the user turn, then any demonstration turns),
followed by the teacher's scratch-pad if any. The student view is the chat template applied to
the input alone. Both end with the same answer ids (the answer tokenized on its own, then the
end-of-turn token), so answer token j has the same id and the same relative position in both:
``answer_logits`` returns ``[B, A, V]`` logits aligned on j for either view.

    t = View(prompt_ids(tok, "Hi", teacher_cfg), answer_ids(tok, "Hello. Over."))
    s = View(prompt_ids(tok, "Hi"), t.answer_ids)
    logits = answer_logits(model, collate([t], tok.pad_token_id))  # [1, A, V]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .config import TeacherConfig


@dataclass(frozen=True)
class View:
    """One sequence: a prompt, then the answer tokens whose distributions are matched."""

    prompt_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]


def chat_messages(text: str, teacher: TeacherConfig | None = None) -> list[dict[str, str]]:
    """Chat turns for an input; with ``teacher`` the context is placed as configured."""
    if teacher is None:
        return [{"role": "user", "content": text}]
    context = teacher.context.strip()
    messages = []
    if context and teacher.position == "system":
        messages.append({"role": "system", "content": context})
    for demo in teacher.demonstrations:
        messages += [{"role": "user", "content": demo["input"]}, {"role": "assistant", "content": demo["output"]}]
    if context and teacher.position == "before_input":
        text = f"{context}\n\n{text}"
    elif context and teacher.position == "after_input":
        text = f"{text}\n\n{context}"
    messages.append({"role": "user", "content": text})
    return messages


def prompt_ids(tokenizer: PreTrainedTokenizerBase, text: str, teacher: TeacherConfig | None = None) -> tuple[int, ...]:
    """Token ids of the chat prompt up to the assistant's turn (student view if no teacher)."""
    rendered = tokenizer.apply_chat_template(chat_messages(text, teacher), tokenize=False, add_generation_prompt=True)
    return tuple(tokenizer(rendered, add_special_tokens=False).input_ids)


def answer_ids(tokenizer: PreTrainedTokenizerBase, answer: str) -> tuple[int, ...]:
    """The answer tokenized on its own, then the end-of-turn token: identical in both views."""
    return tuple(tokenizer(answer, add_special_tokens=False).input_ids) + (tokenizer.eos_token_id,)


@dataclass
class Batch:
    """Right-padded views. ``answer_pos[b, j]`` indexes the kept logits that predict answer token j."""

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    answer_pos: torch.Tensor  # [B, A] indices into the last `keep` logits
    answer_ids: torch.Tensor  # [B, A]
    answer_mask: torch.Tensor  # [B, A] bool, False on padding
    keep: int  # logits_to_keep: only positions from the earliest answer onwards are projected

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.answer_pos.to(device),
                     self.answer_ids.to(device), self.answer_mask.to(device), self.keep)


def collate(views: list[View], pad_id: int) -> Batch:
    """Pad views on the right into one batch."""
    length = max(len(v.prompt_ids) + len(v.answer_ids) for v in views)
    answers = max(len(v.answer_ids) for v in views)
    keep = length - min(len(v.prompt_ids) for v in views) + 1
    shape = (len(views), length)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    attention_mask = torch.zeros(shape, dtype=torch.long)
    answer_pos = torch.zeros(len(views), answers, dtype=torch.long)
    answer_tok = torch.full((len(views), answers), pad_id, dtype=torch.long)
    answer_mask = torch.zeros(len(views), answers, dtype=torch.bool)
    for b, v in enumerate(views):
        seq = v.prompt_ids + v.answer_ids
        input_ids[b, : len(seq)] = torch.tensor(seq)
        attention_mask[b, : len(seq)] = 1
        n = len(v.answer_ids)
        # token at absolute position P + j is predicted by the logits at P + j - 1
        answer_pos[b, :n] = torch.arange(n) + len(v.prompt_ids) - 1 - (length - keep)
        answer_tok[b, :n] = torch.tensor(v.answer_ids)
        answer_mask[b, :n] = True
    return Batch(input_ids, attention_mask, answer_pos, answer_tok, answer_mask, keep)


def batches(views: list[View], batch_size: int, pad_id: int) -> list[tuple[list[int], Batch]]:
    """Length-sorted batches (little padding) with the original indices of their views."""
    order = sorted(range(len(views)), key=lambda i: len(views[i].prompt_ids) + len(views[i].answer_ids))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [(idx, collate([views[i] for i in idx], pad_id)) for idx in chunks]


def pad_stack(rows: list[torch.Tensor], length: int) -> torch.Tensor:
    """Stack per-view [A_i, C] tensors into [B, length, C], zero-padded (padding is masked out)."""
    out = rows[0].new_zeros((len(rows), length, rows[0].shape[-1]))
    for b, row in enumerate(rows):
        out[b, : row.shape[0]] = row
    return out


def answer_logits(model: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """Logits ``[B, A, V]`` predicting each answer token; only answer positions are projected."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=batch.keep,
                use_cache=False)
    logits = out.logits
    index = batch.answer_pos.unsqueeze(-1).expand(-1, -1, logits.shape[-1])
    return logits.gather(1, index)
