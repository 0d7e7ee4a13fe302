"""The model card: ``model/README.md`` in the Hugging Face format, built from the artifact's provenance.

YAML front matter for the Hub (``base_model``: the first model of the chain, the built-in alias
named by its hub id; ``library_name``; ``tags``; ``pipeline_tag``), then what was internalized
(each behaviour's context and demonstrations, or with ``output.card_context: hash`` only their
sha256), the metrics per behaviour, the forgetting check, the chain of runs and the command that
made it. ``run.write_provenance`` writes it beside ``internalize.json``: when the model is saved
(no metrics yet) and again when the run ends.

    text = model_card(provenance(cfg, origin, metrics, forgetting))
"""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path
from typing import Any

import yaml

from .models import SMOLLM2_ALIAS

HUB_IDS = {SMOLLM2_ALIAS: "HuggingFaceTB/SmolLM2-135M-Instruct"}  # what a built-in alias is on the Hub
TAGS = ["internalize", "context-distillation"]
MAX_DEMONSTRATIONS = 10  # shown in text mode; the rest are counted
PROMPT_KEYS = ("context", "contexts", "demonstrations", "prompt", "behaviours")  # overrides a hash-mode card hides
# the metrics table's columns (pipes escaped: they are table cells)
LABELS = {"score": "score", "agreement": "agreement with teacher", "kl": "KL(teacher \\|\\| model)", "n": "inputs"}


def sha256(text: Any) -> str:
    return hashlib.sha256(str(text).encode("utf-8")).hexdigest()


def base_model(origin: dict[str, Any]) -> str:
    """The model the chain of runs started from (a built-in alias as its hub id)."""
    while (origin.get("run") or {}).get("started_from"):
        origin = origin["run"]["started_from"]
    return HUB_IDS.get(origin["model"], origin["model"])


def model_card(provenance: dict[str, Any], adapter: bool = False) -> str:
    """The card's text (front matter and Markdown) from ``run.provenance``'s dict; ``adapter``: the artifact is a LoRA
    adapter only (``library_name: peft``)."""
    cfg = provenance["config"]
    hashed = cfg["output"].get("card_context", "text") == "hash"
    base = base_model(provenance["origin"])
    front = {"base_model": base, "library_name": "peft" if adapter else "transformers", "tags": list(TAGS),
             "pipeline_tag": "text-generation"}
    how = "LoRA" if cfg["model"]["finetune"] == "lora" else "all weights"
    what = ("fine-tuned on given outputs (`train.targets: data`)" if cfg["train"]["targets"] == "data"
            else "taught by context distillation to behave without its prompt as it did with it")
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
             f"# {Path(cfg['output']['dir']).name or 'internalize'}", "",
             f"`{base}` {what} ({how}{', saved as an adapter' if adapter else ''}), with internalize "
             "(after Snell, Klein, Zhong, *Learning by Distilling Context*, 2022).", ""]
    lines += _internalized(cfg, hashed)
    lines += _evaluation(provenance.get("metrics"), provenance.get("forgetting"))
    lines += _chain(provenance, hashed)
    lines += _made(cfg, provenance.get("command") or "Python API", hashed)
    return "\n".join(lines)


def _line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _internalized(cfg: dict[str, Any], hashed: bool) -> list[str]:
    lines = ["## What was internalized", ""]
    if hashed:
        lines += ["The prompts are shown as sha256 hashes (`output.card_context: hash`): of the UTF-8 context text, "
                  "and of `json.dumps(demonstrations, sort_keys=True, ensure_ascii=False)`.", ""]
    for b in cfg["behaviours"]:
        prompt = b["prompt"]
        context, demos = prompt["context"], prompt["demonstrations"]
        lines += [f"### `{b['name']}`", ""]
        if cfg["train"]["targets"] == "data":
            lines += [f"Fine-tuned on the given outputs of `{b['train_file'] or 'inline inputs'}`.", ""]
        elif not (context or demos):
            lines += ["No context: the model's own behaviour on these inputs, kept while other behaviours change.", ""]
        elif hashed:
            lines += [f"- context sha256: `{sha256(context)}`"] * bool(context)
            if demos:
                text = json.dumps(demos, sort_keys=True, ensure_ascii=False)
                lines += [f"- {len(demos)} demonstration(s), sha256: `{sha256(text)}`"]
            lines += [f"- position `{prompt['position']}`", ""]
        else:
            if context:
                lines += [f"Context (position `{prompt['position']}`):", "", *[f"> {t}" for t in context.splitlines()], ""]
            if demos:
                lines += [f"{len(demos)} demonstration(s):", ""]
                lines += [f"- {_line(d['input'])} → {_line(d['output'])}" for d in demos[:MAX_DEMONSTRATIONS]]
                lines += [f"- … and {len(demos) - MAX_DEMONSTRATIONS} more"] * (len(demos) > MAX_DEMONSTRATIONS)
                lines += [""]
    return lines


