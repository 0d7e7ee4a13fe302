"""The addition task of the reasoning experiment: problems, scratch-pads, answers, scorers, word problems.

Problems are ``a + b`` with both numbers of the same digit length (1 to 5 by default, up to 8 for the
rerun below), lengths uniform, seeded.
The scratch-pad follows Nye et al. (2021): each line holds what is left of both numbers, the
digits written so far and the carry, so every step reads only the line above it; each step also
writes its column's sum out ("9 + 7 + 0 = 16"), in the spaced form the model already half knows::

    What is 29 + 57?                     (the input; the teacher's context asks for a scratch-pad)
    29+57,,C0                            (the scratch-pad: the teacher's fine-tuning target)
    9 + 7 + 0 = 16 | 2+5,6,C1
    2 + 5 + 1 = 8 | +,86,C0
    Answer: 86
    86                                   (the direct answer: what the student learns to say)

    python experiments/addition/task.py   # writes the experiment's data files (seeded) and prints counts

With no options it writes the 1-5 digit set of EXPERIMENTS.md section 5 into ``data/``; the options
write another set elsewhere (never into ``data/``), e.g. the 1-8 digit rerun's (issue 18; README.md says how it runs)::

    python experiments/addition/task.py --digits 1 2 3 4 5 6 7 8 --finetune 3200 --distill 4000 --dev 80 \\
        --out experiments/addition/data8
"""

from __future__ import annotations

import argparse
import random
import re
from pathlib import Path
from typing import Any

from internalize.data import write_jsonl

HERE = Path(__file__).parent
SCRATCHPAD = "Add the two numbers. Work it out digit by digit in a scratch-pad, then give the answer."
ANSWER = re.compile(r"Answer: (\d+)")
DIGITS = [1, 2, 3, 4, 5]  # the lengths this session's CPU time covered, baselines included (EXPERIMENTS.md says why)
N_FINETUNE, N_DISTILL, N_DEV = 2000, 1500, 60


