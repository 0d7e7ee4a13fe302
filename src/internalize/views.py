"""Views: the teacher's and the student's token sequences for one input.

The teacher view is the chat template applied to the context plus the input (the context as a
system message, or before or after the input in the user turn, then any demonstration turns),
followed by the teacher's scratch-pad if any. The student view is the chat template applied to
the input alone. Both end with the same answer ids (the answer tokenized on its own, then the
token the template closes an assistant turn with), so answer token j has the same id and the same
relative position in both: ``decoding.answer_logits`` returns ``[B, A, V]`` logits aligned on j
for either view.

    t = View(prompt_ids(tok, "Hi", behaviour.prompt), answer_ids(tok, "Hello. Over."))
    s = View(prompt_ids(tok, "Hi"), t.answer_ids)

What each template does is probed once per tokenizer by rendering a short conversation
(``template_info``): whether it has a system role of its own (Gemma's raises or folds the system
message into the first user turn: ``position: system`` then places the context before the input,
logged once), the token that ends an assistant turn (``<|eot_id|>``, ``<end_of_turn>``,
``<|im_end|>``, ``<|end|>``, ``</s>``: not always ``tokenizer.eos_token``) and any whitespace the
template writes before the answer (Mistral's ``[/INST] answer``). Templates that add a default
system prompt (Qwen2.5, SmolLM2) keep it in the student view; ``position: system`` replaces it.

A base model without a chat template is prompted with plain text: ``model.prompt_template`` (e.g.
``"{context}\\n\\n{input}\\n"``, rendered by ``plain_prompt``) becomes the tokenizer's chat template
(``plain_chat_template``; ``load_model`` installs it, and the artifact keeps it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import string
import weakref
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from .config import PromptConfig

log = logging.getLogger(__name__)

_PLAIN_MARKER = "{#- internalize: model.prompt_template -#}"


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


# --- what a chat template does ------------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateInfo:
    """What a tokenizer's chat template does, probed by rendering (see ``template_info``)."""

    system_role: bool  # a system message is rendered as its own turn (False: raises, drops or folds it)
    answer_prefix: str  # whitespace written between the generation prompt and the answer, kept in answer_ids
    end_of_turn_id: int  # the token that closes an assistant turn


_INFO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_FOLD_LOGGED: set[str] = set()
_PROBE_USER, _PROBE_SYSTEM, _PROBE_ANSWER = "Probe question", "Probe context", "Probe answer"


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def template_info(tokenizer: PreTrainedTokenizerBase) -> TemplateInfo:
    """Probe the chat template once per tokenizer (and template): its system role, the whitespace it
    writes before an answer and the token that ends an assistant turn (``eos_token`` when unclear)."""
    key = (tokenizer.chat_template, tokenizer.eos_token_id)
    cached = _INFO.get(tokenizer)
    if cached is not None and cached[0] == key:
        return cached[1]
    user = [{"role": "user", "content": _PROBE_USER}]
    try:
        with_system = _render(tokenizer, [{"role": "system", "content": _PROBE_SYSTEM}, *user], True)
        folded = _render(tokenizer, [{"role": "user", "content": f"{_PROBE_SYSTEM}\n\n{_PROBE_USER}"}], True)
        # a plain prompt template's {context} is its system role, even where it renders like a fold
        system_role = is_plain(tokenizer) or (_PROBE_SYSTEM in with_system and with_system != folded)
    except Exception:  # noqa: BLE001 - a template that refuses a system message (raise_exception)
        system_role = False
    prefix, end = "", tokenizer.eos_token_id
    prompt = _render(tokenizer, user, True)
    full = _render(tokenizer, [*user, {"role": "assistant", "content": _PROBE_ANSWER}], False)
    at = full.find(_PROBE_ANSWER, len(prompt)) if full.startswith(prompt) else -1
    if at < 0:
        log.debug("chat template: no answer found after the generation prompt; answers end with eos_token")
    else:
        between, after = full[len(prompt) : at], full[at + len(_PROBE_ANSWER) :].lstrip(" \n")
        closing = _ids(tokenizer, after)[:1]
        special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
        if closing and closing[0] in special:
            end = closing[0]
        # whitespace before the answer ("[/INST] answer") belongs to the answer's tokens, unless the
        # tokenizer writes it itself (SentencePiece's "▁answer"): keep whichever reproduces the template's ids
        if between and not between.strip():
            whole = _ids(tokenizer, prompt + between + _PROBE_ANSWER)
            if whole == _ids(tokenizer, prompt) + _ids(tokenizer, between + _PROBE_ANSWER) != \
                    _ids(tokenizer, prompt) + _ids(tokenizer, _PROBE_ANSWER):
                prefix = between
    info = TemplateInfo(system_role, prefix, end)
    _INFO[tokenizer] = (key, info)
    return info


def end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token id the chat template closes an assistant turn with (e.g. ``<end_of_turn>``, not ``<eos>``)."""
    return template_info(tokenizer).end_of_turn_id


def stop_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    """The tokens a generated answer ends at: the template's end of turn, and the end-of-sequence token."""
    return tuple(dict.fromkeys((end_of_turn_id(tokenizer), tokenizer.eos_token_id)))


