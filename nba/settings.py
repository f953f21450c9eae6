"""The one typed settings object, read from ``NBA_*`` environment variables and the workspace.

Built at each entry point (the CLI, benchmarks) and passed down as plain values; library code
never reads the environment itself. ``nba serve`` hands the service its resolved settings
(``NBA_SERVICE_SETTINGS``, see ``serving.config``), so the service does not import this module.

Sources, strongest first: keyword arguments, ``NBA_*`` environment variables, the dotenv file
named by ``NBA_SETTINGS_FILE``, the workspace's ``nba.yaml`` (``nba.workspace``), the defaults.
Relative paths, wherever they come from, are relative to the workspace (``home``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

if TYPE_CHECKING:
    from features.store import FeastAdapter
    from memory.ledger import Memory
    from monitoring.drift import DriftConfig
    from serving.holdout import Holdout

from nba import workspace
from training.value import ActionCosts

#: Path settings resolved against the workspace when relative.
PATH_FIELDS = (
    "feature_repo",
    "guardrails",
    "triggers",
    "rule_policy",
    "decision_log_dir",
    "events_log_dir",
    "promo_history_path",
    "model_path",
    "drift_report_dir",
    "evidently_workspace",
    "impact_report_dir",
)
_SQLITE = "sqlite:///"


#: What ``NBA_PROFILE=production`` changes, unless the setting is given explicitly: the Redis
#: online store and the Feast SQL registry on PostgreSQL (``feature_store.production.yaml``), the
#: MLflow tracking server (artifacts proxied by the server, so no local artifact folder), the
#: promo history in Redis (shared across hosts) and several service workers.
PRODUCTION_DEFAULTS: dict[str, object] = {
    "online_store": "redis",
    "mlflow_tracking_uri": "http://127.0.0.1:5000",
    "mlflow_artifact_location": None,
    "promo_store": "redis",
    "memory_url": "postgresql+psycopg2://postgres@127.0.0.1:5432/nba_memory",
}


def _sqlite_in(uri: str, home: Path) -> str:
    """A relative ``sqlite:///`` URL made absolute in the workspace (others unchanged)."""
    if uri.startswith(_SQLITE) and not uri.startswith(_SQLITE + "/"):
        path, _, query = uri[len(_SQLITE) :].partition("?")
        if path != ":memory:":
            suffix = f"?{query}" if query else ""
            return f"{_SQLITE}{home / path}{suffix}"
    return uri


