"""playground.py and ``internalize generate``: answers equal decoding.generate's, contexts reach the prompts,
streaming gives the same answer, --compare / --json / --file output, one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_ANSWER, TINY_INPUTS, error_line, tiny_config_dict, write_yaml

import internalize.playground as playground
from internalize.cli import main
from internalize.config import ModelConfig, PromptConfig
from internalize.decoding import generate
from internalize.models import inference_mode, load_model
from internalize.playground import answers, prompt_from
from internalize.views import prompt_ids


@pytest.fixture(scope="module")
def noisy_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with seeded noise on its weights: answers that differ from prompt to prompt."""
    model, tokenizer = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu"))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    out = tmp_path_factory.mktemp("noisy")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _direct(model_dir, texts, prompt=None, **kw):
    """What decoding.generate answers, called by hand."""
    model, tok = load_model(ModelConfig(name=str(model_dir), device="cpu"))
    with inference_mode(model):
        gens = generate(model, tok, [prompt_ids(tok, t, prompt) for t in texts], kw.pop("max_new_tokens", 12), 4,
                        "cpu", **kw)
    return [g[0].text for g in gens]


def _spy(monkeypatch) -> list[list[tuple[int, ...]]]:
    """Record the prompt ids every batched generation is given."""
    seen = []
    real = playground.generate

    def spy(model, tokenizer, prompts, *args, **kwargs):
        seen.append([tuple(p) for p in prompts])
        return real(model, tokenizer, prompts, *args, **kwargs)

    monkeypatch.setattr(playground, "generate", spy)
    return seen


def test_greedy_answers_equal_decoding_generate(noisy_model_dir):
    texts = TINY_INPUTS[:6]
    got = answers(str(noisy_model_dir), texts, max_new_tokens=12, batch_size=4, device="cpu")
    assert [r["input"] for r in got] == texts
    expected = _direct(noisy_model_dir, texts)
    assert [r["output"] for r in got] == expected
    assert len(set(expected)) > 1  # the noisy model's answers depend on the prompt: the comparison means something


def test_sampled_answers_are_seeded_and_equal_decoding_generate(noisy_model_dir):
    texts = TINY_INPUTS[:4]
    kw = dict(max_new_tokens=12, do_sample=True, temperature=1.5, top_p=0.9)
    first = answers(str(noisy_model_dir), texts, seed=7, batch_size=4, device="cpu", **kw)
    assert answers(str(noisy_model_dir), texts, seed=7, batch_size=4, device="cpu", **kw) == first
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        expected = _direct(noisy_model_dir, texts, do_sample=True, temperature=1.5, top_p=0.9)
    assert [r["output"] for r in first] == expected


@pytest.mark.parametrize("sample", [False, True])
def test_streaming_one_prompt_gives_the_batched_answer(noisy_model_dir, sample):
    kw = dict(max_new_tokens=12, do_sample=sample, temperature=1.3, seed=5, device="cpu")
    batched = answers(str(noisy_model_dir), ["Name a colour."], **kw)
    pieces = []
    streamed = answers(str(noisy_model_dir), ["Name a colour."], stream=lambda c, p: pieces.append((c, p)), **kw)
    assert streamed == batched
    assert {c for c, _ in pieces} == {"output"}
    assert "".join(p for _, p in pieces).strip() == batched[0]["output"]


def test_a_context_reaches_the_teacher_prompts(tiny_model_dir, monkeypatch):
    from internalize.models import load_model as load

    seen = _spy(monkeypatch)
    texts = TINY_INPUTS[:3]
    prompt = PromptConfig(context="Answer in one word.", position="before_input")
    got = answers(str(tiny_model_dir), texts, prompt, max_new_tokens=8, device="cpu")
    assert [r["output"] for r in got] == [TINY_ANSWER] * 3
    _, tok = load(ModelConfig(name=str(tiny_model_dir), device="cpu"))
    assert seen == [[prompt_ids(tok, t, prompt) for t in texts]]
    assert seen[0] != [prompt_ids(tok, t) for t in texts]

    seen.clear()  # a plain string is a system-message context
    answers(str(tiny_model_dir), texts, "Be brief.", max_new_tokens=8, device="cpu")
    assert seen == [[prompt_ids(tok, t, PromptConfig(context="Be brief.")) for t in texts]]


