"""The whole loop on the production profile against the real Redis and PostgreSQL.

`NBA_PROFILE=production` and the addresses, nothing else: `nba features` registers the Feast
objects in a SQL registry on PostgreSQL and materializes a small world (3000 customers) into
Redis; `nba train --force` logs to an `mlflow server` started here on a free port, backed by
PostgreSQL with an artifact folder; `nba serve` (two workers) decides from Redis with the promo
history in Redis; an event pushed through `/events` is seen by the next decision.

Each run has its own PostgreSQL databases (dropped at the end), its own Feast project (Redis
keys embed it; deleted at the end) and its own environment name (the promo history's key
prefix), so runs in parallel and the real `nba` project are left alone.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from features import schema
from tests.integration.test_service_http import (
    Client,
    free_port,
    promo_of,
    start_server,
    stop,
)
from tests.integration.test_train_cli import run

pytestmark = [pytest.mark.integration, pytest.mark.integration_services]

KEY = "test-key"  # the key test_service_http's Client sends


def postgres_admin(host: str, port: int, statement: str) -> None:
    """Run one statement outside a transaction (CREATE/DROP DATABASE need that)."""
    import psycopg2

    connection = psycopg2.connect(host=host, port=port, user="postgres", dbname="postgres")
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


def postgres_rows(url: str, query: str) -> list[tuple[Any, ...]]:
    """Rows of ``query`` on the database of a ``postgresql+psycopg2://`` URL."""
    import psycopg2

    connection = psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://"))
    try:
        with connection.cursor() as cursor:
            cursor.execute(query)
            return list(cursor.fetchall())
    finally:
        connection.close()


