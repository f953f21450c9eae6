"""The raw data contract (``contracts/raw-data.md``, v1): load, validate and write raw tables.

A raw folder holds one file per table, ``<table>.parquet`` or ``<table>.csv``. ``load_raw`` reads
it, coerces every contract column to its canonical in-memory type and validates the whole folder,
raising one ``ContractError`` that lists every problem found. ``validate`` applies the same rules
to tables already in memory (the simulator calls it before writing); ``write_raw`` writes a folder.

Canonical in-memory types (the feature code relies on them exactly):

* string: ``object`` dtype holding Python ``str`` (``None`` for null);
* timestamp: ``datetime64[ns, UTC]`` (``NaT`` for null);
* bool: numpy ``bool``; int: ``int64``; float: ``float64`` (``NaN`` for null).

Columns not in the contract are dropped, the rest are in contract order, rows keep their order.

The schema is data (``SCHEMA``: tables of ``ColumnSpec`` with their ``Check``s and ``RowRule``s);
small functions evaluate it. Everything is vectorized (Arrow compute, numpy, pandas) because a
folder can hold ~10M rows: Python loops over rows only on error paths (locating non-string
values in memory, bisecting the few timestamps Arrow refuses).

Deliberately not checked: that opted-out customers got no promo (``marketing_opt_in`` is the
customer's current state, so an earlier promo is legitimate; the decision service enforces it),
and that every decision has an outcome (the latest 30 days have none yet).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

ColumnType = Literal["string", "timestamp", "bool", "int", "float"]

#: The tables every raw folder holds, in contract order (``truth`` is optional and separate).
TABLE_NAMES: Final[tuple[str, ...]] = (
    "customers",
    "bookings",
    "flights",
    "service_cases",
    "web_events",
    "email_events",
    "actions",
    "outcomes",
)
TRUTH: Final = "truth"
#: The actions a decision can take, in contract order.
ACTIONS: Final[tuple[str, ...]] = ("promo", "apology_credit", "recognition", "none")
FORMATS: Final[tuple[str, ...]] = ("parquet", "csv")
#: At most this many offending rows or ids are quoted per violation.
MAX_EXAMPLES: Final = 5
#: How far past the reference time (now, or ``nba features --as-of``) an event time may lie
#: before the folder is refused: enough for clock skew between the brand's systems and ours,
#: far too little for a wrong year (records dated 2031 used to reach the online store).
FUTURE_TOLERANCE: Final = timedelta(hours=1)

EMPTY_FILE_RULE: Final = "file is empty: an empty table still needs its header row"
NAIVE_RULE: Final = "timezone-aware timestamp (ISO 8601 with offset or Z)"
#: The same rule for typed data (Parquet, pandas), where the zone belongs to the column type.
NAIVE_TYPE_RULE: Final = "timezone-aware timestamp (a time zone in the column type)"

_ARROW_TYPES: Final[dict[str, pa.DataType]] = {
    "string": pa.string(),
    "timestamp": pa.timestamp("ns", tz="UTC"),
    "bool": pa.bool_(),
    "int": pa.int64(),
    "float": pa.float64(),
}
_PANDAS_DTYPES: Final[dict[str, object]] = {
    "string": np.dtype(object),
    "timestamp": pd.DatetimeTZDtype("ns", "UTC"),
    "bool": np.dtype(bool),
    "int": np.dtype(np.int64),
    "float": np.dtype(np.float64),
}
# What Arrow's ISO 8601 parser accepts with a zone offset, with field ranges so that only day
# overflows (Feb 30) are left to the bisection; and the same shape without an offset. Only used
# on the error path, to tell a naive timestamp from garbage.
_AWARE_TS: Final = (
    r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[T ]([01]\d|2[0-3])"
    r"(:[0-5]\d(:[0-5]\d(\.\d{1,9})?)?)?(Z|[+-]([01]\d|2[0-3])(:?[0-5]\d)?)$"
)
_NAIVE_TS: Final = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}(:\d{2}(:\d{2}([.,]\d+)?)?)?)?$"
#: Days per month (index 1-12) in a common year.
_MONTH_DAYS: Final = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])
#: "00" to "99" as bytes, to write digits two at a time.
_DIGIT_PAIRS: Final = np.array([[48 + i // 10, 48 + i % 10] for i in range(100)], dtype=np.uint8)
_INT64_MAX: Final = np.iinfo(np.int64).max
_INT64_MIN: Final = np.iinfo(np.int64).min


# --- The schema, as data ------------------------------------------------------------------------


def _mask(values: pd.Series | np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=bool)


def _chunked(values: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    return values if isinstance(values, pa.ChunkedArray) else pa.chunked_array([values])


def _bool_array(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An Arrow boolean result as numpy (null -> False)."""
    return _mask(pc.fill_null(values, False).to_numpy(zero_copy_only=False))


@dataclass
class ColumnValues:
    """One column in its canonical type, as the checks see it.

    ``null`` marks missing values and ``invalid`` the rows that failed their type or not-null
    rule (already reported): later rules skip both. String columns also have an Arrow copy for
    the fast string kernels, taken from the file or built on first use.
    """

    series: pd.Series
    null: np.ndarray
    invalid: np.ndarray
    text: pa.ChunkedArray | None = None

    def ok(self) -> np.ndarray:
        """Rows holding a present, well-typed value."""
        return ~self.null & ~self.invalid

    def arrow(self) -> pa.ChunkedArray:
        """The string values as an Arrow string array (invalid rows as null)."""
        if self.text is None:
            series = self.series.mask(self.invalid) if self.invalid.any() else self.series
            self.text = _chunked(pa.array(series, type=pa.string(), from_pandas=True))
        return self.text


@dataclass(frozen=True)
class Check:
    """A rule on the present (non-null, well-typed) values of one column.

    ``bad`` marks the rows that break ``rule``; what it says about null or invalid rows is
    ignored.
    """

    rule: str
    bad: Callable[[ColumnValues], np.ndarray]


