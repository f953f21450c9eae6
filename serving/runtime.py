"""Everything a service worker holds, built once at start-up from the settings (no web framework).

``Runtime.start(settings)`` loads the model (an exported folder, or the registry's champion),
opens the Feast store and its direct reader, compiles the guardrails (a bad rule file stops the
start-up with a message naming the rule), and starts the decision-log and event-log writers.
Each part that fails to load leaves the runtime *degraded*, not dead: ``/decide`` then answers
``none`` with ``degraded: true`` and ``/readyz`` says what is missing.

``handle_event`` is ``/events``: commit the event to the customer memory's ledger
(``memory.ledger``, which folds it with ``memory.fold``), push the customer's new state through
the Feast PushSource before answering (so the next ``/decide`` sees it), and append it to the
event log.

Deadlines (``serving.deadline``): every store the runtime opens gets
``NBA_STORE_TIMEOUT_SECONDS`` through its own client options (Feast's Redis client and SQLite
reader, the PostgreSQL registry, the promo history, the budget, the awaited ``/decide``
connection). Calls go through one ``Breaker`` per store server (``NBA_STORE_COOLDOWN_SECONDS``;
Redis's is shared by the features, the promo history and the budget): after a missed deadline,
decisions, ``/events`` and the readiness probe fail at once instead of waiting again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import random
import shutil
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import pandas as pd

from features import decision_log, schema
from memory import fold as folding
from memory.ledger import Applied, Memory
from serving.budget import RedisBudgetCounter, SqliteBudgetCounter
from serving.deadline import Breaker
from serving.decider import Decider, LoadedModel
from serving.guardrails import load_rules
from serving.history import ContactHistory, RedisContactHistory, SqliteContactHistory, redis_client
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


def open_promo_history(settings: Any, breaker: Breaker | None = None) -> ContactHistory:
    """The promo history of ``settings.promo_store``: one SQLite file per host, or Redis.

    Redis keys are prefixed with the environment name so that two deployments (or test runs)
    sharing a Redis never count each other's promos. Every call has the deadline
    ``settings.store_timeout_seconds`` (Redis socket timeouts, SQLite's busy timeout); on Redis,
    ``breaker`` (the Redis server's) fails calls fast after a missed deadline.
    """
    timeout = settings.store_timeout_seconds
    if settings.promo_store == "redis":
        return RedisContactHistory(
            redis_client(settings.redis_url, timeout),
            prefix=f"nba:{settings.environment}:promos:",
            breaker=breaker,
        )
    return SqliteContactHistory(Path(settings.promo_history_path), timeout=timeout)


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


def ack(applied: Applied) -> dict[str, Any]:
    """The ``/events`` answer (``serving.api.EventAck``) of a ledger append."""
    return {"event_id": applied.event_id, "customer_id": applied.customer_id,
            "type": applied.type, "applied": applied.applied, "duplicate": applied.duplicate,
            "detail": applied.note}  # fmt: skip


def state_frame(states: Mapping[str, Mapping[str, Any]], stamp: pd.Timestamp) -> pd.DataFrame:
    """Push rows (``features.store.PUSH_COLUMNS``) of folded states, all stamped ``stamp``."""
    rows = [{schema.ENTITY: c, schema.EVENT_TIMESTAMP: stamp, **folding.served(s)}
            for c, s in states.items()]  # fmt: skip
    frame = pd.DataFrame(rows)
    for name, kind in schema.REALTIME.items():
        if kind == "timestamp":
            frame[name] = pd.to_datetime(frame[name], utc=True)
    return frame


@dataclass
class Runtime:
    """A worker's loaded state; see the module docstring."""

    decider: Decider
    adapter: Any | None
    reader: Any | None
    decision_writer: LogWriter
    event_writer: LogWriter
    #: The customer memory (event ledger, cases, claims): events are committed there first.
    memory: Memory | None = None
    problems: list[str] = field(default_factory=list)
    #: ``/decide``'s awaited store calls (``Decider.decide_async``), or None: blocking calls.
    decision_io: PipelinedDecisionIO | None = None
    #: The feature store's breaker (``serving.deadline``): its calls fail fast for a while
    #: after one missed its deadline (Redis's breaker when the features are on Redis).
    breaker: Breaker = field(default_factory=lambda: Breaker("feature store", 0.0))
    #: Triggers, the outbox and its scheduler (``serving.triggered``), or None: no memory.
    triggered: Any | None = None
    _probe: tuple[float, bool, str] = (0.0, False, "not checked")
    _push_lock: threading.Lock = field(default_factory=threading.Lock)
    _deferred: threading.local = field(default_factory=threading.local)

    @classmethod
    def start(cls, settings: Any) -> Runtime:
        """Build the runtime; load failures are recorded in ``problems`` (degraded mode)."""
        problems: list[str] = []
        rules = load_rules(settings.guardrails)  # a broken rule file is a start-up error
        triggers = load_triggers(settings.triggers)  # so is a broken trigger file
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

        memory: Memory | None = None
        try:
            memory = settings.memory()
            memory.db.create()
        except Exception as error:
            # /events answers 503 until the memory is back (nothing acknowledged unstored).
            problems.append(f"customer memory not opened: {type(error).__name__}: {error}")
            logger.error("starting degraded: %s", problems[-1])
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

            def read_context(customer_id: str, now: datetime) -> tuple[Any, Any, int]:
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
        runtime = cls(decider, adapter, reader, decision_writer, event_writer, memory,
                      problems, decision_io, breaker)  # fmt: skip
        if memory is not None:
            decider.apologies = RuntimeApologies(runtime)
            from serving.outbox import open_triggered  # triggers, outbox, scheduler thread

            runtime.triggered = open_triggered(runtime, settings, triggers, read)
        return runtime

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
        """Store one validated event (``serving.api.Event`` as a dict), then push its state.

        The event is committed to the ledger (``memory.ledger``) before anything else; the
        customer's new state is then pushed to the online store, so the next decision sees it.
        A retried ``event_id`` changes nothing but pushes the stored state again (a retry after
        a failed push heals it).

        Raises ``RuntimeError`` (or the store's error) when the memory or the online store
        cannot be written: the caller answers 503, and the event is not acknowledged.
        """
        if self.adapter is None or self.reader is None:
            raise RuntimeError("feature store not opened")
        if self.memory is None:
            raise RuntimeError("customer memory not opened")
        self.breaker.check()  # a store that just missed a deadline: 503 at once, not after one
        customer_id = str(event["customer_id"])
        fields = {k: v for k, v in event.items() if v is not None}
        [(stored, state_ts)] = self.breaker.call(self.reader.read_with_timestamps, [customer_id])
        applied = self.memory.append(fields, lambda: stored)
        state = applied.state
        if state is None:  # a duplicate: the stored state, pushed again
            state = self.memory.state(customer_id)
        if state is not None:
            self.push_state(customer_id, state, state_ts)
        if not applied.duplicate:
            self._log_event(applied, event)
            if self.triggered is not None:  # the event is stored: its triggers may fire
                self.triggered.after_events([(fields, applied)])
        return ack(applied)

    def push_state(self, customer_id: str, state: Mapping[str, Any], state_ts: Any) -> None:
        """Push a folded state to the online store, stamped after what the store holds.

        The stamp is the later of now and just after the stored row's: Redis ignores a row not
        newer than the stored one (two events in one second lost the second), and a stamp of
        the event's own time could be older than the materialized row.
        """
        assert self.adapter is not None
        deferred = getattr(self._deferred, "states", None)
        if deferred is not None:  # this thread is in ``pushes_deferred``: pushed at its end
            deferred[customer_id] = (state, state_ts)
            return
        stamp = pd.Timestamp(datetime.now(UTC))
        previous = folding.stamp(state_ts)
        if previous is not None and previous >= stamp:
            stamp = previous + pd.Timedelta(microseconds=1)
        frame = state_frame({customer_id: state}, stamp)
        with self._push_lock:
            self.breaker.call(self.adapter.push, frame)

    @contextlib.contextmanager
    def pushes_deferred(self) -> Iterator[None]:
        """Within it, this thread's ``push_state`` calls are collected and pushed in ONE push
        at the end (the trigger scheduler's wave: a Feast push costs ≈ 80 ms on SQLite, and
        each apology credit given pushes its ``compensation_granted`` fact). Other threads
        push as usual. The facts are in the ledger already; if the final push fails, the
        error is raised and the one-shot claims still keep a second credit from being given.
        """
        states: dict[str, tuple[Mapping[str, Any], Any]] = {}
        self._deferred.states = states
        try:
            yield
        finally:
            self._deferred.states = None
        if states and self.adapter is not None:
            stamp = pd.Timestamp(datetime.now(UTC))
            previous = [folding.stamp(ts) for _, ts in states.values()]
            latest = max((p for p in previous if p is not None), default=None)
            if latest is not None and latest >= stamp:
                stamp = latest + pd.Timedelta(microseconds=1)
            frame = state_frame({c: s for c, (s, _) in states.items()}, stamp)
            with self._push_lock:
                self.breaker.call(self.adapter.push, frame)

    def _log_event(self, applied: Applied, event: Mapping[str, Any]) -> None:
        head = ("customer_id", "type", "ts", "event_id")
        payload = {k: v for k, v in event.items() if v is not None and k not in head}
        self.event_writer.append(
            {
                "event_id": applied.event_id,
                "customer_id": applied.customer_id,
                "type": applied.type,
                "ts": pd.Timestamp(event["ts"]).tz_convert("UTC"),
                "received_at": datetime.now(UTC),
                "payload": json.dumps(payload, default=str) if payload else None,
            }
        )

    def close(self) -> None:
        """Flush and close the logs (shutdown hook: SIGTERM loses nothing)."""
        if self.triggered is not None:
            self.triggered.stop()
        self.decision_writer.close()
        self.event_writer.close()
        if self.decision_io is not None:
            self.decision_io.close()
        history = self.decider.history
        if hasattr(history, "close"):
            history.close()
        self.decider.budget.close()


class RuntimeApologies:
    """``serving.decider.Apologies`` on the customer memory: the claim is a row of its
    ``claims`` table; a granted credit is a ``compensation_granted`` fact in the ledger,
    pushed like any event, so the next decision (any worker, host or channel) sees the
    experience compensated and its reasons say so."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @property
    def _memory(self) -> Memory:
        if self.runtime.memory is None:
            raise RuntimeError("customer memory not opened")
        return self.runtime.memory

    def claim(self, customer_id: str, key: str, now: datetime) -> bool:
        return self._memory.claim(customer_id, key, f"c-{uuid.uuid4().hex}", now)

    def granted(self, customer_id: str, key: str, now: datetime) -> None:
        digest = hashlib.sha1(f"{customer_id}|{key}".encode()).hexdigest()[:32]
        self.runtime.handle_event({"customer_id": customer_id, "type": "compensation_granted",
                                   "ts": now, "event_id": f"apology-{digest}"})  # fmt: skip

    def release(self, customer_id: str, key: str) -> None:
        self._memory.release(customer_id, key)


def refold_after_rebuild(memory: Memory, adapter: Any, raw: Any, folded_seq: int) -> int:
    """After ``nba features`` materialized a rebuild that folded the ledger up to
    ``folded_seq``: align the memory with it and push the states the rebuild does not hold
    (events that arrived during the rebuild, customers the raw export does not know).

    Returns the number of customers pushed.
    """
    customers = raw.customers["customer_id"].astype(str)
    remaining = memory.reset_after_rebuild(raw.service_cases, raw.flights, customers, folded_seq)
    if not remaining:
        return 0
    known = set(customers)
    rows = adapter.direct_reader().read_with_timestamps(remaining)
    states: dict[str, Mapping[str, Any]] = {}
    for customer_id, (stored, _) in zip(remaining, rows, strict=True):
        if customer_id in known:
            base = {k: stored.get(k) for k in schema.REALTIME}
            states[customer_id] = memory.refold(customer_id, base, folded_seq)
        else:
            state = memory.state(customer_id)
            if state is not None:
                states[customer_id] = state
    if states:
        # Stamped now: after the materialized rows (stamped at the snapshot), so Redis keeps them.
        adapter.push(state_frame(states, pd.Timestamp(datetime.now(UTC))))
    return len(states)
