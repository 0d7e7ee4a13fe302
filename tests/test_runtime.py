"""runtime.py: the one object that knows the device and the process; single-process by default."""

from __future__ import annotations

import pytest
import torch

from internalize.config import InternalizeError
from internalize.runtime import Runtime


def test_auto_picks_cuda_only_when_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert Runtime.local("auto").device == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert Runtime.local("auto").device == torch.device("cuda")
    assert Runtime.local("cpu").device == torch.device("cpu")


def test_a_device_torch_does_not_know_names_the_key():
    with pytest.raises(InternalizeError, match=r"model\.device='gpu0' is not a torch device"):
        Runtime.local("gpu0")


def test_one_process_is_the_main_one_and_combines_nothing():
    runtime = Runtime.local("cpu")
    assert runtime.is_main and runtime.num_processes == 1
    x = torch.tensor([1.0, 2.0])
    assert runtime.gather(x) is x and runtime.sum(x) is x
    assert not Runtime(torch.device("cpu"), process_index=1, num_processes=2).is_main


@pytest.mark.parametrize("n", [0, 1, 5, 8])
@pytest.mark.parametrize("processes", [1, 2, 3])
def test_split_gives_each_process_a_contiguous_share_and_the_shares_make_the_whole(n, processes):
    items = list(range(n))
    shares = [Runtime(torch.device("cpu"), rank, processes).split(items) for rank in range(processes)]
    assert [i for share in shares for i in share] == items  # in order, nothing lost or repeated
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


@pytest.mark.parametrize("variable", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_a_launch_asking_for_sharding_the_loop_does_not_do_is_refused(monkeypatch, variable):
    monkeypatch.setenv(variable, "true")
    with pytest.raises(InternalizeError, match="not supported yet.*multi_gpu.yaml"):
        Runtime.distributed("cpu")
    monkeypatch.setenv(variable, "false")
    assert Runtime.distributed("cpu").num_processes == 1
