"""The service entry of a bento (``bentofile.yaml``): resolve the settings, then the service.

The decision service (``serving.service.NBA``) reads its settings from ``NBA_SERVICE_SETTINGS``,
which ``nba serve`` sets (``serving.config``). A bento is started by ``bentoml serve`` (or the
container BentoML builds from it) without ``nba serve``, so its service entry is this module,
``nba.bento:NBA``: on import it does what ``nba serve`` does before starting BentoML, then
re-exports the service.

* The workspace is ``NBA_HOME`` when set, else the nearest folder holding ``nba.yaml`` from the
  working directory up (``nba.workspace.locate``). ``bentoml serve`` runs a built bento in the
  bento's source folder, whose ``nba.yaml`` (the repository's) makes that folder the workspace:
  enough to start, but its logs would be written into the bento. Set ``NBA_HOME`` to a real
  workspace (``nba init``), and ``NBA_*`` variables as for ``nba serve``.
* The model: ``NBA_MODEL_PATH`` (a folder exported by ``nba serve``) when set; else the
  registry's champion is exported once into the workspace's ``models/serving/`` (and its trees
  compiled for batches), exactly as ``nba serve`` does.
* When: in BentoML's deployment hook (``bentoml.on_deployment``), which ``bentoml serve`` runs
  once in its main process before it starts the workers, and never at ``bentoml build`` (which
  imports this module too, with no model to serve). The hook puts the resolved settings in
  ``NBA_SERVICE_SETTINGS`` of that process; the workers inherit its environment, so the export
  and MLflow's import happen once and every worker serves the same model. When
  ``NBA_SERVICE_SETTINGS`` is already set (``nba serve``, or by hand), nothing is resolved.
"""

from __future__ import annotations

import os

import bentoml

from nba.champion import export_champion
from serving.config import ENV_VAR, ServiceSettings
from serving.service import NBA


def service_settings() -> ServiceSettings:
    """The service's settings of the workspace (``nba.settings.load_settings``), with the
    champion exported when ``NBA_MODEL_PATH`` is unset."""
    from nba.settings import load_settings

    settings = load_settings()
    if settings.model_path is None:
        exported = export_champion(settings)  # NoChampionError stops the start-up, saying why
        settings = settings.model_copy(update={"model_path": exported.folder})
    return ServiceSettings.of(settings)


def resolve() -> None:
    """Put the service's settings in ``NBA_SERVICE_SETTINGS`` unless they are there already."""
    if not os.environ.get(ENV_VAR):
        os.environ[ENV_VAR] = service_settings().model_dump_json()


# The hook is attached here, not in serving.service: the service does not import nba (its
# settings come from whoever starts it); this entry is that starter for a bento.
NBA.inner.nba_resolve_settings = bentoml.on_deployment(resolve)  # type: ignore[attr-defined]

__all__ = ["NBA", "resolve", "service_settings"]
