"""Online read latency of ``features.store.OnlineReader``, one customer per call, in-process.

``measure_online_read`` is the reusable part (the end-to-end benchmark imports it). Run as a
script to measure SQLite and Redis on a synthetic table in a temporary copy of ``feature_repo/``:

    python benchmarks/online_read.py --customers 10000 --reads 5000 --stores sqlite redis
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from features import schema


class _Reader(Protocol):
    def read(self, customer_id: str) -> dict[str, object]: ...


def measure_online_read(
    reader: _Reader, ids: Sequence[str], n: int, warmup: int = 200, freeze_gc: bool = True
) -> dict[str, float]:
    """Time ``n`` calls of ``reader.read(id)``, cycling through ``ids``; latencies in ms.

    ``warmup`` untimed calls come first (registry cache, connections, code paths).
    ``freeze_gc`` moves the objects alive before timing out of the collector's reach
    (``gc.freeze()``, undone at the end), as the service does after start-up: otherwise the
    collections triggered by each read's allocations rescan Feast's and pandas' long-lived
    objects, which adds ≈ 0.2 ms to the median here.
    Returns ``n``, ``p50_ms``, ``p90_ms``, ``p99_ms``, ``mean_ms`` and ``max_ms``.
    """
    if not ids or n <= 0:
        raise ValueError("need at least one id and n > 0")
    for i in range(warmup):
        reader.read(ids[i % len(ids)])
    elapsed = np.empty(n, dtype=np.int64)
    clock = time.perf_counter_ns
    if freeze_gc:
        gc.collect()
        gc.freeze()
    try:
        for i in range(n):
            customer_id = ids[i % len(ids)]
            start = clock()
            reader.read(customer_id)
            elapsed[i] = clock() - start
    finally:
        if freeze_gc:
            gc.unfreeze()
    ms = elapsed / 1e6
    return {
        "n": float(n),
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "max_ms": float(ms.max()),
    }


def synthetic_table(n_customers: int, as_of: pd.Timestamp, seed: int = 0) -> pd.DataFrame:
    """A feature table with one row per customer at ``as_of`` and random values of each type."""
    rng = np.random.default_rng(seed)
    table: dict[str, object] = {
        schema.ENTITY: [f"C{i:08d}" for i in range(n_customers)],
        schema.EVENT_TIMESTAMP: pd.DatetimeIndex([as_of] * n_customers),
    }
    for name, kind in schema.STORED.items():
        if kind == "int":
            table[name] = rng.integers(0, 100, n_customers, dtype=np.int64)
        elif kind == "float":
            table[name] = rng.random(n_customers)
        elif kind == "bool":
            table[name] = rng.random(n_customers) < 0.5
        elif kind == "string":
            table[name] = [f"v{v}" for v in rng.integers(0, 10, n_customers)]
        else:
            days = rng.integers(1, 3000, n_customers)
            table[name] = as_of - pd.to_timedelta(days, unit="D")
    return pd.DataFrame(table)


def _run(store: str, customers: int, reads: int, work: Path) -> dict[str, float]:
    """Copy the repo, write, apply and materialize a synthetic table, then measure."""
    from features.store import FeastAdapter

    repo = work / store
    shutil.copytree(Path(__file__).resolve().parents[1] / "feature_repo", repo)
    for stale in (repo / "data").glob("*"):
        if stale.name != ".gitkeep":
            stale.unlink()
    yaml_name = "feature_store.yaml" if store == "sqlite" else "feature_store.redis.yaml"
    yaml_file = repo / yaml_name
    # A project of its own, so that Redis keys of other runs are neither read nor deleted.
    project = f"nba_bench_{uuid.uuid4().hex[:8]}"
    yaml_file.write_text(yaml_file.read_text().replace("project: nba", f"project: {project}"))
    adapter = FeastAdapter(repo, yaml_file)
    as_of = pd.Timestamp("2025-01-01", tz="UTC")
    adapter.write_offline(synthetic_table(customers, as_of))
    adapter.apply()
    adapter.materialize(end=as_of.to_pydatetime())
    ids = [f"C{i:08d}" for i in np.random.default_rng(1).integers(0, customers, 1000)]
    try:
        return measure_online_read(adapter.online_reader(), ids, reads)
    finally:
        adapter.store.teardown()


def main(argv: Sequence[str] | None = None) -> None:
    """Measure the stores named on the command line and print one JSON line per store."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--reads", type=int, default=5_000)
    parser.add_argument("--stores", nargs="+", choices=("sqlite", "redis"), default=["sqlite"])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nba-online-read-") as work:
        for store in args.stores:
            result = _run(store, args.customers, args.reads, Path(work))
            print(json.dumps({"store": store, "customers": args.customers, **result}))


if __name__ == "__main__":
    main()
