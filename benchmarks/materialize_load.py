"""Online reads of the SQLite store while ``nba features`` materializes it (issue 14).

A reader process (the service: ``DirectOnlineReader.read``, one customer per call, back to
back) reads while this process re-materializes a synthetic table into the same store, as a
daily ``nba features`` does under a live service. Reads are split into the phases before,
during and after the materialization; a read that raises (SQLite's "database is locked") is an
error, as the service answers it degraded. Run:

    python -m benchmarks.materialize_load --customers 20000 --journal delete wal

``delete`` is SQLite's default rollback journal (the store before issue 14), ``wal`` what
``FeastAdapter`` sets now (``features.store.use_wal``). Each mode gets a fresh repo copy.
``--busy-timeout 5`` gives the reader sqlite3's default deadline, as the service had before
(now ``SQLITE_BUSY_TIMEOUT_S``, 2 s): the old stalls are capped by it.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.online_read import synthetic_table
from features.store import SQLITE_BUSY_TIMEOUT_S, FeastAdapter

#: Phases of a run, in order.
PHASES = ("before", "during", "after")
#: ``FeastAdapter``'s WAL switch, disabled for the runs of the old rollback journal.
_WAL = FeastAdapter._online_wal


@dataclass
class LoadResult:
    """Reads of one run: start time (monotonic s), latency (ms), failed; and the phase bounds."""

    journal: str
    customers: int
    starts: np.ndarray
    latency_ms: np.ndarray
    failed: np.ndarray
    errors: list[str]
    materialize_start: float
    materialize_end: float

    def phase(self, name: str) -> np.ndarray:
        """Mask of the reads that started in phase ``name``."""
        if name == "before":
            return self.starts < self.materialize_start
        if name == "during":
            return (self.starts >= self.materialize_start) & (self.starts < self.materialize_end)
        return self.starts >= self.materialize_end

    def summary(self, name: str) -> dict[str, float]:
        """reads, p50/p99/max latency (ms) and failed reads of one phase."""
        mask = self.phase(name)
        ms = self.latency_ms[mask]
        if len(ms) == 0:
            return {"reads": 0, "p50_ms": np.nan, "p99_ms": np.nan, "max_ms": np.nan, "errors": 0}
        return {
            "reads": int(mask.sum()),
            "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max()),
            "errors": int(self.failed[mask].sum()),
        }


def _reader(
    repo: str, ids: list[str], busy_s: float, ready: object, stop: object, out: object
) -> None:
    """The service's read path in its own process, until ``stop`` is set.

    ``busy_s`` replaces ``SQLITE_BUSY_TIMEOUT_S`` in this process (5.0: sqlite3's default,
    which the service used before issue 14).
    """
    import sqlite3

    import features.store

    features.store.SQLITE_BUSY_TIMEOUT_S = busy_s
    reader = FeastAdapter(Path(repo), Path("feature_store.yaml")).direct_reader()
    for customer in ids[:200]:  # warm-up: registry, connection, code paths
        reader.read(customer)
    starts, latency, failed, errors = [], [], [], []
    clock = time.monotonic
    ready.set()  # type: ignore[attr-defined]
    i = 0
    while not stop.is_set():  # type: ignore[attr-defined]
        start = clock()
        try:
            reader.read(ids[i % len(ids)])
            bad = False
        except sqlite3.OperationalError as error:
            bad = True
            errors.append(str(error))
        starts.append(start)
        latency.append((clock() - start) * 1000)
        failed.append(bad)
        i += 1
    out.put((starts, latency, failed, errors[:5]))  # type: ignore[attr-defined]


def prepare(work: Path, customers: int, journal: str) -> tuple[Path, pd.Timestamp]:
    """A repo copy with ``customers`` materialized once, then a newer table written offline."""
    repo = work / f"repo-{journal}"
    shutil.copytree(Path(__file__).resolve().parents[1] / "feature_repo", repo)
    for stale in (repo / "data").glob("*"):
        if stale.name != ".gitkeep":
            stale.unlink()
    adapter = FeastAdapter(repo, Path("feature_store.yaml"))
    first = pd.Timestamp("2025-01-01", tz="UTC")
    adapter.write_offline(synthetic_table(customers, first, seed=0))
    adapter.apply()
    adapter.materialize(end=first.to_pydatetime())
    # Every value changes in the second materialization: a full rewrite, as a daily run does.
    second = first + pd.Timedelta(days=1)
    adapter.write_offline(synthetic_table(customers, second, seed=1))
    return repo, second


def measure(
    work: Path,
    customers: int,
    journal: str,
    idle_s: float = 1.5,
    tail_s: float = 1.0,
    busy_s: float | None = None,
) -> LoadResult:
    """One run: a reader process reads before, during and after ``FeastAdapter.materialize``.

    ``journal="delete"`` disables ``FeastAdapter``'s WAL switch for the run (the store as it
    was before issue 14); the reader process never switches anything itself.
    """
    no_wal = lambda self: None  # noqa: E731
    FeastAdapter._online_wal = _WAL if journal == "wal" else no_wal  # type: ignore[method-assign]
    try:
        busy = SQLITE_BUSY_TIMEOUT_S if busy_s is None else busy_s
        return _measure(work, customers, journal, idle_s, tail_s, busy)
    finally:
        FeastAdapter._online_wal = _WAL  # type: ignore[method-assign]


def _measure(
    work: Path, customers: int, journal: str, idle_s: float, tail_s: float, busy_s: float
) -> LoadResult:
    repo, end = prepare(work, customers, journal)
    ids = [f"C{i:08d}" for i in np.random.default_rng(2).integers(0, customers, 5000)]
    context = mp.get_context("spawn")
    ready, stop, out = context.Event(), context.Event(), context.Queue()
    process = context.Process(target=_reader, args=(str(repo), ids, busy_s, ready, stop, out))
    process.start()
    try:
        if not ready.wait(120):
            raise RuntimeError("the reader process did not start within 120 s")
        adapter = FeastAdapter(repo, Path("feature_store.yaml"))
        adapter.store  # noqa: B018 - build the FeatureStore before the clock starts
        time.sleep(idle_s)
        started = time.monotonic()
        adapter.materialize(end=end.to_pydatetime())
        ended = time.monotonic()
        time.sleep(tail_s)
        stop.set()
        starts, latency, failed, errors = out.get(timeout=60)
    finally:
        stop.set()
        process.join(30)
        if process.is_alive():
            process.kill()
    return LoadResult(journal, customers, np.asarray(starts), np.asarray(latency),
                      np.asarray(failed, dtype=bool), errors, started, ended)  # fmt: skip


def table(results: Sequence[LoadResult]) -> str:
    """The results as a fixed-width text table."""
    head = f"{'journal':8} {'phase':7} {'reads':>7} {'p50 ms':>8} {'p99 ms':>9} {'max ms':>9} "
    lines = [head + f"{'errors':>7} {'materialize s':>14}"]
    for result in results:
        took = result.materialize_end - result.materialize_start
        for name in PHASES:
            row = result.summary(name)
            lines.append(
                f"{result.journal:8} {name:7} {row['reads']:>7} {row['p50_ms']:>8.2f} "
                f"{row['p99_ms']:>9.2f} {row['max_ms']:>9.1f} {row['errors']:>7} "
                f"{took if name == 'during' else float('nan'):>14.1f}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Measure the journal modes named on the command line and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument(
        "--journal", nargs="+", choices=("delete", "wal"), default=["delete", "wal"]
    )
    parser.add_argument(
        "--busy-timeout",
        type=float,
        default=SQLITE_BUSY_TIMEOUT_S,
        help="the reader's SQLite busy timeout, s (5: sqlite3's default, the service before)",
    )
    args = parser.parse_args(argv)
    results = []
    for journal in args.journal:
        with tempfile.TemporaryDirectory(prefix="nba-materialize-load-") as work:
            results.append(measure(Path(work), args.customers, journal, busy_s=args.busy_timeout))
            for error in results[-1].errors:
                print(f"{journal}: read error: {error}")
    print(f"{args.customers:,} customers, one reader process reading back to back "
          f"(busy timeout {args.busy_timeout:g} s)")  # fmt: skip
    print(table(results))


if __name__ == "__main__":
    main()
