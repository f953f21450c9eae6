"""Shared pieces of the simulator: time units, airports, the customers' latent traits and the
vectorized drawing helpers (``nba.simulate`` draws the world, ``nba.decisions`` its decisions)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

DAY_NS = 86_400 * 10**9
HOUR_NS = 3_600 * 10**9
MIN_NS = 60 * 10**9

#: Airports with (latitude, longitude): routes and their distances come from these.
AIRPORTS: dict[str, tuple[float, float]] = {
    "JFK": (40.64, -73.78), "LAX": (33.94, -118.41), "ORD": (41.98, -87.90),
    "ATL": (33.64, -84.43), "DFW": (32.90, -97.04), "SFO": (37.62, -122.38),
    "MIA": (25.79, -80.29), "SEA": (47.45, -122.31), "BOS": (42.37, -71.01),
    "DEN": (39.86, -104.67), "LHR": (51.47, -0.45), "CDG": (49.01, 2.55),
    "FRA": (50.03, 8.56), "AMS": (52.31, 4.76), "MAD": (40.47, -3.56),
    "FCO": (41.80, 12.25), "DXB": (25.25, 55.36), "NRT": (35.77, 140.39),
    "SIN": (1.36, 103.99), "HKG": (22.31, 113.91), "SYD": (-33.94, 151.18),
    "GRU": (-23.43, -46.47), "MEX": (19.44, -99.07), "YYZ": (43.68, -79.63),
}  # fmt: skip


@dataclass
class Customers:
    ids: np.ndarray
    price_sensitivity: np.ndarray
    trips_per_year: np.ndarray
    engagement: np.ndarray
    typical_fare: np.ndarray
    created_ns: np.ndarray
    active_from_ns: np.ndarray
    home: np.ndarray
    opt_in: np.ndarray
    prior_miles: np.ndarray


def ids(prefix: str, n: int, start: int = 0) -> np.ndarray:
    return np.array([f"{prefix}{i:07d}" for i in range(start, start + n)], dtype=object)


def utc(ns: np.ndarray) -> pd.Series:
    """Nanoseconds as UTC timestamps, floored to whole seconds as a brand's logs would be."""
    ns = np.asarray(ns, dtype=np.int64)
    whole = np.where(ns == np.iinfo(np.int64).min, ns, ns - ns % 10**9)
    return pd.Series(pd.to_datetime(whole, utc=True))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def uniform_between(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return lo + (rng.random(len(lo)) * np.maximum(hi - lo, 0)).astype(np.int64)


def distance_miles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    codes = pd.Index(list(AIRPORTS))
    coords = np.radians(np.array(list(AIRPORTS.values())))
    ia, ib = codes.get_indexer(a), codes.get_indexer(b)
    la1, lo1 = coords[ia, 0], coords[ia, 1]
    la2, lo2 = coords[ib, 0], coords[ib, 1]
    h = np.sin((la2 - la1) / 2) ** 2 + np.cos(la1) * np.cos(la2) * np.sin((lo2 - lo1) / 2) ** 2
    return 3958.8 * 2 * np.arcsin(np.sqrt(h))


def routes(rng: np.random.Generator, home: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    codes = np.array(list(AIRPORTS), dtype=object)
    origin = np.where(pd.isna(home), codes[rng.integers(0, len(codes), len(home))], home)
    dest = codes[rng.integers(0, len(codes), len(home))]
    same = dest == origin
    while same.any():
        dest[same] = codes[rng.integers(0, len(codes), int(same.sum()))]
        same = dest == origin
    return origin.astype(object), dest


def repeat_poisson(rng: np.random.Generator, rate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Draw a count per row and return (row index per event, 0-based rank within its row)."""
    counts = rng.poisson(np.maximum(rate, 0))
    owner = np.repeat(np.arange(len(rate)), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    return owner, np.arange(len(owner)) - first
