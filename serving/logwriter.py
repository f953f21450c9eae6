"""Appends decision-log and event rows to Parquet off the request path, losing nothing.

The request thread only appends a dict to a list under a lock (about a microsecond), or for a
batch one set of columns (``append_columns``: no Python object per row and value). A background
thread takes the list every ``flush_seconds`` (sooner once ``max_rows`` rows wait) and writes
one Parquet part per flush (``features.decision_log.write_table``: temporary name, then rename,
so readers never see half a file); it is not woken per row. ``close`` (called from the
service's shutdown hook, which runs on SIGTERM) stops accepting rows, takes everything appended
before it and writes it before returning. A failed write is
retried at the next flush with the same rows, and reported in the log; rows are never dropped
silently.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from features.decision_log import columns_table, rows_table, write_table

logger = logging.getLogger(__name__)


class LogWriter:
    """A background Parquet appender for one log folder."""

    def __init__(
        self,
        folder: Path,
        arrow_schema: pa.Schema,
        time_column: str,
        flush_seconds: float = 5.0,
        max_rows: int = 50_000,
    ) -> None:
        self.folder = folder
        self.schema = arrow_schema
        self.time_column = time_column
        self.flush_seconds = flush_seconds
        self.max_rows = max_rows
        # The request threads append to ``_buffer`` under ``_lock``; the writer thread swaps it
        # out once per interval. (A queue woke the writer for every row: the two threads then
        # traded the GIL on every request, ~13 % of a worker's samples under load.)
        self._lock = threading.Lock()
        self._buffer: list[Mapping[str, Any] | _Chunk] = []
        self._buffer_rows = 0
        self._wake = threading.Event()
        self._stopping = False
        # Rows (dicts) and column chunks taken from the buffer, in arrival order, until written.
        self._pending: list[Mapping[str, Any] | _Chunk] = []
        self._pending_rows = 0
        self._seq = 0
        self._closed = False
        self.written = 0
        self._thread = threading.Thread(target=self._run, name=f"log-{folder.name}", daemon=True)
        self._thread.start()

    def append(self, row: Mapping[str, Any]) -> None:
        """Queue one row (never blocks, never raises on the request path once open)."""
        self._put(row, 1)

    def append_columns(self, columns: Mapping[str, Any], n: int) -> None:
        """Queue ``n`` rows given as columns (``features.decision_log.columns_table``)."""
        self._put(_Chunk(columns, n), n)

    def _put(self, item: Mapping[str, Any] | _Chunk, rows: int) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"log writer for {self.folder} is closed")
            self._buffer.append(item)
            self._buffer_rows += rows
            full = self._buffer_rows >= self.max_rows
        if full:  # a burst: write now rather than hold many rows until the interval ends
            self._wake.set()

    def _run(self) -> None:
        # One part per flush interval (or per max_rows), not per row; after close, one last
        # swap takes everything appended before it.
        while True:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            with self._lock:
                items, self._buffer = self._buffer, []
                rows, self._buffer_rows = self._buffer_rows, 0
                stop = self._stopping
            self._pending += items
            self._pending_rows += rows
            self._flush()
            if stop:
                return

    def _flush(self) -> None:
        if not self._pending:
            return
        self._seq += 1
        try:
            table = self._table(self._pending)
            write_table(self.folder, table, self.time_column, self._seq)
        except Exception:  # keep the rows and try again at the next flush
            logger.exception("could not write %d log rows to %s", self._pending_rows, self.folder)
            return
        self.written += self._pending_rows
        self._pending = []
        self._pending_rows = 0

    def _table(self, items: list[Mapping[str, Any] | _Chunk]) -> pa.Table:
        """One table of everything pending, in arrival order (runs of rows become one table)."""
        tables: list[pa.Table] = []
        rows: list[Mapping[str, Any]] = []
        for item in items:
            if isinstance(item, _Chunk):
                if rows:
                    tables.append(rows_table(rows, self.schema))
                    rows = []
                tables.append(columns_table(item.columns, item.n, self.schema))
            else:
                rows.append(item)
        if rows:
            tables.append(rows_table(rows, self.schema))
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables)

    def close(self, timeout: float = 30.0) -> None:
        """Stop accepting rows, write everything queued, and wait for the writer thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        if self._pending:  # the last write failed: one more try from this thread
            self._flush()
        if self._pending:
            logger.error("%d log rows for %s could not be written", self._pending_rows, self.folder)


class _Chunk:
    """Rows queued as columns (one batch's decisions)."""

    __slots__ = ("columns", "n")

    def __init__(self, columns: Mapping[str, Any], n: int) -> None:
        self.columns = columns
        self.n = n
