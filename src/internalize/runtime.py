"""Runtime: where the model lives and which process this is; the one place that knows.

Every stage takes a ``Runtime`` instead of asking the model for its device. Single-process is the
default (``Runtime.local``). Under ``torchrun`` (or any launcher that sets ``RANK`` and
``WORLD_SIZE``) ``Runtime.distributed`` joins the process group (gloo on the CPU, nccl on CUDA) and
gives each process its rank and device; ``gather`` / ``sum`` combine figures across processes,
``average_gradients`` syncs a training step's gradients, and ``split`` / ``gather_objects`` share
inference work out (each process takes a contiguous part of a list, the parts are joined in order).

``accelerate launch`` starts its processes through the same variables (``--multi_gpu`` or a
``distributed_type: MULTI_GPU`` config; on a CPU-only machine that gives gloo processes too). With
an FSDP config (``ACCELERATE_USE_FSDP``) ``shard`` applies torch's FSDP2 (``fully_shard``) to each
transformer block and to the whole model for training: parameters, gradients and AdamW states are
split across the processes. A DeepSpeed or Megatron-LM launch is refused with one line rather than
silently ignored.

    runtime = Runtime.local("auto")          # cuda if available, else cpu
    model.to(runtime.device)
    tokens = runtime.sum(batch.answer_mask.sum())
    mine = runtime.split(prompts); outputs = runtime.gather_objects([work(p) for p in mine])  # == all prompts
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from .config import InternalizeError

T = TypeVar("T")

UNSUPPORTED_LAUNCH = {  # variables `accelerate launch` sets for the strategies the training loop does not implement
    "ACCELERATE_USE_DEEPSPEED": "DeepSpeed", "ACCELERATE_USE_MEGATRON_LM": "Megatron-LM"}


def _env_flag(name: str, default: bool = False) -> bool:
    return os.environ.get(name, str(default)).lower() in ("1", "true")


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    process_index: int = 0
    num_processes: int = 1
    fsdp: bool = False  # training shards the model across the processes (FSDP2)

    @classmethod
    def local(cls, device: str = "auto") -> Runtime:
        """One process on ``device`` ('auto': cuda when available, else cpu)."""
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            return cls(torch.device(device))
        except RuntimeError:
            raise InternalizeError(f"model.device='{device}' is not a torch device; use auto, cpu or cuda:N") from None

    @classmethod
    def distributed(cls, device: str = "auto") -> Runtime:
        """This process of a multi-process launch (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` set by ``torchrun``),
        its process group joined: gloo on the CPU, nccl on CUDA (device ``cuda:LOCAL_RANK``). Without those
        variables, one process: ``Runtime.local(device)``."""
        for variable, name in UNSUPPORTED_LAUNCH.items():
            if _env_flag(variable):
                raise InternalizeError(f"accelerate launch: {name} is not supported yet; launch with "
                                       "examples/accelerate/fsdp.yaml to shard full fine-tuning, or with "
                                       "examples/accelerate/multi_gpu.yaml (a whole copy per process)")
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls.local(device)
        import torch.distributed as dist

        on_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        where = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}") if on_cuda else torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group("nccl" if on_cuda else "gloo")
        return cls(where, int(os.environ["RANK"]), world, fsdp=_env_flag("ACCELERATE_USE_FSDP"))

    @property
    def is_main(self) -> bool:
        """The process that writes files and logs progress."""
        return self.process_index == 0

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every process's ``tensor`` concatenated along dim 0 (one process: the tensor itself)."""
        if self.num_processes == 1:
            return tensor
        import torch.distributed as dist

        parts = [torch.empty_like(tensor) for _ in range(self.num_processes)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def split(self, items: Sequence[T]) -> list[T]:
        """This process's contiguous part of ``items`` (sizes differ by at most one; one process: all of them)."""
        size, extra = divmod(len(items), self.num_processes)
        start = self.process_index * size + min(self.process_index, extra)
        return list(items[start : start + size + (self.process_index < extra)])

    def gather_objects(self, part: list[T]) -> list[T]:
        """Every process's ``part`` joined in process order: after ``split``, the whole list in its own order."""
        if self.num_processes == 1:
            return part
        import torch.distributed as dist

        parts: list[list[T] | None] = [None] * self.num_processes
        dist.all_gather_object(parts, part)
        return [item for p in parts for item in p or []]

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over all processes (one process: the tensor itself)."""
        if self.num_processes == 1:
            return tensor
        import torch.distributed as dist

        total = tensor.clone()
        dist.all_reduce(total)
        return total

    def average_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Replace each gradient by its mean over the processes (one process, or FSDP, which has averaged them in its
        reduce-scatter: nothing to do)."""
        if self.num_processes == 1 or self.fsdp:
            return
        import torch.distributed as dist

        for p in parameters:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.num_processes

    @property
    def after_sharding(self) -> Runtime:
        """The runtime to run a model ``shard`` has sharded: under FSDP every process must run the same forward
        passes (each gathers the parameters from all), so each takes every input, in step, sharing no work;
        otherwise this runtime."""
        return Runtime(self.device) if self.fsdp else self

    def shard(self, model: torch.nn.Module) -> None:
        """Under FSDP, shard ``model`` in place for training: each transformer block (the model's
        ``_no_split_modules``, or accelerate's ``FSDP_TRANSFORMER_CLS_TO_WRAP``), then the whole model, so each
        process keeps 1/N of the parameters, gradients and optimizer states. Otherwise nothing to do."""
        if not self.fsdp:
            return
        from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

        names = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP") or ",".join(_no_split_modules(model))
        blocks = {name.strip() for name in names.split(",") if name.strip()}
        options = {"reshard_after_forward": _env_flag("FSDP_RESHARD_AFTER_FORWARD", True),
                   "offload_policy": CPUOffloadPolicy() if _env_flag("FSDP_OFFLOAD_PARAMS") else OffloadPolicy()}
        wrapped = [m for m in model.modules() if type(m).__name__ in blocks]
        if not wrapped:
            raise InternalizeError(f"FSDP: no module of {sorted(blocks) or 'the model'} to shard; set "
                                   "fsdp_transformer_layer_cls_to_wrap in the accelerate config to the model's block "
                                   "class (e.g. LlamaDecoderLayer)")
        for module in wrapped:
            fully_shard(module, **options)
        fully_shard(model, **options)

    def full_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """Under FSDP, the whole model's weights gathered onto the main process's CPU (every process must call it;
        the others get an empty dict). Otherwise None: the model's own weights are whole."""
        if not self.fsdp:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def barrier(self) -> None:
        """Wait until every process gets here (one process: return at once)."""
        if self.num_processes > 1:
            import torch.distributed as dist

            dist.barrier()


def _no_split_modules(model: torch.nn.Module) -> list[str]:
    """The block classes a Hugging Face model names as never to be split (PEFT wraps it: look inside)."""
    for module in model.modules():
        names = getattr(module, "_no_split_modules", None)
        if names:
            return list(names)
    return []
