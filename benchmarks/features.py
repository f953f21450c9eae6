"""Feature pipeline benchmark: simulate, validate, build features, materialize, read online.

Runs the real pipeline on a simulated world in a temporary copy of ``feature_repo/`` (the
project's own store is left alone) and prints one table. Targets (issue #2): features for ~10M
raw events in <= 60 s on 2 cores; online read of one customer in-process p99 <= 2 ms.

    python benchmarks/features.py --customers 100000 [--stores sqlite redis] [--reads 20000]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and __package__ in (None, ""):
    # Run as `python benchmarks/features.py`: this file's folder would shadow the `features`
    # package, so put the project root first instead.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import functools
import os
import resource
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from benchmarks.online_read import measure_online_read
from features.build import build_feature_table
from features.contract import load_raw, write_raw
from features.store import FeastAdapter
from nba.simulate import SimulationConfig, simulate

#: The repository checkout (benchmarks run from it).
REPO_ROOT = Path(__file__).resolve().parents[1]

console = Console()


def _timed(label: str, fn: Callable[[], Any]) -> tuple[Any, float]:
    with console.status(f"{label}…"):
        start = time.perf_counter()
        result = fn()
        elapsed = time.perf_counter() - start
    console.print(f"[green]✓[/] {label} ({elapsed:.1f} s)")
    return result, elapsed


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


def _repo_copy(work: Path, store: str) -> tuple[Path, Path]:
    repo = work / f"repo_{store}"
    shutil.copytree(
        REPO_ROOT / "feature_repo",
        repo,
        ignore=shutil.ignore_patterns("__pycache__", "*.db", "*.parquet"),
    )
    yaml_file = repo / ("feature_store.yaml" if store == "sqlite" else "feature_store.redis.yaml")
    # A project of its own, so that Redis keys of other runs are neither read nor deleted.
    project = f"nba_bench_{uuid.uuid4().hex[:8]}"
    yaml_file.write_text(yaml_file.read_text().replace("project: nba\n", f"project: {project}\n"))
    return repo, yaml_file


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--reads", type=int, default=20_000)
    parser.add_argument("--stores", nargs="+", choices=("sqlite", "redis"),
                        default=["sqlite", "redis"])  # fmt: skip
    args = parser.parse_args(argv)
    end = pd.Timestamp.now(tz="UTC").floor("s")
    rows: list[tuple[str, str, str, str]] = []

    with tempfile.TemporaryDirectory(prefix="nba-bench-features-") as tmp:
        work = Path(tmp)
        cfg = SimulationConfig(end=end, customers=args.customers, days=args.days, seed=1)
        world, t_sim = _timed(f"simulate {args.customers:,} customers", lambda: simulate(cfg))
        n_raw = world.n_rows()
        rows.append(("simulate", f"{t_sim:.1f} s", f"{n_raw / t_sim:,.0f} rows/s", ""))
        _, t_write = _timed("write parquet", functools.partial(write_raw, world, work / "raw"))
        rows.append(("write raw parquet", f"{t_write:.1f} s", "", ""))
        del world
        raw, t_load = _timed("load + validate", lambda: load_raw(work / "raw"))
        rows.append(("load + validate", f"{t_load:.1f} s", f"{n_raw / t_load:,.0f} rows/s", ""))
        table, t_feat = _timed(
            f"build features from {n_raw:,} raw rows", lambda: build_feature_table(raw, end)
        )
        ok = "yes" if t_feat <= 60 * n_raw / 10_000_000 else "NO"
        rows.append(
            (
                f"build features ({len(table):,} points)",
                f"{t_feat:.1f} s",
                f"{n_raw / t_feat:,.0f} raw events/s",
                f"≤ 60 s per 10M events: {ok}",
            )
        )
        ids = table["customer_id"].drop_duplicates().sample(1_000, random_state=1).tolist()

        for store in args.stores:
            if store == "redis" and not _redis_up():
                rows.append(("redis", "skipped", "Redis not reachable on 127.0.0.1:6379", ""))
                continue
            repo, yaml_file = _repo_copy(work, store)
            adapter = FeastAdapter(repo, yaml_file)
            adapter.write_offline(table)
            _, t_apply = _timed(f"feast apply ({store})", adapter.apply)
            _, t_mat = _timed(
                f"materialize ({store})",
                functools.partial(adapter.materialize, end=end.to_pydatetime()),
            )
            rows.append((f"apply + materialize ({store})", f"{t_apply + t_mat:.1f} s",
                         f"{args.customers / t_mat:,.0f} customers/s", ""))  # fmt: skip
            stats, _ = _timed(
                f"online reads ({store})",
                functools.partial(measure_online_read, adapter.online_reader(), ids, args.reads),
            )
            ok = "yes" if stats["p99_ms"] <= 2.0 else "NO"
            rows.append(
                (
                    f"online read, 1 customer ({store})",
                    f"p50 {stats['p50_ms']:.2f} ms",
                    f"p99 {stats['p99_ms']:.2f} ms (n={args.reads:,})",
                    f"p99 ≤ 2 ms: {ok}",
                )
            )
            if store == "redis":
                adapter.store.teardown()

    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    out = Table(title=f"feature pipeline, {args.customers:,} customers, {args.days} days")
    for col in ("step", "time", "throughput / latency", "target"):
        out.add_column(col)
    for row in rows:
        out.add_row(*row)
    console.print(out)
    console.print(f"peak RSS of the benchmark process: {peak_gb:.1f} GB; cores: {os.cpu_count()}")


if __name__ == "__main__":
    main()
