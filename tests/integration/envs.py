"""Settings shared by the integration tests that run the commands and the service on the
embedded profile: every store and log of one world under its own temporary folder."""

from __future__ import annotations

from pathlib import Path


def local_world_env(root: Path, repo: Path) -> dict[str, str]:
    """``NBA_*`` settings that keep a world's Feast repository, MLflow store and logs in
    ``root`` (nothing shared with another module or with the repository's own workspace)."""
    return {
        "NBA_FEATURE_REPO": str(repo),
        "NBA_MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "NBA_MLFLOW_ARTIFACT_LOCATION": str(root / "artifacts"),
        "NBA_DECISION_LOG_DIR": str(root / "logs" / "decisions"),
        "NBA_EVENTS_LOG_DIR": str(root / "logs" / "events"),
        "NBA_PROMO_HISTORY_PATH": str(root / "logs" / "promos.db"),
    }
