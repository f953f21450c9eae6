"""The command line: bad input gives one clear message and a non-zero exit, never a traceback,
and nothing is written downstream of a folder that failed validation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from features.contract import write_raw
from tests.factories import tiny_raw


def nba(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nba.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def assert_clean_failure(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_help_lists_the_commands() -> None:
    result = nba("--help")
    assert result.returncode == 0
    assert "simulate" in result.stdout and "features" in result.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["simulate", "--out", "x", "--days", "10"], "--days"),
        (["simulate", "--out", "x", "--end", "2026-01-01T00:00:00"], "UTC offset"),
        (["simulate", "--out", "x", "--end", "yesterday-ish"], "ISO 8601"),
        (["simulate", "--out", "x", "--format", "xlsx"], "--format"),
        (["features", "--raw", "/no/such/folder"], "is not a folder"),
        (["simulate"], "--out"),
    ],
)
def test_bad_options(args: list[str], needle: str) -> None:
    assert_clean_failure(nba(*args), needle)


def test_invalid_folder_writes_nothing(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_raw(tiny_raw(), raw, fmt="csv")
    (raw / "service_cases.csv").unlink()
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    result = nba("features", "--raw", str(raw), env={"NBA_FEATURE_REPO": str(repo)})
    assert_clean_failure(result, "service_cases", "table present")
    assert list((repo / "data").iterdir()) == []


def test_simulate_writes_a_valid_folder(tmp_path: Path) -> None:
    out = tmp_path / "world"
    result = nba("simulate", "--out", str(out), "--customers", "50", "--days", "60",
                 "--end", "2026-11-01T00:00:00Z")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(p.stem for p in out.iterdir()) == sorted(
        ["customers", "bookings", "flights", "service_cases", "web_events", "email_events",
         "actions", "outcomes", "truth"]
    )  # fmt: skip
    from features.contract import load_raw

    assert load_raw(out).truth is not None


def test_future_records_are_refused_and_nothing_written(tmp_path: Path) -> None:
    import pandas as pd

    world = tiny_raw()
    world.actions.loc[0, "decided_at"] = pd.Timestamp("2031-06-01T12:00:00Z")
    raw = tmp_path / "raw"
    write_raw(world, raw, fmt="csv")
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    result = nba("features", "--raw", str(raw), env={"NBA_FEATURE_REPO": str(repo)})
    assert_clean_failure(
        result, "actions.decided_at", "not in the future", "row 1 2031-06-01T12:00:00+00:00"
    )
    assert list((repo / "data").iterdir()) == []


def test_simulate_ending_now_writes_a_valid_folder(tmp_path: Path) -> None:
    out = tmp_path / "world"
    result = nba("simulate", "--out", str(out), "--customers", "50", "--days", "60")
    assert result.returncode == 0, result.stderr
    from features.contract import load_raw

    load_raw(out)  # against the wall clock: nothing after now (+ the tolerance)
