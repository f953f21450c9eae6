"""`nba serve` against a Redis that accepts connections and never answers (issue 14).

Two servers, each started once: features on the hung Redis with promos in SQLite (the worker's
event loop makes blocking Redis calls), and the production profile (features, promo history and
budget all on the hung Redis: the awaited path of ``serving.resp``; its SQL registry is a
SQLite database here, so that the only fault is Redis). Over HTTP every route must answer
within a bound, the safe way: ``/decide`` and each ``/decide_batch`` answer ``none`` with
``degraded: true``, ``/events`` and ``/readyz`` 503 with a JSON reason, ``/healthz`` at once;
then SIGTERM stops the server within a bound while requests are still coming in.

Before the deadlines, the first ``/decide`` of the first server blocked its worker for good
(no route answered and SIGTERM did nothing), and the production profile's ``/events`` and
``/readyz`` answered 504 after BentoML's 30 s.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from features.store import FeastAdapter
from serving.runtime import export_model
from tests.faults import HungServer
from tests.integration.test_service_http import free_port
from tests.unit.test_uplift import FAST, make_log
from training.uplift import MultiActionUplift

pytestmark = pytest.mark.integration

KEY = "hung-key"
#: Every answer must come within this many seconds (the deadlines are 0.5 s and 2 s).
BOUND = 3.0
#: SIGTERM must stop the server within this many seconds.
STOP_BOUND = 20.0
#: The figures measured, printed at the end (``pytest -s``) for the operations notes.
TIMINGS: dict[str, float] = {}


def call(port: int, path: str, body: Any = None, key: str | None = KEY) -> tuple[int, Any, float]:
    """(status, parsed JSON body, seconds); a hang fails the test through the socket timeout."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, method="POST" if data else "GET"
    )
    request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("X-API-Key", key)
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=4 * BOUND) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, payload = error.code, error.read()
    return status, json.loads(payload) if payload else None, time.monotonic() - started


def wait_alive(
    process: subprocess.Popen[bytes], port: int, log: Path, limit: float = 150.0
) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {log.read_text()[-3000:]}")
        try:
            if call(port, "/healthz", key=None)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    raise AssertionError(f"server did not start within {limit} s")


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
    feature_repo_copier: Callable[[Path, str], Path],
    feature_table_builder: Callable[..., pd.DataFrame],
    monkeypatch_module: pytest.MonkeyPatch,
) -> Iterator[dict[str, Any]]:
    """A hung Redis, a Feast repo whose registries know the views, and an exported model."""
    root = tmp_path_factory.mktemp("hung")
    hung = HungServer().start()
    # The caller's NBA_* settings must not leak into the servers.
    for name in [n for n in os.environ if n.upper().startswith("NBA_")]:
        monkeypatch_module.delenv(name)
    project = f"nba_hung_{uuid.uuid4().hex[:8]}"
    repo = feature_repo_copier(root / "repo", project)
    now = pd.Timestamp(datetime.now(UTC))
    table = feature_table_builder(["C1", "C2", "C3"], [now - timedelta(days=1)])
    registry_url = f"sqlite:///{root / 'registry.sqlite'}"
    # The views in both registries: the file registry of the Redis yaml and the SQL registry of
    # the production yaml. Applying touches neither online store (nothing to delete).
    for yaml_file in ("feature_store.redis.yaml", "feature_store.production.yaml"):
        adapter = FeastAdapter(repo, Path(yaml_file), redis_url=hung.address,
                               registry_url=registry_url).with_timeout(2.0)  # fmt: skip
        adapter.write_offline(table)
        adapter.apply()
    log = make_log(n=2000, seed=3)
    model = MultiActionUplift(method="s", **FAST).fit(log.X, log.action, log.propensity,
                                                      log.outcomes)  # fmt: skip
    folder = export_model(model, "hung-test/1", root / "model")
    common = {
        "NBA_FEATURE_REPO": str(repo),
        "NBA_MODEL_PATH": str(folder),
        "NBA_COMPILED_TREES": "false",
        "NBA_REDIS_URL": hung.address,
        "NBA_API_KEYS": KEY,
        "NBA_EXPLORE_EPSILON": "0",
    }
    try:
        yield {"root": root, "hung": hung, "common": common, "registry_url": registry_url,
               "project": project}  # fmt: skip
    finally:
        hung.stop()
        if TIMINGS:
            print("\nseconds:", json.dumps({k: round(v, 3) for k, v in TIMINGS.items()}))