def test_compare_runs_base_teacher_and_student_on_their_prompts(tiny_model_dir, noisy_model_dir, monkeypatch):
    seen = _spy(monkeypatch)
    texts = TINY_INPUTS[:2]
    prompt = PromptConfig(context="Answer in one word.")
    got = answers(str(tiny_model_dir), texts, prompt, student=str(noisy_model_dir), max_new_tokens=12, device="cpu")
    _, tok = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu"))
    assert seen == [[prompt_ids(tok, t) for t in texts], [prompt_ids(tok, t, prompt) for t in texts],
                    [prompt_ids(tok, t) for t in texts]]
    assert [list(r) for r in got] == [["input", "base", "teacher", "student"]] * 2
    assert [r["teacher"] for r in got] == _direct(tiny_model_dir, texts, prompt)
    assert [r["student"] for r in got] == _direct(noisy_model_dir, texts)


def test_split_contexts_are_averaged_as_the_teacher_does(tiny_model_dir, monkeypatch):
    calls = []
    real = playground.generate

    def spy(model, tokenizer, prompts, *args, **kwargs):
        calls.append((len(prompts), kwargs.get("group")))
        return real(model, tokenizer, prompts, *args, **kwargs)

    monkeypatch.setattr(playground, "generate", spy)
    demos = [{"input": f"q{i}", "output": f"a{i}"} for i in range(4)]
    prompt = PromptConfig(context="c", demonstrations=demos, demonstrations_per_context=2)
    got = answers(str(tiny_model_dir), TINY_INPUTS[:3], prompt, max_new_tokens=8, device="cpu")
    assert calls == [(6, 2)] and len(got) == 3


def test_prompt_from_a_config_or_a_run_directory(tiny_model_dir, tmp_path):
    raw = tiny_config_dict(tiny_model_dir, tmp_path / "run")
    path = write_yaml(tmp_path / "one.yaml", raw)
    assert prompt_from(path).context == "Answer in one word."
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(path.read_text())
    assert prompt_from(run).context == "Answer in one word."

    raw = tiny_config_dict(tiny_model_dir, tmp_path / "run2")
    del raw["teacher"]["context"], raw["data"]["inputs"], raw["eval"]["scorer_regex"]
    raw["behaviours"] = [{"name": n, "prompt": {"context": f"be {n}", "position": "after_input"}, "inputs": ["a", "b"]}
                         for n in ("short", "polite")]
    several = write_yaml(tmp_path / "several.yaml", raw)
    assert prompt_from(several, "polite").context == "be polite"
    assert prompt_from(several, "polite").position == "after_input"
    with pytest.raises(Exception, match="several behaviours \\(short, polite\\); choose one with --behaviour"):
        prompt_from(several)
    with pytest.raises(Exception, match="no behaviour 'rude'"):
        prompt_from(several, "rude")


# --- the command line ------------------------------------------------------------------------------------------


def test_cli_one_prompt_prints_the_answer(noisy_model_dir, capsys):
    assert main(["-q", "generate", str(noisy_model_dir), "Name a colour.", "--max-new-tokens", "12",
                 "--device", "cpu"]) == 0
    expected = _direct(noisy_model_dir, ["Name a colour."])[0]
    assert capsys.readouterr().out == expected + "\n"


