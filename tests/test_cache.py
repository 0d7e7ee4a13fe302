"""cache.py: teacher targets on disk (safetensors shards + manifest), keyed by weights, prompts and settings."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging

import pytest
import torch
from conftest import TINY_INPUTS, tiny_config_dict

from internalize import cache, distill, teacher
from internalize.config import ModelConfig, PromptConfig, TeacherConfig, config_from_dict
from internalize.models import load_model, make_student
from internalize.runtime import Runtime

RECORDS = [{"input": text} for text in TINY_INPUTS[:5]]
PROMPT = PromptConfig(context="Answer in one word.")
RUNTIME = Runtime.local("cpu")


@pytest.fixture
def cfg(tmp_path):
    return TeacherConfig(max_new_tokens=8, top_k=16, batch_size=2, cache_dir=str(tmp_path / "teacher"))


def run_teacher(model, tok, records, cfg, prompt=PROMPT):
    """The teacher's targets for ``records`` under ``prompt`` (computed or from the cache)."""
    return teacher.answer(model, tok, records, prompt, cfg, RUNTIME)


def _assert_same(a, b):
    assert a.answers == b.answers and a.generations == b.generations and a.source == b.source
    assert a.teacher_views == b.teacher_views and a.student_views == b.student_views
    assert a.records == b.records and a.dropped == b.dropped
    assert all(torch.equal(x, y) for x, y in zip(a.logp, b.logp, strict=True))
    assert (a.ids is None) == (b.ids is None)
    if a.ids is not None:
        assert all(torch.equal(x, y) for x, y in zip(a.ids, b.ids, strict=True))


def _count_generations(monkeypatch):
    calls = []
    real = teacher.generate
    monkeypatch.setattr(teacher, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.parametrize("top_k", [16, 0])
def test_second_teach_reuses_the_cache_exactly(tiny, cfg, monkeypatch, top_k):
    model, tok = tiny
    cfg = dataclasses.replace(cfg, top_k=top_k)
    calls = _count_generations(monkeypatch)
    first = run_teacher(model, tok, RECORDS, cfg)
    second = run_teacher(model, tok, RECORDS, cfg)
    assert len(calls) == 1 and not first.cache_hit and second.cache_hit
    _assert_same(first, second)


def test_several_shards_round_trip(tiny, cfg, monkeypatch):
    model, tok = tiny
    monkeypatch.setattr(cache, "SAMPLES_PER_SHARD", 2)
    first = run_teacher(model, tok, RECORDS, cfg)
    [where] = (cache.Path(cfg.cache_dir)).iterdir()
    assert sorted(p.name for p in where.glob("*.safetensors")) == [f"shard-0000{i}.safetensors" for i in range(3)]
    _assert_same(first, run_teacher(model, tok, RECORDS, cfg))


@pytest.mark.parametrize("change", [
    {"context": "Answer in two words."},  # another context
    {"max_new_tokens": 7},  # another generation setting
    {"top_k": 8},
])
def test_other_teacher_settings_miss(tiny, cfg, monkeypatch, change):
    model, tok = tiny
    run_teacher(model, tok, RECORDS, cfg)
    calls = _count_generations(monkeypatch)
    if "context" in change:
        again = run_teacher(model, tok, RECORDS, cfg, dataclasses.replace(PROMPT, **change))
    else:
        again = run_teacher(model, tok, RECORDS, dataclasses.replace(cfg, **change))
    assert not again.cache_hit
    assert calls == [1]


def test_other_inputs_or_weights_miss(tiny, tiny_model_dir, cfg, monkeypatch):
    model, tok = tiny
    run_teacher(model, tok, RECORDS, cfg)
    calls = _count_generations(monkeypatch)
    assert not run_teacher(model, tok, RECORDS[:4], cfg).cache_hit
    other, _ = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu"))
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)  # the same path, other weights
    assert not run_teacher(other, tok, RECORDS, cfg).cache_hit
    assert len(calls) == 2


def test_lora_adapters_do_not_change_the_key(tiny, cfg):
    """The teacher is the base with adapters disabled: a fresh student shares the base model's cache."""
    model, tok = tiny
    key = cache.cache_key(model, [(1, 2)], RECORDS, cfg, tok.eos_token_id)
    student = make_student(model, ModelConfig(lora_r=4, lora_alpha=8))
    assert cache.cache_key(student, [(1, 2)], RECORDS, cfg, tok.eos_token_id) == key


def _count_weight_hashing(monkeypatch, model) -> list[int]:
    """Spy on the weights' hash: one entry per sha1 that has been fed as many bytes as the model's weights hold."""
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    hashings: list[int] = []
    real = hashlib.sha1

    class Counting:
        def __init__(self, *args, **kwargs):
            self.hash, self.taken = real(*args, **kwargs), 0

        def update(self, data):
            before, self.taken = self.taken, self.taken + memoryview(data).nbytes
            if before < weight_bytes <= self.taken:
                hashings.append(self.taken)
            self.hash.update(data)

        def hexdigest(self):
            return self.hash.hexdigest()

    monkeypatch.setattr(cache.hashlib, "sha1", Counting)
    return hashings


