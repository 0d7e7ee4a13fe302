"""Experiment trackers: each step's loss and the final metrics sent to Hugging Face Accelerate's trackers.

``train.report_to`` names them (``[tensorboard]``, ``[wandb]``, ... any tracker Accelerate supports whose
package is installed); the logs of local ones go to ``OUT/logs``. Off by default, and then nothing of
Accelerate's tracking or of a tracker's package is imported.

    with trackers(cfg, run.dir / "logs", runtime) as track:
        track(step_values(record), record["step"])            # each training step
        track(eval_values(metrics, forgetting), last_step)    # at the end
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .config import Config
from .runtime import Runtime

log = logging.getLogger(__name__)

TRACKER_PROJECT = "internalize"  # the project (run) name the trackers get; TensorBoard writes to OUT/logs/internalize


@contextmanager
def trackers(cfg: Config, logging_dir: Path, runtime: Runtime) -> Iterator[Callable[[dict[str, float], int], None]]:
    """Accelerate's experiment trackers named by ``train.report_to``, started with the config and closed at the end or
    on failure; yields ``log(values, step)`` (a no-op when there are none: nothing is imported)."""
    trackers: list[Any] = []

    def log_to_all(values: dict[str, float], step: int) -> None:
        for tracker in trackers:
            tracker.log(values, step=step)

    if not cfg.train.report_to or not runtime.is_main:
        yield log_to_all
        return
    from accelerate import PartialState
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, filter_trackers

    PartialState()  # Accelerate's trackers log through its process state (one process here)
    try:
        for kind in filter_trackers(cfg.train.report_to, logging_dir):
            tracker_class = LOGGER_TYPE_TO_CLASS[str(kind)]
            args = (TRACKER_PROJECT, logging_dir) if tracker_class.requires_logging_directory else (TRACKER_PROJECT,)
            trackers.append(tracker_class(*args))
            trackers[-1].start()
            trackers[-1].store_init_configuration(_hyperparameters(cfg))
        log.info("reporting to %s (%s)", ", ".join(t.name for t in trackers), logging_dir)
        yield log_to_all
    finally:
        for tracker in trackers:
            try:
                tracker.finish()
            except Exception as e:  # a tracker that cannot close must not hide the run's own outcome
                log.warning("could not close the %s tracker: %s", tracker.name, e)


def _hyperparameters(cfg: Config) -> dict[str, Any]:
    """The config as flat scalars for the trackers (nested values as JSON); behaviours by name only (no prompts)."""
    flat: dict[str, Any] = {"behaviours": ", ".join(b.name for b in cfg.behaviours)}
    for section in ("model", "data", "teacher", "train", "eval", "output"):
        for key, value in dataclasses.asdict(getattr(cfg, section)).items():
            plain = value is None or isinstance(value, (bool, int, float, str))
            flat[f"{section}.{key}"] = value if plain else json.dumps(value, default=str)
    return flat


def step_values(record: dict[str, Any]) -> dict[str, float]:
    return {f"train/{key}": record[key] for key in ("loss", "lr", "padding")}


def eval_values(metrics: dict[str, Any], forgetting: dict[str, Any] | None) -> dict[str, float]:
    """``eval/BEHAVIOUR/CONDITION/METRIC`` for every metric, and ``eval/forgetting/...`` when the check ran."""
    values = {f"eval/{name}/{condition}/{key}": value for name, conditions in metrics.items()
              for condition, m in conditions.items() for key, value in m.items() if key != "n"}
    if forgetting:
        values |= {f"eval/forgetting/{key}": forgetting[key] for key in ("agreement_with_original", "kl_original_student")}
    return values
