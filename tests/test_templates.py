# ruff: noqa: E501  (the chat templates below are kept verbatim, long lines included)
"""Prompt formats: the real chat templates of the major families, and plain prompt templates for base models.

Each family's chat template is kept here as text (from its tokenizer_config.json) and used with a tiny
character-level tokenizer that has that family's special tokens as added tokens. For each, the teacher
view (context as a system message, before or after the input) and the student view render, and
``prompt_ids + answer_ids`` is exactly the template's own rendering of the conversation with that
assistant turn, through the token the template closes the turn with (not always ``eos_token``).
"""

from __future__ import annotations

import logging
import string

import pytest
from conftest import TINY_INPUTS, build_tiny_model, tiny_config_dict

from internalize.config import InternalizeError, ModelConfig, PromptConfig
from internalize.views import (
    answer_ids,
    chat_messages,
    end_of_turn_id,
    placed,
    plain_chat_template,
    plain_prompt,
    prompt_ids,
    template_info,
)

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

GEMMA2 = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

GEMMA3 = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""

MISTRAL_V03 = """{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}

{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != "return" %}
                    {%- if val is string %}
                        {{- '"' + key + '": "' + val + '"' }}
                    {%- else %}
                        {{- '"' + key + '": ' + val|tojson }}
                    {%- endif %}
                    {%- if not loop.last %}
                        {{- ", " }}
                    {%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- else %}
                    {{- "]" }}
                {%- endif %}
            {%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
            {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message.tool_calls is defined and message.tool_calls is not none %}
        {{- "[TOOL_CALLS] [" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function|tojson %}
            {{- out[:-1] }}
            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}
                {{- ", " }}
            {%- else %}
                {{- "]" + eos_token }}
            {%- endif %}
        {%- endfor %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}
        {%- if message.content is defined and message.content.content is defined %}
            {%- set content = message.content.content %}
        {%- else %}
            {%- set content = message.content %}
        {%- endif %}
        {{- '[TOOL_RESULTS] {"content": ' + content|string + ", " }}
        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}
            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
        {%- endif %}
        {{- '"call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""

PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# family: (template, special tokens, bos, eos, the token that closes an assistant turn)
FAMILIES = {
    "llama3": (LLAMA3, ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                        "<|eot_id|>"], "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"),
    "qwen2.5": (QWEN25, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|im_end|>", "<|im_end|>"),
    "gemma2": (GEMMA2, ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>", "<end_of_turn>"),
    "gemma3": (GEMMA3, ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>"], "<bos>", "<eos>",
               "<end_of_turn>"),
    "mistral-v0.3": (MISTRAL_V03, ["<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                                   "[TOOL_CALLS]", "[TOOL_RESULTS]"], "<s>", "</s>", "</s>"),
    "phi3": (PHI3, ["<s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], "<s>",
             "<|endoftext|>", "<|end|>"),
    "smollm2": (SMOLLM2, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|im_start|>", "<|im_end|>", "<|im_end|>"),
}
NO_SYSTEM_ROLE = {"gemma2", "gemma3", "mistral-v0.3"}  # raise, or fold the system message into a user turn
DEFAULT_SYSTEM = {"qwen2.5": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
                  "smollm2": "You are a helpful AI assistant named SmolLM, trained by Hugging Face"}
CHARACTERS = list(dict.fromkeys(string.ascii_letters + string.digits + string.punctuation + " \n"))


def family_tokenizer(template: str | None, specials: list[str], bos: str | None, eos: str):
    """A character-level fast tokenizer with the family's special tokens as added tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(["<unk>", *specials, *CHARACTERS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(["<unk>", *specials])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token=bos, eos_token=eos,
                                   pad_token=eos, chat_template=template, clean_up_tokenization_spaces=False)


@pytest.fixture(params=sorted(FAMILIES))
def family(request):
    template, specials, bos, eos, end = FAMILIES[request.param]
    return request.param, family_tokenizer(template, specials, bos, eos), end


