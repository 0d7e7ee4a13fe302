"""benchmarks/vs_trl.py's pure parts: the recipe chosen on dev questions and the summary over seeds (no torch, no TRL)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("benchmarks_vs_trl", ROOT / "benchmarks" / "vs_trl.py")
vs_trl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vs_trl)  # module level needs only the standard library and yaml


def dev_run(name: str, hits: int, train_s: float, side: str = "internalize", questions: str = "dev") -> dict[str, Any]:
    """A run as run_internalize records it, scored ``hits``/30."""
    recipe = [f"train.max_steps={int(train_s)}"]
    return {"side": side, "name": name, "seed": 0, "questions": questions, "score": hits / 30, "n": 30,
            "train_s": train_s, "setting": {"overrides": ["teacher.cache_dir=", "train.seed=0", *recipe], "recipe": recipe}}


def seed_run(name: str, seed: int, time_to_target_s: float | None, side: str = "internalize") -> dict[str, Any]:
    return {"side": side, "name": f"{name}_s{seed}", "seed": seed, "time_to_target_s": time_to_target_s}


# --- choose_recipe --------------------------------------------------------------------------------


def test_the_fastest_qualifying_run_wins() -> None:
    runs = [dev_run("a", 27, 40.0), dev_run("b", 30, 60.0), dev_run("c", 28, 30.0)]
    chosen = vs_trl.choose_recipe(runs, teacher_dev_score=1.0)
    assert chosen["name"] == "c"
    assert chosen["train_s"] == 30.0 and chosen["dev_score"] == 28 / 30
    assert chosen["overrides"] == runs[2]["setting"]["recipe"]  # the recipe alone, not the seed and fixed overrides
    assert "smallest median train_s" in chosen["rule"]


def test_a_faster_run_below_the_target_loses() -> None:
    runs = [dev_run("fast", 26, 10.0), dev_run("slow", 30, 50.0)]  # 26/30 < 0.9 x 30/30
    assert vs_trl.choose_recipe(runs, teacher_dev_score=1.0)["name"] == "slow"


def test_the_target_is_relative_to_the_teacher_and_exactly_90_percent_qualifies() -> None:
    assert vs_trl.choose_recipe([dev_run("exact", 27, 5.0)], teacher_dev_score=1.0)["name"] == "exact"  # 27/30 = 0.9 x 1
    runs = [dev_run("low", 21, 5.0), dev_run("ok", 22, 9.0)]
    assert vs_trl.choose_recipe(runs, teacher_dev_score=24 / 30)["name"] == "ok"  # needs 0.9 x 24 = 21.6 hits


def test_a_tie_on_time_goes_to_the_higher_dev_score() -> None:
    runs = [dev_run("lower", 28, 20.0), dev_run("higher", 30, 20.0)]
    assert vs_trl.choose_recipe(runs, teacher_dev_score=1.0)["name"] == "higher"


def test_none_qualifies() -> None:
    assert vs_trl.choose_recipe([dev_run("a", 20, 5.0), dev_run("b", 26, 9.0)], teacher_dev_score=1.0) is None
    assert vs_trl.choose_recipe([], teacher_dev_score=1.0) is None


def test_only_internalize_runs_scored_on_dev_are_chosen_from() -> None:
    runs = [dev_run("held_out", 30, 1.0, questions="held_out"), dev_run("trl", 30, 2.0, side="trl"),
            dev_run("dev", 30, 50.0)]
    assert vs_trl.choose_recipe(runs, teacher_dev_score=1.0)["name"] == "dev"


def seeded(name: str, scores_and_times: list[tuple[int, float]]) -> list[dict[str, Any]]:
    """One recipe's dev runs at seeds 10, 11, ... as choose3 names them, each (hits/30, train_s)."""
    return [dev_run(name, hits, train_s) | {"name": f"{name}_s{10 + i}", "seed": 10 + i}
            for i, (hits, train_s) in enumerate(scores_and_times)]


def test_over_seeds_a_recipe_must_reach_the_target_at_every_seed() -> None:
    runs = [*seeded("edge", [(27, 10.0), (26, 10.5), (28, 9.5)]),  # one seed under the bar: out
            *seeded("steady", [(29, 20.0), (30, 22.0), (28, 21.0)])]
    chosen = vs_trl.choose_recipe(runs, teacher_dev_score=1.0)
    assert chosen["name"] == "steady"
    assert chosen["seeds"] == [10, 11, 12] and chosen["dev_scores"] == [29 / 30, 1.0, 28 / 30]
    assert chosen["dev_score"] == 28 / 30 and chosen["train_s"] == 21.0  # the lowest score, the median time
    assert "every seed" in chosen["rule"]


def test_over_seeds_the_median_time_decides_then_the_lowest_score() -> None:
    runs = [*seeded("spiky", [(30, 5.0), (30, 40.0), (30, 41.0)]),  # median 40
            *seeded("even", [(28, 30.0), (28, 31.0), (28, 29.0)])]  # median 30
    assert vs_trl.choose_recipe(runs, teacher_dev_score=1.0)["name"] == "even"
    runs = [*seeded("low", [(27, 30.0), (30, 30.0)]), *seeded("high", [(28, 30.0), (29, 30.0)])]
    assert vs_trl.choose_recipe(runs, teacher_dev_score=1.0)["name"] == "high"


