"""A deterministic text-to-SQL task on small SQLite databases (Python's sqlite3, nothing downloaded).

A database is named ``"<domain>-<seed>"`` (e.g. ``"library-3"``): its domain fixes the schema (a parent table
such as ``authors`` and a child table such as ``books`` with a foreign key to it) and its seed fixes the rows
(seeded random values from small word lists). Any database can be rebuilt in memory from its name alone.
Questions come from 13 templates shared by all domains (filters, counts, lookups, ORDER BY ... LIMIT,
MAX/MIN/AVG, GROUP BY, comparisons, joins), each with a few phrasings, and every gold query is checked to
return a non-empty, non-trivial result. Scorers for ``eval.scorer``: ``experiments.sql.task:execution_match``
and ``experiments.sql.task:exact_match``.

    python experiments/sql/task.py   # -> experiments/sql/data/{train,train_examples,eval}.jsonl
"""

from __future__ import annotations

import random
import re
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from internalize.data import write_jsonl

INSTRUCTION = "Write one SQLite query that answers the question."
EXAMPLES_HEADER = "Examples of questions on this database and their SQL:"
EXAMPLE_TEMPLATE = "Question: {input}\nSQL: {output}"
FIRST = ("Ann", "Ben", "Cara", "Dan", "Eva", "Finn", "Gina", "Hugo", "Ivy", "Jack", "Kim", "Leo")
LAST = ("Adams", "Brown", "Clark", "Diaz", "Evans", "Ford", "Gray", "Hill", "King", "Lopez", "Moore", "Reed")
PEOPLE = (FIRST, LAST)


@dataclass(frozen=True)
class Num:
    col: str
    desc: str  # how questions name the column: "page count"
    lo: int
    hi: int
    real: bool = False  # two-decimal values (prices)


@dataclass(frozen=True)
class Domain:
    name: str
    table: str  # child table, a plural noun: "books" (one row is a "book")
    label: str  # the child's name column: "title"
    words: tuple[tuple[str, ...], tuple[str, ...]]  # label = first + sep + second
    cat: str  # a categorical column of the child table
    cats: tuple[str, ...]
    nums: tuple[Num, Num]
    parent: str  # "authors"; its columns are id, name, pcat
    parent_words: tuple[tuple[str, ...], tuple[str, ...]]
    pcat: str
    pcats: tuple[str, ...]
    relation: str  # "written by"
    sep: str = " "

    @property
    def item(self) -> str:
        return self.table[:-1]

    @property
    def fk(self) -> str:
        return f"{self.parent[:-1]}_id"


