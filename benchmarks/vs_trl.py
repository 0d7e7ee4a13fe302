"""Side-by-side benchmark: internalize vs TRL's SDFTTrainer on the main job (examples/over.yaml).

The job: SmolLM2-135M-Instruct should end every answer with "Over." without being told. The
context (system instruction + three demonstration turns from examples/over.yaml) is distilled
into LoRA weights (r=16, alpha=32, dropout 0, internalize's default target modules) from the 130
training questions. Both sides are scored by the same function, ``score_student``: the share of
the 30 held-out questions whose greedy answer without any context (at most 64 new tokens)
matches ``eval.scorer_regex`` (``Over\\.\\s*$``).

TRL side (``run_trl``): ``trl.experimental.sdft.SDFTTrainer`` (TRL 1.16), given the local plain
safetensors copy of the model as its model path. Each dataset row is
``{"prompt": [{"role": "user", "content": QUESTION}], "privileged_context": CONTEXT}``; the
student prompt is then token-identical to internalize's student view. TRL builds the teacher
prompt by putting ``teacher_prompt_template`` into the last user turn; with
``"{privileged_context}{prompt}"`` and CONTEXT = ``"<|im_end|>\\n"`` + the rendered ChatML of the
system instruction and demonstration turns + ``"<|im_start|>user\\n"``, the teacher sees the
default system prompt, an empty user turn, then exactly internalize's teacher prompt (the teacher
ends 30/30 held-out answers with "Over.", answering each question). Other forms are worse for
this 135M model: context as chat messages is flattened into the user turn (1-3/30); ChatML
context after the question (TRL's default template) scores 30/30 but answers the last
demonstration's question every time; ChatML context before a rendered-string prompt puts the
default system prompt after the demonstrations (14/30). ``--check-teacher`` measures the teacher
prompted exactly as TRL prompts it.

internalize side (``run_internalize``): the teacher (no cache) then ``fit``, timed together.

Time to quality: each TRL run scores its student every ``score_every`` updates (the clock stops
while scoring) and stops when it reaches 90% of the teacher's held-out score; internalize's time is
its teacher stage plus training for a recipe that reaches it. ``--settings compare`` is the
side-by-side reported in BENCHMARKS.md.

Seeds and a recipe chosen on dev: the fast recipe of ``compare`` and ``final`` ("internalize_fast")
was chosen on the same 30 held-out questions it is scored on, from one seed. ``--settings choose``
scores internalize's recipes (a grid of updates and learning rates, one pass of batch 8, and the main
job's recipe) on the 30 dev questions of examples/data/questions_dev.jsonl (disjoint from the train
and held-out questions), at seed 0, and picks the fastest (``train_s``) whose dev score reaches 90% of
the teacher's dev score (``choose_recipe``). ``--settings final3`` replaces the held-out-chosen
recipe with that dev choice: internalize's main job, the dev-chosen recipe and TRL's best setting,
each at seeds 0, 1 and 2, all scored on the held-out 30; ``seed_summary`` gives each one's time to
the target per seed and the ratio of median times over the seeds that reached it. The seed-0 choice sat
on the bar and reached it at one held-out seed of three, so ``--settings choose3`` chooses again on dev
over seeds 10, 11 and 12: a recipe must reach the bar at every seed, and the fastest by median time wins.

Run it from the benchmark venv (see benchmarks/requirements-trl.txt), alone on the machine:

    .venv-bench/bin/python benchmarks/vs_trl.py --trl-only --settings quick --threads 1  # smoke: 2 updates
    .venv-bench/bin/python benchmarks/vs_trl.py --trl-only --check-teacher --settings quick
    .venv-bench/bin/python benchmarks/vs_trl.py --trl-only --settings sweep             # the SWEEP below
    .venv-bench/bin/python benchmarks/vs_trl.py --settings compare --out benchmarks/results/vs_trl.json
    .venv-bench/bin/python benchmarks/vs_trl.py --settings final --out benchmarks/results/vs_trl_final.json
    .venv-bench/bin/python benchmarks/vs_trl.py --settings choose --out benchmarks/results/vs_trl_choose.json
    .venv-bench/bin/python benchmarks/vs_trl.py --settings final3 --chosen benchmarks/results/vs_trl_choose.json \\
        --out benchmarks/results/vs_trl_final3.json
    .venv-bench/bin/python benchmarks/vs_trl.py --settings choose3 --out benchmarks/results/vs_trl_choose3.json
    .venv-bench/bin/python benchmarks/vs_trl.py --settings final3 --chosen benchmarks/results/vs_trl_choose3.json \\
        --out benchmarks/results/vs_trl_final3_choose3.json

Results go to benchmarks/results/vs_trl.json, or ``--out`` (rewritten after every run, so a stopped
sweep keeps the runs it finished): the command, the machine, library versions and each run's figures
(seed, question set, training wall time, updates, seconds per update, score, answers, loss log), the
per-seed summary, and for ``choose`` the teacher's dev score and the chosen recipe.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # trl.experimental warns on import that its API may change

ROOT = Path(__file__).resolve().parents[1]
JOB_FILE = ROOT / "examples" / "over.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "vs_trl.json"
CHOSEN = ROOT / "benchmarks" / "results" / "vs_trl_choose.json"  # --settings choose writes the dev-chosen recipe here
TEACHER_TEMPLATE = "{privileged_context}{prompt}"  # TRL fills the last user turn with this


def score_student(model: Any, tokenizer: Any, prompts: list[tuple[int, ...]] | None = None,
                  records: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Score ``model`` on ``records`` (default: the held-out questions) with internalize's own functions (both
    sides use this).

    ``prompts`` defaults to the student view of ``records`` (the question alone, chat template applied);
    pass token ids to score other prompts (``--check-teacher`` passes TRL's teacher prompts).
    Returns ``{"score": share matching eval.scorer_regex, "n": ..., "answers": [...], "scored_with": ...}``.
    This is the one place that calls internalize's evaluation API; adapt it here if that changes.
    """
    from internalize.behaviours import load_scorer
    from internalize.config import BehaviourConfig, EvalConfig
    from internalize.decoding import generate
    from internalize.models import inference_mode
    from internalize.views import prompt_ids

    job = load_job()
    cfg = EvalConfig(max_new_tokens=job["eval"]["max_new_tokens"])
    scorer = load_scorer(BehaviourConfig(scorer_regex=job["eval"]["scorer_regex"]))
    records = job["held_out"] if records is None else records
    if prompts is None:
        prompts = [prompt_ids(tokenizer, r["input"]) for r in records]
    device = next(model.parameters()).device  # wherever the model is (TRL's trainer may have moved it)
    with inference_mode(model):
        generations = generate(model, tokenizer, prompts, cfg.max_new_tokens, cfg.batch_size, device, desc="score")
    answers = [samples[0].text for samples in generations]
    hits = [scorer(r, a) for r, a in zip(records, answers, strict=True)]
    return {"score": sum(hits) / len(hits), "n": len(hits), "answers": answers,
            "scored_with": f"{generate.__module__}.generate"}


