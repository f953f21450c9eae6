"""The MLflow adapter against a real MLflow 3.17 on a SQLite store in a temporary folder.

One store per module (creating the MLflow schema costs seconds); each test gets its own
experiment, artifact folder and registered model name, so registry state does not leak between
tests. One tiny uplift model is fitted per module and logged by every test that needs a version.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from tests.conftest import REPO_ROOT as PROJECT_ROOT
from training.tracking import (
    CHAMPION,
    STATUS_FAILED,
    STATUS_GATED,
    STATUS_PENDING,
    STATUS_TAG,
    ModelNotAvailableError,
    Tracker,
)
from training.uplift import MultiActionUplift

pytestmark = pytest.mark.integration

ARMS = np.array(["promo", "apology_credit", "recognition", "none"])
GATE_KEYS = {
    "gate.promoted",
    "gate.candidate_dr_value",
    "gate.champion_dr_value",
    "gate.champion_version",
    "gate.reason",
    "gate.forced",
}


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    return pd.DataFrame({f"x{i}": rng.normal(size=400) for i in range(4)})


@pytest.fixture(scope="module")
def model(data: pd.DataFrame) -> MultiActionUplift:
    """A tiny fitted uplift model (uniform random actions, noise outcomes): fast, not useful."""
    rng = np.random.default_rng(8)
    n = len(data)
    action = ARMS[rng.integers(0, len(ARMS), n)]
    outcomes = pd.DataFrame(
        {
            "converted": rng.random(n) < 0.3,
            "revenue": rng.random(n) * 100,
            "unsubscribed": rng.random(n) < 0.05,
        }
    )
    estimator = MultiActionUplift(n_estimators=10, num_leaves=4, min_child_samples=10)
    return estimator.fit(data, action, np.full(n, 0.25), outcomes)


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def tracker(store_uri: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Tracker]:
    name = re.sub(r"\W", "-", request.node.name)
    yield Tracker(
        store_uri,
        artifact_location=str(tmp_path / "artifacts"),
        experiment=f"exp-{name}",
        model_name=f"model-{name}",
    )


def train(tracker: Tracker, model: MultiActionUplift, data: pd.DataFrame, value: float) -> int:
    """One training run logging ``dr_value`` and the model; returns the registered version."""
    with tracker.start_run():
        tracker.log_metrics({"dr_value": value})
        uri = tracker.log_model(model, data.head(5))
        return tracker.register(uri, {"git_sha": "abc123"})


def version_tags(tracker: Tracker, version: int) -> dict[str, str]:
    return tracker._client().get_model_version(tracker.model_name, str(version)).tags


def run_of(tracker: Tracker, version: int) -> object:
    client = tracker._client()
    return client.get_run(client.get_model_version(tracker.model_name, str(version)).run_id)


def test_import_does_not_import_mlflow() -> None:
    code = "import sys, training.tracking; print('mlflow' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT, check=True
    )
    assert out.stdout.strip() == "False"


def test_log_register_load_round_trip(
    tracker: Tracker, model: MultiActionUplift, data: pd.DataFrame, tmp_path: Path
) -> None:
    report = tmp_path / "report.txt"
    report.write_text("hello")
    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    table = pd.DataFrame({"uplift": [0.1, 0.0, -0.05]}, index=pd.Index(model.actions_, name="a"))

    with tracker.start_run(run_name="round-trip") as run_id:
        tracker.log_params({"n_estimators": 10, "model": {"method": "dr", "n_folds": 2}})
        tracker.log_metrics({"dr_value": 1.5, "qini": 0.02})
        tracker.set_tags({"git_sha": "abc123"})
        tracker.log_figure(fig, "qini")
        tracker.log_table(table, "uplift_by_action")
        with pytest.raises(ValueError, match="already logged"):
            tracker.log_table(table, "uplift_by_action")  # MLflow would append the rows
        tracker.log_artifact(report, subdir="reports")
        started = time.perf_counter()
        uri = tracker.log_model(model, data.head(5))
        logged = time.perf_counter() - started
        started = time.perf_counter()
        version = tracker.register(uri, {"git_sha": "abc123"})
        registered = time.perf_counter() - started

    started = time.perf_counter()
    loaded = tracker.load(version)
    loading = time.perf_counter() - started
    print(f"log_model {logged:.2f} s, register {registered:.2f} s, load {loading:.3f} s")

    assert type(loaded) is MultiActionUplift
    assert loaded.get_params() == model.get_params()
    np.testing.assert_array_equal(loaded.predict(data), model.predict(data))
    assert loaded.predict(data).shape == (len(data), 3)

    client = tracker._client()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.n_folds"] == "2"
    assert run.data.metrics == {"dr_value": 1.5, "qini": 0.02}
    assert run.data.tags["git_sha"] == "abc123"
    folders = ("figures", "tables", "reports")
    paths = {a.path for folder in folders for a in client.list_artifacts(run_id, folder)}
    assert paths == {"figures/qini.png", "tables/uplift_by_action.json", "reports/report.txt"}
    local = client.download_artifacts(run_id, "tables/uplift_by_action.json", str(tmp_path))
    logged_table = pd.read_json(local, orient="split")
    assert list(logged_table["a"]) == list(model.actions_)  # the index survived as a column

    import mlflow.models

    info = mlflow.models.get_model_info(uri)
    assert info.signature.inputs.input_names() == model.feature_names_
    assert version_tags(tracker, version) == {"git_sha": "abc123", STATUS_TAG: STATUS_PENDING}


def test_logging_needs_the_tracker_run(tracker: Tracker) -> None:
    # MLflow's fluent API would silently start a stray run instead.
    with pytest.raises(RuntimeError, match="start_run"):
        tracker.log_metrics({"x": 1.0})


def test_first_model_needs_force(
    tracker: Tracker, model: MultiActionUplift, data: pd.DataFrame
) -> None:
    version = train(tracker, model, data, 1.0)

    decision = tracker.gate(version, 1.0, None)
    assert not decision.promoted
    assert "--force" in decision.reason and "no champion" in decision.reason
    assert decision.champion_version is None
    assert tracker.champion() is None
    tags = version_tags(tracker, version)
    assert tags["gate.promoted"] == "false" and tags["gate.forced"] == "false"
    assert tags[STATUS_TAG] == STATUS_GATED

    decision = tracker.gate(version, 1.0, None, force=True)
    assert decision.promoted and decision.forced
    champion = tracker.champion()
    assert champion is not None and champion.version == version
    assert champion.aliases == [CHAMPION] and champion.metrics == {"dr_value": 1.0}
    for tags in (version_tags(tracker, version), run_of(tracker, version).data.tags):
        assert tags.keys() >= GATE_KEYS
        assert tags["gate.promoted"] == "true" and tags["gate.forced"] == "true"
        assert tags["gate.champion_version"] == "none"
    np.testing.assert_array_equal(tracker.load().predict(data), model.predict(data))


def test_better_candidate_takes_champion_worse_does_not(
    tracker: Tracker, model: MultiActionUplift, data: pd.DataFrame
) -> None:
    first = train(tracker, model, data, 1.0)
    tracker.gate(first, 1.0, None, force=True)

    better = train(tracker, model, data, 1.2)
    decision = tracker.gate(better, 1.2, 1.0)
    assert decision.promoted and not decision.forced
    assert decision.champion_version == first
    assert tracker.champion().version == better

    worse = train(tracker, model, data, 0.9)
    decision = tracker.gate(worse, 0.9, 1.2)
    assert not decision.promoted
    assert "champion kept" in decision.reason
    assert tracker.champion().version == better
    for tags in (version_tags(tracker, worse), run_of(tracker, worse).data.tags):
        assert tags["gate.promoted"] == "false"
        assert float(tags["gate.candidate_dr_value"]) == 0.9
        assert float(tags["gate.champion_dr_value"]) == 1.2
        assert tags["gate.champion_version"] == str(better)
        assert tags["gate.reason"] == decision.reason

    # Better, but not by the required margin.
    decision = tracker.gate(worse, 1.25, 1.2, min_improvement=0.1)
    assert not decision.promoted and tracker.champion().version == better
    with pytest.raises(ValueError, match="champion_value"):
        tracker.gate(worse, 1.25, None)

    versions = tracker.versions()
    assert [v.version for v in versions] == [worse, better, first]
    assert [v.aliases for v in versions] == [[], [CHAMPION], []]
    assert [v.metrics["dr_value"] for v in versions] == [0.9, 1.2, 1.0]
    assert all(v.tags[STATUS_TAG] == STATUS_GATED for v in versions)
    assert versions[0].created >= versions[-1].created and versions[0].created.tzinfo


def test_load_without_champion_says_what_to_do(
    tracker: Tracker, model: MultiActionUplift, data: pd.DataFrame
) -> None:
    assert tracker.versions() == [] and tracker.champion() is None
    with pytest.raises(ModelNotAvailableError, match=r"nba train --force"):
        tracker.load()
    version = train(tracker, model, data, 1.0)  # registered, but never promoted
    with pytest.raises(ModelNotAvailableError, match=r"no 'champion' alias.*nba train --force"):
        tracker.load()
    with pytest.raises(ModelNotAvailableError, match=r"version 99 .*does not exist"):
        tracker.load(99)
    assert tracker.load(version).predict(data.head(2)).shape == (2, 3)


def test_unloadable_champion_says_what_to_do(
    tracker: Tracker, model: MultiActionUplift, data: pd.DataFrame
) -> None:
    version = train(tracker, model, data, 1.0)
    tracker.gate(version, 1.0, None, force=True)

    shutil.rmtree(tracker.artifact_location)  # the artifact store lost the files
    with pytest.raises(ModelNotAvailableError, match=r"could not be loaded.*nba train --force"):
        tracker.load()


def test_failure_after_log_model_leaves_no_usable_version(
    tracker: Tracker, model: MultiActionUplift, data: pd.DataFrame
) -> None:
    champion = train(tracker, model, data, 1.0)
    tracker.gate(champion, 1.0, None, force=True)

    with pytest.raises(RuntimeError, match="evaluation crashed"), tracker.start_run() as run_id:
        uri = tracker.log_model(model, data.head(5))
        failed = tracker.register(uri, {})
        raise RuntimeError("evaluation crashed")

    client = tracker._client()
    assert client.get_run(run_id).info.status == "FAILED"
    tags = version_tags(tracker, failed)
    assert tags[STATUS_TAG] == STATUS_FAILED
    assert "evaluation crashed" in tags["nba.failure"]
    assert tracker.champion().version == champion
    with pytest.raises(ModelNotAvailableError, match="marked failed"):
        tracker.load(failed)
    with pytest.raises(ValueError, match="marked failed"):
        tracker.gate(failed, 9.9, 1.0, force=True)
    assert tracker.champion().version == champion

    # A failure between log_model and register leaves a failed run and no new version.
    with pytest.raises(RuntimeError, match="disk full"), tracker.start_run() as run_id:
        tracker.log_model(model, data.head(5))
        raise RuntimeError("disk full")
    assert client.get_run(run_id).info.status == "FAILED"
    assert [v.version for v in tracker.versions()] == [failed, champion]


#: One gate in its own process: ``tracker.gate`` of a registered version, its value measured
#: against ``compared_with``; ``value_of`` stands in for evaluating a champion on the
#: candidate's data (here: that version's logged ``dr_value``). ``hold`` makes it wait, with
#: the champion read, until the other gate has started (``go`` exists), then 1.5 s more.
GATE_SCRIPT = """
import json, sys, time
from pathlib import Path
from training.tracking import Tracker

