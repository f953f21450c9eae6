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
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from features import decision_log
from serving import api
from tests.cdp import CHROMIUM, Chromium
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


def test_the_api_page_authorizes_and_tries_a_decision(
    servers: dict[str, Any], tmp_path: Path
) -> None:
    # As an integrating engineer would: open the page, Authorize with a key, Try it out on
    # /decide with the page's own example, Execute. Runs before the fuzz tests stop the servers.
    if CHROMIUM is None:  # like Redis and PostgreSQL: skipped on a laptop, required in CI
        message = "chromium is not installed (Debian: apt-get install chromium; .ci/run does)"
        if os.environ.get("NBA_REQUIRE_SERVICES", "").lower() in ("1", "true"):
            pytest.fail(message)
        pytest.skip(message)
    port = servers["true"][0]
    with Chromium(tmp_path / "profile") as browser:
        page = browser.page()
        page.open(f"http://127.0.0.1:{port}/")
        page.wait("document.querySelector('.btn.authorize') !== null")
        assert page.eval("document.title") == "nba decision API"
        assert "nba decision API" in page.eval("document.querySelector('.info .title').textContent")
        # Nothing loaded from another host (no tag manager, no badges).
        sources = page.eval("[...document.querySelectorAll('script[src], link[href], img[src]')]"
                            ".map(e => e.src || e.href)")  # fmt: skip
        assert sources and all(s.startswith(f"http://127.0.0.1:{port}/") for s in sources), sources
        buttons = "[...document.querySelectorAll('.modal-ux button')]"
        page.eval("document.querySelector('.btn.authorize').click()")
        page.wait("document.querySelector('.modal-ux input') !== null")
        page.eval("document.querySelector('.modal-ux input').focus()")
        page.type(KEY)
        page.eval(f"{buttons}.find(b => b.textContent.trim() === 'Authorize').click()")
        page.wait(f"{buttons}.some(b => b.textContent.trim() === 'Logout')")
        page.eval(f"{buttons}.find(b => b.textContent.trim() === 'Close').click()")
        block = ("[...document.querySelectorAll('.opblock')].find(b => b.querySelector("
                 "'.opblock-summary-path')?.textContent.replace(/\\u200b/g, '').trim() === "
                 "'/decide')")  # fmt: skip
        page.eval(f"({block}.querySelector('.opblock-summary-control') || "
                  f"{block}.querySelector('.opblock-summary')).click()")  # fmt: skip
        page.wait(f"{block}.querySelector('.try-out__btn') !== null")
        page.eval(f"{block}.querySelector('.try-out__btn').click()")
        page.wait(f"{block}.querySelector('.execute') !== null")
        page.eval(f"{block}.querySelector('.execute').click()")
        status = page.wait(
            f"{block}.querySelector('.live-responses-table tbody .response-col_status')"
            "?.textContent.trim()"
        )
        body = page.eval(f"{block}.querySelector('.live-responses-table tbody pre')?.textContent")
        page.screenshot(tmp_path / "api-page.png")
    assert status == "200", body
    answer = json.loads(body)
    assert answer["customer_id"] == "C0000001" and answer["action"] in api.Action.__args__  # type: ignore[attr-defined]


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
             "--include-path-regex", "^/(decide|decide_batch|events|healthz|readyz)$",
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
    assert report["operations"]["tested"] == 5, summary
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
