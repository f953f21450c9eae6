"""The production profile: one setting switches the parts, explicit settings still win, and the
embedded defaults (what `make demo` uses) are untouched."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from nba.settings import PRODUCTION_DEFAULTS, Settings, load_settings
from tests.conftest import REPO_ROOT as PROJECT_ROOT


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No NBA_* variable of the calling shell leaks into these tests."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("NBA_"):
            monkeypatch.delenv(name)


def test_embedded_is_the_default() -> None:
    settings = load_settings()
    assert settings.profile == "embedded"
    assert settings.online_store == "sqlite"
    assert settings.feature_store_yaml == PROJECT_ROOT / "feature_repo" / "feature_store.yaml"
    assert settings.mlflow_tracking_uri.startswith("sqlite:///")
    assert settings.mlflow_artifact_location == str(PROJECT_ROOT / "models" / "artifacts")
    assert settings.promo_store == "sqlite"


def test_one_setting_switches_to_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBA_PROFILE", "production")
    settings = load_settings()
    assert settings.online_store == "redis"
    assert settings.feature_store_yaml.name == "feature_store.production.yaml"
    assert settings.mlflow_tracking_uri == PRODUCTION_DEFAULTS["mlflow_tracking_uri"]
    assert settings.mlflow_artifact_location is None  # the tracking server's own artifact root
    assert settings.promo_store == "redis"
    assert settings.serve_workers >= 2


def test_explicit_settings_win_over_the_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBA_PROFILE", "production")
    monkeypatch.setenv("NBA_MLFLOW_TRACKING_URI", "http://tracking.internal:8080")
    monkeypatch.setenv("NBA_SERVE_WORKERS", "7")
    monkeypatch.setenv("NBA_PROMO_STORE", "sqlite")
    settings = load_settings()
    assert settings.mlflow_tracking_uri == "http://tracking.internal:8080"
    assert settings.serve_workers == 7
    assert settings.promo_store == "sqlite"


def test_settings_file_selects_the_profile(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env_file = tmp_path / "production.env"
    env_file.write_text("NBA_PROFILE=production\nNBA_REDIS_URL=10.0.0.9:6379\n")
    monkeypatch.setenv("NBA_SETTINGS_FILE", str(env_file))
    settings = load_settings()
    assert settings.profile == "production" and settings.online_store == "redis"
    assert settings.redis_url == "10.0.0.9:6379"


def test_production_refuses_the_sqlite_online_store() -> None:
    with pytest.raises(ValidationError, match="Redis online store"):
        Settings(profile="production", online_store="sqlite")


def test_blank_artifact_location_means_the_server_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBA_MLFLOW_ARTIFACT_LOCATION", "")
    assert load_settings().mlflow_artifact_location is None


def test_production_yaml_is_redis_and_a_sql_registry() -> None:
    # Read as Feast reads it (after ${VAR} expansion), without importing Feast (≈ 7 s).
    config = yaml.safe_load((PROJECT_ROOT / "feature_repo" / "feature_store.production.yaml")
                            .read_text())  # fmt: skip
    assert config["project"] == "nba"
    assert config["registry"]["registry_type"] == "sql"
    assert config["registry"]["path"] == "${NBA_REGISTRY_URL}"
    assert config["online_store"] == {"type": "redis", "connection_string": "${NBA_REDIS_URL}"}
    # Feast rewrites a bare postgresql:// to psycopg 3; the default URL names psycopg2.
    assert Settings().registry_url.startswith("postgresql+psycopg2://")
