"""The cost of one ``/events``: in process (``Runtime.handle_event``) and over HTTP.

Builds a small world of its own in a temporary folder (``nba simulate`` and ``nba features``,
and a small model exported for ``NBA_MODEL_PATH``: ``/events`` does not use it, the server's
readiness does), then times events of the contract v1 types (booking, case_opened and the
matching case_closed, flight_disrupted, unsubscribe; each customer at most once per type),
on each store asked for:

* ``sqlite``: the embedded profile (SQLite online store; the customer memory, when the code has
  one, a SQLite file in the same folder);
* ``redis``: the online store in a Redis server started here (``--redis-port``, no
  persistence) and the customer memory in a PostgreSQL database of its own
  (``--postgres``; dropped at the end).

    python benchmarks/events.py [--customers 2000] [--events 1500] [--concurrency 1 8]
        [--stores sqlite redis] [--workers 2]

Runs on whatever code ``PYTHONPATH`` points at (the same commands before and after the
customer memory: ``/events`` answered the same way). Latency is measured per request by the
client (send to last byte) after a warm-up; each row is a fresh set of events (a retry would
be a duplicate, which is cheaper).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

if __name__ == "__main__" and __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from rich.console import Console
from rich.table import Table

from benchmarks.decide import KEY, free_port, open_connections, start_server, worker_pids

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
#: Answers other than 200 over HTTP ("status body"), reset for each row.
FAILURES: list[str] = []
#: The event types every version of /events accepts, in the order each customer gets them.
KINDS = ("booking", "case_opened", "flight_disrupted", "case_closed", "unsubscribe")


def has_memory() -> bool:
    """Whether the code under test has the customer memory (its ``Runtime`` holds one; the
    ``memory`` package alone may come from another checkout on the path)."""
    from serving.runtime import Runtime

    return "memory" in Runtime.__dataclass_fields__


def cli(*args: str, env: dict[str, str]) -> None:
    """Run ``nba`` with ``env``; exit with its error when it fails."""
    result = subprocess.run([sys.executable, "-m", "nba.cli", *args], env={**os.environ, **env},
                            capture_output=True, text=True, timeout=900)  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"nba {' '.join(args)} failed:\n{result.stderr[-3000:]}")


def export_small_model(folder: Path) -> Path:
    """A small uplift model on the service's features (random data: only readiness needs it)."""
    import pandas as pd

    from features import schema
    from serving.runtime import export_model
    from training.uplift import MultiActionUplift

    arms = ("promo", "apology_credit", "recognition", "none")

    rng = np.random.default_rng(0)
    n = 2000
    X = pd.DataFrame(rng.normal(size=(n, len(schema.MODEL_FEATURES))),
                     columns=list(schema.MODEL_FEATURES))  # fmt: skip
    outcomes = pd.DataFrame({"converted": rng.random(n) < 0.2, "revenue": rng.random(n) * 100,
                             "unsubscribed": rng.random(n) < 0.02})  # fmt: skip
    model = MultiActionUplift(method="s", n_estimators=20, num_leaves=8, min_child_samples=50)
    model.fit(X, np.array(arms, dtype=object)[rng.integers(0, len(arms), n)],
              np.full(n, 1 / len(arms)), outcomes)  # fmt: skip
    return export_model(model, "bench-events/1", folder)