@dataclass(frozen=True)
class ColumnSpec:
    """One contract column: its type, whether it may be null, and the rules on its values."""

    name: str
    type: ColumnType
    nullable: bool = False
    checks: tuple[Check, ...] = ()
    unique: bool = False
    #: ``(table, column)`` the values must appear in (nulls exempt).
    references: tuple[str, str] | None = None
    #: Few distinct values (codes, enums): share one Python string per value when loading, which
    #: saves memory; not worth its hashing cost on id columns.
    few_values: bool = False
    #: A timestamp recording when something happened: it may not lie in the future (beyond
    #: ``FUTURE_TOLERANCE``). Planned times (``bookings.departs_at``) are not event times.
    event_time: bool = False
    #: A column added in a later contract version (1.1): a folder without it is still valid and
    #: reads it as all null.
    optional: bool = False


@dataclass(frozen=True)
class RowRule:
    """A rule across columns of one row, reported against ``column``."""

    column: str
    rule: str
    uses: tuple[str, ...]
    bad: Callable[[Mapping[str, pd.Series]], np.ndarray]


@dataclass(frozen=True)
class TableSpec:
    """One contract table."""

    name: str
    columns: tuple[ColumnSpec, ...]
    row_rules: tuple[RowRule, ...] = ()

    @property
    def names(self) -> list[str]:
        """Column names in contract order."""
        return [c.name for c in self.columns]


def matches(pattern: str, rule: str) -> Check:
    """String values must match the regular expression ``pattern`` (anchor it for a full match)."""
    return Check(rule, lambda v: ~_bool_array(pc.match_substring_regex(v.arrow(), pattern)))


def one_of(*values: str) -> Check:
    """String values must be one of ``values``."""
    allowed = list(values)
    return Check(f"one of {', '.join(values)}", lambda v: ~_mask(v.series.isin(allowed)))


def at_least(low: float) -> Check:
    """Numbers must be ``>= low``."""
    return Check(f">= {low:g}", lambda v: _mask(v.series < low))


def in_range(low: float, high: float, *, open_low: bool = False) -> Check:
    """Numbers must lie in ``[low, high]`` (``(low, high]`` when ``open_low``)."""
    rule = f"in {'(' if open_low else '['}{low:g}, {high:g}]"
    if open_low:
        return Check(rule, lambda v: _mask((v.series <= low) | (v.series > high)))
    return Check(rule, lambda v: _mask((v.series < low) | (v.series > high)))


#: Every float column must hold finite numbers (NaN is null, and only where nullable).
FINITE: Final = Check("finite number", lambda v: np.isinf(v.series.to_numpy(dtype=np.float64)))
NON_EMPTY: Final = matches(r"\S", "non-empty")
AIRPORT: Final = matches(r"^[A-Z]{3}$", "3 uppercase letters")
CURRENCY: Final = matches(r"^[A-Z]{3}$", "ISO 4217 currency code (3 uppercase letters)")
FLIGHT_NUMBER: Final = matches(r"^[A-Z0-9]{2,3}[0-9]{1,5}[A-Z]?$", "flight number such as AA45")


def not_before(column: str, reference: str) -> RowRule:
    """``column >= reference`` wherever both are set (a null ``column`` passes)."""
    return RowRule(
        column,
        f">= {reference}",
        (column, reference),
        lambda c: _mask(c[column] < c[reference]),  # NaT compares False: nulls pass
    )


def _customer_ref(nullable: bool = False) -> ColumnSpec:
    return ColumnSpec(
        "customer_id", "string", nullable=nullable, references=("customers", "customer_id")
    )


def _ts(name: str, nullable: bool = False, *, event: bool = True) -> ColumnSpec:
    """A timestamp column; an event time (``event``) unless it records a planned moment."""
    return ColumnSpec(name, "timestamp", nullable=nullable, event_time=event)


def future_rule(limit: datetime) -> str:
    """The rule text of the event-time check against ``limit`` (reference + tolerance)."""
    return f"not in the future (<= {limit.isoformat()}, reference time + {FUTURE_TOLERANCE})"


def _future_limit(now: datetime | None) -> pd.Timestamp:
    """The latest event time accepted: ``now`` (default: the wall clock) plus the tolerance."""
    reference = pd.Timestamp(now if now is not None else datetime.now(UTC))
    if reference.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    return (reference + FUTURE_TOLERANCE).tz_convert(UTC)


def _enum(name: str, *values: str) -> ColumnSpec:
    return ColumnSpec(name, "string", checks=(one_of(*values),), few_values=True)


def _airport(name: str, nullable: bool = False) -> ColumnSpec:
    return ColumnSpec(name, "string", nullable=nullable, checks=(AIRPORT,), few_values=True)


def _truth_columns() -> tuple[ColumnSpec, ...]:
    columns = [
        ColumnSpec("decision_id", "string", unique=True, references=("actions", "decision_id"))
    ]
    for action in ACTIONS:
        columns += [
            ColumnSpec(f"p_convert_{action}", "float", checks=(in_range(0, 1),)),
            ColumnSpec(f"revenue_{action}", "float", checks=(at_least(0),)),
            ColumnSpec(f"p_unsubscribe_{action}", "float", checks=(in_range(0, 1),)),
        ]
    return tuple(columns)