def test_the_choose3_settings() -> None:
    assert {s["seed"] for s in vs_trl.CHOOSE3} == set(vs_trl.CHOOSE3_SEEDS) == {10, 11, 12}
    assert not set(vs_trl.CHOOSE3_SEEDS) & {s["seed"] for s in vs_trl.FINAL3}  # other seeds than the held-out runs
    recipes = vs_trl.by_setting(vs_trl.CHOOSE3)
    assert len(recipes) == 8 and all(len(group) == 3 for group in recipes.values())  # 4 budgets x 2 rates, 3 seeds
    assert all(s["questions"] == "dev" for s in vs_trl.CHOOSE3)
    assert {name.rsplit("_", 1)[-1] for name in recipes} == {"lr2e-3", "lr3e-3"}


def test_final3_reads_the_chosen_recipe_or_fails_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "choose.json"
    path.write_text(json.dumps({"chosen": {"name": "c", "overrides": ["train.max_steps=6"]}}))
    assert vs_trl.read_chosen(path)["overrides"] == ["train.max_steps=6"]
    path.write_text(json.dumps({"runs": [], "chosen": None}))  # no recipe reached the target on dev
    with pytest.raises(SystemExit, match="no chosen recipe"):
        vs_trl.read_chosen(path)
    with pytest.raises(SystemExit, match="cannot read it"):  # before any model is loaded
        vs_trl.main(["--settings", "final3", "--chosen", str(tmp_path / "missing.json")])


def test_the_choose_and_final3_settings() -> None:
    grid = [s for s in vs_trl.CHOOSE if s["overrides"]]
    assert len(grid) == 15 and len(vs_trl.CHOOSE) == 16
    assert all(s["questions"] == "dev" and s.get("seed", 0) == 0 for s in vs_trl.CHOOSE)
    for s in grid:  # one pass of batch 8
        steps = int(s["overrides"][2].removeprefix("train.max_steps="))
        assert s["overrides"][0] == f"data.max_train={8 * steps}"
    names = [s["name"] for s in vs_trl.FINAL3]
    assert {"internalize_main_job_s0", "internalize_dev_chosen_s1", "trl_best_s2"} <= set(names) and len(names) == 9
    assert all(s.get("questions", "held_out") == "held_out" for s in vs_trl.FINAL3)
    trl = [s for s in vs_trl.FINAL3 if s["side"] == "trl"]
    assert [s["seed"] for s in trl] == [0, 1, 2]
    assert all(s["updates"] == 20 and s["score_every"] == 1 and s["lr"] == 5e-4 and s["generate_from_teacher"]
               and s["distillation_mode"] == "full_logits" and s["alpha"] == 0.0 for s in trl)


# --- seed_summary ---------------------------------------------------------------------------------


def test_a_seed_that_never_reaches_is_counted_and_left_out_of_the_median() -> None:
    runs = [seed_run("internalize_dev_chosen", 0, 20.0), seed_run("internalize_dev_chosen", 1, None),
            seed_run("internalize_dev_chosen", 2, 30.0)]
    s = vs_trl.seed_summary(runs)["settings"]["internalize_dev_chosen"]
    assert s["seeds"] == [0, 1, 2] and s["time_to_target_s"] == [20.0, None, 30.0]
    assert (s["reached"], s["not_reached"]) == (2, 1)
    assert s["median_s_over_reached"] == 25.0


def test_the_ratio_is_trl_best_median_over_each_median() -> None:
    runs = []
    for seed, (main, chosen, trl) in enumerate([(60.0, 20.0, 300.0), (70.0, 25.0, None), (80.0, 22.0, 200.0)]):
        runs += [seed_run("internalize_main_job", seed, main), seed_run("internalize_dev_chosen", seed, chosen),
                 seed_run("trl_best", seed, trl, side="trl")]
    summary = vs_trl.seed_summary(runs)
    settings = summary["settings"]
    assert list(settings) == ["internalize_main_job", "internalize_dev_chosen", "trl_best"]
    assert settings["trl_best"]["median_s_over_reached"] == 250.0  # (300 + 200) / 2: the seed that did not reach is out
    assert settings["trl_best"]["not_reached"] == 1
    assert settings["internalize_dev_chosen"]["trl_best_median_over_this"] == round(250.0 / 22.0, 2)
    assert settings["internalize_main_job"]["trl_best_median_over_this"] == round(250.0 / 70.0, 2)
    assert "only the seeds that reached" in summary["note"]
    assert "trl_best" in vs_trl.seed_table(summary)


def test_no_ratio_when_either_side_never_reaches() -> None:
    runs = [seed_run("internalize_fast", s, None) for s in range(3)] + [seed_run("trl_best", 0, 100.0, side="trl")]
    settings = vs_trl.seed_summary(runs)["settings"]
    assert settings["internalize_fast"]["median_s_over_reached"] is None
    assert settings["internalize_fast"]["trl_best_median_over_this"] is None
    runs = [seed_run("internalize_fast", 0, 10.0), seed_run("trl_best", 0, None, side="trl")]
    assert vs_trl.seed_summary(runs)["settings"]["internalize_fast"]["trl_best_median_over_this"] is None


def test_only_a_trailing_seed_suffix_is_stripped() -> None:
    runs = [{"side": "trl", "name": "trl_lr5e-4", "seed": 0, "time_to_target_s": None},
            {"side": "internalize", "name": "internalize_u16_lr3e-3", "seed": 0, "time_to_target_s": 12.0},
            seed_run("x", 12, 5.0)]
    assert list(vs_trl.seed_summary(runs)["settings"]) == ["trl_lr5e-4", "internalize_u16_lr3e-3", "x"]
