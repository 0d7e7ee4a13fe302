"""pipeline.py and run.py: the tiny end-to-end ``distill`` run, its files, refusal to clobber, what a failed run
keeps, the artifact's provenance, several behaviours, chains of runs, ``evaluate_artifact``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_INPUTS, tiny_config_dict
from transformers import AutoModelForCausalLM, AutoTokenizer

from internalize import cache, distill, evaluate_artifact, evaluation, pipeline
from internalize import run as run_module
from internalize.config import InternalizeError, TrainConfig, config_from_dict, load_config
from internalize.data import load_inputs, read_jsonl, write_jsonl
from internalize.run import RUN_FILES
from internalize.targets import Targets
from internalize.teacher import answer
from internalize.views import View

CONDITION_KEYS = {"agreement", "kl", "score", "n"}


def _snapshot(directory):
    return {p.relative_to(directory): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
            for p in sorted(directory.rglob("*"))}


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory):
    """One tiny distill run shared by the tests of this module: (cfg, metrics, output dir)."""
    out = tmp_path_factory.mktemp("pipeline") / "run"
    raw = tiny_config_dict(tiny_model_dir, out)
    raw["eval"]["neutral_file"] = "builtin"  # the default: 20 everyday prompts shipped with the package
    cfg = config_from_dict(raw)
    metrics = distill(cfg)
    return cfg, metrics, out


def test_distill_writes_the_run_files(tiny_run):
    cfg, metrics, out = tiny_run
    for name in ("config.yaml", "metrics.json", "run.json", "answers.jsonl", "report.md", "metrics.png", "loss.png", "model"):
        assert (out / name).exists(), name
    assert set(RUN_FILES) >= {p.name for p in out.iterdir()}  # nothing else written
    assert not (out / "synthesized.jsonl").exists()  # inline inputs: no synthesis
    for name in ("metrics.png", "loss.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert load_config(out / "config.yaml") == cfg


def test_distill_metrics_are_per_behaviour_and_agree_with_the_answers(tiny_run):
    _, metrics, out = tiny_run
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert list(metrics) == ["main"] and list(metrics["main"]) == ["base", "teacher", "student"]
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    for condition, m in metrics["main"].items():
        assert set(m) == CONDITION_KEYS and m["n"] == 4
        assert m["score"] == sum(r[condition].startswith("ok") for r in rows) / 4  # scorer_regex '^ok'
    assert metrics["main"]["student"]["agreement"] == sum(r["student"] == r["teacher"] for r in rows) / 4


def test_distill_writes_every_held_out_answer(tiny_run):
    cfg, _, out = tiny_run
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert [r["input"] for r in rows] == [r["input"] for r in load_inputs(cfg.behaviours[0], cfg.data)[1]]
    assert all(set(r) == {"input", "base", "teacher", "student"} for r in rows)
    assert all(r["teacher"].startswith("ok") for r in rows)  # the tiny teacher answers "okay"


def test_distill_run_info(tiny_run):
    _, _, out = tiny_run
    info = json.loads((out / "run.json").read_text())
    assert info["train_inputs"] == 8 and info["eval_inputs"] == 4
    assert info["train_answers"] == 8 and info["dropped"] == {}
    assert info["steps"] == 4
    assert list(info["timings"]) == ["load", "teacher", "reference", "neutral_before", "eval_before", "train", "save",
                                     "eval_after"]
    # the forgetting check is in every report: by default on the 20 prompts shipped with the package
    assert info["forgetting"]["n"] == 20


def test_distill_report(tiny_run):
    _, metrics, out = tiny_run
    report = (out / "report.md").read_text()
    assert "| condition | score (user scorer) | agreement with teacher | KL(teacher || model) |" in report
    for condition, m in metrics["main"].items():
        assert f"| {condition} | {m['score']:.3f} | {m['agreement']:.3f} | {m['kl']:.3f} |" in report
    assert "over 4 steps" in report
    assert "## Side by side" in report


def test_distill_model_is_loadable(tiny_run):
    _, _, out = tiny_run
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tok = AutoTokenizer.from_pretrained(out / "model")
    assert tok.chat_template is not None
    assert not (out / "model" / "adapter_config.json").exists()  # merged by default
    ids = torch.tensor([tok("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n").input_ids])
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()


def test_distill_refuses_an_existing_run(tiny_run):
    cfg, _, out = tiny_run
    before = _snapshot(out)
    with pytest.raises(InternalizeError) as e:
        distill(cfg)
    message = str(e.value)
    assert message.startswith(f"output.dir='{out}' already holds a run (config.yaml, metrics.json")
    assert "--overwrite" in message
    assert _snapshot(out) == before


def test_evaluate_artifact(tiny_run, tmp_path):
    cfg, metrics, out = tiny_run
    eval_out = tmp_path / "eval"
    raw = tiny_config_dict(cfg.model.name, eval_out)
    raw["eval"]["neutral_file"] = "builtin"
    again = evaluate_artifact(config_from_dict(raw), str(out / "model"))
    assert list(again) == ["main"] and set(again["main"]) == {"base", "teacher", "student"}
    assert again["main"]["teacher"] == metrics["main"]["teacher"]
    assert again["main"]["base"] == pytest.approx(metrics["main"]["base"], abs=1e-5)
    # the saved artifact is the student the run evaluated
    assert again["main"]["student"] == pytest.approx(metrics["main"]["student"], abs=1e-5)
    eval_info = json.loads((eval_out / "run.json").read_text())
    assert eval_info["forgetting"] == pytest.approx(json.loads((out / "run.json").read_text())["forgetting"], abs=1e-5)
    assert (eval_out / "report.md").is_file() and (eval_out / "metrics.json").is_file()
    assert not (eval_out / "loss.png").exists()
    assert not (eval_out / "model").exists()
    assert json.loads((eval_out / "run.json").read_text())["student"] == str(out / "model")


def test_evaluate_artifact_missing_student(tiny_model_dir, tmp_path):
    cfg = config_from_dict(tiny_config_dict(tiny_model_dir, tmp_path / "eval"))
    with pytest.raises(InternalizeError, match="no such directory"):
        evaluate_artifact(cfg, str(tmp_path / "missing"))
    assert not (tmp_path / "eval").exists()


def test_distill_overwrite_and_adapter_artifact(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")  # a previous run
    (out / "notes.txt").write_text("keep me")  # not a run file
    raw = tiny_config_dict(tiny_model_dir, out)
    raw["train"]["max_steps"] = 2
    raw["output"]["save"] = "adapter"
    with pytest.raises(InternalizeError, match="already holds a run \\(metrics.json\\)"):
        distill(config_from_dict(raw))
    raw["output"]["overwrite"] = True
    metrics = distill(config_from_dict(raw))
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert (out / "notes.txt").read_text() == "keep me"
    assert (out / "model" / "adapter_config.json").is_file()
    student = evaluate_artifact(config_from_dict(tiny_config_dict(tiny_model_dir, tmp_path / "eval")), str(out / "model"))
    assert student["main"]["student"] == pytest.approx(metrics["main"]["student"], abs=1e-4)


def test_distill_output_dir_is_a_file(tiny_model_dir, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(InternalizeError, match="is a file"):
        distill(config_from_dict(tiny_config_dict(tiny_model_dir, target)))


def test_distill_full_finetune_with_regex_extractor(tiny_model_dir, tmp_path):
    raw = tiny_config_dict(tiny_model_dir, tmp_path / "run")
    raw["model"]["finetune"] = "full"
    raw["teacher"].update(extractor="regex", extract_pattern=r"o(k\w+)", top_k=0)
    raw["train"].update(max_steps=2, loss="jsd")
    raw["eval"].update(max_new_tokens=8, num_examples=0)
    raw["eval"].pop("scorer_regex")
    metrics = distill(config_from_dict(raw))["main"]
    assert set(metrics["base"]) == {"agreement", "kl", "n"}  # no scorer, no score
    rows = [json.loads(line) for line in (tmp_path / "run" / "answers.jsonl").read_text().splitlines()]
    assert all(r["teacher"] == "kay" for r in rows)  # the extracted answer: 'o(k\w+)' on "okay"
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


def test_distill_teacher_keeps_nothing(tiny_model_dir, tmp_path):
    raw = tiny_config_dict(tiny_model_dir, tmp_path / "run")
    raw["teacher"].update(extractor="regex", extract_pattern="NEVER")
    with pytest.raises(InternalizeError, match="the teacher kept no answers out of 8 inputs"):
        distill(config_from_dict(raw))
    assert not (tmp_path / "run" / "model").exists()


def test_distill_failed_teacher_does_not_block_the_rerun(tiny_model_dir, tmp_path):
    raw = tiny_config_dict(tiny_model_dir, tmp_path / "run")
    raw["teacher"].update(extractor="regex", extract_pattern="NEVER")
    with pytest.raises(InternalizeError):
        distill(config_from_dict(raw))
    raw["teacher"].update(extractor="none", extract_pattern="")
    raw["train"]["max_steps"] = 1
    metrics = distill(config_from_dict(raw))  # no --overwrite needed: the failed run left nothing
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == metrics
    assert json.loads((tmp_path / "run" / "run.json").read_text())["steps"] == 1


def test_distill_bad_inputs_write_nothing(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    raw = tiny_config_dict(tiny_model_dir, out)
    raw["data"]["inputs"] = []
    with pytest.raises(InternalizeError, match="no training inputs"):
        distill(config_from_dict(raw))
    raw = tiny_config_dict(tmp_path / "no-model", out)
    with pytest.raises(InternalizeError, match="no such directory"):
        distill(config_from_dict(raw))
    raw = tiny_config_dict(tiny_model_dir, out)
    raw["eval"]["scorer_regex"] = "(bad"
    with pytest.raises(InternalizeError, match="not a valid regex"):
        distill(config_from_dict(raw))
    assert not out.exists()


def test_forgetting_check_compares_the_student_with_the_original_model(tiny_model_dir, tmp_path):
    neutral = tmp_path / "neutral.jsonl"
    neutral.write_text("".join(json.dumps({"input": q}) + "\n" for q in ("Say hi", "What is 3 plus 4?", "abc")))
    raw = tiny_config_dict(tiny_model_dir, tmp_path / "run")
    raw["eval"]["neutral_file"] = str(neutral)
    raw["train"].update(max_steps=6, lr=5e-2)  # a large step so the student visibly moves
    distill(config_from_dict(raw))
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    forgetting = run["forgetting"]
    assert forgetting["n"] == 3
    assert forgetting["kl_original_student"] > 0.0  # training changed the model on prompts it never saw
    assert "Forgetting check on 3 neutral prompts" in (tmp_path / "run" / "report.md").read_text()


def test_forgetting_check_bad_file_is_refused_before_anything_is_written(tiny_model_dir, tmp_path):
    raw = tiny_config_dict(tiny_model_dir, tmp_path / "run")
    raw["eval"]["neutral_file"] = str(tmp_path / "missing.jsonl")
    with pytest.raises(InternalizeError, match="eval.neutral_file="):
        distill(config_from_dict(raw))
    assert not (tmp_path / "run").exists()


# --- several contexts at once, and chains of runs ---------------------------------------------------------


def _jsonl(path, texts):
    path.write_text("".join(json.dumps({"input": t}) + "\n" for t in texts))
    return str(path)


def _multi_settings(tiny_model_dir, tmp_path, second_context="Answer in two words."):
    settings = tiny_config_dict(tiny_model_dir, tmp_path / "multi")
    settings["data"] = {}
    settings["teacher"]["context"] = ""
    settings["teacher"]["contexts"] = [
        {"name": "one", "context": "Answer in one word.", "train_file": _jsonl(tmp_path / "a.jsonl", TINY[:5]),
         "eval_file": _jsonl(tmp_path / "a_eval.jsonl", TINY[5:7]), "scorer_regex": "^ok"},
        {"name": "two", "context": second_context, "train_file": _jsonl(tmp_path / "b.jsonl", TINY[7:10]),
         "eval_file": _jsonl(tmp_path / "b_eval.jsonl", TINY[10:12]), "scorer_regex": "^nope"},
    ]
    return settings


TINY = [f"question number {i}?" for i in range(12)]


def test_distill_several_contexts_routes_each_input_and_scores_each_behaviour(tiny_model_dir, tmp_path, monkeypatch):
    from internalize import pipeline

    seen = []
    real = pipeline.answer
    monkeypatch.setattr(pipeline, "answer", lambda m, t, records, prompt, *a, **k: seen.append(
        (prompt.context, [r["input"] for r in records])) or real(m, t, records, prompt, *a, **k))
    metrics = distill(config_from_dict(_multi_settings(tiny_model_dir, tmp_path)))
    out = tmp_path / "multi"
    # each context taught its own training inputs, then its own held-out inputs
    assert ("Answer in one word.", TINY[:5]) in seen and ("Answer in two words.", TINY[7:10]) in seen
    assert ("Answer in one word.", TINY[5:7]) in seen and ("Answer in two words.", TINY[10:12]) in seen
    assert set(metrics) == {"one", "two"}
    assert metrics["one"]["teacher"]["score"] == 1.0 and metrics["two"]["teacher"]["score"] == 0.0  # own scorers
    for m in metrics.values():
        assert set(m) == {"base", "teacher", "student"} and m["base"]["n"] == 2
    info = json.loads((out / "run.json").read_text())
    assert info["train_inputs"] == 8 and info["train_answers"] == 8
    assert info["behaviours"] == {"one": {"train_answers": 5, "eval_inputs": 2}, "two": {"train_answers": 3, "eval_inputs": 2}}
    report = (out / "report.md").read_text()
    assert "## Behaviour `one`" in report and "## Behaviour `two`" in report and "> Answer in two words." in report
    assert (out / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "metrics.json").read_text()) == metrics


def test_a_context_less_entry_teaches_the_models_own_behaviour(tiny_model_dir, tmp_path):
    settings = _multi_settings(tiny_model_dir, tmp_path, second_context="")
    metrics = distill(config_from_dict(settings))
    # no context: the teacher is the model as it is, so the base model agrees with it and its KL is 0
    assert metrics["two"]["base"]["agreement"] == 1.0
    assert metrics["two"]["base"]["kl"] == pytest.approx(0.0, abs=1e-7)
    assert metrics["one"]["base"]["kl"] > 1e-5  # with a context the teacher's distributions differ


def test_the_behaviours_form_runs_like_the_contexts_form(tiny_model_dir, tmp_path):
    settings = _multi_settings(tiny_model_dir, tmp_path)
    entries = settings["teacher"].pop("contexts")
    del settings["teacher"]["context"], settings["eval"]["scorer_regex"]
    settings["behaviours"] = [{"name": e["name"], "prompt": {"context": e["context"]}, "train_file": e["train_file"],
                               "eval_file": e["eval_file"], "scorer_regex": e["scorer_regex"]} for e in entries]
    settings["output"]["dir"] = str(tmp_path / "new")
    new = distill(config_from_dict(settings))
    old = distill(config_from_dict(_multi_settings(tiny_model_dir, tmp_path)))
    assert new == old
    saved = [load_config(tmp_path / name / "config.yaml") for name in ("new", "multi")]
    assert saved[0].behaviours == saved[1].behaviours


def test_contexts_need_one_context_and_valid_entries(tiny_model_dir, tmp_path):
    settings = _multi_settings(tiny_model_dir, tmp_path)
    for entry in settings["teacher"]["contexts"]:
        entry["context"] = ""
    with pytest.raises(InternalizeError, match="no behaviour has a context"):
        config_from_dict(settings)
    settings = _multi_settings(tiny_model_dir, tmp_path)
    settings["teacher"]["contexts"][1]["name"] = "one"
    with pytest.raises(InternalizeError, match=r"behaviours: the name 'one' is used twice"):
        config_from_dict(settings)
    settings = _multi_settings(tiny_model_dir, tmp_path)
    settings["teacher"]["contexts"][0]["eval_fle"] = "x"
    with pytest.raises(InternalizeError, match=r"unknown config key 'teacher.contexts\[0\].eval_fle'; did you mean "
                                               r"'teacher.contexts\[0\].eval_file'"):
        config_from_dict(settings)
    settings = _multi_settings(tiny_model_dir, tmp_path)
    del settings["teacher"]["contexts"][0]["name"]
    with pytest.raises(InternalizeError, match=r"teacher.contexts\[0\].name is missing"):
        config_from_dict(settings)
    settings = _multi_settings(tiny_model_dir, tmp_path)
    del settings["teacher"]["contexts"][0]["train_file"]
    with pytest.raises(InternalizeError, match=r"no training inputs: set teacher.contexts\[0\].train_file"):
        distill(config_from_dict(settings))


def test_missing_context_file_names_the_key(tiny_model_dir, tmp_path):
    settings = _multi_settings(tiny_model_dir, tmp_path)
    settings["teacher"]["contexts"][1]["eval_file"] = str(tmp_path / "nope.jsonl")
    with pytest.raises(InternalizeError, match=r"teacher.contexts\[1\].eval_file"):
        distill(config_from_dict(settings))
    assert not (tmp_path / "multi").exists()


def test_a_run_started_from_an_earlier_artifact_reports_the_chain(tiny_run, tmp_path):
    cfg, _, first = tiny_run
    settings = tiny_config_dict(cfg.model.name, tmp_path / "second")
    settings["model"]["name"] = str(first / "model")
    settings["teacher"]["context"] = "Answer in French."
    distill(config_from_dict(settings))
    info = json.loads((tmp_path / "second" / "run.json").read_text())
    assert info["started_from"]["run"]["dir"] == str(first)
    assert info["started_from"]["run"]["added"] == ["Answer in one word."]
    assert info["started_from"]["run"]["started_from"]["model"] == cfg.model.name
    report = (tmp_path / "second" / "report.md").read_text()
    assert "## Chain" in report and f"`{first}` added 'Answer in one word.'" in report


def test_fine_tuning_on_given_outputs_learns_them_without_running_the_teacher(tiny_model_dir, tmp_path, monkeypatch):
    raw = tiny_config_dict(tiny_model_dir, tmp_path / "run")
    raw["teacher"]["context"] = ""
    raw["data"]["inputs"] = [{"input": text, "output": "zz"} for text in TINY_INPUTS]
    raw["model"]["finetune"] = "full"
    raw["train"].update(targets="data", loss="ce", max_steps=0, min_steps=0, epochs=20, lr=1e-2, warmup_ratio=0.0)
    raw["eval"]["scorer_regex"] = "^zz$"
    ran, generated = [], []
    monkeypatch.setattr(pipeline, "answer", lambda *a, **k: ran.append(k["desc"]) or answer(*a, **k))
    real_generate = evaluation.generate
    monkeypatch.setattr(evaluation, "generate", lambda *a, **k: generated.append(k["desc"]) or real_generate(*a, **k))
    metrics = distill(config_from_dict(raw))["main"]
    assert ran == ["teacher[main eval]"]  # the held-out reference only
    assert metrics["base"]["score"] == metrics["teacher"]["score"] == 0.0  # no context: the teacher is the base
    assert "base" not in generated and "student" in generated  # the base answers are the reference's, not made twice
    assert metrics["base"] == metrics["teacher"]
    assert metrics["student"]["score"] == 1.0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["train_answers"] == len(TINY_INPUTS) - 4 and run["steps"] == 20 * 2  # 8 answers, batch 4


@pytest.mark.parametrize("combine", ["average", "route"])
def test_distill_with_examples_split_over_several_contexts(tiny_model_dir, tmp_path, combine):
    raw = tiny_config_dict(tiny_model_dir, tmp_path / "run")
    raw["teacher"].update(demonstrations=[{"input": f"q{i}", "output": "ok"} for i in range(4)],
                          demonstrations_per_context=2, combine=combine)
    metrics = distill(config_from_dict(raw))
    assert set(metrics["main"]) == {"base", "teacher", "student"}
    how = "averaged token by token" if combine == "average" else "input i taught by context i mod n"
    assert f"4 demonstration turn(s) in 2 contexts of up to 2 ({how})" in (tmp_path / "run" / "report.md").read_text()


def test_the_chain_names_a_fine_tuning_run_by_its_data(tmp_path):
    run = tmp_path / "ft"
    (run / "model").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"started_from": {"model": "smollm2-135m"}}))
    (run / "config.yaml").write_text("train: {targets: data}\ndata: {train_file: sp.jsonl}\nteacher: {context: ''}\n")
    origin = run_module.origin(str(run / "model"), str(run / "model"))
    assert origin["run"]["added"] == ["fine-tuning on sp.jsonl"]
    assert origin["run"]["started_from"] == {"model": "smollm2-135m"}


# --- what a run keeps: failures, provenance, the teacher's weights hashed once -------------------------------


def test_a_run_that_fails_after_training_keeps_the_trained_model(tiny_model_dir, tmp_path, monkeypatch):
    raw = tiny_config_dict(tiny_model_dir, tmp_path / "run")

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pipeline, "write_report", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        distill(config_from_dict(raw))
    out = tmp_path / "run"
    assert AutoModelForCausalLM.from_pretrained(out / "model") is not None  # the trained weights survive
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed" and info["after_stage"] == "eval_after" and "disk full" in info["error"]
    assert (out / "config.yaml").is_file()
    with pytest.raises(InternalizeError, match="already holds a run"):  # and are not replaced silently
        distill(config_from_dict(raw))


def test_a_run_interrupted_before_its_model_is_saved_leaves_nothing(tiny_model_dir, tmp_path, monkeypatch):
    raw = tiny_config_dict(tiny_model_dir, tmp_path / "run")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        distill(config_from_dict(raw))
    assert not any((tmp_path / "run" / name).exists() for name in RUN_FILES)


def test_the_artifact_says_what_it_is_wherever_it_is_copied(tiny_run, tmp_path):
    import shutil

    cfg, metrics, out = tiny_run
    provenance = json.loads((out / "model" / "internalize.json").read_text())
    assert provenance["metrics"] == metrics
    assert provenance["added"] == ["Answer in one word."]
    assert provenance["origin"] == {"model": cfg.model.name, "path": cfg.model.name}
    assert config_from_dict(provenance["config"]) == cfg
    copied = tmp_path / "elsewhere" / "student"
    shutil.copytree(out / "model", copied)
    settings = tiny_config_dict(cfg.model.name, tmp_path / "next")
    settings["model"]["name"] = str(copied)
    settings["teacher"]["context"] = "Answer in French."
    settings["train"]["max_steps"] = 1
    distill(config_from_dict(settings))
    chain = json.loads((tmp_path / "next" / "run.json").read_text())["started_from"]
    assert chain["run"]["added"] == ["Answer in one word."]  # read from the copy's own provenance
    assert chain["run"]["started_from"]["model"] == cfg.model.name
    second = json.loads((tmp_path / "next" / "model" / "internalize.json").read_text())
    assert second["origin"] == chain and second["added"] == ["Answer in French."]


def test_a_run_hashes_the_teachers_weights_once(tiny_model_dir, tmp_path, monkeypatch):
    hashed = []
    real = cache.hashlib.sha1
    monkeypatch.setattr(cache.hashlib, "sha1", lambda **k: hashed.append(1) or real(**k))
    raw = tiny_config_dict(tiny_model_dir, tmp_path / "run")
    raw["eval"]["neutral_file"] = "builtin"  # three teacher runs: training inputs, held-out inputs, neutral prompts
    distill(config_from_dict(raw))
    assert len(hashed) == 1


# --- inputs that do not fit the model's window ------------------------------------------------------------------


def test_an_input_too_long_for_the_window_is_dropped_and_counted(tiny_model_dir, tmp_path):
    raw = tiny_config_dict(tiny_model_dir, tmp_path / "run")  # the tiny model's window: 1024 tokens, one per character
    raw["data"]["inputs"] = [*TINY_INPUTS, "x" * 1100]
    raw["data"]["eval_inputs"] = ["Say hi", "y" * 1100, "Spell cat."]
    raw["data"]["num_eval"] = 0
    metrics = distill(config_from_dict(raw))
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["too_long"] == {"main.train": 1, "main.held_out": 1}
    assert info["train_inputs"] == len(TINY_INPUTS) and metrics["main"]["base"]["n"] == 2
    assert "Inputs dropped because they do not fit the model's window" in (tmp_path / "run" / "report.md").read_text()
    raw["data"]["too_long"] = "error"
    raw["output"]["dir"] = str(tmp_path / "refused")
    with pytest.raises(InternalizeError, match=r"^behaviour 'main': train input 13 takes \d+ tokens with its context; "
                                               r"with teacher.max_new_tokens=8 it does not fit the model's 1024-token"):
        distill(config_from_dict(raw))
    assert not (tmp_path / "refused").exists()


def test_a_context_that_leaves_no_room_for_an_input_is_refused(tiny_model_dir, tmp_path):
    raw = tiny_config_dict(tiny_model_dir, tmp_path / "run")
    raw["teacher"]["context"] = "Be brief. " * 110
    with pytest.raises(InternalizeError, match=r"^behaviour 'main': the context takes \d+ tokens of the model's "
                                               r"1024-token window, leaving no room"):
        distill(config_from_dict(raw))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("mode", "weights"), [("on_policy", "base"), ("mixed", "ema"), ("on_policy", "live")])
def test_distill_on_policy_and_mixed_report_what_the_student_sampled(tiny_model_dir, tmp_path, mode, weights):
    raw = tiny_config_dict(tiny_model_dir, tmp_path / "run")
    raw["train"].update(mode=mode, sample_max_new_tokens=3)  # short: most samples are cut off, and counted
    raw["teacher"]["weights"] = weights
    metrics = distill(config_from_dict(raw))
    assert set(metrics["main"]) == {"base", "teacher", "student"}
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    o = info["on_policy"]
    assert o["micro_batches"] == info["steps"] == 4
    assert (o["on_policy"] == 4) if mode == "on_policy" else (0 <= o["on_policy"] <= 4)
    assert o["samples"] == sum(min(4, n) for n in [8] * o["on_policy"])  # 4 per micro-batch (8 answers, batch 4)
    assert o["cut_off"] == o["samples"]  # "okay" + end of turn needs 5 tokens: 3 cut every answer off
    assert 0 < o["share_of_train_time_sampling_and_scoring"] <= 1 or o["on_policy"] == 0
    assert "On-policy training" in (tmp_path / "run" / "report.md").read_text()


def test_retention_check_and_rehearsal(tiny_model_dir, tmp_path):
    questions = tmp_path / "retention.jsonl"
    write_jsonl(questions, [{"input": "Say ok", "answer": "^ok"}, {"input": "What is 1 plus 1?", "answer": "^no$"},
                            {"input": "Spell dog.", "answer": "kay"}])
    prompts = tmp_path / "rehearsal.jsonl"
    write_jsonl(prompts, [{"input": "Tell me about rain."}, {"input": "Name a fruit."}, {"input": "Hi there"}])
    raw = tiny_config_dict(tiny_model_dir, tmp_path / "run")
    raw["eval"]["retention_file"] = str(questions)
    raw["train"].update(retain=0.25, retain_file=str(prompts))
    distill(config_from_dict(raw))
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["retention"] == {"n": 3, "original": pytest.approx(2 / 3), "student": info["retention"]["student"],
                                 "kept": pytest.approx(info["retention"]["student"] / (2 / 3))}
    assert info["rehearsal_answers"] == 2 and info["train_answers"] == 8 + 2  # 0.25 x 8 task answers
    assert "Retention check on 3 general questions" in (tmp_path / "run" / "report.md").read_text()


def test_rehearsal_targets_are_the_original_models_own_answers(tiny_model_dir, tmp_path):
    from conftest import perturb_lora

    from internalize.decoding import generate
    from internalize.models import inference_mode, load_model, make_student
    from internalize.pipeline import _rehearsal
    from internalize.runtime import Runtime
    from internalize.views import prompt_ids

    raw = tiny_config_dict(tiny_model_dir, tmp_path / "run")
    raw["train"]["retain"] = 0.1
    cfg = config_from_dict(raw)
    model, tok = load_model(cfg.model)
    student = make_student(model, cfg.model)
    perturb_lora(student, 0.5)  # the student as it may be mid-training: its answers are not the original's
    rehearsal = _rehearsal(student, tok, 60, cfg, Runtime.local("cpu"))  # 0.1 x 60 answers: 6 prompts
    plain, _ = load_model(cfg.model)
    prompts = [prompt_ids(tok, r["input"]) for r in rehearsal.records]
    original = generate(plain, tok, prompts, cfg.teacher.max_new_tokens, 4, "cpu")
    assert len(rehearsal) == 6 and [r["input"] for r in rehearsal.records] == [
        r["input"] for r in read_jsonl(Path(pipeline.__file__).with_name("rehearsal.jsonl"), "test")[:6]]
    assert rehearsal.answers == [s[0].text for s in original]
    with inference_mode(student):  # the test tells them apart: the perturbed student answers otherwise
        assert [s[0].text for s in generate(student, tok, prompts, cfg.teacher.max_new_tokens, 4, "cpu")] != \
            rehearsal.answers
    assert [v.prompt_ids for v in rehearsal.teacher_views] == prompts  # no context: the teacher is the original


def test_distill_with_a_validation_split_keeps_the_best_weights_it_measured(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "MIN_VALIDATION_INPUTS", 8)  # the tiny run has 8 training inputs
    raw = tiny_config_dict(tiny_model_dir, tmp_path / "run")
    raw["train"].update(max_steps=6, batch_size=2, validation=0.25, validate_every=2, patience=0)
    distill(config_from_dict(raw))
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["validation_answers"] == 2 and info["train_answers"] == 6  # 2 of the 8 training inputs held out
    assert info["best_step"] in (2, 4, 6) and info["best_val_kl"] >= 0
    assert (tmp_path / "run" / "loss.png").is_file()


def test_the_default_validation_split_spares_small_behaviours_and_given_outputs():
    def targets(n: int) -> Targets:
        t = Targets()
        for i in range(n):
            t.keep({"input": str(i)}, i, "a", "a", View((1,), (2,)), (1,), None)
        return t

    cfg = TrainConfig()
    assert cfg.validation == 0.1 and cfg.min_steps == 100  # the defaults EXPERIMENTS.md section 11 chose on dev
    small, large = targets(pipeline.MIN_VALIDATION_INPUTS - 1), targets(30)
    taught, held = pipeline._validation_split([small, large], cfg)
    assert len(taught[0]) == len(small)  # too few inputs: all of them train
    assert len(held) == 3 and len(taught[1]) == 27 and not set(held.source) & set(taught[1].source)
    taught, held = pipeline._validation_split([small], cfg)
    assert taught[0] is small and held is None
    assert pipeline._validation_split([large], TrainConfig(targets="data", loss="ce"))[1] is None
    assert pipeline._validation_split([large], TrainConfig(validation=0.0))[1] is None