@pytest.fixture(scope="module")
def servers(world: dict[str, Any]) -> Iterator[dict[str, tuple[int, subprocess.Popen[bytes]]]]:
    """Both servers on the hung Redis: {"mixed": (port, process), "production": ...}."""
    root, common, project = world["root"], world["common"], world["project"]
    envs = {
        "mixed": {"NBA_ONLINE_STORE": "redis", "NBA_PROMO_STORE": "sqlite"},
        "production": {
            "NBA_PROFILE": "production",
            "NBA_REGISTRY_URL": world["registry_url"],
            "NBA_ENVIRONMENT": f"hung-{project}",
        },
    }
    started: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
    try:
        for name, env in envs.items():  # both start at once: ≈ 20 s instead of 2 x 17 s
            logs = root / f"logs-{name}"
            env = {
                **common,
                **env,
                "NBA_DECISION_LOG_DIR": str(logs / "decisions"),
                "NBA_EVENTS_LOG_DIR": str(logs / "events"),
                "NBA_PROMO_HISTORY_PATH": str(logs / "promos.db"),
            }
            port = free_port()
            # stderr to a file: a pipe nobody reads would block the server once it is full.
            with open(root / f"{name}.log", "wb") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", "nba.cli", "serve", "--port", str(port),
                     "--workers", "1"],
                    env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **env},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            started[name] = (port, process)
        for name, (port, process) in started.items():
            wait_alive(process, port, root / f"{name}.log")
        yield started
    finally:
        for _, process in started.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    patch = pytest.MonkeyPatch()
    yield patch
    patch.undo()


PROFILES = ["mixed", "production"]


@pytest.mark.parametrize("profile", PROFILES)
def test_decide_degrades_within_the_deadline(
    servers: dict[str, tuple[int, subprocess.Popen[bytes]]], profile: str
) -> None:
    port, _ = servers[profile]
    for attempt in range(3):  # the first waits one deadline; the next fail fast or wait one
        status, answer, elapsed = call(port, "/decide", {"customer_id": "C1"})
        TIMINGS[f"{profile} /decide #{attempt + 1}"] = elapsed
        assert status == 200, answer
        assert answer["action"] == "none" and answer["degraded"] is True
        assert elapsed < BOUND


@pytest.mark.parametrize("profile", PROFILES)
def test_a_small_batch_degrades_within_the_deadline(
    servers: dict[str, tuple[int, subprocess.Popen[bytes]]], profile: str
) -> None:
    port, _ = servers[profile]
    time.sleep(1.2)  # past the breaker's cool-down: this batch meets the hung store itself
    body = {"requests": [{"customer_id": c} for c in ("C1", "C2", "C3", "C9", "C1")]}
    status, answer, elapsed = call(port, "/decide_batch", body)
    TIMINGS[f"{profile} /decide_batch of 5"] = elapsed
    assert status == 200, answer
    decisions = answer["decisions"]
    assert len(decisions) == 5
    assert all(d["action"] == "none" and d["degraded"] is True for d in decisions)
    assert elapsed < BOUND