#: The contract, table by table (``truth`` last).
SCHEMA: Final[dict[str, TableSpec]] = {
    spec.name: spec
    for spec in (
        TableSpec(
            "customers",
            (
                ColumnSpec("customer_id", "string", checks=(NON_EMPTY,), unique=True),
                _ts("created_at"),
                _airport("home_airport", nullable=True),
                ColumnSpec("marketing_opt_in", "bool"),
                ColumnSpec("prior_miles", "int", checks=(at_least(0),)),
            ),
        ),
        TableSpec(
            "bookings",
            (
                ColumnSpec("booking_id", "string", unique=True),
                _customer_ref(),
                _ts("booked_at"),
                _ts("departs_at", event=False),  # a future departure is normal
                _airport("origin"),
                _airport("destination"),
                ColumnSpec("fare", "float", checks=(at_least(0),)),
                ColumnSpec("currency", "string", checks=(CURRENCY,), few_values=True),
                _enum("cabin", "economy", "premium", "business", "first"),
                _enum("channel", "web", "app", "agent", "call_center"),
                _enum("status", "confirmed", "cancelled_by_customer", "cancelled_by_carrier"),
            ),
            (not_before("departs_at", "booked_at"),),
        ),
        TableSpec(
            "flights",
            (
                ColumnSpec("booking_id", "string", references=("bookings", "booking_id")),
                _customer_ref(),
                _ts("scheduled_at"),
                ColumnSpec("delay_minutes", "int", checks=(at_least(0),)),
                ColumnSpec("cancelled", "bool"),
                ColumnSpec("miles_earned", "int", checks=(at_least(0),)),
                # Contract 1.1: a flight is its number and the UTC date of scheduled_at.
                ColumnSpec(
                    "flight_number", "string", nullable=True, optional=True, checks=(FLIGHT_NUMBER,)
                ),
                replace(_airport("origin", nullable=True), optional=True),
                replace(_airport("destination", nullable=True), optional=True),
            ),
            (
                RowRule(
                    "miles_earned",
                    "0 when cancelled",
                    ("miles_earned", "cancelled"),
                    lambda c: _mask(c["cancelled"] & (c["miles_earned"] != 0)),
                ),
            ),
        ),
        TableSpec(
            "service_cases",
            (
                ColumnSpec("case_id", "string", unique=True),
                _customer_ref(),
                _ts("opened_at"),
                _ts("closed_at", nullable=True),
                _enum("channel", "email", "phone", "chat", "social"),
                _enum(
                    "topic",
                    "delay",
                    "cancellation",
                    "baggage",
                    "refund",
                    "seat",
                    "service",
                    "other",
                ),
                ColumnSpec("sentiment", "float", nullable=True, checks=(in_range(-1, 1),)),
                ColumnSpec("compensated", "bool"),
            ),
            (
                RowRule(
                    "closed_at",
                    ">= opened_at when not null",
                    ("closed_at", "opened_at"),
                    lambda c: _mask(c["closed_at"] < c["opened_at"]),
                ),
            ),
        ),
        TableSpec(
            "web_events",
            (
                ColumnSpec("event_id", "string", unique=True),
                _customer_ref(nullable=True),
                ColumnSpec("session_id", "string"),
                _ts("ts"),
                _enum("event_type", "search", "view", "checkout_start", "abandon", "booking"),
                _airport("origin", nullable=True),
                _airport("destination", nullable=True),
            ),
        ),
        TableSpec(
            "email_events",
            (
                _customer_ref(),
                _ts("ts"),
                ColumnSpec("campaign_id", "string", few_values=True),
                _enum("event_type", "sent", "open", "click", "unsubscribe"),
            ),
        ),
        TableSpec(
            "actions",
            (
                ColumnSpec("decision_id", "string", unique=True),
                _customer_ref(),
                _ts("decided_at"),
                _enum("action", *ACTIONS),
                ColumnSpec("policy", "string", few_values=True),
                ColumnSpec("propensity", "float", checks=(in_range(0, 1, open_low=True),)),
                _enum("channel", "web", "app", "email"),
            ),
        ),
        TableSpec(
            "outcomes",
            (
                ColumnSpec(
                    "decision_id", "string", unique=True, references=("actions", "decision_id")
                ),
                ColumnSpec("converted", "bool"),
                ColumnSpec("revenue", "float", checks=(at_least(0),)),
                ColumnSpec("unsubscribed", "bool"),
            ),
        ),
        TableSpec(TRUTH, _truth_columns()),
    )
}


def schema_columns(table: str) -> list[str]:
    """The contract columns of ``table``, in contract order.

    Raises:
        ValueError: ``table`` is not a contract table.
    """
    if table not in SCHEMA:
        raise ValueError(f"unknown raw table {table!r}; expected one of {[*SCHEMA]}")
    return SCHEMA[table].names


