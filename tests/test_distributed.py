"""Two CPU processes (torchrun, gloo) train, and distill, like one process at the same effective batch size.

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

import torch
from conftest import TINY_INPUTS
from safetensors.torch import load_file

from internalize.config import ModelConfig, TrainConfig
from internalize.models import load_model, make_student
from internalize.runtime import Runtime
from internalize.sources import OfflineBatches
from internalize.targets import Targets, topk_with_tail
from internalize.training import fit
from internalize.views import View, answer_ids, prompt_ids

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
    model, tok = load_model(ModelConfig(name=model_dir, device="cpu"), runtime)
    torch.manual_seed(0)  # the same LoRA initialisation in every process
    student = make_student(model, ModelConfig(name="unused", **LORA))
    cfg = TrainConfig(epochs=2, batch_size=2, grad_accum=1, lr=1e-2, seed=0, length_buckets=1)
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
    cfg = TrainConfig(epochs=2, batch_size=2, grad_accum=2, lr=1e-2, seed=0, length_buckets=1)
    state = fit(student, OfflineBatches(targets(tok), tok.pad_token_id, 2, 1, 0), cfg, Runtime.local("cpu"))

    assert len(two_history) == len(state.history) == 4  # 8 answers, 4 per step, 2 epochs
    for a, b in zip(two_history, state.history, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-5 and a["lr"] == b["lr"]
    one = {n: p.detach() for n, p in student.named_parameters() if p.requires_grad}
    assert one.keys() == two.keys()
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, rtol=0, atol=1e-5)


def test_distill_with_two_processes_equals_one(tiny_model_dir, tmp_path):
    """``torchrun --nproc_per_node 2 -m internalize distill``: every process runs the teacher, trains on its share of the
    micro-batches with synced gradients; the main process saves and reports. The same updates, metrics and weights
    as one process with twice the gradient accumulation."""
    from conftest import tiny_config_dict, write_yaml

    from internalize import distill
    from internalize.config import config_from_dict

    raw = tiny_config_dict(tiny_model_dir, tmp_path / "two")
    raw["train"].update(max_steps=0, epochs=2, batch_size=2, grad_accum=1, length_buckets=1)
    raw["teacher"]["cache_dir"] = ""
    path = write_yaml(tmp_path / "two.yaml", raw)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                          "127.0.0.1", "--master_port", str(_free_port()), "-m", "internalize", "-q", "distill",
                          str(path)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    raw["train"]["grad_accum"] = 2
    raw["output"]["dir"] = str(tmp_path / "one")
    one = distill(config_from_dict(raw))
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two.keys() == one.keys()
    for condition, m in one["main"].items():
        for key, value in m.items():
            assert abs(two["main"][condition][key] - value) < 1e-5, (condition, key)
    info = {name: json.loads((tmp_path / name / "run.json").read_text()) for name in ("one", "two")}
    assert info["two"]["steps"] == info["one"]["steps"] == 4  # 8 answers, 4 per step (2 x 2 or 1 x 2 x 2), 2 epochs
    a, b = (load_file(tmp_path / name / "model" / "model.safetensors") for name in ("one", "two"))
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, rtol=0, atol=1e-5)
