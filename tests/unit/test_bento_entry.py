"""nba.bento, the bento's service entry: the settings it resolves before BentoML starts the
workers, and the deployment hook it attaches (never run at import, so `bentoml build` works)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nba import workspace
from serving.config import ENV_VAR, ServiceSettings


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "ws"
    workspace.init(root)
    for name in list(os.environ):
        if name.startswith("NBA_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NBA_HOME", str(root))
    return root


def test_import_resolves_nothing_and_attaches_the_deployment_hook(home: Path) -> None:
    import nba.bento

    assert ENV_VAR not in os.environ  # importing (as bentoml build does) resolved nothing
    hook = nba.bento.NBA.inner.nba_resolve_settings
    assert getattr(hook, "__bentoml_deployment_hook__", False)


def test_a_model_path_is_served_as_is(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nba.bento import resolve

    monkeypatch.setenv("NBA_MODEL_PATH", str(tmp_path / "exported"))
    monkeypatch.setenv("NBA_API_KEYS", "a,b")
    resolve()
    settings = ServiceSettings.model_validate_json(os.environ.pop(ENV_VAR))
    assert settings.model_path == tmp_path / "exported"
    assert settings.guardrails == home / "guardrails.yaml"  # the workspace's, from NBA_HOME
    assert settings.api_keys == ["a", "b"]


def test_settings_already_given_are_kept(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nba.bento import resolve

    monkeypatch.setenv(ENV_VAR, '{"given": true}')
    resolve()  # nba serve (or a worker) already has them: no registry is read
    assert os.environ[ENV_VAR] == '{"given": true}'


def test_no_champion_is_a_clear_start_up_error(home: Path) -> None:
    from nba.bento import resolve

    with pytest.raises(LookupError, match="no champion model in the registry of the workspace"):
        resolve()
    assert ENV_VAR not in os.environ