class Settings(BaseSettings):
    """Runtime configuration. Every field can be set as ``NBA_<FIELD>`` (case-insensitive).

    An optional dotenv-style settings file is read when ``NBA_SETTINGS_FILE`` names one;
    environment variables win over it.
    """

    model_config = SettingsConfigDict(env_prefix="NBA_", extra="ignore")

    home: Path | None = Field(
        default=None,
        description="The workspace (NBA_HOME or `nba --workspace DIR`); unset: the nearest "
        "folder holding nba.yaml from the current directory upwards, else the current "
        "directory. Relative paths of every other setting are relative to it.",
    )
    profile: Literal["embedded", "production"] = Field(
        default="embedded",
        description="embedded: SQLite online store and registry, local MLflow store, promo "
        "history in a SQLite file (nothing to run). production: see PRODUCTION_DEFAULTS.",
    )
    feature_repo: Path = Field(
        default=Path("feature_repo"),
        description="The Feast repository (declarations, feature_store*.yaml, data/).",
    )
    online_store: Literal["sqlite", "redis"] = Field(
        default="sqlite", description="Which feature_store yaml to use: embedded SQLite or Redis."
    )
    redis_url: str = Field(
        default="127.0.0.1:6379", description="Redis connection string for the redis profile."
    )
    registry_url: str = Field(
        default="postgresql+psycopg2://postgres@127.0.0.1:5432/nba_registry",
        description="SQLAlchemy URL of the Feast SQL registry (production profile). Name the "
        "driver: a bare postgresql:// selects psycopg 3, which is not installed.",
    )
    base_currency: str | None = Field(
        default=None,
        description="Currency of monetary features; default: the bookings' only currency.",
    )
    fx_rates: dict[str, float] = Field(
        default_factory=dict,
        description='Units of base currency per unit of another currency, e.g. {"EUR": 1.08}.',
    )
    mlflow_tracking_uri: str = Field(
        default="sqlite:///models/mlflow.db",
        description="MLflow tracking store (a database URI; the old file store is refused). A "
        "relative sqlite:/// path is relative to the workspace.",
    )
    mlflow_artifact_location: str | None = Field(
        default="models/artifacts",
        description="Where MLflow keeps run artifacts (models, plots) for new experiments; "
        "unset or empty: the tracking server's default (its --artifacts-destination).",
    )
    mlflow_experiment: str = Field(default="nba-uplift", description="MLflow experiment name.")
    cost_promo_fare_share: float = Field(
        default=0.08, ge=0, le=1, description="Promo discount, share of the fare on conversion."
    )
    cost_apology_credit: float = Field(default=50.0, ge=0, description="Apology credit amount.")
    cost_recognition: float = Field(default=2.0, ge=0, description="Cost of a recognition.")
    cost_unsubscribe: float = Field(
        default=30.0, ge=0, description="Value of a customer's future marketing, lost on opt-out."
    )
    guardrails: Path = Field(
        default=Path("guardrails.yaml"),
        description="The guardrail rules file (thresholds are set here, never by a request).",
    )
    triggers: Path = Field(
        default=Path("triggers.yaml"),
        description="The trigger rules file (serving/triggers.py), validated at start-up.",
    )
    rule_policy: Path = Field(
        default=Path("rules.yaml"),
        description="The brand's rule policy (features/rule_policy.py): segment -> action, "
        "the baseline every learned policy must beat and the prior the hybrid starts from.",
    )
    decision_log_dir: Path = Field(
        default=Path("logs/decisions"),
        description="Where the service appends its decision log (features.decision_log).",
    )
    events_log_dir: Path = Field(
        default=Path("logs/events"),
        description="Where the service appends the /events it received (offline copy).",
    )
    log_flush_seconds: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="How often the service writes its queued decision-log rows (one part each).",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="API keys accepted in the X-API-Key header (NBA_API_KEYS, comma-separated). "
        "Empty: every keyed endpoint answers 401.",
    )
    model_path: Path | None = Field(
        default=None,
        description="A model folder exported by `nba serve` (model.pkl + nba_model.json); "
        "unset: the service loads the registry's champion at start-up.",
    )
    serve_workers: int = Field(default=2, ge=1, description="Service worker processes.")
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, description="Largest request body accepted (413 above)."
    )
    explore_epsilon: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Exploration probability among eligible actions (true propensity logged).",
    )
    apology_budget_per_day: int = Field(
        default=1000,
        ge=0,
        description="Apology credits per UTC day, paced, counted where the promo history is "
        "(NBA_PROMO_STORE): shared by the workers of a host (sqlite) or by every host (redis).",
    )
    promo_history_path: Path = Field(
        default=Path("logs/promo_history.db"),
        description="SQLite file of recent promos and of the day's apology credits, shared by "
        "the workers of the host (frequency cap, apology budget).",
    )
    promo_store: Literal["sqlite", "redis"] = Field(
        default="sqlite",
        description="Where the promo frequency cap's history and the apology budget's count "
        "live: a SQLite file shared by the workers of one host (NBA_PROMO_HISTORY_PATH), or "
        "Redis (NBA_REDIS_URL), shared by every host.",
    )
    compiled_trees: bool = Field(
        default=True,
        description="Predict large batches (/decide_batch) with the model's trees compiled to "
        "native code (lleaves, cached next to the served model; about 8x faster than "
        "Booster.predict, equal up to rounding); false: Booster.predict everywhere.",
    )
    fast_path: bool = Field(
        default=True,
        description="Serve /decide, /decide_batch and /events from the lean ASGI path "
        "(false: through BentoML's IO descriptors; same answers, slower).",
    )
    redis_pipelining: bool = Field(
        default=True,
        description="When the features, promo history and apology budget are all on one "
        "Redis, /decide awaits its Redis calls on the worker's event loop and concurrent "
        "requests share round trips (false: one blocking round trip per request).",
    )
    train_engine: Literal["local", "dask"] = Field(
        default="local",
        description="Where `nba train` fits the uplift models: in process, or with lightgbm.dask "
        "on a Dask cluster (NBA_DASK_SCHEDULER, else a two-worker LocalCluster).",
    )
    dask_scheduler: str | None = Field(
        default=None,
        description="Dask scheduler address for the dask engine, e.g. tcp://10.0.0.5:8786; "
        "unset: a LocalCluster started for the fit.",
    )
    environment: str = Field(
        default="local",
        description="Name of this deployment (dev, staging, prod): the Evidently project name.",
    )
    drift_feature_share: float = Field(
        default=0.3, gt=0, le=1,
        description="nba drift alerts (exit 3) when at least this share of features drifted.",
    )  # fmt: skip
    drift_action_share: float = Field(
        default=0.10, gt=0, le=1,
        description="nba drift alerts when a preferred-action share moves by more than this.",
    )  # fmt: skip
    drift_method: Literal["wasserstein", "psi", "jensenshannon", "hellinger", "ed", "kl_div"] = (
        Field(default="wasserstein", description="Per-column drift score (Evidently method).")
    )
    drift_column_threshold: float = Field(
        default=0.1, gt=0, description="A column drifted when its score is at least this."
    )
    drift_sample_rows: int = Field(
        default=100_000, ge=1000,
        description="Rows of each side the drift scores are computed on (uniform sample).",
    )  # fmt: skip
    drift_report_dir: Path = Field(
        default=Path("reports/drift"),
        description="Where nba drift writes its HTML report and JSON summary.",
    )
    drift_experiment: str = Field(
        default="nba-monitoring", description="MLflow experiment of the nba drift runs."
    )
    evidently_workspace: Path = Field(
        default=Path("reports/evidently"),
        description="Local Evidently workspace (`evidently ui --workspace DIR`).",
    )
    require_services: bool = Field(
        default=False, description="Tests: fail instead of skip when Redis/PostgreSQL is absent."
    )
    store_timeout_seconds: float = Field(
        default=0.5,
        gt=0,
        le=30,
        description="Service: the deadline of every call to a store on the request path, in "
        "seconds: Redis connect and reply (Feast's client, the promo history's and budget's, "
        "the awaited /decide connection), SQLite's busy wait, PostgreSQL's connect (at least "
        "2 s). A missed deadline degrades: /decide and each /decide_batch answer are none "
        "with degraded: true; a promo that cannot be recorded is not given, a credit that "
        "cannot be counted not granted; /events and /readyz answer 503.",
    )
    request_timeout_seconds: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="Service: the longest /events and /readyz wait for their store calls, in "
        "seconds, whatever happens underneath (each call also has NBA_STORE_TIMEOUT_SECONDS); "
        "past it they answer 503 with the reason.",
    )
    store_cooldown_seconds: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="Service: after a store missed its deadline, calls to it fail at once for "
        "this many seconds (answers degraded without waiting), then the next call tries it "
        "again; 0: every call waits its full deadline.",
    )
    drift_min_rows: int = Field(
        default=200,
        ge=1,
        description="nba drift judges a window of at least this many decisions; below it, it "
        "reports the figures but never alerts (exit 7, status too_few_decisions).",
    )

    log_fsync: bool = Field(
        default=False,
        description="fdatasync the log journal after every decision and event (survives a power "
        "loss too; costs a disk flush per request). Off: a record is safe from a process crash "
        "once written, the OS flushes it within seconds.",
    )
    shutdown_grace_seconds: int = Field(
        default=30,
        ge=1,
        le=3600,
        description="On SIGTERM, how long each worker waits for the requests in flight to be "
        "answered before cancelling them (uvicorn's timeout_graceful_shutdown).",
    )
    holdout_share: float = Field(
        default=0.05,
        ge=0.0,
        lt=1.0,
        description="Share of customers in the global control group (serving.holdout): chosen "
        "by a salted hash of customer_id, they never get a marketing action, so `nba impact` "
        "can measure what the decisions earn. 0: no control group (no impact measurement).",
    )
    holdout_salt: str = Field(
        default="nba-holdout",
        description="Salt of the control group's hash. Changing it draws a new group: do it "
        "only between measurement periods.",
    )
    holdout_service: bool = Field(
        default=True,
        description="Whether control-group customers still get service actions "
        "(apology_credit); marketing actions (promo, recognition) are always withheld.",
    )
    impact_horizon_days: int = Field(
        default=30,
        ge=1,
        le=365,
        description="Days after a decision over which its outcome is observed (nba outcomes, "
        "nba impact); the raw contract's outcomes use 30.",
    )
    impact_report_dir: Path = Field(
        default=Path("reports/impact"),
        description="Where nba impact writes its HTML report and JSON summary.",
    )

    memory_url: str = Field(
        default="sqlite:///data/memory.db",
        description="SQLAlchemy URL of the customer memory (event ledger, cases by id, claims, "
        "flight manifest; memory.store): a SQLite file in the workspace, or PostgreSQL in "
        "production (it must survive a Redis restart). A relative sqlite:/// path is relative "
        "to the workspace.",
    )
    trigger_poll_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Service: how often each worker looks for delayed triggers that are due and "
        "for apology-budget room for the customers waiting in the outbox's queue (an event "
        "wakes it at once).",
    )
    outbox_webhook_url: str | None = Field(
        default=None,
        description="Service: POST every outbox item to this URL (JSON, Idempotency-Key: its "
        "outbox_id), in outbox order, with retries; unset: no webhook.",
    )
    outbox_webhook_attempts: int = Field(
        default=5,
        ge=1,
        le=20,
        description="Service: attempts per outbox item and round before the webhook relay waits "
        "for its next round (exponential backoff from 0.5 s, at most 30 s, between attempts).",
    )
    consume_stream: str | None = Field(
        default=None,
        description="nba consume: the Redis stream of events to read (default "
        "nba:<NBA_ENVIRONMENT>:events).",
    )
    consume_group: str = Field(
        default="nba",
        description="nba consume: the consumer group (one group: each event handled once).",
    )
    gate_baselines: bool = Field(
        default=True,
        description="The champion gate also requires a candidate's doubly-robust gains over "
        "doing nothing and over the rule policy (rule_policy) on the held-out decisions to "
        "have positive 95% lower bounds (off: only the comparison with the champion).",
    )
    train_candidates: list[str] | None = Field(
        default=None,
        description="nba train: the candidate policies compared by cross-fitted doubly-robust "
        "value (training/selection.py CANDIDATES; default all of them); none and the rule "
        "policy are always compared.",
    )
    act_only_when_confident: bool = Field(
        default=False,
        description="nba train selects only policies that take an action over none where the "
        "95% lower bound of its value is positive (a confident uplift model, an honest "
        "policy tree, the hybrid's overrides); the brand's rules still act as written.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The workspace's nba.yaml sits below the environment: the workspace is found first
        # (an explicit home, NBA_HOME, or the folders above the current one).
        explicit = None
        if isinstance(init_settings, InitSettingsSource):
            explicit = init_settings.init_kwargs.get("home")
        home = workspace.locate(explicit)
        yaml_source = YamlConfigSettingsSource(settings_cls, yaml_file=home / workspace.MARKER)
        return (init_settings, env_settings, dotenv_settings, yaml_source, file_secret_settings)

    @model_validator(mode="before")
    @classmethod
    def _profile_defaults(cls, data: object) -> object:
        # Runs on the merged sources (keys are field names): explicit settings win over the
        # profile's defaults. Workers: one per core this process may run on (the affinity
        # mask, not the host's count; a CPU quota is not visible: set NBA_SERVE_WORKERS), at
        # least two.
        if not isinstance(data, dict) or str(data.get("profile", "")).lower() != "production":
            return data
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        defaults = {**PRODUCTION_DEFAULTS, "serve_workers": max(2, cores or os.cpu_count() or 2)}
        return {**defaults, **data}

    @model_validator(mode="after")
    def _within_workspace(self) -> Settings:
        # Every relative path is the workspace's, never the current directory's or the
        # installed package's.
        home = workspace.locate(self.home)
        self.home = home
        for name in PATH_FIELDS:
            value = getattr(self, name)
            if value is not None and not Path(value).expanduser().is_absolute():
                setattr(self, name, home / value)
            elif value is not None:
                setattr(self, name, Path(value).expanduser())
        self.mlflow_tracking_uri = _sqlite_in(self.mlflow_tracking_uri, home)
        self.memory_url = _sqlite_in(self.memory_url, home)
        location = self.mlflow_artifact_location
        if location and "://" not in location and not location.startswith("file:"):
            self.mlflow_artifact_location = str((home / Path(location).expanduser()).resolve())
        return self

    @model_validator(mode="after")
    def _production_is_redis(self) -> Settings:
        # feature_store.production.yaml has one online store: a SQLite store per host would
        # defeat the shared registry.
        if self.profile == "production" and self.online_store != "redis":
            raise ValueError("NBA_PROFILE=production uses the Redis online store: unset "
                             "NBA_ONLINE_STORE or set it to redis")  # fmt: skip
        return self

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        # A comma-separated list in the environment; blanks and spaces around keys dropped.
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("base_currency")
    @classmethod
    def _upper(cls, value: str | None) -> str | None:
        return value.upper() if value else None

    @field_validator("dask_scheduler", "mlflow_artifact_location")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        # NBA_DASK_SCHEDULER= (set but empty) means "no scheduler", not an address "".
        return value.strip() or None if value else None

    def action_costs(self) -> ActionCosts:
        """The value model's costs (raw-data contract defaults unless configured)."""
        return ActionCosts.of(self)

    def holdout(self) -> Holdout:
        """The global control group (``serving.holdout``)."""
        from serving.holdout import Holdout

        return Holdout(self.holdout_share, self.holdout_salt, self.holdout_service)

    def drift_config(self) -> DriftConfig:
        """Thresholds and sampling of ``nba drift``."""
        from monitoring.drift import DriftConfig

        return DriftConfig(
            feature_share=self.drift_feature_share,
            action_share=self.drift_action_share,
            method=self.drift_method,
            column_threshold=self.drift_column_threshold,
            sample_rows=self.drift_sample_rows,
            min_rows=self.drift_min_rows,
        )

    @property
    def workspace(self) -> Path:
        """The workspace folder (``home``, always set once validated)."""
        assert self.home is not None
        return self.home

    @property
    def models_dir(self) -> Path:
        """Where the workspace keeps exported models (``nba serve``'s served copy)."""
        return self.workspace / "models"

    @property
    def feature_data_dir(self) -> Path:
        """Where the offline feature table, the SQLite online store and the registry live."""
        return self.feature_repo / "data"

    @property
    def feature_store_yaml(self) -> Path:
        """The Feast config file for the profile and the selected online store."""
        if self.profile == "production":
            return self.feature_repo / "feature_store.production.yaml"
        name = "feature_store.yaml" if self.online_store == "sqlite" else "feature_store.redis.yaml"
        return self.feature_repo / name

    def memory(self) -> Memory:
        """The customer memory (``memory.ledger``) of these settings."""
        from memory.ledger import Memory
        from memory.store import Database

        return Memory(Database(self.memory_url, timeout=max(self.request_timeout_seconds, 5.0)))

    def feast_adapter(self) -> FeastAdapter:
        """The Feast adapter of these settings (its yaml's ``${NBA_*}`` filled from them)."""
        from features.store import FeastAdapter

        return FeastAdapter(self.feature_repo, self.feature_store_yaml, self.redis_url,
                            registry_url=self.registry_url)  # fmt: skip


def load_settings(**overrides: Any) -> Settings:
    """Build the settings: overrides, the environment, ``NBA_SETTINGS_FILE``, ``nba.yaml``."""
    env_file = os.environ.get("NBA_SETTINGS_FILE")
    return Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
