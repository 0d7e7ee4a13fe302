"""config.py: YAML + overrides, unknown keys, range and type checks, errors naming file/key/line."""

from __future__ import annotations

import dataclasses
import sys

import pytest
import yaml

from internalize.config import (
    BehaviourConfig,
    Config,
    InternalizeError,
    ModelConfig,
    PromptConfig,
    SynthesizeConfig,
    TeacherConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    describe_fields,
    load_config,
    save_config,
)

MINIMAL = {"teacher": {"context": "Be brief."}}


def _write(tmp_path, data, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_defaults_from_minimal_yaml(tmp_path):
    cfg = load_config(_write(tmp_path, MINIMAL))
    assert isinstance(cfg, Config)
    assert [b.name for b in cfg.behaviours] == ["main"]
    assert cfg.behaviours[0].prompt.context == "Be brief."
    assert cfg.model.name == "smollm2-135m"
    assert cfg.train == TrainConfig()
    assert cfg.behaviours[0].prompt.position == "system"


def test_yaml_values_and_overrides(tmp_path):
    path = _write(tmp_path, {"teacher": {"context": "c", "max_new_tokens": 10}, "train": {"lr": 1e-3, "epochs": 3}})
    cfg = load_config(path, ["train.lr=3e-4", "teacher.position=after_input", "model.finetune=full",
                             "output.overwrite=true", "model.lora_target_modules=q_proj,v_proj", "data.num_eval=5"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 3
    assert cfg.teacher.max_new_tokens == 10
    assert cfg.behaviours[0].prompt.position == "after_input"
    assert cfg.model.finetune == "full"
    assert cfg.output.overwrite is True
    assert cfg.model.lora_target_modules == ["q_proj", "v_proj"]
    assert cfg.data.num_eval == 5


def test_overrides_without_file():
    cfg = load_config(None, ["teacher.context=hello", "train.max_steps=7", "model.lora_target_modules=[q_proj]"])
    assert cfg.behaviours[0].prompt.context == "hello"
    assert cfg.train.max_steps == 7
    assert cfg.model.lora_target_modules == ["q_proj"]


@pytest.mark.parametrize(("overrides", "engine"), [([], "dynamic"), (["teacher.engine=static"], "static"),
                                                   (["teacher.engine=static", "eval.engine=dynamic"], "dynamic"),
                                                   (["eval.engine=static"], "static")])
def test_the_evaluation_generates_as_the_teacher_unless_told_otherwise(overrides, engine, tmp_path):
    cfg = load_config(None, ["teacher.context=hello", *overrides])
    assert cfg.eval.engine == engine
    save_config(cfg, tmp_path / "resolved.yaml")  # the resolved file runs the same way
    assert load_config(tmp_path / "resolved.yaml").eval.engine == engine
    with pytest.raises(InternalizeError, match="eval.engine"):
        load_config(None, ["teacher.context=hello", "eval.engine=fast"])


def test_override_keeps_equals_sign_in_value():
    cfg = load_config(None, ["teacher.context=a=b"])
    assert cfg.behaviours[0].prompt.context == "a=b"


@pytest.mark.parametrize("value, expected", [("true", True), ("false", False), ("yes", True), ("no", False)])
def test_bool_coercion(value, expected):
    assert load_config(None, ["teacher.context=c", f"output.overwrite={value}"]).output.overwrite is expected


@pytest.mark.parametrize("value, expected", [("1", True), ("0", False)])
def test_bool_coercion_from_one_and_zero(value, expected):
    assert load_config(None, ["teacher.context=c", f"output.overwrite={value}"]).output.overwrite is expected


def test_int_from_integral_float_is_accepted():
    assert config_from_dict({"teacher": {"context": "c"}, "train": {"max_steps": 4.0}}).train.max_steps == 4


def test_unknown_key_suggests_close_match():
    with pytest.raises(InternalizeError) as e:
        load_config(None, ["teacher.context=c", "train.warmup_ration=0.2"])
    assert "unknown config key 'train.warmup_ration'" in str(e.value)
    assert "did you mean 'train.warmup_ratio'" in str(e.value)


def test_unknown_key_lr_rate_names_lr():
    with pytest.raises(InternalizeError) as e:
        load_config(None, ["teacher.context=c", "train.lr_rate=0.1"])
    assert "train.lr_rate" in str(e.value)
    assert "lr" in str(e.value).split("train.lr_rate", 1)[1]


def test_unknown_key_lr_rate_suggests_train_lr():
    with pytest.raises(InternalizeError, match=r"did you mean 'train\.lr'"):
        load_config(None, ["teacher.context=c", "train.lr_rate=0.1"])


def test_unknown_section_suggests_close_match(tmp_path):
    path = _write(tmp_path, {"teacher": {"context": "c"}, "trian": {"lr": 1e-3}})
    with pytest.raises(InternalizeError) as e:
        load_config(path)
    message = str(e.value)
    assert message.startswith(str(path))
    assert "unknown config key 'trian'" in message
    assert "did you mean 'train'" in message


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    path = _write(tmp_path, {"teacher": {"context": "c", "contxt": "x"}})
    expected = r"cfg\.yaml: unknown config key 'teacher\.contxt'; did you mean 'teacher\.context'"
    with pytest.raises(InternalizeError, match=expected):
        load_config(path)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.lr=-1", "train.lr=-1"),
        ("train.lr=0", "train.lr=0"),
        ("train.jsd_beta=1.0", "train.jsd_beta=1.0"),
        ("train.grad_accum=0", "train.grad_accum=0"),
        ("train.warmup_ratio=1.5", "train.warmup_ratio=1.5"),
        ("train.loss=mse", "train.loss='mse'"),
        ("train.schedule=linear", "train.schedule='linear'"),
        ("teacher.position=middle", "teacher.position='middle'"),
        ("teacher.top_p=0", "teacher.top_p=0"),
        ("teacher.num_samples=3", "teacher.num_samples=3"),  # needs do_sample
        ("teacher.extractor=regex", "teacher.extract_pattern=''"),
        ("teacher.top_k=-1", "teacher.top_k=-1"),
        ("model.dtype=float16", "model.dtype='float16'"),
        ("model.lora_r=0", "model.lora_r=0"),
        ("model.lora_dropout=1", "model.lora_dropout=1"),
        ("model.stop_strings=['']", "model.stop_strings=['']"),
        ("data.num_eval=-2", "data.num_eval=-2"),
        ("eval.scorer=nocolon", "eval.scorer='nocolon'"),
        ("output.save=zip", "output.save='zip'"),
        ("data.synthesize.count=0", "data.synthesize.count=0"),
        ("data.synthesize.near_duplicate=0", "data.synthesize.near_duplicate=0"),
    ],
)
def test_range_checks_name_key_and_value(override, expected):
    with pytest.raises(InternalizeError) as e:
        load_config(None, ["teacher.context=c", override])
    message = str(e.value)
    assert expected in message
    assert "is invalid" in message
    assert "\n" not in message


def test_range_check_message_from_file(tmp_path):
    path = _write(tmp_path, {"teacher": {"context": "c"}, "train": {"lr": -1}})
    with pytest.raises(InternalizeError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: train.lr=-1")
    assert "must be > 0" in str(e.value)


def test_missing_context_is_an_error():
    with pytest.raises(InternalizeError, match="teacher.context=''"):
        load_config(None, [])


def test_demonstrations_only_are_enough_and_validated():
    cfg = config_from_dict({"teacher": {"demonstrations": [{"input": "a", "output": "b"}]}})
    assert cfg.behaviours[0].prompt.demonstrations == [{"input": "a", "output": "b"}]
    with pytest.raises(InternalizeError, match=r"teacher\.demonstrations\[0\]"):
        config_from_dict({"teacher": {"context": "c", "demonstrations": [{"input": "a"}]}})


@pytest.mark.parametrize(
    "override, value",
    [
        ("train.max_steps=abc", "abc"),
        ("train.max_steps=1.5", "1.5"),
        ("train.lr=fast", "fast"),
        ("output.overwrite=maybe", "maybe"),
        ("train.epochs=true", "rue"),  # True or 'true'
    ],
)
def test_type_errors_name_key_and_expected_type(override, value):
    with pytest.raises(InternalizeError) as e:
        load_config(None, ["teacher.context=c", override])
    message = str(e.value)
    key = override.split("=")[0]
    assert f"{key}=" in message and value in message.split(f"{key}=", 1)[1]
    assert "is invalid: expected" in message


def test_type_error_for_mapping_where_string_expected():
    with pytest.raises(InternalizeError, match=r"teacher\.context=.*expected str"):
        config_from_dict({"teacher": {"context": {"a": 1}}})


def test_type_error_for_list_field():
    with pytest.raises(InternalizeError, match=r"model\.lora_target_modules=5 is invalid: expected list"):
        config_from_dict({"teacher": {"context": "c"}, "model": {"lora_target_modules": 5}})


def test_section_must_be_mapping():
    with pytest.raises(InternalizeError, match="config section 'train' must be a mapping"):
        config_from_dict({"teacher": {"context": "c"}, "train": [1, 2]})


def test_top_level_must_be_mapping(tmp_path):
    with pytest.raises(InternalizeError, match="must be a mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = _write(tmp_path, "teacher:\n  context: ok\ntrain:\n  lr: [1, 2\n  epochs: 3\n")
    with pytest.raises(InternalizeError) as e:
        load_config(path)
    message = str(e.value)
    assert message.startswith(f"{path}: malformed YAML at line ")
    assert "\n" not in message
    line = int(message.split("at line ")[1].split(";")[0])
    assert 4 <= line <= 6


def test_malformed_yaml_tab_indent(tmp_path):
    path = _write(tmp_path, "teacher:\n\tcontext: x\n")
    with pytest.raises(InternalizeError, match=r"malformed YAML at line 2"):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(InternalizeError, match=r"nope\.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("override", ["train.lr", "lr=1", "train..lr=1", ".lr=1"])
def test_malformed_override(override):
    with pytest.raises(InternalizeError, match="use section.key=value"):
        load_config(None, ["teacher.context=c", override])


def test_nested_override_and_unknown_nested_key():
    cfg = load_config(None, ["teacher.context=c", "data.synthesize.count=5", "data.synthesize.seeds=[a, b]"])
    assert cfg.data.synthesize.count == 5
    assert cfg.data.synthesize.seeds == ["a", "b"]
    with pytest.raises(InternalizeError, match=r"unknown config key 'data\.synthesize\.cuont'; "
                                               r"did you mean 'data\.synthesize\.count'"):
        load_config(None, ["teacher.context=c", "data.synthesize.cuont=5"])
    with pytest.raises(InternalizeError, match=r"unknown config key 'a'"):
        load_config(None, ["teacher.context=c", "a.b.c=1"])
    with pytest.raises(InternalizeError, match=r"override 'train\.lr\.x=1' is invalid: 'lr' is not a config section"):
        load_config(None, ["teacher.context=c", "train.lr=1", "train.lr.x=1"])


def test_apply_overrides_creates_sections():
    raw = apply_overrides({}, ["train.lr=0.5", "teacher.context=", "data.synthesize.count=3"])
    assert set(raw) == {"train", "teacher", "data"}
    assert set(raw["data"]["synthesize"]) == {"count"}
    cfg = config_from_dict(apply_overrides(raw, ["teacher.context=c"]))
    assert (cfg.train.lr, cfg.behaviours[0].prompt.context, cfg.data.synthesize.count) == (0.5, "c", 3)


def test_override_with_regex_value_is_kept_as_string():
    cfg = load_config(None, ["teacher.context=c", "eval.scorer_regex=[0-9]+"])
    assert cfg.behaviours[0].scorer_regex == "[0-9]+"


def test_override_string_with_trailing_colon():
    cfg = load_config(None, ["teacher.context=c", "teacher.extractor=delimiter", "teacher.extract_pattern=Answer:"])
    assert cfg.teacher.extract_pattern == "Answer:"


def test_saved_config_reloads_equal(tmp_path):
    path = _write(tmp_path, {
        "model": {"name": "some/dir", "lora_r": 4, "lora_target_modules": ["q_proj"]},
        "data": {"inputs": ["a", {"input": "b", "label": 1}], "num_eval": 1},
        "teacher": {"context": "Line one\nline: two", "demonstrations": [{"input": "x", "output": "y"}],
                    "extractor": "regex", "extract_pattern": r"Answer: (\d+)"},
        "train": {"lr": 1e-4, "loss": "jsd", "jsd_beta": 0.25},
        "eval": {"scorer_regex": r"Over\.\s*$"},
        "output": {"dir": str(tmp_path / "out"), "save": "adapter"},
    })
    cfg = load_config(path, ["train.max_steps=3"])
    saved = tmp_path / "saved.yaml"
    save_config(cfg, saved)
    again = load_config(saved)
    assert again == cfg
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)


def test_sections_validate_when_built_directly():
    with pytest.raises(InternalizeError, match="model.finetune='qlora'"):
        ModelConfig(finetune="qlora")
    with pytest.raises(InternalizeError, match="teacher.max_new_tokens=0"):
        TeacherConfig(max_new_tokens=0)
    with pytest.raises(InternalizeError, match="prompt.position='middle'"):
        PromptConfig(position="middle")
    with pytest.raises(InternalizeError, match="behaviour.name='student'"):
        BehaviourConfig(name="student")


def test_describe_fields_lists_every_key_with_default():
    text = describe_fields()
    for section, cls in [("model", ModelConfig), ("train", TrainConfig), ("teacher", TeacherConfig),
                         ("data.synthesize", SynthesizeConfig), ("behaviours[].prompt", PromptConfig)]:
        for f in dataclasses.fields(cls):
            assert f"{section}.{f.name} (default " in text
    for f in dataclasses.fields(BehaviourConfig):
        if f.name != "prompt":
            assert f"behaviours[].{f.name} (default " in text
    assert "train.lr (default 0.0002)" in text


def test_given_targets_need_no_context_but_need_the_ce_loss():
    cfg = config_from_dict({"train": {"targets": "data", "loss": "ce"}})
    assert cfg.train.targets == "data" and cfg.behaviours[0].prompt.context == ""
    with pytest.raises(InternalizeError, match=r"train\.targets='data' is invalid: .*train\.loss=ce"):
        config_from_dict({"train": {"targets": "data"}})
    with pytest.raises(InternalizeError, match=r"train\.targets='labels' is invalid"):
        config_from_dict({"teacher": {"context": "c"}, "train": {"targets": "labels"}})


def test_split_demonstrations_and_combine_are_validated():
    demos = [{"input": str(i), "output": str(i)} for i in range(3)]
    cfg = config_from_dict({"teacher": {"demonstrations": demos, "demonstrations_per_context": 2}})
    prompt = cfg.behaviours[0].prompt
    assert [len(c.demonstrations) for c in prompt.split()] == [2, 1]
    assert all(c.demonstrations_per_context == 0 for c in prompt.split())
    one = config_from_dict({"teacher": {"demonstrations": demos, "demonstrations_per_context": 3}})
    assert one.behaviours[0].prompt.split() == [one.behaviours[0].prompt]
    with pytest.raises(InternalizeError, match=r"teacher\.combine='mean' is invalid: use one of average, route"):
        config_from_dict({"teacher": {"context": "c", "combine": "mean"}})
    with pytest.raises(InternalizeError, match=r"teacher\.demonstrations_per_context=-1"):
        config_from_dict({"teacher": {"context": "c", "demonstrations_per_context": -1}})


@pytest.mark.parametrize("template, why", [("Q: {question}", "question"), ("no fields", "no field"),
                                          ("Q: {input", "braces doubled")])
def test_demonstration_template_names_only_input_and_output(template, why):
    with pytest.raises(InternalizeError, match=rf"teacher\.demonstration_template=.*{why}"):
        config_from_dict({"teacher": {"demonstrations": [{"input": "a", "output": "b"}],
                                      "demonstration_template": template}})
    ok = config_from_dict({"teacher": {"demonstrations": [{"input": "a", "output": "b"}],
                                       "demonstration_template": "{input} -> {output} {{x}}"}})
    assert ok.behaviours[0].prompt.demonstration_template == "{input} -> {output} {{x}}"


# --- behaviours: the list form, the shorthand, and their checks -------------------------------------------------


def test_behaviours_form_builds_the_same_behaviour_as_the_shorthand(tmp_path):
    shorthand = _write(tmp_path, {
        "teacher": {"context": "Answer in French.", "position": "before_input", "max_new_tokens": 12},
        "data": {"train_file": "train.jsonl", "eval_file": "eval.jsonl", "num_eval": 3},
        "eval": {"scorer_regex": r"\bOui\b"},
    }, "short.yaml")
    listed = _write(tmp_path, {
        "behaviours": [{"name": "main", "prompt": {"context": "Answer in French.", "position": "before_input"},
                        "train_file": "train.jsonl", "eval_file": "eval.jsonl", "scorer_regex": r"\bOui\b"}],
        "teacher": {"max_new_tokens": 12},
        "data": {"num_eval": 3},
    }, "listed.yaml")
    short_cfg, listed_cfg = load_config(shorthand), load_config(listed)
    assert len(short_cfg.behaviours) == 1
    behaviour = short_cfg.behaviours[0]
    assert (behaviour.name, behaviour.prompt.context, behaviour.prompt.position) == (
        "main", "Answer in French.", "before_input")
    assert (behaviour.train_file, behaviour.eval_file, behaviour.scorer_regex) == (
        "train.jsonl", "eval.jsonl", r"\bOui\b")
    assert listed_cfg.behaviours == short_cfg.behaviours
    assert listed_cfg == short_cfg
    # messages name each key as the config wrote it
    assert behaviour.key("train_file") == "data.train_file"
    assert behaviour.key("scorer_regex") == "eval.scorer_regex"
    assert listed_cfg.behaviours[0].key("train_file") == "behaviours[0].train_file"
    for name, cfg in [("short", short_cfg), ("listed", listed_cfg)]:
        saved = tmp_path / f"saved-{name}.yaml"
        save_config(cfg, saved)
        again = load_config(saved)
        assert again == cfg
        assert dataclasses.asdict(again) == dataclasses.asdict(cfg)


def test_several_behaviours_and_teacher_contexts_reload_equal(tmp_path):
    path = _write(tmp_path, {"teacher": {"position": "after_input", "contexts": [
        {"name": "french", "context": "Answer in French.", "train_file": "f.jsonl", "eval_file": "fe.jsonl"},
        {"name": "brief", "context": "Be brief.", "position": "system", "train_file": "b.jsonl",
         "eval_file": "be.jsonl", "scorer": "mymod:short"},
    ]}, "eval": {"scorer_regex": "x"}})
    cfg = load_config(path)
    assert [b.name for b in cfg.behaviours] == ["french", "brief"]
    assert [b.prompt.position for b in cfg.behaviours] == ["after_input", "system"]
    assert [(b.scorer_regex, b.scorer) for b in cfg.behaviours] == [("x", ""), ("", "mymod:short")]
    assert cfg.behaviours[1].key("eval_file") == "teacher.contexts[1].eval_file"
    saved = tmp_path / "saved.yaml"
    save_config(cfg, saved)
    assert load_config(saved) == cfg


@pytest.mark.parametrize("name", ["base", "teacher", "student"])
def test_a_behaviour_named_after_a_condition_is_rejected(tmp_path, name):
    listed = _write(tmp_path, {"behaviours": [{"name": "ok", "prompt": {"context": "c"}},
                                              {"name": name, "prompt": {"context": "d"}}]}, "listed.yaml")
    with pytest.raises(InternalizeError) as e:
        load_config(listed)
    message = str(e.value)
    assert message.startswith(f"{listed}: behaviours[1].name={name!r} is invalid")
    assert "\n" not in message
    contexts = _write(tmp_path, {"teacher": {"contexts": [
        {"name": name, "context": "c", "train_file": "t.jsonl", "eval_file": "e.jsonl"}]}}, "contexts.yaml")
    with pytest.raises(InternalizeError) as e:
        load_config(contexts)
    message = str(e.value)
    assert message.startswith(f"{contexts}: teacher.contexts[0].name={name!r} is invalid")
    assert "\n" not in message


def test_scorer_regex_and_scorer_together_are_an_error():
    with pytest.raises(InternalizeError) as e:
        load_config(None, ["teacher.context=c", "eval.scorer_regex=x", "eval.scorer=mod:fn"])
    assert "eval.scorer_regex and eval.scorer are both set" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(InternalizeError, match=r"behaviours\[0\]\.scorer='mod:fn' is invalid: "
                                               r"behaviours\[0\]\.scorer_regex is set too"):
        config_from_dict({"behaviours": [{"name": "a", "prompt": {"context": "c"},
                                          "scorer_regex": "x", "scorer": "mod:fn"}]})
    with pytest.raises(InternalizeError, match=r"teacher\.contexts\[0\]\.scorer='mod:fn' is invalid: "
                                               r"teacher\.contexts\[0\]\.scorer_regex is set too"):
        config_from_dict({"teacher": {"contexts": [{"name": "a", "context": "c", "train_file": "t",
                                                    "eval_file": "e", "scorer_regex": "x", "scorer": "mod:fn"}]}})
    # either alone is fine
    assert load_config(None, ["teacher.context=c", "eval.scorer=mod:fn"]).behaviours[0].scorer == "mod:fn"


def test_adapter_artifact_needs_lora():
    with pytest.raises(InternalizeError) as e:
        load_config(None, ["teacher.context=c", "model.finetune=full", "output.save=adapter"])
    message = str(e.value)
    assert "output.save='adapter' is invalid" in message and "model.finetune='full'" in message
    assert "\n" not in message
    assert load_config(None, ["teacher.context=c", "model.finetune=full"]).output.save == "merged"
    assert load_config(None, ["teacher.context=c", "output.save=adapter"]).model.finetune == "lora"


@pytest.mark.parametrize("section, key, value", [
    ("teacher", "context", "c"),
    ("teacher", "demonstrations", [{"input": "a", "output": "b"}]),
    ("data", "train_file", "t.jsonl"),
    ("data", "eval_inputs", ["x"]),
    ("eval", "scorer_regex", "x"),
    ("eval", "scorer", "mod:fn"),
])
def test_behaviours_beside_a_shorthand_key_is_an_error(tmp_path, section, key, value):
    raw = {"behaviours": [{"name": "a", "prompt": {"context": "c"}}], section: {key: value}}
    with pytest.raises(InternalizeError) as e:
        load_config(_write(tmp_path, raw))
    message = str(e.value)
    assert f"{section}.{key} is set beside behaviours" in message
    assert "\n" not in message


def test_a_shorthand_override_on_a_behaviours_config_is_an_error(tmp_path):
    path = _write(tmp_path, {"behaviours": [{"name": "a", "prompt": {"context": "c"}}]})
    assert load_config(path, ["teacher.max_new_tokens=5"]).teacher.max_new_tokens == 5
    with pytest.raises(InternalizeError, match=r"teacher\.context is set beside behaviours"):
        load_config(path, ["teacher.context=other"])


@pytest.mark.parametrize("raw, expected", [
    ({"behaviours": [{"name": "a", "prompt": {"context": "c"}, "train_fil": "t.jsonl"}]},
     r"unknown config key 'behaviours\[0\]\.train_fil'; did you mean 'behaviours\[0\]\.train_file'\?"),
    ({"behaviours": [{"name": "a", "prompt": {"context": "c"}, "scorer_regx": "x"}]},
     r"unknown config key 'behaviours\[0\]\.scorer_regx'; did you mean 'behaviours\[0\]\.scorer_regex'\?"),
    ({"behaviours": [{"name": "a", "prompt": {"context": "c"}, "zzz": 1}]},
     r"unknown config key 'behaviours\[0\]\.zzz'; known keys: .*\bprompt\b"),
    ({"behaviours": [{"name": "a", "context": "c"}]},  # the prompt's keys go under prompt in this form
     r"unknown config key 'behaviours\[0\]\.context'"),
    ({"teacher": {"contexts": [{"name": "a", "context": "c", "train_file": "t", "eval_fle": "e"}]}},
     r"unknown config key 'teacher\.contexts\[0\]\.eval_fle'; did you mean 'teacher\.contexts\[0\]\.eval_file'\?"),
    ({"teacher": {"contexts": [{"name": "a", "contxt": "c", "train_file": "t", "eval_file": "e"}]}},
     r"unknown config key 'teacher\.contexts\[0\]\.contxt'; did you mean 'teacher\.contexts\[0\]\.context'\?"),
    ({"teacher": {"contexts": [{"name": "a", "context": "c", "positon": "system", "train_file": "t",
                                "eval_file": "e"}]}},
     r"unknown config key 'teacher\.contexts\[0\]\.positon'; did you mean 'teacher\.contexts\[0\]\.position'\?"),
    ({"teacher": {"contexts": [{"name": "a", "context": "c", "train_file": "t", "eval_file": "e", "zzz": 1}]}},
     r"unknown config key 'teacher\.contexts\[0\]\.zzz'; known keys: .*\bcontext\b"),
    # an entry of this form has its prompt's keys at the top: a prompt mapping in it would be silently dropped
    ({"teacher": {"contexts": [{"name": "a", "context": "c", "prompt": {"context": "d"}, "train_file": "t",
                                "eval_file": "e"}]}},
     r"unknown config key 'teacher\.contexts\[0\]\.prompt'"),
], ids=["behaviours-train_fil", "behaviours-scorer_regx", "behaviours-far", "behaviours-context-at-top",
        "contexts-eval_fle", "contexts-contxt", "contexts-positon", "contexts-far", "contexts-prompt"])
def test_unknown_key_in_a_behaviour_entry(raw, expected):
    with pytest.raises(InternalizeError, match=expected) as e:
        config_from_dict(raw)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("prompt, expected", [
    ({"position": "middle"}, r"behaviours\[1\]\.prompt\.position='middle' is invalid"),
    ({"combine": "mean"}, r"behaviours\[1\]\.prompt\.combine='mean' is invalid: use one of average, route"),
    ({"demonstrations_per_context": -1}, r"behaviours\[1\]\.prompt\.demonstrations_per_context=-1 is invalid"),
    ({"demonstrations": [{"input": "a"}]}, r"behaviours\[1\]\.prompt\.demonstrations\[0\]=.* is invalid"),
    ({"demonstrations": [{"input": "a", "output": "b"}], "demonstration_template": "Q: {question}"},
     r"behaviours\[1\]\.prompt\.demonstration_template=.* is invalid"),
    ({"context": {"a": 1}}, r"behaviours\[1\]\.prompt\.context=.* is invalid: expected str"),
    ({"contxt": "c"}, r"unknown config key 'behaviours\[1\]\.prompt\.contxt'; "
                      r"did you mean 'behaviours\[1\]\.prompt\.context'\?"),
])
def test_errors_inside_a_behaviours_prompt_name_its_key(tmp_path, prompt, expected):
    path = _write(tmp_path, {"behaviours": [{"name": "a", "prompt": {"context": "c"}},
                                            {"name": "b", "prompt": {"context": "d", **prompt}}]})
    with pytest.raises(InternalizeError, match=expected) as e:
        load_config(path)
    message = str(e.value)
    assert message.startswith(f"{path}: ")
    assert "teacher." not in message and "\n" not in message


def test_scorer_is_imported_from_the_config_files_directory(tmp_path, monkeypatch):
    from internalize.behaviours import load_behaviours, load_scorer
    from internalize.config import import_callable

    module = "internalize_test_scorer_beside_config"
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / f"{module}.py").write_text("def fn(record, output):\n    return output == record['input'].upper()\n")
    path = _write(conf, {"teacher": {"context": "Shout."}, "data": {"inputs": ["a", "b", "c"], "num_eval": 1},
                         "eval": {"scorer": f"{module}:fn"}})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    before = list(sys.path)
    try:
        cfg = load_config(path)
        assert cfg.config_dir == conf.resolve()
        # not importable from the working directory alone
        with pytest.raises(InternalizeError, match=rf"eval\.scorer='{module}:fn' cannot be imported"):
            import_callable(f"{module}:fn", "eval.scorer")
        assert sys.path == before
        [behaviour] = load_behaviours(cfg)
        assert sys.path == before
        assert behaviour.scorer({"input": "hi"}, "HI") == 1.0
        assert behaviour.scorer({"input": "hi"}, "hi") == 0.0
        scorer = load_scorer(cfg.behaviours[0], (cfg.config_dir,))
        assert sys.path == before
        assert scorer({"input": "x"}, "X") == 1.0
    finally:
        sys.modules.pop(module, None)
    assert sys.path == before


@pytest.mark.parametrize("brk", list("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"))
def test_an_error_quoting_any_line_break_stays_one_line(brk):
    # hypothesis found a form feed in a key name splitting the CLI's one line in two
    message = str(InternalizeError(f"unknown config key 'a{brk}b'"))
    assert len(message.splitlines()) == 1 and repr(brk)[1:-1] in message
