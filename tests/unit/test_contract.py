"""The raw data contract: loading, canonical types, and one clear error naming every problem."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.contract import (
    ACTIONS,
    EMPTY_FILE_RULE,
    NAIVE_RULE,
    NAIVE_TYPE_RULE,
    SCHEMA,
    TABLE_NAMES,
    ContractError,
    RawData,
    Violation,
    load_raw,
    schema_columns,
    validate,
    write_raw,
)
from tests.factories import tiny_raw

CANONICAL = {
    "string": np.dtype(object),
    "timestamp": pd.DatetimeTZDtype("ns", "UTC"),
    "bool": np.dtype(bool),
    "int": np.dtype(np.int64),
    "float": np.dtype(np.float64),
}


def _folder(tmp_path: Path, fmt: str = "csv", raw: RawData | None = None) -> Path:
    folder = tmp_path / "raw"
    write_raw(raw if raw is not None else tiny_raw(), folder, fmt)  # type: ignore[arg-type]
    return folder


def _edit_csv(folder: Path, table: str, edit: Callable[[pd.DataFrame], object]) -> None:
    """Apply ``edit`` to the table's CSV cells (all text) and write it back."""
    path = folder / f"{table}.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    edited = edit(frame)
    (edited if isinstance(edited, pd.DataFrame) else frame).to_csv(path, index=False)


def _set(table: str, column: str, row: int, text: str) -> Callable[[Path], None]:
    """Break a CSV folder: put ``text`` in ``column`` of data row ``row`` (1-based)."""

    def edit(frame: pd.DataFrame) -> None:
        frame.loc[row - 1, column] = text

    return lambda folder: _edit_csv(folder, table, edit)


def _load_error(folder: Path) -> ContractError:
    with pytest.raises(ContractError) as info:
        load_raw(folder)
    return info.value


def _assert_equal(loaded: RawData, expected: RawData) -> None:
    assert loaded.tables().keys() == expected.tables().keys()
    for name, frame in expected.tables().items():
        got = loaded.tables()[name]
        # A 1.1 column the folder lacks reads as all null (flights.flight_number, ...).
        added = [c for c in got.columns if c not in frame.columns]
        assert all(got[c].isna().all() for c in added), added
        pd.testing.assert_frame_equal(got.drop(columns=added), frame, check_exact=True)


# --- Valid folders -------------------------------------------------------------------------------


def test_tiny_raw_is_valid() -> None:
    validate(tiny_raw())


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_round_trip(tmp_path: Path, fmt: str) -> None:
    raw = tiny_raw()
    loaded = load_raw(_folder(tmp_path, fmt, raw))
    _assert_equal(loaded, raw)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_loaded_tables_have_canonical_types_in_contract_order(tmp_path: Path, fmt: str) -> None:
    loaded = load_raw(_folder(tmp_path, fmt))
    for name, frame in loaded.tables().items():
        assert list(frame.columns) == schema_columns(name)
        for spec in SCHEMA[name].columns:
            assert frame[spec.name].dtype == CANONICAL[spec.type], (name, spec.name)
    assert loaded.customers["home_airport"].tolist() == ["LHR", "CDG", None, "JFK"]
    assert all(type(v) is str for v in loaded.bookings["booking_id"])
    assert loaded.service_cases["closed_at"].isna().tolist() == [True, False]


