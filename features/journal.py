"""The crash-safe journal in front of a Parquet log: answered means the OS has the record.

A log folder (decisions, events) has a ``_journal/`` subfolder of *segments*: files of
newline-separated JSON records (orjson), each written with one ``write(2)`` to a file opened
with ``O_APPEND``. Once ``write`` returns, the record is in the kernel's page cache: a killed
process (SIGKILL, OOM kill, a crash) loses nothing it has written; a power loss can lose the
last seconds unless ``fsync`` is set (one ``fdatasync`` per record, a few milliseconds on most
disks, off by default).

A record is one row (``{"r": {...}}``) or a batch of rows as columns (``{"c": {...}, "n":
n}``; a numeric column is its bytes in base64 with a packed null mask, see ``encode_columns``).
A line that does not parse (the one being written when a disk filled up, or a power loss hit)
is skipped on reading: its answer was never sent.

The Parquet log (``features.decision_log``) is derived from the segments and is what readers
read. The segment/offset scheme, which makes the derivation exactly-once:

* a writer appends to its own segment, named ``<pid>-<random>-<seq>.jsonl`` (several workers
  never share one), and holds an exclusive ``flock`` on it from creation until it deletes it;
* every flush interval it *rotates* (later records go to a new segment), turns the closed
  segment into Parquet parts named after the segment (``part-<first>-<segment>.parquet``, one
  per UTC day; written to a temporary name, fsynced, renamed, folder fsynced) and only then
  deletes the segment;
* a segment whose lock can be taken has no live writer (the kernel drops a dead process's
  locks): whoever takes it (a starting writer, or a reader) *recovers* it the same way. A day
  whose part of that segment already exists is skipped, so a crash between writing the part
  and deleting the segment produces no duplicate, and a crash between two days' parts loses
  no day.

Replaces nothing off the shelf: a write-ahead log library (or SQLite in WAL mode) would add a
dependency and a per-record transaction, where one ``write(2)`` is all the guarantee needs.
Locks are ``flock``: a local file system (NFS emulates them with ``fcntl`` locks).
"""

from __future__ import annotations

import base64
import fcntl
import logging
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa

logger = logging.getLogger(__name__)

#: The journal subfolder of a log folder (not a ``date=`` folder: readers of parts skip it).
JOURNAL_DIR: Final = "_journal"
SUFFIX: Final = ".jsonl"
_OPTIONS: Final = orjson.OPT_SERIALIZE_NUMPY


def _default(value: Any) -> Any:
    # pandas.Timestamp and numpy scalars orjson does not know natively.
    if isinstance(value, pd.Timestamp | datetime):
        return value.isoformat()
    if isinstance(value, np.ndarray):  # orjson takes only C-contiguous numeric arrays
        return np.ascontiguousarray(value) if value.dtype.kind in "biuf" else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"journal: cannot encode {type(value).__name__}")


def encode_row(row: Mapping[str, Any]) -> bytes:
    """One row as a journal line."""
    return orjson.dumps({"r": row}, default=_default, option=_OPTIONS) + b"\n"


def encode_columns(columns: Mapping[str, Any], n: int) -> bytes:
    """``n`` rows given as columns (``decision_log.columns_table``'s forms) as one journal line.

    Numeric and boolean arrays are stored as their bytes in base64 (``{"a": ..., "d": dtype,
    "m": packed null mask}``): 10,000 decisions' numeric columns took 53 ms as JSON numbers and
    take about 4 ms so, on the request path of ``/decide_batch``.
    """
    plain: dict[str, Any] = {}
    for name, column in columns.items():
        values, nulls = column if isinstance(column, tuple) else (column, None)
        if isinstance(values, np.ndarray) and values.dtype.kind in "biuf":
            array = np.ascontiguousarray(values)
            coded: dict[str, Any] = {"a": _b64(array), "d": array.dtype.str}
            if nulls is not None:
                coded["m"] = _b64(np.packbits(np.asarray(nulls, dtype=bool)))
            plain[name] = coded
        elif nulls is not None:
            plain[name] = {"v": values, "m": nulls}
        else:
            plain[name] = values
    return orjson.dumps({"c": plain, "n": n}, default=_default, option=_OPTIONS) + b"\n"


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(array.tobytes()).decode("ascii")


def _decode_column(coded: Any, n: int, is_float: bool) -> Any:
    if not isinstance(coded, dict):
        return coded
    if "a" in coded:
        values = np.frombuffer(base64.b64decode(coded["a"]), dtype=np.dtype(coded["d"]))
    else:  # JSON numbers: NaN came back as null
        values = np.asarray(coded["v"], dtype=float if is_float else None)
    if "m" not in coded:
        return values
    if isinstance(coded["m"], str):
        packed = np.frombuffer(base64.b64decode(coded["m"]), dtype=np.uint8)
        nulls = np.unpackbits(packed, count=n).astype(bool)
    else:
        nulls = np.asarray(coded["m"], dtype=bool)
    return values, nulls


