"""The text-to-SQL task of experiments/sql/task.py: databases, gold queries, splits and scorers."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for the experiments namespace package

from experiments.sql import run  # noqa: E402
from experiments.sql.task import (  # noqa: E402
    DOMAINS,
    EXAMPLE_TEMPLATE,
    EXAMPLES_HEADER,
    TEMPLATES,
    demonstrations,
    exact_match,
    examples_block,
    execute,
    execution_match,
    extract_sql,
    make_split,
    questions,
    schema_text,
    with_examples,
)


@pytest.fixture(scope="module")
def split() -> dict:
    return make_split(seed=1, n_train_dbs=10, n_eval_dbs=4, questions_per_db=8, eval_questions_per_db=12)


def test_gold_queries_execute_and_match_themselves(split: dict) -> None:
    records = split["train"] + split["eval"]
    assert len(split["train"]) == 80 and len(split["eval"]) == 48
    for r in records:
        rows = execute(r["db"], r["output"])
        assert rows and rows not in ([(0,)], [(None,)]), r
        assert execution_match(r, r["output"]) == 1.0 and exact_match(r, r["output"]) == 1.0
        assert r["input"].endswith(f"\n\nQuestion: {r['question']}") and "CREATE TABLE" in r["input"]


def test_every_domain_and_template_produces_questions() -> None:
    for name in DOMAINS:
        records = [r for seed in range(3) for r in questions(f"{name}-{seed}", 26)]
        assert len(records) == 78 and len({(r["db"], r["output"]) for r in records}) == 78
        assert {r["template"] for r in records} == set(TEMPLATES), name  # a template may miss one db (ties in ORDER BY)


def test_eval_databases_are_disjoint_from_training(split: dict) -> None:
    train, held = {r["db"] for r in split["train"]}, {r["db"] for r in split["eval"]}
    assert train and held and not train & held
    assert {r["domain"] for r in split["eval"]} == {"zoo", "hospital"}
    assert not {r["domain"] for r in split["train"]} & {"zoo", "hospital"}
    same_domains = make_split(seed=1, n_train_dbs=6, n_eval_dbs=6, questions_per_db=2, eval_domains=())
    assert not set(same_domains["train_dbs"]) & set(same_domains["eval_dbs"])
    assert {r["domain"] for r in same_domains["eval"]} == set(list(DOMAINS)[:6])


def test_same_seed_same_records(split: dict) -> None:
    assert make_split(seed=1, n_train_dbs=10, n_eval_dbs=4, questions_per_db=8, eval_questions_per_db=12) == split
    assert make_split(seed=2, n_train_dbs=10, n_eval_dbs=4, questions_per_db=8)["train"] != split["train"]


def test_schema_text() -> None:
    text = schema_text("library-3")
    assert text.count("CREATE TABLE") == 2 and "books" in text and "authors" in text and "INSERT" not in text


def test_execution_match_accepts_rewrites_and_rejects_wrong_answers() -> None:
    record = {"db": "library-3", "output": "SELECT title FROM books WHERE genre = 'fantasy'"}
    rewrite = "select b.title from books as b where b.genre in ('fantasy') order by b.id desc;"
    assert execution_match(record, rewrite) == 1.0 and exact_match(record, rewrite) == 0.0
    assert execution_match(record, "SELECT title FROM books WHERE genre = 'mystery'") == 0.0
    assert execution_match(record, "SELECT title, genre FROM books WHERE genre = 'fantasy'") == 0.0
    count = {"db": "shop-5", "output": "SELECT COUNT(*) FROM products WHERE price > 50"}
    assert execution_match(count, "SELECT COUNT(id) FROM products WHERE NOT price <= 50") == 1.0


@pytest.mark.parametrize("answer", ["SELEC title FRM books", "SELECT nope FROM books", "", "DROP TABLE books",
                                    "SELECT 1; SELECT 2", "I don't know.", "SELECT title FROM books WHERE genre = 'fantasy"])
def test_broken_answers_score_zero_without_raising(answer: str) -> None:
    record = {"db": "library-3", "output": "SELECT title FROM books WHERE genre = 'fantasy'"}
    assert execution_match(record, answer) == 0.0 and exact_match(record, answer) == 0.0


def test_execute_errors_and_timeouts_give_none() -> None:
    assert execute("library-3", "SELECT * FROM nowhere") is None
    assert execute("atlantis-1", "SELECT 1") is None
    forever = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT COUNT(*) FROM c"
    assert execute("library-3", forever, timeout_s=0.05) is None
    assert execute("library-3", "DELETE FROM books") == [] and execute("library-3", "SELECT COUNT(*) FROM books")[0][0] > 0


def test_exact_match_normalizes_case_space_and_semicolon() -> None:
    record = {"output": "SELECT name FROM doctors WHERE specialty = 'surgery'"}
    assert exact_match(record, "select  name\nFROM doctors where SPECIALTY = 'surgery';") == 1.0
    assert exact_match(record, "SELECT name FROM doctors WHERE specialty = 'oncology'") == 0.0


@pytest.mark.parametrize("text", [
    "```sql\nSELECT a FROM t;\n```",
    "SQL: SELECT a FROM t",
    "Here is the query:\n```\nSELECT a FROM t\n```\nIt selects a.",
    "SELECT a FROM t; SELECT b FROM t;",
    "The answer is SELECT a FROM t\n\nThis query returns a.",
    "  SELECT a FROM t  ",
])
def test_extract_sql(text: str) -> None:
    assert extract_sql(text) == "SELECT a FROM t"


def test_the_examples_experiment_splits_each_eval_database_into_disjoint_parts() -> None:
    root = Path(__file__).resolve().parents[1] / "experiments/sql/data"
    committed = [json.loads(line) for line in (root / "eval.jsonl").read_text().splitlines()]
    assert set(run.DBS) == {r["db"] for r in committed}  # the scripts' default databases are the evaluation ones
    for db in run.DBS:
        parts = run.split(db)
        assert parts["test"] == [r for r in committed if r["db"] == db]  # the warm-up's eval file, unchanged
        sizes = {name: len(rows) for name, rows in parts.items()}
        assert sizes == {"test": run.N_TEST, "pool": run.N_POOL, "dev": run.N_DEV, "inputs": run.N_INPUTS,
                         "extra_test": run.N_EXTRA}
        questions_ = [{r["question"] for r in rows} for rows in parts.values()]
        assert sum(map(len, questions_)) == len(set().union(*questions_))  # no question in two parts
        assert all("output" not in r for r in parts["inputs"])  # the student's inputs carry no gold SQL
        for name, rows in parts.items():  # the committed files are what the script writes
            assert [json.loads(line) for line in (root / db / f"{name}.jsonl").read_text().splitlines()] == rows


def test_the_examples_experiment_scores_exact_match_from_a_runs_answers(tmp_path: Path) -> None:
    test = run.split("zoo-5000")["test"][:2]
    answers = [{"input": r["input"], "base": "SELECT 1", "teacher": r["output"].lower() + ";", "student": r["output"]}
               for r in test]
    answers[1]["student"] = "SELECT nothing"
    (tmp_path / "answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
    assert run.exact_match(tmp_path, test) == {"base": 0.0, "teacher": 1.0, "student": 0.5}


def test_warm_up_with_examples_shows_other_questions_of_the_same_database() -> None:
    plain = make_split(seed=1, n_train_dbs=4, n_eval_dbs=2, questions_per_db=6)
    mixed = make_split(seed=1, n_train_dbs=4, n_eval_dbs=2, questions_per_db=6, example_pool=8, ks=(2, 4))
    assert mixed["eval"] == plain["eval"] and len(mixed["train"]) == len(plain["train"]) == 24
    for i, (bare, shown) in enumerate(zip(plain["train"], mixed["train"], strict=True)):
        assert shown["output"] == bare["output"] and shown["input"].endswith(bare["input"])
        if i % 2 == 0:  # every second question stays bare
            assert shown == bare
            continue
        assert shown["k"] in (2, 4) and shown["input"].count("\nSQL: ") == shown["k"]
        pool = questions(bare["db"], 6 + 8)[6:]
        shown_questions = [q for q in pool if f"Question: {q['question']}\nSQL: {q['output']}" in shown["input"]]
        assert len(shown_questions) == shown["k"]  # examples come from the database's pool, never the question itself
        assert bare["question"] not in [q["question"] for q in shown_questions]


def test_a_teacher_with_the_examples_before_the_input_sees_the_warm_up_prompt() -> None:
    from internalize.config import PromptConfig
    from internalize.views import chat_messages

    record, *examples = questions("zoo-7", 5)
    shown = [{"role": "user", "content": with_examples(record, examples)["input"]}]
    teacher = PromptConfig(context=EXAMPLES_HEADER, demonstrations=demonstrations(examples), position="before_input",
                           demonstration_template=EXAMPLE_TEMPLATE)
    assert chat_messages(record["input"], teacher) == shown
    assert chat_messages(record["input"], PromptConfig(context=examples_block(examples), position="before_input")) == shown
    halves = dataclasses.replace(teacher, demonstrations_per_context=2).split()
    assert [chat_messages(record["input"], c) for c in halves] == [
        [{"role": "user", "content": with_examples(record, examples[i : i + 2])["input"]}] for i in (0, 2)]


def test_many_examples_extend_the_pool_with_questions_outside_every_part() -> None:
    from experiments.sql import many

    db = run.DBS[0]
    parts = run.split(db)
    shown = many.examples(db, 32)
    assert len(shown) == 32 and shown[: run.N_POOL] == parts["pool"]  # run.py's k examples stay the first ones
    others = {r["question"] for name, rows in parts.items() if name != "pool" for r in rows}
    assert not {r["question"] for r in shown} & others
    assert len({r["output"] for r in shown}) == 32 and all(execute(db, r["output"]) for r in shown)
    assert many.examples(db, 16) == shown[:16]  # nested: a smaller n is a prefix


def test_many_examples_chunks_and_the_single_context_chosen_on_dev() -> None:
    from experiments.sql import many

    assert [len(c) for c in many.chunks(list(range(32)), 8)] == [8, 8, 8, 8]
    assert many.chunks(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    singles = [{"dev10": {"student": d}, "test80": {"student": t}} for d, t in ((0.5, 0.9), (0.7, 0.6), (0.7, 0.8))]
    assert many.best_single(singles, "dev10") == 1  # the first of the tied best on dev
    assert many.best_single(singles, "test80") == 0
    row = {"single": singles, "best_single_dev10": 1, "best_single_test80": 0,
           "average": {"test80": {"student": 0.75}}, "sequential": [singles[0], {"test80": {"student": 0.65}}],
           "gradient_descent": {"test80": 0.85}}
    assert many.ways(row) == {"best_single": 0.6, "oracle_single": 0.9, "average": 0.75, "sequential": 0.65,
                              "gradient_descent": 0.85}
    summary = many.summary({"a": row, "b": {"average": {"test80": {"student": 0.25}}}})
    assert summary["average"] == {"mean_test80": 0.5, "dbs": ["a", "b"]}
    assert summary["best_single"]["dbs"] == ["a"]


def test_the_many_plot_draws_partial_records(tmp_path: Path) -> None:
    from experiments.sql import many

    step = {"test80": {"student": 0.8}, "dev10": {"student": 0.7}}
    full = {"single": [step, step], "best_single_dev10": 0, "best_single_test80": 1, "average": step,
            "sequential": [step, step], "gradient_descent": {"test80": 0.9}}
    dbs = {"a": full, "b": {"single": [step], "best_single_dev10": 0, "best_single_test80": 0}}  # b: single only
    many.plot({"n": 32, "budget": 8, "dbs": dbs, "summary": many.summary(dbs)}, tmp_path / "many.png")
    assert (tmp_path / "many.png").stat().st_size > 10_000


def test_the_scaling_plot_draws_from_a_record_in_memory_and_from_json(tmp_path: Path) -> None:
    from experiments.sql import scaling

    def row(db: str, arm: str, n: int, student: float, given: bool = False, samples: int = 1) -> dict:
        return {"db": db, "k": 4, "arm": arm, "n_inputs": n, "inputs": "given" if given else "synthesized",
                "teacher_sampling": {"do_sample": samples > 1}, "test80": {"student": student},
                "section6_pooled_80": {"gradient_descent": 0.9, "teacher": 0.85}}

    runs = [row(db, "given_80", 80, 0.8, given=True) for db in ("a", "b")]
    runs += [row(db, f"synth_{n}", n, s) for db in ("a", "b") for n, s in ((80, 0.8), (320, 0.85))]
    runs += [row("a", "synth_80_samples4_t0.7", 80, 0.82, samples=4)]
    arms = {r["arm"]: r for r in runs}
    summary = {4: {a: {"dbs": ["a", "b"], "n_inputs": r["n_inputs"], "teacher_sampling": r["teacher_sampling"],
                       "test80": {"student": 0.8}} for a, r in arms.items()}
               | {"curve": [{"arm": "synth_80", "n_inputs": 80, "student_test80": 0.8},
                            {"arm": "synth_320", "n_inputs": 320, "student_test80": 0.85}]}}
    scaling.plot({"runs": runs, "summary": summary}, tmp_path / "mem.png")
    scaling.plot(json.loads(json.dumps({"runs": runs, "summary": summary})), tmp_path / "json.png")  # str keys
    assert (tmp_path / "mem.png").stat().st_size > 10_000 and (tmp_path / "json.png").stat().st_size > 10_000
