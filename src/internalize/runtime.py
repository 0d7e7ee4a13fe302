"""Runtime: where the model lives and which process this is; the one place that knows.

Every stage takes a ``Runtime`` instead of asking the model for its device. Single-process is the
default (``Runtime.local``); a multi-process launch (Hugging Face Accelerate) gives each process its
own device and rank, and ``gather`` / ``sum`` combine figures across processes.

    runtime = Runtime.local("auto")          # cuda if available, else cpu
    model.to(runtime.device)
    tokens = runtime.sum(batch.answer_mask.sum())
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import InternalizeError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    process_index: int = 0
    num_processes: int = 1

    @classmethod
    def local(cls, device: str = "auto") -> Runtime:
        """One process on ``device`` ('auto': cuda when available, else cpu)."""
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            return cls(torch.device(device))
        except RuntimeError:
            raise InternalizeError(f"model.device='{device}' is not a torch device; use auto, cpu or cuda:N") from None

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

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over all processes (one process: the tensor itself)."""
        if self.num_processes == 1:
            return tensor
        import torch.distributed as dist

        total = tensor.clone()
        dist.all_reduce(total)
        return total
