"""The one-off GGUF conversion, before and after it parsed the file once (diagnostic, one process, side by side):
gguf's reader as it is and over a plain array view (``models._gguf_parsed_once``), then the whole conversion both
ways: the previous steps (tokenizer and model from the GGUF, a random copy, its weights loaded, saved) and
``models._plain_copy_of_gguf``.   python experiments/demo/profile_gguf.py [smollm2-135m|gemma3-270m]"""

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import gguf
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from internalize import models

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from throughput import cpu_flags  # noqa: E402

alias = sys.argv[1] if len(sys.argv) > 1 else models.SMOLLM2_ALIAS
os.environ["INTERNALIZE_CACHE"] = tempfile.mkdtemp()
directory, gguf_file = models.resolve_model_path(alias)
T: dict[str, float] = {}


def timed(name, fn):
    t = time.perf_counter()
    out = fn()
    T[name] = round(time.perf_counter() - t, 2)
    print(name, T[name], flush=True)
    return out


timed("reader_as_it_is", lambda: gguf.GGUFReader(directory / gguf_file))
with models._gguf_parsed_once():
    timed("reader_over_an_array", lambda: gguf.GGUFReader(directory / gguf_file))


def previous() -> None:
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    quantized = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=torch.float32)
    config = quantized.config
    del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    out = Path(tempfile.mkdtemp())
    plain.save_pretrained(out)
    tok.save_pretrained(out)


for run in (1, 2):
    timed(f"conversion_previous_{run}", previous)
    os.environ["INTERNALIZE_CACHE"] = tempfile.mkdtemp()
    timed(f"conversion_now_{run}", lambda: models._plain_copy_of_gguf(directory, gguf_file))
name = Path(__file__).with_name("results") / f"profile_gguf_{alias}.json"
json.dump({"command": f"python experiments/demo/profile_gguf.py {alias}", "torch": torch.__version__,
           "cores": os.cpu_count(), "cpu_flags": cpu_flags(), "seconds": T}, open(name, "w"), indent=1)