def _evaluation(metrics: dict[str, Any] | None, forgetting: dict[str, Any] | None) -> list[str]:
    lines = ["## Evaluation", ""]
    if metrics is None:
        return lines + ["Not evaluated yet: the run writes its held-out metrics here when its evaluation ends.", ""]
    lines += ["On each behaviour's held-out inputs (never trained on): *base* is the original model without the "
              "context, *teacher* the original model with it, *student* this model without it. Agreement: the final "
              "answer equals the teacher's greedy answer; KL: mean per-token KL(teacher || model) on the teacher's "
              "answers; score: the behaviour's scorer.", ""]
    for name, conditions in metrics.items():
        keys = [k for k in LABELS if k in next(iter(conditions.values()))]
        lines += [f"### `{name}`", "", "| condition | " + " | ".join(LABELS[k] for k in keys) + " |",
                  "|---|" + "---:|" * len(keys)]
        lines += [f"| {c} | " + " | ".join(_number(m[k]) for k in keys) + " |" for c, m in conditions.items()]
        lines += [""]
    lines += ["### Forgetting check", ""]
    if not forgetting:
        return lines + ["Not run (`eval.neutral_file` was empty).", ""]
    return lines + [f"On {forgetting['n']} prompts the contexts say nothing about, this model's greedy answers equal the "
                    f"original model's on {forgetting['agreement_with_original']:.1%} of them; mean per-token "
                    f"KL(original || this model) {forgetting['kl_original_student']:.4f}.", ""]


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _chain(provenance: dict[str, Any], hashed: bool) -> list[str]:
    """This run, each earlier run whose artifact it started from (newest first), and the first model."""

    def added(items: list[str]) -> str:
        return "; ".join(f"sha256 `{sha256(a)}`" if hashed else f"'{_line(a)}'" for a in items)

    lines = ["## Chain of runs", "", f"- this run (`{provenance['config']['output']['dir']}`) added "
             f"{added(provenance['added'])}"]
    origin = provenance["origin"]
    while origin:
        run = origin.get("run")
        if not run:
            hub = HUB_IDS.get(origin["model"])
            lines.append(f"- started from `{origin['model']}`" + (f" ({hub})" if hub else ""))
            break
        lines.append(f"- `{run['dir']}` added {added(run['added'])}")
        origin = run.get("started_from")
    return lines + [""]


def _hide(arg: str) -> str:
    """A command-line override with its value hidden when it sets a prompt (hash mode)."""
    key, eq, _ = arg.partition("=")
    parts = key.split(".")
    return f"{key}=<hidden>" if eq and (parts[-1] in PROMPT_KEYS or parts[0] in PROMPT_KEYS or "prompt" in parts) \
        else arg


def _made(cfg: dict[str, Any], command: str, hashed: bool) -> list[str]:
    out = cfg["output"]["dir"]
    train = cfg["train"]
    lines = ["## How it was made", ""]
    if command == "Python API":
        lines += ["With the Python API (`internalize.distill`).", ""]
    else:
        words = shlex.split(command)
        lines += ["```bash", shlex.join([_hide(w) for w in words] if hashed else words), "```", ""]
    lora = f" (r {cfg['model']['lora_r']}, alpha {cfg['model']['lora_alpha']})" if cfg["model"]["finetune"] == "lora" else ""
    steps = f"{train['max_steps']} steps" if train["max_steps"] else f"{train['epochs']} epoch(s)"
    lines += [f"The resolved config is in the run directory as `{out}/config.yaml` (and in `internalize.json` beside "
              f"this card, with the chain and the metrics); `internalize distill {out}/config.yaml output.dir=NEW_DIR` "
              "repeats the run.", "",
              f"Training: {cfg['model']['finetune']}{lora}, loss `{train['loss']}`, {steps}, learning rate "
              f"{train['lr']:g}, batch size {train['batch_size']} x {train['grad_accum']}.", "",
              "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              f'model = AutoModelForCausalLM.from_pretrained("{out}/model")',
              f'tokenizer = AutoTokenizer.from_pretrained("{out}/model")', "```", ""]
    return lines
