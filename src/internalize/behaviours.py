"""Behaviours: what a run teaches, each with its prompt, its inputs, its held-out inputs and its scorer.

A config lists behaviours (``behaviours``, or the single-behaviour shorthand ``teacher.context`` &
co., which is one behaviour named ``main``). ``load_behaviours`` reads each one's files and imports
its scorer, so that every bad file, line or key is reported before a model is loaded.

    behaviours = load_behaviours(cfg)
    behaviours[0].prompt, behaviours[0].train, behaviours[0].held_out, behaviours[0].scorer
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .config import BehaviourConfig, Config, InternalizeError, PromptConfig, import_callable
from .data import Record, read_inputs, split_inputs, uses_synthesis

Scorer = Callable[[Record, str], float]


@dataclass
class Behaviour:
    """One behaviour, its records read."""

    config: BehaviourConfig
    train: list[Record] | None  # None: the model is to write them (data.synthesize)
    held_out: list[Record]
    scorer: Scorer | None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def prompt(self) -> PromptConfig:
        return self.config.prompt

    @property
    def source(self) -> str:
        """Where the training records came from, for messages."""
        return self.config.train_file or self.config.key("inputs")


def load_scorer(behaviour: BehaviourConfig, search: tuple[Path | None, ...] = ()) -> Scorer | None:
    """The behaviour's scorer, or None. Import and regex errors name the key and the fix."""
    if behaviour.scorer_regex:
        try:
            pattern = re.compile(behaviour.scorer_regex)
        except re.error as e:
            raise InternalizeError(f"{behaviour.key('scorer_regex')}={behaviour.scorer_regex!r} is not a valid regex "
                                   f"({e})") from None
        return lambda record, output: float(pattern.search(output) is not None)
    if behaviour.scorer:
        fn = import_callable(behaviour.scorer, behaviour.key("scorer"), search)
        return lambda record, output: float(fn(record, output))
    return None


def load_behaviours(cfg: Config, need_train: bool = True) -> list[Behaviour]:
    """Every behaviour with its records (split as ``data`` says) and scorer.

    ``need_train=False`` (evaluating a saved student) reads the training inputs only to split off held-out ones."""
    synthesized = uses_synthesis(cfg.behaviours, cfg.data)
    behaviours = []
    for b in cfg.behaviours:
        train, held_out = read_inputs(b)
        if synthesized:
            if not held_out:
                raise InternalizeError("synthesized training inputs need a real held-out set: set "
                                       f"{b.key('eval_file')} or {b.key('eval_inputs')}")
            train = None
        elif need_train or not held_out:
            train, held_out = split_inputs(cfg.data, train, held_out, b)
        behaviours.append(Behaviour(b, train, held_out, load_scorer(b, (cfg.config_dir,))))
    return behaviours
