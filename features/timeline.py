"""Timelines: one kind of event sorted by (customer, time), answering as-of questions fast.

Every event table becomes a *timeline* sorted by one int64 key ``customer_code * span +
time_ms``. A query (customer, t) is then a ``searchsorted`` into that key; windowed counts and
sums are differences of positions and prefix sums, and "the last event before t" is the
position just before. Shared by ``features.build`` and ``features.traveller``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

MS_PER_DAY = 86_400_000
NS_PER_MS = 1_000_000
# Headroom below 2**63 for the composite key and the look-back offsets.
KEY_LIMIT = 2**62


def to_ms(values: pd.Series | pd.DatetimeIndex | np.ndarray) -> np.ndarray:
    """Timestamps (tz-aware or datetime64) as int64 milliseconds since the epoch (NaT -> min)."""
    arr = np.asarray(pd.DatetimeIndex(values).as_unit("ns").asi8, dtype=np.int64)
    return arr // NS_PER_MS


@dataclass(frozen=True)
class Clock:
    """Maps (customer code, time in ms) to one sortable int64 key."""

    t0: int
    span: int

    def key(self, codes: np.ndarray, t_ms: np.ndarray) -> np.ndarray:
        # Clip so that look-back offsets before the first record stay inside the customer's block.
        rel = np.clip(t_ms - self.t0, 0, self.span - 1)
        return codes.astype(np.int64) * self.span + rel


class Timeline:
    """One kind of event, sorted by (customer, time), answering as-of questions for queries."""

    def __init__(self, clock: Clock, codes: np.ndarray, t_ms: np.ndarray) -> None:
        self.clock = clock
        keys = clock.key(codes, t_ms)
        self.order = np.argsort(keys, kind="stable")
        self.keys = keys[self.order]
        self.t_ms = t_ms[self.order]

    def __len__(self) -> int:
        return len(self.keys)

    def sorted(self, values: np.ndarray) -> np.ndarray:
        """``values`` (aligned with the rows given to the constructor) in timeline order."""
        return np.asarray(values)[self.order]

    def position(self, q_codes: np.ndarray, q_ms: np.ndarray) -> np.ndarray:
        """Index of the first event of the query's customer at or after its time."""
        return np.searchsorted(self.keys, self.clock.key(q_codes, q_ms), side="left")

    def block_start(self, q_codes: np.ndarray) -> np.ndarray:
        """Index of the query customer's first event."""
        return np.searchsorted(self.keys, q_codes.astype(np.int64) * self.clock.span, side="left")

    def count_in(self, q_codes: np.ndarray, q_ms: np.ndarray, days: int | None) -> np.ndarray:
        """Events in ``[t - days, t)`` (all events before t when ``days`` is None)."""
        end = self.position(q_codes, q_ms)
        start = (
            self.block_start(q_codes)
            if days is None
            else self.position(q_codes, q_ms - days * MS_PER_DAY)
        )
        return (end - start).astype(np.int64)

    def sum_in(
        self, values: np.ndarray, q_codes: np.ndarray, q_ms: np.ndarray, days: int | None
    ) -> np.ndarray:
        """Sum of ``values`` over events in ``[t - days, t)``."""
        prefix = np.concatenate([[0.0], np.cumsum(self.sorted(values), dtype=np.float64)])
        end = self.position(q_codes, q_ms)
        start = (
            self.block_start(q_codes)
            if days is None
            else self.position(q_codes, q_ms - days * MS_PER_DAY)
        )
        return prefix[end] - prefix[start]

    def last_before(self, q_codes: np.ndarray, q_ms: np.ndarray) -> np.ndarray:
        """Timeline index of the customer's last event before t, or -1."""
        pos = self.position(q_codes, q_ms)
        found = pos > self.block_start(q_codes)
        return np.where(found, pos - 1, -1)


def take(values: np.ndarray, idx: np.ndarray, fill: object) -> np.ndarray:
    """``values[idx]`` with ``fill`` where idx is -1."""
    dtype = object if values.dtype == object else np.result_type(values.dtype, np.asarray(fill))
    out = np.full(len(idx), fill, dtype=dtype)
    ok = idx >= 0
    out[ok] = values[idx[ok]]
    return out