def test_cli_streams_to_a_terminal(tiny_model_dir, noisy_model_dir, capsys, monkeypatch):
    import sys

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert main(["-q", "generate", str(tiny_model_dir), "Hi", "--device", "cpu", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out == f"{TINY_ANSWER}\n"
    assert main(["-q", "generate", str(tiny_model_dir), "Hi", "--device", "cpu", "--max-new-tokens", "8",
                 "--context", "Be brief.", "--compare", str(tiny_model_dir)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{c + ':':<9}{TINY_ANSWER}" for c in ("base", "teacher", "student")]


def test_cli_several_prompts_and_a_context(tiny_model_dir, capsys, monkeypatch):
    seen = _spy(monkeypatch)
    prompts = ["Say hi", "2 + 2 = ?"]  # an '=' in a prompt is not an override
    assert main(["-q", "generate", str(tiny_model_dir), prompts[0], "--context", "Be brief.", "--position",
                 "after_input", prompts[1], "--device", "cpu", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert out == "".join(f"> {p}\n{TINY_ANSWER}\n\n" for p in prompts)[:-1]
    _, tok = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu"))
    assert seen == [[prompt_ids(tok, p, PromptConfig(context="Be brief.", position="after_input")) for p in prompts]]


def test_cli_compare_prints_three_columns_per_prompt(tiny_model_dir, tmp_path, capsys):
    path = write_yaml(tmp_path / "cfg.yaml", tiny_config_dict(tiny_model_dir, tmp_path / "run"))
    prompts = TINY_INPUTS[:3]
    assert main(["-q", "generate", str(tiny_model_dir), *prompts, "--config", str(path), "--compare",
                 str(tiny_model_dir), "--device", "cpu", "--max-new-tokens", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [c.strip() for c in lines[0].split(" | ")] == ["input", "base", "teacher", "student"]
    for p in prompts:
        row = next(line for line in lines if line.startswith(p))
        assert [c.strip() for c in row.split(" | ")] == [p, TINY_ANSWER, TINY_ANSWER, TINY_ANSWER]


def test_cli_json_and_file(tiny_model_dir, tmp_path, capsys):
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps({"input": t, "id": i}) + "\n" for i, t in enumerate(TINY_INPUTS[:3])))
    assert main(["-q", "generate", str(tiny_model_dir), "first", "--file", str(inputs), "--json", "--device", "cpu",
                 "--max-new-tokens", "8"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records == [{"input": t, "output": TINY_ANSWER} for t in ["first", *TINY_INPUTS[:3]]]

    assert main(["-q", "generate", str(tiny_model_dir), "--file", str(inputs), "--json", "--context", "c",
                 "--compare", str(tiny_model_dir), "--device", "cpu", "--max-new-tokens", "8"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records == [{"input": t, "base": TINY_ANSWER, "teacher": TINY_ANSWER, "student": TINY_ANSWER}
                       for t in TINY_INPUTS[:3]]


@pytest.mark.parametrize("argv, expected", [
    (["generate", "{missing}", "hi"], "model.name='{missing}': no such directory or .gguf file"),
    (["generate", "{model}", "--file", "{tmp}/none.jsonl"], "--file='{tmp}/none.jsonl': file not found"),
    (["generate", "{model}"], "no prompts: give PROMPT arguments or --file"),
    (["generate", "{model}", "hi", "--compare", "{model}"], "needs the teacher's context"),
    (["generate", "{model}", "hi", "--behaviour", "x"], "--behaviour names a behaviour of --config"),
    (["generate", "{model}", "hi", "--position", "after_input"], "--position after_input places --context"),
    (["generate", "{model}", "hi", "--config", "{tmp}/none.yaml"], "none.yaml: config file not found"),
    (["generate", "{model}", "hi", "--top-p", "0"], "top_p=0.0 is invalid"),
    (["generate", "{model}", "hi", "--compare", "{missing}", "--context", "c"], "no such directory"),
])
def test_cli_errors_are_one_line_exit_2(tiny_model_dir, tmp_path, capsys, argv, expected):
    fill = dict(model=tiny_model_dir, missing=tmp_path / "no-model", tmp=tmp_path)
    assert main([a.format(**fill) for a in argv] + ["--device", "cpu"]) == 2
    assert expected.format(**fill) in error_line(capsys)


def test_cli_unknown_option_is_a_usage_error(tiny_model_dir):
    with pytest.raises(SystemExit) as e:
        main(["generate", str(tiny_model_dir), "hi", "--no-such-option"])
    assert e.value.code == 2


def test_a_saved_stop_string_ends_streamed_and_batched_answers_alike(noisy_model_dir, tmp_path):
    """``model.stop_strings`` travel in the artifact's generation_config.json; the streamed answer holds back the
    characters that may start a stop string, and ends as the batched one does."""
    from internalize.models import save_artifact

    plain = answers(str(noisy_model_dir), ["Name a colour."], max_new_tokens=12, device="cpu")[0]["output"]
    cut = plain[len(plain) // 2 : len(plain) // 2 + 2]  # a string the answer holds, half-way through
    model, tok = load_model(ModelConfig(name=str(noisy_model_dir), device="cpu", stop_strings=[cut]))
    save_artifact(model, tok, tmp_path / "stops", "merged", str(noisy_model_dir))
    kw = dict(max_new_tokens=12, device="cpu")
    batched = answers(str(tmp_path / "stops"), ["Name a colour."], **kw)
    pieces = []
    streamed = answers(str(tmp_path / "stops"), ["Name a colour."], stream=lambda c, p: pieces.append(p), **kw)
    assert batched[0]["output"] == plain[: plain.index(cut)].strip() != plain
    assert streamed == batched
    assert cut not in "".join(pieces) and "".join(pieces).strip() == batched[0]["output"]
