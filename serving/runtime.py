"""Everything a service worker holds, built once at start-up from the settings (no web framework).

``Runtime.start(settings)`` loads the model (an exported folder, or the registry's champion),
opens the Feast store and its direct reader, compiles the guardrails (a bad rule file stops the
start-up with a message naming the rule), and starts the decision-log and event-log writers.
Each part that fails to load leaves the runtime *degraded*, not dead: ``/decide`` then answers
``none`` with ``degraded: true`` and ``/readyz`` says what is missing.

``handle_event`` is ``/events``: fold the event into the customer's realtime state
(``features.events``), push it through the Feast PushSource before answering (so the next
``/decide`` sees it), and append it to the event log for training.

Deadlines (``serving.deadline``): every store the runtime opens gets
``NBA_STORE_TIMEOUT_SECONDS`` through its own client options (Feast's Redis client and SQLite
reader, the PostgreSQL registry, the promo history, the budget, the awaited ``/decide``
connection). Calls go through one ``Breaker`` per store server (``NBA_STORE_COOLDOWN_SECONDS``;
Redis's is shared by the features, the promo history and the budget): after a missed deadline,
decisions, ``/events`` and the readiness probe fail at once instead of waiting again.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import shutil
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import pandas as pd

from features import decision_log, schema
from features.events import apply_event
from serving.budget import RedisBudgetCounter, SqliteBudgetCounter
from serving.deadline import Breaker
from serving.decider import Decider, LoadedModel
from serving.guardrails import load_rules
from serving.history import PromoHistory, RedisPromoHistory, SqlitePromoHistory, redis_client
from serving.logwriter import LogWriter
from serving.policy import BudgetCounter, DailyBudget
from serving.redisreads import PipelinedDecisionIO, one_round_trip, pipelined
from serving.triggers import load_triggers

logger = logging.getLogger(__name__)

#: Files of an exported model folder (``export_model``).
MODEL_FILE: Final = "model.pkl"
META_FILE: Final = "nba_model.json"
#: ``/readyz`` re-checks the feature store at most this often (seconds).
PROBE_EVERY: Final = 2.0


def export_model(estimator: Any, version: str, folder: Path, run_id: str | None = None) -> Path:
    """Write a loaded estimator and its label to ``folder`` for the service workers.

    The workers then start without importing MLflow (≈ 4 s and ≈ 100 MB each) and every worker
    serves the very same model even if the champion alias moves meanwhile. The folder appears
    whole or not at all (written beside it, then renamed): a second server exporting the same
    model at the same moment keeps the first complete copy.
    """
    if (folder / META_FILE).is_file():
        return folder  # this very model was exported before (the name carries its run id)
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = folder.with_name(f".{folder.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    scratch.mkdir()
    with open(scratch / MODEL_FILE, "wb") as handle:
        pickle.dump(estimator, handle, protocol=pickle.HIGHEST_PROTOCOL)
    meta = {"version": version, "run_id": run_id, "exported_at": datetime.now(UTC).isoformat()}
    (scratch / META_FILE).write_text(json.dumps(meta, indent=2))
    try:
        scratch.rename(folder)
    except OSError:
        # Another process won the race (or an old incomplete folder is in the way): keep a
        # complete one.
        shutil.rmtree(scratch, ignore_errors=True)
        if not (folder / META_FILE).is_file():
            raise
    return folder


def load_exported(folder: Path) -> LoadedModel:
    """Read a folder written by ``export_model``."""
    meta = json.loads((folder / META_FILE).read_text())
    with open(folder / MODEL_FILE, "rb") as handle:
        estimator = pickle.load(handle)  # our own export: trusted input
    return LoadedModel(estimator, str(meta["version"]))


def load_champion(settings: Any) -> LoadedModel:
    """The registry's champion (imports MLflow: used when no exported folder is given)."""
    from training.tracking import Tracker

    tracker = Tracker(
        settings.mlflow_tracking_uri, settings.mlflow_artifact_location, settings.mlflow_experiment
    )
    info = tracker.champion()
    if info is None:
        raise LookupError("no champion model in the registry: run `nba train --force` first")
    return LoadedModel(tracker.load(info.version), f"{tracker.model_name}/{info.version}")


def compiled_trees_dir(settings: Any) -> Path:
    """Where compiled forests are cached: beside the served model when its folder is writable
    (``nba serve``'s export), else beside the logs (a read-only mounted model, say)."""
    if settings.model_path is not None:
        folder = Path(settings.model_path)
        compiled = folder / "compiled"
        if os.access(compiled if compiled.exists() else folder, os.W_OK):
            return compiled
    return Path(settings.decision_log_dir).parent / "compiled-trees"