COUNTRIES = ("France", "Japan", "Brazil", "Canada", "Kenya", "Norway")
DOMAINS = {d.name: d for d in [
    Domain("library", "books", "title", (("Silent", "Golden", "Hidden", "Broken", "Lost", "Secret", "Winter", "Crimson"),
           ("River", "Garden", "Door", "Empire", "Letter", "Island", "Mirror", "Forest")),
           "genre", ("fantasy", "mystery", "romance", "history", "science"),
           (Num("year", "publication year", 1950, 2023), Num("pages", "page count", 80, 900)),
           "authors", PEOPLE, "country", COUNTRIES, "written by"),
    Domain("shop", "products", "name", (("Smart", "Classic", "Mini", "Deluxe", "Eco", "Super", "Travel", "Home"),
           ("Lamp", "Kettle", "Backpack", "Blender", "Speaker", "Clock", "Mug", "Fan")),
           "category", ("kitchen", "electronics", "garden", "toys", "office"),
           (Num("price", "price", 2, 300, real=True), Num("stock", "stock count", 0, 500)),
           "suppliers", (("Acme", "Globex", "Nova", "Prime", "Summit", "Apex", "Vertex", "Orbit"),
                         ("Traders", "Supply", "Goods", "Imports")),
           "city", ("Berlin", "Lima", "Oslo", "Cairo", "Austin", "Perth"), "supplied by"),
    Domain("school", "students", "name", PEOPLE, "major", ("biology", "history", "physics", "art", "economics"),
           (Num("age", "age", 17, 40), Num("score", "exam score", 30, 100)),
           "teachers", PEOPLE, "subject", ("math", "chemistry", "music", "literature", "geography"), "taught by"),
    Domain("zoo", "animals", "name", (("Big", "Little", "Lucky", "Happy", "Sleepy", "Brave", "Tiny", "Old"),
           ("Leo", "Luna", "Max", "Kiki", "Rex", "Milo", "Nala", "Zuri")),
           "species", ("lion", "zebra", "penguin", "giraffe", "otter", "parrot"),
           (Num("age", "age", 1, 30), Num("weight", "weight", 2, 900)),
           "keepers", PEOPLE, "shift", ("morning", "evening", "night"), "cared for by"),
    Domain("flights", "flights", "code", (("AX", "BK", "CR", "DL", "EZ", "FJ"),
           ("101", "214", "322", "407", "519", "633", "745", "860")),
           "destination", ("Paris", "Tokyo", "Rome", "Dubai", "Sydney", "Toronto"),
           (Num("duration", "duration", 45, 900), Num("price", "ticket price", 50, 1500)),
           "airlines", (("Sky", "Blue", "North", "Sun", "Star", "Coral", "Polar", "Swift"), ("Air", "Airways", "Jet", "Wings")),
           "country", ("Spain", "Chile", "India", "Ireland", "Egypt", "Mexico"), "operated by", sep=""),
    Domain("music", "albums", "title", (("Electric", "Midnight", "Velvet", "Neon", "Quiet", "Wild", "Paper", "Silver"),
           ("Dreams", "Heart", "Highway", "Echoes", "Skies", "Roads", "Waves", "Lights")),
           "genre", ("rock", "jazz", "pop", "folk", "blues", "soul"),
           (Num("year", "release year", 1960, 2023), Num("tracks", "track count", 6, 24)),
           "artists", PEOPLE, "country", COUNTRIES, "recorded by"),
    Domain("hospital", "patients", "name", PEOPLE, "ward", ("north", "south", "east", "west", "central"),
           (Num("age", "age", 1, 95), Num("stay_days", "length of stay", 1, 60)),
           "doctors", PEOPLE, "specialty", ("surgery", "cardiology", "pediatrics", "neurology", "oncology"), "treated by"),
]}


# --- databases -------------------------------------------------------------------------------------------------

def _names(rng: random.Random, words: tuple[tuple[str, ...], tuple[str, ...]], n: int, sep: str = " ") -> list[str]:
    return rng.sample([f"{a}{sep}{b}" for a in words[0] for b in words[1]], n)


@lru_cache(maxsize=256)
def _tables(db_id: str) -> tuple[Domain, tuple[tuple, ...], tuple[tuple, ...]]:
    """The domain, parent rows (id, name, pcat) and child rows (id, label, cat, num0, num1, fk) of a database."""
    name, seed = db_id.rsplit("-", 1)
    d, rng = DOMAINS[name], random.Random(f"sql:{name}:{int(seed)}")
    n_parent, n_child = rng.randint(10, 15), rng.randint(15, 40)
    parents = tuple((i + 1, n, rng.choice(d.pcats)) for i, n in enumerate(_names(rng, d.parent_words, n_parent)))
    nums = [lambda n=n: round(rng.uniform(n.lo, n.hi), 2) if n.real else rng.randint(n.lo, n.hi) for n in d.nums]
    children = tuple((i + 1, label, rng.choice(d.cats), nums[0](), nums[1](), rng.randint(1, n_parent))
                     for i, label in enumerate(_names(rng, d.words, n_child, d.sep)))
    return d, parents, children


def _creates(d: Domain) -> list[str]:
    types = ["REAL" if n.real else "INTEGER" for n in d.nums]
    return [f"CREATE TABLE {d.parent} (id INTEGER PRIMARY KEY, name TEXT, {d.pcat} TEXT);",
            f"CREATE TABLE {d.table} (id INTEGER PRIMARY KEY, {d.label} TEXT, {d.cat} TEXT, {d.nums[0].col} {types[0]}, "
            f"{d.nums[1].col} {types[1]}, {d.fk} INTEGER REFERENCES {d.parent}(id));"]


