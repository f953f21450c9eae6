"""Schemathesis against a live `nba serve`, on both request paths: the OpenAPI document
(``/docs.json``) describes what is served, and hostile input never gets a 5xx.

A small world (simulate, features, train --force) is served twice, by the fast ``Gate`` path
and with NBA_FAST_PATH=false (BentoML's IO path). Schemathesis' CLI generates schema-valid and
schema-violating requests for /decide, /decide_batch and /events with the API key, and runs
every check but ``positive_data_acceptance``: an event ``ts`` must be within a day of the
server's clock, a bound JSON Schema cannot state, and strict integers refuse ``190.0``, which
JSON Schema counts as an integer. Afterwards the decision and event logs hold only strict JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from features import decision_log
from serving import api
from tests.integration.test_service_http import free_port, start_server, stop
from tests.integration.test_train_cli import run

pytestmark = pytest.mark.integration

KEY = "fuzz-key"
#: NBA_FAST_PATH -> (schemathesis phases, examples per operation, least test cases expected).
#: The coverage phase (boundary values: every limit and one past it, ≈ 420 cases) runs on the
#: fast path; the BentoML path validates with the same ``Gate`` code, so random bodies (its
#: own answers' serialization) suffice there and keep the whole module near two minutes.
RUNS: dict[str, tuple[str, int, int]] = {
    "true": ("coverage,fuzzing", 30, 400),
    "false": ("fuzzing", 40, 100),
}
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, feature_repo_copier: Callable[[Path, str], Path]
) -> dict[str, Any]:
    if not SCHEMATHESIS.exists():
        pytest.skip("schemathesis is not installed (the dev extra)")
    root = tmp_path_factory.mktemp("fuzz")
    repo = feature_repo_copier(root / "repo", "nba")
    env = {
        "NBA_FEATURE_REPO": str(repo),
        "NBA_MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "NBA_MLFLOW_ARTIFACT_LOCATION": str(root / "artifacts"),
        "NBA_API_KEYS": KEY,
    }
    raw = str(root / "raw")
    for args in (
        ("simulate", "--out", raw, "--customers", "800", "--seed", "11"),
        ("features", "--raw", raw),
        ("train", "--raw", raw, "--force"),
    ):
        result = run(*args, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
    return {"env": env, "root": root}


def _strict(text: str) -> Any:
    def refuse(literal: str) -> Any:
        raise AssertionError(f"{literal} stored in a log")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def servers(world: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Both request paths served at once (their ≈ 20 s start-ups overlap), each with its logs."""
    started: dict[str, Any] = {}

    def serve(fast_path: str) -> None:
        logs = world["root"] / f"logs-{fast_path}"
        env = {
            **world["env"],
            "NBA_FAST_PATH": fast_path,
            "NBA_DECISION_LOG_DIR": str(logs / "decisions"),
            "NBA_EVENTS_LOG_DIR": str(logs / "events"),
            "NBA_PROMO_HISTORY_PATH": str(logs / "promos.db"),
        }
        port = free_port()
        started[fast_path] = (port, start_server(env, port), logs)

    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(serve, RUNS))
        yield started
    finally:  # also when one of them failed to start
        for _, process, _ in started.values():
            if process.poll() is None:
                stop(process)


@pytest.mark.parametrize("fast_path", list(RUNS), ids=["fast-path", "bentoml-path"])
def test_schemathesis_finds_no_5xx_and_no_schema_violation(
    servers: dict[str, Any], fast_path: str
) -> None:
    port, process, logs = servers[fast_path]
    phases, examples, least = RUNS[fast_path]
    reports = logs / "schemathesis"
    reports.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(
            [str(SCHEMATHESIS), "run", f"http://127.0.0.1:{port}/docs.json",
             "-H", f"X-API-Key: {KEY}",
             "--include-path-regex", "^/(decide|decide_batch|events)$",
             "--checks", "all", "--exclude-checks", "positive_data_acceptance",
             "--phases", phases, "--max-examples", str(examples), "--seed", "14",
             "--workers", "1", "--request-timeout", "30",
             "--report", "json", "--report-dir", str(reports)],
            capture_output=True, text=True, timeout=600, cwd=reports,  # its cache stays there
        )  # fmt: skip
    finally:
        assert stop(process) == 0  # flushes the logs read below
    [path] = reports.glob("*.json")
    report = json.loads(path.read_text())
    summary = result.stdout[-4000:]
    assert report["operations"]["tested"] == 3, summary
    assert report["failures"] == [] and report["errors"] == [], summary
    assert report["test_cases"]["generated"] >= least, summary
    assert result.returncode == 0, summary
    print(f"schemathesis ({fast_path=}): {report['test_cases']}")  # the figures, with -s

    # What the logs stored is what was validated: strict JSON, bounded strings.
    decisions = decision_log.read_decisions(logs / "decisions")
    assert len(decisions) > 0
    for text in decisions["context"].dropna():
        context = _strict(text)
        assert len(context) <= api.MAX_CONTEXT_KEYS
        assert all(len(str(v)) <= api.MAX_TEXT_CHARS for v in context.values())
    assert decisions["customer_id"].str.len().max() <= api.MAX_ID_CHARS
    events = decision_log.read_log(logs / "events", decision_log.EVENT_SCHEMA, "ts")
    assert len(events) > 0
    for text in events["payload"].dropna():
        payload = _strict(text)
        assert all(len(str(v)) <= api.MAX_TEXT_CHARS for v in payload.values())
