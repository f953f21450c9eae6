"""Triggers and the outbox end to end on the embedded profile, over HTTP.

One small world (simulate 2,000 customers, features, train --force); its raw flights gain two
numbered flights on one day: ``ZZ45`` with 300 passengers, ``ZZ46`` with 5 others, so that
``nba features`` fills the memory's flight manifest from the raw export. Then ``nba serve``:

* a ``flight_flown`` event crossing 1,000,000 miles puts one recognition in the outbox within
  a second (the ``milestone`` trigger, a service message);
* ``POST /events/flight`` cancelling ZZ45 gives its passengers, and only them, apology credits
  in the outbox within the day's paced budget; the others of the wave wait in
  ``/outbox/pending`` by expected value; a retried flight event changes nothing.

The model of so small a world values a credit for few of the passengers (it is right: their
expected value is mostly below 0), so the ``disruption`` trigger is made a service action here
(a workspace's triggers file): every eligible passenger is then owed a credit, and the paced
budget must queue the wave.
"""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.integration.envs import local_world_env
from tests.integration.test_service_http import Client, start_server, stop
from tests.integration.test_train_cli import run

pytestmark = pytest.mark.integration

#: Apology credits a day: the pace then allows 1-5 at once (an hour's worth, 1, plus the day's
#: share so far), far less than the wave of 300 needs.
BUDGET = 4
PORT = 3641
FLIGHT, OTHER = "ZZ45", "ZZ46"
PASSENGERS = 300


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, feature_repo_copier: Callable[[Path, str], Path]
) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("outbox")
    repo = feature_repo_copier(root / "repo", "nba")
    env = {
        **local_world_env(root, repo),
        "NBA_MEMORY_URL": f"sqlite:///{root / 'memory.db'}",
        "NBA_API_KEYS": "test-key",
        "NBA_EXPLORE_EPSILON": "0",
        "NBA_APOLOGY_BUDGET_PER_DAY": str(BUDGET),
        "NBA_COST_APOLOGY_CREDIT": "5",  # cheap: most of the wave is worth a credit
        "NBA_TRIGGER_POLL_SECONDS": "0.2",
        "NBA_TRIGGERS": str(root / "triggers.yaml"),
    }
    shipped = yaml.safe_load((REPO_ROOT / "serving" / "triggers.yaml").read_text())
    for trigger in shipped["triggers"]:
        if trigger["name"] == "disruption":
            trigger["service_action"] = True
    (root / "triggers.yaml").write_text(yaml.safe_dump(shipped))
    raw = root / "raw"
    result = run("simulate", "--out", str(raw), "--customers", "2000", "--seed", "11", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    flights = pd.read_parquet(raw / "flights.parquet")
    bookings = pd.read_parquet(raw / "bookings.parquet")
    # One confirmed booking per customer to hang the new legs on (the contract's reference).
    booking = bookings.drop_duplicates("customer_id").set_index("customer_id")["booking_id"]
    customers = list(booking.index[: PASSENGERS + 5])
    day = (pd.Timestamp(datetime.now(UTC)) - pd.Timedelta(days=1)).normalize()
    legs = pd.DataFrame(
        {
            "booking_id": [booking[c] for c in customers],
            "customer_id": customers,
            "scheduled_at": [day + pd.Timedelta(hours=18, minutes=30)] * len(customers),
            "delay_minutes": 0,
            "cancelled": False,
            "miles_earned": 800,
            "flight_number": [FLIGHT] * PASSENGERS + [OTHER] * 5,
        }
    )
    flights = pd.concat([flights, legs.astype({"delay_minutes": "int64"})], ignore_index=True)
    flights.to_parquet(raw / "flights.parquet", index=False)
    for args in (("features", "--raw", str(raw)), ("train", "--raw", str(raw), "--force")):
        result = run(*args, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
    return {"env": env, "passengers": customers[:PASSENGERS], "others": customers[PASSENGERS:],
            "scheduled": day + pd.Timedelta(hours=18, minutes=30)}  # fmt: skip


@pytest.fixture(scope="module")
def server(world: dict[str, Any]) -> Iterator[Client]:
    process: subprocess.Popen[bytes] = start_server(world["env"], PORT)
    yield Client(PORT, record=False)
    if process.poll() is None:
        stop(process)


def _all_items(client: Client) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = "0"
    while True:
        status, page = client.call(f"/outbox?after={cursor}&limit=100")
        assert status == 200, page
        items += page["items"]
        if not page["items"]:
            return items
        cursor = page["next"]


def _until(check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


def test_outbox_routes_need_a_key_and_valid_parameters(server: Client) -> None:
    assert server.call("/outbox", key=None)[0] == 401
    assert server.call("/outbox/pending", key=None)[0] == 401
    status, body = server.call("/outbox?limit=0")
    assert status == 422 and body["detail"]["field"] == "limit"
    status, body = server.call("/outbox?after=x")
    assert status == 422 and body["detail"]["field"] == "after"
    status, body = server.call("/events/flight", {"flight_number": "ZZ45", "type": "x"})
    assert status == 422 and body["detail"]["field"]


def test_a_millionth_mile_puts_one_recognition_in_the_outbox_within_a_second(
    server: Client,
) -> None:
    before = len(_all_items(server))
    event = {"customer_id": "FLYER-1", "type": "flight_flown", "ts": _now(),
             "miles_earned": 1_000_250, "flight_number": "ZZ1", "event_id": "flown-1"}  # fmt: skip
    started = time.monotonic()
    status, ack = server.call("/events", event)
    assert status == 200 and ack["applied"], ack
    items = _until(lambda: _all_items(server)[before:], 1.0)
    elapsed = time.monotonic() - started
    assert len(items) == 1, items
    [item] = items
    assert elapsed < 1.0
    assert item["trigger"] == "milestone" and item["event_id"] == "flown-1"
    assert item["channel"] == "email" and item["decision"]["action"] == "recognition"
    assert item["decision"]["customer_id"] == "FLYER-1"
    # The same event again is a duplicate: no second recognition.
    assert server.call("/events", event)[1]["duplicate"] is True
    time.sleep(0.5)
    assert len(_all_items(server)) == before + 1


def test_a_cancelled_flight_credits_its_passengers_within_the_budget(
    server: Client, world: dict[str, Any]
) -> None:
    body = {"flight_number": FLIGHT, "scheduled_at": world["scheduled"].isoformat(),
            "type": "flight_disrupted", "ts": _now(), "cancelled": True,
            "event_id": "ops-7781"}  # fmt: skip
    before = {i["outbox_id"] for i in _all_items(server)}
    started = time.monotonic()
    status, ack = server.call("/events/flight", body)
    acked = time.monotonic() - started
    assert status == 200, ack
    assert ack == {"affected": PASSENGERS, "event_id": "ops-7781", "duplicate": False}
    # ≈ 1-2 s measured on this 2-core machine under load (docs/benchmarks.md); 5 s: not flaky.
    assert acked < 5.0, f"/events/flight took {acked:.2f} s for {PASSENGERS} passengers"

    def settled() -> tuple[list[dict[str, Any]]] | None:
        pending = server.call("/outbox/pending")[1]["items"]
        return None if any(p["waiting_for"] == "due" for p in pending) else (pending,)

    done = _until(settled, 60.0)
    assert done is not None, "the wave was not decided within 60 s"
    [pending] = done
    items = [i for i in _all_items(server) if i["outbox_id"] not in before]
    passengers = set(world["passengers"])
    credited = [i["decision"]["customer_id"] for i in items]
    waiting = [p["customer_id"] for p in pending]
    assert credited, "no apology credit at all"
    assert set(credited) <= passengers and set(waiting) <= passengers
    assert not set(world["others"]) & (set(credited) | set(waiting))  # ZZ46 untouched
    assert len(credited) == len(set(credited))  # none twice
    assert not set(credited) & set(waiting)
    assert all(i["trigger"] == "disruption" and i["decision"]["action"] == "apology_credit"
               for i in items)  # fmt: skip
    assert all(i["event_id"] == f"ops-7781:{i['decision']['customer_id']}" for i in items)
    # Within the paced budget: never more than the day's allowance at this time.
    now = datetime.now(UTC)
    elapsed = (now - now.replace(hour=0, minute=0, second=0, microsecond=0)).total_seconds()
    allowance = min(BUDGET, int(BUDGET * elapsed / 86_400) + math.ceil(BUDGET / 24))
    assert len(credited) <= allowance
    # The rest of the wave waits (the budget is far below 300), best expected value first.
    assert pending and all(p["waiting_for"] == "budget" for p in pending)
    values = [p["expected_value"] for p in pending]
    assert values == sorted(values, reverse=True)
    # A retried flight event: a duplicate for every passenger, nothing new anywhere.
    status, again = server.call("/events/flight", body)
    assert status == 200 and again["duplicate"] is True and again["affected"] == PASSENGERS
    time.sleep(1.0)
    assert len(_all_items(server)) == len(before) + len(items)
    assert len(server.call("/outbox/pending")[1]["items"]) == len(pending)


def test_an_unknown_flight_affects_nobody(server: Client, world: dict[str, Any]) -> None:
    body = {"flight_number": "ZZ47", "scheduled_at": world["scheduled"].isoformat(),
            "type": "flight_disrupted", "ts": _now(), "delay_minutes": 200}  # fmt: skip
    status, ack = server.call("/events/flight", body)
    assert status == 200 and ack["affected"] == 0 and ack["duplicate"] is False


def _now() -> str:
    return (datetime.now(UTC) - timedelta(seconds=5)).isoformat().replace("+00:00", "Z")