@contextlib.contextmanager
def redis_server(port: int, folder: Path) -> Iterator[str]:
    """A Redis server keeping nothing on disk; yields its address."""
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def events(customers: list[str], n: int, tag: str) -> list[dict[str, Any]]:
    """``n`` events: customer by customer, the ``KINDS`` in order (a case closed after it
    opened)."""
    now = datetime.now(UTC)
    out: list[dict[str, Any]] = []
    for i in range(n):
        customer = customers[(i // len(KINDS)) % len(customers)]
        kind = KINDS[i % len(KINDS)]
        body: dict[str, Any] = {"customer_id": customer, "type": kind,
                                "ts": (now - timedelta(seconds=n - i)).isoformat()}  # fmt: skip
        if kind == "booking":
            body["booking_id"] = f"BB-{tag}-{i}"
        elif kind in ("case_opened", "case_closed"):
            body["case_id"] = f"BC-{tag}-{customer}"
            if kind == "case_opened":
                body["topic"] = "refund"
        elif kind == "flight_disrupted":
            body["delay_minutes"] = 150
        out.append(body)
    return out


def summary(label: str, seconds: list[float], wall: float, failed: int = 0) -> tuple[str, ...]:
    ms = np.array(seconds) * 1000
    return (label, f"{len(ms):,}", f"{np.percentile(ms, 50):.2f}", f"{np.percentile(ms, 99):.2f}",
            f"{(len(ms) - failed) / wall:,.0f}", f"{failed:,}")  # fmt: skip


def in_process(bodies: list[dict[str, Any]], label: str) -> tuple[str, ...]:
    """``Runtime.handle_event`` on each body (parsed as ``/events`` parses it)."""
    from nba.settings import load_settings
    from serving.api import Event
    from serving.runtime import Runtime

    runtime = Runtime.start(load_settings())
    try:
        parsed = [Event.model_validate_json(json.dumps(b)).model_dump() for b in bodies]
        warm, timed = parsed[: len(parsed) // 10], parsed[len(parsed) // 10 :]
        for event in warm:
            runtime.handle_event(event)
        times = []
        started = time.perf_counter()
        for event in timed:
            t0 = time.perf_counter()
            runtime.handle_event(event)
            times.append(time.perf_counter() - t0)
        return summary(label, times, time.perf_counter() - started)
    finally:
        runtime.close()


async def _send(connection: Connection, bodies: list[bytes], latencies: list[float]) -> None:
    reader, writer = connection
    for body in bodies:
        request = (b"POST /events HTTP/1.1\r\nHost: bench\r\nX-API-Key: " + KEY.encode()
                   + b"\r\nContent-Type: application/json\r\nContent-Length: "
                   + str(len(body)).encode() + b"\r\n\r\n" + body)  # fmt: skip
        started = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))  # fmt: skip
        payload = await reader.readexactly(length)
        latencies.append(time.perf_counter() - started)
        if not head.startswith(b"HTTP/1.1 200"):
            # Counted, not fatal: a 503 (a store that missed its deadline) is part of the figure.
            FAILURES.append(f"{head[9:12].decode()} {payload[:200].decode(errors='replace')}")
    writer.close()


async def over_http(
    port: int, bodies: list[dict[str, Any]], concurrency: int, workers: list[int] | None
) -> tuple[list[float], float]:
    """The bodies over ``concurrency`` keep-alive connections; (latencies, wall seconds).

    A customer's events stay on one connection, in order (a closing after its opening)."""
    per_customer: dict[str, list[bytes]] = {}
    for body in bodies:
        per_customer.setdefault(body["customer_id"], []).append(json.dumps(body).encode())
    shares: list[list[bytes]] = [[] for _ in range(concurrency)]
    for k, chunk in enumerate(per_customer.values()):
        shares[k % concurrency].extend(chunk)
    connections = await open_connections(port, concurrency, workers)
    latencies: list[float] = []
    started = time.perf_counter()
    await asyncio.gather(
        *(_send(c, s, latencies) for c, s in zip(connections, shares, strict=True))
    )
    return latencies, time.perf_counter() - started


def measure_store(store: str, args: argparse.Namespace, root: Path) -> list[tuple[str, ...]]:
    """Build the world on ``store``, then the in-process and HTTP rows."""
    import pandas as pd

    folder = root / store
    repo = folder / "repo"
    shutil.copytree(Path(__file__).resolve().parents[1] / "feature_repo", repo,
                    ignore=shutil.ignore_patterns("__pycache__", "*.db", "*.parquet"))  # fmt: skip
    run_id = uuid.uuid4().hex[:8]
    for yaml_file in repo.glob("feature_store*.yaml"):
        text = yaml_file.read_text()
        yaml_file.write_text(text.replace("project: nba\n", f"project: bench_{run_id}\n"))
    env = {
        "NBA_FEATURE_REPO": str(repo),
        "NBA_MODEL_PATH": str(export_small_model(folder / "model")),
        "NBA_COMPILED_TREES": "false",
        "NBA_DECISION_LOG_DIR": str(folder / "logs" / "decisions"),
        "NBA_EVENTS_LOG_DIR": str(folder / "logs" / "events"),
        "NBA_PROMO_HISTORY_PATH": str(folder / "logs" / "promos.db"),
        "NBA_PROMO_STORE": "sqlite",
        "NBA_API_KEYS": KEY,
        "NBA_ENVIRONMENT": f"bench-{run_id}",
    }
    database = f"nba_bench_{run_id}"
    with contextlib.ExitStack() as stack:
        if store == "redis":
            address = stack.enter_context(redis_server(args.redis_port, folder))
            env.update(NBA_ONLINE_STORE="redis", NBA_REDIS_URL=address)
            if has_memory():
                env["NBA_MEMORY_URL"] = f"postgresql+psycopg2://{args.postgres}/{database}"
                stack.callback(drop_database, args.postgres, database)
        else:
            env["NBA_ONLINE_STORE"] = "sqlite"
            if has_memory():
                env["NBA_MEMORY_URL"] = f"sqlite:///{folder / 'memory.db'}"
        raw = folder / "raw"
        cli("simulate", "--out", str(raw), "--customers", str(args.customers), "--seed", "5",
            env=env)  # fmt: skip
        cli("features", "--raw", str(raw), env=env)
        table = pd.read_parquet(
            repo / "data" / "customer_features.parquet", columns=["customer_id"]
        )
        customers = table["customer_id"].drop_duplicates().tolist()
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            rows = [in_process(events(customers, args.events, f"in-{store}"),
                               f"{store}: in-process handle_event")]  # fmt: skip
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        port = free_port()
        server = start_server(port, args.workers, env)
        try:
            pids = worker_pids(server)
            warm = events(customers, 200, f"warm-{store}")
            # The first worker answers readiness; the others may still be loading.
            asyncio.run(over_http(port, warm, 2, []))
            FAILURES.clear()
            time.sleep(5)
            for c in args.concurrency:
                bodies = events(customers, args.events, f"http{c}-{store}")
                FAILURES.clear()
                latencies, wall = asyncio.run(over_http(port, bodies, c, pids))
                label = f"{store}: HTTP /events, concurrency {c}"
                rows.append(summary(label, latencies, wall, len(FAILURES)))
                if FAILURES:
                    print(f"{label}: {len(FAILURES)} failed, e.g. {FAILURES[0]}")
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
    return rows


def drop_database(address: str, name: str) -> None:
    import psycopg2

    user_host, _, port = address.rpartition(":")
    user, _, host = user_host.rpartition("@")
    connection = psycopg2.connect(host=host, port=int(port), user=user or "postgres",
                                  dbname="postgres")  # fmt: skip
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--events", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--stores", nargs="+", default=["sqlite", "redis"])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--redis-port", type=int, default=6392)
    parser.add_argument("--postgres", default="postgres@127.0.0.1:5432")
    args = parser.parse_args()
    rows: list[tuple[str, ...]] = []
    with tempfile.TemporaryDirectory(prefix="nba-bench-events-") as tmp:
        for store in args.stores:
            rows += measure_store(store, args, Path(tmp))
    memory = "customer memory" if has_memory() else "no customer memory"
    table = Table(title=f"/events ({memory}; {args.workers} worker(s), {os.cpu_count()} cores)")
    for column in ("path", "events", "p50 ms", "p99 ms", "acknowledged/s", "not 200"):
        table.add_column(column, justify="left" if column == "path" else "right")
    for row in rows:
        table.add_row(*row)
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
