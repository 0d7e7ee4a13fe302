"""Views: the teacher's and the student's token sequences for one input.

The teacher view is the chat template applied to the context plus the input (the context as a
system message, or before or after the input in the user turn, then any demonstration turns),
followed by the teacher's scratch-pad if any. The student view is the chat template applied to
the input alone. Both end with the same answer ids (the answer tokenized on its own, then the
end-of-turn token), so answer token j has the same id and the same relative position in both:
``decoding.answer_logits`` returns ``[B, A, V]`` logits aligned on j for either view.

    t = View(prompt_ids(tok, "Hi", behaviour.prompt), answer_ids(tok, "Hello. Over."))
    s = View(prompt_ids(tok, "Hi"), t.answer_ids)
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from .config import PromptConfig


@dataclass(frozen=True)
class View:
    """One sequence: a prompt, then the answer tokens whose distributions are matched."""

    prompt_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]


def chat_messages(text: str, prompt: PromptConfig | None = None) -> list[dict[str, str]]:
    """Chat turns for an input; with ``prompt`` the context is placed as configured."""
    if prompt is None:
        return [{"role": "user", "content": text}]
    context, demos = prompt.context.strip(), prompt.demonstrations
    if prompt.demonstration_template:  # the demonstrations as text after the context, not as turns
        shown = [prompt.demonstration_template.format(**demo) for demo in demos]
        context, demos = "\n\n".join([context, *shown] if context else shown), []
    messages = []
    if context and prompt.position == "system":
        messages.append({"role": "system", "content": context})
    for demo in demos:
        messages += [{"role": "user", "content": demo["input"]}, {"role": "assistant", "content": demo["output"]}]
    if context and prompt.position == "before_input":
        text = f"{context}\n\n{text}"
    elif context and prompt.position == "after_input":
        text = f"{text}\n\n{context}"
    messages.append({"role": "user", "content": text})
    return messages


def prompt_ids(tokenizer: PreTrainedTokenizerBase, text: str, prompt: PromptConfig | None = None) -> tuple[int, ...]:
    """Token ids of the chat prompt up to the assistant's turn (the student's view without ``prompt``)."""
    rendered = tokenizer.apply_chat_template(chat_messages(text, prompt), tokenize=False, add_generation_prompt=True)
    return tuple(tokenizer(rendered, add_special_tokens=False).input_ids)


def answer_ids(tokenizer: PreTrainedTokenizerBase, answer: str) -> tuple[int, ...]:
    """The answer tokenized on its own, then the end-of-turn token: identical in both views."""
    return tuple(tokenizer(answer, add_special_tokens=False).input_ids) + (tokenizer.eos_token_id,)