def test_weights_fingerprint_is_computed_once_per_loaded_weights(tiny, monkeypatch):
    model, _ = tiny
    hashings = _count_weight_hashing(monkeypatch, model)
    first = cache.weights_fingerprint(model)
    assert len(hashings) == 1  # the spy does see the weights being hashed
    assert cache.weights_fingerprint(model) == first
    assert len(hashings) == 1  # the second call hashed nothing
    p = next(model.parameters())
    with torch.no_grad():
        p.add_(1)  # an in-place change (an optimizer step): the weights are hashed again
    changed = cache.weights_fingerprint(model)
    assert changed != first and len(hashings) == 2
    assert cache.weights_fingerprint(model) == changed and len(hashings) == 2


def test_weights_fingerprint_follows_weights_replaced_rather_than_changed_in_place(tiny):
    model, _ = tiny
    first = cache.weights_fingerprint(model)
    p = next(model.parameters())
    p.data = p.data.clone() + 1  # a new tensor: its version counter starts again
    replaced = cache.weights_fingerprint(model)
    assert replaced != first
    model.to(torch.bfloat16)
    assert cache.weights_fingerprint(model) not in (first, replaced)


def test_weights_fingerprint_is_that_of_the_weights_not_of_the_model_object(tiny, tiny_model_dir):
    model, _ = tiny
    fingerprint = cache.weights_fingerprint(model)
    other, _ = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu"))
    assert cache.weights_fingerprint(other) == fingerprint  # another copy of the same weights
    with torch.no_grad():
        next(other.parameters()).mul_(2)
    assert cache.weights_fingerprint(other) != fingerprint
    assert cache.weights_fingerprint(model) == fingerprint  # the first copy's memo is its own


def test_teacher_answer_twice_hashes_the_weights_once(tiny, cfg, monkeypatch):
    model, tok = tiny
    hashings = _count_weight_hashing(monkeypatch, model)
    first = run_teacher(model, tok, RECORDS, cfg)
    second = run_teacher(model, tok, RECORDS, cfg)
    assert not first.cache_hit and second.cache_hit
    assert len(hashings) == 1

def _only_entry(cfg):
    [where] = cache.Path(cfg.cache_dir).iterdir()
    return where


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "manifest"])
def test_corrupt_cache_is_reported_and_recomputed(tiny, cfg, monkeypatch, caplog, damage):
    model, tok = tiny
    first = run_teacher(model, tok, RECORDS, cfg)
    where = _only_entry(cfg)
    shard = where / "shard-00000.safetensors"
    data = shard.read_bytes()
    if damage == "flip":
        shard.write_bytes(data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:])
    elif damage == "truncate":
        shard.write_bytes(data[: len(data) // 2])
    elif damage == "delete":
        shard.unlink()
    else:
        (where / "manifest.json").write_text("{not json")
    calls = _count_generations(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="internalize.cache"):
        again = run_teacher(model, tok, RECORDS, cfg)
    assert "unusable" in caplog.text and str(where) in caplog.text
    assert calls == [1] and not again.cache_hit
    _assert_same(first, again)
    assert run_teacher(model, tok, RECORDS, cfg).cache_hit  # rewritten whole


def test_manifest_for_another_key_is_not_used(tiny, cfg, caplog):
    model, tok = tiny
    run_teacher(model, tok, RECORDS, cfg)
    where = _only_entry(cfg)
    manifest = json.loads((where / "manifest.json").read_text())
    manifest["key"] = "0" * 32
    (where / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="internalize.cache"):
        assert not run_teacher(model, tok, RECORDS, cfg).cache_hit
    assert "another key" in caplog.text


def test_cache_off(tiny, cfg, monkeypatch):
    model, tok = tiny
    off = dataclasses.replace(cfg, cache_dir="")
    calls = _count_generations(monkeypatch)
    run_teacher(model, tok, RECORDS, off)
    assert not run_teacher(model, tok, RECORDS, off).cache_hit and len(calls) == 2
    assert not cache.Path(cfg.cache_dir).exists()


def test_bytes_per_token(tiny, cfg):
    model, tok = tiny
    assert run_teacher(model, tok, RECORDS, cfg).bytes_per_token() == (17 + 16) * 4
    full = run_teacher(model, tok, RECORDS, dataclasses.replace(cfg, top_k=0))
    assert full.bytes_per_token() == model.config.vocab_size * 4


def test_distill_with_other_student_settings_reuses_the_teacher(tiny_model_dir, tmp_path, monkeypatch):
    """A second run that changes only lr, steps and LoRA rank runs no teacher and reports the hit."""
    settings = tiny_config_dict(tiny_model_dir, tmp_path / "a")
    settings["teacher"]["cache_dir"] = str(tmp_path / "teacher")
    distill(config_from_dict(settings))
    settings["output"]["dir"] = str(tmp_path / "b")
    settings["train"] |= {"lr": 5e-4, "max_steps": 3}
    settings["model"] |= {"lora_r": 2, "lora_alpha": 4}
    calls = _count_generations(monkeypatch)
    distill(config_from_dict(settings))
    assert calls == []  # neither the training targets nor the held-out reference were recomputed
    info = json.loads((tmp_path / "b" / "run.json").read_text())
    assert info["teacher_cache"]["hit"] is True
    assert "reused from the cache" in (tmp_path / "b" / "report.md").read_text()
    first = json.loads((tmp_path / "a" / "run.json").read_text())
    assert first["teacher_cache"]["hit"] is False