# --- Public data types ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    """One broken rule: where (``table``, ``column``), which ``rule``, and a few offenders.

    ``examples`` quotes at most ``MAX_EXAMPLES`` offending rows (1-based data rows, the header
    not counted) with their values, or file names; ``count`` is how many rows break the rule
    when that is known.
    """

    table: str
    column: str | None
    rule: str
    examples: list[str] = field(default_factory=list)
    count: int | None = None

    def __str__(self) -> str:
        where = self.table if self.column is None else f"{self.table}.{self.column}"
        # No square brackets: consoles with markup (rich) would swallow them.
        text = f'{where}, rule "{self.rule}"'
        if not self.examples:
            return text
        quoted = ", ".join(self.examples)
        if self.count is not None and self.count > len(self.examples):
            return f"{text}: {self.count} rows, e.g. {quoted}"
        return f"{text}: {quoted}"


class ContractError(ValueError):
    """A raw folder (or in-memory raw data) broke the contract; ``violations`` lists every problem.

    ``str(err)`` is one human message: a summary line, then one line per violation naming the
    table, column, rule and offending rows.
    """

    def __init__(self, source: str, violations: list[Violation]) -> None:
        self.source = source
        self.violations = list(violations)
        n = len(self.violations)
        lines = [f"raw data in {source} failed validation ({n} problem{'s' if n != 1 else ''}):"]
        lines += [f"  - {v}" for v in self.violations]
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[type[ContractError], tuple[str, list[Violation]]]:
        # The default would call __init__ with the message only.
        return (type(self), (self.source, self.violations))


@dataclass
class RawData:
    """The raw tables of one folder, in canonical types (see the module docstring)."""

    customers: pd.DataFrame
    bookings: pd.DataFrame
    flights: pd.DataFrame
    service_cases: pd.DataFrame
    web_events: pd.DataFrame
    email_events: pd.DataFrame
    actions: pd.DataFrame
    outcomes: pd.DataFrame
    truth: pd.DataFrame | None = None

    def tables(self) -> dict[str, pd.DataFrame]:
        """Every table by name, in contract order, including ``truth`` when present."""
        out = {name: getattr(self, name) for name in TABLE_NAMES}
        if self.truth is not None:
            out[TRUTH] = self.truth
        return out

    def n_rows(self) -> int:
        """Total rows over all tables except ``truth``."""
        return sum(len(getattr(self, name)) for name in TABLE_NAMES)


# --- Reporting helpers ---------------------------------------------------------------------------


def _show(value: object) -> str:
    if value is None or value is pd.NaT or _is_nan(value):
        return "null"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _take(values: pd.Series | pa.ChunkedArray | pa.Array, rows: np.ndarray) -> list[object]:
    if isinstance(values, pd.Series):
        return values.iloc[rows].tolist()
    return values.take(pa.array(rows, type=pa.int64())).to_pylist()


def _violation(
    table: str,
    column: str | None,
    rule: str,
    bad: np.ndarray,
    values: Mapping[str, pd.Series | pa.ChunkedArray | pa.Array] | None = None,
) -> Violation | None:
    """A violation quoting the first offending rows of ``bad`` (None when no row is bad).

    ``values`` are shown beside each row: one entry quotes the value alone, several are shown
    as ``name=value``.
    """
    rows = np.flatnonzero(bad)
    if len(rows) == 0:
        return None
    first = rows[:MAX_EXAMPLES]
    shown = {name: _take(v, first) for name, v in (values or {}).items()}
    examples = []
    for k, row in enumerate(first):
        if not shown:
            examples.append(f"row {row + 1}")
        elif len(shown) == 1:
            examples.append(f"row {row + 1} {_show(next(iter(shown.values()))[k])}")
        else:
            parts = ", ".join(f"{name}={_show(vals[k])}" for name, vals in shown.items())
            examples.append(f"row {row + 1} ({parts})")
    return Violation(table, column, rule, examples, len(rows))


def _whole_column(table: str, column: str, rule: str, example: str) -> Violation:
    return Violation(table, column, rule, [example])


# --- Coercion to canonical types ----------------------------------------------------------------


@dataclass
class _Table:
    """One table after coercion: its row count and its usable columns (unusable ones omitted)."""

    name: str
    n_rows: int
    columns: dict[str, ColumnValues]


@dataclass
class _Parsed:
    """Arrow values of the canonical type (null where null or unparseable) and the type failures
    as ``(rule, rows)``."""

    values: pa.ChunkedArray
    failures: list[tuple[str, np.ndarray]] = field(default_factory=list)


def _is_text(dtype: pa.DataType) -> bool:
    kinds = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
    return any(is_kind(dtype) for is_kind in kinds)


def _null_where(values: pa.ChunkedArray, rows: np.ndarray) -> pa.ChunkedArray:
    if not rows.any():
        return values
    return _chunked(pc.if_else(pa.array(rows), pa.scalar(None, values.type), values))


def _failing_rows(values: pa.Array, to: pa.DataType, offset: int = 0) -> list[int]:
    """Positions in ``values`` that Arrow cannot cast to ``to``, found by bisection.

    Only called on rows pre-screened by a regular expression, so failures are few and the number
    of casts stays near ``failures * log2(rows)``.
    """
    try:
        pc.cast(values, to)
        return []
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if len(values) == 1:
            return [offset]
    mid = len(values) // 2
    return _failing_rows(values.slice(0, mid), to, offset) + _failing_rows(
        values.slice(mid), to, offset + mid
    )


def _day_overflow(dates: pa.Array) -> np.ndarray:
    """Which ``YYYY-MM-DD...`` strings name a day their month lacks (Feb 30, Apr 31)."""
    year, month, day = (
        pc.cast(pc.utf8_slice_codeunits(dates, start, stop), pa.int32()).to_numpy()
        for start, stop in ((0, 4), (5, 7), (8, 10))
    )
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    return day > _MONTH_DAYS[month] + ((month == 2) & leap)


def _timestamps_from_text(text: pa.ChunkedArray) -> _Parsed:
    target = _ARROW_TYPES["timestamp"]
    try:
        # Fast path: Arrow's ISO 8601 parser refuses values without an offset for a tz-aware type.
        return _Parsed(_chunked(pc.cast(text, target)))
    except pa.ArrowInvalid:
        pass
    flat = text.combine_chunks()
    present = _bool_array(pc.is_valid(flat))
    aware = _bool_array(pc.match_substring_regex(flat, _AWARE_TS))
    naive = present & ~aware & _bool_array(pc.match_substring_regex(flat, _NAIVE_TS))
    garbage = present & ~aware & ~naive
    unparsed = np.zeros(len(flat), dtype=bool)
    unparsed[aware] = _day_overflow(flat.filter(pa.array(aware)))
    # Whatever else Arrow refuses is rare by now: isolate it by bisection.
    candidates = np.flatnonzero(aware & ~unparsed)
    unparsed[candidates[_failing_rows(flat.take(pa.array(candidates)), target)]] = True
    keep = aware & ~unparsed
    values = pc.cast(pc.if_else(pa.array(keep), flat, pa.scalar(None, pa.string())), target)
    return _Parsed(_chunked(values), [("type timestamp", garbage | unparsed), (NAIVE_RULE, naive)])


def _numbers_from_text(text: pa.ChunkedArray, kind: Literal["int", "float"]) -> _Parsed:
    target = _ARROW_TYPES[kind]
    try:
        return _Parsed(_chunked(pc.cast(text, target)))
    except pa.ArrowInvalid:
        pass
    # Error path (or "2.0" in an int column): let pandas parse, with failures as NaN. Integers
    # beyond 2**53 lose precision on this path; miles and minutes never get near.
    present = _bool_array(pc.is_valid(text))
    number = pd.to_numeric(text.to_pandas(), errors="coerce").to_numpy(dtype=np.float64)
    if kind == "float":
        nan_text = _bool_array(pc.match_substring_regex(text, r"^[+-]?nan$", ignore_case=True))
        bad = present & np.isnan(number) & ~nan_text  # "nan" is a null, not a type error
        values = pa.array(number, mask=~present | bad, type=target)
        return _Parsed(_chunked(values), [(f"type {kind}", bad)])
    with np.errstate(invalid="ignore"):
        whole = (np.floor(number) == number) & (np.abs(number) < 2.0**63)  # NaN is not whole
    bad = present & ~whole
    values = pa.array(np.where(whole, number, 0).astype(np.int64), mask=~present | bad)
    return _Parsed(_chunked(values), [(f"type {kind}", bad)])


def _bools_from_text(text: pa.ChunkedArray) -> _Parsed:
    lower = pc.utf8_lower(text)
    true = _bool_array(pc.is_in(lower, value_set=pa.array(["true", "1"])))
    false = _bool_array(pc.is_in(lower, value_set=pa.array(["false", "0"])))
    present = _bool_array(pc.is_valid(text))
    bad = present & ~true & ~false
    values = pa.array(true, mask=~present | bad, type=pa.bool_())
    return _Parsed(_chunked(values), [("type bool", bad)])


def _from_text(kind: ColumnType, text: pa.ChunkedArray) -> _Parsed:
    if kind == "string":
        return _Parsed(_chunked(text.cast(pa.string())))
    if kind == "timestamp":
        return _timestamps_from_text(text)
    if kind == "bool":
        return _bools_from_text(text)
    return _numbers_from_text(text, kind)


def _timestamps_typed(values: pa.ChunkedArray) -> _Parsed | str:
    dtype = values.type
    if pa.types.is_date(dtype) or (pa.types.is_timestamp(dtype) and dtype.tz is None):
        return NAIVE_TYPE_RULE
    if not pa.types.is_timestamp(dtype):
        return "type timestamp"
    target = _ARROW_TYPES["timestamp"]
    try:
        return _Parsed(_chunked(pc.cast(values, target)))
    except pa.ArrowInvalid:
        pass
    # Some instant is outside the nanosecond range (years 1677-2262).
    per_ns = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}[dtype.unit]
    raw = pc.cast(values, pa.int64()).to_numpy()
    raw = np.asarray(raw, dtype=np.float64)  # nulls came through as NaN
    bad = (raw > _INT64_MAX / per_ns) | (raw < _INT64_MIN / per_ns)
    cleaned = _null_where(values, bad)
    return _Parsed(_chunked(pc.cast(cleaned, target)), [("type timestamp", bad)])


def _ints_typed(values: pa.ChunkedArray) -> _Parsed | str:
    dtype = values.type
    target = _ARROW_TYPES["int"]
    if pa.types.is_integer(dtype):
        try:
            return _Parsed(_chunked(pc.cast(values, target)))
        except pa.ArrowInvalid:  # uint64 beyond int64
            bad = _bool_array(pc.greater(values, pa.scalar(_INT64_MAX, pa.uint64())))
            cast = pc.cast(_null_where(values, bad), target)
            return _Parsed(_chunked(cast), [("type int", bad)])
    if pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
        number = pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False)
        with np.errstate(invalid="ignore"):
            whole = (np.floor(number) == number) & (np.abs(number) < 2.0**63)
        bad = ~np.isnan(number) & ~whole
        missing = np.isnan(number)
        ints = np.where(bad | missing, 0, number).astype(np.int64)
        return _Parsed(_chunked(pa.array(ints, mask=bad | missing)), [("type int", bad)])
    return "type int"


def _from_typed(kind: ColumnType, values: pa.ChunkedArray) -> _Parsed | str:
    """Arrow values of a non-text type as the canonical type, or the rule the column breaks."""
    dtype = values.type
    if kind == "string":
        return "type string"
    if kind == "timestamp":
        return _timestamps_typed(values)
    if kind == "int":
        return _ints_typed(values)
    if kind == "float":
        if pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
            return _Parsed(_chunked(pc.cast(values, pa.float64(), safe=False)))
        return "type float"
    if pa.types.is_boolean(dtype):
        return _Parsed(values)
    if pa.types.is_integer(dtype):
        flag = _bool_array(pc.is_in(values, value_set=pa.array([0, 1], dtype)))
        bad = _bool_array(pc.is_valid(values)) & ~flag
        flags = pc.equal(_null_where(values, bad), pa.scalar(1, dtype))
        return _Parsed(_chunked(flags), [("type bool", bad)])
    return "type bool"


def _to_pandas(spec: ColumnSpec, values: pa.ChunkedArray) -> pd.Series:
    if spec.type == "string":
        series = values.to_pandas(deduplicate_objects=spec.few_values)
    elif spec.type == "bool":
        series = pd.Series(_bool_array(values))
    elif spec.type == "int":
        series = pd.Series(pc.fill_null(values, 0).to_numpy(), dtype=np.int64)
    else:
        series = values.to_pandas()
    series = series.astype(_PANDAS_DTYPES[spec.type], copy=False)
    series.name = spec.name
    return series


def _coerce_arrow(
    table: str, spec: ColumnSpec, values: pa.ChunkedArray
) -> tuple[ColumnValues | None, list[Violation]]:
    """One column read from a file, as canonical pandas plus its type and null violations."""
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    if pa.types.is_null(values.type):
        values = _chunked(pa.nulls(len(values), _ARROW_TYPES[spec.type]))
    text = _is_text(values.type)
    if text:
        values = values.cast(pa.string())  # one text type for the parsers
    parsed = _from_text(spec.type, values) if text else _from_typed(spec.type, values)
    if isinstance(parsed, str):
        stored = f"stored as {values.type}"
        if parsed == NAIVE_TYPE_RULE:
            stored += " without a time zone"
        return None, [_whole_column(table, spec.name, parsed, stored)]
    violations = []
    failed = np.zeros(len(values), dtype=bool)
    for rule, rows in parsed.failures:
        shown = {spec.name: values} if text or spec.type != "timestamp" else None
        violations.append(_violation(table, spec.name, rule, rows, shown))
        failed |= rows
    null = _bool_array(pc.is_null(parsed.values, nan_is_null=True))
    if not spec.nullable:
        violations.append(_violation(table, spec.name, "not null", null & ~failed))
        failed |= null
    text_copy = parsed.values if spec.type == "string" else None
    column = ColumnValues(_to_pandas(spec, parsed.values), null, failed, text_copy)
    return column, [v for v in violations if v is not None]


def _neither_str_nor_null(value: object) -> bool:
    return not isinstance(value, str) and value is not None and not _is_nan(value)


def _is_nan(value: object) -> bool:
    return isinstance(value, float) and np.isnan(value)


def _dtype_name(series: pd.Series) -> str:
    return f"dtype {series.dtype}"


def _coerce_memory(
    table: str, spec: ColumnSpec, series: pd.Series
) -> tuple[ColumnValues | None, list[Violation]]:
    """One in-memory column: it must already have its canonical dtype."""
    if not isinstance(series.index, pd.RangeIndex) or series.index.start != 0:
        series = series.reset_index(drop=True)  # row numbers are positions
    dtype = series.dtype
    if spec.type == "timestamp" and isinstance(dtype, np.dtype) and dtype.kind == "M":
        return None, [_whole_column(table, spec.name, NAIVE_TYPE_RULE, _dtype_name(series))]
    if dtype != _PANDAS_DTYPES[spec.type]:
        rule = f"type {spec.type} ({_PANDAS_DTYPES[spec.type]})"
        return None, [_whole_column(table, spec.name, rule, _dtype_name(series))]
    violations = []
    failed = np.zeros(len(series), dtype=bool)
    if spec.type == "string" and pd.api.types.infer_dtype(series, skipna=True) not in (
        "string",
        "empty",
    ):
        # Error path only: find the non-str values one by one.
        failed = _mask(series.map(_neither_str_nor_null))
        violations.append(_violation(table, spec.name, "type string", failed, {spec.name: series}))
    null = _mask(series.isna())
    if not spec.nullable:
        violations.append(_violation(table, spec.name, "not null", null & ~failed))
        failed |= null
    return ColumnValues(series, null, failed), [v for v in violations if v is not None]


# --- Value rules -------------------------------------------------------------------------------


def _duplicate_rows(column: ColumnValues, ok: np.ndarray) -> np.ndarray:
    """Rows repeating the value of an earlier row (among the ``ok`` rows)."""
    dup = np.zeros(len(ok), dtype=bool)
    # Hash once and sort integers: several times faster than an object hash table on millions of
    # ids. Equal hashes are only candidates; the values themselves decide.
    hashes = pd.util.hash_array(column.series.to_numpy(dtype=object), categorize=False)
    sorted_hashes = np.sort(hashes[ok])
    if not (sorted_hashes[1:] == sorted_hashes[:-1]).any():
        return dup
    candidates = np.flatnonzero(_mask(pd.Series(hashes).duplicated(keep=False)) & ok)
    repeated = _mask(column.series.iloc[candidates].duplicated())
    dup[candidates[repeated]] = True
    return dup


def _dangling_rows(child: ColumnValues, parent: ColumnValues) -> np.ndarray:
    """Rows of ``child`` holding a value that is not among ``parent``'s valid values."""
    parent_ok = parent.ok()
    keys = parent.arrow() if parent_ok.all() else parent.arrow().filter(pa.array(parent_ok))
    found = _bool_array(pc.is_in(child.arrow(), value_set=keys.combine_chunks()))
    return child.ok() & ~found


