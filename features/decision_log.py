"""The decision log's file format: what the service appends and what monitoring and training read.

Every decision the service makes (``/decide``, ``/decide_batch``) becomes one row. The columns
start with the raw contract's ``actions`` table (so that outcomes joined later retrain the model:
``decision_id, customer_id, decided_at, action, policy, propensity, channel``), followed by:

* ``model_version`` (``nba-uplift/7``; empty when no model was loaded), ``degraded`` and
  ``degraded_reason`` (why the safe action was answered), ``explored`` (exploration drew the
  action; its ``policy`` is then ``random``, as the contract says of exploration), ``candidates``
  (``;``-joined), ``context`` (the request's context as JSON; no PII beyond ``customer_id``),
  ``features_found`` (the online store knew the customer) and ``latency_ms`` (handler time;
  for a batch, the time to decide the whole batch), ``intended_action`` (the action the policy
  chose before the global control group withheld it: equal to ``action`` outside the group, and
  for a member, whose ``policy`` is ``holdout``, the action it would have got; ``none`` when
  degraded; null in logs written before it existed);
* per action ``a``: ``uplift_<a>``, ``value_<a>`` (expected net value), ``eligible_<a>`` and
  ``blocked_by_<a>`` (``;``-joined rule names);
* the feature snapshot: ``f_<name>`` for every ``schema.MODEL_FEATURES`` input, as the model
  saw it (NaN when missing).

Layout: Parquet files under ``<dir>/date=YYYY-MM-DD/`` (UTC day of ``decided_at``), one file per
flush, named ``part-<first decided_at>-<pid>-<seq>.parquet``, so that several processes append
to one folder without coordination and a reader selects days by folder name.

``/events`` records go to their own folder in the same layout (``EVENT_COLUMNS``).

The service writes each row first to the folder's crash-safe journal (``features.journal``)
before answering, and derives the parts from it; ``read_log`` first recovers the journal
segments whose writer is gone, so a reader sees every answered row exactly once.

Pure I/O over pyarrow: no clock, no threads (the service's writer owns those).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features import journal, schema
from features.contract import ACTIONS

logger = logging.getLogger(__name__)

#: The raw contract's ``actions`` columns, first and in contract order.
ACTION_COLUMNS: Final[tuple[str, ...]] = (
    "decision_id",
    "customer_id",
    "decided_at",
    "action",
    "policy",
    "propensity",
    "channel",
)

#: Prefix of the feature snapshot columns.
FEATURE_PREFIX: Final = "f_"

_TS: Final = pa.timestamp("us", tz="UTC")

#: Column -> Arrow type, in file order.
DECISION_SCHEMA: Final = pa.schema(
    [
        ("decision_id", pa.string()),
        ("customer_id", pa.string()),
        ("decided_at", _TS),
        ("action", pa.string()),
        ("policy", pa.string()),
        ("propensity", pa.float64()),
        ("channel", pa.string()),
        ("model_version", pa.string()),
        ("degraded", pa.bool_()),
        ("degraded_reason", pa.string()),
        ("explored", pa.bool_()),
        ("candidates", pa.string()),
        ("context", pa.string()),
        ("features_found", pa.bool_()),
        ("latency_ms", pa.float64()),
        ("intended_action", pa.string()),
        *[(f"uplift_{a}", pa.float64()) for a in ACTIONS],
        *[(f"value_{a}", pa.float64()) for a in ACTIONS],
        *[(f"eligible_{a}", pa.bool_()) for a in ACTIONS],
        *[(f"blocked_by_{a}", pa.string()) for a in ACTIONS],
        *[(FEATURE_PREFIX + name, pa.float64()) for name in schema.MODEL_FEATURES],
    ]
)

#: ``/events`` records: the event's fields as the service received them.
EVENT_SCHEMA: Final = pa.schema(
    [
        ("event_id", pa.string()),
        ("customer_id", pa.string()),
        ("type", pa.string()),
        ("ts", _TS),
        ("received_at", _TS),
        ("payload", pa.string()),  # the remaining fields as JSON
    ]
)


def _utc(moment: datetime | pd.Timestamp) -> pd.Timestamp:
    stamp = pd.Timestamp(moment)
    if stamp.tzinfo is None:
        raise ValueError(f"decision log: bound {moment!r} needs a time zone (UTC)")
    return stamp.tz_convert("UTC")


def _day_folder(moment: datetime | pd.Timestamp) -> str:
    return f"date={_utc(moment).strftime('%Y-%m-%d')}"


def write_part(
    folder: Path, rows: Sequence[Mapping[str, Any]], arrow_schema: pa.Schema, time_column: str,
    seq: int,
) -> list[Path]:  # fmt: skip
    """Append ``rows`` to the log in ``folder`` as new Parquet files (one per UTC day present).

    Missing keys are written as nulls; unknown keys are an error (a typo would lose data
    silently). Files are written under a temporary name and renamed, so a reader never sees a
    half-written file. Returns the files written.
    """
    if not rows:
        return []
    return write_table(folder, rows_table(rows, arrow_schema), time_column, seq)


def rows_table(rows: Sequence[Mapping[str, Any]], arrow_schema: pa.Schema) -> pa.Table:
    """Log rows (dicts) as a table of ``arrow_schema``; an unknown key is an error."""
    known = set(arrow_schema.names)
    for row in rows:
        extra = set(row) - known
        if extra:
            raise ValueError(f"decision log: unknown columns {sorted(extra)}")
    columns = {name: [row.get(name) for row in rows] for name in arrow_schema.names}
    return pa.Table.from_pydict(columns, schema=arrow_schema)


def columns_table(columns: Mapping[str, Any], n: int, arrow_schema: pa.Schema) -> pa.Table:
    """``n`` log rows given as columns, as a table of ``arrow_schema``.

    A column is a list, a numpy array, or ``(array, null_mask)`` (True where the value is
    null: how a batch marks missing features without a Python object per value); a column
    left out is all null; an unknown name is an error.
    """
    extra = set(columns) - set(arrow_schema.names)
    if extra:
        raise ValueError(f"decision log: unknown columns {sorted(extra)}")
    arrays = []
    for field in arrow_schema:
        column = columns.get(field.name)
        if column is None:
            arrays.append(pa.nulls(n, field.type))
        elif isinstance(column, tuple):
            values, nulls = column
            arrays.append(pa.array(values, type=field.type, mask=np.asarray(nulls, dtype=bool)))
        else:
            arrays.append(pa.array(column, type=field.type))
        if len(arrays[-1]) != n:
            raise ValueError(
                f"decision log: column {field.name} has {len(arrays[-1])} rows, not {n}"
            )
    return pa.Table.from_arrays(arrays, schema=arrow_schema)


def column_rows(columns: Mapping[str, Any], n: int) -> list[dict[str, Any]]:
    """``n`` log rows given as columns (see ``columns_table``) as one dict per row."""
    lists: dict[str, list[Any]] = {}
    for name, column in columns.items():
        if isinstance(column, tuple):
            values, nulls = column
            lists[name] = [None if null else value for value, null in
                           zip(np.asarray(values).tolist(), np.asarray(nulls).tolist(),
                               strict=True)]  # fmt: skip
        else:
            lists[name] = column.tolist() if isinstance(column, np.ndarray) else list(column)
    return [{name: values[i] for name, values in lists.items()} for i in range(n)]


def write_table(
    folder: Path,
    table: pa.Table,
    time_column: str,
    seq: int = 0,
    *,
    tag: str | None = None,
    skip_existing: bool = False,
    durable: bool = False,
) -> list[Path]:
    """Append a table of log rows to ``folder`` (``write_part``'s layout and renaming).

    ``tag`` replaces ``<pid>-<seq>`` in the file names (a journal segment's name); with
    ``skip_existing`` a day that already has a part of that tag is not written again (a
    segment recovered after a crash that came between its part and its deletion). ``durable``
    fsyncs each file before and its folder after the rename (the journal segment is deleted
    next: the part must be on disk first).
    """
    if not table.num_rows:
        return []
    stamps = table.column(time_column).cast(pa.timestamp("us", tz="UTC"))
    days = pd.Series(pd.to_datetime(stamps.to_numpy(zero_copy_only=False), utc=True))
    days = days.dt.strftime("%Y-%m-%d")
    written: list[Path] = []
    unique = sorted(days.unique())
    for day in unique:
        part = table if len(unique) == 1 else table.filter(pa.array((days == day).to_numpy()))
        target = folder / f"date={day}"
        if skip_existing and tag is not None and any(target.glob(f"part-*-{tag}.parquet")):
            continue
        first = pd.Timestamp(part.column(time_column)[0].as_py())
        target.mkdir(parents=True, exist_ok=True)
        suffix = tag if tag is not None else f"{os.getpid()}-{seq:06d}"
        name = f"part-{first.strftime('%Y%m%dT%H%M%S%f')}-{suffix}.parquet"
        tmp = target / f".{name}.tmp"
        pq.write_table(part, tmp)
        if durable:
            _fsync(tmp)
        os.replace(tmp, target / name)
        if durable:
            _fsync(target, directory=True)
        written.append(target / name)
    return written


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_log(
    folder: Path,
    arrow_schema: pa.Schema = DECISION_SCHEMA,
    time_column: str = "decided_at",
    start: datetime | None = None,
    end: datetime | None = None,
) -> pd.DataFrame:
    """Rows of the log in ``folder`` with ``start <= time < end`` (either bound optional).

    Days outside the bounds are skipped by folder name. Columns absent from older files come
    back as nulls. An absent or empty folder gives an empty frame with every column.
    """
    if (folder / journal.JOURNAL_DIR).is_dir():
        try:  # segments of a killed writer not yet recovered by a restarted one
            journal.recover(folder, arrow_schema, time_column)
        except OSError as error:  # a read-only copy: read what is in parts
            logger.warning("journal of %s not recovered: %s", folder, error)
    files: list[Path] = []
    if folder.is_dir():
        lo = _day_folder(start) if start is not None else None
        hi = _day_folder(end) if end is not None else None
        for day in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("date=")):
            if (lo and day.name < lo) or (hi and day.name > hi):
                continue
            files.extend(sorted(day.glob("part-*.parquet")))
    if not files:
        return arrow_schema.empty_table().to_pandas()
    tables = [pq.read_table(f).cast(arrow_schema) if _same(f, arrow_schema) else
              _conform(pq.read_table(f), arrow_schema) for f in files]  # fmt: skip
    frame = pa.concat_tables(tables).to_pandas()
    stamps = frame[time_column]
    keep = pd.Series(True, index=frame.index)
    if start is not None:
        keep &= stamps >= _utc(start)
    if end is not None:
        keep &= stamps < _utc(end)
    return frame[keep.to_numpy()].reset_index(drop=True)


def _same(path: Path, arrow_schema: pa.Schema) -> bool:
    return pq.read_schema(path).names == arrow_schema.names


def _conform(table: pa.Table, arrow_schema: pa.Schema) -> pa.Table:
    """``table`` with ``arrow_schema``'s columns: missing ones null, unknown ones dropped."""
    arrays = [
        table.column(f.name).cast(f.type)
        if f.name in table.column_names
        else pa.nulls(table.num_rows, f.type)
        for f in arrow_schema
    ]
    return pa.Table.from_arrays(arrays, schema=arrow_schema)


def read_decisions(
    folder: Path, start: datetime | None = None, end: datetime | None = None
) -> pd.DataFrame:
    """The decision log between ``start`` and ``end`` (see ``read_log``)."""
    return read_log(folder, DECISION_SCHEMA, "decided_at", start, end)


def as_actions(decisions: pd.DataFrame) -> pd.DataFrame:
    """The raw contract's ``actions`` table from decision-log rows (for retraining)."""
    return decisions[list(ACTION_COLUMNS)].copy()
