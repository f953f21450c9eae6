"""The log journal: a record written is never lost, and never appears twice in the log.

A "crash" is simulated in process: a writer's segments are left on disk and its locks dropped
(``_crash``), as the kernel does when a worker is killed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from features import decision_log, journal
from serving.logwriter import LogWriter
from tests.unit.test_decide_batch import logged_batch_columns

T0 = datetime(2026, 11, 23, 23, 59, 58, tzinfo=UTC)
SCHEMA = decision_log.DECISION_SCHEMA


def _row(i: int, at: datetime = T0) -> dict[str, Any]:
    return {"decision_id": f"d{i}", "customer_id": "C", "decided_at": at, "action": "none",
            "propensity": 1.0, "f_bookings_7d": None}  # fmt: skip


def _journal_with(folder: Path, rows: list[Mapping[str, Any]]) -> journal.Segment:
    """A segment holding ``rows``, as a writer leaves it; closed and unlocked (its writer died)."""
    jr = journal.Journal(folder)
    for row in rows:
        jr.write(journal.encode_row(row))
    [segment] = jr.rotate()
    os.close(segment.fd)  # the kernel drops a dead process's locks with its descriptors
    return segment


def _ids(folder: Path) -> list[str]:
    return decision_log.read_decisions(folder)["decision_id"].tolist()


def test_records_written_but_no_part_are_recovered_by_the_next_writer(tmp_path: Path) -> None:
    segment = _journal_with(tmp_path, [_row(i) for i in range(5)])
    assert not list(tmp_path.glob("date=*"))  # nothing in Parquet yet: the writer died first
    writer = LogWriter(tmp_path, SCHEMA, "decided_at", flush_seconds=30)  # start-up recovers
    assert not segment.path.exists()
    assert len(list(tmp_path.glob("date=*/part-*.parquet"))) == 1
    writer.append(_row(5))
    writer.close()
    assert sorted(_ids(tmp_path)) == [f"d{i}" for i in range(6)]


def test_a_part_written_before_the_crash_is_not_written_twice(tmp_path: Path) -> None:
    # The segment spans two UTC days; the writer wrote the first day's part, then died before
    # the second day's part and before deleting the segment.
    rows = [
        _row(0),
        _row(1),
        _row(2, T0 + timedelta(seconds=5)),
        _row(3, T0 + timedelta(seconds=6)),
    ]
    segment = _journal_with(tmp_path, rows)
    table = journal.decode(segment.path, SCHEMA)
    first_day = table.slice(0, 2)
    tag = segment.path.name.removesuffix(journal.SUFFIX)
    [written] = decision_log.write_table(tmp_path, first_day, "decided_at", tag=tag)
    before = written.stat().st_ino
    assert journal.recover(tmp_path, SCHEMA, "decided_at") == 4
    assert written.stat().st_ino == before  # the day already in Parquet was not written again
    assert not segment.path.exists()
    ids = _ids(tmp_path)  # read_log recovers too: nothing left to do
    assert sorted(ids) == ["d0", "d1", "d2", "d3"]
    assert len(list(tmp_path.glob("date=*/part-*.parquet"))) == 2


def test_a_live_writers_segment_is_left_to_it(tmp_path: Path) -> None:
    writer = LogWriter(tmp_path, SCHEMA, "decided_at", flush_seconds=30)
    writer.append(_row(1))
    # A reader (or a second worker starting) must not turn a live segment into parts: its
    # writer would write them again.
    assert journal.recover(tmp_path, SCHEMA, "decided_at") == 0
    assert _ids(tmp_path) == []
    writer.close()
    assert _ids(tmp_path) == ["d1"]


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    segment = _journal_with(tmp_path, [_row(1), _row(2)])
    with open(segment.path, "ab") as handle:
        handle.write(journal.encode_row(_row(3))[:40])  # the write a crash interrupted
    assert journal.recover(tmp_path, SCHEMA, "decided_at") == 2
    assert sorted(_ids(tmp_path)) == ["d1", "d2"]


def test_sigkill_after_append_loses_nothing(tmp_path: Path) -> None:
    """A real process appends, is SIGKILLed before any flush; the reader finds every row."""
    script = textwrap.dedent(f"""
        import os, signal
        from datetime import datetime, UTC
        from pathlib import Path
        from features import decision_log
        from serving.logwriter import LogWriter
        writer = LogWriter(Path({str(tmp_path)!r}), decision_log.DECISION_SCHEMA, "decided_at",
                           flush_seconds=3600)
        for i in range(200):
            writer.append({{"decision_id": f"d{{i}}", "customer_id": "C",
                           "decided_at": datetime.now(UTC), "action": "none"}})
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", script], env=env, timeout=120, check=False)
    assert done.returncode == -9
    ids = _ids(tmp_path)
    assert len(ids) == 200 and len(set(ids)) == 200


def test_a_batch_through_the_journal_writes_what_columns_table_writes(tmp_path: Path) -> None:
    chunk, n = logged_batch_columns()
    writer = LogWriter(tmp_path / "log", SCHEMA, "decided_at", flush_seconds=30)
    writer.append_columns(chunk, n)
    writer.append(_row(9, datetime.now(UTC)))
    writer.close()
    got = decision_log.read_decisions(tmp_path / "log").iloc[:n]
    want = decision_log.columns_table(chunk, n, SCHEMA).to_pandas()
    assert got.columns.tolist() == want.columns.tolist()
    for name in want.columns:
        a, b = got[name], want[name]
        if pa.types.is_floating(SCHEMA.field(name).type):
            assert np.allclose(a.astype(float), b.astype(float), equal_nan=True), name
        else:
            assert a.isna().tolist() == b.isna().tolist(), name
            assert a[a.notna()].tolist() == b[b.notna()].tolist(), name


def test_a_refused_write_raises_and_the_next_record_starts_a_new_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = LogWriter(tmp_path, SCHEMA, "decided_at", flush_seconds=30)
    writer.append(_row(1))
    real = os.write

    def full(fd: int, data: Any) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="space"):  # the decision is not answered
        writer.append(_row(2))
    monkeypatch.setattr(os, "write", real)
    writer.append(_row(3))
    writer.close()
    assert sorted(_ids(tmp_path)) == ["d1", "d3"]