def _column_violations(
    name: str,
    spec: ColumnSpec,
    column: ColumnValues,
    tables: Mapping[str, _Table],
    limit: pd.Timestamp,
) -> Iterable[Violation | None]:
    ok = column.ok()
    shown = {spec.name: column.series}
    checks = (*spec.checks, FINITE) if spec.type == "float" else spec.checks
    for check in checks:
        yield _violation(name, spec.name, check.rule, check.bad(column) & ok, shown)
    if spec.event_time:
        future = _mask(column.series > limit) & ok  # NaT compares False: nulls pass
        yield _violation(name, spec.name, future_rule(limit.to_pydatetime()), future, shown)
    if spec.unique:
        yield _violation(name, spec.name, "unique", _duplicate_rows(column, ok), shown)
    if spec.references:
        ref_table, ref_column = spec.references
        parent = tables.get(ref_table)
        if parent is not None and ref_column in parent.columns:  # else reported already
            bad = _dangling_rows(column, parent.columns[ref_column])
            yield _violation(name, spec.name, f"in {ref_table}.{ref_column}", bad, shown)


def _row_violations(table: _Table, rule: RowRule) -> Violation | None:
    if any(c not in table.columns for c in rule.uses):
        return None
    series = {c: table.columns[c].series for c in rule.uses}
    skip = np.zeros(table.n_rows, dtype=bool)
    for c in rule.uses:
        skip |= table.columns[c].invalid
    return _violation(table.name, rule.column, rule.rule, rule.bad(series) & ~skip, series)


