"""The batch read's column decoder agrees with protobuf's own parser on every value."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.columns import decode_column

Value = pytest.importorskip("feast.protos.feast.types.Value_pb2").Value
NULL_TS = -(2**63)


def _slow(blob: bytes) -> object:
    """One blob the protobuf way (what ``_SqliteRows._convert`` does)."""
    value = Value.FromString(blob)
    kind = value.WhichOneof("val")
    if kind is None:
        return None
    if kind == "unix_timestamp_val":
        seconds = value.unix_timestamp_val
        return None if seconds == NULL_TS else pd.Timestamp(seconds, unit="s", tz="UTC")
    return getattr(value, kind)


_INT = st.integers(-(2**63), 2**63 - 1)
#: Timestamps pandas can hold in nanoseconds (years 1678-2261).
_SECONDS = st.integers(-9_200_000_000, 9_200_000_000)
#: Per kind: Values the way Feast writes them, plus other encodings the decoder must hand on.
_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "int": st.one_of(_INT.map(lambda v: Value(int64_val=v)),
                     st.integers(-(2**31), 2**31 - 1).map(lambda v: Value(int32_val=v))),
    "float": st.one_of(st.floats(allow_nan=True).map(lambda v: Value(double_val=v)),
                       st.floats(width=32).map(lambda v: Value(float_val=v))),
    "bool": st.booleans().map(lambda v: Value(bool_val=v)),
    "timestamp": st.one_of(_SECONDS.map(lambda v: Value(unix_timestamp_val=v)),
                           st.just(Value(unix_timestamp_val=NULL_TS))),
    "string": st.text(max_size=200).map(lambda v: Value(string_val=v)),
}  # fmt: skip


def _expected(blob: bytes | None, kind: str) -> tuple[object, bool]:
    if blob is None:
        return None, False
    value = _slow(blob)
    if value is None:
        return None, False
    if kind == "timestamp":
        return pd.Timestamp(value).value, True  # type: ignore[arg-type]
    return value, True


@settings(max_examples=200, deadline=None)
@given(data=st.data(), kind=st.sampled_from(list(_VALUES)))
def test_decode_column_equals_protobuf(data: st.DataObject, kind: str) -> None:
    cells = data.draw(st.lists(st.one_of(st.none(), st.just(Value()), _VALUES[kind]), max_size=30))
    blobs = [None if c is None else c.SerializeToString() for c in cells]
    values, present = decode_column(blobs, kind, _slow)
    for i, blob in enumerate(blobs):
        expected, found = _expected(blob, kind)
        assert bool(present[i]) == found, (i, blob)
        if not found:
            continue
        got = values[i]
        if kind == "float" and np.isnan(expected):  # type: ignore[arg-type]
            assert np.isnan(got)
        else:
            # float_val blobs come back as the float32 protobuf gives, as in the row path.
            assert got == expected, (i, blob, got, expected)


def test_malformed_blobs_go_to_the_fallback() -> None:
    seen: list[bytes] = []

    def fallback(blob: bytes) -> object:
        seen.append(blob)
        return 7

    # A varint whose last byte still has its continuation bit, and a double cut short.
    values, present = decode_column([b"\x20\x80", b"\x20\x05"], "int", fallback)
    assert seen == [b"\x20\x80"] and values.tolist() == [7, 5] and present.all()
    values, present = decode_column([b"\x29\x00\x00"], "float", fallback)
    assert values.tolist() == [7.0] and present.all()


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.one_of(*_VALUES.values()), min_size=1, max_size=20))
def test_remembered_conversions_equal_fresh_ones(values: list[Any]) -> None:
    from feast.type_map import NULL_TIMESTAMP_INT_VALUE, feast_value_type_to_python_type

    from features import store

    rows = store._SqliteRows.__new__(store._SqliteRows)
    rows._value, rows._null_ts = Value, NULL_TIMESTAMP_INT_VALUE
    rows._generic = feast_value_type_to_python_type
    blobs = [v.SerializeToString() for v in values]
    store._CONVERTED.clear()
    for _ in range(2):  # the second pass is answered from memory (floats are not kept)
        for blob in blobs:
            got, want = rows._convert(blob), _slow(blob)
            assert type(got) is type(want)
            assert got == want or (got != got and want != want)  # NaN is NaN


def test_remembered_conversions_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from feast.type_map import NULL_TIMESTAMP_INT_VALUE

    from features import store

    monkeypatch.setattr(store, "_CONVERTED_MAX", 10)
    monkeypatch.setattr(store, "_CONVERTED", {})
    rows = store._SqliteRows.__new__(store._SqliteRows)
    rows._value, rows._null_ts = Value, NULL_TIMESTAMP_INT_VALUE
    for i in range(25):
        assert rows._convert(Value(int64_val=i).SerializeToString()) == i
        assert len(store._CONVERTED) <= 10
    assert rows._convert(Value(double_val=0.5).SerializeToString()) == 0.5
    assert Value(double_val=0.5).SerializeToString() not in store._CONVERTED