CONTEXT = "Answer briefly."
DEMOS = [{"input": "2+2?", "output": "4"}]
PROMPTS = {
    "student": None,
    "system": PromptConfig(context=CONTEXT, position="system"),
    "before_input": PromptConfig(context=CONTEXT, position="before_input"),
    "after_input": PromptConfig(context=CONTEXT, position="after_input"),
    "system+demos": PromptConfig(context=CONTEXT, position="system", demonstrations=DEMOS),
    "before_input+demos": PromptConfig(context=CONTEXT, position="before_input", demonstrations=DEMOS),
}


def _conversation(tok, text, prompt, answer):
    """The template's own rendering (text and ids) of the conversation with the answer, through the turn's end."""
    messages = chat_messages(text, placed(tok, prompt)) + [{"role": "assistant", "content": answer}]
    rendered = tok.apply_chat_template(messages, tokenize=False)
    end = tok.convert_ids_to_tokens(end_of_turn_id(tok))
    return rendered[: rendered.index(end, rendered.index(answer)) + len(end)]


@pytest.mark.parametrize("view", sorted(PROMPTS))
def test_views_render_and_answers_align_with_the_template(family, view):
    name, tok, end = family
    text, answer = "What is the capital of France?", "Paris. Over."
    ids = answer_ids(tok, answer)
    assert ids[-1] == tok.convert_tokens_to_ids(end)  # the turn's own end, e.g. <|eot_id|>, not <|end_of_text|>
    teacher = prompt_ids(tok, text, PROMPTS[view])
    expected = _conversation(tok, text, PROMPTS[view], answer)
    assert tok.decode(list(teacher + ids)) == expected  # prompt + answer is the template's own conversation
    assert list(teacher + ids) == tok(expected, add_special_tokens=False).input_ids
    if PROMPTS[view] is not None:
        assert CONTEXT in tok.decode(list(teacher))
        student = prompt_ids(tok, text)
        assert CONTEXT not in tok.decode(list(student))
        # the same answer ids after either prompt: token j of the answer is at len(prompt) + j in both
        assert (student + ids)[len(student):] == (teacher + ids)[len(teacher):] == ids


def test_end_of_turn_differs_from_eos_where_the_template_says_so(family):
    name, tok, end = family
    assert tok.convert_ids_to_tokens(end_of_turn_id(tok)) == end
    assert (end_of_turn_id(tok) == tok.eos_token_id) == (name not in {"llama3", "gemma2", "gemma3", "phi3"})


def test_system_role_is_detected(family):
    name, tok, _ = family
    assert template_info(tok).system_role == (name not in NO_SYSTEM_ROLE)


def test_mistral_answer_keeps_the_space_the_template_writes_before_it():
    # "[/INST] Paris</s>": with a tokenizer that writes no space of its own (unlike SentencePiece's "▁Paris")
    # the space is the answer's first token, as the template has it
    tok = family_tokenizer(*FAMILIES["mistral-v0.3"][:4])
    assert template_info(tok).answer_prefix == " "
    assert tok.decode(list(answer_ids(tok, "Paris"))) == " Paris</s>"


@pytest.mark.parametrize("name", ["gemma2", "gemma3"])
def test_no_system_role_folds_the_context_before_the_input(name, caplog):
    import internalize.views

    internalize.views._FOLD_LOGGED.clear()
    tok = family_tokenizer(*FAMILIES[name][:4])
    with caplog.at_level(logging.INFO, logger="internalize.views"):
        for text in TINY_INPUTS[:3]:  # position: system does not raise (Gemma 2's template would)
            for demos in ([], DEMOS):
                system = prompt_ids(tok, text, PromptConfig(context=CONTEXT, position="system", demonstrations=demos))
                before = prompt_ids(tok, text, PromptConfig(context=CONTEXT, position="before_input",
                                                            demonstrations=demos))
                assert system == before
    folds = [r for r in caplog.records if "no system role" in r.getMessage()]
    assert len(folds) == 1  # said once
    assert tok.decode(list(system)).endswith(f"<start_of_turn>user\n{CONTEXT}\n\n{TINY_INPUTS[2]}<end_of_turn>\n"
                                             "<start_of_turn>model\n")
    if name == "gemma2":  # the template itself refuses a system message
        with pytest.raises(Exception, match="System role not supported"):
            tok.apply_chat_template(chat_messages("x", PromptConfig(context=CONTEXT)), tokenize=False)


