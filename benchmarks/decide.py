"""Decision latency and throughput: in process, and over HTTP against the real server.

Needs a trained champion and materialized features in the configured stores (``make demo``,
or the ``NBA_*`` settings of another world). Starts ``nba serve`` on a free port with
``--workers`` workers (default: one per core), loads it from this process on loopback with
keep-alive connections (an asyncio client: one coroutine per connection, bounded number of
requests) at each concurrency, and prints one table:

    python benchmarks/decide.py [--requests 4000] [--concurrency 1 8 32] [--workers 2]
        [--batch 10000] [--customers 5000] [--compare-redis]

Latency is measured by this client per request (send to last byte), after a warm-up; the
in-process rows time ``Decider.decide`` and ``decide_batch`` directly, without HTTP, with the
model and reader set up as the service's workers set them up (compiled trees for batches). A
batch is timed ``BATCH_REPEATS`` times; the median is reported (the HTTP one includes this
client's JSON encoding and decoding of 10,000 requests and answers).
Targets (issue 4, 2 cores, SQLite store): in-process p99 <= 1 ms; HTTP p99 <= 3 ms at
concurrency 1; at concurrency 8 p99 <= 10 ms with >= 1,000 decisions/s; batch >= 20,000/s.
The client shares the 2 cores with the server: HTTP figures are upper bounds on latency.

``--compare-redis`` then materializes the same feature table into Redis (``NBA_REDIS_URL``) and
measures HTTP ``/decide`` at each concurrency three ways, one server after the other with the
same workers: SQLite online store and promo history (the embedded default), Redis online store
with the SQLite promo history, and Redis for both (the production profile's request path). The
apology budget is counted with the promo history. The promo and budget keys it writes to Redis
(``nba:bench-<pid>:``) are deleted at the end.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import asyncio
import gc
import json
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

if __name__ == "__main__" and __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from rich.console import Console
from rich.table import Table

KEY = "bench-key"
#: Batches are timed this many times each (the median is reported).
BATCH_REPEATS = 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def customer_ids(n: int) -> list[str]:
    """Known customers from the offline feature table (plus a few unknown visitors)."""
    import pandas as pd

    from nba.settings import load_settings

    settings = load_settings()
    table = pd.read_parquet(
        settings.feature_repo / "data" / "customer_features.parquet", columns=["customer_id"]
    )
    ids = table["customer_id"].drop_duplicates().tolist()
    random.Random(0).shuffle(ids)
    return ids[: n - n // 50] + [f"NEW{i}" for i in range(n // 50)]


async def _connection(port: int, bodies: list[bytes], latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for body in bodies:
        request = (
            b"POST /decide HTTP/1.1\r\nHost: bench\r\nX-API-Key: "
            + KEY.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        started = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        payload = await reader.readexactly(length)
        latencies.append(time.perf_counter() - started)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"request failed: {head[:40]!r} {payload[:200]!r}")
    writer.close()


async def load(
    port: int, ids: list[str], requests: int, concurrency: int
) -> tuple[list[float], float]:
    bodies = [json.dumps({"customer_id": ids[i % len(ids)]}).encode() for i in range(requests)]
    share = [bodies[k::concurrency] for k in range(concurrency)]
    latencies: list[float] = []
    started = time.perf_counter()
    await asyncio.gather(*(_connection(port, part, latencies) for part in share))
    return latencies, time.perf_counter() - started


def start_server(
    port: int, workers: int, overrides: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NBA_API_KEYS": KEY, "NBA_EXPLORE_EPSILON": "0.05", **(overrides or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "nba.cli", "serve", "--port", str(port), "--workers", str(workers)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited: {process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("server not ready within 180 s")


def in_process(ids: list[str], n: int, batch: int) -> list[tuple[str, str, str, str, str]]:
    """Rows for Decider.decide (single) and decide_batch, in this process."""
    from nba.settings import load_settings
    from serving.decider import Decider, Request
    from serving.guardrails import load_rules
    from serving.history import MemoryPromoHistory
    from serving.policy import DailyBudget
    from serving.runtime import compile_for_batches, load_champion

    settings = load_settings()
    from features.store import FeastAdapter

    reader = FeastAdapter(settings.feature_repo, settings.feature_store_yaml).direct_reader()
    model = load_champion(settings)
    if settings.compiled_trees:  # as the service's workers do (serving.runtime)
        compile_for_batches(model, settings)
    decider = Decider(
        model=model,
        read=reader.read,
        read_many=reader.read_many,
        read_columns=reader.read_columns,
        rules=load_rules(settings.guardrails),
        costs=settings.action_costs(),
        budget=DailyBudget(10**9, lambda: datetime.now(UTC)),
        history=MemoryPromoHistory(),
        log=lambda row: None,
        epsilon=0.05,
    )
    gc.collect()
    gc.freeze()
    rows = []
    for explain in (False, True):
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            decider.decide(Request(ids[i % len(ids)], explain=explain))
            times.append(time.perf_counter() - t0)
        ms = np.array(times[n // 10 :]) * 1000
        label = "in-process /decide" + (" (explain)" if explain else "")
        rows.append(
            (
                label,
                f"{n:,}",
                f"{np.percentile(ms, 50):.3f}",
                f"{np.percentile(ms, 99):.3f}",
                f"{1000 / ms.mean():,.0f}",
            )
        )
    requests = [Request(ids[i % len(ids)]) for i in range(batch)]
    times = []
    for _ in range(BATCH_REPEATS):
        t0 = time.perf_counter()
        decider.decide_batch(requests)
        times.append(time.perf_counter() - t0)
    seconds = float(np.median(times))
    rows.append(
        (
            f"in-process decide_batch (median of {BATCH_REPEATS})",
            f"{batch:,}",
            f"{seconds * 1000:.0f} (batch)",
            "",
            f"{batch / seconds:,.0f}",
        )
    )
    return rows


#: The stores compared by --compare-redis: (label, settings of the server).
STORE_VARIANTS: list[tuple[str, dict[str, str]]] = [
    ("sqlite features, sqlite promos", {"NBA_ONLINE_STORE": "sqlite", "NBA_PROMO_STORE": "sqlite"}),
    ("redis features, sqlite promos", {"NBA_ONLINE_STORE": "redis", "NBA_PROMO_STORE": "sqlite"}),
    ("redis features, redis promos", {"NBA_ONLINE_STORE": "redis", "NBA_PROMO_STORE": "redis"}),
]


def compare_stores(
    ids: list[str], requests: int, concurrencies: list[int], workers: int
) -> list[tuple[str, ...]]:
    """HTTP /decide at each concurrency for each of ``STORE_VARIANTS`` (one server at a time)."""
    from nba.settings import load_settings
    from serving.history import redis_client

    settings = load_settings(online_store="redis")
    started = time.perf_counter()
    settings.feast_adapter().materialize(end=datetime.now(UTC))
    print(f"materialized into Redis in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    environment = f"bench-{os.getpid()}"
    rows: list[tuple[str, ...]] = []
    try:
        for label, overrides in STORE_VARIANTS:
            port = free_port()
            server = start_server(port, workers, {**overrides, "NBA_ENVIRONMENT": environment})
            try:
                asyncio.run(load(port, ids, 500, 4))  # warm-up
                for c in concurrencies:
                    latencies, seconds = asyncio.run(load(port, ids, requests, c))
                    ms = np.array(latencies) * 1000
                    p50, p99 = np.percentile(ms, 50), np.percentile(ms, 99)
                    rate = len(ms) / seconds
                    rows.append((label, str(c), f"{len(ms):,}", f"{p50:.2f}", f"{p99:.2f}",
                                 f"{rate:,.0f}"))  # fmt: skip
            finally:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=60)
    finally:
        client = redis_client(settings.redis_url)
        keys = list(client.scan_iter(match=f"nba:{environment}:*", count=10_000))
        if keys:
            client.delete(*keys)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument(
        "--compare-redis",
        action="store_true",
        help="also HTTP /decide with the Redis online store and promo history (see docstring)",
    )
    args = parser.parse_args()

    ids = customer_ids(args.customers)
    rows = in_process(ids, args.requests, args.batch)
    port = free_port()
    server = start_server(port, args.workers)
    try:
        asyncio.run(load(port, ids, 500, 4))  # warm-up: imports, caches, connections
        for c in args.concurrency:
            latencies, seconds = asyncio.run(load(port, ids, args.requests, c))
            ms = np.array(latencies) * 1000
            rows.append(
                (
                    f"HTTP /decide, concurrency {c}",
                    f"{len(ms):,}",
                    f"{np.percentile(ms, 50):.2f}",
                    f"{np.percentile(ms, 99):.2f}",
                    f"{len(ms) / seconds:,.0f}",
                )
            )
        body = json.dumps(
            {"requests": [{"customer_id": ids[i % len(ids)]} for i in range(args.batch)]}
        ).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/decide_batch", data=body, headers={"X-API-Key": KEY}
        )
        times = []
        for _ in range(BATCH_REPEATS):
            t0 = time.perf_counter()
            with urllib.request.urlopen(request, timeout=300) as response:
                decisions = json.loads(response.read())["decisions"]
            times.append(time.perf_counter() - t0)
        seconds = float(np.median(times))
        rows.append(
            (
                f"HTTP /decide_batch (median of {BATCH_REPEATS})",
                f"{len(decisions):,}",
                f"{seconds * 1000:.0f} (batch)",
                "",
                f"{len(decisions) / seconds:,.0f}",
            )
        )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    table = Table(
        title=f"decisions ({args.workers} worker(s), {os.cpu_count()} cores, SQLite "
        "online store unless NBA_ONLINE_STORE says otherwise)"
    )
    for column in ("path", "requests", "p50 ms", "p99 ms", "decisions/s"):
        table.add_column(column, justify="left" if column == "path" else "right")
    for row in rows:
        table.add_row(*row)
    Console(width=140).print(table)
    if args.compare_redis:
        concurrencies = [c for c in args.concurrency if c > 1] or args.concurrency
        compared = Table(
            title=f"HTTP /decide by store ({args.workers} worker(s), {os.cpu_count()} cores, "
            f"{args.requests:,} requests per row, one server at a time)"
        )
        for column in ("stores", "concurrency", "requests", "p50 ms", "p99 ms", "decisions/s"):
            compared.add_column(column, justify="left" if column == "stores" else "right")
        for row in compare_stores(ids, args.requests, concurrencies, args.workers):
            compared.add_row(*row)
        Console(width=140).print(compared)


if __name__ == "__main__":
    main()
