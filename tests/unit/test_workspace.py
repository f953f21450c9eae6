"""Workspaces, their settings file, the trigger file, the re-rooted MLflow store, the lock."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from features.rule_policy import load_rule_policy
from nba import workspace
from nba.cli import app
from nba.settings import load_settings
from serving.triggers import TriggerError, load_triggers, parse_triggers
from tests.conftest import REPO_ROOT
from training import reroot

NBA_VARS = ("NBA_HOME", "NBA_FEATURE_REPO", "NBA_GUARDRAILS", "NBA_PROFILE",
            "NBA_MLFLOW_TRACKING_URI", "NBA_MLFLOW_ARTIFACT_LOCATION", "NBA_DECISION_LOG_DIR",
            "NBA_SETTINGS_FILE", "NBA_TRIGGERS")  # fmt: skip


@pytest.fixture(autouse=True)
def _no_nba_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NBA_VARS:
        monkeypatch.delenv(name, raising=False)


def test_init_creates_the_layout_and_refuses_twice(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    written = workspace.init(root)
    for name in ("nba.yaml", "guardrails.yaml", "triggers.yaml", "rules.yaml",
                 "feature_repo/definitions.py", "feature_repo/feature_store.yaml",
                 "feature_repo/.feastignore"):  # fmt: skip
        assert (root / name).is_file(), name
        assert root / name in written
    for folder in ("data", "models", "logs", "reports", "feature_repo/data"):
        assert (root / folder).is_dir(), folder
    # The rule files are the shipped ones, and they load.
    assert (root / "guardrails.yaml").read_bytes() == (REPO_ROOT / "serving" / "guardrails.yaml"
                                                       ).read_bytes()  # fmt: skip
    assert [t.name for t in load_triggers(root / "triggers.yaml")] == ["milestone", "disruption"]
    rules = load_rule_policy(load_settings(home=root).rule_policy)
    assert [r.name for r in rules.rules] == ["recent_milestone", "uncompensated_severe_disruption"]
    with pytest.raises(workspace.WorkspaceError, match="already an nba workspace"):
        workspace.init(root)
    # --force rewrites the template files but keeps what the workspace made.
    (root / "guardrails.yaml").write_text("edited")
    (root / "logs" / "keep.txt").write_text("x")
    workspace.init(root, force=True)
    assert (root / "guardrails.yaml").read_text() != "edited"
    assert (root / "logs" / "keep.txt").read_text() == "x"


def test_materialize_keeps_edited_files(tmp_path: Path) -> None:
    workspace.init(tmp_path)
    (tmp_path / "guardrails.yaml").write_text("edited")
    assert workspace.materialize(tmp_path) == []
    assert (tmp_path / "guardrails.yaml").read_text() == "edited"


def test_locate_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outer, inner = tmp_path / "outer", tmp_path / "outer" / "a" / "b"
    inner.mkdir(parents=True)
    workspace.init(outer)
    monkeypatch.chdir(inner)
    assert workspace.locate() == outer.resolve()  # found upwards, as git does
    assert workspace.locate(environ={"NBA_HOME": str(tmp_path)}) == tmp_path.resolve()
    assert workspace.locate(inner, environ={"NBA_HOME": str(tmp_path)}) == inner.resolve()
    monkeypatch.chdir(tmp_path)
    assert workspace.locate(environ={}) == tmp_path.resolve()  # no marker: the current folder


def test_settings_live_in_the_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workspace.init(tmp_path)
    monkeypatch.chdir(tmp_path / "logs")
    settings = load_settings()
    assert settings.home == tmp_path.resolve()
    assert settings.feature_repo == tmp_path.resolve() / "feature_repo"
    assert settings.guardrails == tmp_path.resolve() / "guardrails.yaml"
    assert settings.decision_log_dir == tmp_path.resolve() / "logs" / "decisions"
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path.resolve()}/models/mlflow.db"
    assert settings.mlflow_artifact_location == str(tmp_path.resolve() / "models" / "artifacts")
    # Nothing points into the installed package's folder.
    for name in ("feature_repo", "guardrails", "triggers", "decision_log_dir", "events_log_dir",
                 "promo_history_path", "drift_report_dir", "evidently_workspace"):  # fmt: skip
        assert Path(getattr(settings, name)).is_relative_to(tmp_path.resolve()), name


def test_nba_yaml_is_read_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace.init(tmp_path)
    text = (tmp_path / "nba.yaml").read_text()
    (tmp_path / "nba.yaml").write_text(
        text + "explore_epsilon: 0.2\napi_keys: [a, b]\ndecision_log_dir: elsewhere/decisions\n"
    )
    settings = load_settings(home=tmp_path)
    assert settings.explore_epsilon == 0.2 and settings.api_keys == ["a", "b"]
    assert settings.decision_log_dir == tmp_path.resolve() / "elsewhere" / "decisions"
    monkeypatch.setenv("NBA_EXPLORE_EPSILON", "0.3")
    assert load_settings(home=tmp_path).explore_epsilon == 0.3


def test_the_repository_is_a_workspace() -> None:
    settings = load_settings(home=REPO_ROOT)
    assert settings.guardrails == REPO_ROOT / "serving" / "guardrails.yaml"
    assert settings.triggers == REPO_ROOT / "serving" / "triggers.yaml"
    assert settings.rule_policy == REPO_ROOT / "serving" / "rules.yaml"
    assert settings.feature_repo == REPO_ROOT / "feature_repo"


def test_cli_init_and_workspace_option(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["init", str(tmp_path / "w")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "w" / "nba.yaml").is_file()
    missing = runner.invoke(app, ["--workspace", str(tmp_path / "nope"), "models"])
    assert missing.exit_code != 0


# ------------------------------------------------------------------------------- triggers


def _trigger(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {"name": "milestone", "event": "milestone_crossed",
                               "candidates": ["recognition"], "channel": "email"}  # fmt: skip
    return {**base, **changes}


def test_triggers_are_validated() -> None:
    [ok] = parse_triggers({"version": 1, "triggers": [_trigger(delay="15m")]})
    assert ok.candidates == ("recognition", "none") and ok.delay.total_seconds() == 900
    bad = {
        "unknown event": _trigger(event="birthday"),
        "unknown action": _trigger(candidates=["upgrade"]),
        "besides none": _trigger(candidates=["none"]),
        "delay": _trigger(delay="soon"),
        "Extra inputs": _trigger(on="milestone_crossed"),
        "channel": _trigger(channel="sms"),
    }
    for needle, raw in bad.items():
        with pytest.raises(TriggerError, match=needle):
            parse_triggers({"version": 1, "triggers": [raw]}, "t.yaml")
    with pytest.raises(TriggerError, match="duplicate"):
        parse_triggers({"version": 1, "triggers": [_trigger(), _trigger()]})
    with pytest.raises(TriggerError, match="version"):
        parse_triggers({"triggers": []})


def test_the_shipped_triggers_load() -> None:
    raw = yaml.safe_load((REPO_ROOT / "serving" / "triggers.yaml").read_text())
    names = [t.name for t in parse_triggers(raw)]
    assert names == ["milestone", "disruption"]


# ------------------------------------------------------------------------------- re-root


def test_reroot_rewrites_paths_under_the_old_folder_only(tmp_path: Path) -> None:
    old, new = tmp_path / "old" / "models", tmp_path / "new" / "models"
    old.mkdir(parents=True)
    database = old / "mlflow.db"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE runs (run_uuid VARCHAR(32), artifact_uri VARCHAR(200), n INT)")
        conn.executemany(
            "INSERT INTO runs VALUES (?, ?, 1)",
            [("a", f"{old.as_uri()}/artifacts/a"), ("b", f"{old}/artifacts/b"),
             ("c", f"{old}x/artifacts/c"), ("d", "s3://bucket/old")],
        )  # fmt: skip
    assert reroot.reroot(f"sqlite:///{database}") == 0  # first use: the marker is written
    old.parent.rename(tmp_path / "new")
    assert reroot.reroot(f"sqlite:///{new / 'mlflow.db'}") == 2
    with sqlite3.connect(new / "mlflow.db") as conn:
        rows = dict(conn.execute("SELECT run_uuid, artifact_uri FROM runs").fetchall())
    assert rows == {"a": f"{new.as_uri()}/artifacts/a", "b": f"{new}/artifacts/b",
                    "c": f"{old}x/artifacts/c", "d": "s3://bucket/old"}  # fmt: skip
    assert reroot.reroot(f"sqlite:///{new / 'mlflow.db'}") == 0  # once
    assert reroot.reroot("http://127.0.0.1:5000") == 0


# ----------------------------------------------------------------------------------- lock


def test_the_lock_satisfies_pyproject_and_catches_a_bad_pin() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("lock", REPO_ROOT / "tools" / "lock.py")
    assert spec and spec.loader
    lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lock)
    pins = lock.read_lock()
    assert lock.unsatisfied(pins) == []
    assert {"pip", "setuptools", "bentoml", "feast", "pytest"} <= set(pins)
    assert lock.unsatisfied({**pins, "bentoml": "1.3.0"})  # outside >=1.4.39,<1.5
    del pins["lightgbm"]
    assert any("lightgbm" in p for p in lock.unsatisfied(pins))


# --------------------------------------------------------------------------------- quiet


def test_capture_sends_library_output_to_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging
    import warnings

    from nba import output

    log = tmp_path / "logs" / "nba.log"
    restore = output.capture(log)
    try:
        print("\x1b[1mCreated project nba\x1b[0m")  # a library's print, with colour codes
        warnings.warn("noload is deprecated", DeprecationWarning, stacklevel=1)
        logging.getLogger("mlflow.store").info("Creating initial MLflow database tables")
        output.out.print("our summary")
        output.err.print("✓ our stage")
    finally:
        restore()
    text = log.read_text()
    assert "Created project nba" in text and "\x1b[" not in text
    assert "noload is deprecated" in text and "Creating initial MLflow" in text
    assert "our summary" not in text and "our stage" not in text
    shown = capsys.readouterr()
    assert "our summary" in shown.out and "our stage" in shown.err
    assert "Created project" not in shown.out + shown.err
    print("after")  # restored
    assert capsys.readouterr().out == "after\n"


def test_verbose_leaves_the_libraries_on_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from nba import output

    restore = output.capture(tmp_path / "nba.log", verbose=True)
    print("library line")
    restore()
    assert "library line" in capsys.readouterr().out
    assert not (tmp_path / "nba.log").exists()


# ------------------------------------------------------------------- the service's settings


def test_the_service_settings_carry_every_setting_the_service_reads() -> None:
    import re

    from serving.config import ServiceSettings, from_environment

    settings = load_settings(home=REPO_ROOT)
    service = ServiceSettings.of(settings)
    read = set()
    for path in (REPO_ROOT / "serving").glob("*.py"):
        read |= set(re.findall(r"settings\.([a-z_]+)", path.read_text()))
        read |= set(re.findall(r"getattr\(settings, \"([a-z_]+)\"", path.read_text()))
    read -= {"model_dump"}
    missing = sorted(name for name in read if not hasattr(service, name))
    assert not missing, f"serving reads settings that ServiceSettings lacks: {missing}"
    # The round trip nba serve makes through the environment.
    again = from_environment({"NBA_SERVICE_SETTINGS": service.model_dump_json()})
    assert again == service and again.feature_store_yaml == settings.feature_store_yaml
    with pytest.raises(RuntimeError, match="nba serve"):
        from_environment({})
