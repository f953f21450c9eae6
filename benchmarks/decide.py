"""Decision latency and throughput: in process, and over HTTP against the real server.

Needs a trained champion and materialized features in the configured stores (``make demo``,
or the ``NBA_*`` settings of another world). Starts ``nba serve`` on a free port with
``--workers`` workers (default: one per core), loads it from this process on loopback with
keep-alive connections (an asyncio client: one coroutine per connection, bounded number of
requests) at each concurrency, and prints one table:

    python benchmarks/decide.py [--requests 4000] [--concurrency 1 8 32] [--workers 2]
        [--batch 10000] [--customers 5000] [--compare-redis [--rounds 3] [--compare-only]]

Latency is measured by this client per request (send to last byte), after a warm-up; the
in-process rows time ``Decider.decide`` and ``decide_batch`` directly, without HTTP, with the
model and reader set up as the service's workers set them up (compiled trees for batches). A
batch is timed ``BATCH_REPEATS`` times; the median is reported (the HTTP one includes this
client's JSON encoding and decoding of 10,000 requests and answers).
Targets (issue 4, 2 cores, SQLite store): in-process p99 <= 1 ms; HTTP p99 <= 3 ms at
concurrency 1; at concurrency 8 p99 <= 10 ms with >= 1,000 decisions/s; batch >= 20,000/s.
The client shares the 2 cores with the server: HTTP figures are upper bounds on latency.

``--compare-redis`` then materializes the same feature table into Redis (``NBA_REDIS_URL``) and
measures HTTP ``/decide`` at each concurrency above 1 for four servers, all up at once with the
same workers: SQLite online store and promo history (the embedded default), Redis online store
with the SQLite promo history, Redis for both (the production profile's request path: awaited,
``NBA_REDIS_PIPELINING``), and Redis for both with blocking calls. ``--rounds`` (3) interleaves
the loads so that a noisy spell of the host hits every server alike; the table gives medians
over the rounds, the median of each round's ratio to SQLite, and the CPU per decision of the
workers and of a local Redis. ``--compare-only`` skips the other rows. The apology budget is
counted with the promo history. The promo and budget keys it writes to Redis
(``nba:bench-<pid>:``) are deleted at the end.

The client spreads its keep-alive connections evenly over the workers (``open_connections``):
the workers share one listening socket, and connections opened at once often all landed on
one worker, which made a run measure the luck of the split rather than the server.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import asyncio
import gc
import json
import math
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def worker_pids(server: subprocess.Popen[bytes]) -> list[int]:
    """The service worker processes of a server started by ``start_server``."""
    import psutil

    children = psutil.Process(server.pid).children(recursive=True)
    return [c.pid for c in children if "_bentoml_impl.worker" in " ".join(c.cmdline())]


def _owner(local_port: int, workers: list[int]) -> int | None:
    """The worker holding the server side of the client connection from ``local_port``."""
    import psutil

    for pid in workers:
        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.raddr and conn.raddr.port == local_port:
                return pid
    return None


async def open_connections(port: int, n: int, workers: list[int] | None = None) -> list[Connection]:
    """``n`` keep-alive connections, spread evenly over ``workers`` when given.

    The workers share one listening socket and a worker accepts every connection pending when
    it wakes: connections opened at once often all land on one worker (all 32 did in some runs
    here, halving the throughput), so a run measured the luck of the split more than the
    server. A load balancer spreads its connections; this client does the same by opening
    connections one at a time and closing those that land on a worker that has its share.
    """
    kept: list[Connection] = []
    if not workers:
        for _ in range(n):
            kept.append(await asyncio.open_connection("127.0.0.1", port))
        return kept
    share = -(-n // len(workers))
    counts = dict.fromkeys(workers, 0)
    for _ in range(50 * n):
        if len(kept) == n:
            break
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))  # fmt: skip
        await reader.readexactly(length)
        owner = _owner(writer.get_extra_info("sockname")[1], workers)
        if owner is not None and counts[owner] < share:
            counts[owner] += 1
            kept.append((reader, writer))
        else:
            writer.close()
    if len(kept) < n:
        raise RuntimeError(f"could not spread {n} connections over the workers: {counts}")
    return kept


async def _connection(connection: Connection, bodies: list[bytes], latencies: list[float]) -> None:
    reader, writer = connection
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
    port: int, ids: list[str], requests: int, concurrency: int, workers: list[int] | None = None
) -> tuple[list[float], float]:
    """``requests`` /decide calls over ``concurrency`` keep-alive connections (spread over
    ``workers``, see ``open_connections``): latencies, and seconds from first to last."""
    bodies = [json.dumps({"customer_id": ids[i % len(ids)]}).encode() for i in range(requests)]
    share = [bodies[k::concurrency] for k in range(concurrency)]
    connections = await open_connections(port, concurrency, workers)
    latencies: list[float] = []
    started = time.perf_counter()
    pairs = zip(connections, share, strict=True)
    await asyncio.gather(*(_connection(c, part, latencies) for c, part in pairs))
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


def bench_decider(model: Any, reader: Any, settings: Any, epsilon: float) -> Any:
    """A ``Decider`` for ``model`` as the benchmarks time it: the workspace's reader, guardrails
    and costs, an unlimited budget, an in-memory contact history, no decision log."""
    from serving.decider import Decider
    from serving.guardrails import load_rules
    from serving.history import MemoryContactHistory
    from serving.policy import DailyBudget

    return Decider(
        model=model,
        read=reader.read,
        read_many=reader.read_many,
        read_columns=reader.read_columns,
        rules=load_rules(settings.guardrails),
        costs=settings.action_costs(),
        budget=DailyBudget(10**9, lambda: datetime.now(UTC)),
        history=MemoryContactHistory(),
        log=lambda row: None,
        epsilon=epsilon,
    )


def in_process(ids: list[str], n: int, batch: int) -> list[tuple[str, str, str, str, str]]:
    """Rows for Decider.decide (single) and decide_batch, in this process."""
    from nba.settings import load_settings
    from serving.decider import Request
    from serving.runtime import compile_for_batches, load_champion

    settings = load_settings()
    from features.store import FeastAdapter

    reader = FeastAdapter(settings.feature_repo, settings.feature_store_yaml).direct_reader()
    model = load_champion(settings)
    if settings.compiled_trees:  # as the service's workers do (serving.runtime)
        compile_for_batches(model, settings)
    decider = bench_decider(model, reader, settings, epsilon=0.05)
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
    (
        "redis, blocking calls",
        {"NBA_ONLINE_STORE": "redis", "NBA_PROMO_STORE": "redis", "NBA_REDIS_PIPELINING": "false"},
    ),
]


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` so far."""
    import psutil

    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def _local_redis(url: str) -> list[int]:
    """The redis-server process of ``url`` when it runs on this machine (its CPU is counted)."""
    import psutil

    port = url.split(",")[0].rpartition(":")[2] or "6379"
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if process.info["name"] == "redis-server" and f":{port}" in command:
            found.append(process.pid)
    return found