# --- settings -------------------------------------------------------------------------------------

# Held fixed in every TRL run; they match examples/over.yaml and internalize's training defaults
# where SDFTConfig has the same knob (batch 8, AdamW, no weight decay, 10% warmup then cosine,
# grad-norm clip 1.0, seed 0, 64 new tokens, fp32).
DEFAULTS: dict[str, Any] = {
    "lr": 2e-4,                         # SDFTConfig.learning_rate
    "updates": 30,                      # SDFTConfig.max_steps: optimizer updates
    "generate_from_teacher": False,     # False: on-policy (the student samples from its own prompt), SDFT's default
    "distillation_mode": "topk_logits",  # or "full_logits" (whole vocabulary); SDFT's default is top-k
    "distillation_topk": 100,           # SDFT default (topk_logits only)
    "alpha": 0.5,                       # SDFTConfig.distillation_alpha, SDFT default; 0 = forward KL (internalize's default)
    "batch_size": 8,                    # prompts per update, one completion each (num_generations=1)
    "temperature": 1.0,                 # SDFT default sampling temperature (also divides the logits in the loss)
    "seed": 0,
    "train_limit": None,                # use only the first N training questions (None: all 130)
    "score_every": 5,                   # score the TRL student every N updates (the clock stops meanwhile)
    "target": 0.9,                      # 90% of the teacher's held-out score (the teacher scores 30/30)
}

# The smoke setting: two updates end to end (load, train, score the 30 held-out questions).
QUICK = [{"name": "quick", "updates": 2, "score_every": 1,
          "overrides": ["data.max_train=16", "train.max_steps=2"]}]