def _rule_violations(tables: Mapping[str, _Table], limit: pd.Timestamp) -> list[Violation]:
    """Every value, uniqueness, reference, event-time (``<= limit``) and row rule over the
    usable columns."""
    found: list[Violation | None] = []
    for name, table in tables.items():
        spec = SCHEMA[name]
        for col in spec.columns:
            if col.name in table.columns:
                found += _column_violations(name, col, table.columns[col.name], tables, limit)
        found += [_row_violations(table, rule) for rule in spec.row_rules]
    return [v for v in found if v is not None]


def _ordered(violations: list[Violation]) -> list[Violation]:
    rank = {name: i for i, name in enumerate(SCHEMA)}
    return sorted(violations, key=lambda v: rank.get(v.table, -1))


def _frame(spec: TableSpec, table: _Table) -> pd.DataFrame:
    return pd.DataFrame({c: table.columns[c].series for c in spec.names}, copy=False)


# --- Reading files -------------------------------------------------------------------------------


def _locate(folder: Path, table: str) -> tuple[Path | None, list[Violation]]:
    """The one file of ``table`` in ``folder`` (None if missing, ambiguous or empty)."""
    found = [folder / f"{table}.{ext}" for ext in FORMATS if (folder / f"{table}.{ext}").is_file()]
    if not found:
        if table == TRUTH:
            return None, []
        missing = f"missing: neither {table}.parquet nor {table}.csv is in {folder}"
        return None, [Violation(table, None, "table present", [missing])]
    if len(found) > 1:
        rule = "one file per table (both a .parquet and a .csv: which one is meant?)"
        return None, [Violation(table, None, rule, [p.name for p in found])]
    if found[0].stat().st_size == 0:
        return None, [Violation(table, None, EMPTY_FILE_RULE, [found[0].name])]
    return found[0], []


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _csv_header(path: Path) -> list[str] | None:
    """The header fields of a CSV (None when the file holds no header)."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        for row in csv.reader(handle):
            if row:  # Arrow skips blank lines too
                return row
    return None


@dataclass
class _BadRows:
    """Rows with the wrong number of fields, collected by Arrow's invalid-row handler."""

    rows: list[tuple[int | None, str, int, int]] = field(default_factory=list)

    def __call__(self, row: pacsv.InvalidRow) -> str:
        self.rows.append((row.number, row.text, row.expected_columns, row.actual_columns))
        return "skip"