def compare_stores(
    ids: list[str], requests: int, concurrencies: list[int], workers: int, rounds: int = 3
) -> list[tuple[str, ...]]:
    """HTTP /decide at each concurrency for each of ``STORE_VARIANTS``, interleaved.

    Every variant's server is up at once; each round loads them one after the other at each
    concurrency, so a noisy spell of the host hits them alike. Per variant and concurrency:
    the median over the rounds of decisions/s, p50 and p99, the CPU of the workers (and of a
    local Redis) per decision, and the median of the rounds' throughput ratios to the first
    variant (SQLite).
    """
    from nba.settings import load_settings
    from serving.history import redis_client

    settings = load_settings(online_store="redis")
    started = time.perf_counter()
    settings.feast_adapter().materialize(end=datetime.now(UTC))
    print(f"materialized into Redis in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    environment = f"bench-{os.getpid()}"
    redis_pids = _local_redis(settings.redis_url)
    servers: dict[str, tuple[int, subprocess.Popen[bytes], list[int]]] = {}
    measured: dict[tuple[str, int], list[tuple[float, float, float, float, float]]] = {}
    try:
        for label, overrides in STORE_VARIANTS:
            port = free_port()
            server = start_server(port, workers, {**overrides, "NBA_ENVIRONMENT": environment})
            servers[label] = (port, server, worker_pids(server))
            asyncio.run(load(port, ids, 500, 4, servers[label][2]))  # warm-up
        for round_ in range(rounds):
            for c in concurrencies:
                for label, (port, _, pids) in servers.items():
                    cpu0, redis0 = _cpu_seconds(pids), _cpu_seconds(redis_pids)
                    latencies, seconds = asyncio.run(load(port, ids, requests, c, pids))
                    cpu = (_cpu_seconds(pids) - cpu0) / len(latencies) * 1e6
                    redis_cpu = (_cpu_seconds(redis_pids) - redis0) / len(latencies) * 1e6
                    ms = np.array(latencies) * 1000
                    rate = len(ms) / seconds
                    measured.setdefault((label, c), []).append(
                        (rate, np.percentile(ms, 50), np.percentile(ms, 99), cpu, redis_cpu)
                    )
                    where = f"round {round_ + 1}/{rounds} {label}, concurrency {c}"
                    print(f"{where}: {rate:,.0f}/s, {cpu:.0f} µs CPU per decision",
                          file=sys.stderr)  # fmt: skip
    finally:
        for _, server, _ in servers.values():
            os.killpg(server.pid, signal.SIGTERM)
        for _, server, _ in servers.values():
            server.wait(timeout=60)
        client = redis_client(settings.redis_url)
        keys = list(client.scan_iter(match=f"nba:{environment}:*", count=10_000))
        if keys:
            client.delete(*keys)
    rows: list[tuple[str, ...]] = []
    first = STORE_VARIANTS[0][0]
    for (label, c), runs in measured.items():
        rates = [r[0] for r in runs]
        base = [r[0] for r in measured[(first, c)]]
        ratio = float(np.median([x / y for x, y in zip(rates, base, strict=True)]))
        redis_cpu = np.median([r[4] for r in runs]) if redis_pids else math.nan
        rows.append(
            (
                label,
                str(c),
                f"{np.median(rates):,.0f} ({min(rates):,.0f}–{max(rates):,.0f})",
                f"{ratio:.2f}",
                f"{np.median([r[1] for r in runs]):.2f}",
                f"{np.median([r[2] for r in runs]):.2f}",
                f"{np.median([r[3] for r in runs]):.0f}",
                "" if math.isnan(redis_cpu) else f"{redis_cpu:.0f}",
            )
        )
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
    parser.add_argument(
        "--rounds", type=int, default=3, help="--compare-redis: interleaved rounds over the stores"
    )
    parser.add_argument(
        "--compare-only",
        action="store_true",
        help="only the --compare-redis table (skip the in-process and default HTTP rows)",
    )
    args = parser.parse_args()
    ids = customer_ids(args.customers)
    if args.compare_only:
        print_comparison(ids, args.requests, args.concurrency, args.workers, args.rounds)
        return

    rows = in_process(ids, args.requests, args.batch)
    port = free_port()
    server = start_server(port, args.workers)
    try:
        pids = worker_pids(server)
        asyncio.run(load(port, ids, 500, 4, pids))  # warm-up: imports, caches, connections
        for c in args.concurrency:
            latencies, seconds = asyncio.run(load(port, ids, args.requests, c, pids))
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
            f"http://127.0.0.1:{port}/decide_batch",
            data=body,
            headers={"X-API-Key": KEY, "Content-Type": "application/json"},
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
        print_comparison(ids, args.requests, args.concurrency, args.workers, args.rounds)


def print_comparison(
    ids: list[str], requests: int, concurrency: list[int], workers: int, rounds: int = 1
) -> None:
    """Run ``compare_stores`` at the concurrencies above 1 and print its table."""
    concurrencies = [c for c in concurrency if c > 1] or concurrency
    compared = Table(
        title=f"HTTP /decide by store ({workers} worker(s), {os.cpu_count()} cores, "
        f"{requests:,} requests per load, medians of {rounds} interleaved rounds)"
    )
    columns = ("stores", "concurrency", "decisions/s (range)", "vs SQLite", "p50 ms", "p99 ms",
               "workers' CPU µs/decision", "Redis CPU µs/decision")  # fmt: skip
    for column in columns:
        compared.add_column(column, justify="left" if column == "stores" else "right")
    for row in compare_stores(ids, requests, concurrencies, workers, rounds):
        compared.add_row(*row)
    Console(width=140).print(compared)


if __name__ == "__main__":
    main()