def schema_text(db: str) -> str:
    """The CREATE TABLE statements of a database (what the model sees), one per line."""
    return "\n".join(_creates(_tables(db)[0]))


@lru_cache(maxsize=256)
def _script(db: str) -> str:
    d, parents, children = _tables(db)
    inserts = [f"INSERT INTO {d.parent} VALUES {p!r};" for p in parents]
    inserts += [f"INSERT INTO {d.table} VALUES {c!r};" for c in children]
    return "\n".join(_creates(d) + inserts)


def connect(db: str) -> sqlite3.Connection:
    """A fresh in-memory copy of the named database."""
    conn = sqlite3.connect(":memory:")
    conn.executescript(_script(db))
    return conn


def _sorted(rows: list[tuple]) -> list[tuple]:
    try:
        return sorted(rows)
    except TypeError:  # mixed types or NULLs
        return sorted(rows, key=repr)


@lru_cache(maxsize=4096)
def _run(db: str, sql: str, timeout_s: float = 1.0, max_rows: int = 10_000) -> tuple | None:
    try:
        conn = connect(db)
    except (KeyError, ValueError):
        return None
    deadline = time.monotonic() + timeout_s
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    try:
        rows = conn.execute(sql).fetchmany(max_rows + 1)
    except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError):
        return None
    finally:
        conn.close()
    return None if len(rows) > max_rows else tuple(_sorted(rows))


def execute(db_id: str, sql: str, timeout_s: float = 1.0) -> list | None:
    """Rows of ``sql`` on a fresh copy of the database as a sorted list of tuples; None on any error or timeout."""
    rows = _run(db_id, sql, timeout_s)
    return None if rows is None else list(rows)


# --- questions -------------------------------------------------------------------------------------------------

Made = "tuple[list[str], str] | None"  # (phrasings of the question, gold SQL); None when the template does not fit
Template = Callable[[Domain, tuple, tuple, random.Random], Made]
HIGH = {"DESC": ("highest", "largest"), "ASC": ("lowest", "smallest")}
AGG = {"MAX": "maximum", "MIN": "minimum", "AVG": "average"}
# Templates take the domain, child rows C (id, label, cat, num0, num1, fk), parent rows P (id, name, pcat) and an rng.


def filter_cat(d: Domain, C: tuple, P: tuple, rng: random.Random) -> Made:
    v = rng.choice(C)[2]
    return ([f"List the {d.label}s of {d.table} whose {d.cat} is '{v}'.", f"Which {d.table} have the {d.cat} '{v}'?",
             f"Show the {d.label} of every {d.item} with {d.cat} '{v}'."],
            f"SELECT {d.label} FROM {d.table} WHERE {d.cat} = '{v}'")


def count_cat(d: Domain, C: tuple, P: tuple, rng: random.Random) -> Made:
    v = rng.choice(C)[2]
    return ([f"How many {d.table} have the {d.cat} '{v}'?", f"Count the {d.table} whose {d.cat} is '{v}'.",
             f"What is the number of {d.table} with {d.cat} '{v}'?"],
            f"SELECT COUNT(*) FROM {d.table} WHERE {d.cat} = '{v}'")


def lookup(d: Domain, C: tuple, P: tuple, rng: random.Random) -> Made:
    name, k = rng.choice(C)[1], rng.randint(0, 2)
    col, desc = (d.cat, d.cat) if k == 2 else (d.nums[k].col, d.nums[k].desc)
    return ([f"What is the {desc} of the {d.item} '{name}'?", f"Give the {desc} of the {d.item} called '{name}'."],
            f"SELECT {col} FROM {d.table} WHERE {d.label} = '{name}'")