@pytest.mark.parametrize("name", sorted(DEFAULT_SYSTEM))
def test_default_system_prompt_in_the_student_view_replaced_by_the_context(name):
    """Qwen2.5 and SmolLM2 add a default system prompt when the conversation has none. The student (no
    context) therefore sees that default prompt; the teacher with ``position: system`` sees the context
    in its place (the default is gone, not kept beside it); with ``before_input`` the teacher keeps the
    default system prompt and has the context in the user turn. The answer ids are the same in all."""
    tok = family_tokenizer(*FAMILIES[name][:4])
    default = DEFAULT_SYSTEM[name]
    student = tok.decode(list(prompt_ids(tok, "Hi")))
    system = tok.decode(list(prompt_ids(tok, "Hi", PROMPTS["system"])))
    before = tok.decode(list(prompt_ids(tok, "Hi", PROMPTS["before_input"])))
    assert student.startswith(f"<|im_start|>system\n{default}<|im_end|>\n<|im_start|>user\nHi<|im_end|>")
    assert system.startswith(f"<|im_start|>system\n{CONTEXT}<|im_end|>\n") and default not in system
    assert default in before and f"{CONTEXT}\n\nHi" in before
    ids = answer_ids(tok, "Hello")
    for prompt in (None, PROMPTS["system"], PROMPTS["before_input"]):
        assert tok.decode(list(prompt_ids(tok, "Hi", prompt) + ids)) == _conversation(tok, "Hi", prompt, "Hello")


# --- plain prompt templates (base models) ---------------------------------------------------------------


@pytest.mark.parametrize(("template", "with_context", "without"), [
    ("{context}\n\n{input}\n", "C\n\nX\n", "X\n"),
    ("Context: {context}\nInput: {input}\nOutput:", "Context: C\nInput: X\nOutput:", "Input: X\nOutput:"),
    ("{input}\n\n{context}\n", "X\n\nC\n", "X"),
    ("Q {{braces}}: {input} {context}", "Q {braces}: X C", "Q {braces}: X"),
])
def test_plain_prompt_with_and_without_context(template, with_context, without):
    assert plain_prompt(template, "C", "X") == with_context
    assert plain_prompt(template, "", "X") == without
    tok = family_tokenizer(None, ["<|endoftext|>"], None, "<|endoftext|>")
    tok.chat_template = plain_chat_template(template)
    render = tok.apply_chat_template
    assert render([{"role": "system", "content": "C"}, {"role": "user", "content": "X"}], tokenize=False,
                  add_generation_prompt=True) == with_context
    assert render([{"role": "user", "content": "X"}], tokenize=False, add_generation_prompt=True) == without


PLAIN = "{context}\n\n{input}\n"


def _plain_tokenizer():
    tok = family_tokenizer(None, ["<|endoftext|>"], None, "<|endoftext|>")
    tok.chat_template = plain_chat_template(PLAIN)
    return tok


def test_plain_views_and_answer():
    tok = _plain_tokenizer()
    assert tok.decode(list(prompt_ids(tok, "Hi"))) == "Hi\n"
    assert tok.decode(list(prompt_ids(tok, "Hi", PROMPTS["system"]))) == f"{CONTEXT}\n\nHi\n"
    assert prompt_ids(tok, "Hi", PROMPTS["system"]) == prompt_ids(tok, "Hi", PROMPTS["before_input"])
    assert tok.decode(list(prompt_ids(tok, "Hi", PROMPTS["after_input"]))) == f"Hi\n\n{CONTEXT}\n"
    # demonstration turns become text in the context, as demonstration_template "Input: ..\nOutput: .." would
    demos = PromptConfig(context=CONTEXT, demonstrations=[*DEMOS, {"input": "3+3?", "output": "6"}])
    as_text = PromptConfig(context=CONTEXT, demonstrations=demos.demonstrations,
                           demonstration_template="Input: {input}\nOutput: {output}")
    expected = f"{CONTEXT}\n\nInput: 2+2?\nOutput: 4\n\nInput: 3+3?\nOutput: 6\n\nHi\n"
    assert tok.decode(list(prompt_ids(tok, "Hi", demos))) == tok.decode(list(prompt_ids(tok, "Hi", as_text))) == expected
    ids = answer_ids(tok, "Hello")
    assert ids[-1] == tok.eos_token_id and tok.decode(list(prompt_ids(tok, "Hi") + ids)) == "Hi\nHello<|endoftext|>"