# What the comparison runs: internalize's recipes (the main job's, and the fastest found by
# benchmarks/recipe_sweep.py), then TRL, each TRL run capped at 20 updates (about 400 s here,
# over 10x internalize's time to the target) and stopped once its student reaches the target.
COMPARE = [
    {"name": "internalize_main_job", "side": "internalize", "overrides": []},
    {"name": "internalize_fast", "side": "internalize",
     "overrides": ["data.max_train=64", "train.lr=2e-3", "train.max_steps=8"]},
    {"name": "trl_lr5e-4", "side": "trl", "lr": 5e-4, "updates": 20},
    {"name": "trl_lr2e-3", "side": "trl", "lr": 2e-3, "updates": 20},
    # closest to internalize's recipe: answers written under the teacher prompt, full-vocabulary forward KL
    {"name": "trl_best_teachergen_full_fkl", "side": "trl", "lr": "best", "updates": 20,
     "generate_from_teacher": True, "distillation_mode": "full_logits", "alpha": 0.0},
]

# A fair small sweep (8 runs, 390 updates in all). "lr": "best" takes the learning rate of the
# best-scoring earlier run in this sweep with the same number of updates and default flags.
SWEEP = [
    {"name": "lr5e-5_u30", "lr": 5e-5, "updates": 30},
    {"name": "lr2e-4_u30", "lr": 2e-4, "updates": 30},
    {"name": "lr5e-4_u30", "lr": 5e-4, "updates": 30},
    {"name": "lr2e-4_u60", "lr": 2e-4, "updates": 60},
    {"name": "lr5e-4_u60", "lr": 5e-4, "updates": 60},
    {"name": "best_u60_teachergen", "lr": "best", "updates": 60, "generate_from_teacher": True},
    {"name": "best_u60_full", "lr": "best", "updates": 60, "distillation_mode": "full_logits"},
    # closest to internalize's recipe: the teacher writes the answers, full-vocabulary divergence
    {"name": "best_u60_teachergen_full", "lr": "best", "updates": 60, "generate_from_teacher": True,
     "distillation_mode": "full_logits"},
]

# The final side-by-side: TRL's best setting from COMPARE, scored after every update (so its time to
# the target is exact), against internalize's main job and its fastest recipe from
# benchmarks/recipe_sweep.py (48 inputs, 6 updates at lr 3e-3).
FINAL = [
    {"name": "internalize_main_job", "side": "internalize", "overrides": []},
    {"name": "internalize_fast", "side": "internalize",
     "overrides": ["data.max_train=48", "train.lr=3e-3", "train.max_steps=6"]},
    {"name": "trl_best_teachergen_full_fkl", "side": "trl", "lr": 5e-4, "updates": 10, "score_every": 1,
     "generate_from_teacher": True, "distillation_mode": "full_logits", "alpha": 0.0},
]

# Choosing internalize's fast recipe on the dev questions (seed 0): one pass of batch 8 over 8 x updates inputs,
# for each number of updates and learning rate, and the main job's recipe; ``choose_recipe`` picks among them.
def dev_recipe(steps: int, lr: str) -> dict[str, Any]:
    """One pass of batch 8 over ``8 x steps`` inputs at ``lr``, scored on the dev questions."""
    return {"name": f"internalize_u{steps}_lr{lr}", "side": "internalize", "questions": "dev",
            "overrides": [f"data.max_train={8 * steps}", f"train.lr={lr}", f"train.max_steps={steps}"]}


CHOOSE = [
    {"name": "internalize_main_job", "side": "internalize", "overrides": [], "questions": "dev"},
    *(dev_recipe(steps, lr) for steps in (4, 6, 8, 12, 16) for lr in ("1e-3", "2e-3", "3e-3")),
]

# CHOOSE3: the choice again on dev, now over seeds 10, 11 and 12 (not the held-out runs' 0-2): a recipe must reach the
# target at every seed (choose_recipe). The seed-0 choice sat on the bar and reached it on held-out at one seed of
# three. The grid keeps CHOOSE's lr 2e-3 and 3e-3 at 4-12 updates: at seed 0, lr 1e-3 reached the bar at no budget
# sooner than they did, and 16 updates cost more than 12 (30/30 at both rates), so neither could be chosen first.
CHOOSE3_SEEDS = (10, 11, 12)
CHOOSE3 = [
    {**setting, "name": f"{setting['name']}_s{seed}", "seed": seed}
    for seed in CHOOSE3_SEEDS
    for setting in (dev_recipe(steps, lr) for steps in (4, 6, 8, 12) for lr in ("2e-3", "3e-3"))
]