uri, artifacts, experiment, name, version, value, compared, sync, role = sys.argv[1:]
tracker = Tracker(uri, artifact_location=artifacts, experiment=experiment, model_name=name)
client = tracker._client()
sync = Path(sync)

def value_of(v):
    run_id = client.get_model_version(name, str(v)).run_id
    return client.get_run(run_id).data.metrics["dr_value"]

def hold(champion):
    (sync / "held").write_text(str(champion))
    deadline = time.monotonic() + 60
    while not (sync / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.5)  # the other gate reads (no lock) or waits for the lock (lock) meanwhile

if role == "fast":
    (sync / "go").write_text("")
decision = tracker.gate(int(version), float(value), 1.0, compared_with=int(compared),
                       value_of=value_of, on_read=hold if role == "slow" else None)
print(json.dumps({"promoted": decision.promoted, "champion": decision.champion_version,
                  "value": decision.champion_value}))
"""


@pytest.mark.parametrize(("slow_value", "fast_value"), [(1.2, 1.5), (1.5, 1.2)])
def test_concurrent_gates_compare_with_the_champion_they_replace(
    tracker: Tracker,
    model: MultiActionUplift,
    data: pd.DataFrame,
    tmp_path: Path,
    slow_value: float,
    fast_value: float,
) -> None:
    # Both trainings measured themselves against champion v1 (1.0); the slow one reads the
    # champion, then pauses until the fast one is gating: without a compare-and-set both would
    # promote over v1 and the last one would win, whatever its value.
    first = train(tracker, model, data, 1.0)
    tracker.gate(first, 1.0, None, force=True)
    slow, fast = train(tracker, model, data, slow_value), train(tracker, model, data, fast_value)
    sync = tmp_path / "sync"
    sync.mkdir()

    def start(version: int, value: float, role: str) -> subprocess.Popen[str]:
        where = [tracker.tracking_uri, str(tracker.artifact_location), tracker.experiment]
        args = [*where, tracker.model_name, str(version), str(value), str(first), str(sync), role]
        return subprocess.Popen(
            [sys.executable, "-c", GATE_SCRIPT, *args],
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    started = time.perf_counter()
    slow_process = start(slow, slow_value, "slow")
    deadline = time.monotonic() + 120
    while not (sync / "held").exists() and slow_process.poll() is None:
        assert time.monotonic() < deadline, "the slow gate never read the champion"
        time.sleep(0.05)
    fast_process = start(fast, fast_value, "fast")
    outputs = {}
    for role, process in (("slow", slow_process), ("fast", fast_process)):
        out, err = process.communicate(timeout=180)
        assert process.returncode == 0, err[-2000:]
        outputs[role] = json.loads(out.strip().splitlines()[-1])
    print(f"two gating processes: {time.perf_counter() - started:.1f} s")

    best = fast if fast_value > slow_value else slow
    assert tracker.champion().version == best
    # The slow gate held the lock first: it was compared with v1; the fast one with whatever
    # the slow one left as champion, at its value on the candidate's data.
    assert outputs["slow"] == {"promoted": True, "champion": first, "value": 1.0}
    assert outputs["fast"] == {
        "promoted": fast_value > slow_value,
        "champion": slow,
        "value": slow_value,
    }
    for version, champion, value in ((slow, first, 1.0), (fast, slow, slow_value)):
        for tags in (version_tags(tracker, version), run_of(tracker, version).data.tags):
            assert tags["gate.champion_version"] == str(champion)
            assert float(tags["gate.champion_dr_value"]) == value
            assert f"champion v{champion} {value:.6g}" in tags["gate.reason"]
