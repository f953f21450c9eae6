"""The model a service serves: the registry's champion, exported once for every worker.

``nba serve`` and a bento's entry (``nba.bento``) both start the service the same way: the
champion is loaded from MLflow here, in the starting process, and written to a folder of the
workspace (``models/serving/<model>-<version>-<run>``) that every worker loads without
importing MLflow (≈ 4 s and ≈ 100 MB each), so that all workers serve the very same version
even if the alias moves meanwhile. Its trees are compiled for batches once, beside it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nba.settings import Settings

logger = logging.getLogger(__name__)


class NoChampionError(LookupError):
    """The registry has no champion to serve."""


@dataclass(frozen=True)
class Exported:
    """What ``export_champion`` wrote."""

    folder: Path
    label: str  # e.g. nba-uplift/3
    compiled: int  # forests compiled for batches (0: batches use Booster.predict)


def export_champion(settings: Settings) -> Exported:
    """Export the registry's champion into the workspace; raises ``NoChampionError``."""
    from serving.decider import LoadedModel
    from serving.runtime import compile_for_batches, export_model
    from training.tracking import Tracker

    tracker = Tracker(
        settings.mlflow_tracking_uri,
        artifact_location=settings.mlflow_artifact_location,
        experiment=settings.mlflow_experiment,
    )
    info = tracker.champion()
    if info is None:
        raise NoChampionError(
            f"no champion model in the registry of the workspace {settings.workspace}: run "
            "`nba train --raw DIR --force` there (or set NBA_MODEL_PATH to a model folder "
            "exported by `nba serve`)"
        )
    model = tracker.load(info.version)
    label = f"{tracker.model_name}/{info.version}"
    # One folder per model version and run: two services of one workspace, or two test
    # servers, never overwrite each other's model.
    name = f"{tracker.model_name}-{info.version}-{info.run_id[:12]}"
    folder = export_model(model, label, settings.models_dir / "serving" / name, info.run_id)
    compiled = 0
    if settings.compiled_trees:
        # Compiled once here, cached beside the export: the workers load the cached code
        # instead of each compiling it (≈ 2.5 s a model).
        served = settings.model_copy(update={"model_path": folder})
        compiled = compile_for_batches(LoadedModel(model, label), served)
    logger.info("serving %s (champion) from %s", label, folder)
    return Exported(folder, label, compiled)
