"""pipeline.py: the tiny end-to-end ``distill`` run, its files, refusal to clobber, ``evaluate_artifact``."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_INPUTS, tiny_config_dict
from transformers import AutoModelForCausalLM, AutoTokenizer

from internalize import distill, evaluate_artifact, pipeline
from internalize.config import InternalizeError, config_from_dict, load_config
from internalize.data import load_inputs
from internalize.pipeline import RUN_FILES
from internalize.teacher import teach

CONDITION_KEYS = {"agreement", "kl", "score", "n"}


def _snapshot(directory):
    return {p.relative_to(directory): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
            for p in sorted(directory.rglob("*"))}


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory):
    """One tiny distill run shared by the tests of this module: (cfg, metrics, output dir)."""
    out = tmp_path_factory.mktemp("pipeline") / "run"
    cfg = config_from_dict(tiny_config_dict(tiny_model_dir, out))
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


def test_distill_metrics(tiny_run):
    _, metrics, out = tiny_run
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert set(metrics) == {"base", "teacher", "student"}
    for condition in metrics.values():
        assert set(condition) == CONDITION_KEYS
        assert condition["n"] == 4
        assert 0.0 <= condition["score"] <= 1.0
    assert metrics["teacher"]["agreement"] == 1.0
    assert metrics["teacher"]["kl"] == 0.0
    assert metrics["teacher"]["score"] == 1.0  # the tiny model answers "okay"; the scorer wants ^ok


def test_distill_writes_every_held_out_answer(tiny_run):
    cfg, _, out = tiny_run
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert [r["input"] for r in rows] == [r["input"] for r in load_inputs(cfg.data)[1]]
    assert all(set(r) == {"input", "base", "teacher", "student"} for r in rows)
    assert all(r["teacher"].startswith("ok") for r in rows)  # the tiny teacher answers "okay"


def test_distill_run_info(tiny_run):
    _, _, out = tiny_run
    info = json.loads((out / "run.json").read_text())
    assert info["train_inputs"] == 8 and info["eval_inputs"] == 4
    assert info["train_answers"] == 8 and info["dropped"] == {}
    assert info["steps"] == 4
    assert set(info["timings"]) == {"load", "teacher", "reference", "neutral_before", "eval_before", "train",
                                    "eval_after", "save"}
    # the forgetting check is in every report: by default on the 20 prompts shipped with the package
    assert info["forgetting"]["n"] == 20 and 0.0 <= info["forgetting"]["agreement_with_original"] <= 1.0


def test_distill_report(tiny_run):
    _, metrics, out = tiny_run
    report = (out / "report.md").read_text()
    assert "| condition | score (user scorer) | agreement with teacher | KL(teacher || model) |" in report
    for condition, m in metrics.items():
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
    again = evaluate_artifact(config_from_dict(raw), str(out / "model"))
    assert set(again) == {"base", "teacher", "student"}
    for condition in again.values():
        assert set(condition) == CONDITION_KEYS
    assert again["teacher"] == metrics["teacher"]
    assert again["base"] == pytest.approx(metrics["base"], abs=1e-5)
    # the merged artifact behaves like the in-memory student the run evaluated
    assert again["student"] == pytest.approx(metrics["student"], abs=1e-4)
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
    assert student["student"] == pytest.approx(metrics["student"], abs=1e-4)


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
    raw["eval"] = {"max_new_tokens": 8, "num_examples": 0}
    metrics = distill(config_from_dict(raw))
    assert set(metrics["base"]) == {"agreement", "kl", "n"}  # no scorer, no score
    assert metrics["teacher"] == {"n": 4, "agreement": 1.0, "kl": 0.0}
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
    distill(config_from_dict(raw))


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
    assert 0.0 <= forgetting["agreement_with_original"] <= 1.0
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
    real = pipeline.teach
    monkeypatch.setattr(pipeline, "teach", lambda m, t, records, cfg, **k: seen.append(
        (cfg.context, [r["input"] for r in records])) or real(m, t, records, cfg, **k))
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
    assert metrics["two"]["teacher"]["agreement"] == 1.0
    assert metrics["two"]["base"]["agreement"] == 1.0  # no context: the teacher is the model as it is


def test_contexts_need_one_context_and_valid_entries(tiny_model_dir, tmp_path):
    settings = _multi_settings(tiny_model_dir, tmp_path)
    for entry in settings["teacher"]["contexts"]:
        entry["context"] = ""
    with pytest.raises(InternalizeError, match="no entry has a context"):
        distill(config_from_dict(settings))
    settings = _multi_settings(tiny_model_dir, tmp_path)
    settings["teacher"]["contexts"][1]["name"] = "one"
    with pytest.raises(InternalizeError, match=r"teacher.contexts\[1\].name='one' is used twice"):
        config_from_dict(settings)
    settings = _multi_settings(tiny_model_dir, tmp_path)
    settings["teacher"]["contexts"][0]["eval_fle"] = "x"
    with pytest.raises(InternalizeError, match=r"teacher.contexts\[0\] has unknown key\(s\) \['eval_fle'\]"):
        config_from_dict(settings)
    settings = _multi_settings(tiny_model_dir, tmp_path)
    del settings["teacher"]["contexts"][0]["train_file"]
    with pytest.raises(InternalizeError, match=r"teacher.contexts\[0\].train_file is missing"):
        config_from_dict(settings)


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
    raw["train"].update(targets="data", loss="ce", max_steps=0, epochs=20, lr=1e-2, warmup_ratio=0.0)
    raw["eval"]["scorer_regex"] = "^zz$"
    ran = []
    monkeypatch.setattr(pipeline, "teach", lambda *a, **k: ran.append(k["desc"]) or teach(*a, **k))
    metrics = distill(config_from_dict(raw))
    assert ran == ["teacher[main eval]", "base[neutral]"]  # held-out reference and forgetting check only
    assert metrics["base"]["score"] == metrics["teacher"]["score"] == 0.0  # no context: the teacher is the base
    assert metrics["student"]["score"] == 1.0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["train_answers"] == len(TINY_INPUTS) - 4 and run["steps"] == 20 * 2  # 8 answers, batch 4


@pytest.mark.parametrize("combine", ["average", "route"])
def test_distill_with_examples_split_over_several_contexts(tiny_model_dir, tmp_path, combine):
    raw = tiny_config_dict(tiny_model_dir, tmp_path / "run")
    raw["teacher"].update(demonstrations=[{"input": f"q{i}", "output": "ok"} for i in range(4)],
                          demonstrations_per_context=2, combine=combine)
    metrics = distill(config_from_dict(raw))
    assert set(metrics) == {"base", "teacher", "student"}
    how = "averaged token by token" if combine == "average" else "input i taught by context i mod n"
    assert f"4 demonstration turn(s) in 2 contexts of up to 2 ({how})" in (tmp_path / "run" / "report.md").read_text()


def test_the_chain_names_a_fine_tuning_run_by_its_data(tmp_path):
    run = tmp_path / "ft"
    (run / "model").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"started_from": {"model": "smollm2-135m"}}))
    (run / "config.yaml").write_text("train: {targets: data}\ndata: {train_file: sp.jsonl}\nteacher: {context: ''}\n")
    origin = pipeline._origin(str(run / "model"), str(run / "model"))
    assert origin["run"]["added"] == ["fine-tuning on sp.jsonl"]
    assert origin["run"]["started_from"] == {"model": "smollm2-135m"}