def compile_for_batches(model: LoadedModel, settings: Any) -> int:
    """Compile the model's trees for ``/decide_batch`` (``training.compiled``); 0 if not."""
    compile_trees = getattr(model.estimator, "compile_for_batches", None)
    if compile_trees is None:
        return 0
    try:
        return int(compile_trees(compiled_trees_dir(settings)))
    except Exception as error:  # a speed-up only: serve with Booster.predict
        logger.warning("trees not compiled (%s): batches use Booster.predict", error)
        return 0


def open_promo_history(settings: Any, breaker: Breaker | None = None) -> PromoHistory:
    """The promo history of ``settings.promo_store``: one SQLite file per host, or Redis.

    Redis keys are prefixed with the environment name so that two deployments (or test runs)
    sharing a Redis never count each other's promos. Every call has the deadline
    ``settings.store_timeout_seconds`` (Redis socket timeouts, SQLite's busy timeout); on Redis,
    ``breaker`` (the Redis server's) fails calls fast after a missed deadline.
    """
    timeout = settings.store_timeout_seconds
    if settings.promo_store == "redis":
        return RedisPromoHistory(
            redis_client(settings.redis_url, timeout),
            prefix=f"nba:{settings.environment}:promos:",
            breaker=breaker,
        )
    return SqlitePromoHistory(Path(settings.promo_history_path), timeout=timeout)


def open_apology_budget(settings: Any, breaker: Breaker | None = None) -> DailyBudget:
    """The paced apology budget, counted where the promo history is (``settings.promo_store``).

    Every worker of the host shares one count (a table in the promo history's SQLite file), or
    every host does (Redis, keys prefixed with the environment name like the promo keys), so
    the whole service grants at most ``apology_budget_per_day`` credits a UTC day. Every call
    has the deadline ``settings.store_timeout_seconds``; a missed one grants no credit (and on
    Redis opens ``breaker``, as in ``open_promo_history``).
    """
    counter: BudgetCounter
    timeout = settings.store_timeout_seconds
    if settings.promo_store == "redis":
        counter = RedisBudgetCounter(
            redis_client(settings.redis_url, timeout),
            prefix=f"nba:{settings.environment}:apology:",
            breaker=breaker,
        )
    else:
        counter = SqliteBudgetCounter(Path(settings.promo_history_path), timeout=timeout)
    return DailyBudget(settings.apology_budget_per_day, lambda: datetime.now(UTC), counter=counter)