# FINAL over seeds 0, 1 and 2 with the fast recipe chosen on dev (its overrides come from --chosen, in place of
# DEV_CHOSEN), all scored on the held-out questions. TRL's best setting is FINAL's, with up to 20 updates (its
# schedule then spans 20) so that a slower seed can still reach the target.
DEV_CHOSEN = "dev_chosen"
TRL_BEST = "trl_best"  # also the reference of seed_summary's ratios
FINAL3 = [
    {**setting, "name": f"{setting['name']}_s{seed}", "seed": seed}
    for seed in (0, 1, 2)
    for setting in (FINAL[0],
                    {"name": "internalize_dev_chosen", "side": "internalize", "overrides": DEV_CHOSEN},
                    {**FINAL[2], "name": TRL_BEST, "updates": 20})
]

SETTINGS = {"quick": QUICK, "sweep": SWEEP, "compare": COMPARE, "final": FINAL, "choose": CHOOSE, "choose3": CHOOSE3,
            "final3": FINAL3}


# --- the job --------------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@functools.cache
def load_job() -> dict[str, Any]:
    """examples/over.yaml plus its train, held-out and dev records (the dev questions choose a recipe)."""
    job = yaml.safe_load(JOB_FILE.read_text())
    job["train"] = _read_jsonl(ROOT / job["data"]["train_file"])  # the YAML's own train: section is not needed here
    job["held_out"] = _read_jsonl(ROOT / job["data"]["eval_file"])
    job["dev"] = _read_jsonl(ROOT / "examples" / "data" / "questions_dev.jsonl")
    return job


@functools.cache
def base_model() -> tuple[Any, Any, str]:
    """(model, tokenizer, local model directory) as internalize loads them (fp32, plain safetensors copy)."""
    from internalize.config import ModelConfig
    from internalize.models import load_model

    model, tokenizer = load_model(ModelConfig())
    return model, tokenizer, model.name_or_path


def lora_config() -> Any:
    from peft import LoraConfig

    from internalize.config import ModelConfig

    m = ModelConfig()  # r=16, alpha=32, dropout 0 and the target modules internalize uses
    return LoraConfig(r=m.lora_r, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout,
                      target_modules=list(m.lora_target_modules), task_type="CAUSAL_LM")


def student_prompt(question: str) -> list[dict[str, str]]:
    """The question alone as chat messages (TRL renders it to internalize's student view)."""
    return [{"role": "user", "content": question}]


def teacher_context(tokenizer: Any) -> str:
    """The privileged context: rendered ChatML of the system instruction and the demonstration turns.

    TRL inserts it at the start of the student's user turn, so it first closes that (empty) turn
    and ends by opening the user turn that the question completes."""
    teacher = load_job()["teacher"]
    messages = [{"role": "system", "content": teacher["context"]}]
    for demo in teacher["demonstrations"]:
        messages += [{"role": "user", "content": demo["input"]}, {"role": "assistant", "content": demo["output"]}]
    return "<|im_end|>\n" + tokenizer.apply_chat_template(messages, tokenize=False) + "<|im_start|>user\n"


def trl_dataset(tokenizer: Any, limit: int | None = None) -> Any:
    from datasets import Dataset

    context = teacher_context(tokenizer)
    rows = load_job()["train"][:limit]
    return Dataset.from_list([{"prompt": student_prompt(r["input"]), "privileged_context": context} for r in rows])


def trl_teacher_prompt(tokenizer: Any, question: str) -> tuple[str, tuple[int, ...]]:
    """(text, ids) of the teacher prompt exactly as SDFTTrainer builds and tokenizes it."""
    from types import SimpleNamespace

    from trl.experimental.sdft.sdft_trainer import DemonstrationTeacherContextBuilder

    stub = SimpleNamespace(args=SimpleNamespace(teacher_prompt_template=TEACHER_TEMPLATE))
    messages = DemonstrationTeacherContextBuilder(stub)._compose_teacher_prompt(student_prompt(question),
                                                                                 teacher_context(tokenizer))
    ids = tokenizer.apply_chat_template([messages], add_generation_prompt=True, tokenize=True, return_dict=True)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), tuple(ids["input_ids"][0])


# --- the two sides --------------------------------------------------------------------------------