def test_plain_template_starts_with_bos_when_the_tokenizer_adds_one():
    tok = family_tokenizer(None, ["<s>", "</s>"], "<s>", "</s>")
    tok.chat_template = plain_chat_template(PLAIN, bos=True)
    assert tok.decode(list(prompt_ids(tok, "Hi"))) == "<s>Hi\n"


@pytest.mark.parametrize(("template", "why"), [
    ("{input}\n", "use {context} and {input}, once each"),
    ("{context} {input} {input}", "once each"),
    ("{context} {question}", "['context', 'question']"),
    ("{context!r} {input}", "no format spec"),
    ("{context {input}", "braces doubled"),
])
def test_prompt_template_is_validated(template, why):
    with pytest.raises(InternalizeError) as e:
        ModelConfig(prompt_template=template)
    line = str(e.value)
    assert line.startswith("model.prompt_template=") and why in line and "\n" not in line


BASE_FORMAT = "Context: {context}\nInput: {input}\nOutput:"


@pytest.fixture(scope="module")
def base_model_dir(tmp_path_factory):
    """A tiny base model: character tokenizer with no chat template, trained to answer "okay" + eos in BASE_FORMAT."""
    from conftest import build_tiny_tokenizer

    out = tmp_path_factory.mktemp("tiny-base")
    tok = build_tiny_tokenizer()
    tok.chat_template = plain_chat_template(BASE_FORMAT)  # build_tiny_model renders its examples with it
    model = build_tiny_model(tok)
    tok.chat_template = None
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_base_model_needs_a_prompt_template(base_model_dir):
    from internalize.models import load_model

    with pytest.raises(InternalizeError) as e:
        load_model(ModelConfig(name=str(base_model_dir), device="cpu"))
    assert "has no chat template; set model.prompt_template" in str(e.value) and "\n" not in str(e.value)
    model, tok = load_model(ModelConfig(name=str(base_model_dir), device="cpu", prompt_template=PLAIN))
    assert tok.decode(list(prompt_ids(tok, "Hi", PROMPTS["system"]))) == f"{CONTEXT}\n\nHi\n"
    assert answer_ids(tok, "ok")[-1] == tok.eos_token_id


def test_distill_runs_on_a_base_model_with_a_prompt_template(base_model_dir, tmp_path):
    from conftest import write_yaml

    import internalize
    from internalize.config import load_config

    raw = tiny_config_dict(base_model_dir, tmp_path / "run")
    raw["model"]["prompt_template"] = BASE_FORMAT
    raw["train"]["max_steps"] = 2
    cfg = load_config(write_yaml(tmp_path / "base.yaml", raw), [])
    internalize.distill(cfg)
    assert (tmp_path / "run" / "model" / "config.json").is_file()
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(tmp_path / "run" / "model")  # the artifact keeps the prompt format
    assert saved.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                     add_generation_prompt=True) == "Input: Hi\nOutput:"


def test_generation_stops_at_the_templates_end_of_turn(tmp_path):
    """A model that ends its turn with the template's own token (not eos) finishes there, and the teacher's
    generated answer then equals its view's answer ids, end token included."""
    from conftest import build_tiny_tokenizer

    from internalize.decoding import answer_text
    from internalize.views import stop_ids

    tok = build_tiny_tokenizer()
    assert stop_ids(tok) == (tok.eos_token_id,)  # ChatML: the turn ends with the eos token itself
    ids = tok("okay", add_special_tokens=False).input_ids
    end = tok.convert_tokens_to_ids("<unk>")  # a stand-in end-of-turn token distinct from eos
    assert answer_text(tok, [*ids, end, 5], (end, tok.eos_token_id)) == ("okay", True)
    assert answer_text(tok, ids, (end,)) == ("okay", False)
