"""The run directory: what a run writes there, when it may replace an earlier run, and where it came from.

``Run`` owns ``output.dir``: it refuses to clobber an earlier run unless ``output.overwrite`` is set,
saves the resolved config first, times each stage, writes training checkpoints
(``OUT/checkpoints``, ``train.save_every``), and decides what a failure leaves behind. A run that
fails before it has saved a checkpoint or its student leaves none of its files but its tracker logs (a rerun is not
blocked); one that fails after keeps them and records the failure in ``run.json``: trained weights
are never deleted. With ``output.resume`` (``--resume``) an unfinished run continues from its last
complete checkpoint, provided the config is the one it was started with. The artifact carries its
own provenance (``model/internalize.json``: the config, each behaviour's prompt, the chain of runs
it came from, the metrics and the command) and a Hugging Face model card built from it
(``model/README.md``, ``card``), so a model copied elsewhere still says what it is.

    run = Run(cfg)                        # checks the directory (and a resumed run's config); writes nothing
    with run.open():                      # clears an earlier run (overwrite), saves config.yaml
        state = run.resume_state(model)   # the last checkpoint's TrainState when resuming, else None
        state = fit(model, batches, cfg.train, runtime, state, on_checkpoint=run.checkpointer(model))
        run.saved(provenance(cfg, origin))
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from transformers import PreTrainedModel

from . import checkpoint
from .card import model_card
from .config import Config, InternalizeError, load_config, save_config
from .data import write_atomic
from .training import TrainState

log = logging.getLogger(__name__)

# synthesized.jsonl is not among them: it may be the input of a later run (data.train_file), so it is
# never cleared, only replaced atomically when inputs are synthesized again.
RUN_FILES = ("config.yaml", "metrics.json", "run.json", "answers.jsonl", "report.md", "report.html", "metrics.png",
             "loss.png", "model", "checkpoints", "logs")
PROVENANCE = "internalize.json"  # inside model/
CARD = "README.md"  # inside model/: the Hugging Face model card


class Run:
    """One run's output directory."""

    def __init__(self, cfg: Config, writer: bool = True) -> None:
        self.cfg = cfg
        self.writer = writer  # of several processes, only the main one writes the directory
        self.dir = Path(cfg.output.dir)
        self.timings: dict[str, float] = {}
        self.model_saved = False
        self.resumed_from: dict[str, Any] | None = None
        if self.dir.exists() and not self.dir.is_dir():
            raise InternalizeError(f"output.dir='{self.dir}' is a file; choose a directory")
        existing = [name for name in RUN_FILES if name != "logs" and (self.dir / name).exists()]  # logs alone: no run
        if cfg.output.resume:
            self._check_resumable()
        elif existing and not cfg.output.overwrite:
            if "metrics.json" not in existing and "checkpoints" in existing:
                raise InternalizeError(f"output.dir='{self.dir}' holds an unfinished run (checkpoints); pass --resume to "
                                       "continue it or --overwrite to start again")
            raise InternalizeError(f"output.dir='{self.dir}' already holds a run ({', '.join(existing)}); "
                                   "pass --overwrite or choose another output.dir")

    def _check_resumable(self) -> None:
        if not (self.dir / "config.yaml").is_file():
            raise InternalizeError(f"output.dir='{self.dir}' holds no run to resume; drop --resume to start one")
        if (self.dir / "metrics.json").is_file():
            raise InternalizeError(f"output.dir='{self.dir}' holds a finished run (metrics.json); there is nothing to "
                                   "resume")
        started = _flat(dataclasses.asdict(load_config(self.dir / "config.yaml")))
        now = _flat(dataclasses.asdict(self.cfg))
        free = ("output.overwrite", "output.resume", "output.card_context", "model.device", "teacher.cache_dir",
                "train.report_to")  # change nothing learned
        for key in sorted(set(started) | set(now)):
            if key not in free and started.get(key) != now.get(key):
                raise InternalizeError(f"output.dir='{self.dir}' was started with {key}={started.get(key)!r}, not "
                                       f"{now.get(key)!r}; resume with the config it was started with, or pass "
                                       "--overwrite to start again")

    @property
    def model_dir(self) -> Path:
        return self.dir / "model"

    @property
    def checkpoint_dir(self) -> Path:
        return self.dir / "checkpoints"

    def _clear(self, keep: tuple[str, ...] = ()) -> None:
        for name in RUN_FILES:
            target = self.dir / name
            if name in keep:
                continue
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()

    @contextmanager
    def open(self) -> Iterator[Run]:
        """Clear an earlier run's files (all but the config and checkpoints of a run to resume), save the resolved
        config; on failure, keep only what is worth keeping. A process that is not the writer changes nothing."""
        if not self.writer:
            yield self
            return
        self._clear(keep=("config.yaml", "checkpoints", "logs") if self.cfg.output.resume else ())
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.dir / "config.yaml")
        except OSError as e:
            raise InternalizeError(f"output.dir='{self.dir}' is not writable ({e.strerror}); choose another output.dir") \
                from None
        try:
            yield self
        except BaseException as e:
            if not (self.model_saved or checkpoint.latest(self.checkpoint_dir)):
                self._clear(keep=("logs",))  # what the trackers saw before the failure; the next run clears it
                raise
            stage = next(reversed(self.timings), "start")
            failure = {"status": "failed", "after_stage": stage, "error": f"{type(e).__name__}: {e}",
                       "timings": self.timings}
            try:
                write_atomic(self.dir / "run.json", json.dumps(failure, indent=2) + "\n")
            except OSError as again:  # the disk that failed the run may refuse this too
                log.error("could not record the failure in run.json (%s)", again)
            kept = "the trained model" if self.model_saved else "its checkpoints (--resume continues from them)"
            log.error("the run failed after %s; %s are kept in %s", stage, kept, self.dir)
            raise

    def resume_state(self, model: PreTrainedModel) -> TrainState | None:
        """When resuming: the last complete checkpoint's state, its trainable weights restored into ``model``."""
        found = checkpoint.latest(self.checkpoint_dir) if self.cfg.output.resume else None
        if found is None:
            if self.cfg.output.resume:
                log.warning("no complete checkpoint in %s: training starts from the first step", self.checkpoint_dir)
            return None
        try:
            state = checkpoint.load(found, model)
        except ValueError as e:
            raise InternalizeError(f"{e}; pass --overwrite to start again") from None
        self.resumed_from = {"checkpoint": str(found), "step": state.step}
        log.info("resuming from %s (step %d)", found, state.step)
        return state

    def checkpointer(self, model: PreTrainedModel) -> Callable[[TrainState], None] | None:
        """What ``fit`` calls with its state every ``train.save_every`` steps (None: no checkpoints, or not the writer)."""
        if not self.cfg.train.save_every or not self.writer:
            return None
        return lambda state: checkpoint.save(self.checkpoint_dir, model, state, self.cfg.train.keep_checkpoints)

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
        if self.writer:
            write_provenance(self.model_dir, provenance)


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def write_provenance(model_dir: Path, provenance: dict[str, Any]) -> None:
    """``internalize.json`` and the model card (``README.md``) beside the model."""
    write_atomic(model_dir / PROVENANCE, json.dumps(provenance, indent=2, default=str) + "\n")
    write_atomic(model_dir / CARD, model_card(provenance, adapter=(model_dir / "adapter_config.json").is_file()))


def provenance(cfg: Config, origin: dict[str, Any], metrics: dict[str, Any] | None = None,
               forgetting: dict[str, Any] | None = None) -> dict[str, Any]:
    """What an artifact is: the config that made it, what each behaviour added, its origin chain, its metrics, the
    forgetting check, and the command that ran it."""
    return {"config": dataclasses.asdict(cfg), "added": added(cfg), "origin": origin, "metrics": metrics,
            "forgetting": forgetting, "command": command_line()}


def command_line() -> str:
    """This process's command when it is the ``internalize`` CLI (its argv, shell-quoted), else "Python API"."""
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    if program.stem == "internalize" or (program.stem in ("cli", "__main__") and program.parent.name == "internalize"):
        return shlex.join(["internalize", *sys.argv[1:]])
    return "Python API"


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
