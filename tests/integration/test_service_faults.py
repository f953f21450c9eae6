"""Faults under load (issue 14): a killed worker loses no answered decision; SIGTERM drains.

``nba serve`` runs with two workers on the world of ``test_service_http``; keep-alive clients
in threads send ``/decide`` and ``/decide_batch`` while a worker is SIGKILLed, or while the
server is stopped with SIGTERM. Every decision answered 200 must then be in the decision log
exactly once, and a request the server accepted must never see its connection reset.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest

from features import decision_log, journal, schema
from tests.integration import test_service_http
from tests.integration.test_service_http import KEY, free_port

#: The simulated, trained world of ``test_service_http`` (its module-scoped fixture).
world = test_service_http.world

pytestmark = pytest.mark.integration

#: Requests per ``/decide_batch`` of the load (the column path: above ``SMALL_BATCH``).
BATCH = 300


def start(env: dict[str, str], port: int, workers: int = 2) -> subprocess.Popen[bytes]:
    """``nba serve`` with ``workers`` workers, once every worker answers ``/healthz``."""
    process = subprocess.Popen(
        [sys.executable, "-m", "nba.cli", "serve", "--port", str(port), "--workers", str(workers)],
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {process.stderr.read().decode()[-3000:]}")  # type: ignore[union-attr]
        pids = worker_pids(process)
        if len(pids) == workers and all(_accepting(pid) for pid in pids) and _healthy(port, 4):
            return process
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    raise AssertionError("server did not start within 180 s")


def _accepting(pid: int) -> bool:
    """Whether a worker's event loop watches the listening socket (it has finished starting).

    A worker still starting when the server is stopped would listen on the shared socket
    after the arbiter shut it down: the tests stop a server whose workers all serve.
    """
    try:
        fds = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
        sockets = {fd for fd in fds if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")}
        listening = {fd for fd in sockets if fd == 3 or _same_socket(pid, fd, 3)}
        for fd in fds:
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
            watched = {
                int(line.split()[1]) for line in info.splitlines() if line.startswith("tfd:")
            }
            if watched & listening:
                return True
    except OSError:  # the process or a descriptor went away meanwhile
        return False
    return False


def _same_socket(pid: int, fd: int, other: int) -> bool:
    return os.readlink(f"/proc/{pid}/fd/{fd}") == os.readlink(f"/proc/{pid}/fd/{other}")


def _healthy(port: int, probes: int) -> bool:
    try:
        for _ in range(probes):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/readyz")
            ok = connection.getresponse().status == 200
            connection.close()
            if not ok:
                return False
        return True
    except OSError:
        return False


def worker_pids(process: subprocess.Popen[bytes]) -> list[int]:
    """The BentoML worker processes of the server (children of its circus arbiter)."""
    try:
        children = psutil.Process(process.pid).children(recursive=True)
        return [p.pid for p in children if "_bentoml_impl.worker" in " ".join(p.cmdline())]
    except psutil.Error:
        return []


class Load:
    """Keep-alive clients in threads, deciding until stopped; what every request got."""

    def __init__(self, port: int, customers: Sequence[str], threads: int = 8) -> None:
        self.port = port
        self.customers = list(customers)
        self.answered: list[str] = []  # decision ids answered 200
        self.failures: list[str] = []  # a request sent on an accepted connection, then lost
        self.refused = 0  # connections refused (not accepted: nothing was sent)
        self.sent = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(k,)) for k in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)

    def _run(self, k: int) -> None:
        connection: http.client.HTTPConnection | None = None
        i = k
        used = 0  # requests sent on this connection before
        while not self._stop.is_set():
            i += 1
            if connection is None:
                used = 0
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                try:
                    connection.connect()
                except ConnectionRefusedError:
                    connection = None
                    with self._lock:
                        self.refused += 1
                    time.sleep(0.02)
                    continue
            batch = k == 0 and i % 5 == 0  # thread 0 sends a batch now and then
            path, body = self._body(i, batch)
            try:
                headers = {"X-API-Key": KEY, "Content-Type": "application/json"}
                connection.request("POST", path, body, headers)
                response = connection.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException) as error:
                with self._lock:
                    self.failures.append(
                        f"{path} ({used} before on its connection): {type(error).__name__}: {error}"
                    )
                connection.close()
                connection = None
                continue
            used += 1
            if response.status == 200:
                parsed = json.loads(payload)
                decisions = parsed["decisions"] if batch else [parsed]
                with self._lock:
                    self.answered.extend(d["decision_id"] for d in decisions)
            else:
                with self._lock:
                    self.failures.append(f"{path}: HTTP {response.status}")
            if response.will_close:  # the server said Connection: close (it is draining)
                connection.close()
                connection = None

    def _body(self, i: int, batch: bool) -> tuple[str, bytes]:
        if batch:
            ids = [self.customers[(i + j) % len(self.customers)] for j in range(BATCH)]
            return "/decide_batch", json.dumps({"requests": [{"customer_id": c} for c in ids]}
                                               ).encode()  # fmt: skip
        return "/decide", json.dumps({"customer_id": self.customers[i % len(self.customers)]}
                                     ).encode()  # fmt: skip

    def wait_answered(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while len(self.answered) < count:
            assert time.monotonic() < deadline, f"only {len(self.answered)} answered"
            time.sleep(0.05)


def _worker_with_a_segment(process: subprocess.Popen[bytes], folder: Path) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for pid in worker_pids(process):
            if any(folder.glob(f"{journal.JOURNAL_DIR}/{pid}-*{journal.SUFFIX}")):
                return pid
        time.sleep(0.01)
    raise AssertionError("no worker has a journal segment under load")


def _logged(folder: Path) -> Any:
    return decision_log.read_decisions(folder)["decision_id"]


def test_sigkill_of_a_worker_loses_no_answered_decision(world: dict[str, Any]) -> None:
    env = {**world["env"], "NBA_DECISION_LOG_DIR": str(world["root"] / "kill" / "decisions"),
           "NBA_EVENTS_LOG_DIR": str(world["root"] / "kill" / "events"),
           "NBA_LOG_FLUSH_SECONDS": "5"}  # fmt: skip
    folder = Path(env["NBA_DECISION_LOG_DIR"])
    port = free_port()
    process = start(env, port)
    try:
        customers = world["quiet"][schema.ENTITY].tolist()
        with Load(port, customers) as load:
            load.wait_answered(300)
            # A worker holding answered decisions that no part holds yet: its journal segment
            # exists (connections may all have landed on one worker: that one, then).
            victim = _worker_with_a_segment(process, folder)
            os.kill(victim, signal.SIGKILL)
            load.wait_answered(len(load.answered) + 300)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=120)
    logged = _logged(folder)
    print(f"answered {len(load.answered)}, logged {len(logged)}, failed {len(load.failures)}")
    missing = set(load.answered) - set(logged)
    assert not missing, f"{len(missing)} of {len(load.answered)} answered decisions not logged"
    assert logged.is_unique
    assert list(folder.glob(f"date=*/part-*-{victim}-*.parquet")), "victim's rows not recovered"
    assert not list((folder / journal.JOURNAL_DIR).iterdir())


def test_sigterm_drains_requests_in_flight(world: dict[str, Any]) -> None:
    env = {**world["env"], "NBA_DECISION_LOG_DIR": str(world["root"] / "term" / "decisions"),
           "NBA_EVENTS_LOG_DIR": str(world["root"] / "term" / "events")}  # fmt: skip
    port = free_port()
    process = start(env, port)
    customers = world["quiet"][schema.ENTITY].tolist()
    try:
        with Load(port, customers, threads=16) as load:
            load.wait_answered(300)
            os.killpg(process.pid, signal.SIGTERM)
            code = process.wait(timeout=120)
            answered_at_exit = len(load.answered)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    print(f"answered {len(load.answered)}, refused {load.refused}, failed {len(load.failures)}")
    assert code == 0
    assert not load.failures, f"{len(load.failures)} accepted requests failed: {load.failures[:5]}"
    assert len(load.answered) == answered_at_exit  # nothing answered after the server exited
    logged = _logged(Path(env["NBA_DECISION_LOG_DIR"]))
    assert set(load.answered) <= set(logged) and logged.is_unique