def _read_csv_once(path: Path, wanted: list[str], threads: bool) -> tuple[pa.Table, _BadRows]:
    bad = _BadRows()
    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(use_threads=threads, block_size=16 << 20),
        parse_options=pacsv.ParseOptions(invalid_row_handler=bad),
        convert_options=pacsv.ConvertOptions(
            include_columns=wanted,
            # Everything as text: parsing is ours, so that errors name rows and rules.
            column_types={c: pa.string() for c in wanted},
            # Only an empty field is null, quoted or not (exports that quote every field write
            # nulls as ""); "NA" or "null" may well be an id.
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        ),
    )
    return table, bad


def _read_csv(path: Path, spec: TableSpec) -> tuple[pa.Table | None, list[str], list[Violation]]:
    try:
        header = _csv_header(path)
    except (UnicodeDecodeError, csv.Error) as exc:
        return None, [], [Violation(spec.name, None, "readable CSV", [f"{path.name}: {exc}"])]
    if header is None:
        return None, [], [Violation(spec.name, None, EMPTY_FILE_RULE, [path.name])]
    violations = [
        Violation(spec.name, c, "column appears once in the header", [path.name])
        for c in spec.names
        if header.count(c) > 1
    ]
    wanted = [c for c in spec.names if header.count(c) == 1]
    if not wanted:
        return pa.table({}), header, violations
    try:
        table, bad = _read_csv_once(path, wanted, threads=True)
        if bad.rows and bad.rows[0][0] is None:
            # Line numbers are only known single-threaded; worth a second pass on this error path.
            _, bad = _read_csv_once(path, wanted, threads=False)
    except (pa.ArrowInvalid, OSError) as exc:
        return (
            None,
            header,
            [*violations, Violation(spec.name, None, "readable CSV", [_short(exc)])],
        )
    if bad.rows:
        examples = [
            f"line {num if num is not None else '?'} {text[:40]!r} ({got} fields, header has {exp})"
            for num, text, exp, got in bad.rows[:MAX_EXAMPLES]
        ]
        rule = "well-formed CSV rows (as many fields as the header)"
        violations.append(Violation(spec.name, None, rule, examples, len(bad.rows)))
    return table, header, violations


def _read_parquet(
    path: Path, spec: TableSpec
) -> tuple[pa.Table | None, list[str], list[Violation]]:
    try:
        parquet = pq.ParquetFile(path)
        names = parquet.schema_arrow.names
        wanted = [c for c in spec.names if c in names]
        table = parquet.read(columns=wanted)
    except (pa.ArrowException, OSError) as exc:
        return None, [], [Violation(spec.name, None, "readable Parquet file", [_short(exc)])]
    return table, names, []


def _load_table(path: Path, spec: TableSpec) -> tuple[_Table | None, list[Violation]]:
    reader = _read_csv if path.suffix == ".csv" else _read_parquet
    data, names, violations = reader(path, spec)
    if data is None:
        return None, violations
    columns: dict[str, ColumnValues] = {}
    for col in spec.columns:
        if col.name not in names and col.optional:
            nulls = pa.chunked_array([pa.nulls(data.num_rows, pa.string())])
            column, found = _coerce_arrow(spec.name, col, nulls)
            if column is not None:
                columns[col.name] = column
            continue
        if col.name not in names:
            violations.append(
                Violation(spec.name, col.name, "column present", [f"not in {path.name}"])
            )
            continue
        if col.name not in data.column_names:
            continue  # duplicated in the header, reported above
        column, found = _coerce_arrow(spec.name, col, data.column(col.name))
        violations += found
        if column is not None:
            columns[col.name] = column
    return _Table(spec.name, data.num_rows, columns), violations


# --- Public functions ----------------------------------------------------------------------------


def load_raw(folder: str | Path, *, now: datetime | None = None) -> RawData:
    """Read a raw folder, coerce it to canonical types and validate it against the contract.

    Every problem of the folder is collected before raising. Nothing is written anywhere.

    Args:
        folder: directory holding one ``<table>.parquet`` or ``<table>.csv`` per contract table
            (``truth`` optional).
        now: the reference time of the event-time rule (tz-aware): no event may lie more than
            ``FUTURE_TOLERANCE`` after it. Default: the wall clock.

    Raises:
        ContractError: the folder is missing or breaks the contract (all problems listed).
    """
    limit = _future_limit(now)
    folder = Path(folder)
    source = str(folder)
    if not folder.is_dir():
        violation = Violation("(folder)", None, "raw folder exists and is a directory", [source])
        raise ContractError(source, [violation])
    violations: list[Violation] = []
    tables: dict[str, _Table] = {}
    for name, spec in SCHEMA.items():
        path, found = _locate(folder, name)
        violations += found
        if path is None:
            continue
        table, found = _load_table(path, spec)
        violations += found
        if table is not None:
            tables[name] = table
    violations += _rule_violations(tables, limit)
    if violations:
        raise ContractError(source, _ordered(violations))
    frames = {name: _frame(SCHEMA[name], table) for name, table in tables.items()}
    return RawData(**frames)


