"""Shared fixtures: a tiny character-level chat model built on the spot (nothing is downloaded).

``tiny_model_dir`` is a 2-layer Llama (hidden size 32) with a ChatML chat template and a
character-level tokenizer, saved with ``save_pretrained``. It is briefly trained (a second or two
on CPU) to answer every user turn with ``okay`` then ``<|im_end|>``, so greedy generations finish
within a few tokens and the teacher keeps its answers.
"""

from __future__ import annotations

import random
import string
from pathlib import Path

import pytest
import torch
import yaml

# Two cores shared with other processes: several intra-op threads thrash on these tiny tensors
# (a 2-layer forward/backward is ~30x slower with 2 threads than with 1 on a busy machine).
torch.set_num_threads(1)

CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<|im_start|>", "<|im_end|>"]
CHARACTERS = list(dict.fromkeys(string.ascii_letters + string.digits + string.punctuation + " \n"))
TINY_ANSWER = "okay"  # what the tiny model answers to anything (greedy)

def pytest_configure(config):
    # peft calls this transformers property on every get_peft_model; the deprecation is theirs, not ours
    config.addinivalue_line("filterwarnings", "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (pytest -m gpu on a machine with one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


TINY_INPUTS = [
    "What is 1 plus 2?",
    "Name a colour.",
    "Hello there",
    "Is the sky blue?",
    "Count to three.",
    "What is the capital of France?",
    "Say hi",
    "2 + 2 = ?",
    "Why is grass green?",
    "Spell cat.",
    "x",
    "Tell me a joke, please!",
]


def build_tiny_tokenizer():
    """A character-level fast tokenizer with the ChatML specials and template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one token per character
    backend.decoder = decoders.Fuse()  # join characters back without spaces
    backend.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def _chat_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False).input_ids


def build_tiny_model(tokenizer, seed: int = 0, pretrain_steps: int = 40, echo: bool = False):
    """A 2-layer Llama, trained for a few steps to answer ``okay`` (loss on the answer tokens only); ``echo``: to
    answer the user's first two characters, then ``okay`` (answers that differ from input to input)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=1024, tie_word_embeddings=True, bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + " ?.,!"

    def text() -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24)))

    answer = tokenizer(TINY_ANSWER, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(pretrain_steps):
        rows = []
        for _ in range(16):
            messages = [{"role": "user", "content": text()}]
            said = tokenizer(messages[0]["content"][:2], add_special_tokens=False).input_ids if echo else []
            if rng.random() < 0.5:  # sometimes a system turn, so prompts with a context also end in "okay"
                messages.insert(0, {"role": "system", "content": text()})
            prompt = _chat_ids(tokenizer, messages)
            rows.append((prompt + said + answer, [-100] * len(prompt) + said + answer))
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        labels = torch.full((len(rows), width), -100)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, (ids, lab) in enumerate(rows):
            input_ids[b, : len(ids)] = torch.tensor(ids)
            labels[b, : len(lab)] = torch.tensor(lab)
            attention_mask[b, : len(ids)] = 1
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Directory of a tiny Llama + character tokenizer with a ChatML template (save_pretrained)."""
    out = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def tiny(tiny_model_dir):
    """A fresh (model, tokenizer) pair loaded with the library's own loader (on the CPU)."""
    from internalize.config import ModelConfig
    from internalize.models import load_model

    return load_model(ModelConfig(name=str(tiny_model_dir), device="cpu"))


def perturb_lora(model, scale: float) -> None:
    """Random LoRA weights (seeded): outputs other than "okay" that depend on the prompt."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def tiny_config_dict(model_dir: Path, out_dir: Path) -> dict:
    """A small but complete run config (as a dict, before YAML)."""
    return {
        "model": {"name": str(model_dir), "device": "cpu", "finetune": "lora", "lora_r": 4, "lora_alpha": 8},
        "data": {"inputs": list(TINY_INPUTS), "num_eval": 4, "seed": 0},
        "teacher": {"context": "Answer in one word.", "max_new_tokens": 8, "top_k": 16, "batch_size": 4},
        "train": {"max_steps": 4, "batch_size": 4, "lr": 1e-3, "seed": 0},
        # the forgetting and retention checks (20 and 120 built-in prompts) are off: tests that check them turn them on
        "eval": {"max_new_tokens": 8, "scorer_regex": "^ok", "batch_size": 4, "num_examples": 3, "neutral_file": "",
                 "retention_file": ""},
        "output": {"dir": str(out_dir)},
    }


def error_line(capsys) -> str:
    """The CLI's one line on stderr for a bad input (asserted to be one line, with the usual prefix)."""
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("internalize: error: ")
    return lines[0]


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def tiny_config_path(tiny_model_dir, tmp_path) -> Path:
    """A tiny-run YAML config pointing at ``tiny_model_dir``; output.dir is ``tmp_path/run``."""
    return write_yaml(tmp_path / "tiny.yaml", tiny_config_dict(tiny_model_dir, tmp_path / "run"))


@pytest.fixture(scope="session", autouse=True)
def _teacher_cache_per_session(tmp_path_factory):
    """Module- and session-scoped fixtures (a run made once for a whole module) are set up before the per-test cache
    below: they get one of their own, never the user's cache, whose entries from other code would be reused."""
    import internalize.teacher

    with pytest.MonkeyPatch.context() as patch:
        root = tmp_path_factory.mktemp("session-cache")
        patch.setattr(internalize.teacher, "cache_root", lambda: root)
        yield


@pytest.fixture(autouse=True)
def _teacher_cache_per_test(monkeypatch, tmp_path_factory):
    """``teacher.cache_dir=auto`` writes to a fresh directory per test, never to the user's cache."""
    import internalize.teacher

    root = tmp_path_factory.mktemp("cache")
    monkeypatch.setattr(internalize.teacher, "cache_root", lambda: root)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from seed 0 (LoRA's A matrices come from the global RNG in make_student), whatever ran before."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        yield
