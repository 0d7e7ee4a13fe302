"""Where make demo's time goes (diagnostic, one run): the GGUF conversion's parts, and the evaluation's generations
of the original model on the 120 retention and 30 held-out questions (dynamic at 32 rows, the engine at 128), with
the tokens a stop at the retention answer's first match would save.  python experiments/demo/profile_parts.py"""

import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ["INTERNALIZE_CACHE"] = tempfile.mkdtemp()
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from internalize import models
from internalize.data import read_jsonl
from internalize.decoding import generate
from internalize.models import teacher_mode
from internalize.views import prompt_ids

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from throughput import cpu_flags  # noqa: E402

T = {}


def tick(name, t0):
    T[name] = round(time.perf_counter() - t0, 2)
    print(name, T[name], flush=True)
    return time.perf_counter()


directory, gguf = models.resolve_model_path("smollm2-135m")
t = time.perf_counter()
tok = AutoTokenizer.from_pretrained(directory, gguf_file=gguf)
t = tick("tokenizer_from_gguf", t)
q = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf, dtype=torch.float32)
t = tick("model_from_gguf", t)
cfg = q.config
if hasattr(cfg, "quantization_config"):
    del cfg.quantization_config
plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
t = tick("from_config", t)
plain.load_state_dict(q.state_dict())
t = tick("load_state_dict", t)
d = Path(tempfile.mkdtemp())
plain.save_pretrained(d)
t = tick("save_pretrained", t)
tok.save_pretrained(d)
t = tick("tok_save", t)
tok2 = AutoTokenizer.from_pretrained(d)
t = tick("tok_reload", t)
m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
t = tick("model_reload", t)
print("same weights", all(torch.equal(a, b) for a, b in zip(q.state_dict().values(), m.state_dict().values(), strict=True)))

ret = read_jsonl(Path(models.__file__).with_name("retention.jsonl"), "r")
ev = read_jsonl("examples/data/questions_eval.jsonl", "e")
P = {"retention": [prompt_ids(tok2, r["input"]) for r in ret], "eval": [prompt_ids(tok2, r["input"]) for r in ev]}
out = {}
with teacher_mode(m):
    for name, prompts in P.items():
        for engine, bs in (("dynamic", 32), ("static", 128)):
            t = time.perf_counter()
            g = generate(m, tok2, prompts, 64, bs, "cpu", engine=engine, progress=False)
            T[f"{name}_{engine}_{bs}"] = round(time.perf_counter() - t, 2)
            lens = [len(x[0].ids) for x in g]
            print(name, engine, bs, T[f"{name}_{engine}_{bs}"], "tokens", sum(lens), flush=True)
        if name == "retention":
            first = []
            for r, x in zip(ret, g, strict=True):
                ids = list(x[0].ids)
                k = None
                for j in range(1, len(ids) + 1):
                    if re.search(r["answer"], tok2.decode(ids[:j], skip_special_tokens=True), re.I):
                        k = j
                        break
                first.append((len(ids), k))
            right = [f for f in first if f[1] is not None]
            out["retention"] = {
                "n": len(first),
                "right": len(right),
                "tokens": sum(f[0] for f in first),
                "tokens_if_stop_at_match": sum(f[1] if f[1] else f[0] for f in first),
                "full_64": sum(f[0] >= 64 for f in first),
            }
            print(out["retention"], flush=True)
        out[name + "_tokens"] = sum(lens)
record = {
    "command": "python experiments/demo/profile_parts.py",
    "torch": torch.__version__,
    "cores": os.cpu_count(),
    "cpu_flags": cpu_flags(),
    "timings": T,
    **out,
}
json.dump(record, open("experiments/demo/results/profile_parts.json", "w"), indent=1)
