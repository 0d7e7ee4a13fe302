"""Two CPU processes (torchrun, or accelerate launch; gloo) train and distill like one process at the same
effective batch size.

The training seam of a multi-process run: ``Runtime.distributed`` joins the process group,
``OfflineBatches(rank, processes)`` gives each process its share of the same micro-batch order,
``fit`` normalises the loss by the answer tokens of all processes and averages the gradients. Two
processes with 1 micro-batch of 2 each per step take the steps of one process with 2 micro-batches
of 2: the same number of optimizer updates, the same losses and the same weights (to tolerance).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import TINY_INPUTS, build_tiny_model, build_tiny_tokenizer
from safetensors.torch import load_file

from internalize.config import ModelConfig, TrainConfig
from internalize.models import load_model, make_student
from internalize.runtime import Runtime
from internalize.sources import OfflineBatches
from internalize.targets import Targets, topk_with_tail
from internalize.training import fit
from internalize.views import View, answer_ids, prompt_ids

EXAMPLES = Path(__file__).parent.parent / "examples" / "accelerate"
ANSWERS = ("hello!", "Bye", "A-OK", "no", "yes please", "42", "x", "a longer answer here")
LORA = {"lora_r": 4, "lora_alpha": 8}

WORKER = textwrap.dedent('''
    import json, sys
    import torch
    from safetensors.torch import save_file
    from test_distributed import LORA, targets
    from internalize.config import ModelConfig, TrainConfig
    from internalize.models import load_model, make_student
    from internalize.runtime import Runtime
    from internalize.sources import OfflineBatches
    from internalize.training import fit

    model_dir, out = sys.argv[1], sys.argv[2]
    runtime = Runtime.distributed("cpu")
    assert runtime.num_processes == 2, runtime
    share = runtime.split(list(range(5)))
    assert share == ([0, 1, 2] if runtime.is_main else [3, 4]), share
    assert runtime.gather_objects([str(i) for i in share]) == ["0", "1", "2", "3", "4"]  # joined in order everywhere
    sharded, _ = load_model(ModelConfig(name=model_dir, device="cpu"), runtime)
    whole = sum(p.numel() for p in sharded.parameters())
    Runtime(runtime.device, runtime.process_index, 2, fsdp=True).shard(sharded)  # FSDP2: each process keeps half
    local = sum(p.to_local().numel() for p in sharded.parameters())
    assert abs(local - whole / 2) <= whole * 0.01, (local, whole)
    model, tok = load_model(ModelConfig(name=model_dir, device="cpu"), runtime)
    torch.manual_seed(0)  # the same LoRA initialisation in every process
    student = make_student(model, ModelConfig(name="unused", **LORA))
    cfg = TrainConfig(epochs=2, batch_size=2, grad_accum=1, lr=1e-2, seed=0, length_buckets=1, min_steps=0)
    source = OfflineBatches(targets(tok), tok.pad_token_id, 2, 1, 0, runtime.process_index, runtime.num_processes)
    state = fit(student, source, cfg, runtime)
    if runtime.is_main:
        save_file({n: p.detach().contiguous() for n, p in student.named_parameters() if p.requires_grad}, out)
        with open(out + ".json", "w") as f:
            json.dump(state.history, f)
''')


def targets(tok) -> Targets:
    """Sharp teacher distributions on answers of different lengths (the token counts of micro-batches differ)."""
    out = Targets(ids=[])
    for i, (text, answer) in enumerate(zip(TINY_INPUTS, ANSWERS, strict=False)):
        ids = answer_ids(tok, answer)
        logits = torch.zeros(len(ids), len(tok))
        logits[torch.arange(len(ids)), torch.tensor(ids)] = 6.0
        logp, top = topk_with_tail(torch.log_softmax(logits, -1), 5)
        view = View(prompt_ids(tok, text), ids)
        out.keep({"input": text}, i, answer, answer, view, view.prompt_ids, logp, top)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_like_one_at_the_same_effective_batch(tiny_model_dir, tmp_path):
    out = tmp_path / "two.safetensors"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                          "127.0.0.1", "--master_port", str(_free_port()), str(script), str(tiny_model_dir), str(out)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    two, two_history = load_file(out), json.loads((tmp_path / "two.safetensors.json").read_text())

    model, tok = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu"))
    torch.manual_seed(0)
    student = make_student(model, ModelConfig(name="unused", **LORA))
    cfg = TrainConfig(epochs=2, batch_size=2, grad_accum=2, lr=1e-2, seed=0, length_buckets=1, min_steps=0)
    state = fit(student, OfflineBatches(targets(tok), tok.pad_token_id, 2, 1, 0), cfg, Runtime.local("cpu"))

    assert len(two_history) == len(state.history) == 4  # 8 answers, 4 per step, 2 epochs
    for a, b in zip(two_history, state.history, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-5 and a["lr"] == b["lr"]
    one = {n: p.detach() for n, p in student.named_parameters() if p.requires_grad}
    assert one.keys() == two.keys()
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def echo_model_dir(tmp_path_factory) -> Path:
    """A tiny model whose answers differ from input to input (parts joined out of order change the answers' order)."""
    out = tmp_path_factory.mktemp("tiny-echo")
    tokenizer = build_tiny_tokenizer()
    build_tiny_model(tokenizer, echo=True).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.parametrize(("launch", "finetune"), [("multi_gpu", "lora"), ("fsdp", "full")])
def test_distill_under_accelerate_launch_with_two_processes_equals_one(echo_model_dir, tmp_path, launch, finetune):
    """``accelerate launch --config_file examples/accelerate/{multi_gpu,fsdp}.yaml -m internalize distill`` (on this
    CPU-only machine: two gloo processes): each process answers half the teacher's inputs, trains on its share of
    the micro-batches with synced gradients (FSDP: on its shard of the weights, gathered for saving), and evaluates
    half the held-out and neutral inputs (FSDP: all of them, in step); the main process saves and reports. The same
    updates, metrics, forgetting check, answers and weights as one process with twice the gradient accumulation (the
    model's answers differ from input to input: parts joined out of order would put them on the wrong inputs)."""
    from conftest import tiny_config_dict, write_yaml

    from internalize import distill
    from internalize.config import config_from_dict

    neutral = tmp_path / "neutral.jsonl"  # 5 prompts: the processes get 3 and 2
    neutral.write_text("".join(json.dumps({"input": text}) + "\n" for text in TINY_INPUTS[:5]))
    raw = tiny_config_dict(echo_model_dir, tmp_path / "two")
    raw["model"]["finetune"] = finetune
    raw["train"].update(max_steps=0, min_steps=0, epochs=2, batch_size=2, grad_accum=1, length_buckets=1)
    raw["teacher"]["cache_dir"] = str(tmp_path / "cache")
    raw["eval"]["neutral_file"] = str(neutral)
    path = write_yaml(tmp_path / "two.yaml", raw)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                          str(EXAMPLES / f"{launch}.yaml"), "--main_process_port", str(_free_port()), "-m",
                          "internalize", "-q", "distill", str(path)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count('"main"') == 1  # the metrics are printed once, by the main process
    raw["train"]["grad_accum"] = 2
    raw["output"]["dir"] = str(tmp_path / "one")
    raw["teacher"]["cache_dir"] = str(tmp_path / "cache_one")
    one = distill(config_from_dict(raw))
    # one cache, written by the main process: the entries of one process (teacher, held-out references, neutral)
    entries = [sorted(p.name for p in (tmp_path / name).iterdir()) for name in ("cache", "cache_one")]
    assert len(entries[0]) == 3 and entries[0] == entries[1]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two.keys() == one.keys()
    for condition, m in one["main"].items():
        for key, value in m.items():
            assert abs(two["main"][condition][key] - value) < 1e-5, (condition, key)
    info = {name: json.loads((tmp_path / name / "run.json").read_text()) for name in ("one", "two")}
    assert info["two"]["steps"] == info["one"]["steps"] == 4  # 8 answers, 4 per step (2 x 2 or 1 x 2 x 2), 2 epochs
    assert (info["two"]["processes"], info["one"]["processes"], info["one"]["sharding"]) == (2, 1, "none")
    assert info["two"]["sharding"] == ("fsdp" if launch == "fsdp" else "data parallel")
    for key, value in info["one"]["forgetting"].items():
        assert abs(info["two"]["forgetting"][key] - value) < 1e-5, key
    answers = [(tmp_path / name / "answers.jsonl").read_text() for name in ("one", "two")]
    assert answers[0] == answers[1]  # the held-out answers, gathered in input order
    assert len({json.loads(line)["student"] for line in answers[0].splitlines()}) > 1  # answers that differ
    a, b = (load_file(tmp_path / name / "model" / "model.safetensors") for name in ("one", "two"))
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, rtol=0, atol=1e-5)


def test_the_example_accelerate_configs_parse():
    from accelerate.commands.config.config_args import ClusterConfig

    files = sorted(EXAMPLES.glob("*.yaml"))
    assert [f.name for f in files] == ["fsdp.yaml", "multi_gpu.yaml", "multi_node.yaml"]
    for f in files:
        cfg = ClusterConfig.from_yaml_file(f)
        kind = "FSDP" if f.name == "fsdp.yaml" else "MULTI_GPU"
        assert cfg.distributed_type.value == kind and cfg.num_processes >= 2 and cfg.mixed_precision == "no"
        assert not cfg.use_cpu and cfg.deepspeed_config == {} and bool(cfg.fsdp_config) == (kind == "FSDP")
        assert f"--config_file examples/accelerate/{f.name}" in f.read_text()  # the command to run it, at the top
    fsdp = ClusterConfig.from_yaml_file(EXAMPLES / "fsdp.yaml").fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