def test_csv_columns_in_any_order(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    for table in ("customers", "bookings"):
        _edit_csv(folder, table, lambda frame: frame[frame.columns[::-1]])
    _assert_equal(load_raw(folder), tiny_raw())


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_extra_columns_are_ignored(tmp_path: Path, fmt: str) -> None:
    raw = tiny_raw()
    folder = _folder(tmp_path, fmt, raw)
    extended = raw.customers.assign(loyalty_tier=["gold", "", "silver", "gold"])
    if fmt == "csv":
        extended.to_csv(folder / "customers.csv", index=False)
    else:
        pq.write_table(pa.Table.from_pandas(extended), folder / "customers.parquet")
    _assert_equal(load_raw(folder), raw)


def test_header_only_csv_is_an_empty_table(tmp_path: Path) -> None:
    raw = tiny_raw()
    empty = RawData(**{name: frame.iloc[:0] for name, frame in raw.tables().items()})
    loaded = load_raw(_folder(tmp_path, "csv", empty))
    assert loaded.n_rows() == 0
    assert loaded.web_events["ts"].dtype == CANONICAL["timestamp"]
    validate(empty)


def test_truth_is_optional(tmp_path: Path) -> None:
    raw = tiny_raw()
    raw.truth = None
    folder = _folder(tmp_path, "parquet", raw)
    assert not (folder / "truth.parquet").exists()
    assert load_raw(folder).truth is None


def test_csv_offsets_become_utc_and_bools_accept_case_and_digits(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    _set("customers", "created_at", 1, "2022-03-01T10:00:00+02:00")(folder)
    _set("customers", "marketing_opt_in", 1, "TRUE")(folder)
    _set("customers", "marketing_opt_in", 2, "1")(folder)
    _set("customers", "marketing_opt_in", 3, "0")(folder)
    _assert_equal(load_raw(folder), tiny_raw())


def test_parquet_types_are_coerced_to_canonical(tmp_path: Path) -> None:
    raw = tiny_raw()
    folder = _folder(tmp_path, "parquet", raw)
    c = raw.customers
    typed = pa.table(
        {
            "customer_id": pa.array(c["customer_id"]).dictionary_encode(),
            "created_at": pa.array(c["created_at"]).cast(pa.timestamp("us", "Europe/Paris")),
            "home_airport": pa.array(c["home_airport"], pa.large_string()),
            "marketing_opt_in": pa.array([1, 1, 0, 1], pa.int8()),
            "prior_miles": pa.array(c["prior_miles"], pa.int32()),
        }
    )
    pq.write_table(typed, folder / "customers.parquet")
    _assert_equal(load_raw(folder), raw)


def test_quoted_empty_csv_fields_are_null(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    path = folder / "service_cases.csv"
    path.write_text(path.read_text().replace(",,", ',"",'))  # exports that quote every field
    assert path.read_text().count('""') == 2
    _assert_equal(load_raw(folder), tiny_raw())


def test_csv_timestamps_are_iso_8601_with_z(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    text = (folder / "customers.csv").read_text()
    assert "2022-03-01T08:00:00.000Z" in text
    assert "2024-01-10T18:45:30.250Z" in text


# --- Broken folders ------------------------------------------------------------------------------


def _unlink(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).unlink()


def _truncate(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_bytes(b"")


def _also_parquet(table: str) -> Callable[[Path], None]:
    def add(folder: Path) -> None:
        pq.write_table(
            pa.Table.from_pandas(tiny_raw().tables()[table]), folder / f"{table}.parquet"
        )

    return add


def _drop_column(table: str, column: str) -> Callable[[Path], None]:
    return lambda folder: _edit_csv(folder, table, lambda f: f.drop(columns=[column]))


def _naive_parquet(folder: Path) -> None:
    customers = tiny_raw().customers
    customers["created_at"] = customers["created_at"].dt.tz_localize(None)
    pq.write_table(pa.Table.from_pandas(customers), folder / "customers.parquet")


BROKEN = {
    # id: (format, how to break it, (table, column, rule, an offending row or id))
    "missing table": (
        "csv",
        _unlink("flights.csv"),
        ("flights", None, "table present", "missing: neither flights.parquet nor flights.csv"),
    ),
    "text in a float": (
        "csv",
        _set("bookings", "fare", 2, "abc"),
        ("bookings", "fare", "type float", "row 2 'abc'"),
    ),
    "fraction in an int": (
        "csv",
        _set("flights", "delay_minutes", 1, "1.5"),
        ("flights", "delay_minutes", "type int", "row 1 '1.5'"),
    ),
    "maybe in a bool": (
        "csv",
        _set("customers", "marketing_opt_in", 3, "maybe"),
        ("customers", "marketing_opt_in", "type bool", "row 3 'maybe'"),
    ),
    "naive csv timestamp": (
        "csv",
        _set("customers", "created_at", 2, "2023-06-15T12:30:00"),
        ("customers", "created_at", NAIVE_RULE, "row 2 '2023-06-15T12:30:00'"),
    ),
    "garbage timestamp": (
        "csv",
        _set("web_events", "ts", 1, "yesterday"),
        ("web_events", "ts", "type timestamp", "row 1 'yesterday'"),
    ),
    "impossible date": (
        "csv",
        _set("actions", "decided_at", 4, "2024-02-30T10:00:00Z"),
        ("actions", "decided_at", "type timestamp", "row 4 '2024-02-30T10:00:00Z'"),
    ),
    "naive parquet timestamp": (
        "parquet",
        _naive_parquet,
        ("customers", "created_at", "timezone-aware timestamp", "without a time zone"),
    ),
    "unknown enum value": (
        "csv",
        _set("bookings", "cabin", 1, "platinum"),
        ("bookings", "cabin", "one of economy, premium, business, first", "row 1 'platinum'"),
    ),
    "duplicate id": (
        "csv",
        _set("bookings", "booking_id", 3, "B1"),
        ("bookings", "booking_id", "unique", "row 3 'B1'"),
    ),
    "dangling foreign key": (
        "csv",
        _set("flights", "customer_id", 2, "C99"),
        ("flights", "customer_id", "in customers.customer_id", "row 2 'C99'"),
    ),
    "outcome without a decision": (
        "csv",
        _set("outcomes", "decision_id", 1, "D9"),
        ("outcomes", "decision_id", "in actions.decision_id", "row 1 'D9'"),
    ),
    "closed before opened": (
        "csv",
        _set("service_cases", "closed_at", 2, "2024-03-01T00:00:00Z"),
        ("service_cases", "closed_at", ">= opened_at", "row 2"),
    ),
    "departs before booked": (
        "csv",
        _set("bookings", "departs_at", 1, "2024-02-01T10:00:00Z"),
        ("bookings", "departs_at", ">= booked_at", "row 1"),
    ),
    "miles on a cancelled leg": (
        "csv",
        _set("flights", "miles_earned", 3, "100"),
        ("flights", "miles_earned", "0 when cancelled", "row 3"),
    ),
    "negative fare": (
        "csv",
        _set("bookings", "fare", 4, "-5"),
        ("bookings", "fare", ">= 0", "row 4 -5.0"),
    ),
    "sentiment out of range": (
        "csv",
        _set("service_cases", "sentiment", 1, "-1.5"),
        ("service_cases", "sentiment", "in [-1, 1]", "row 1 -1.5"),
    ),
    "propensity 0": (
        "csv",
        _set("actions", "propensity", 1, "0"),
        ("actions", "propensity", "in (0, 1]", "row 1 0.0"),
    ),
    "truth probability above 1": (
        "csv",
        _set("truth", "p_unsubscribe_none", 2, "1.2"),
        ("truth", "p_unsubscribe_none", "in [0, 1]", "row 2 1.2"),
    ),
    "lowercase airport": (
        "csv",
        _set("bookings", "origin", 1, "lhr"),
        ("bookings", "origin", "3 uppercase letters", "row 1 'lhr'"),
    ),
    "currency code": (
        "csv",
        _set("bookings", "currency", 2, "euro"),
        ("bookings", "currency", "ISO 4217", "row 2 'euro'"),
    ),
    "blank customer id": (
        "csv",
        _set("customers", "customer_id", 4, "  "),
        ("customers", "customer_id", "non-empty", "row 4 '  '"),
    ),
    "null in a non-nullable column": (
        "csv",
        _set("web_events", "session_id", 2, ""),
        ("web_events", "session_id", "not null", "row 2"),
    ),
    "empty csv file": (
        "csv",
        _truncate("email_events.csv"),
        ("email_events", None, EMPTY_FILE_RULE, "email_events.csv"),
    ),
    "empty parquet file": (
        "parquet",
        _truncate("outcomes.parquet"),
        ("outcomes", None, EMPTY_FILE_RULE, "outcomes.parquet"),
    ),
    "both csv and parquet": (
        "csv",
        _also_parquet("actions"),
        ("actions", None, "one file per table", "actions.csv"),
    ),
    "missing column": (
        "csv",
        _drop_column("actions", "channel"),
        ("actions", "channel", "column present", "not in actions.csv"),
    ),
}


#: Cases whose break has knock-on effects: blanking C4 leaves the rows referencing C4 dangling.
KNOCK_ON = {"blank customer id": 4}


@pytest.mark.parametrize(("name", "case"), BROKEN.items(), ids=BROKEN.keys())
def test_broken_folder_names_table_column_rule_and_offender(
    tmp_path: Path,
    name: str,
    case: tuple[str, Callable[[Path], None], tuple[str, str | None, str, str]],
) -> None:
    fmt, breaker, (table, column, rule, offender) = case
    folder = _folder(tmp_path, fmt)
    breaker(folder)
    error = _load_error(folder)
    n = 1 + KNOCK_ON.get(name, 0)
    assert len(error.violations) == n  # each problem reported once, nothing spurious
    violation = error.violations[0]
    assert (violation.table, violation.column) == (table, column)
    assert rule in violation.rule
    message = str(error)
    problems = f"{n} problem{'s' if n > 1 else ''}"
    assert message.splitlines()[0] == f"raw data in {folder} failed validation ({problems}):"
    where = table if column is None else f"{table}.{column}"
    assert f'{where}, rule "{violation.rule}"' in message
    assert rule in message
    assert offender in message


def test_every_problem_is_reported_in_one_error(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    _unlink("flights.csv")(folder)
    _set("bookings", "fare", 2, "abc")(folder)
    _set("bookings", "cabin", 1, "platinum")(folder)  # same table, after a type error
    _set("web_events", "customer_id", 4, "C99")(folder)
    _set("actions", "propensity", 1, "0")(folder)
    error = _load_error(folder)
    found = {(v.table, v.column, v.rule.split(" ")[0]) for v in error.violations}
    assert found == {
        ("flights", None, "table"),
        ("bookings", "fare", "type"),
        ("bookings", "cabin", "one"),
        ("web_events", "customer_id", "in"),
        ("actions", "propensity", "in"),
    }
    assert str(error).splitlines()[0].endswith("failed validation (5 problems):")
    assert len(str(error).splitlines()) == 6


def test_examples_are_capped_but_counted() -> None:
    raw = tiny_raw()
    raw.web_events = pd.concat([raw.web_events] * 8, ignore_index=True)  # 28 repeated ids
    with pytest.raises(ContractError) as info:
        validate(raw, source="test")
    [violation] = info.value.violations
    assert violation.rule == "unique"
    assert violation.count == 28
    assert violation.examples == [f"row {i} 'W{(i - 1) % 4 + 1}'" for i in range(5, 10)]
    assert "28 rows, e.g. row 5 'W1'" in str(info.value)


def test_nothing_is_written_by_a_failed_load(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    _set("bookings", "fare", 1, "abc")(folder)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    _load_error(folder)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_missing_folder(tmp_path: Path) -> None:
    error = _load_error(tmp_path / "nowhere")
    assert "nowhere" in str(error)


# --- In-memory validation ------------------------------------------------------------------------


def test_validate_checks_canonical_dtypes() -> None:
    raw = tiny_raw()
    raw.bookings["fare"] = raw.bookings["fare"].round().astype("int64")
    raw.customers["created_at"] = raw.customers["created_at"].dt.tz_localize(None)
    raw.actions["policy"] = pd.Series(["random", 3, "rules-v1", "random"], dtype=object)
    with pytest.raises(ContractError) as info:
        validate(raw, source="simulator")
    got = {(v.table, v.column): v for v in info.value.violations}
    assert got.keys() == {
        ("customers", "created_at"),
        ("bookings", "fare"),
        ("actions", "policy"),
    }
    assert got["bookings", "fare"].rule.startswith("type float")
    assert got["bookings", "fare"].examples == ["dtype int64"]
    assert got["customers", "created_at"].rule == NAIVE_TYPE_RULE
    assert got["actions", "policy"].examples == ["row 2 3"]
    assert str(info.value).startswith("raw data in simulator failed validation (3 problems):")


def test_validate_reports_non_strings_in_string_columns() -> None:
    raw = tiny_raw()
    raw.web_events["origin"] = pd.Series(["LHR", 7, None, "CDG"], dtype=object)
    with pytest.raises(ContractError) as info:
        validate(raw)
    [violation] = info.value.violations
    assert (violation.column, violation.rule, violation.examples) == (
        "origin",
        "type string",
        ["row 2 7"],
    )


def test_validate_applies_the_value_rules() -> None:
    raw = tiny_raw()
    raw.flights.loc[0, "customer_id"] = "C99"
    raw.service_cases.loc[1, "closed_at"] = pd.Timestamp("2024-01-01", tz="UTC")
    with pytest.raises(ContractError) as info:
        validate(raw)
    assert {(v.table, v.column, v.examples[0]) for v in info.value.violations} == {
        ("flights", "customer_id", "row 1 'C99'"),
        (
            "service_cases",
            "closed_at",
            "row 2 (closed_at=2024-01-01T00:00:00+00:00, opened_at=2024-03-25T18:00:00+00:00)",
        ),
    }


# --- Small API -----------------------------------------------------------------------------------


def test_schema_columns_and_table_helpers() -> None:
    assert schema_columns("outcomes") == ["decision_id", "converted", "revenue", "unsubscribed"]
    truth = schema_columns("truth")
    assert truth[:4] == ["decision_id", "p_convert_promo", "revenue_promo", "p_unsubscribe_promo"]
    assert len(truth) == 1 + 3 * len(ACTIONS)
    with pytest.raises(ValueError, match="unknown raw table"):
        schema_columns("loyalty")
    raw = tiny_raw()
    assert list(raw.tables()) == [*TABLE_NAMES, "truth"]
    assert raw.n_rows() == sum(len(getattr(raw, name)) for name in TABLE_NAMES)


def test_violation_text() -> None:
    assert str(Violation("bookings", "fare", ">= 0", ["row 2 -1.0"], 1)) == (
        'bookings.fare, rule ">= 0": row 2 -1.0'
    )
    assert str(Violation("flights", None, "table present", [])) == 'flights, rule "table present"'


# --- Event times in the future -------------------------------------------------------------------

#: Every column that records when something happened; ``bookings.departs_at`` is a plan.
EVENT_TIMES = {
    ("customers", "created_at"),
    ("bookings", "booked_at"),
    ("flights", "scheduled_at"),
    ("service_cases", "opened_at"),
    ("service_cases", "closed_at"),
    ("web_events", "ts"),
    ("email_events", "ts"),
    ("actions", "decided_at"),
}
#: The reference time of these tests: after every record of ``tiny_raw``.
NOW = pd.Timestamp("2025-01-01T00:00:00Z")


def test_event_time_columns_are_declared_in_the_schema() -> None:
    declared = {(t, c.name) for t, spec in SCHEMA.items() for c in spec.columns if c.event_time}
    assert declared == EVENT_TIMES


@pytest.mark.parametrize(("table", "column"), sorted(EVENT_TIMES))
def test_future_event_time_is_refused_with_table_column_rule_and_row(
    tmp_path: Path, table: str, column: str
) -> None:
    folder = _folder(tmp_path)
    if (table, column) == ("service_cases", "closed_at"):
        _set(table, "opened_at", 2, "2031-05-01T09:00:00Z")(folder)  # keep closed >= opened
    _set(table, column, 2, "2031-05-01T10:00:00Z")(folder)
    with pytest.raises(ContractError) as info:
        load_raw(folder, now=NOW.to_pydatetime())
    found = [v for v in info.value.violations if (v.table, v.column) == (table, column)]
    assert len(found) == 1
    assert found[0].rule.startswith("not in the future (<= 2025-01-01T01:00:00+00:00")
    assert found[0].examples == ["row 2 2031-05-01T10:00:00+00:00"]
    line = f'  - {table}.{column}, rule "{found[0].rule}": row 2 2031-05-01T10:00:00+00:00'
    assert line in str(info.value).splitlines()


def test_future_departure_and_events_within_the_tolerance_are_accepted(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    _set("bookings", "departs_at", 1, "2031-05-01T10:00:00Z")(folder)  # a plan, not an event
    _set("web_events", "ts", 1, "2025-01-01T00:59:59Z")(folder)  # clock skew: within 1 h
    assert len(load_raw(folder, now=NOW.to_pydatetime()).web_events) == len(tiny_raw().web_events)
    _set("web_events", "ts", 1, "2025-01-01T01:00:01Z")(folder)
    with pytest.raises(ContractError, match=r"web_events\.ts, rule \"not in the future"):
        load_raw(folder, now=NOW.to_pydatetime())


def test_default_reference_is_the_wall_clock(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    load_raw(folder)  # tiny_raw lies in the past
    soon = (pd.Timestamp.now(tz="UTC") + pd.Timedelta(hours=2)).isoformat()
    _set("actions", "decided_at", 3, soon)(folder)
    error = _load_error(folder)
    assert [(v.table, v.column, v.count) for v in error.violations] == [
        ("actions", "decided_at", 1)
    ]


def test_validate_refuses_future_events_in_memory() -> None:
    raw = tiny_raw()
    raw.customers.loc[0, "created_at"] = pd.Timestamp("2031-01-01T00:00:00Z")
    raw.customers.loc[2, "created_at"] = pd.Timestamp("2031-01-02T00:00:00Z")
    validate(raw, now=pd.Timestamp("2032-01-01T00:00:00Z").to_pydatetime())
    with pytest.raises(ContractError) as info:
        validate(raw, source="simulator", now=NOW.to_pydatetime())
    (violation,) = info.value.violations
    assert (violation.table, violation.column, violation.count) == ("customers", "created_at", 2)
    assert "row 1 2031-01-01T00:00:00+00:00" in str(violation)
    with pytest.raises(ValueError, match="timezone-aware"):
        validate(raw, now=NOW.tz_localize(None).to_pydatetime())