def run_trl(setting: dict[str, Any]) -> dict[str, Any]:
    """Train one TRL SDFT setting from the base model and score it; return its figures."""
    import torch
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer

    s = {**DEFAULTS, **setting}
    job = load_job()
    _, tokenizer, model_dir = base_model()
    dataset = trl_dataset(tokenizer, s["train_limit"])
    with tempfile.TemporaryDirectory(prefix="vs_trl-") as out:
        args = SDFTConfig(
            output_dir=out,
            max_steps=s["updates"],
            learning_rate=s["lr"],
            per_device_train_batch_size=s["batch_size"],
            gradient_accumulation_steps=1,
            num_generations=1,
            max_prompt_length=512,  # the teacher prompt is about 130 tokens: nothing is cut
            max_completion_length=job["teacher"]["max_new_tokens"],
            temperature=s["temperature"],
            generate_from_teacher=s["generate_from_teacher"],
            distillation_mode=s["distillation_mode"],
            distillation_topk=s["distillation_topk"],
            distillation_alpha=s["alpha"],
            teacher_model_kind="base",  # LoRA: the teacher is the base weights with the adapter off, as in internalize
            teacher_prompt_template=TEACHER_TEMPLATE,
            lr_scheduler_type="cosine",
            warmup_steps=int(0.1 * s["updates"]),  # internalize: int(warmup_ratio * total)
            weight_decay=0.0,
            max_grad_norm=1.0,
            seed=s["seed"],
            bf16=False,  # TRL's default is bf16 (4-9x slower on this CPU, see BENCHMARKS.md)
            gradient_checkpointing=False,  # TRL's default is on; internalize does not checkpoint
            model_init_kwargs={"dtype": "float32"},
            use_cpu=not torch.cuda.is_available(),
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
        )
        torch.manual_seed(s["seed"])  # the adapter's initialisation follows the seed, however TRL orders seeding
        start = time.perf_counter()
        trainer = SDFTTrainer(model=model_dir, args=args, train_dataset=dataset, processing_class=tokenizer,
                              peft_config=lora_config())
        setup_s = time.perf_counter() - start
        checkpoints = Checkpoints(tokenizer, s["score_every"], s["target"])
        trainer.add_callback(checkpoints.callback)
        checkpoints.start = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - checkpoints.start - checkpoints.scoring_s
    start = time.perf_counter()
    scored = score_student(trainer.model, tokenizer)
    score_s = time.perf_counter() - start
    updates = trainer.state.global_step
    losses = [round(h["loss"], 5) for h in trainer.state.log_history if "loss" in h]
    return {"side": "trl", "name": s.get("name", ""), "seed": s["seed"], "questions": "held_out",
            "setting": {k: v for k, v in s.items() if k != "name"},
            "checkpoints": checkpoints.results, "time_to_target_s": checkpoints.time_to_target(),
            "updates": updates, "train_s": round(train_s, 2), "s_per_update": round(train_s / max(updates, 1), 2),
            "setup_s": round(setup_s, 2), "score_s": round(score_s, 2), "score": scored["score"], "n": scored["n"],
            "losses": losses, "answers": scored["answers"], "scored_with": scored["scored_with"]}