def _ranked(d: Domain, C: tuple, rng: random.Random, k: int) -> tuple[Num, str, str] | None:
    """A numeric column, an order and its word, when the first k rows in that order are not tied with the next one."""
    i, order = rng.randint(0, 1), rng.choice(["DESC", "ASC"])
    values = sorted((r[3 + i] for r in C), reverse=order == "DESC")
    return (d.nums[i], order, rng.choice(HIGH[order])) if len(values) > k and values[k - 1] != values[k] else None


def argmax(d: Domain, C: tuple, P: tuple, rng: random.Random) -> Made:
    if (ranked := _ranked(d, C, rng, 1)) is None:
        return None
    n, order, word = ranked
    return ([f"Which {d.item} has the {word} {n.desc}?", f"What is the {d.label} of the {d.item} with the {word} {n.desc}?"],
            f"SELECT {d.label} FROM {d.table} ORDER BY {n.col} {order} LIMIT 1")


def top_k(d: Domain, C: tuple, P: tuple, rng: random.Random) -> Made:
    k = rng.randint(2, 5)
    if (ranked := _ranked(d, C, rng, k)) is None:
        return None
    n, order, word = ranked
    return ([f"List the {k} {d.table} with the {word} {n.desc}.", f"Which {k} {d.table} have the {word} {n.desc}?",
             f"Show the {d.label}s of the {k} {d.table} with the {word} {n.desc}."],
            f"SELECT {d.label} FROM {d.table} ORDER BY {n.col} {order} LIMIT {k}")


def aggregate(d: Domain, C: tuple, P: tuple, rng: random.Random) -> Made:
    n, fn = rng.choice(d.nums), rng.choice(list(AGG))
    if rng.random() < 0.5:
        return ([f"What is the {AGG[fn]} {n.desc} of all {d.table}?", f"Find the {AGG[fn]} {n.desc} across {d.table}."],
                f"SELECT {fn}({n.col}) FROM {d.table}")
    v = rng.choice(C)[2]
    return ([f"What is the {AGG[fn]} {n.desc} of {d.table} whose {d.cat} is '{v}'?",
             f"Among {d.table} with {d.cat} '{v}', what is the {AGG[fn]} {n.desc}?"],
            f"SELECT {fn}({n.col}) FROM {d.table} WHERE {d.cat} = '{v}'")


def group_count(d: Domain, C: tuple, P: tuple, rng: random.Random) -> Made:
    return ([f"How many {d.table} are there for each {d.cat}?", f"Count the {d.table} in each {d.cat}.",
             f"For every {d.cat}, give the number of {d.table}."],
            f"SELECT {d.cat}, COUNT(*) FROM {d.table} GROUP BY {d.cat}")