def validate(raw: RawData, source: str = "<memory>", *, now: datetime | None = None) -> None:
    """Validate raw tables already in memory: canonical dtypes plus every contract rule.

    Extra columns are allowed and ignored; nothing is modified.

    Args:
        raw: the tables (``truth`` is validated too when present).
        source: what to call the data in the error message (a folder, "simulator", ...).
        now: the reference time of the event-time rule, as in ``load_raw``.

    Raises:
        ContractError: listing every problem found.
    """
    limit = _future_limit(now)
    violations: list[Violation] = []
    tables: dict[str, _Table] = {}
    for name, frame in raw.tables().items():
        spec = SCHEMA[name]
        columns: dict[str, ColumnValues] = {}
        for col in spec.columns:
            if col.name not in frame.columns and col.optional:
                continue  # a 1.1 column a 1.0 producer does not write: null
            if col.name not in frame.columns:
                violations.append(Violation(name, col.name, "column present", ["not in the frame"]))
                continue
            series = frame[col.name]
            if isinstance(series, pd.DataFrame):
                violations.append(Violation(name, col.name, "column appears once", []))
                continue
            column, found = _coerce_memory(name, col, series)
            violations += found
            if column is not None:
                columns[col.name] = column
        tables[name] = _Table(name, len(frame), columns)
    violations += _rule_violations(tables, limit)
    if violations:
        raise ContractError(source, _ordered(violations))


def _arrow_table(name: str, frame: pd.DataFrame) -> pa.Table:
    spec = SCHEMA[name]
    missing = [c.name for c in spec.columns if c.name not in frame.columns and not c.optional]
    if missing:
        raise ValueError(f"cannot write {name}: missing contract columns {missing}")
    frame = frame.assign(**{c.name: None for c in spec.columns if c.name not in frame.columns})
    arrays = [
        pa.array(frame[c.name], type=_ARROW_TYPES[c.type], from_pandas=True) for c in spec.columns
    ]
    return pa.Table.from_arrays(arrays, names=spec.names)


def _civil(days: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Proleptic Gregorian (year, month, day) of days since 1970-01-01 (H. Hinnant's algorithm)."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1_460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = np.where(mp < 10, mp + 3, mp - 9)
    return yoe + era * 400 + (month <= 2), month, day


def _iso_utc(values: pa.ChunkedArray) -> pa.Array:
    """Timestamps as ISO 8601 text with ``Z``, with as many decimals as the values need.

    Written digit by digit with numpy: Arrow's strftime and cast to string cost ~1 us a value,
    far too slow for millions of events.
    """
    flat = values.combine_chunks()
    valid = _bool_array(pc.is_valid(flat))
    ns = pc.cast(flat, pa.int64()).fill_null(0).to_numpy()
    decimals = next((d for d in (0, 3, 6) if not (ns[valid] % 10 ** (9 - d)).any()), 9)
    seconds, fraction = np.divmod(ns, 10**9)
    days, in_day = np.divmod(seconds, 86_400)
    # Nanosecond timestamps span at most ~213k days: convert each day once, then look up.
    first = int(days.min()) if len(days) else 0
    span = np.arange(first, (int(days.max()) if len(days) else 0) + 1)
    index = days - first
    year, month, day = (part[index] for part in _civil(span))
    fields = [(year, 4, "-"), (month, 2, "-"), (day, 2, "T"), (in_day // 3600, 2, ":")]
    fields += [(in_day // 60 % 60, 2, ":"), (in_day % 60, 2, "." if decimals else "Z")]
    if decimals:
        fields.append((fraction // 10 ** (9 - decimals), decimals, "Z"))
    width = sum(n + 1 for _, n, _ in fields)
    text = np.empty((len(ns), width), dtype=np.uint8)
    at = 0
    for number, n_digits, separator in fields:
        rest = number.astype(np.int32)
        for k in range(n_digits - 2, -1, -2):  # two digits at a time, all rows at once
            rest, pair = np.divmod(rest, 100)
            text[:, at + k : at + k + 2] = _DIGIT_PAIRS[pair]
        if n_digits % 2:
            text[:, at] = ord("0") + rest
        text[:, at + n_digits] = ord(separator)
        at += n_digits + 1
    offsets = np.arange(len(ns) + 1, dtype=np.int64) * width
    bitmap = np.packbits(valid, bitorder="little")
    return pa.LargeStringArray.from_buffers(
        len(ns), pa.py_buffer(offsets), pa.py_buffer(text), pa.py_buffer(bitmap)
    )


def write_raw(raw: RawData, folder: str | Path, fmt: Literal["parquet", "csv"] = "parquet") -> None:
    """Write one ``<table>.<fmt>`` per table (``truth`` too when present) into ``folder``.

    Only the contract columns are written, in contract order. Each file is written beside its
    final name and then renamed, so an interrupted write never leaves a half file that looks
    like a table. CSV timestamps are ISO 8601 with ``Z``; CSV nulls are empty fields.

    Raises:
        ValueError: unknown ``fmt`` or a table lacks a contract column.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown raw format {fmt!r}; expected one of {FORMATS}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in raw.tables().items():
        table = _arrow_table(name, frame)
        final = folder / f"{name}.{fmt}"
        partial = folder / f".{name}.{fmt}.partial"
        try:
            if fmt == "parquet":
                pq.write_table(table, partial)
            else:
                for i, col in enumerate(SCHEMA[name].columns):
                    if col.type == "timestamp":
                        table = table.set_column(i, col.name, _iso_utc(table.column(i)))
                pacsv.write_csv(table, partial)
            os.replace(partial, final)
        finally:
            partial.unlink(missing_ok=True)