@dataclass
class Segment:
    """An open or closed segment of this process, locked until deleted."""

    path: Path
    fd: int


class Journal:
    """One writer's segments in ``<folder>/_journal`` (not thread-safe: the caller locks)."""

    def __init__(self, folder: Path, fsync: bool = False) -> None:
        self.folder = folder / JOURNAL_DIR
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self._prefix = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._seq = 0
        self.current: Segment | None = None
        self._closed: list[Segment] = []  # closed by a failed write, not yet taken by rotate

    def write(self, line: bytes) -> None:
        """Append one record (a whole line) with ``write(2)``; raises if the OS refuses it.

        A failed or short write closes the segment, so that a partial line stays at the end
        of that segment (skipped on decoding) and the next record starts a new one.
        """
        if self.current is None:
            self.current = self._open()
        fd = self.current.fd
        try:
            view = memoryview(line)
            while view:  # a regular file takes it all at once unless the disk is full
                written = os.write(fd, view)
                view = view[written:]
            if self.fsync:
                os.fdatasync(fd)
        except BaseException:
            self._closed.append(self.current)
            self.current = None
            raise

    def rotate(self) -> list[Segment]:
        """Close the current segment (still locked); every closed segment, oldest first.

        The next write opens a new segment.
        """
        segments, self._closed = self._closed, []
        if self.current is not None:
            segments.append(self.current)
            self.current = None
        return segments

    def _open(self) -> Segment:
        self._seq += 1
        path = self.folder / f"{self._prefix}-{self._seq:06d}{SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh name: never contended
        if self.fsync:  # the segment's name must survive a power loss too
            _fsync_dir(self.folder)
        return Segment(path, fd)


def decode(path: Path, arrow_schema: pa.Schema) -> pa.Table:
    """The rows of a segment as a table of ``arrow_schema`` (a torn last line is skipped)."""
    from features.decision_log import columns_table, rows_table

    tables: list[pa.Table] = []
    rows: list[dict[str, Any]] = []
    stamps = [f.name for f in arrow_schema if pa.types.is_timestamp(f.type)]
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                # Only the record being written when the writer died (or a full disk) can be
                # torn; its answer was never sent.
                logger.warning("journal %s: line %d is not a whole record: skipped", path, number)
                continue
            if "r" in record:
                row = record["r"]
                for name in stamps:
                    if row.get(name) is not None:
                        row[name] = datetime.fromisoformat(row[name])
                rows.append(row)
                continue
            if rows:
                tables.append(rows_table(rows, arrow_schema))
                rows = []
            n = record["n"]
            columns = {name: _decode_column(coded, n, _is_float(arrow_schema, name))
                       for name, coded in record["c"].items()}  # fmt: skip
            for name in stamps:
                if columns.get(name) is not None:
                    columns[name] = [datetime.fromisoformat(v) for v in columns[name]]
            tables.append(columns_table(columns, n, arrow_schema))
    if rows:
        tables.append(rows_table(rows, arrow_schema))
    if not tables:
        return arrow_schema.empty_table()
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


def _is_float(arrow_schema: pa.Schema, name: str) -> bool:
    # JSON writes NaN as null: a float column's masked values come back as None (NaN here).
    return pa.types.is_floating(arrow_schema.field(name).type)


def to_parts(segment: Segment, log_folder: Path, arrow_schema: pa.Schema, time_column: str) -> int:
    """Turn a locked segment into Parquet parts, then delete it (and unlock); the rows written.

    Days whose part of this segment already exists are skipped (exactly once after a crash).
    """
    from features.decision_log import write_table

    table = decode(segment.path, arrow_schema)
    tag = segment.path.name.removesuffix(SUFFIX)
    write_table(log_folder, table, time_column, tag=tag, skip_existing=True, durable=True)
    segment.path.unlink()
    _fsync_dir(segment.path.parent)
    os.close(segment.fd)
    return int(table.num_rows)


def recover(log_folder: Path, arrow_schema: pa.Schema, time_column: str) -> int:
    """Turn every segment without a live writer into parts; the number of rows recovered."""
    folder = log_folder / JOURNAL_DIR
    if not folder.is_dir():
        return 0
    recovered = 0
    for path in sorted(folder.glob(f"*{SUFFIX}")):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # turned into parts meanwhile
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # its writer is alive and will write it
            os.close(fd)
            continue
        try:
            # Another recoverer may have finished it between our open and our lock.
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                raise FileNotFoundError(path)
        except FileNotFoundError:
            os.close(fd)
            continue
        try:
            rows = to_parts(Segment(path, fd), log_folder, arrow_schema, time_column)
        except Exception:
            os.close(fd)
            raise
        recovered += rows
        logger.warning("recovered %d log rows from the journal segment %s", rows, path.name)
    return recovered


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
