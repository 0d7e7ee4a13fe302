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


@pytest.mark.parametrize("variable", ["ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_MEGATRON_LM"])
def test_a_launch_asking_for_a_strategy_the_loop_does_not_do_is_refused(monkeypatch, variable):
    monkeypatch.setenv(variable, "true")
    with pytest.raises(InternalizeError, match="not supported yet.*fsdp.yaml.*multi_gpu.yaml"):
        Runtime.distributed("cpu")
    monkeypatch.setenv(variable, "false")
    assert Runtime.distributed("cpu").num_processes == 1


def test_without_fsdp_sharding_changes_nothing_and_the_weights_stay_whole(tiny):
    model, _ = tiny
    before = {n: p.clone() for n, p in model.state_dict().items()}
    runtime = Runtime.local("cpu")
    runtime.shard(model)
    assert runtime.full_state_dict(model) is None
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())
    assert runtime.after_sharding is runtime
    sharded = Runtime(torch.device("cpu"), process_index=1, num_processes=2, fsdp=True)
    assert sharded.after_sharding == Runtime(torch.device("cpu"))  # every input, in step: no work shared


@pytest.mark.parametrize(("overrides", "message"), [
    ({"model.finetune": "lora"}, "FSDP shards full fine-tuning: set model.finetune=full"),
    ({"model.finetune": "full", "train.save_every": 2}, "checkpoints are not written under FSDP yet"),
])
def test_what_fsdp_does_not_do_yet_is_refused_before_anything_runs(tiny_model_dir, tmp_path, overrides, message):
    from conftest import tiny_config_dict

    from internalize.config import config_from_dict
    from internalize.pipeline import _check_fsdp

    raw = tiny_config_dict(tiny_model_dir, tmp_path / "run")
    for key, value in overrides.items():
        section, name = key.split(".")
        raw[section][name] = value
    with pytest.raises(InternalizeError, match=message):
        _check_fsdp(config_from_dict(raw))
