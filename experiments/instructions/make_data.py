"""Write the sentiment sentences of the instruction experiments (seeded templates, no downloads).

    python experiments/instructions/make_data.py   # -> experiments/instructions/data/sentiment_{train,eval}.jsonl
"""

from __future__ import annotations

import random
from pathlib import Path

from internalize.data import write_jsonl

THINGS = ["movie", "restaurant", "book", "hotel", "phone", "concert", "laptop", "museum", "coffee", "game",
          "jacket", "train ride", "bakery", "album", "class", "park"]
GOOD = ["wonderful", "delightful", "excellent", "fantastic", "lovely", "brilliant", "great", "superb"]
BAD = ["terrible", "awful", "dreadful", "disappointing", "horrible", "boring", "miserable", "poor"]
TEMPLATES = [
    "The {thing} was {adj}.",
    "I found the {thing} {adj} from start to finish.",
    "What a {adj} {thing}, honestly.",
    "My friends said the {thing} was {adj}, and they were right.",
    "Everything about this {thing} felt {adj}.",
    "The {thing} turned out to be {adj}.",
]


def sentences(seed: int, n: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        label = rng.choice(["positive", "negative"])
        text = rng.choice(TEMPLATES).format(thing=rng.choice(THINGS), adj=rng.choice(GOOD if label == "positive" else BAD))
        if text not in seen:
            seen.add(text)
            out.append({"input": f"Sentence: {text}", "label": label})
    return out


def main() -> None:
    every = sentences(0, 120)
    here = Path(__file__).parent / "data"
    for name, rows in (("sentiment_train", every[:90]), ("sentiment_eval", every[90:])):
        write_jsonl(here / f"{name}.jsonl", rows)


if __name__ == "__main__":
    main()