@pytest.mark.parametrize("profile", PROFILES)
def test_concurrent_large_batches_degrade_within_the_deadline(
    servers: dict[str, tuple[int, subprocess.Popen[bytes]]], profile: str
) -> None:
    # 40 requests: the array path, off the event loop (features read as columns); four at once
    # hung both workers of the production profile before.
    port, _ = servers[profile]
    time.sleep(1.2)
    body = {"requests": [{"customer_id": f"C{i % 5}"} for i in range(40)]}
    outcomes: list[tuple[int, Any, float]] = []
    threads = [
        threading.Thread(target=lambda: outcomes.append(call(port, "/decide_batch", body)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=4 * BOUND + 5)
    assert len(outcomes) == 4
    TIMINGS[f"{profile} 4 concurrent /decide_batch of 40 (slowest)"] = max(o[2] for o in outcomes)
    for status, answer, elapsed in outcomes:
        assert status == 200, answer
        assert all(d["action"] == "none" and d["degraded"] for d in answer["decisions"])
        assert elapsed < BOUND


@pytest.mark.parametrize("profile", PROFILES)
def test_events_answer_503_within_the_deadline(
    servers: dict[str, tuple[int, subprocess.Popen[bytes]]], profile: str
) -> None:
    port, _ = servers[profile]
    time.sleep(1.2)
    event = {"customer_id": "C2", "type": "booking", "ts": datetime.now(UTC).isoformat()}
    status, answer, elapsed = call(port, "/events", event)
    TIMINGS[f"{profile} /events"] = elapsed
    assert status == 503 and "event not applied" in answer["error"], answer
    assert elapsed < BOUND


@pytest.mark.parametrize("profile", PROFILES)
def test_readyz_answers_503_within_the_deadline(
    servers: dict[str, tuple[int, subprocess.Popen[bytes]]], profile: str
) -> None:
    port, _ = servers[profile]
    time.sleep(2.2)  # past the readiness probe's cache and the breaker's cool-down
    status, answer, elapsed = call(port, "/readyz", key=None)
    TIMINGS[f"{profile} /readyz"] = elapsed
    assert status == 503 and answer["ready"] is False, answer
    assert "feature store" in answer["detail"]
    assert elapsed < BOUND


@pytest.mark.parametrize("profile", PROFILES)
def test_healthz_never_waits_on_a_store(
    servers: dict[str, tuple[int, subprocess.Popen[bytes]]], profile: str
) -> None:
    port, _ = servers[profile]
    status, answer, elapsed = call(port, "/healthz", key=None)
    TIMINGS[f"{profile} /healthz"] = elapsed
    assert status == 200 and answer == {"status": "alive"}
    assert elapsed < 1.0


@pytest.mark.parametrize("profile", PROFILES)
def test_sigterm_stops_the_server_while_the_store_hangs(
    servers: dict[str, tuple[int, subprocess.Popen[bytes]]], profile: str
) -> None:
    port, process = servers[profile]
    stop = threading.Event()

    def load() -> None:  # decisions and events in flight when the signal comes
        paths = [("/decide", {"customer_id": "C3"}),
                 ("/events", {"customer_id": "C3", "type": "booking",
                              "ts": datetime.now(UTC).isoformat()})]  # fmt: skip
        while not stop.is_set():
            for path, body in paths:
                try:
                    call(port, path, body)
                except OSError:
                    return  # the server is gone

    clients = [threading.Thread(target=load, daemon=True) for _ in range(3)]
    for client in clients:
        client.start()
    time.sleep(1.0)
    started = time.monotonic()
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_BOUND)
    finally:
        stop.set()
    TIMINGS[f"{profile} SIGTERM to exit"] = time.monotonic() - started
    assert process.returncode is not None


def test_a_hung_postgresql_registry_fails_the_start_within_its_deadline(
    world: dict[str, Any],
) -> None:
    # The production profile's Feast registry on a PostgreSQL that accepts and never answers:
    # a worker starts degraded (feature store not opened) after libpq's connect timeout, not
    # never. In a subprocess, so that a hang fails the test instead of stopping it.
    script = """
import json, time
import feast  # imported first: its 7 s are not the registry's
from nba.settings import load_settings
from serving.runtime import Runtime
started = time.monotonic()
runtime = Runtime.start(load_settings())
seconds = time.monotonic() - started
print(json.dumps({"seconds": seconds, "problems": runtime.problems,
                  "ready": runtime.readiness()}))
runtime.close()
"""
    root = world["root"]
    with HungServer() as postgres:
        env = {
            **os.environ,
            **world["common"],
            "NBA_PROFILE": "production",
            "NBA_REGISTRY_URL": f"postgresql+psycopg2://postgres@{postgres.address}/nba",
            "NBA_DECISION_LOG_DIR": str(root / "logs-pg" / "decisions"),
            "NBA_EVENTS_LOG_DIR": str(root / "logs-pg" / "events"),
        }
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                                text=True, timeout=120)  # fmt: skip
        tried = postgres.accepted
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    TIMINGS["production start, registry on a hung PostgreSQL"] = outcome["seconds"]
    assert tried >= 1  # the registry did try the hung server
    # One connect of 2 s (libpq's minimum) and ≈ 1.5 s of FeatureStore: 3.8 s on a quiet
    # host, 7 s at load average 8. Without the connect timeout it never returns.
    assert outcome["seconds"] < 15.0
    assert any("feature store not opened" in p for p in outcome["problems"])
    assert outcome["ready"][0] is False
