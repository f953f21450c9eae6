"""A window of the decision log, and which columns its files really hold.

``features.decision_log.read_decisions`` fills columns absent from older files with nulls, so
that a reader never breaks on schema growth; ``nba drift`` must tell "no value" from "not
logged", so it also reads the Parquet footers of the same files (no data) to list the columns
they hold. The folder layout is the decision log's (``<dir>/date=YYYY-MM-DD/part-*.parquet``).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from features.decision_log import read_decisions


def window_files(folder: Path, start: datetime, end: datetime) -> list[Path]:
    """The log's part files whose day folder overlaps ``[start, end)`` (UTC days)."""
    if not folder.is_dir():
        return []
    lo = f"date={pd.Timestamp(start).tz_convert('UTC'):%Y-%m-%d}"
    hi = f"date={pd.Timestamp(end).tz_convert('UTC'):%Y-%m-%d}"
    days = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("date="))
    return [f for day in days if lo <= day.name <= hi for f in sorted(day.glob("part-*.parquet"))]


def read_window(folder: Path, start: datetime, end: datetime) -> tuple[pd.DataFrame, set[str]]:
    """Decision-log rows with ``start <= decided_at < end``, and the columns present in at least
    one of the window's files."""
    present: set[str] = set()
    for part in window_files(folder, start, end):
        present.update(pq.read_schema(part).names)
    return read_decisions(folder, start, end), present
