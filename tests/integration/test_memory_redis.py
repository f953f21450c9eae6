"""The customer memory behind the real service: Redis online store, PostgreSQL ledger.

`nba serve` over HTTP with its features in a Redis server started here (no persistence, port
6391-6399) and its memory in a PostgreSQL database of its own; a small simulated world and a
fast model exported here. Events arrive out of order (a complaint stamped before a booking that
arrived first), a case is opened and closed in one second (both arrival orders), a daily `nba
features` runs after /events, and finally Redis is killed and started empty: the rebuild from
the PostgreSQL ledger gives every acknowledged event back to the decisions.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from features import schema
from serving.runtime import export_model
from tests.integration.test_production_profile import postgres_admin, postgres_rows
from tests.integration.test_service_http import Client, promo_of, start_server, stop
from tests.integration.test_train_cli import run
from tests.unit.test_uplift import FAST, make_log
from training.uplift import MultiActionUplift

pytestmark = [pytest.mark.integration, pytest.mark.integration_services]

KEY = "test-key"  # test_service_http's Client sends it
#: Ports this module may run its Redis on.
REDIS_PORTS = range(6391, 6400)


def free_redis_port() -> int:
    """A port of ``REDIS_PORTS`` nothing listens on."""
    for port in REDIS_PORTS:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError(f"no free port in {REDIS_PORTS}")


def start_redis(port: int, folder: Path) -> subprocess.Popen[bytes]:
    """A Redis server that keeps nothing on disk (as this machine's), ready to answer."""
    folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"redis-server did not start on {port}")


def fast_model(folder: Path) -> Path:
    """A small uplift model on the service's feature names, exported for NBA_MODEL_PATH."""
    log = make_log(n=2000, seed=3)
    rng = np.random.default_rng(3)
    X = pd.DataFrame(rng.normal(size=(2000, len(schema.MODEL_FEATURES))),
                     columns=list(schema.MODEL_FEATURES))  # fmt: skip
    model = MultiActionUplift(method="s", **FAST).fit(X, log.action, log.propensity, log.outcomes)
    return export_model(model, "memory-it/1", folder)


