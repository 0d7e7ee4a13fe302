"""The run directory: what a run writes there, when it may replace an earlier run, and where it came from.

``Run`` owns ``output.dir``: it refuses to clobber an earlier run unless ``output.overwrite`` is set,
saves the resolved config first, times each stage, and decides what a failure leaves behind. A run
that fails before its student is saved leaves none of its files (a rerun is not blocked); one that
fails after keeps the saved model and records the failure in ``run.json``: trained weights are never
deleted. The artifact carries its own provenance (``model/internalize.json``: the config, each
behaviour's prompt, the chain of runs it came from, and the metrics), so a model copied elsewhere
still says what it is.

    run = Run(cfg.output)                 # checks the directory; writes nothing
    with run.open(cfg):                   # clears an earlier run (overwrite), saves config.yaml
        with run.stage("train"):
            ...
        run.saved(provenance(cfg, origin))
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from .config import Config, InternalizeError, OutputConfig, save_config
from .data import write_atomic

log = logging.getLogger(__name__)

# synthesized.jsonl is not among them: it may be the input of a later run (data.train_file), so it is
# never cleared, only replaced atomically when inputs are synthesized again.
RUN_FILES = ("config.yaml", "metrics.json", "run.json", "answers.jsonl", "report.md", "metrics.png", "loss.png", "model")
PROVENANCE = "internalize.json"  # inside model/


class Run:
    """One run's output directory."""

    def __init__(self, cfg: OutputConfig) -> None:
        self.dir = Path(cfg.dir)
        self.timings: dict[str, float] = {}
        self.model_saved = False
        if self.dir.exists() and not self.dir.is_dir():
            raise InternalizeError(f"output.dir='{self.dir}' is a file; choose a directory")
        existing = [name for name in RUN_FILES if (self.dir / name).exists()]
        if existing and not cfg.overwrite:
            raise InternalizeError(f"output.dir='{self.dir}' already holds a run ({', '.join(existing)}); "
                                   "pass --overwrite or choose another output.dir")

    @property
    def model_dir(self) -> Path:
        return self.dir / "model"

    def _clear(self) -> None:
        for name in RUN_FILES:
            target = self.dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()

    @contextmanager
    def open(self, cfg: Config) -> Iterator[Run]:
        """Clear an earlier run's files, save the resolved config; on failure, keep only what is worth keeping."""
        self._clear()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.dir / "config.yaml")
        except OSError as e:
            raise InternalizeError(f"output.dir='{self.dir}' is not writable ({e.strerror}); choose another output.dir") \
                from None
        try:
            yield self
        except BaseException as e:
            if not self.model_saved:
                self._clear()
                raise
            stage = next(reversed(self.timings), "start")
            failure = {"status": "failed", "after_stage": stage, "error": f"{type(e).__name__}: {e}",
                       "timings": self.timings}
            write_atomic(self.dir / "run.json", json.dumps(failure, indent=2) + "\n")
            log.error("the run failed after %s; the trained model is kept in %s", stage, self.model_dir)
            raise

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage; its wall time goes to ``run.json``."""
        start = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - start, 2)
        log.info("%s took %.1f s", name, self.timings[name])

    def saved(self, provenance: dict[str, Any]) -> None:
        """The model is on disk: write its provenance beside it; from here on a failure keeps the run's files."""
        self.model_saved = True
        write_provenance(self.model_dir, provenance)


def write_provenance(model_dir: Path, provenance: dict[str, Any]) -> None:
    write_atomic(model_dir / PROVENANCE, json.dumps(provenance, indent=2, default=str) + "\n")


def provenance(cfg: Config, origin: dict[str, Any], metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """What an artifact is: the config that made it, what each behaviour added, its origin chain, its metrics."""
    return {"config": dataclasses.asdict(cfg), "added": added(cfg), "origin": origin, "metrics": metrics}


def added(cfg: Config) -> list[str]:
    """What a run taught, in a few words per behaviour: its context (or name), or the data it fine-tuned on."""
    if cfg.train.targets == "data":
        return [f"fine-tuning on {b.train_file or 'data.inputs'}" for b in cfg.behaviours]
    if len(cfg.behaviours) == 1:
        return [cfg.behaviours[0].prompt.context]
    return [b.name for b in cfg.behaviours]


def origin(name: str, resolved: str) -> dict[str, Any]:
    """Which model a run started from; for an earlier run's artifact, that run's own origin and what it added
    (the chain). Read from the artifact's provenance, or for artifacts written before it, from its run directory."""
    found: dict[str, Any] = {"model": name, "path": str(resolved)}
    model_dir = Path(resolved)
    if (model_dir / PROVENANCE).is_file():
        earlier = json.loads((model_dir / PROVENANCE).read_text())
        found["run"] = {"dir": str(model_dir.parent), "added": earlier["added"], "started_from": earlier["origin"]}
        return found
    run_json, run_config = model_dir.parent / "run.json", model_dir.parent / "config.yaml"
    if model_dir.name == "model" and run_json.exists() and run_config.exists():  # an artifact from before provenance
        earlier = json.loads(run_json.read_text())
        settings = yaml.safe_load(run_config.read_text())
        teacher, train = settings.get("teacher", {}), settings.get("train", {})
        if train.get("targets") == "data":
            what = [f"fine-tuning on {settings.get('data', {}).get('train_file') or 'data.inputs'}"]
        else:
            what = [c.get("name") for c in teacher.get("contexts", [])] or [teacher.get("context", "")]
        found["run"] = {"dir": str(model_dir.parent), "added": what, "started_from": earlier.get("started_from")}
    return found
