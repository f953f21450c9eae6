"""The request path's scalar ``derive_row`` equals the batch ``derive_columns`` exactly."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.derive import _DURATIONS, derive_columns, derive_row

NOW = pd.Timestamp("2026-11-23T12:00:00.123456789Z")
_STAMPS = st.one_of(
    st.none(),
    st.just(pd.NaT),
    st.just(float("nan")),
    st.integers(-(10**18), 10**17).map(lambda ns: NOW + pd.Timedelta(ns, unit="ns")),
    st.integers(0, 10**9).map(
        lambda s: (NOW - pd.Timedelta(s, unit="s")).floor("us").to_pydatetime()
    ),
)
COLUMNS = sorted({*_DURATIONS.values(), "last_compensated_at", "last_negative_at"})


@settings(max_examples=400, deadline=None)
@given(st.fixed_dictionaries({c: _STAMPS for c in COLUMNS}))
def test_derive_row_equals_derive_columns(stored: dict[str, object]) -> None:
    row = derive_row(stored, NOW)
    columns = derive_columns(stored, NOW)
    assert row.keys() == columns.keys()
    for name, values in columns.items():
        expected = values[0].item()
        if isinstance(expected, float) and math.isnan(expected):
            assert math.isnan(row[name]), name
        else:
            assert row[name] == expected and type(row[name]) is type(expected), name


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        derive_row({"created_at": pd.Timestamp("2026-01-01")}, NOW)