def problems(n: int, digits: list[int], seed: int, exclude: set[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    """``n`` distinct problems, digit lengths drawn uniformly from ``digits``; none in ``exclude``.

    A length whose problems run out (1 digit has only 100) stops being drawn."""
    rng, seen, out = random.Random(seed), set(exclude or ()), []
    left = {d: len(all_problems(d) - seen) if d <= 2 else 10**12 for d in digits}
    while len(out) < n:
        open_lengths = [d for d in digits if left[d]]
        if not open_lengths:
            raise ValueError(f"only {len(out)} distinct problems of {digits} digits are left")
        d = rng.choice(open_lengths)
        low = 0 if d == 1 else 10 ** (d - 1)
        pair = (rng.randint(low, 10**d - 1), rng.randint(low, 10**d - 1))
        if pair not in seen:
            seen.add(pair)
            out.append(pair)
            left[d] -= 1
    return out


def all_problems(d: int) -> set[tuple[int, int]]:
    """Every problem of ``d`` digits (only for the short lengths, where they can run out)."""
    numbers = range(0 if d == 1 else 10 ** (d - 1), 10**d)
    return {(a, b) for a in numbers for b in numbers}


def question(a: int, b: int) -> str:
    return f"What is {a} + {b}?"


def scratchpad(a: int, b: int) -> str:
    """The worked addition (Nye et al. 2021 layout, unspaced digits) ending in ``Answer: N``."""
    width = max(len(str(a)), len(str(b)))
    left, right, done, carry = str(a).zfill(width), str(b).zfill(width), "", 0
    lines = [f"{left}+{right},,C0"]
    while left:
        total = int(left[-1]) + int(right[-1]) + carry
        column = f"{left[-1]} + {right[-1]} + {carry} = {total}"
        left, right, done, carry = left[:-1], right[:-1], str(total % 10) + done, total // 10
        lines.append(f"{column} | {left}+{right},{done},C{carry}")
    return "\n".join(lines) + f"\nAnswer: {int(str(carry) + done)}"


def scratchpad_tokens(d: int) -> int:
    """A generation budget for a d-digit scratch-pad: SmolLM2's tokenizer gives 31, 57, 85, 114, 152, 190, 228
    and 276 tokens at 1 to 8 digits (one token per digit, about 30 per column)."""
    return 40 + 36 * d


def digits_of(record: dict[str, Any]) -> int:
    return len(str(record["a"]))


def record(a: int, b: int, target: str = "direct") -> dict[str, Any]:
    """A JSONL record: the question, the numbers, and as ``output`` the scratch-pad or the direct answer."""
    output = scratchpad(a, b) if target == "scratchpad" else str(a + b)
    return {"input": question(a, b), "a": a, "b": b, "output": output}


def with_context(rec: dict[str, Any]) -> dict[str, Any]:
    """The record as the scratch-pad teacher sees it: the context before the input (``position: before_input``)."""
    return {**rec, "input": f"{SCRATCHPAD}\n\n{rec['input']}"}


def direct(rec: dict[str, Any], answer: str) -> float:
    """Direct-answer exact match: the whole answer is the sum (thousands commas allowed), nothing else."""
    return float(answer.strip().replace(",", "") == str(rec["a"] + rec["b"]))


def scratchpad_answer(rec: dict[str, Any], answer: str) -> float:
    """The final ``Answer: N`` of a scratch-pad generation is the sum."""
    found = ANSWER.findall(answer)
    return float(bool(found) and found[-1] == str(rec["a"] + rec["b"]))


NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jun"]
WORD_TEMPLATES = [
    "{name} has {a} stamps and buys {b} more. How many stamps does {name} have now?",
    "A farm grew {a} apples last year and {b} apples this year. How many apples did it grow in the two years?",
    "{name} walked {a} steps on Monday and {b} steps on Tuesday. How many steps is that in total?",
    "A library owns {a} books and receives {b} new ones. How many books does it own now?",
    "A city has {a} residents and {b} people move in. How many residents does it have now?",
    "{name} saved {a} coins, then found {b} more. How many coins does {name} have?",
]


def word_problems(n: int, digits: list[int], seed: int) -> list[dict[str, Any]]:
    """Template word problems whose answer is a + b: the transfer test (answered directly)."""
    rng = random.Random(seed + 1)
    out = []
    for a, b in problems(n, digits, seed):
        text = rng.choice(WORD_TEMPLATES).format(name=rng.choice(NAMES), a=a, b=b)
        out.append({"input": f"{text} Reply with the number only.", "a": a, "b": b, "output": str(a + b)})
    return out


def make_data(digits: list[int], n_finetune: int, n_distill: int, n_dev: int, seed: int = 0) -> dict[str, list[dict]]:
    """Disjoint problem sets: the teacher's fine-tuning set (with scratch-pads), fresh inputs for the
    distillation (no answers needed: the teacher writes them), and a small dev set for the runs' reports."""
    every = problems(n_finetune + n_distill + n_dev, digits, seed)
    finetune, distill, dev = every[:n_finetune], every[n_finetune : n_finetune + n_distill], every[-n_dev:]
    return {
        "finetune_scratchpad": [with_context(record(a, b, "scratchpad")) for a, b in finetune],
        "finetune_direct": [record(a, b) for a, b in finetune],
        "distill": [record(a, b) for a, b in distill],
        "dev_scratchpad": [with_context(record(a, b, "scratchpad")) for a, b in dev],
        "dev": [record(a, b) for a, b in dev],
    }


def write_data(out: Path, digits: list[int], n_finetune: int, n_distill: int, n_dev: int,
               seed: int = 0) -> dict[str, int]:
    """Write ``make_data``'s sets, plus the multitask set (both fine-tuning formats), as ``out/NAME.jsonl``;
    returns each file's record count."""
    data = make_data(digits, n_finetune, n_distill, n_dev, seed)
    data["multitask"] = data["finetune_scratchpad"] + data["finetune_direct"]
    for name, rows in data.items():
        write_jsonl(Path(out) / f"{name}.jsonl", rows)
    return {name: len(rows) for name, rows in data.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--digits", type=int, nargs="+", default=DIGITS, help="digit lengths, drawn uniformly")
    parser.add_argument("--finetune", type=int, default=N_FINETUNE, help="fine-tuning problems (teacher, baselines)")
    parser.add_argument("--distill", type=int, default=N_DISTILL, help="distillation inputs (also baseline 1's problems)")
    parser.add_argument("--dev", type=int, default=N_DEV, help="dev problems (the runs' reports)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "data", help="folder of the JSONL files")
    args = parser.parse_args(argv)
    measured = (DIGITS, N_FINETUNE, N_DISTILL, N_DEV, 0)
    if args.out.resolve() == (HERE / "data").resolve() and (args.digits, args.finetune, args.distill, args.dev,
                                                            args.seed) != measured:
        parser.error(f"{HERE / 'data'} holds the measured 1-5 digit set; write another set with --out elsewhere")
    for name, count in write_data(args.out, args.digits, args.finetune, args.distill, args.dev, args.seed).items():
        print(f"{name}: {count}")


if __name__ == "__main__":
    main()
