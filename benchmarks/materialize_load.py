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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.online_read import synthetic_table
from features.store import PUSH_COLUMNS, SQLITE_BUSY_TIMEOUT_S, FeastAdapter

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
    #: The pushes (``/events``) of a second process during the same run, if asked for.
    pushes: LoadResult | None = None

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
    _timed_calls(lambda i: reader.read(ids[i % len(ids)]), sqlite3.OperationalError, 0.0, ready,
             stop, out)  # fmt: skip


def _pusher(repo: str, customers: int, ready: object, stop: object, out: object) -> None:
    """``/events``' write path in its own process: one push every 50 ms until ``stop``."""
    adapter = FeastAdapter(Path(repo), Path("feature_store.yaml"))
    when = pd.Timestamp("2025-01-03", tz="UTC")
    rows = synthetic_table(min(customers, 500), when, seed=3).loc[:, list(PUSH_COLUMNS)]
    for i in range(3):  # warm-up
        adapter.push(rows.iloc[[i]])
    # Any failure is what /events would answer 503 for.
    _timed_calls(lambda i: adapter.push(rows.iloc[[i % len(rows)]]), Exception, 0.05, ready, stop,
             out)  # fmt: skip


def _timed_calls(
    call: Callable[[int], object],
    failure: type[Exception],
    pause: float,
    ready: object,
    stop: object,
    out: object,
) -> None:
    """Call ``call(i)`` for i = 0, 1, ... until ``stop``, timing each call and counting the
    ``failure`` exceptions; put (starts, latencies in ms, failed flags, first errors) on ``out``."""
    starts: list[float] = []
    latency: list[float] = []
    failed: list[bool] = []
    errors: list[str] = []
    clock = time.monotonic
    ready.set()  # type: ignore[attr-defined]
    i = 0
    while not stop.is_set():  # type: ignore[attr-defined]
        start = clock()
        try:
            call(i)
            bad = False
        except failure as error:
            bad = True
            errors.append(f"{type(error).__name__}: {error}")
        starts.append(start)
        latency.append((clock() - start) * 1000)
        failed.append(bad)
        i += 1
        if pause:
            time.sleep(pause)
    out.put((starts, latency, failed, errors[:5]))  # type: ignore[attr-defined]


def prepare(
    work: Path, customers: int, journal: str, write_batch: int | None = None
) -> tuple[Path, pd.Timestamp]:
    """A repo copy with ``customers`` materialized once, then a newer table written offline.

    ``write_batch`` sets Feast's ``online_write_batch_size`` in the copy (rows per write
    transaction; 0: Feast's default, each view in one transaction); ``None`` keeps the repo's.
    """
    repo = work / f"repo-{journal}"
    shutil.copytree(Path(__file__).resolve().parents[1] / "feature_repo", repo)
    for stale in (repo / "data").glob("*"):
        if stale.name != ".gitkeep":
            stale.unlink()
    if write_batch is not None:
        import yaml

        yaml_file = repo / "feature_store.yaml"
        config = yaml.safe_load(yaml_file.read_text())
        config.pop("materialization_config", None)
        if write_batch > 0:
            config["materialization_config"] = {"online_write_batch_size": write_batch}
        yaml_file.write_text(yaml.safe_dump(config))
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
    pushes: bool = False,
    write_batch: int | None = None,
) -> LoadResult:
    """One run: a reader process reads before, during and after ``FeastAdapter.materialize``.

    ``journal="delete"`` disables ``FeastAdapter``'s WAL switch for the run (the store as it
    was before issue 14); the reader process never switches anything itself. ``pushes``: a
    second process pushes meanwhile (``LoadResult.pushes``). ``write_batch``: see ``prepare``.
    """
    no_wal = lambda self: None  # noqa: E731
    FeastAdapter._online_wal = _WAL if journal == "wal" else no_wal  # type: ignore[method-assign]
    try:
        busy = SQLITE_BUSY_TIMEOUT_S if busy_s is None else busy_s
        return _measure(work, customers, journal, idle_s, tail_s, busy, pushes, write_batch)
    finally:
        FeastAdapter._online_wal = _WAL  # type: ignore[method-assign]


