"""Behaviours: what a run teaches, each with its prompt, its inputs, its held-out inputs and its scorer.

A config lists behaviours (``behaviours``, or the single-behaviour shorthand ``teacher.context`` &
co., which is one behaviour named ``main``). ``load_behaviours`` reads each one's files and imports
its scorer, so that every bad file, line or key is reported before a model is loaded.

    behaviours = load_behaviours(cfg)
    behaviours[0].prompt, behaviours[0].train, behaviours[0].held_out, behaviours[0].scorer
    dropped = fit_window(behaviours, tokenizer, window=2048, cfg=cfg)   # once the tokenizer is loaded
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from .config import BehaviourConfig, Config, InternalizeError, PromptConfig, import_callable
from .data import Record, read_inputs, split_inputs, uses_synthesis
from .views import prompt_ids

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
        train, held_out = read_inputs(b, cfg.data)
        if synthesized:
            if not held_out:
                raise InternalizeError("synthesized training inputs need a real held-out set: set "
                                       f"{b.key('eval_file')} or {b.key('eval_inputs')}")
            train = None
        elif need_train or not held_out:
            train, held_out = split_inputs(cfg.data, train, held_out, b)
        behaviours.append(Behaviour(b, train, held_out, load_scorer(b, (cfg.config_dir,))))
    return behaviours


def fit_window(behaviours: list[Behaviour], tokenizer: PreTrainedTokenizerBase, window: int | None,
               cfg: Config) -> dict[str, int]:
    """Drop (or refuse, ``data.too_long=error``) the inputs whose longest teacher prompt plus the teacher's
    ``max_new_tokens`` exceeds the model's ``window``; returns how many were dropped per behaviour and split.

    A context that leaves no room for any input is always an error."""
    if not window:
        return {}
    room = window - cfg.teacher.max_new_tokens
    dropped: dict[str, int] = {}
    for b in behaviours:
        contexts = b.prompt.split()
        context = max(len(prompt_ids(tokenizer, "", c)) for c in contexts)
        if context >= room:
            raise InternalizeError(f"behaviour '{b.name}': the context takes {context} tokens of "
                                   f"the model's {window}-token window, leaving no room for an input and "
                                   f"teacher.max_new_tokens={cfg.teacher.max_new_tokens}; shorten it or split its "
                                   "demonstrations (prompt.demonstrations_per_context)")
        for split in ("train", "held_out"):
            records = getattr(b, split)
            if records is None:
                continue
            kept = []
            for i, r in enumerate(records):
                length = max(len(prompt_ids(tokenizer, r["input"], c)) for c in contexts)
                if length <= room:
                    kept.append(r)
                elif cfg.data.too_long == "error":
                    raise InternalizeError(f"behaviour '{b.name}': {split.replace('_', '-')} input {i + 1} takes {length} tokens "
                                           f"with its context; with teacher.max_new_tokens={cfg.teacher.max_new_tokens} "
                                           f"it does not fit the model's {window}-token window; shorten it, or set "
                                           "data.too_long=drop")
            if len(kept) < len(records):
                dropped[f"{b.name}.{split}"] = len(records) - len(kept)
                setattr(b, split, kept)
        if not b.held_out or (b.train is not None and not b.train):
            raise InternalizeError(f"behaviour '{b.name}': no input fits the model's {window}-token window with its context and "
                                   f"teacher.max_new_tokens={cfg.teacher.max_new_tokens}; shorten the inputs or the "
                                   "context")
    return dropped
