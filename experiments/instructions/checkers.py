"""Deterministic checkers for the instruction experiments (``eval.scorer: experiments.instructions.checkers:NAME``).

Each takes ``(record, answer)`` and returns 1.0 when the answer shows the behaviour, else 0.0.
Language checks count frequent function words: an answer is French (Spanish) when at least two of
its words are French (Spanish) function words and they outnumber the English ones.
"""

from __future__ import annotations

import re

FRENCH = {"le", "la", "les", "est", "une", "des", "du", "et", "sont", "dans", "pour", "que", "qui", "avec",
          "il", "elle", "nous", "vous", "pas", "au", "aux", "ce", "cette", "sur", "de", "un", "en", "je"}
SPANISH = {"el", "los", "las", "es", "una", "del", "y", "son", "en", "para", "que", "con", "por", "pero",
           "muy", "se", "su", "al", "lo", "como", "está", "hay", "de", "un", "la", "yo"}
ENGLISH = {"the", "is", "are", "a", "an", "of", "and", "to", "in", "it", "that", "for", "with", "on", "this",
           "you", "was", "be", "as", "by", "at", "from", "has", "have"}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-záéíóúñàâçèêëîïôûü']+", text.lower())


def _language(answer: str, vocabulary: set[str], others: set[str]) -> float:
    words = _words(answer)
    own = sum(w in vocabulary and w not in others for w in words)
    english = sum(w in ENGLISH for w in words)
    return float(own >= 2 and own > english)


def french(record: dict, answer: str) -> float:
    return _language(answer, FRENCH, SPANISH)


def spanish(record: dict, answer: str) -> float:
    return _language(answer, SPANISH, FRENCH)


def sentiment(record: dict, answer: str) -> float:
    """The answer names the record's label ("positive" or "negative") and not the other one."""
    words = set(_words(answer))
    other = "negative" if record["label"] == "positive" else "positive"
    return float(record["label"] in words and other not in words)


def lowercase(record: dict, answer: str) -> float:
    return float(any(c.isalpha() for c in answer) and answer == answer.lower())


WEATHER = {"positive": "sunny", "negative": "rainy"}


def weather(record: dict, answer: str) -> float:
    """Sentiment under arbitrary label words: "sunny" for positive, "rainy" for negative, and not the other."""
    words = set(_words(answer))
    want = WEATHER[record["label"]]
    other = WEATHER["negative" if record["label"] == "positive" else "positive"]
    return float(want in words and other not in words)
