"""Shared fixtures: external services (skip or fail when absent) and Feast test repos."""

from __future__ import annotations

import contextlib
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from features import schema
from nba.settings import load_settings

#: The repository checkout (its files: Dockerfile, feature_repo/, serving/*.yaml, ...).
REPO_ROOT = Path(__file__).resolve().parents[1]

REDIS_ADDRESS = ("127.0.0.1", 6379)
POSTGRES_ADDRESS = ("127.0.0.1", 5432)


def service_reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a TCP connection to ``host:port`` succeeds within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip the calling test when the service is down; fail instead if services are required.

    ``NBA_REQUIRE_SERVICES=1`` (CI with services) turns a silent skip into a failure.
    """
    if service_reachable(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}"
    if load_settings().require_services:
        pytest.fail(f"{message} and NBA_REQUIRE_SERVICES=1: start it or unset the variable")
    pytest.skip(f"{message} (set NBA_REQUIRE_SERVICES=1 to fail instead)")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """Connection string of the local Redis (skips or fails when it is down)."""
    require_service("Redis", *REDIS_ADDRESS)
    return "{}:{}".format(*REDIS_ADDRESS)


@pytest.fixture(scope="session")
def postgres_address() -> tuple[str, int]:
    """(host, port) of the local PostgreSQL (skips or fails when it is down)."""
    require_service("PostgreSQL", *POSTGRES_ADDRESS)
    return POSTGRES_ADDRESS


def copy_feature_repo(dest: Path, project: str = "nba") -> Path:
    """Copy ``feature_repo/`` (declarations and yaml, no data) to ``dest`` under ``project``."""
    shutil.copytree(
        REPO_ROOT / "feature_repo",
        dest,
        ignore=shutil.ignore_patterns("__pycache__", "*.db", "*.parquet"),
    )
    for yaml_file in dest.glob("feature_store*.yaml"):
        text = yaml_file.read_text()
        yaml_file.write_text(text.replace("project: nba\n", f"project: {project}\n"))
    return dest


def synthetic_feature_table(
    customers: list[str],
    times: list[pd.Timestamp],
    nulls: Callable[[str, int], bool] = lambda customer, k: False,
) -> pd.DataFrame:
    """One row per customer and time, every ``schema.STORED`` column, values unique per row.

    Row ``k`` of customer number ``i`` has ints ``100 * i + k``, floats ``i + k / 10``, bools
    ``k % 2 == 1``, strings ``"<customer>-<k>"`` and timestamps ``i + 1`` hours before the row;
    ``open_case_count`` is 0. Where ``nulls(customer, k)``, strings and timestamps are missing.
    """
    rows = []
    for i, customer in enumerate(customers):
        for k, when in enumerate(times):
            blank = nulls(customer, k)
            values = {
                "int": 100 * i + k,
                "float": i + k / 10,
                "bool": k % 2 == 1,
                "string": None if blank else f"{customer}-{k}",
                "timestamp": pd.NaT if blank else when - pd.Timedelta(hours=i + 1),
            }
            row = {schema.ENTITY: customer, schema.EVENT_TIMESTAMP: when}
            row.update({name: values[kind] for name, kind in schema.STORED.items()})
            row["open_case_count"] = 0
            rows.append(row)
    table = pd.DataFrame(rows)
    for name, kind in {schema.EVENT_TIMESTAMP: "timestamp", **schema.STORED}.items():
        if kind == "timestamp":
            table[name] = pd.to_datetime(table[name], utc=True)
    return table


@pytest.fixture(scope="session")
def feature_repo_copier() -> Callable[[Path, str], Path]:
    """``copy_feature_repo``: a throwaway copy of ``feature_repo/`` (keeps the real data/ clean)."""
    return copy_feature_repo


@pytest.fixture(scope="session")
def feature_table_builder() -> Callable[..., pd.DataFrame]:
    """``synthetic_feature_table``: a small feature table that follows ``features.schema``."""
    return synthetic_feature_table


@contextlib.contextmanager
def redis_feature_store(
    redis_url: str, folder: Path, table: pd.DataFrame, end: pd.Timestamp
) -> Iterator[Any]:
    """A throwaway Feast project in Redis holding ``table`` (materialized up to ``end``).

    The project name is unique, and its Redis keys are deleted on exit.
    """
    from features.store import FeastAdapter

    project = f"nba_test_{uuid.uuid4().hex[:10]}"
    repo = copy_feature_repo(folder / "repo", project)
    adapter = FeastAdapter(repo, Path("feature_store.redis.yaml"), redis_url=redis_url)
    adapter.write_offline(table)
    adapter.apply()
    try:
        adapter.materialize(end=end.to_pydatetime())
        yield adapter
    finally:
        adapter.store.teardown()  # this project's Redis keys (and its registry in tmp)


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A Redis key prefix of this test's own (``nba:test-<random>:``); its keys are deleted."""
    from serving.history import redis_client

    prefix = f"nba:test-{uuid.uuid4().hex[:10]}:"
    yield prefix
    client = redis_client(redis_url)
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="module", autouse=True)
def own_memory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Each test module's own customer memory (``NBA_MEMORY_URL``), for the commands and
    services it starts: the default is the workspace's ``data/memory.db``, which the repository
    (a workspace itself) would share between modules and between runs. A test that sets the
    variable itself (a PostgreSQL memory) still wins."""
    import os

    folder = tmp_path_factory.mktemp("memory")
    previous = os.environ.get("NBA_MEMORY_URL")
    os.environ["NBA_MEMORY_URL"] = f"sqlite:///{folder / 'memory.db'}"
    yield
    if previous is None:
        os.environ.pop("NBA_MEMORY_URL", None)
    else:
        os.environ["NBA_MEMORY_URL"] = previous


class FakeClock:
    """A clock for injected ``clock=`` arguments: returns ``now``, which a test moves."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def pytest_configure(config: pytest.Config) -> None:
    """No usage telemetry from MLflow, Feast, BentoML or Evidently during tests."""
    import os

    from nba.cli import TELEMETRY_OFF

    for name, value in TELEMETRY_OFF.items():
        os.environ.setdefault(name, value)