class Checkpoints:
    """A TRL callback: every ``every`` updates, score the student (the clock stops while scoring) and
    stop training once the score reaches ``target``."""

    def __init__(self, tokenizer: Any, every: int, target: float) -> None:
        from transformers import TrainerCallback

        self.tokenizer, self.every, self.target = tokenizer, every, target
        self.start, self.scoring_s, self.results = 0.0, 0.0, []
        outer = self

        class _Callback(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
                if state.global_step % outer.every == 0 or state.global_step == state.max_steps:
                    begin = time.perf_counter()
                    elapsed = begin - outer.start - outer.scoring_s
                    score = score_student(model, outer.tokenizer)["score"]
                    outer.results.append({"updates": state.global_step, "train_s": round(elapsed, 2), "score": score})
                    print(f"  trl checkpoint: {outer.results[-1]}", flush=True)
                    outer.scoring_s += time.perf_counter() - begin
                    if score >= outer.target:
                        control.should_training_stop = True
                return control

        self.callback = _Callback()

    def time_to_target(self) -> float | None:
        return next((r["train_s"] for r in self.results if r["score"] >= self.target), None)


def run_internalize(setting: dict[str, Any]) -> dict[str, Any]:
    """internalize on the same job: teacher (answers + distributions, shared prefix, no cache) then ``fit``.

    The clock covers the teacher stage and training, as TRL's covers its training (which generates
    and scores with its teacher inside); model loading is excluded on both sides. ``setting["seed"]`` is
    ``train.seed``; ``setting["questions"]`` ("held_out", the default, or "dev") is the set the student is
    scored on (``time_to_target_s`` holds it to ``target`` there; ``choose_recipe`` judges dev runs instead).
    """
    import torch

    from internalize.config import load_config
    from internalize.data import load_inputs
    from internalize.models import load_model, make_student
    from internalize.runtime import Runtime
    from internalize.sources import OfflineBatches
    from internalize.teacher import answer
    from internalize.training import fit

    s = {**DEFAULTS, **setting}
    questions, recipe = s.get("questions", "held_out"), list(s.get("overrides", []))
    if questions not in ("held_out", "dev"):
        raise SystemExit(f"setting {s.get('name')}: questions={questions!r}; give 'held_out' or 'dev'")
    # min_steps/validation 0: the recipe as measured, before the default floor and validation split (EXPERIMENTS.md 11)
    overrides = ["teacher.cache_dir=", "train.min_steps=0", "train.validation=0", f"train.seed={s['seed']}", *recipe]
    cfg = load_config(JOB_FILE, overrides)
    behaviour, runtime = cfg.behaviours[0], Runtime.local(cfg.model.device)
    train, _ = load_inputs(behaviour, cfg.data)
    torch.manual_seed(cfg.train.seed)  # before make_student, as the pipeline does: the seed sets the adapter's init too
    model, tokenizer = load_model(cfg.model, runtime)
    student = make_student(model, cfg.model)
    start = time.perf_counter()
    targets = answer(student, tokenizer, train, behaviour.prompt, cfg.teacher, runtime)
    teacher_s = time.perf_counter() - start
    batches = OfflineBatches(targets, tokenizer.pad_token_id, cfg.train.batch_size, cfg.train.length_buckets,
                             cfg.train.seed)
    history = fit(student, batches, cfg.train, runtime).history
    total_s = time.perf_counter() - start
    scored = score_student(student, tokenizer, records=load_job()[questions])
    reached = scored["score"] >= s["target"]
    return {"side": "internalize", "name": s.get("name", ""), "seed": s["seed"], "questions": questions,
            "setting": {"overrides": overrides, "recipe": recipe},
            "updates": len(history), "teacher_s": round(teacher_s, 2), "train_s": round(total_s, 2),
            "s_per_update": round((total_s - teacher_s) / max(len(history), 1), 2),
            "time_to_target_s": round(total_s, 2) if reached else None, "score": scored["score"], "n": scored["n"],
            "losses": [round(h["loss"], 5) for h in history], "answers": scored["answers"]}


# --- CLI ------------------------------------------------------------------------------------------


def check_teacher() -> dict[str, Any]:
    """How often the teacher (base weights, TRL's teacher prompt, greedy) ends with 'Over.' on the held-out set."""
    model, tokenizer, _ = base_model()
    prompts = [trl_teacher_prompt(tokenizer, r["input"])[1] for r in load_job()["held_out"]]
    return score_student(model, tokenizer, prompts)


def score_teacher(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The teacher (base weights, internalize's teacher prompt from examples/over.yaml, greedy) scored on ``records``."""
    from internalize.config import load_config
    from internalize.teacher import teacher_prompts

    model, tokenizer, _ = base_model()
    prompts, _ = teacher_prompts(tokenizer, records, load_config(JOB_FILE).behaviours[0].prompt)
    return score_student(model, tokenizer, prompts, records)


def by_setting(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The runs grouped by setting: the run's name without its ``_sN`` seed suffix, in the order first seen."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(re.sub(r"_s\d+$", "", r["name"]), []).append(r)
    return groups


def choose_recipe(runs: list[dict[str, Any]], teacher_dev_score: float, target: float = 0.9) -> dict[str, Any] | None:
    """The recipe chosen on dev: among the internalize recipes scored on the dev questions (runs grouped by name
    without the ``_sN`` seed suffix) whose dev score reaches ``target`` x the teacher's dev score at every seed
    run, the one with the smallest median ``train_s`` (teacher stage + training), ties going to the higher lowest
    dev score. None when no recipe qualifies. One seed per recipe (``choose``) is the same rule on one run."""
    rule = (f"smallest median train_s (teacher stage + training) over seeds among internalize recipes scored on dev "
            f"whose dev score is >= {target} x the teacher's dev score ({teacher_dev_score:.4f}) at every seed; "
            "ties: the higher lowest dev score")
    groups = by_setting([r for r in runs if r["side"] == "internalize" and r["questions"] == "dev"])
    bar = target * teacher_dev_score - 1e-9  # 1e-9: 27/30 vs 0.9 x 1.0 must not fail on rounding
    pool = {name: group for name, group in groups.items() if all(r["score"] >= bar for r in group)}
    if not pool:
        return None

    def key(name: str) -> tuple[float, float]:
        return statistics.median(r["train_s"] for r in pool[name]), -min(r["score"] for r in pool[name])

    name = min(pool, key=key)
    group = pool[name]
    return {"name": name, "overrides": group[0]["setting"]["recipe"], "seeds": [r["seed"] for r in group],
            "dev_scores": [r["score"] for r in group], "dev_score": min(r["score"] for r in group),
            "train_s": round(statistics.median(r["train_s"] for r in group), 2), "rule": rule}


def read_chosen(path: Path) -> dict[str, Any]:
    """The ``chosen`` recipe of a ``--settings choose`` results file; exits with one line when there is none."""
    try:
        chosen = json.loads(path.read_text()).get("chosen")
    except (OSError, ValueError) as e:
        raise SystemExit(f"--chosen {path}: cannot read it ({e}); run --settings choose first") from None
    if not isinstance(chosen, dict) or "overrides" not in chosen:
        raise SystemExit(f"--chosen {path}: no chosen recipe in it ('chosen' is missing or null: run --settings "
                         "choose to the end, and check that a recipe reached the target on dev)")
    return chosen


def seed_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each setting over its seeds (runs grouped by name without the ``_sN`` suffix): the seeds, each seed's
    time to the target (None: not reached), how many reached and did not, the median time over the seeds
    that reached it, and TRL's best setting's median divided by this setting's median."""
    groups = by_setting(runs)
    settings: dict[str, dict[str, Any]] = {}
    for name, group in groups.items():
        times = [r["time_to_target_s"] for r in group]
        reached = [t for t in times if t is not None]
        settings[name] = {"side": group[0]["side"], "seeds": [r["seed"] for r in group], "time_to_target_s": times,
                          "reached": len(reached), "not_reached": len(times) - len(reached),
                          "median_s_over_reached": round(statistics.median(reached), 2) if reached else None}
    trl = settings.get(TRL_BEST, {}).get("median_s_over_reached")
    for s in settings.values():
        mine = s["median_s_over_reached"]
        s[f"{TRL_BEST}_median_over_this"] = round(trl / mine, 2) if trl is not None and mine else None
    note = ("time_to_target_s is per seed, in the order of seeds (None: the target was not reached); "
            "median_s_over_reached is the median over only the seeds that reached it (not_reached counts the "
            f"others); {TRL_BEST}_median_over_this = {TRL_BEST}'s median_s_over_reached / this setting's, "
            "None when either reached the target at no seed")
    return {"note": note, "settings": settings}


def seed_table(summary: dict[str, Any]) -> str:
    head = f"{'setting':<26} {'side':<11} {'reached':>7} {'median s':>9} {'TRL/this':>8}  time to target per seed (s)"
    lines = [head, "-" * len(head)]
    for name, s in summary["settings"].items():
        median, ratio = s["median_s_over_reached"], s[f"{TRL_BEST}_median_over_this"]
        per_seed = ", ".join(f"s{seed}: {'not reached' if t is None else f'{t:.1f}'}"
                             for seed, t in zip(s["seeds"], s["time_to_target_s"], strict=True))
        lines.append(f"{name:<26} {s['side']:<11} {s['reached']:>3}/{len(s['seeds']):<3} "
                     f"{'-' if median is None else f'{median:.1f}':>9} {'-' if ratio is None else f'{ratio:.2f}x':>8}  "
                     f"{per_seed}")
    return "\n".join([*lines, summary["note"]])


def resolve(setting: dict[str, Any], done: list[dict[str, Any]]) -> dict[str, Any]:
    """Replace ``lr: "best"`` with the learning rate of the best earlier default-flag TRL run with as many updates
    (the one that reached the target soonest, else the best score at any checkpoint)."""
    if setting.get("lr") != "best":
        return setting
    flags = ("generate_from_teacher", "distillation_mode", "alpha")
    pool = [r for r in done if r["side"] == "trl" and r["setting"]["updates"] == setting["updates"]
            and all(r["setting"][f] == DEFAULTS[f] for f in flags)]
    if not pool:
        raise SystemExit(f"setting {setting['name']}: lr='best' needs an earlier default-flag run "
                         f"with {setting['updates']} updates")
    def rank(r: dict[str, Any]) -> tuple[float, float]:  # reached the target soonest, else the best score
        return (-(r["time_to_target_s"] or float("inf")), max(c["score"] for c in r["checkpoints"]))

    return {**setting, "lr": max(pool, key=rank)["setting"]["lr"]}


def git_state() -> str:
    """The repository commit, with '+dirty' when the working tree differs (src/ is installed editable)."""
    import subprocess

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain", "--", "src") else "")


def environment(threads: int | None) -> dict[str, Any]:
    import peft
    import torch
    import transformers
    import trl
    from throughput import cpu_flags  # beside this script

    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_flags": cpu_flags(),
                    "python": platform.python_version(), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "threads_flag": threads,
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
                     "peft": peft.__version__, "internalize": git_state()},
    }


def summary(runs: list[dict[str, Any]]) -> str:
    head = f"{'side':<11} {'name':<26} {'lr':>8} {'upd':>4} {'gen_teacher':>11} {'mode':>11} " \
           f"{'train s':>8} {'s/upd':>6} {'score':>7}"
    lines = [head, "-" * len(head)]
    for r in runs:
        s = r["setting"]
        lines.append(f"{r['side']:<11} {r['name']:<26} {s.get('lr', ''):>8} {r['updates']:>4} "
                     f"{str(s.get('generate_from_teacher', '')):>11} {s.get('distillation_mode', ''):>11} "
                     f"{r['train_s']:>8.1f} {r['s_per_update']:>6.2f} {round(r['score'] * r['n']):>4}/{r['n']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", choices=sorted(SETTINGS), default="quick", help="which list of settings to run")
    parser.add_argument("--trl-only", action="store_true", help="skip the internalize side")
    parser.add_argument("--check-teacher", action="store_true",
                        help="first score the teacher itself on TRL's teacher prompts (30 greedy generations)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results JSON (default {RESULTS.relative_to(ROOT)})")
    parser.add_argument("--chosen", type=Path, default=CHOSEN,
                        help=f"--settings final3: the --settings choose results with the dev-chosen recipe "
                             f"(default {CHOSEN.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    settings = SETTINGS[args.settings]
    chosen = read_chosen(args.chosen) if any(s.get("overrides") == DEV_CHOSEN for s in settings) else None
    if chosen is not None:
        settings = [{**s, "overrides": chosen["overrides"]} if s.get("overrides") == DEV_CHOSEN else s for s in settings]
    on_dev = any(s.get("questions") == "dev" for s in settings)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    record: dict[str, Any] = {**environment(args.threads), "settings": args.settings, "runs": []}
    if chosen is not None:
        record["chosen_from"] = {"file": str(args.chosen), **chosen}
    _, tokenizer, model_dir = base_model()
    record["model_dir"] = model_dir
    record["teacher_prompt_example"] = trl_teacher_prompt(tokenizer, load_job()["held_out"][0]["input"])[0]
    print("teacher prompt given to TRL (first held-out question):\n" + record["teacher_prompt_example"], flush=True)

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")

    if args.check_teacher:
        start = time.perf_counter()
        check = check_teacher()
        record["teacher_check"] = {**check, "seconds": round(time.perf_counter() - start, 2)}
        print(f"teacher on TRL's teacher prompts: {round(check['score'] * check['n'])}/{check['n']} end with 'Over.', "
              f"e.g. {check['answers'][:3]}", flush=True)
        save()
    if on_dev:
        start = time.perf_counter()
        record["teacher_dev"] = {**score_teacher(load_job()["dev"]), "seconds": round(time.perf_counter() - start, 2)}
        print(f"teacher on the dev questions: {round(record['teacher_dev']['score'] * record['teacher_dev']['n'])}/"
              f"{record['teacher_dev']['n']} end with 'Over.'", flush=True)
        save()
    for setting in settings:
        sides = [setting["side"]] if "side" in setting else ["internalize", "trl"]
        for side in sides:
            if side == "internalize" and args.trl_only:
                continue
            run = run_internalize if side == "internalize" else run_trl
            result = run(resolve(setting, record["runs"]))
            record["runs"].append(result)
            record["summary"] = seed_summary(record["runs"])
            save()
            print(f"{result['side']} {result['name']}: {result['updates']} updates in {result['train_s']:.1f} s "
                  f"({result['s_per_update']:.2f} s/update), score {result['score']:.3f} on {result['questions']}",
                  flush=True)
    if on_dev:  # only once every recipe has run, so a stopped choose leaves no choice for final3 to use
        record["chosen"] = choose_recipe(record["runs"], record["teacher_dev"]["score"], DEFAULTS["target"])
        save()
    print("\n" + summary(record["runs"]))
    print("\n" + seed_table(seed_summary(record["runs"])))
    if on_dev:
        print(f"\nchosen on dev: {record['chosen']}")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