def start_tracking_server(store_url: str, artifacts: Path, port: int) -> subprocess.Popen[bytes]:
    """`mlflow server` as an operator starts it (one worker: a test needs no more)."""
    mlflow = Path(sys.executable).parent / "mlflow"
    return subprocess.Popen(
        [
            str(mlflow),
            "server",
            "--backend-store-uri",
            store_url,
            "--artifacts-destination",
            str(artifacts),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def wait_healthy(process: subprocess.Popen[bytes], url: str, limit: float = 180.0) -> None:
    """Poll ``url`` until it answers 200; fail with the server's stderr if it exits."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {process.stderr.read().decode()[-3000:]}")  # type: ignore[union-attr]
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} not healthy within {limit:.0f} s")


def kill_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def loop(
    redis_url: str,
    postgres_address: tuple[str, int],
    tmp_path_factory: pytest.TempPathFactory,
    feature_repo_copier: Callable[[Path, str], Path],
) -> Iterator[dict[str, Any]]:
    """Features, training and the service of one small world on the production profile."""
    host, port = postgres_address
    run_id = uuid.uuid4().hex[:10]
    registry_db, tracking_db = f"nba_it_{run_id}_registry", f"nba_it_{run_id}_mlflow"
    # The customer memory's database is created by the service on first use (memory.store).
    memory_db = f"nba_it_{run_id}_memory"
    root = tmp_path_factory.mktemp("production")
    repo = feature_repo_copier(root / "repo", f"nba_it_{run_id}")
    for database in (registry_db, tracking_db):
        postgres_admin(host, port, f"CREATE DATABASE {database}")
    registry_url = f"postgresql+psycopg2://postgres@{host}:{port}/{registry_db}"
    tracking_store = f"postgresql+psycopg2://postgres@{host}:{port}/{tracking_db}"
    tracking_port = free_port()
    tracking = start_tracking_server(tracking_store, root / "artifacts", tracking_port)
    # The caller's NBA_* settings must not leak into the commands (e.g. an artifact folder):
    # the profile and the addresses are all this world is configured with.
    unset = pytest.MonkeyPatch()
    for name in [n for n in os.environ if n.upper().startswith("NBA_")]:
        if name.upper() != "NBA_REQUIRE_SERVICES":
            unset.delenv(name)
    env = {
        "NBA_PROFILE": "production",
        "NBA_FEATURE_REPO": str(repo),
        "NBA_REDIS_URL": redis_url,
        "NBA_REGISTRY_URL": registry_url,
        "NBA_MEMORY_URL": f"postgresql+psycopg2://postgres@{host}:{port}/{memory_db}",
        "NBA_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{tracking_port}",
        "NBA_ENVIRONMENT": f"it-{run_id}",
        "NBA_DECISION_LOG_DIR": str(root / "logs" / "decisions"),
        "NBA_EVENTS_LOG_DIR": str(root / "logs" / "events"),
        "NBA_API_KEYS": KEY,
        "NBA_EXPLORE_EPSILON": "0",
        # Free promos: the frequency cap in Redis then has promos to count in a small world.
        "NBA_COST_PROMO_FARE_SHARE": "0",
        # The uplift model as the champion (no policy selection): the promo caps through
        # Redis are what these tests exercise, and a rule-based champion gives no promos.
        "NBA_TRAIN_CANDIDATES": '["s-learner"]',
        "NBA_GATE_BASELINES": "false",
    }
    raw = str(root / "raw")
    server = None
    state: dict[str, Any] = {"env": env, "repo": repo, "root": root, "run_id": run_id}
    state.update(registry_url=registry_url, tracking_store=tracking_store)
    try:
        for args in (
            ("simulate", "--out", raw, "--customers", "3000", "--seed", "11"),
            ("features", "--raw", raw),
        ):
            result = run(*args, env=env)
            assert result.returncode == 0, result.stderr[-3000:]
        wait_healthy(tracking, f"http://127.0.0.1:{tracking_port}/health")
        trained = run("train", "--raw", raw, "--force", "--n-estimators", "60", env=env)
        assert trained.returncode == 0, trained.stderr[-3000:]
        state["train_stdout"] = trained.stdout
        state["models_stdout"] = run("models", env=env).stdout
        serve_port = free_port()
        server = start_server({**env, "NBA_SERVE_WORKERS": "2"}, serve_port)
        state["client"] = Client(serve_port)
        yield state
    finally:
        if server is not None:
            stop(server)
        kill_group(tracking)
        # This run's Redis keys: Feast's end with the project name (its `teardown` does the
        # same, after a 20 s start), the promo history's and the apology budget's start with
        # the environment's prefix. The registry goes with its database.
        import redis

        client = redis.Redis.from_url(f"redis://{redis_url}")
        for pattern in (f"*nba_it_{run_id}", f"nba:it-{run_id}:*"):
            keys = list(client.scan_iter(match=pattern, count=10_000))
            if keys:
                client.delete(*keys)
        client.close()
        for database in (registry_db, tracking_db, memory_db):
            postgres_admin(host, port, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        shutil.rmtree(root, ignore_errors=True)
        unset.undo()


def test_features_went_to_redis_and_the_sql_registry(loop: dict[str, Any], redis_url: str) -> None:
    data = loop["repo"] / "data"
    # Nothing embedded was written: no SQLite online store, no registry file.
    assert not (data / "online_store.db").exists() and not (data / "registry.db").exists()
    views = postgres_rows(
        loop["registry_url"],
        "SELECT feature_view_name, project_id "
        "FROM stream_feature_views UNION SELECT feature_view_name, project_id "
        "FROM feature_views",
    )
    project = f"nba_it_{loop['run_id']}"
    assert {(schema.PROFILE_VIEW, project), (schema.REALTIME_VIEW, project)} <= set(views)
    import redis

    client = redis.Redis.from_url(f"redis://{redis_url}")
    keys = [k for k in client.scan_iter(count=10_000) if project.encode() in k]
    assert len(keys) >= 3000  # one hash per customer (entity keys embed the project)


def test_training_logged_to_the_postgres_backed_server(loop: dict[str, Any]) -> None:
    assert "version 1: promoted to champion" in loop["train_stdout"]
    assert "champion" in loop["models_stdout"]
    # The run and the registered version are rows of the tracking server's PostgreSQL store...
    runs = postgres_rows(loop["tracking_store"], "SELECT status FROM runs")
    assert ("FINISHED",) in runs
    versions = postgres_rows(loop["tracking_store"], "SELECT name, version FROM model_versions")
    assert ("nba-uplift", 1) in versions
    aliases = postgres_rows(
        loop["tracking_store"], "SELECT alias, version FROM registered_model_aliases"
    )
    assert ("champion", 1) in aliases
    # ... and the model's files went through the server into its artifact folder.
    stored = [p.name for p in (loop["root"] / "artifacts").rglob("*") if p.is_file()]
    assert "MLmodel" in stored and "reference.parquet" in stored


def quiet_customers(loop: dict[str, Any]) -> list[str]:
    table = pd.read_parquet(loop["repo"] / "data" / "customer_features.parquet")
    latest = table.sort_values(schema.EVENT_TIMESTAMP).groupby(schema.ENTITY).tail(1)
    quiet = latest[
        (latest.open_case_count == 0)
        & latest.last_negative_at.isna()
        & latest.marketing_opt_in
        & ~latest.unsubscribed
    ]
    return list(quiet[schema.ENTITY])


def test_the_service_decides_from_redis(loop: dict[str, Any]) -> None:
    client: Client = loop["client"]
    status, ready = client.call("/readyz", key=None)
    assert status == 200, ready
    customer = quiet_customers(loop)[0]
    status, decision = client.call("/decide", {"customer_id": customer, "explain": True})
    assert status == 200 and not decision["degraded"], decision
    assert decision["model_version"] == "nba-uplift/1"


def test_promos_are_capped_through_redis(loop: dict[str, Any], redis_url: str) -> None:
    client: Client = loop["client"]
    customers = quiet_customers(loop)[1:301]
    status, answer = client.call(
        "/decide_batch", {"requests": [{"customer_id": c} for c in customers]}
    )
    assert status == 200
    promoted = [d["customer_id"] for d in answer["decisions"] if d["action"] == "promo"]
    assert promoted, "free promos should be chosen for some quiet customers"
    import redis

    keys = redis.Redis.from_url(f"redis://{redis_url}")
    prefix = f"nba:it-{loop['run_id']}:promos:"
    assert all(keys.zcard(prefix + c) == 1 for c in promoted)
    # Whichever worker answers now, the promo of a moment ago is counted.
    for customer in promoted[:4]:
        _, again = client.call("/decide", {"customer_id": customer})
        assert again["action"] != "promo"
        assert "promo_frequency_cap" in promo_of(again)["blocked_by"]


def test_single_decisions_record_their_promos_before_answering(
    loop: dict[str, Any], redis_url: str
) -> None:
    # /decide awaits its Redis calls on the worker's event loop (serving.redisreads): the
    # promo must be in the shared history by the time the answer arrives, concurrent or not.
    import redis

    client: Client = loop["client"]
    customers = quiet_customers(loop)[301:-1][:40]
    keys = redis.Redis.from_url(f"redis://{redis_url}")
    prefix = f"nba:it-{loop['run_id']}:promos:"
    given = []
    for customer in customers:
        status, decision = client.call("/decide", {"customer_id": customer})
        assert status == 200 and not decision["degraded"], decision
        if decision["action"] == "promo":
            assert keys.zcard(prefix + customer) == 1
            given.append(customer)
    assert given, "free promos should be chosen for some quiet customers"
    keys.close()


def test_a_small_batch_listing_a_customer_twice_gives_one_promo(
    loop: dict[str, Any], redis_url: str
) -> None:
    # Below 32 requests a batch is a series of awaited decisions, in order: the second entry
    # sees the promo the first one got (the frequency cap, through Redis).
    client: Client = loop["client"]
    for customer in quiet_customers(loop)[-40:-1]:
        status, answer = client.call(
            "/decide_batch", {"requests": [{"customer_id": customer}, {"customer_id": customer}]}
        )
        assert status == 200
        first, second = answer["decisions"]
        if first["action"] == "promo":
            assert second["action"] != "promo"
            assert "promo_frequency_cap" in promo_of(second)["blocked_by"]
            return
    raise AssertionError("no quiet customer got a free promo")


def test_an_event_is_seen_by_the_next_decision(loop: dict[str, Any]) -> None:
    client: Client = loop["client"]
    customer = quiet_customers(loop)[-1]
    _, before = client.call("/decide", {"customer_id": customer})
    assert "open_service_case" not in promo_of(before)["blocked_by"]
    status, ack = client.call(
        "/events",
        {
            "customer_id": customer,
            "type": "case_opened",
            "ts": datetime.now(UTC).isoformat(),
            "case_id": "P-1",
            "topic": "refund",
        },
    )
    assert status == 200 and ack["applied"] is True, ack
    _, after = client.call("/decide", {"customer_id": customer, "explain": True})
    assert after["action"] != "promo"
    assert "open_service_case" in promo_of(after)["blocked_by"]
    assert "case P-1 open since today" in after["reasons"]
