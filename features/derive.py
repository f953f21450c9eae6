"""Request-time features: durations from stored timestamps, against the decision time.

Stored features hold *when* things happened (last negative experience, oldest open case, last
milestone, ...). Durations are derived here, against the time of the request or of the logged
decision, so that a "14 days after a disruption" rule ends on the right day however long ago
the online store was materialized. One implementation serves a single online request (a dict)
and a training frame (columns), so training and serving cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from features import schema

_NS_PER_DAY = 86_400 * 10**9
_NAT = np.iinfo(np.int64).min

#: derived "days since" feature -> the stored timestamp it is measured from.
_DURATIONS: dict[str, str] = {
    "tenure_days": "created_at",
    "days_since_last_booking": "last_booking_at",
    "days_since_last_negative": "last_negative_at",
    "days_since_last_milestone": "last_milestone_at",
    "oldest_open_case_age_days": "oldest_open_case_at",
}


def _ns(values: Any) -> np.ndarray:
    """Timestamps (Series, array, scalar, None) as int64 ns since the epoch; missing -> NaT."""
    if isinstance(values, pd.Series | pd.DatetimeIndex | np.ndarray | list):
        index = pd.DatetimeIndex(pd.to_datetime(values, utc=True))
        return index.as_unit("ns").asi8
    if values is None or values is pd.NaT or (isinstance(values, float) and np.isnan(values)):
        return np.array([_NAT], dtype=np.int64)
    stamp = pd.Timestamp(values)
    if stamp.tzinfo is None:
        raise ValueError(f"timestamp {values!r} must be timezone-aware")
    return np.array([stamp.value], dtype=np.int64)


def derive_columns(stored: Mapping[str, Any], as_of: Any) -> dict[str, np.ndarray]:
    """Derived features for one or many rows.

    Args:
        stored: stored feature columns by name (Series/arrays for many rows, scalars for one).
        as_of: the decision time: one tz-aware timestamp, or one per row.

    Returns:
        ``schema.DERIVED`` name -> float/bool array. A duration is NaN when its timestamp is
        missing; a timestamp after ``as_of`` (clock skew on a pushed event) counts as 0 days.
    """
    now = _ns(as_of)
    out: dict[str, np.ndarray] = {}
    for name, column in _DURATIONS.items():
        then = _ns(stored.get(column))
        missing = then == _NAT
        days = np.maximum(now - np.where(missing, 0, then), 0) / _NS_PER_DAY
        out[name] = np.where(missing | (now == _NAT), np.nan, days)
    neg = _ns(stored.get("last_negative_at"))
    comp = _ns(stored.get("last_compensated_at"))
    out["compensated_since_last_negative"] = (neg != _NAT) & (comp != _NAT) & (comp >= neg)
    return out


def derive_features(stored: pd.DataFrame, as_of: pd.Series | datetime | str) -> pd.DataFrame:
    """A frame of stored features with the ``schema.DERIVED`` columns added (batch use)."""
    if isinstance(as_of, pd.Series):
        as_of = as_of.to_numpy()
    derived = derive_columns({c: stored[c] for c in stored.columns}, as_of)
    frame = stored.copy()
    for name, values in derived.items():
        frame[name] = np.broadcast_to(values, (len(frame),)) if len(frame) else values[:0]
    return frame


def _ns_one(value: Any) -> int | None:
    """One timestamp as int ns since the epoch, None when missing (``_ns`` for a scalar)."""
    if value is None or value is pd.NaT or (isinstance(value, float) and np.isnan(value)):
        return None
    stamp = value if isinstance(value, pd.Timestamp) else pd.Timestamp(value)
    if stamp.tzinfo is None:
        raise ValueError(f"timestamp {value!r} must be timezone-aware")
    return int(stamp.value)


def derive_row(stored: Mapping[str, Any], as_of: datetime) -> dict[str, Any]:
    """Derived features of one customer (request path): name -> float or bool.

    The scalar twin of ``derive_columns`` (the batch and training code), written without
    arrays because a request derives one row: equal to it value for value, including the
    float rounding (a property test compares them).
    """
    now = _ns_one(as_of)
    out: dict[str, Any] = {}
    for name, column in _DURATIONS.items():
        then = _ns_one(stored.get(column))
        if then is None or now is None:
            out[name] = float("nan")
        else:
            # float(a) / float(b), as numpy divides an int64 array by an int.
            out[name] = float(max(now - then, 0)) / float(_NS_PER_DAY)
    neg = _ns_one(stored.get("last_negative_at"))
    comp = _ns_one(stored.get("last_compensated_at"))
    out["compensated_since_last_negative"] = neg is not None and comp is not None and comp >= neg
    return out


def model_vector(row: Mapping[str, Any]) -> np.ndarray:
    """The model's input row, by feature name (``schema.MODEL_FEATURES``); missing -> NaN."""
    out = np.empty(len(schema.MODEL_FEATURES), dtype=np.float64)
    for i, name in enumerate(schema.MODEL_FEATURES):
        value = row.get(name)
        out[i] = np.nan if value is None else float(value)
    return out
