"""Read rows from JSONL / JSON / Parquet files, folders of them, saved `datasets` folders or `datasets` objects.

A line that is not JSON does not stop the read: it becomes a :class:`RowError` (file and line named), is
logged, and is appended to ``errors`` when the caller passes a list, so the rest of the file still loads.
Bytes that are not UTF-8 are decoded with replacement characters; ``clean_rows`` then drops those rows as
``bad_encoding`` and counts them.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

from datapipe.rows import Row, RowError

log = logging.getLogger(__name__)

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
TABLE_SUFFIXES = (".jsonl", ".json", ".parquet")


def resolve_source(spec: str | os.PathLike) -> Path:
    """``samples:NAME`` -> the file shipped in datapipe/samples; anything else is a path."""
    s = str(spec)
    if s.startswith("samples:"):
        p = SAMPLES_DIR / s.removeprefix("samples:")
        if not p.exists():
            known = sorted(q.name for q in SAMPLES_DIR.iterdir() if q.suffix in TABLE_SUFFIXES)
            raise FileNotFoundError(f"no sample dataset {s!r}; shipped samples: {['samples:' + k for k in known]}")
        return p
    p = Path(s).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"dataset {s!r} does not exist (looked at {p.resolve()}); give a .jsonl/.json/.parquet "
                                "file, a folder of them, a folder written by datasets' save_to_disk, or samples:NAME")
    return p


def read_rows(path_or_dataset: Any, errors: list[RowError] | None = None, limit: int | None = None) -> list[Row]:
    """All rows of a file, folder, ``samples:NAME``, ``datasets.Dataset`` or list of dicts, as :class:`Row`s."""
    rows = list(_iter_rows(path_or_dataset, errors))
    return rows[:limit] if limit is not None else rows


def _iter_rows(src: Any, errors: list[RowError] | None) -> Iterable[Row]:
    if isinstance(src, (str, os.PathLike)):
        path = resolve_source(src)
        if path.is_dir():
            yield from _read_dir(path, errors)
        else:
            yield from _read_file(path, errors)
        return
    if isinstance(src, list):
        for i, r in enumerate(src):
            row = r if isinstance(r, Row) else _as_row(r, "<list>", i, None, errors)
            if row is not None:
                yield row
        return
    import datasets

    if isinstance(src, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise ValueError(f"got a DatasetDict with splits {list(src)}; pass one split, e.g. ds['train']")
    if isinstance(src, (datasets.Dataset, datasets.IterableDataset)):
        name = (getattr(src, "info", None) and src.info.dataset_name) or "dataset"
        for i, r in enumerate(src):
            yield Row(r, name, i)
        return
    raise TypeError(f"cannot read rows from {type(src).__name__}; pass a path, 'samples:NAME', a datasets.Dataset "
                    "or a list of dicts")


def _read_dir(path: Path, errors) -> Iterable[Row]:
    if (path / "dataset_info.json").exists() or (path / "state.json").exists():
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            raise ValueError(f"{path} holds a DatasetDict with splits {list(ds)}; point at one split's folder")
        for i, r in enumerate(ds):
            yield Row(r, str(path), i)
        return
    files = sorted(p for p in path.iterdir() if p.suffix in TABLE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"folder {path} has no .jsonl/.json/.parquet files and is not a saved dataset")
    for f in files:
        yield from _read_file(f, errors)


def _display(path: Path) -> str:
    """The path as the user would type it: relative to the working directory when it lies under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _read_file(path: Path, errors) -> Iterable[Row]:
    name = _display(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, r in enumerate(pq.read_table(path).to_pylist()):
            yield Row(r, name, i)
        return
    if path.suffix not in (".jsonl", ".json"):
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl, .json or .parquet")
    raw = path.read_bytes()
    if path.suffix == ".json" and raw.lstrip()[:1] == b"[":
        try:
            data = json.loads(raw.decode("utf-8", errors="replace"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}); fix the file or write it as JSON lines") from None
        for i, r in enumerate(data):
            row = _as_row(r, name, i, None, errors)
            if row is not None:
                yield row
        return
    index = 0
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        text = line.decode("utf-8", errors="replace")
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            _report(RowError(f"{name} line {lineno}", f"not valid JSON ({e.msg} at column {e.colno})"), errors)
            index += 1
            continue
        row = _as_row(obj, name, index, lineno, errors)
        index += 1
        if row is not None:
            yield row


def _as_row(obj: Any, source: str, index: int, line: int | None, errors) -> Row | None:
    if isinstance(obj, dict):
        return Row(obj, source, index, line)
    where = f"{source} line {line}" if line is not None else f"{source} row {index}"
    _report(RowError(where, f"expected a JSON object, got {type(obj).__name__}"), errors)
    return None


def _report(err: RowError, errors: list[RowError] | None) -> None:
    if errors is not None:
        errors.append(err)
    else:
        log.warning("skipping unusable row: %s", err)
