"""Appends decision-log and event rows to Parquet off the request path, losing nothing.

The request thread only puts a dict on a queue (about a microsecond), or for a batch one set of
columns (``append_columns``: no Python object per row and value). A background thread
drains the queue every ``flush_seconds`` or ``max_rows`` rows and writes one Parquet part per
flush (``features.decision_log.write_part``: temporary name, then rename, so readers never see
half a file). ``close`` (called from the service's shutdown hook, which runs on SIGTERM) stops
accepting rows, drains everything queued and writes it before returning. A failed write is
retried at the next flush with the same rows, and reported in the log; rows are never dropped
silently.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from features.decision_log import columns_table, rows_table, write_table

logger = logging.getLogger(__name__)

_STOP = object()


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
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Rows (dicts) and column chunks, in arrival order.
        self._pending: list[Mapping[str, Any] | _Chunk] = []
        self._pending_rows = 0
        self._seq = 0
        self._closed = False
        self.written = 0
        self._thread = threading.Thread(target=self._run, name=f"log-{folder.name}", daemon=True)
        self._thread.start()

    def append(self, row: Mapping[str, Any]) -> None:
        """Queue one row (never blocks, never raises on the request path once open)."""
        if self._closed:
            raise RuntimeError(f"log writer for {self.folder} is closed")
        self._queue.put(row)

    def append_columns(self, columns: Mapping[str, Any], n: int) -> None:
        """Queue ``n`` rows given as columns (``features.decision_log.columns_table``)."""
        if self._closed:
            raise RuntimeError(f"log writer for {self.folder} is closed")
        self._queue.put(_Chunk(columns, n))

    def _add(self, item: Mapping[str, Any] | _Chunk) -> None:
        self._pending.append(item)
        self._pending_rows += item.n if isinstance(item, _Chunk) else 1

    def _run(self) -> None:
        # Collect rows until the flush deadline (or max_rows, or the stop marker), then write
        # them as one part: one file per flush interval, not per row.
        stop = False
        while not stop:
            deadline = time.monotonic() + self.flush_seconds
            while not stop:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                self._add(item)
                if self._pending_rows >= self.max_rows:
                    self._flush()
            # Whatever is queued behind the stop marker or the deadline goes in this flush.
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                else:
                    self._add(item)
            self._flush()

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
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
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
