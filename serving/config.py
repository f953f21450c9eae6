"""What the decision service is configured with, handed down by its entry point.

Settings are read at the entry points (``nba serve`` reads the environment, the workspace's
``nba.yaml`` and the settings file through ``nba.settings``) and passed down: the CLI resolves
them once, writes the part the service needs as JSON into ``NBA_SERVICE_SETTINGS``, and every
BentoML worker validates that JSON here. The service therefore never imports the CLI's settings
module, and all workers serve with exactly the values the command resolved (paths already
absolute, in the workspace).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from pydantic import BaseModel, ConfigDict

from serving.holdout import Holdout
from training.value import ActionCosts

if TYPE_CHECKING:
    from features.store import FeastAdapter
    from memory.ledger import Memory

#: The environment variable ``nba serve`` passes the resolved settings in.
ENV_VAR: Final = "NBA_SERVICE_SETTINGS"


class ServiceSettings(BaseModel):
    """The settings a service worker reads (field meanings: ``nba.settings.Settings``)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    profile: Literal["embedded", "production"]
    online_store: Literal["sqlite", "redis"]
    environment: str
    feature_repo: Path
    feature_store_yaml: Path
    redis_url: str
    registry_url: str
    mlflow_tracking_uri: str
    mlflow_artifact_location: str | None
    mlflow_experiment: str
    guardrails: Path
    triggers: Path
    decision_log_dir: Path
    events_log_dir: Path
    log_flush_seconds: float
    api_keys: list[str]
    model_path: Path | None
    max_body_bytes: int
    explore_epsilon: float
    apology_budget_per_day: int
    promo_history_path: Path
    promo_store: Literal["sqlite", "redis"]
    compiled_trees: bool
    fast_path: bool
    redis_pipelining: bool
    cost_promo_fare_share: float
    cost_apology_credit: float
    cost_recognition: float
    cost_unsubscribe: float
    store_timeout_seconds: float
    request_timeout_seconds: float
    store_cooldown_seconds: float
    log_fsync: bool
    shutdown_grace_seconds: int
    memory_url: str
    holdout_share: float
    holdout_salt: str
    holdout_service: bool
    trigger_poll_seconds: float = 1.0
    outbox_webhook_url: str | None = None
    outbox_webhook_attempts: int = 5

    @classmethod
    def of(cls, settings: Any, **updates: Any) -> ServiceSettings:
        """The service's part of a full settings object (``nba.settings.Settings``)."""
        values = settings.model_dump()
        values["feature_store_yaml"] = settings.feature_store_yaml
        return cls.model_validate({**values, **updates})

    def action_costs(self) -> ActionCosts:
        """The value model's costs."""
        return ActionCosts.of(self)

    def memory(self) -> Memory:
        """The customer memory (``memory.ledger``) with the requests' deadline."""
        from memory.ledger import Memory
        from memory.store import Database

        return Memory(Database(self.memory_url, timeout=self.request_timeout_seconds))

    def holdout(self) -> Holdout:
        """The global control group of these settings."""
        return Holdout(self.holdout_share, self.holdout_salt, self.holdout_service)

    def feast_adapter(self) -> FeastAdapter:
        """The Feast adapter of these settings."""
        from features.store import FeastAdapter

        return FeastAdapter(self.feature_repo, self.feature_store_yaml, self.redis_url,
                            registry_url=self.registry_url)  # fmt: skip


def from_environment(environ: Mapping[str, str] | None = None) -> ServiceSettings:
    """The settings ``nba serve`` passed to this worker; a clear error when started otherwise."""
    raw = (os.environ if environ is None else environ).get(ENV_VAR)
    if not raw:
        raise RuntimeError(
            f"{ENV_VAR} is not set: start the service with `nba serve`, which resolves the "
            "workspace's settings and passes them to every worker"
        )
    return ServiceSettings.model_validate_json(raw)
