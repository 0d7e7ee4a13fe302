"""The few-shot mapping task of the examples experiment: a country in, "Capital: <city>" out.

The base model knows many capitals but answers in prose ("The capital of France is Paris."); k
in-context examples teach the format. The checker is exact: the answer must be
``Capital: <the right city>`` and nothing else. Countries are split, seeded, into an example pool
(the k demonstrations and the gradient-descent baseline's training set are drawn from it), a dev
split (the baseline's sweep) and a test split (every reported score).

    python -c "from experiments.examples.capitals import split; print(split(0)['test'][:3])"
"""

from __future__ import annotations

import random
import unicodedata
from typing import Any

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Greece": "Athens", "Austria": "Vienna", "Belgium": "Brussels", "Netherlands": "Amsterdam",
    "Denmark": "Copenhagen", "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki",
    "Iceland": "Reykjavik", "Ireland": "Dublin", "Poland": "Warsaw", "Hungary": "Budapest",
    "Czech Republic": "Prague", "Romania": "Bucharest", "Bulgaria": "Sofia", "Serbia": "Belgrade",
    "Croatia": "Zagreb", "Russia": "Moscow", "Turkey": "Ankara", "Egypt": "Cairo",
    "Morocco": "Rabat", "Tunisia": "Tunis", "Kenya": "Nairobi", "Ethiopia": "Addis Ababa", "Nigeria": "Abuja",
    "Ghana": "Accra", "Senegal": "Dakar", "Japan": "Tokyo", "China": "Beijing", "South Korea": "Seoul",
    "India": "New Delhi", "Pakistan": "Islamabad", "Bangladesh": "Dhaka", "Thailand": "Bangkok",
    "Vietnam": "Hanoi", "Indonesia": "Jakarta", "Philippines": "Manila", "Malaysia": "Kuala Lumpur",
    "Iran": "Tehran", "Iraq": "Baghdad", "Saudi Arabia": "Riyadh", "Jordan": "Amman",
    "Lebanon": "Beirut", "Syria": "Damascus", "Afghanistan": "Kabul", "Nepal": "Kathmandu",
    "Mongolia": "Ulaanbaatar", "Canada": "Ottawa", "Mexico": "Mexico City",
    "Cuba": "Havana", "Jamaica": "Kingston", "Brazil": "Brasilia", "Argentina": "Buenos Aires",
    "Chile": "Santiago", "Peru": "Lima", "Colombia": "Bogota", "Venezuela": "Caracas", "Ecuador": "Quito",
    "Uruguay": "Montevideo", "Australia": "Canberra", "New Zealand": "Wellington", "Qatar": "Doha",
    "Cambodia": "Phnom Penh", "Sri Lanka": "Colombo", "Algeria": "Algiers", "Libya": "Tripoli",
    "Sudan": "Khartoum", "Uganda": "Kampala", "Zimbabwe": "Harare", "Estonia": "Tallinn", "Latvia": "Riga",
    "Lithuania": "Vilnius", "Slovakia": "Bratislava", "Slovenia": "Ljubljana", "Albania": "Tirana",
    "Armenia": "Yerevan", "Georgia": "Tbilisi", "Belarus": "Minsk", "Cyprus": "Nicosia", "Malta": "Valletta",
    "Luxembourg": "Luxembourg", "Switzerland": "Bern", "Panama": "Panama City", "Bolivia": "La Paz",
    "Paraguay": "Asuncion", "Kazakhstan": "Astana", "Uzbekistan": "Tashkent",
}


def record(country: str) -> dict[str, Any]:
    return {"input": country, "output": f"Capital: {CAPITALS[country]}"}


def split(seed: int, pool: int = 24, dev: int = 20) -> dict[str, list[dict[str, Any]]]:
    """Seeded disjoint splits: ``pool`` example countries, ``dev`` for the sweep, the rest for test."""
    countries = sorted(CAPITALS)
    random.Random(seed).shuffle(countries)
    return {"pool": [record(c) for c in countries[:pool]], "dev": [record(c) for c in countries[pool : pool + dev]],
            "test": [record(c) for c in countries[pool + dev :]]}


def _plain(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().strip().rstrip(".")


def exact(rec: dict[str, Any], answer: str) -> float:
    """The answer is exactly ``Capital: <city>`` (accents, surrounding spaces and a final period aside)."""
    return float(_plain(answer) == rec["output"])


def is_country_like(text: str) -> bool:
    """Validator for synthesized inputs: a short capitalized name (1-3 words, letters only)."""
    words = text.strip().split()
    return 1 <= len(words) <= 3 and all(w[:1].isupper() and w.replace("-", "").isalpha() for w in words)
