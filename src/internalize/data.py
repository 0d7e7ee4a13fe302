"""Inputs: a behaviour's unlabeled task inputs from a file or the YAML, split into train and held-out.

A file is JSONL (``.jsonl``), CSV (``.csv``, a header row), Parquet (``.parquet``) or a Hugging Face
``datasets`` directory written by ``save_to_disk`` (``DIR:SPLIT`` picks a split of a DatasetDict).
Each record is a dict with an ``"input"`` string (read from the ``data.input_column`` column; a given
answer from ``data.output_column`` becomes ``"output"``); extra fields are kept for scorers.

    train, held_out = load_inputs(cfg.behaviours[0], cfg.data)
    records = read_records("inputs.csv", "data.train_file", input_column="question")
    write_jsonl("inputs.jsonl", [{"input": "..."}])
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import random
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .config import BehaviourConfig, DataConfig, InternalizeError

Record = dict[str, Any]
log = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
FORMATS = ("JSONL (.jsonl), CSV (.csv, with a header row), Parquet (.parquet) or a directory written by "
           "datasets' save_to_disk")


def read_jsonl(path: str | Path, key: str, input_column: str = "input", output_column: str = "output") -> list[Record]:
    """Read ``{"input": ...}`` records; a bad line raises an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise InternalizeError(f"{key}='{path}': file not found; check the path")
    records = []
    for number, raw in enumerate(_read_bytes(path, key).splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InternalizeError(f"{path}:{number}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                                   "save the file as UTF-8") from None
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InternalizeError(
                f"{path}:{number}: malformed JSON ({e.msg}); each line must be {{\"input\": \"...\"}}"
            ) from None
        where = f"{path}:{number}"
        if isinstance(record, dict):
            _no_clash(list(record), input_column, output_column, where)
        records.append(_renamed(_check(record, where, input_column), input_column, output_column))
    return records


def read_records(path: str | Path, key: str, input_column: str = "input", output_column: str = "output") -> list[Record]:
    """Read the records of a JSONL, CSV or Parquet file or a ``save_to_disk`` directory (``DIR:SPLIT`` for one
    split of a DatasetDict), chosen by the suffix. The text of ``input_column`` becomes ``"input"``, that of
    ``output_column`` ``"output"``; other columns are kept. Bad input raises a one-line error naming the file,
    the line or row and the fix (``key`` is the config key that named the file)."""
    path, split = Path(path), None
    if not path.exists() and ":" in path.name:
        base, _, split = str(path).rpartition(":")
        path, split = (Path(base), split) if Path(base).is_dir() else (path, None)
    if not path.exists():
        raise InternalizeError(f"{key}='{path}': file not found; check the path")
    if path.is_dir():
        return _read_dataset(path, split, key, input_column, output_column)
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return read_jsonl(path, key, input_column, output_column)
    if suffix == ".csv":
        return _read_csv(path, key, input_column, output_column)
    if suffix == ".parquet":
        return _read_parquet(path, key, input_column, output_column)
    raise InternalizeError(f"{key}='{path}': unknown file type '{path.suffix or '(none)'}'; give {FORMATS}")


def _read_bytes(path: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise InternalizeError(f"{key}='{path}': cannot be read ({e.strerror or e}); check its permissions") from None


def _read_csv(path: Path, key: str, input_column: str, output_column: str) -> list[Record]:
    """CSV with a header row (Python's csv module, excel dialect); errors name the file's line."""
    data = _read_bytes(path, key)
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line, column = data.count(b"\n", 0, e.start) + 1, e.start - data.rfind(b"\n", 0, e.start)
        raise InternalizeError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at column {column}); "
                               "save the file as UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[tuple[int, list[str]]] = []
    while True:
        line = reader.line_num + 1
        try:
            row = next(reader, None)
        except csv.Error as e:
            raise InternalizeError(f"{path}:{line}: malformed CSV ({e}); close every quote, and quote fields that "
                                   "hold commas, quotes or line breaks (a quote inside one is doubled)") from None
        if row is None:
            break
        if row:  # blank lines are skipped
            rows.append((line, row))
    if not rows:
        return []
    (header_line, header), rows = rows[0], rows[1:]
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:
        raise InternalizeError(f"{path}:{header_line}: the header names column '{twice[0]}' twice; give each column "
                               "a distinct name")
    _no_clash(header, input_column, output_column, f"{path}:{header_line}")
    _need_column(header, input_column, f"{path}:{header_line}")
    records = []
    for line, row in rows:
        if len(row) != len(header):
            raise InternalizeError(f"{path}:{line}: {len(row)} fields but the header has {len(header)}; "
                                   "quote fields that hold commas")
        records.append(_row(dict(zip(header, row, strict=True)), f"{path}:{line}", input_column, output_column))
    return records


def _read_parquet(path: Path, key: str, input_column: str, output_column: str) -> list[Record]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InternalizeError(f"{key}='{path}': reading Parquet needs pyarrow; pip install pyarrow") from None
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise InternalizeError(f"{key}='{path}': not a readable Parquet file ({_first_line(e)}); write it again, "
                               "e.g. with pyarrow.parquet.write_table") from None
    return _rows(table.column_names, table.to_pylist(), str(path), input_column, output_column)


def _read_dataset(path: Path, split: str | None, key: str, input_column: str, output_column: str) -> list[Record]:
    """A ``datasets`` Dataset or DatasetDict saved with ``save_to_disk``."""
    try:
        import datasets
    except ImportError:
        raise InternalizeError(f"{key}='{path}': reading a saved dataset needs the datasets package; "
                               "pip install datasets") from None
    try:
        dataset = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise InternalizeError(f"{key}='{path}' is a directory but not a dataset saved with save_to_disk; give "
                               f"{FORMATS}") from None
    except Exception as e:  # a damaged dataset fails inside datasets or pyarrow in many ways
        raise InternalizeError(f"{key}='{path}': the saved dataset cannot be read ({type(e).__name__}: "
                               f"{_first_line(e)}); save it again with save_to_disk") from None
    where = str(path)
    if isinstance(dataset, datasets.DatasetDict):
        names = list(dataset)
        if split is None and len(names) == 1:
            split = names[0]
            log.info("%s: using the dataset's only split '%s'", path, split)
        if split is None:
            raise InternalizeError(f"{key}='{path}' is a DatasetDict with splits {', '.join(names)}; name one as "
                                   f"'{path}:{names[0]}'")
        if split not in dataset:
            raise InternalizeError(f"{key}='{path}:{split}': no split '{split}'; the splits are {', '.join(names)}")
        dataset, where = dataset[split], f"{path}:{split}"
    elif split is not None:
        raise InternalizeError(f"{key}='{path}:{split}': '{path}' is a single dataset, not a DatasetDict with splits; "
                               f"give '{path}'")
    return _rows(dataset.column_names, dataset.to_list(), where, input_column, output_column)


def _rows(columns: list[str], rows: list[dict[str, Any]], where: str, input_column: str,
          output_column: str) -> list[Record]:
    """Records of a table (Parquet, a dataset): errors name ``where`` and the row, counted from 1."""
    _no_clash(columns, input_column, output_column, where)
    _need_column(columns, input_column, where)
    return [_row(row, f"{where}: row {i}", input_column, output_column) for i, row in enumerate(rows, start=1)]


def _need_column(columns: list[str], input_column: str, where: str) -> None:
    if input_column not in columns:
        present = ", ".join(f"'{c}'" for c in columns) or "none"
        raise InternalizeError(f"{where}: no column '{input_column}' for the inputs (data.input_column); the columns "
                               f"are {present}; set data.input_column to the one that holds the inputs")


def _no_clash(columns: list[str], input_column: str, output_column: str, where: str) -> None:
    """A renamed column may not meet a column already named ``input`` / ``output``."""
    for column, name, setting in ((input_column, "input", "input_column"), (output_column, "output", "output_column")):
        if column != name and column in columns and name in columns:
            raise InternalizeError(f"{where}: both '{column}' (data.{setting}) and '{name}' are columns, and "
                                   f"'{column}' is read as '{name}'; rename or drop one")


def _row(row: dict[str, Any], where: str, input_column: str, output_column: str) -> Record:
    value = row[input_column]
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InternalizeError(f"{where}: the input ('{input_column}') is empty; give every row an input or "
                               "drop the row")
    if not isinstance(value, str):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise InternalizeError(f"{where}: the input ('{input_column}') is {type(value).__name__} {shown}, not "
                               "text; store the inputs as strings")
    return _renamed(row, input_column, output_column)


def _renamed(record: Record, input_column: str, output_column: str) -> Record:
    """``record`` with ``input_column`` as ``"input"`` (first) and ``output_column`` as ``"output"``."""
    out = {"input": record[input_column], **{k: v for k, v in record.items() if k != input_column}}
    if output_column != "output" and output_column in out:
        out["output"] = out.pop(output_column)
    return out


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` (parents created) through a temporary file: a reader never sees half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_jsonl(path: str | Path, records: Iterable[Record]) -> str:
    """Write one JSON object per line (``write_atomic``); returns the path as a string, for a config."""
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return str(path)


def _check(record: Any, where: str, column: str = "input") -> Record:
    if isinstance(record, str):
        record = {column: record}
    if not isinstance(record, dict) or not isinstance(record.get(column), str) or not record[column].strip():
        raise InternalizeError(f"{where}: a record needs a non-empty string field '{column}', e.g. "
                               f"{{\"{column}\": \"...\"}}")
    return record


def read_inputs(behaviour: BehaviourConfig, cfg: DataConfig | None = None) -> tuple[list[Record], list[Record]]:
    """Parse a behaviour's (train, held-out) records as given, before any split (files: ``read_records``, with
    ``cfg``'s ``input_column`` and ``output_column``)."""
    columns = (cfg.input_column, cfg.output_column) if cfg is not None else ("input", "output")
    if behaviour.train_file:
        train = read_records(behaviour.train_file, behaviour.key("train_file"), *columns)
    else:
        train = [_check(r, f"{behaviour.key('inputs')}[{i}]") for i, r in enumerate(behaviour.inputs)]
    if behaviour.eval_file:
        held_out = read_records(behaviour.eval_file, behaviour.key("eval_file"), *columns)
    else:
        held_out = [_check(r, f"{behaviour.key('eval_inputs')}[{i}]") for i, r in enumerate(behaviour.eval_inputs)]
    return train, held_out


def split_inputs(cfg: DataConfig, train: list[Record], held_out: list[Record],
                 behaviour: BehaviourConfig) -> tuple[list[Record], list[Record]]:
    """Without a held-out set, split ``num_eval`` off the training inputs at random (seeded)."""
    key = behaviour.key
    if not train:
        raise InternalizeError(f"no training inputs: set {key('train_file')} (JSONL, CSV, Parquet or a saved "
                               f"dataset), {key('inputs')} (a list) "
                               "or data.synthesize (seeds for model-written inputs)")
    if not held_out and cfg.num_eval:
        if cfg.num_eval >= len(train):
            raise InternalizeError(f"data.num_eval={cfg.num_eval} leaves no training inputs out of {len(train)}; "
                                   f"lower it or add {key('eval_file')}")
        shuffled = train[:]
        random.Random(cfg.seed).shuffle(shuffled)
        held_out, train = shuffled[: cfg.num_eval], shuffled[cfg.num_eval :]
    if not held_out:
        raise InternalizeError(f"no held-out inputs: set {key('eval_file')}, {key('eval_inputs')} or data.num_eval > 0")
    if cfg.max_train:
        train = train[: cfg.max_train]
    return train, held_out


def load_inputs(behaviour: BehaviourConfig, cfg: DataConfig) -> tuple[list[Record], list[Record]]:
    """Return (train, held-out) records. Without a held-out set, ``num_eval`` are split off at random."""
    return split_inputs(cfg, *read_inputs(behaviour, cfg), behaviour)


def uses_synthesis(behaviours: list[BehaviourConfig], cfg: DataConfig) -> bool:
    """True when training inputs are to be written by the model: one behaviour, no file or inline inputs."""
    return len(behaviours) == 1 and not (behaviours[0].train_file or behaviours[0].inputs) and cfg.synthesize.enabled