def placed(tokenizer: PreTrainedTokenizerBase, prompt: PromptConfig | None) -> PromptConfig | None:
    """``prompt`` as this template takes it: without a system role, ``position: system`` becomes ``before_input``."""
    if prompt is None or prompt.position != "system" or template_info(tokenizer).system_role:
        return prompt
    template = str(tokenizer.chat_template)
    if template not in _FOLD_LOGGED:
        _FOLD_LOGGED.add(template)
        log.info("the chat template has no system role of its own (it refuses, drops or folds a system message): "
                 "position: system places the context in the user turn, before the input (as before_input)")
    return dataclasses.replace(prompt, position="before_input")


def prompt_ids(tokenizer: PreTrainedTokenizerBase, text: str, prompt: PromptConfig | None = None) -> tuple[int, ...]:
    """Token ids of the chat prompt up to the assistant's turn (the student's view without ``prompt``)."""
    rendered = _render(tokenizer, chat_messages(text, placed(tokenizer, prompt)), True)
    return tuple(_ids(tokenizer, rendered))


def answer_ids(tokenizer: PreTrainedTokenizerBase, answer: str) -> tuple[int, ...]:
    """The answer tokenized on its own (after any whitespace the template writes before it), then the
    token that closes an assistant turn: identical in both views."""
    info = template_info(tokenizer)
    return tuple(_ids(tokenizer, info.answer_prefix + answer)) + (info.end_of_turn_id,)


# --- plain prompt templates (base models) -------------------------------------------------------------


def _segments(template: str, with_context: bool) -> list[tuple[str, str]]:
    """The template as ("text", literal) and ("field", name) pieces. Without a context, ``{context}`` goes with
    the text before it on its line and the whitespace after it (before it, where nothing follows)."""
    pieces: list[tuple[str, str]] = []
    for literal, name, _, _ in string.Formatter().parse(template):
        pieces += [("text", literal)] + ([("field", name)] if name is not None else [])
    if with_context:
        return pieces
    at = pieces.index(("field", "context"))
    before, after = pieces[:at], pieces[at + 1 :]
    if any(kind == "field" or value.strip() for kind, value in after):
        if before and before[-1][0] == "text":
            literal = before[-1][1]
            before[-1] = ("text", literal[: literal.rfind("\n") + 1])
        if after and after[0][0] == "text":
            after[0] = ("text", after[0][1].lstrip())
    else:
        if before and before[-1][0] == "text":
            before[-1] = ("text", before[-1][1].rstrip())
        after = []
    return before + after


def plain_prompt(template: str, context: str, text: str) -> str:
    """A plain-text prompt: ``template`` with ``{context}`` and ``{input}`` filled. An empty context takes
    ``{context}``, the text before it on its line and the whitespace after it away (the whitespace before
    it, where it ends the template): ``"{context}\\n\\n{input}\\n"`` renders ``"{input}\\n"`` and
    ``"Context: {context}\\nInput: {input}"`` renders ``"Input: {input}"``."""
    values = {"context": context, "input": text}
    return "".join(value if kind == "text" else values[value] for kind, value in _segments(template, bool(context)))


def plain_chat_template(template: str, bos: bool = False) -> str:
    """A Jinja chat template that renders conversations with the plain ``template``: the last user message
    is the input; the system message and the turns before it (as ``Input: ..\\nOutput: ..``, blank lines
    between) are the context; an assistant message after it is the answer, closed by ``eos_token``. No
    generation prompt is added: the prompt ends where the template ends. ``bos``: start with ``bos_token``."""
    def jinja(with_context: bool) -> str:
        out = []
        for kind, value in _segments(template, with_context):
            if kind == "text":
                out.append("{{ " + json.dumps(value, ensure_ascii=False) + " }}" if value else "")
            else:
                out.append("{{ ns.context }}" if value == "context" else "{{ message['content'] }}")
        return "".join(out)

    return (
        _PLAIN_MARKER
        + "{%- set ns = namespace(last=-1, context='') -%}"
        + "{%- for message in messages -%}{%- if message['role'] == 'user' -%}{%- set ns.last = loop.index0 -%}"
          "{%- endif -%}{%- endfor -%}"
        + "{%- if ns.last < 0 -%}{{ raise_exception('model.prompt_template needs a user message') }}{%- endif -%}"
        + ("{{ bos_token }}" if bos else "")
        + "{%- for message in messages -%}"
          "{%- set sep = '\\n\\n' if ns.context else '' -%}"
          "{%- if loop.index0 < ns.last -%}"
          "{%- if message['role'] == 'system' -%}{%- set ns.context = ns.context + sep + message['content'] -%}"
          "{%- elif message['role'] == 'user' -%}{%- set ns.context = ns.context + sep + 'Input: ' + message['content'] -%}"
          "{%- else -%}{%- set ns.context = ns.context + '\\nOutput: ' + message['content'] -%}{%- endif -%}"
          "{%- elif loop.index0 == ns.last -%}"
          "{%- if ns.context -%}" + jinja(True) + "{%- else -%}" + jinja(False) + "{%- endif -%}"
          "{%- elif message['role'] == 'assistant' -%}{{ message['content'] + eos_token }}"
          "{%- endif -%}"
          "{%- endfor -%}"
    )


def is_plain(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer's chat template is a ``model.prompt_template`` (``plain_chat_template``)."""
    return str(tokenizer.chat_template or "").startswith(_PLAIN_MARKER)
