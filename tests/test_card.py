"""card.py and run.py's provenance: the model card (model/README.md) of a tiny run, its front matter, its metrics
table, the hash mode, the chain, and the command that made it."""

from __future__ import annotations

import copy
import hashlib
import json
import sys

import pytest
import yaml
from conftest import tiny_config_dict

from internalize import distill
from internalize.card import base_model, model_card
from internalize.config import InternalizeError, config_from_dict
from internalize.run import command_line

CONTEXT = "Answer in one word."


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    head, _, _ = text[4:].partition("\n---\n")
    return yaml.safe_load(head)


@pytest.fixture(scope="module")
def tiny_card(tiny_model_dir, tmp_path_factory):
    """One tiny run with the forgetting check on: (output dir, metrics, the card's text, the provenance)."""
    out = tmp_path_factory.mktemp("card") / "run"
    raw = tiny_config_dict(tiny_model_dir, out)
    raw["eval"]["neutral_file"] = "builtin"
    metrics = distill(config_from_dict(raw))
    provenance = json.loads((out / "model" / "internalize.json").read_text())
    return out, metrics, (out / "model" / "README.md").read_text(), provenance


def test_the_artifact_has_a_model_card_with_front_matter(tiny_card, tiny_model_dir):
    out, _, text, _ = tiny_card
    front = _front_matter(text)
    assert front == {"base_model": str(tiny_model_dir), "library_name": "transformers",
                     "tags": ["internalize", "context-distillation"], "pipeline_tag": "text-generation"}
    assert f"> {CONTEXT}" in text  # text mode (the default): the context itself
    assert "Python API" in text  # run from a test, not the CLI
    assert f"`{out}/config.yaml`" in text
    assert not (out / "logs").exists()  # train.report_to is off by default


def test_the_card_holds_metrics_json_and_the_forgetting_check(tiny_card):
    out, metrics, text, provenance = tiny_card
    assert json.loads((out / "metrics.json").read_text()) == metrics == provenance["metrics"]
    table = text.split("### `main`", 2)[2].split("\n\n")[1].splitlines()  # the second `main` heading: its metrics
    assert table[0] == "| condition | score | agreement with teacher | KL(teacher \\|\\| model) | inputs |"
    rows = {row.split(" | ")[0].strip("| "): row for row in table[2:]}
    assert set(rows) == {"base", "teacher", "student"}
    for condition, m in metrics["main"].items():
        assert rows[condition] == (f"| {condition} | {m['score']:.4f} | {m['agreement']:.4f} | {m['kl']:.4f} | "
                                   f"{m['n']} |")
    forgetting = json.loads((out / "run.json").read_text())["forgetting"]
    assert provenance["forgetting"] == forgetting
    assert f"On {forgetting['n']} prompts" in text and f"{forgetting['kl_original_student']:.4f}" in text


def test_the_card_parses_as_a_hugging_face_model_card(tiny_card, tiny_model_dir):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    out, *_ = tiny_card
    card = huggingface_hub.ModelCard.load(out / "model" / "README.md")
    assert card.data.base_model == str(tiny_model_dir)
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert "context-distillation" in card.data.tags


def test_hash_mode_shows_the_contexts_sha256_not_its_text(tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    raw = tiny_config_dict(tiny_model_dir, out)
    raw["teacher"]["demonstrations"] = [{"input": "Say yes", "output": "Affirmative"}]
    raw["output"]["card_context"] = "hash"
    monkeypatch.setattr(sys, "argv", ["/venv/bin/internalize", "distill", "x.yaml", f"teacher.context={CONTEXT}",
                                      "output.card_context=hash"])
    distill(config_from_dict(raw))
    text = (out / "model" / "README.md").read_text()
    assert CONTEXT not in text and "Affirmative" not in text
    assert hashlib.sha256(CONTEXT.encode()).hexdigest() in text
    demos = json.dumps(raw["teacher"]["demonstrations"], sort_keys=True, ensure_ascii=False)
    assert hashlib.sha256(demos.encode()).hexdigest() in text
    # the override that set the context is hidden too
    assert "internalize distill x.yaml 'teacher.context=<hidden>' output.card_context=hash" in text
    assert "| student |" in text


def test_card_context_is_validated():
    with pytest.raises(InternalizeError, match=r"output.card_context='plain' is invalid: use one of text, hash"):
        config_from_dict({"teacher": {"context": "x"}, "output": {"card_context": "plain"}})


def test_command_line_is_the_clis_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/x/.venv/bin/internalize", "distill", "c.yaml", "teacher.context=a b"])
    assert command_line() == "internalize distill c.yaml 'teacher.context=a b'"
    monkeypatch.setattr(sys, "argv", ["/x/src/internalize/__main__.py", "eval", "c.yaml"])  # python -m internalize
    assert command_line() == "internalize eval c.yaml"
    monkeypatch.setattr(sys, "argv", ["/x/pytest", "-q"])
    assert command_line() == "Python API"


def test_the_card_names_the_first_model_of_the_chain(tiny_card):
    *_, provenance = tiny_card
    later = copy.deepcopy(provenance)
    later["origin"] = {"model": "runs/a/model", "path": "runs/a/model",
                       "run": {"dir": "runs/a", "added": ["Be terse."],
                               "started_from": {"model": "smollm2-135m", "path": "/cache/smollm2"}}}
    later["metrics"] = later["forgetting"] = None  # as written when the model is saved, before evaluation
    text = model_card(later)
    assert base_model(later["origin"]) == _front_matter(text)["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    chain = text.split("## Chain of runs")[1]
    assert "- `runs/a` added 'Be terse.'" in chain
    assert "- started from `smollm2-135m` (HuggingFaceTB/SmolLM2-135M-Instruct)" in chain
    assert "Not evaluated yet" in text
    assert _front_matter(model_card(later, adapter=True))["library_name"] == "peft"
