"""Records decision-log and event rows durably before they are acknowledged, losing nothing.

The request thread encodes its row (or, for a batch, one set of columns: ``append_columns``)
with orjson and appends it to this process's journal segment with one ``write(2)`` before the
answer is sent (``features.journal``): once ``append`` returns, a SIGKILL of the worker loses
nothing. There is no fsync per record unless ``fsync`` is set (a power loss can then lose the
last seconds; a process crash cannot).

A background thread rotates the segment every ``flush_seconds`` (sooner once ``max_rows`` rows
wait) and turns the closed segment into one Parquet part per UTC day
(``features.journal.to_parts``), then deletes it: the journal is the source of truth and the
Parquet log is derived from it, so the rows are not also kept in memory. At start-up the
writer recovers the segments of dead writers (a killed worker's). ``close`` (the service's
shutdown hook, run on SIGTERM) stops accepting rows and writes every segment before
returning. A failed conversion is retried at the next flush and reported; the segment stays
on disk meanwhile, so rows are never dropped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from features.journal import Journal, Segment, encode_columns, encode_row, recover, to_parts

logger = logging.getLogger(__name__)


class LogWriter:
    """A journal-backed Parquet appender for one log folder."""

    def __init__(
        self,
        folder: Path,
        arrow_schema: pa.Schema,
        time_column: str,
        flush_seconds: float = 5.0,
        max_rows: int = 50_000,
        fsync: bool = False,
    ) -> None:
        self.folder = folder
        self.schema = arrow_schema
        self.time_column = time_column
        self.flush_seconds = flush_seconds
        self.max_rows = max_rows
        # Segments of writers that died (a SIGKILLed worker) become parts before this one
        # writes anything; a segment whose writer lives is locked and left to it.
        recovered = recover(folder, arrow_schema, time_column)
        if recovered:
            logger.warning("%d rows of %s recovered from dead writers' journals", recovered,
                           folder)  # fmt: skip
        self._journal = Journal(folder, fsync)
        # The request threads write under ``_lock``; the writer thread takes it only to rotate
        # (it is not woken per row: a per-row wake-up traded the GIL on every request).
        self._lock = threading.Lock()
        self._rows = 0  # rows in the current segment
        self._wake = threading.Event()
        self._stopping = False
        # Closed segments whose parts are not written yet (a failed write is retried).
        self._pending: list[Segment] = []
        self._closed = False
        self.written = 0
        self._thread = threading.Thread(target=self._run, name=f"log-{folder.name}", daemon=True)
        self._thread.start()

    def append(self, row: Mapping[str, Any]) -> None:
        """Record one row in the journal; raises if the OS refuses it (nothing is answered)."""
        self._put(encode_row(row), 1)

    def append_columns(self, columns: Mapping[str, Any], n: int) -> None:
        """Record ``n`` rows given as columns (``features.decision_log.columns_table``)."""
        self._put(encode_columns(columns, n), n)

    def _put(self, line: bytes, rows: int) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"log writer for {self.folder} is closed")
            self._journal.write(line)
            self._rows += rows
            full = self._rows >= self.max_rows
        if full:  # a burst: write the part now rather than let the segment grow
            self._wake.set()

    def _run(self) -> None:
        # One part per flush interval (or per max_rows), not per row; after close, one last
        # rotation takes everything appended before it.
        while True:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            with self._lock:
                self._pending += self._journal.rotate()
                self._rows = 0
                stop = self._stopping
            self._flush()
            if stop:
                return

    def _flush(self) -> None:
        while self._pending:
            segment = self._pending[0]
            try:
                self.written += to_parts(segment, self.folder, self.schema, self.time_column)
            except Exception:  # the segment stays (locked, on disk): try again next time
                logger.exception("could not write the log rows of %s to %s", segment.path.name,
                                 self.folder)  # fmt: skip
                return
            self._pending.pop(0)

    def close(self, timeout: float = 30.0) -> None:
        """Stop accepting rows, write every segment as parts, and wait for the writer thread."""
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
            logger.error("%d journal segments of %s not turned into parts (kept on disk, "
                         "recovered at the next start)", len(self._pending),
                         self.folder)  # fmt: skip