def _compared(d: Domain, C: tuple, rng: random.Random) -> tuple[Num, str, str, object]:
    """A numeric column, an operator, its words and a threshold taken from the middle of the column's values."""
    i, op = rng.randint(0, 1), rng.choice([">", "<"])
    values = sorted({r[3 + i] for r in C})
    words = ("greater than", "above", "more than") if op == ">" else ("less than", "below")
    return d.nums[i], op, rng.choice(words), values[rng.randint(len(values) // 5, (4 * len(values)) // 5)]


def compare(d: Domain, C: tuple, P: tuple, rng: random.Random) -> Made:
    n, op, w, v = _compared(d, C, rng)
    return ([f"Which {d.table} have a {n.desc} {w} {v}?", f"List the {d.label}s of {d.table} whose {n.desc} is {w} {v}."],
            f"SELECT {d.label} FROM {d.table} WHERE {n.col} {op} {v}")


def count_compare(d: Domain, C: tuple, P: tuple, rng: random.Random) -> Made:
    n, op, w, v = _compared(d, C, rng)
    return ([f"How many {d.table} have a {n.desc} {w} {v}?", f"Count the {d.table} whose {n.desc} is {w} {v}."],
            f"SELECT COUNT(*) FROM {d.table} WHERE {n.col} {op} {v}")


def _join(d: Domain) -> str:
    return f"{d.table} JOIN {d.parent} ON {d.table}.{d.fk} = {d.parent}.id"


def join_filter(d: Domain, C: tuple, P: tuple, rng: random.Random) -> Made:
    p = P[rng.choice(C)[5] - 1][1]
    return ([f"List the {d.label}s of {d.table} {d.relation} '{p}'.", f"Which {d.table} are {d.relation} '{p}'?"],
            f"SELECT {d.table}.{d.label} FROM {_join(d)} WHERE {d.parent}.name = '{p}'")


def join_group(d: Domain, C: tuple, P: tuple, rng: random.Random) -> Made:
    who = d.parent[:-1]
    return ([f"How many {d.table} does each {who} have?", f"For each {who}, count the {d.table} {d.relation} them."],
            f"SELECT {d.parent}.name, COUNT(*) FROM {_join(d)} GROUP BY {d.parent}.name")


def join_count(d: Domain, C: tuple, P: tuple, rng: random.Random) -> Made:
    v = rng.choice(P)[2]
    return ([f"How many {d.table} are {d.relation} a {d.parent[:-1]} whose {d.pcat} is '{v}'?",
             f"Count the {d.table} {d.relation} {d.parent} with {d.pcat} '{v}'."],
            f"SELECT COUNT(*) FROM {_join(d)} WHERE {d.parent}.{d.pcat} = '{v}'")


def parent_filter(d: Domain, C: tuple, P: tuple, rng: random.Random) -> Made:
    v = rng.choice(P)[2]
    return ([f"List the names of {d.parent} whose {d.pcat} is '{v}'.", f"Which {d.parent} have the {d.pcat} '{v}'?"],
            f"SELECT name FROM {d.parent} WHERE {d.pcat} = '{v}'")


TEMPLATES: dict[str, Template] = {f.__name__: f for f in [
    filter_cat, count_cat, lookup, argmax, top_k, aggregate, group_count, compare, count_compare,
    join_filter, join_group, join_count, parent_filter]}


def prompt(db: str, question: str) -> str:
    return f"{INSTRUCTION}\n\n{schema_text(db)}\n\nQuestion: {question}"


def examples_block(examples: list[dict]) -> str:
    """k examples of one database as question -> SQL pairs (instruction and schema are not repeated)."""
    return "\n\n".join([EXAMPLES_HEADER, *(EXAMPLE_TEMPLATE.format(input=r["question"], output=r["output"])
                                          for r in examples)])


def demonstrations(examples: list[dict]) -> list[dict]:
    """The examples as ``teacher.demonstrations``: with ``teacher.context=EXAMPLES_HEADER``,
    ``teacher.demonstration_template=EXAMPLE_TEMPLATE`` and ``teacher.position=before_input`` the teacher
    shows them as ``examples_block``, and ``teacher.demonstrations_per_context`` can split them."""
    return [{"input": r["question"], "output": r["output"]} for r in examples]


def with_examples(record: dict, examples: list[dict]) -> dict:
    """``record`` with ``examples`` before its prompt, exactly as the teacher of ``demonstrations`` shows them."""
    return record | {"input": f"{examples_block(examples)}\n\n{record['input']}", "k": len(examples)}


def questions(db: str, n: int) -> list[dict]:
    """``n`` distinct questions on a database, cycling through the templates; every gold result is non-trivial."""
    d, parents, children = _tables(db)
    rng, names, out, seen = random.Random(f"questions:{db}"), list(TEMPLATES), [], set()
    for attempt in range(50 * n):
        if len(out) == n:
            break
        if attempt % len(names) == 0:
            rng.shuffle(names)
        made = TEMPLATES[names[attempt % len(names)]](d, children, parents, rng)
        if made is None or made[1] in seen:
            continue
        rows = execute(db, made[1])
        if not rows or rows in ([(0,)], [(None,)]):
            continue
        seen.add(made[1])
        question = rng.choice(made[0])
        out.append({"db": db, "domain": d.name, "template": names[attempt % len(names)], "question": question,
                    "input": prompt(db, question), "output": made[1]})
    return out


def make_split(seed: int, n_train_dbs: int, n_eval_dbs: int, questions_per_db: int,
               eval_domains: Iterable[str] = ("zoo", "hospital"), eval_questions_per_db: int | None = None,
               example_pool: int = 0, ks: tuple[int, ...] = (2, 4, 6, 8)) -> dict:
    """Train and eval records on disjoint databases: eval uses the held-out ``eval_domains`` (all domains when empty)
    and seeds that training never uses. Returns {"train": [...], "eval": [...], "train_dbs": [...], "eval_dbs": [...]}.

    ``example_pool > 0`` makes the warm-up teach the use of in-context examples too: each training database
    gets that many more questions as its example pool, and every second training question is shown with k
    (drawn from ``ks``) of them before it (``with_examples``); the others stay bare."""
    held = [d for d in DOMAINS if d in set(eval_domains)] or list(DOMAINS)
    train_domains = [d for d in DOMAINS if d not in set(eval_domains)]
    assert train_domains and max(n_train_dbs, n_eval_dbs) < 5000, "need a training domain and fewer than 5000 dbs"
    train_dbs = [f"{train_domains[i % len(train_domains)]}-{seed * 10_000 + i}" for i in range(n_train_dbs)]
    eval_dbs = [f"{held[i % len(held)]}-{seed * 10_000 + 5_000 + i}" for i in range(n_eval_dbs)]
    n_eval = questions_per_db if eval_questions_per_db is None else eval_questions_per_db
    rng, train = random.Random(f"examples:{seed}"), []
    for db in train_dbs:
        qs = questions(db, questions_per_db + example_pool)
        pool = qs[questions_per_db:]
        train += [with_examples(r, rng.sample(pool, rng.choice(ks))) if example_pool and i % 2 else r
                  for i, r in enumerate(qs[:questions_per_db])]
    return {"train": train,
            "eval": [r for db in eval_dbs for r in questions(db, n_eval)], "train_dbs": train_dbs, "eval_dbs": eval_dbs}


# --- scoring ---------------------------------------------------------------------------------------------------

def extract_sql(text: str) -> str:
    """The first SQL statement in a model answer: inside a ``` fence if any, from SELECT/WITH, up to ';' or a blank line."""
    fenced = re.search(r"```(?:sql|sqlite)?\s*\n?(.*?)(?:```|$)", text, re.S | re.I)
    text = fenced.group(1) if fenced else text
    start = re.search(r"\b(SELECT|WITH)\b", text, re.I)
    text = text[start.start():] if start else re.sub(r"^\s*SQL\s*:", "", text, flags=re.I)
    return re.split(r";|\n\s*\n", text, maxsplit=1)[0].strip()


def _normalize(sql: str) -> str:
    return " ".join(extract_sql(sql).lower().split()).rstrip(";").strip()


def exact_match(record: dict, answer: str) -> float:
    return float(_normalize(answer) == _normalize(record["output"]))


def execution_match(record: dict, answer: str) -> float:
    """1.0 when the answer's rows equal the gold query's rows (as sorted lists) on the record's database."""
    gold = execute(record["db"], record["output"])
    return float(gold is not None and execute(record["db"], extract_sql(answer)) == gold)


def main() -> None:
    split = make_split(seed=0, n_train_dbs=30, n_eval_dbs=4, questions_per_db=10, eval_questions_per_db=20)
    here = Path(__file__).parent / "data"
    # the same questions, every second one with 2-8 examples of its database before it (warmup_examples.yaml)
    write_jsonl(here / "train_examples.jsonl", make_split(seed=0, n_train_dbs=30, n_eval_dbs=0, questions_per_db=10,
                                                          example_pool=8)["train"])
    for name in ("train", "eval"):
        write_jsonl(here / f"{name}.jsonl", split[name])
        domains = sorted({r["domain"] for r in split[name]})
        print(f"{name}: {len(split[name])} questions on {len(split[f'{name}_dbs'])} databases ({', '.join(domains)})")


if __name__ == "__main__":
    main()
