"""Stored online features of many customers as columns, and the fast decoding of Feast values.

``/decide_batch`` decides up to 10,000 customers at once. Reading their features as one dict per
customer (``DirectOnlineReader.read_many``) meant one Python object per customer and feature
(≈ 320,000 for 10,000 customers) and a protobuf parse for each: most of a batch's time. The
batch path reads the same values as columns instead (``FeatureColumns``): one array per stored
feature plus a mask of where the store had a value, decoded from Feast's serialized ``Value``
protos a whole column at a time with numpy.

Feast stores every value as a serialized ``feast.types.Value`` message with one field of a
``oneof`` set. Its wire format is one tag byte (field number << 3 | wire type) and then:

* ``double_val`` (field 5, fixed64): 8 little-endian bytes;
* ``int64_val`` (4), ``bool_val`` (7), ``unix_timestamp_val`` (8): a base-128 varint;
* ``string_val`` (2): a varint length and UTF-8 bytes.

An empty blob is a ``Value`` with nothing set (Feast writes it for a null). ``decode_column``
handles these encodings for the feature's declared kind and hands anything else (another
field, a malformed blob) to the caller's ``fallback``, one value at a time, so an unexpected
encoding is slower, never wrong. A unit test compares it with protobuf's own parser.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pandas as pd

from features import schema

#: Tag byte of each kind's field in ``feast.types.Value`` (field number << 3 | wire type).
TAGS: Final[dict[str, int]] = {
    "float": 5 << 3 | 1,  # double_val, fixed64
    "int": 4 << 3 | 0,  # int64_val, varint
    "bool": 7 << 3 | 0,  # bool_val, varint
    "timestamp": 8 << 3 | 0,  # unix_timestamp_val, varint
    "string": 2 << 3 | 2,  # string_val, length-delimited
}

#: numpy dtype of each kind's column (timestamps: int64 nanoseconds since the epoch, UTC).
DTYPES: Final[dict[str, Any]] = {
    "float": np.float64,
    "int": np.int64,
    "bool": np.bool_,
    "timestamp": np.int64,
    "string": object,
}

#: Feast's "null timestamp" (``feast.type_map.NULL_TIMESTAMP_INT_VALUE``): read as missing.
NULL_TIMESTAMP_SECONDS: Final = -(2**63)
#: Seconds beyond this do not fit int64 nanoseconds: such a value goes to the fallback (which
#: fails on it as the row path's ``pd.Timestamp`` does).
_MAX_SECONDS: Final = (2**63 - 1) // 1_000_000_000

_NS_PER_SECOND: Final = 1_000_000_000
_MAX_VARINT: Final = 10

#: Decodes one serialized ``Value`` the slow way: the Python value (None when unset).
Fallback = Callable[[bytes], object]


@dataclass
class FeatureColumns:
    """Stored features of ``n`` customers: ``values[name]`` and ``present[name]`` per feature.

    ``values`` holds each kind in its own dtype (``DTYPES``): floats, int64, bools, int64
    nanoseconds since the epoch for timestamps, Python strings; where ``present`` is False the
    store had no (fresh) value and ``values`` holds a filler (0, NaN, False or None).
    """

    n: int
    values: dict[str, np.ndarray]
    present: dict[str, np.ndarray]

    def numeric(self, name: str) -> np.ndarray:
        """A numeric or bool feature as float64, NaN where missing (model and rule input)."""
        out = self.values[name].astype(np.float64)
        out[~self.present[name]] = np.nan
        return out

    def datetimes(self, name: str) -> np.ndarray:
        """A timestamp feature as ``datetime64[ns]`` (UTC), NaT where missing."""
        out = self.values[name].view("datetime64[ns]").copy()
        out[~self.present[name]] = np.datetime64("NaT")
        return out

    def take(self, index: np.ndarray) -> FeatureColumns:
        """The rows at ``index`` (positions, repeats allowed), in that order."""
        return FeatureColumns(
            len(index),
            {k: v[index] for k, v in self.values.items()},
            {k: p[index] for k, p in self.present.items()},
        )

    def row(self, i: int) -> dict[str, object]:
        """Row ``i`` as ``DirectOnlineReader.read`` gives it: Python values, None if missing."""
        out: dict[str, object] = {}
        for name, kind in schema.STORED.items():
            if not self.present[name][i]:
                out[name] = None
            elif kind == "timestamp":
                out[name] = pd.Timestamp(int(self.values[name][i]), unit="ns", tz="UTC")
            elif kind == "string":
                out[name] = self.values[name][i]
            else:
                out[name] = self.values[name][i].item()
        return out

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]]) -> FeatureColumns:
        """Columns from ``read_many``-style dicts (stub readers, other online stores)."""
        n = len(records)
        values: dict[str, np.ndarray] = {}
        present: dict[str, np.ndarray] = {}
        for name, kind in schema.STORED.items():
            raw = [record.get(name) for record in records]
            mask = np.fromiter((v is not None for v in raw), dtype=bool, count=n)
            if kind == "string":
                column = np.empty(n, dtype=object)
                column[:] = raw
            elif kind == "timestamp":
                column = np.zeros(n, dtype=np.int64)
                for i, value in enumerate(raw):
                    if value is not None:
                        stamp = pd.Timestamp(value)
                        if stamp is pd.NaT:
                            mask[i] = False
                            continue
                        if stamp.tzinfo is None:
                            raise ValueError(f"{name}: timestamp {value!r} has no time zone")
                        column[i] = stamp.value
            else:
                column = _numbers(raw, mask, kind)
            values[name] = column
            present[name] = mask
        return cls(n, values, present)


def _numbers(raw: list[Any], mask: np.ndarray, kind: str) -> np.ndarray:
    """A numeric column from Python values; a value that is not a number counts as missing."""
    filler = np.nan if kind == "float" else 0
    try:
        column = np.array([filler if v is None else v for v in raw], dtype=np.float64)
    except (TypeError, ValueError):  # e.g. a string where a number belongs: fail closed
        column = np.full(len(raw), np.nan)
        for i, value in enumerate(raw):
            if value is None or isinstance(value, str):
                mask[i] = False
                continue
            try:
                column[i] = float(value)
            except (TypeError, ValueError):
                mask[i] = False
    mask &= ~np.isnan(column) | (kind == "float")
    if kind == "bool":
        return column != 0
    # An int feature holding a fraction stays float rather than being truncated.
    if kind == "int" and np.array_equal(column[mask], np.trunc(column[mask])):
        return np.where(mask, column, 0).astype(np.int64)
    return column


def decode_column(
    blobs: Sequence[bytes | None], kind: str, fallback: Fallback
) -> tuple[np.ndarray, np.ndarray]:
    """Decode one feature's serialized ``Value`` blobs (None: no row in the store).

    Args:
        blobs: one blob (or None) per customer.
        kind: the feature's kind in ``features.schema`` (``int``, ``float``, ``bool``,
            ``timestamp``, ``string``).
        fallback: decoder for a blob that is not the kind's expected encoding; it returns the
            Python value (a ``pd.Timestamp`` or ``datetime`` for timestamps), None when unset.

    Returns:
        ``(values, present)`` as in ``FeatureColumns``.
    """
    n = len(blobs)
    lengths = np.fromiter((0 if b is None else len(b) for b in blobs), dtype=np.int64, count=n)
    filled = np.flatnonzero(lengths)
    packed = b"".join([blobs[i] for i in filled.tolist()])  # type: ignore[misc]
    sizes = lengths[filled]
    starts = np.cumsum(sizes) - sizes
    got, found = decode_packed(packed, starts, sizes, kind, fallback)
    values, present = empty_column(n, kind)
    values[filled] = got
    present[filled] = found
    return values, present


def empty_column(n: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """A column of ``n`` missing values of ``kind``: (filler values, all-False mask)."""
    dtype = DTYPES[kind]
    values = np.empty(n, dtype=object) if dtype is object else np.zeros(n, dtype=dtype)
    if kind == "float":
        values[:] = np.nan
    return values, np.zeros(n, dtype=bool)


def decode_packed(
    packed: bytes, starts: np.ndarray, sizes: np.ndarray, kind: str, fallback: Fallback
) -> tuple[np.ndarray, np.ndarray]:
    """``decode_column`` for blobs laid end to end in ``packed`` (blob ``i`` is
    ``packed[starts[i] : starts[i] + sizes[i]]``; an empty one is an unset ``Value``)."""
    n = len(starts)
    values, present = empty_column(n, kind)
    if not n:
        return values, present
    starts = np.asarray(starts, dtype=np.int64)
    sizes = np.asarray(sizes, dtype=np.int64)
    if kind == "string":
        _decode_strings(packed, starts, sizes, values, present, fallback)
        return values, present
    # One spare byte at the end keeps every gathered index in range (empty blobs read a tag).
    buffer = np.frombuffer(packed + b"\0", dtype=np.uint8)
    expected = (buffer[starts] == TAGS[kind]) & (sizes > 0)
    if kind == "float":
        good = expected & (sizes == 9)
        rows = np.flatnonzero(good)
        # Eight bytes after each tag, little-endian: gather them and view them as doubles.
        offsets = starts[rows][:, None] + np.arange(1, 9)
        values[rows] = buffer[offsets].view("<f8").reshape(-1) if len(rows) else []
        present[rows] = True
    else:
        good = expected & (sizes >= 2) & (sizes <= _MAX_VARINT + 1)
        # A varint's last byte has no continuation bit; anything else is malformed.
        good &= buffer[np.where(good, starts + sizes - 1, 0)] < 0x80
        rows = np.flatnonzero(good)
        number = _varints(buffer, starts[rows] + 1, sizes[rows] - 1)
        if kind == "bool":
            values[rows] = number != 0
            present[rows] = True
        elif kind == "int":
            values[rows] = number
            present[rows] = True
        else:  # timestamp: seconds since the epoch
            null = number == NULL_TIMESTAMP_SECONDS
            fits = np.abs(np.where(null, 0, number)) <= _MAX_SECONDS
            known = fits & ~null
            values[rows[known]] = number[known] * _NS_PER_SECOND
            present[rows[known]] = True
            good[rows[~fits]] = False
    for i in np.flatnonzero(~good & (sizes > 0)).tolist():
        blob = packed[starts[i] : starts[i] + sizes[i]]
        _fill_one(i, fallback(blob), kind, values, present)
    return values, present


def _varints(buffer: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Base-128 varints (two's complement int64) at ``starts`` of ``sizes`` bytes each."""
    out = np.zeros(len(starts), dtype=np.uint64)
    if not len(starts):
        return out.view(np.int64)
    for k in range(int(sizes.max())):
        has = sizes > k
        byte = buffer[np.where(has, starts + k, 0)].astype(np.uint64) & np.uint64(0x7F)
        out |= np.where(has, byte << np.uint64(7 * k), np.uint64(0))
    return out.view(np.int64)


def _decode_strings(
    packed: bytes,
    starts: np.ndarray,
    sizes: np.ndarray,
    values: np.ndarray,
    present: np.ndarray,
    fallback: Fallback,
) -> None:
    tag = TAGS["string"]
    for i, (start, size) in enumerate(zip(starts.tolist(), sizes.tolist(), strict=True)):
        if not size:
            continue
        blob = packed[start : start + size]
        # One length byte covers strings under 128 bytes (ids, kinds); longer ones go the slow way.
        if blob[0] == tag and size >= 2 and blob[1] < 0x80 and size == blob[1] + 2:
            try:
                values[i] = blob[2:].decode("utf-8")
                present[i] = True
                continue
            except UnicodeDecodeError:
                pass
        _fill_one(i, fallback(blob), "string", values, present)


def _fill_one(i: int, value: object, kind: str, values: np.ndarray, present: np.ndarray) -> None:
    """Store one fallback-decoded value in its column."""
    if value is None:
        return
    if kind == "timestamp":
        stamp = pd.Timestamp(value)
        if stamp is pd.NaT:
            return
        values[i] = (stamp if stamp.tzinfo else stamp.tz_localize("UTC")).value
    else:
        values[i] = value
    present[i] = True