def _measure(
    work: Path,
    customers: int,
    journal: str,
    idle_s: float,
    tail_s: float,
    busy_s: float,
    pushes: bool,
    write_batch: int | None,
) -> LoadResult:
    repo, end = prepare(work, customers, journal, write_batch)
    ids = [f"C{i:08d}" for i in np.random.default_rng(2).integers(0, customers, 5000)]
    context = mp.get_context("spawn")
    ready, stop, out = context.Event(), context.Event(), context.Queue()
    process = context.Process(target=_reader, args=(str(repo), ids, busy_s, ready, stop, out))
    process.start()
    pushed, push_ready, push_out = None, context.Event(), context.Queue()
    if pushes:
        pushed = context.Process(
            target=_pusher, args=(str(repo), customers, push_ready, stop, push_out)
        )
        pushed.start()
    try:
        if not ready.wait(120) or (pushes and not push_ready.wait(120)):
            raise RuntimeError("the reader or pusher process did not start within 120 s")
        adapter = FeastAdapter(repo, Path("feature_store.yaml"))
        adapter.store  # noqa: B018 - build the FeatureStore before the clock starts
        time.sleep(idle_s)
        started = time.monotonic()
        adapter.materialize(end=end.to_pydatetime())
        ended = time.monotonic()
        time.sleep(tail_s)
        stop.set()
        starts, latency, failed, errors = out.get(timeout=60)
        push_rows = push_out.get(timeout=60) if pushes else None
    finally:
        stop.set()
        for child in (process, pushed):
            if child is not None:
                child.join(30)
                if child.is_alive():
                    child.kill()
    label = journal if write_batch is None else f"{journal}/{write_batch}"
    result = LoadResult(label, customers, np.asarray(starts), np.asarray(latency),
                        np.asarray(failed, dtype=bool), errors, started, ended)  # fmt: skip
    if push_rows is not None:
        p_starts, p_latency, p_failed, p_errors = push_rows
        result.pushes = LoadResult(f"{label} push", customers, np.asarray(p_starts),
                                   np.asarray(p_latency), np.asarray(p_failed, dtype=bool),
                                   p_errors, started, ended)  # fmt: skip
    return result


def table(results: Sequence[LoadResult]) -> str:
    """The results as a fixed-width text table."""
    head = f"{'journal':16} {'phase':7} {'calls':>7} {'p50 ms':>8} {'p99 ms':>9} {'max ms':>9} "
    lines = [head + f"{'errors':>7} {'materialize s':>14}"]
    rows = [r for result in results for r in (result, result.pushes) if r is not None]
    for result in rows:
        took = result.materialize_end - result.materialize_start
        for name in PHASES:
            row = result.summary(name)
            lines.append(
                f"{result.journal:16} {name:7} {row['reads']:>7} {row['p50_ms']:>8.2f} "
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
    parser.add_argument("--pushes", action="store_true", help="a process pushes every 50 ms")
    parser.add_argument(
        "--write-batch",
        type=int,
        default=None,
        help="Feast's online_write_batch_size (0: one transaction per view; default: the repo's)",
    )
    args = parser.parse_args(argv)
    results = []
    for journal in args.journal:
        with tempfile.TemporaryDirectory(prefix="nba-materialize-load-") as work:
            result = measure(Path(work), args.customers, journal, busy_s=args.busy_timeout,
                             pushes=args.pushes, write_batch=args.write_batch)  # fmt: skip
            results.append(result)
            for error in result.errors + (result.pushes.errors if result.pushes else []):
                print(f"{journal}: error: {error}")
    print(f"{args.customers:,} customers, one reader process reading back to back "
          f"(busy timeout {args.busy_timeout:g} s)")  # fmt: skip
    print(table(results))


if __name__ == "__main__":
    main()
