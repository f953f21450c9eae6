"""The project installed like a real package, working in workspaces outside the repository.

The wheel is built from the checkout and installed, not editable, into a fresh virtual
environment whose dependencies are the test environment's own packages (exactly the lock:
``tools/lock.py --check-installed``, checked by test_dockerfile), seen through a ``.pth`` file as
a cached layer would provide them; ``--no-index`` proves nothing else is fetched. Then, as a
user would, in temporary folders outside the repository:

- ``nba init`` a workspace, ``simulate``, ``features``, ``train``, ``score`` in it;
- a second workspace on the same environment sees none of the first's models, features or
  logs, and trains its own;
- the first workspace, trained, is copied elsewhere and deleted: the copy serves ``/decide``,
  and what it trains next is stored in the copy;
- nothing is written into the installed package's folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.conftest import REPO_ROOT
from tests.integration.test_dockerfile import build_context
from tests.integration.test_service_http import free_port

pytestmark = pytest.mark.integration

KEY = "ws-key"
#: A small world that still trains (seconds, not minutes).
SIM = ("--customers", "1500", "--days", "180")
TRAIN = ("--n-estimators", "60", "--force")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A fresh environment with the project's wheel installed (non-editable)."""
    root = tmp_path_factory.mktemp("wheel")
    dist = root / "dist"
    # Built from a copy (the Docker build context): a build writes build/ and *.egg-info.
    context = build_context(root / "context")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--wheel-dir", str(dist), str(context)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    [wheel] = dist.glob("nba-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    (site / "_base_layer.pth").write_text(sysconfig.get_path("purelib") + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "--no-index", "--constraint", str(REPO_ROOT / "requirements.lock"),
         f"{wheel}[production]"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    return {"venv": venv, "site": site, "root": root}


def files_under(folder: Path) -> set[str]:
    """Files below ``folder``, bytecode caches left out (Python writes those on import)."""
    return {
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


#: Lines that are not the command's own: warnings, library logs and diffs, colour codes.
NOISE = re.compile(
    r"(?i:warn)|INFO|DEBUG|Traceback|\x1b\[|^Created |Materializing|[Rr]egistered model|"
    r"site-packages|mlflow\.|feast\.|sqlalchemy",
    re.MULTILINE,
)


def nba(installed: dict[str, Path], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed ``nba`` command, run in ``cwd`` with no NBA_* setting in the environment.

    It must succeed and print only its own lines (quiet by default: the libraries' output goes
    to the workspace's logs/nba.log)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBA_")}
    env.update({"OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": ""})
    result = subprocess.run(
        [str(installed["venv"] / "bin" / "nba"), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, (args, result.stdout[-3000:], result.stderr[-3000:])
    noise = NOISE.findall(result.stdout + result.stderr)
    assert not noise, (args, noise, result.stdout[-3000:], result.stderr[-3000:])
    return result


def artifact_uris(workspace: Path) -> list[str]:
    """Every run's artifact location recorded in a workspace's embedded MLflow store."""
    with sqlite3.connect(workspace / "models" / "mlflow.db") as conn:
        return [row[0] for row in conn.execute("SELECT artifact_uri FROM runs")]


@pytest.fixture(scope="module")
def trained(installed: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Workspace A: made by ``nba init``, then the whole job run in it (as a user would)."""
    before = files_under(installed["site"])
    base = tmp_path_factory.mktemp("users")
    nba(installed, "init", "ws-a", cwd=base)
    ws = base / "ws-a"
    for name in ("nba.yaml", "guardrails.yaml", "triggers.yaml", "feature_repo/definitions.py",
                 "feature_repo/feature_store.yaml"):  # fmt: skip
        assert (ws / name).is_file(), name
    for folder in ("data", "models", "logs", "feature_repo/data"):
        assert (ws / folder).is_dir(), folder
    nba(installed, "simulate", "--out", "data/raw", *SIM, "--seed", "1", cwd=ws)
    nba(installed, "features", "--raw", "data/raw", cwd=ws)
    # From a subfolder: the workspace is found upwards, as git finds its repository.
    nba(installed, "train", "--raw", "../data/raw", *TRAIN, cwd=ws / "logs")
    rows = pd.read_parquet(ws / "data" / "raw" / "customers.parquet").customer_id.head(20)
    pd.DataFrame({"customer_id": rows, "decided_at": "2026-12-01T00:00:00Z"}).to_csv(
        ws / "rows.csv", index=False
    )
    nba(installed, "score", "--actions", "rows.csv", "--out", "scored.csv", cwd=ws)
    assert "Materializing" in (ws / "logs" / "nba.log").read_text()  # Feast's lines: in the log
    scored = pd.read_csv(ws / "scored.csv")
    assert len(scored) == 20 and set(scored.action) <= {"promo", "apology_credit",
                                                         "recognition", "none"}  # fmt: skip
    assert (ws / "feature_repo" / "data" / "customer_features.parquet").is_file()
    assert all(uri.startswith(ws.as_uri()) for uri in artifact_uris(ws))
    assert files_under(installed["site"]) == before, "something was written into site-packages"
    return ws


def test_init_refuses_an_existing_workspace(installed: dict[str, Path], tmp_path: Path) -> None:
    nba(installed, "init", "ws", cwd=tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBA_")}
    again = subprocess.run(
        [str(installed["venv"] / "bin" / "nba"), "init", "ws"],
        cwd=tmp_path, env={**env, "PYTHONPATH": ""}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 2 and "already an nba workspace" in again.stderr
    assert "Traceback" not in again.stderr


def test_two_workspaces_share_nothing(installed: dict[str, Path], trained: Path) -> None:
    other = trained.parent / "ws-b"
    nba(installed, "init", str(other), cwd=trained.parent)
    # Nothing of A is visible from B: no model, no features, no logs.
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBA_")}
    models = subprocess.run(
        [str(installed["venv"] / "bin" / "nba"), "--workspace", str(other), "models"],
        cwd=trained, env={**env, "PYTHONPATH": ""}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert models.returncode == 2 and "no registered model yet" in models.stderr
    assert not list((other / "feature_repo" / "data").glob("*.parquet"))
    # B's own job, then each workspace has exactly its own single version.
    nba(installed, "simulate", "--out", "data/raw", *SIM, "--seed", "2", cwd=other)
    nba(installed, "features", "--raw", "data/raw", cwd=other)
    nba(installed, "train", "--raw", "data/raw", *TRAIN, cwd=other)
    for ws in (trained, other):
        assert "champion" in nba(installed, "models", cwd=ws).stdout
        with sqlite3.connect(ws / "models" / "mlflow.db") as conn:
            assert conn.execute("SELECT count(*) FROM model_versions").fetchone() == (1,)
    assert all(uri.startswith(other.as_uri()) for uri in artifact_uris(other))
    assert not any(uri.startswith(other.as_uri()) for uri in artifact_uris(trained))
    b_features = pd.read_parquet(other / "feature_repo" / "data" / "customer_features.parquet")
    a_features = pd.read_parquet(trained / "feature_repo" / "data" / "customer_features.parquet")
    assert not b_features.equals(a_features)  # seeds 1 and 2: different worlds


def _call(port: int, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                     method="POST" if data else "GET")  # fmt: skip
    request.add_header("Content-Type", "application/json")
    request.add_header("X-API-Key", KEY)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


@pytest.fixture
def served_copy(
    installed: dict[str, Path], trained: Path, tmp_path: Path
) -> Iterator[tuple[Path, int]]:
    """Workspace A copied elsewhere, the original deleted, then ``nba serve`` in the copy."""
    copy = tmp_path / "moved" / "ws-a"
    shutil.copytree(trained, copy)
    shutil.rmtree(trained)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBA_")}
    process = subprocess.Popen(
        [str(installed["venv"] / "bin" / "nba"), "serve", "--port", str(port), "--workers", "1"],
        cwd=copy, env={**env, "PYTHONPATH": "", "OMP_WAIT_POLICY": "PASSIVE", "NBA_API_KEYS": KEY},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(process.stderr.read().decode()[-3000:])  # type: ignore[union-attr]
            try:
                if _call(port, "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError("server not ready within 150 s")
        yield copy, port
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)


def test_a_moved_workspace_serves_and_trains_in_its_new_place(
    installed: dict[str, Path], served_copy: tuple[Path, int]
) -> None:
    copy, port = served_copy
    customer = pd.read_parquet(copy / "data" / "raw" / "customers.parquet").customer_id.iloc[0]
    status, answer = _call(port, "/decide", {"customer_id": customer})
    assert status == 200, answer
    assert answer["degraded"] is False and answer["model_version"].endswith("/1")
    # The store now records the copy's folder: a new training writes its artifacts there.
    assert all(uri.startswith(copy.as_uri()) for uri in artifact_uris(copy))
    nba(installed, "train", "--raw", "data/raw", "--n-estimators", "30", cwd=copy)
    uris = artifact_uris(copy)
    assert len(uris) == 2 and all(uri.startswith(copy.as_uri()) for uri in uris)
    assert list((copy / "models" / "serving").iterdir()), "the served model is in the copy"