@pytest.fixture(scope="module")
def world(
    redis_url: str,
    postgres_address: tuple[str, int],
    tmp_path_factory: pytest.TempPathFactory,
    feature_repo_copier: Callable[[Path, str], Path],
) -> Iterator[dict[str, Any]]:
    """Redis of our own, a PostgreSQL memory, a small world built, the server running."""
    del redis_url  # only its availability: this module runs its own server
    host, pg_port = postgres_address
    run_id = uuid.uuid4().hex[:10]
    root = tmp_path_factory.mktemp("memory_redis")
    port = free_redis_port()
    redis = start_redis(port, root / "redis")
    database = f"nba_memit_{run_id}"
    memory_url = f"postgresql+psycopg2://postgres@{host}:{pg_port}/{database}"
    unset = pytest.MonkeyPatch()
    for name in [n for n in os.environ if n.upper().startswith("NBA_")]:
        if name.upper() != "NBA_REQUIRE_SERVICES":
            unset.delenv(name)
    env = {
        "NBA_FEATURE_REPO": str(feature_repo_copier(root / "repo", f"nba_memit_{run_id}")),
        "NBA_ONLINE_STORE": "redis",
        "NBA_REDIS_URL": f"127.0.0.1:{port}",
        "NBA_PROMO_STORE": "sqlite",
        "NBA_PROMO_HISTORY_PATH": str(root / "logs" / "promos.db"),
        "NBA_MEMORY_URL": memory_url,
        "NBA_MODEL_PATH": str(fast_model(root / "model")),
        "NBA_COMPILED_TREES": "false",
        "NBA_ENVIRONMENT": f"memit-{run_id}",
        "NBA_DECISION_LOG_DIR": str(root / "logs" / "decisions"),
        "NBA_EVENTS_LOG_DIR": str(root / "logs" / "events"),
        "NBA_API_KEYS": KEY,
        "NBA_EXPLORE_EPSILON": "0",
    }
    raw = root / "raw"
    state: dict[str, Any] = {"env": env, "raw": raw, "root": root, "memory_url": memory_url}
    state.update(redis=redis, redis_port=port)
    try:
        for args in (
            ("simulate", "--out", str(raw), "--customers", "400", "--seed", "17"),
            ("features", "--raw", str(raw)),
        ):
            result = run(*args, env=env)
            assert result.returncode == 0, result.stderr[-3000:]
        table = pd.read_parquet(
            Path(env["NBA_FEATURE_REPO"]) / "data" / "customer_features.parquet"
        )
        latest = table.sort_values(schema.EVENT_TIMESTAMP).groupby(schema.ENTITY).tail(1)
        quiet = latest[
            (latest.open_case_count == 0)
            & latest.last_negative_at.isna()
            & latest.marketing_opt_in
            & ~latest.unsubscribed
        ]
        state["quiet"] = list(quiet[schema.ENTITY])
        assert len(state["quiet"]) >= 12, "the small world needs a dozen quiet customers"
        service_port = free_port_for_service()
        server = start_server(env, service_port)
        state.update(server=server, client=Client(service_port, record=False), expect={})
        yield state
    finally:
        if state.get("server") is not None:
            stop(state["server"])
        state["redis"].kill()
        state["redis"].wait(timeout=10)
        postgres_admin(host, pg_port, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        shutil.rmtree(root, ignore_errors=True)
        unset.undo()


def free_port_for_service() -> int:
    """A port in 3630-3639 (this module's range) nothing listens on."""
    for port in range(3630, 3640):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError("no free port in 3630-3639")


def post(client: Client, customer: str, kind: str, ts: datetime, **fields: Any) -> dict[str, Any]:
    """POST /events; the acknowledgement (fails unless 200)."""
    body = {"customer_id": customer, "type": kind, "ts": ts.isoformat(), **fields}
    status, ack = client.call("/events", body)
    assert status == 200, (body, ack)
    return ack  # type: ignore[no-any-return]


def blocked(client: Client, customer: str, limit: float = 30.0) -> list[str]:
    """The guardrails blocking the customer's promo, from the first non-degraded decision
    (after a Redis restart the feature store's breaker needs a moment)."""
    deadline = time.monotonic() + limit
    while True:
        status, decision = client.call("/decide", {"customer_id": customer, "explain": True})
        if status == 200 and not decision["degraded"]:
            assert decision["action"] != "promo" or not promo_of(decision)["blocked_by"]
            return list(promo_of(decision)["blocked_by"])
        assert time.monotonic() < deadline, decision
        time.sleep(0.5)


def rebuild(world: dict[str, Any]) -> None:
    """The daily `nba features` on the world's raw export (and the memory's ledger)."""
    result = run("features", "--raw", str(world["raw"]), env=world["env"])
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_complaint_stamped_before_an_earlier_arriving_booking_blocks_the_promo(
    world: dict[str, Any],
) -> None:
    client, customer = world["client"], world["quiet"][0]
    now = datetime.now(UTC)
    assert "open_service_case" not in blocked(client, customer)
    assert post(client, customer, "booking", now, booking_id=f"IT-B-{customer}")["applied"]
    # The complaint happened five minutes before the booking but arrives after it.
    ack = post(client, customer, "case_opened", now - timedelta(minutes=5), case_id="IT-A",
               topic="refund")  # fmt: skip
    assert ack["applied"] is True and ack["duplicate"] is False, ack
    reasons = blocked(client, customer)
    assert "open_service_case" in reasons and "recent_negative_experience" in reasons
    # A retry of the booking (same event_id) changes nothing and is said so.
    first = post(client, customer, "booking", now, event_id=f"IT-E-{customer}")
    again = post(client, customer, "booking", now, event_id=f"IT-E-{customer}")
    assert first["duplicate"] is False and again["duplicate"] is True
    assert "open_service_case" in blocked(client, customer)
    world["expect"][customer] = {"open_service_case"}


def test_an_opening_and_a_closing_in_one_second_keep_the_case_closed(
    world: dict[str, Any],
) -> None:
    client = world["client"]
    second = datetime.now(UTC).replace(microsecond=0)
    opening = {"type": "case_opened", "case_id": "IT-S", "topic": "refund"}
    closing = {"type": "case_closed", "case_id": "IT-S"}
    for customer, order in ((world["quiet"][1], (opening, closing)),
                            (world["quiet"][2], (closing, opening))):  # fmt: skip
        ids = [f"{customer}-{k}" for k in range(2)]
        acks = [
            post(client, customer, e["type"], second + timedelta(microseconds=k * 1000),
                 **{**{n: v for n, v in e.items() if n != "type"}, "case_id": f"IT-S-{customer}",
                    "event_id": ids[k]})
            for k, e in enumerate(order)
        ]  # fmt: skip
        assert all(not a["duplicate"] for a in acks)
        reasons = blocked(client, customer)
        assert "open_service_case" not in reasons, (order, acks)
        # The complaint is still a negative experience of today.
        assert "recent_negative_experience" in reasons
        world["expect"][customer] = {"recent_negative_experience"}


def test_a_daily_rebuild_after_events_gives_those_customers_no_promo(
    world: dict[str, Any],
) -> None:
    client, quiet = world["client"], world["quiet"]
    now = datetime.now(UTC)
    complaint, unsubscribed, open_case, opted_out, control = quiet[3:8]
    post(client, complaint, "case_opened", now - timedelta(hours=2), case_id="IT-C",
         topic="baggage")  # fmt: skip
    assert post(client, complaint, "case_closed", now - timedelta(hours=1), case_id="IT-C")[
        "applied"
    ]
    post(client, unsubscribed, "unsubscribe", now)
    post(client, open_case, "case_opened", now, case_id="IT-O", topic="seat")
    post(client, opted_out, "consent_changed", now, marketing_opt_in=False)
    expect = {
        complaint: {"recent_negative_experience"},
        unsubscribed: {"marketing_opt_out"},
        open_case: {"open_service_case"},
        opted_out: {"marketing_opt_out"},
    }
    for customer, rules in expect.items():
        assert rules <= set(blocked(client, customer)), customer
    rebuild(world)
    world["expect"].update(expect)
    for customer, rules in world["expect"].items():
        reasons = set(blocked(client, customer))
        assert rules <= reasons, (customer, reasons)
    assert "open_service_case" not in blocked(client, complaint)  # closed before the rebuild
    assert not {"open_service_case", "marketing_opt_out", "recent_negative_experience"} & set(
        blocked(client, control)
    )


def test_a_redis_restart_loses_no_acknowledged_event(world: dict[str, Any]) -> None:
    client, quiet = world["client"], world["quiet"]
    now = datetime.now(UTC)
    late_unsub, late_case = quiet[8:10]
    post(client, late_unsub, "unsubscribe", now)
    post(client, late_case, "case_opened", now, case_id="IT-L", topic="refund")
    world["expect"].update({late_unsub: {"marketing_opt_out"}, late_case: {"open_service_case"}})
    acknowledged = postgres_rows(world["memory_url"], "SELECT count(*) FROM ledger")[0][0]
    assert acknowledged >= 14

    # Redis dies and comes back empty (this machine's Redis keeps nothing on disk).
    redis: subprocess.Popen[bytes] = world["redis"]
    redis.kill()
    redis.wait(timeout=10)
    world["redis"] = start_redis(world["redis_port"], world["root"] / "redis")
    rebuild(world)  # from the raw export and the PostgreSQL ledger
    for customer, rules in world["expect"].items():
        reasons = set(blocked(client, customer))
        assert rules <= reasons, (customer, reasons)
    for customer in quiet[1:3]:  # their case was opened and closed in one second
        assert "open_service_case" not in blocked(client, customer)
    assert postgres_rows(world["memory_url"], "SELECT count(*) FROM ledger")[0][0] == acknowledged
