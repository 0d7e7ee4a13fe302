"""cache.py: teacher targets on disk (safetensors shards + manifest), keyed by weights, prompts and settings."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch
from conftest import TINY_INPUTS, tiny_config_dict

from internalize import cache, distill, teacher
from internalize.config import ModelConfig, TeacherConfig, config_from_dict
from internalize.models import load_model, make_student
from internalize.teacher import teach

RECORDS = [{"input": text} for text in TINY_INPUTS[:5]]


@pytest.fixture
def cfg(tmp_path):
    return TeacherConfig(context="Answer in one word.", max_new_tokens=8, top_k=16, batch_size=2,
                         cache_dir=str(tmp_path / "teacher"))


def _assert_same(a, b):
    assert a.answers == b.answers and a.generations == b.generations and a.source == b.source
    assert a.teacher_views == b.teacher_views and a.student_views == b.student_views
    assert a.records == b.records and a.dropped == b.dropped and a.all_answers == b.all_answers
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
    first = teach(model, tok, RECORDS, cfg)
    second = teach(model, tok, RECORDS, cfg)
    assert len(calls) == 1 and not first.cache_hit and second.cache_hit
    _assert_same(first, second)


def test_several_shards_round_trip(tiny, cfg, monkeypatch):
    model, tok = tiny
    monkeypatch.setattr(cache, "SAMPLES_PER_SHARD", 2)
    first = teach(model, tok, RECORDS, cfg)
    [where] = (cache.Path(cfg.cache_dir)).iterdir()
    assert sorted(p.name for p in where.glob("*.safetensors")) == [f"shard-0000{i}.safetensors" for i in range(3)]
    _assert_same(first, teach(model, tok, RECORDS, cfg))


@pytest.mark.parametrize("change", [
    {"context": "Answer in two words."},  # another context
    {"max_new_tokens": 7},  # another generation setting
    {"top_k": 8},
])
def test_other_teacher_settings_miss(tiny, cfg, monkeypatch, change):
    model, tok = tiny
    teach(model, tok, RECORDS, cfg)
    calls = _count_generations(monkeypatch)
    assert not teach(model, tok, RECORDS, dataclasses.replace(cfg, **change)).cache_hit
    assert calls == [1]


def test_other_inputs_or_weights_miss(tiny, tiny_model_dir, cfg, monkeypatch):
    model, tok = tiny
    teach(model, tok, RECORDS, cfg)
    calls = _count_generations(monkeypatch)
    assert not teach(model, tok, RECORDS[:4], cfg).cache_hit
    other, _ = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu"))
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)  # the same path, other weights
    assert not teach(other, tok, RECORDS, cfg).cache_hit
    assert len(calls) == 2


def test_lora_adapters_do_not_change_the_key(tiny, cfg):
    """The teacher is the base with adapters disabled: a fresh student shares the base model's cache."""
    model, tok = tiny
    key = cache.cache_key(model, [(1, 2)], RECORDS, cfg, tok.eos_token_id)
    student = make_student(model, ModelConfig(lora_r=4, lora_alpha=8))
    assert cache.cache_key(student, [(1, 2)], RECORDS, cfg, tok.eos_token_id) == key


def _only_entry(cfg):
    [where] = cache.Path(cfg.cache_dir).iterdir()
    return where


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "manifest"])
def test_corrupt_cache_is_reported_and_recomputed(tiny, cfg, monkeypatch, caplog, damage):
    model, tok = tiny
    first = teach(model, tok, RECORDS, cfg)
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
        again = teach(model, tok, RECORDS, cfg)
    assert "unusable" in caplog.text and str(where) in caplog.text
    assert calls == [1] and not again.cache_hit
    _assert_same(first, again)
    assert teach(model, tok, RECORDS, cfg).cache_hit  # rewritten whole


def test_manifest_for_another_key_is_not_used(tiny, cfg, caplog):
    model, tok = tiny
    teach(model, tok, RECORDS, cfg)
    where = _only_entry(cfg)
    manifest = json.loads((where / "manifest.json").read_text())
    manifest["key"] = "0" * 32
    (where / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="internalize.cache"):
        assert not teach(model, tok, RECORDS, cfg).cache_hit
    assert "another key" in caplog.text


def test_cache_off(tiny, cfg, monkeypatch):
    model, tok = tiny
    off = dataclasses.replace(cfg, cache_dir="")
    calls = _count_generations(monkeypatch)
    teach(model, tok, RECORDS, off)
    assert not teach(model, tok, RECORDS, off).cache_hit and len(calls) == 2
    assert not cache.Path(cfg.cache_dir).exists()


def test_bytes_per_token(tiny, cfg):
    model, tok = tiny
    assert cache.bytes_per_token(teach(model, tok, RECORDS, cfg)) == (17 + 16) * 4
    full = teach(model, tok, RECORDS, dataclasses.replace(cfg, top_k=0))
    assert cache.bytes_per_token(full) == model.config.vocab_size * 4


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
