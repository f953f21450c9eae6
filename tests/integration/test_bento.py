"""``bentoml build`` of the repository's bentofile.yaml into a temporary BentoML home, the bento's
contents, and the built bento served by ``bentoml serve`` against a tiny trained workspace.

BentoML's build pip-installs ``uv`` into the running environment when no ``uv`` is on the PATH
(``bentoml._internal.configuration.get_uv_command``), even though it runs uv only to lock or to
export a uv.lock, neither of which this bentofile does. The test puts a stub ``uv`` that fails
on the PATH, so the build never changes the environment it runs in, and would fail if BentoML
started to need uv here.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

PACKAGES = ("nba", "serving", "features", "training")


def environment(tmp: Path) -> dict[str, str]:
    """The build's and server's environment: a temporary BentoML home, a stub ``uv`` first on
    the PATH, no NBA_* settings of the caller."""
    stub = tmp / "stub-bin"
    stub.mkdir(exist_ok=True)
    uv = stub / "uv"
    uv.write_text("#!/bin/sh\necho 'uv was not expected to run' >&2\nexit 97\n")
    uv.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NBA_", "BENTOML_"))}
    return env | {
        "BENTOML_HOME": str(tmp / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "True",
        "PATH": f"{stub}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONPATH": str(REPO_ROOT),
        "OMP_WAIT_POLICY": "PASSIVE",
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, dict[str, str]]]:
    """The built bento's folder, its tag and the environment that built it."""
    tmp = tmp_path_factory.mktemp("bento")
    env = environment(tmp)
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "--output", "tag", str(REPO_ROOT)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    print(f"bentoml build: {time.perf_counter() - started:.1f} s")
    assert out.returncode == 0, out.stderr[-3000:]
    tag = out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = tag.split(":")
    yield tmp / "bentoml" / "bentos" / name / version, tag, env


def test_bento_holds_the_service_entry_packages_and_lock(
    built: tuple[Path, str, dict[str, str]],
) -> None:
    folder, tag, _ = built
    assert tag.startswith("nba-service:")
    info = yaml.safe_load((folder / "bento.yaml").read_text())
    assert info["service"] == "nba.bento:NBA"
    assert [s["name"] for s in info["services"]] == ["nba"]
    assert {e["name"]: e["value"] for e in info["envs"]}["OMP_WAIT_POLICY"] == "PASSIVE"
    src = folder / "src"
    for package in PACKAGES:
        shipped = {p.name for p in (src / package).glob("*.py")}
        assert shipped == {p.name for p in (REPO_ROOT / package).glob("*.py")}, package
    for name in ("serving/guardrails.yaml", "serving/triggers.yaml", "nba.yaml",
                 "feature_repo/definitions.py", "feature_repo/feature_store.yaml"):  # fmt: skip
        assert (src / name).is_file(), name
    # Nothing of the repository's own workspace: no data, models, logs, caches.
    files = [p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()]
    assert not [f for f in files if f.split("/")[0] in ("models", "logs", "reports", "data")]
    assert not [f for f in files if "__pycache__" in f or f.endswith((".db", ".parquet"))]
    assert not [f for f in files if f.startswith(("tests/", "monitoring/", "benchmarks/"))]
    # The Python packages are the lock's exact pins, not a fresh resolution.
    lock = {
        line.strip()
        for line in (REPO_ROOT / "requirements.lock").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    requirements = (folder / "env" / "python" / "requirements.txt").read_text().splitlines()
    pins = {line.strip() for line in requirements if line.strip() and not line.startswith("#")}
    assert lock <= pins
    assert pins - lock == set() or pins - lock == {f"bentoml=={info['bentoml_version']}"}
    assert (folder / "env" / "docker" / "Dockerfile").is_file()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def trained_workspace(root: Path) -> Path:
    """A workspace (``nba init``) whose registry has a tiny champion: fast, not useful."""
    from nba import workspace
    from training.tracking import Tracker
    from training.uplift import MultiActionUplift

    workspace.init(root)
    rng = np.random.default_rng(3)
    n = 300
    data = pd.DataFrame({f"x{i}": rng.normal(size=n) for i in range(3)})
    arms = np.array(["promo", "apology_credit", "recognition", "none"])
    outcomes = pd.DataFrame({"converted": rng.random(n) < 0.3, "revenue": rng.random(n) * 100,
                             "unsubscribed": rng.random(n) < 0.05})  # fmt: skip
    model = MultiActionUplift(n_estimators=5, num_leaves=4, min_child_samples=10)
    model.fit(data, arms[rng.integers(0, 4, n)], np.full(n, 0.25), outcomes)
    # The workspace's default stores (nba.settings: models/mlflow.db, models/artifacts).
    tracker = Tracker(f"sqlite:///{root / 'models' / 'mlflow.db'}",
                      artifact_location=str(root / "models" / "artifacts"))  # fmt: skip
    with tracker.start_run():
        version = tracker.register(tracker.log_model(model, data.head(3)), {})
    tracker.gate(version, 1.0, None, force=True)
    return root


def test_built_bento_serves_a_trained_workspace(
    built: tuple[Path, str, dict[str, str]], tmp_path: Path
) -> None:
    _, tag, env = built
    home = trained_workspace(tmp_path / "ws")
    port = free_port()
    env = env | {"NBA_HOME": str(home), "NBA_COMPILED_TREES": "false", "NBA_API_KEYS": "k"}
    env.pop("PYTHONPATH")  # the bento's own copy of the code is served
    started = time.perf_counter()
    log = tmp_path / "serve.log"  # a file, not a pipe nobody reads while the server runs
    process = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", tag, "--port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"),
    )  # fmt: skip
    try:
        status = None
        while time.perf_counter() - started < 120 and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    status = r.status
                    break
            except OSError:
                time.sleep(0.5)
        print(f"bentoml serve: /healthz after {time.perf_counter() - started:.1f} s")
        assert status == 200, log.read_text()[-3000:]
        # The champion was exported once, into the workspace, as nba serve does.
        exported = list((home / "models" / "serving").glob("nba-uplift-1-*/nba_model.json"))
        assert len(exported) == 1
    finally:
        process.terminate()
        process.wait(timeout=60)