@dataclass
class Runtime:
    """A worker's loaded state; see the module docstring."""

    decider: Decider
    adapter: Any | None
    reader: Any | None
    decision_writer: LogWriter
    event_writer: LogWriter
    problems: list[str] = field(default_factory=list)
    #: ``/decide``'s awaited store calls (``Decider.decide_async``), or None: blocking calls.
    decision_io: PipelinedDecisionIO | None = None
    #: The feature store's breaker (``serving.deadline``): its calls fail fast for a while
    #: after one missed its deadline (Redis's breaker when the features are on Redis).
    breaker: Breaker = field(default_factory=lambda: Breaker("feature store", 0.0))
    _probe: tuple[float, bool, str] = (0.0, False, "not checked")
    _push_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def start(cls, settings: Any) -> Runtime:
        """Build the runtime; load failures are recorded in ``problems`` (degraded mode)."""
        problems: list[str] = []
        rules = load_rules(settings.guardrails)  # a broken rule file is a start-up error
        load_triggers(settings.triggers)  # so is a broken trigger file
        model: LoadedModel | None = None
        try:
            if settings.model_path is not None:
                model = load_exported(Path(settings.model_path))
            else:
                model = load_champion(settings)
        except Exception as error:
            problems.append(f"model not loaded: {type(error).__name__}: {error}")
            logger.error("starting degraded: %s", problems[-1])
        if model is not None and settings.compiled_trees:
            compile_for_batches(model, settings)
        adapter = reader = None
        # One breaker per store server: the features share Redis's with the promo history and
        # the budget (NBA_REDIS_URL is everyone's Redis); SQLite files wait on locks, not on a
        # server, and a locked feature file must not block the promo file's calls.
        cooldown = settings.store_cooldown_seconds
        redis_breaker = Breaker("Redis", cooldown)
        breaker = redis_breaker if settings.online_store == "redis" else Breaker("SQLite", cooldown)
        try:
            adapter = settings.feast_adapter().with_timeout(settings.store_timeout_seconds)
            reader = adapter.direct_reader()
        except Exception as error:
            problems.append(f"feature store not opened: {type(error).__name__}: {error}")
            logger.error("starting degraded: %s", problems[-1])

        def read(customer_id: str) -> Mapping[str, Any]:
            if reader is None:
                raise RuntimeError("feature store not opened")
            return breaker.call(reader.read, customer_id)

        def read_many(ids: Any) -> Any:
            if reader is None:
                raise RuntimeError("feature store not opened")
            return breaker.call(reader.read_many, ids)

        def read_columns(ids: Any) -> Any:
            if reader is None:
                raise RuntimeError("feature store not opened")
            return breaker.call(reader.read_columns, ids)

        flush, fsync = settings.log_flush_seconds, settings.log_fsync
        decision_writer = LogWriter(Path(settings.decision_log_dir), decision_log.DECISION_SCHEMA,
                                    "decided_at", flush, fsync=fsync)  # fmt: skip
        event_writer = LogWriter(Path(settings.events_log_dir), decision_log.EVENT_SCHEMA, "ts",
                                 flush, fsync=fsync)  # fmt: skip
        budget = open_apology_budget(settings, redis_breaker)
        history = open_promo_history(settings, redis_breaker)
        # Production profile: a decision's features, promo count and budget in one Redis round
        # trip when all three live on one server (serving.redisreads); else three calls.
        one_trip = None
        if reader is not None:
            one_trip = one_round_trip(reader.store_rows, history, budget)
        read_context = None
        if one_trip is not None:
            trip = one_trip

            def read_context(customer_id: str, now: datetime) -> tuple[Any, int | None, int]:
                return breaker.call(trip, customer_id, now)

        # On the event loop, concurrent /decide requests share Redis round trips; the
        # connection has the same deadline and breaker as the blocking calls.
        decision_io = None
        if one_trip and settings.redis_pipelining:
            decision_io = pipelined(one_trip, settings.store_timeout_seconds, breaker)
        decider = Decider(
            model=model,
            read=read,
            read_many=read_many,
            rules=rules,
            costs=settings.action_costs(),
            budget=budget,
            history=history,
            read_context=read_context,
            log=decision_writer.append,
            read_columns=read_columns,
            log_columns=decision_writer.append_columns,
            epsilon=settings.explore_epsilon,
            rng=random.Random(),
            holdout=settings.holdout(),
        )
        return cls(decider, adapter, reader, decision_writer, event_writer, problems, decision_io,
                   breaker)  # fmt: skip

    def readiness(self) -> tuple[bool, str]:
        """(ready, why): a model is loaded and the feature store answers a read."""
        if self.decider.model is None:
            return False, "; ".join(self.problems) or "no model loaded"
        now = time.monotonic()
        checked, ok, why = self._probe
        if now - checked < PROBE_EVERY:
            return ok, why
        try:
            if self.reader is None:
                raise RuntimeError("feature store not opened")
            # Through the breaker: right after a missed deadline the probe answers at once.
            self.breaker.call(self.reader.read, "__nba_readiness_probe__")
            ok, why = True, "ready"
        except Exception as error:
            ok, why = False, f"feature store unreachable: {type(error).__name__}: {error}"
        self._probe = (now, ok, why)
        return ok, why

    def handle_event(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """Apply one validated event (``serving.api.Event`` as a dict) to the online store.

        Raises ``RuntimeError`` when the store cannot be written (the caller answers 503: an
        event must not be acknowledged unless the next decision will see it).
        """
        if self.adapter is None or self.reader is None:
            raise RuntimeError("feature store not opened")
        self.breaker.check()  # a store that just missed a deadline: 503 at once, not after one
        customer_id = str(event["customer_id"])
        fields = {k: v for k, v in event.items() if v is not None}
        # Read-fold-push under a lock: two events for one customer at once must not both start
        # from the same old state (across workers the realtime timestamp still never decreases).
        with self._push_lock:
            [(stored, state_ts)] = self.breaker.call(self.reader.read_with_timestamps,
                                                     [customer_id])  # fmt: skip
            state = {k: stored.get(k) for k in schema.REALTIME}
            new, push_ts = apply_event(state, state_ts, fields)
            row = {schema.ENTITY: customer_id, schema.EVENT_TIMESTAMP: push_ts, **new}
            frame = pd.DataFrame([row])
            for name, kind in schema.REALTIME.items():
                if kind == "timestamp":
                    frame[name] = pd.to_datetime(frame[name], utc=True)
            self.breaker.call(self.adapter.push, frame)
        event_id = f"e-{uuid.uuid4().hex}"
        payload = {k: v for k, v in fields.items() if k not in ("customer_id", "type", "ts")}
        self.event_writer.append(
            {
                "event_id": event_id,
                "customer_id": customer_id,
                "type": str(event["type"]),
                "ts": pd.Timestamp(event["ts"]).tz_convert("UTC"),
                "received_at": datetime.now(UTC),
                "payload": json.dumps(payload, default=str) if payload else None,
            }
        )
        return {"event_id": event_id, "customer_id": customer_id, "type": event["type"],
                "applied": True}  # fmt: skip

    def close(self) -> None:
        """Flush and close the logs (shutdown hook: SIGTERM loses nothing)."""
        self.decision_writer.close()
        self.event_writer.close()
        if self.decision_io is not None:
            self.decision_io.close()
        history = self.decider.history
        if hasattr(history, "close"):
            history.close()
        self.decider.budget.close()
