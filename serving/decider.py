"""The decision brain behind ``/decide`` and ``/decide_batch``: pure Python, no web framework.

One ``Decider`` is built per worker at start-up with everything it needs already loaded (the
model, an online-feature reader, the compiled guardrails, the costs, the apology budget, the
promo history, the log sink); a request then costs one online read, three small LightGBM
predictions and some dictionary work. The HTTP layer (``serving.service``) only validates JSON
and calls ``decide``; tests and benchmarks call it directly with stubs.

Per request:

1. stored features from the online store, derived ones against the request time
   (``features.derive``, the same code as training);
2. per-action uplifts and expected net values (``training.value.expected_value``);
3. guardrails on features + server-side context (``channel``, ``promos_7d`` from the promo
   history, ``apology_budget_left`` from the pacer);
4. arbitration with optional exploration (``serving.policy.arbitrate``); a chosen apology credit
   takes one from the budget (re-arbitrated without it if a concurrent request took the last);
   a chosen promo is recorded in the shared history before the answer leaves; a customer of the
   global control group (``serving.holdout``) is decided again without marketing actions, and
   the log keeps the action the policy intended (``intended_action``, ``policy = holdout``);
5. reasons when asked (``serving.explain``); one decision-log row queued for the writer.

Store calls: one decision is written once, as ``_steps``, a generator that yields its store
operations (read the features, with the promo count and the budget when one store has them;
take an apology credit; record a promo) and is sent their answers. ``decide`` answers them
with blocking calls; ``decide_async`` awaits them through a ``DecisionIO``, so that a service
worker on Redis decides other requests while Redis answers and concurrent requests share round
trips (``serving.redisreads.PipelinedDecisionIO``). Same steps, same answers (tested).

Degraded mode: if the features or the model cannot be read (or the model fails), the answer is
``none`` with ``degraded: true``, the cause is logged (without feature values) and kept in the
decision log's ``degraded_reason``; a promo that cannot be recorded in the history is not given
(same). A valid request never raises out of ``decide``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np

from features import decision_log, schema
from features.columns import FeatureColumns
from features.contract import ACTIONS
from features.derive import derive_columns, derive_row
from serving import explain, guardrails
from serving.advice import advises
from serving.advice import one as advice_one
from serving.advice import reasons as advice_reasons
from serving.advice import values_of as advice_values
from serving.batch import Batch
from serving.decision import (
    NEW_VISITOR,
    Apologies,
    ColumnReader,
    Context,
    ContextReader,
    DecisionIO,
    LoadedModel,
    LogColumns,
    ManyReader,
    Reader,
    Request,
    Steps,
    _brief,
    _response,
    apology_key,
    log_record,
)
from serving.guardrails import RuleSet
from serving.history import ContactHistory, contact_counts
from serving.holdout import HOLDOUT_REASON, Holdout
from serving.policy import (
    NONE,
    DailyBudget,
    Decision,
    Ranked,
    arbitrate,
)
from training.served import Advice
from training.value import ActionCosts, expected_value

logger = logging.getLogger(__name__)

#: The guardrail a budget race falls back on (its rule name must exist in the rule file).
BUDGET_RULE: Final = "apology_daily_budget"
#: ``decide_batch`` below this many requests runs ``decide`` per request: measured here, a batch
#: of 8 took 4.5 ms on the array path against 8 x 0.27 ms, and from 32 the array path wins.
SMALL_BATCH: Final = 32
#: Degraded-mode causes are logged at most once per this many seconds each (no log flood when
#: the store is down under load).
LOG_EVERY_SECONDS: Final = 10.0

# The store operations of ``Decider._steps`` (compared by identity on the request path).
_READ: Final = "read"
_TAKE: Final = "take"
_ADD_CONTACT: Final = "add_contact"
_CLAIM: Final = "claim"
_GRANTED: Final = "granted"
_RELEASE: Final = "release"


def _resume(
    steps: Steps, answer: Any, error: Exception | None
) -> tuple[tuple[Any, ...] | None, dict[str, Any]]:
    """Send ``answer`` (or throw ``error``) into ``steps``: (its next operation, {}), or
    (None, the response) when the decision is done."""
    try:
        return (steps.throw(error) if error is not None else steps.send(answer)), {}
    except StopIteration as done:
        return None, done.value


class Decider:
    """Decides for one request or a batch; see the module docstring.

    Args:
        model: the loaded model, or None (every answer is then degraded).
        read: one customer's stored features (raises when the store is unreachable).
        read_many: the same for many customers in one call.
        rules: compiled guardrails.
        costs: the value model's action costs.
        budget: the apology-credit pacer.
        history: shared promo history.
        log: sink for decision-log rows (``LogWriter.append``); None: no log.
        read_columns: many customers' stored features as columns (``read_columns`` of
            ``features.store.DirectOnlineReader``); default: ``read_many``'s rows converted.
        apologies: the customer memory's claims (``Apologies``): one apology credit per
            negative experience, whatever worker, host or channel decides it.
        read_context: for ``decide``, one call that returns what ``read``, the history's
            ``count`` and the budget's ``remaining`` would (``serving.redisreads``: one Redis
            round trip); default: the three calls.
        log_columns: sink for a batch's log rows as columns (``LogWriter.append_columns``);
            default: the rows one by one to ``log``.
        epsilon: exploration probability.
        rng: exploration draws.
        clock: the current time (tz-aware).
        top_contributions: feature contributions listed with ``explain``.
        holdout: the global control group (``serving.holdout``); None: nobody is held out.
    """

    def __init__(
        self,
        *,
        model: LoadedModel | None,
        read: Reader,
        read_many: ManyReader,
        rules: RuleSet,
        costs: ActionCosts,
        budget: DailyBudget,
        history: ContactHistory,
        log: Callable[[Mapping[str, Any]], None] | None = None,
        epsilon: float = 0.0,
        rng: random.Random | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        top_contributions: int = 3,
        read_columns: ColumnReader | None = None,
        log_columns: Callable[[LogColumns, int], None] | None = None,
        read_context: ContextReader | None = None,
        apologies: Apologies | None = None,
        holdout: Holdout | None = None,
    ) -> None:
        if BUDGET_RULE not in rules.names:
            raise guardrails.GuardrailError(
                f"{rules.source}: the decision service needs a rule named {BUDGET_RULE!r} "
                "(the apology-credit budget)"
            )
        self.model = model
        self._read = read
        self._read_many = read_many
        self.rules = rules
        self.costs = costs
        self.budget = budget
        self.history = history
        self._log = log
        self._read_columns_fn = read_columns
        self._read_context = read_context
        #: One apology credit per negative experience (``Apologies``), or None: not enforced.
        self.apologies = apologies
        #: Batches smaller than this are decided one request at a time (see ``decide_batch``).
        self.small_batch = SMALL_BATCH
        self._log_columns = log_columns
        self.epsilon = epsilon
        self._rng = rng or random.Random()
        self._clock = clock
        self.top_contributions = top_contributions
        self.holdout = holdout
        self._last_warned: dict[str, float] = {}
        if model is not None:
            self._names: list[str] = list(model.estimator.feature_names_)
            self._actions: tuple[str, ...] = tuple(model.estimator.actions_)
            self._columns = [ACTIONS.index(a) for a in self._actions]

    # ---------------------------------------------------------------- public

    def decide(self, request: Request) -> dict[str, Any]:
        """The contract's ``/decide`` response for one request (and its log row queued)."""
        steps = self._steps(request)
        op: tuple[Any, ...] | None = next(steps)
        response: dict[str, Any] = {}
        while op is not None:
            answer: Any = None
            error: Exception | None = None
            try:
                if op[0] is _READ:
                    answer = self._read_now(op[1], op[2])
                elif op[0] is _TAKE:
                    answer = self.budget.take()
                elif op[0] is _ADD_CONTACT:
                    self.history.add(op[1], op[2], op[3], op[4])
                else:
                    answer = self._apology_op(op)
            except Exception as failed:
                error = failed
            op, response = _resume(steps, answer, error)
        return response

    async def decide_async(self, request: Request, io: DecisionIO) -> dict[str, Any]:
        """``decide`` with its reads and writes awaited through ``io`` (an event loop's path).

        The same steps as ``decide`` (``_steps``), so the same answer for the same state; only
        the store calls differ: ``io`` reads the features, promo count and budget together and
        can share one round trip between concurrent requests (``serving.redisreads``).
        """
        steps = self._steps(request)
        op: tuple[Any, ...] | None = next(steps)
        response: dict[str, Any] = {}
        while op is not None:
            answer: Any = None
            error: Exception | None = None
            try:
                if op[0] is _READ:
                    answer = await io.read(op[1], op[2])
                elif op[0] is _TAKE:
                    answer = await io.take_credit()
                elif op[0] is _ADD_CONTACT:
                    await io.add_contact(op[1], op[2], op[3], op[4])
                else:  # rare (an apology credit): the memory's blocking call, off the loop
                    answer = await asyncio.to_thread(self._apology_op, op)
            except Exception as failed:
                error = failed
            op, response = _resume(steps, answer, error)
        return response

    def _apology_op(self, op: tuple[Any, ...]) -> Any:
        assert self.apologies is not None
        if op[0] is _CLAIM:
            return self.apologies.claim(op[1], op[2], op[3])
        if op[0] is _GRANTED:
            return self.apologies.granted(op[1], op[2], op[3])
        return self.apologies.release(op[1], op[2])

    def decide_batch(self, requests: Sequence[Request]) -> list[dict[str, Any]]:
        """``decide`` for many requests, as arrays: one online read and one model call.

        The features are read as columns (``features.columns``), derived, scored, checked by
        the guardrails (``serving.policy.evaluate_batch``) and arbitrated (``policy.choose``)
        for every request at once; the per-request work left is building the answers. The
        shared state is then applied in request order, exactly as a series of ``/decide``
        calls would: each chosen apology credit takes one from the budget, and when the budget
        runs out the requests from there on are decided again without it; a customer listed
        twice sees the promo given to his earlier entry (at most one promo). Exploration
        draws come from the decider's generator.
        """
        if not requests:
            return []
        if len(requests) < self.small_batch:
            # The array path has ≈ 3 ms of fixed cost (frames, vectorized rules): below this
            # size a series of single decisions, which it equals, is faster.
            return [self.decide(request) for request in requests]
        started = time.perf_counter()
        now = self._clock()
        ids = [r.customer_id for r in requests]
        try:
            columns = self._read_columns(ids)
        except Exception as error:
            reason = f"feature store unavailable: {_brief(error)}"
            return [self._degraded(r, now, reason, started) for r in requests]
        derived = derive_columns({name: columns.datetimes(name) for name in _TIMESTAMPS}, now)
        failure = None
        values = uplifts = None
        if self.model is None:
            failure = "no model loaded"
        else:
            try:
                X = np.column_stack(
                    [
                        derived[name] if name in derived else columns.numeric(name)
                        for name in self._names
                    ]
                ).astype(np.float64)
                values, uplifts = self._score(X)
            except Exception as error:
                failure = f"model failed: {_brief(error)}"
        if failure is not None:
            out = []
            for i, request in enumerate(requests):
                row = {**columns.row(i), **{k: v[i].item() for k, v in derived.items()}}
                found = columns.present["marketing_opt_in"][i]
                out.append(self._degraded(request, now, failure, started, row, bool(found)))
            return out
        assert values is not None and uplifts is not None
        batch = Batch(self, requests, columns, derived, (X, values, uplifts), now)
        batch.settle()
        responses = batch.responses()
        self._log_batch(batch, responses, started)
        return responses

    @property
    def ready(self) -> bool:
        """Whether a model is loaded (the reader is checked by the service's readiness probe)."""
        return self.model is not None

    # ---------------------------------------------------------------- internals

    def _read_columns(self, ids: Sequence[str]) -> FeatureColumns:
        if self._read_columns_fn is not None:
            return self._read_columns_fn(ids)
        return FeatureColumns.from_records(list(self._read_many(ids)))

    def _log_batch(self, batch: Batch, responses: Sequence[Mapping[str, Any]],
                   started: float) -> None:  # fmt: skip
        if self._log is None and self._log_columns is None:
            return
        columns = batch.log_columns(responses, (time.perf_counter() - started) * 1000.0)
        if self._log_columns is not None:
            self._log_columns(columns, batch.n)
            return
        assert self._log is not None
        for record in decision_log.column_rows(columns, batch.n):
            self._log(record)

    def _vector(self, row: Mapping[str, Any]) -> np.ndarray:
        out = np.empty(len(self._names), dtype=np.float64)
        for i, name in enumerate(self._names):
            value = row.get(name)
            out[i] = math.nan if value is None else float(value)
        return out

    def _score(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Expected values and conversion uplifts, ``(n, 4)`` each in ``ACTIONS`` order."""
        assert self.model is not None
        effects = self.model.estimator.predict_effects(X)
        ev = expected_value(effects, self._actions, self.costs)
        values = np.zeros((len(X), len(ACTIONS)))
        uplifts = np.zeros((len(X), len(ACTIONS)))
        for j, action in enumerate(self._actions):
            values[:, ACTIONS.index(action)] = ev[:, j]
            uplifts[:, ACTIONS.index(action)] = effects["converted"][:, j]
        return values, uplifts

    def _score_one(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``_score`` for one row through the estimator's single-row path when it has one."""
        assert self.model is not None
        estimator = self.model.estimator
        row_path = getattr(estimator, "predict_effects_row", None)
        effects = row_path(x) if row_path is not None else estimator.predict_effects(x[None, :])
        ev = expected_value(effects, self._actions, self.costs)[0]
        values = np.zeros(len(ACTIONS))
        uplifts = np.zeros(len(ACTIONS))
        for j, column in enumerate(self._columns):
            values[column] = ev[j]
            uplifts[column] = effects["converted"][0, j]
        return values, uplifts

    def _read_now(self, customer_id: str, now: datetime) -> Context:
        """``_READ``'s answer from the decider's own readers (``decide``)."""
        if self._read_context is not None:
            stored, contacts, left = self._read_context(customer_id, now)
            return stored, (contacts, left)
        return self._read(customer_id), None

    def _steps(self, request: Request) -> Steps:
        """One decision as a generator of its store operations (sans-IO).

        Yields ``(_READ, customer_id, now)`` (answer: stored features and, when read with them,
        ``(recent contacts, apology_budget_left)``), for a chosen apology credit ``(_CLAIM,
        ...)`` (the experience's one-shot claim), ``(_TAKE,)`` (whether the budget granted it)
        and ``(_GRANTED, ...)`` or ``(_RELEASE, ...)``, and ``(_ADD_CONTACT, customer_id, now,
        action, channel)`` once an action is chosen; returns the response. A failed operation
        is thrown in: a failed read degrades the decision, a refused or failed credit
        re-decides without it, and an action that cannot be recorded is not given (answer
        ``none``, degraded: the contact caps could not see it).
        """
        started = time.perf_counter()
        now = self._clock()
        member = self.holdout is not None and self.holdout.contains(request.customer_id)
        try:
            stored, server_side = yield (_READ, request.customer_id, now)
        except Exception as error:
            return self._degraded(request, now, f"feature store unavailable: {_brief(error)}",
                                  started, member=member)  # fmt: skip
        row = {**stored, **derive_row(stored, now)}
        found = stored.get("marketing_opt_in") is not None
        if self.model is None:
            return self._degraded(request, now, "no model loaded", started, row, found, member)
        row["channel"] = request.channel
        read_as = {k: row.get(k) for k in NEW_VISITOR}  # the log keeps what was read
        try:
            x = self._vector(row)
            value_row, uplift_row = self._score_one(x)
            if not found:
                # A new visitor: nothing on record is no case, no disruption, no opt-out
                # (scored as unknown; judged as what it is, so blocked_by is honest).
                row.update(NEW_VISITOR)
            estimator = self.model.estimator
            advice = estimator.advise_one(x, row, value_row) if advises(estimator) else None
        except Exception as error:
            row.update(read_as)
            return self._degraded(request, now, f"model failed: {_brief(error)}", started,
                                  row, found, member)  # fmt: skip
        values = dict(zip(ACTIONS, value_row.tolist(), strict=True))
        if advice is not None:  # the served policy's own values (a tree's leaf, say)
            values = advice_values(advice)
        scored = (values, dict(zip(ACTIONS, uplift_row.tolist(), strict=True)), advice)
        if server_side is None:
            contacts = self.history.contacts(request.customer_id, now)
            row["apology_budget_left"] = self.budget.remaining()
        else:  # read with the features (``read_context``, ``DecisionIO.read``)
            contacts, row["apology_budget_left"] = server_side
        row.update(contact_counts(contacts, now, request.channel))
        blocked = guardrails.evaluate(self.rules, row)
        decision, intended = self._arbitrate(scored, blocked, request, member)
        key = apology_key(row)
        if decision.action == "apology_credit" and self.apologies is not None:
            try:
                claimed = yield (_CLAIM, request.customer_id, key, now)
            except Exception as error:  # fail closed: no credit rather than a second one
                self._warn("claims", f"apology claims unavailable: {_brief(error)}")
                claimed = False
            if not claimed:
                # This experience was compensated by another decision (worker, host, channel).
                row["compensated_since_last_negative"] = True
                blocked = guardrails.evaluate(self.rules, row)
                decision, intended = self._arbitrate(scored, blocked, request, member)
        if decision.action == "apology_credit":
            try:
                granted = yield (_TAKE,)
            except Exception as error:  # fail closed: no credit rather than too many
                self._warn("budget", f"apology budget unavailable: {_brief(error)}")
                granted = False
            if self.apologies is not None:
                try:
                    if granted:
                        yield (_GRANTED, request.customer_id, key, now)
                    else:
                        yield (_RELEASE, request.customer_id, key)
                except Exception as error:  # not recorded: not given (fail closed)
                    self._warn("claims", f"apology not recorded: {_brief(error)}")
                    granted = False
            if not granted:
                # A concurrent request took the last credit of the pace: decide again without
                # (the policy would have been refused it too).
                row["apology_budget_left"] = 0
                blocked = guardrails.evaluate(self.rules, row)
                decision, intended = self._arbitrate(scored, blocked, request, member)
        if decision.action != NONE:
            try:
                yield (_ADD_CONTACT, request.customer_id, now, decision.action, request.channel)
            except Exception as error:  # not recorded: not given (the caps could not see it)
                row.update(read_as)
                return self._degraded(request, now,
                                      f"contact history unavailable: {_brief(error)}",
                                      started, row, found, member)  # fmt: skip

        reasons: list[str] = []
        if request.explain:
            reasons = self._reasons(request, row, found, decision, blocked)
            reasons += advice_reasons(advice)
            if member:
                reasons.append(HOLDOUT_REASON)
        row.update(read_as)
        response = _response(request, decision, reasons, self.model, False, found, member)
        self._write_log(request, now, decision, response, row, found, None, started, intended)
        return response

    def _arbitrate(
        self,
        scored: tuple[Mapping[str, float], Mapping[str, float], Advice | None],
        blocked: Mapping[str, Sequence[str]],
        request: Request,
        member: bool,
    ) -> tuple[Decision, str]:
        """The decision, and the action the policy intended: for the global control group the
        intended one is kept for the log, then marketing is withheld and the rest re-ranked.
        ``scored``: values, uplifts and the served policy's advice (``serving.advice``)."""
        values, uplifts, advice = scored
        blocked, prefer, lowers = advice_one(advice, blocked)
        decision = arbitrate(values, uplifts, blocked, request.candidates, self.epsilon,
                             self._rng, prefer, lowers)  # fmt: skip
        if not member:
            return decision, decision.action
        assert self.holdout is not None
        held = arbitrate(values, uplifts, self.holdout.block(blocked), request.candidates,
                         prefer=prefer, lowers=lowers)  # fmt: skip
        return held, decision.action

    def _reasons(
        self,
        request: Request,
        row: Mapping[str, Any],
        found: bool,
        decision: Decision,
        blocked: Mapping[str, Sequence[str]],
    ) -> list[str]:
        out = explain.facts(row, found)
        shown = {a: blocked[a] for a in request.candidates if a in blocked}
        out += guardrails.reasons(self.rules, row, shown)
        # Explain the chosen action, or when it is ``none`` the best-valued other candidate:
        # what the model saw for it is the interesting part.
        target = decision.action
        if target == NONE:
            target = next((r.action for r in decision.ranking if r.action != NONE), NONE)
        if target != NONE and self.model is not None and self.top_contributions > 0:
            try:
                x = self._vector(row)
                estimator = self.model.estimator
                if hasattr(estimator, "contributions_row"):
                    contrib = estimator.contributions_row(x, target)
                else:
                    frame = estimator.contributions(x[None, :])
                    contrib = frame.loc[target].to_numpy()[: len(self._names)]
                out += explain.contribution_texts(self._names, x, contrib, target,
                                                  self.top_contributions)  # fmt: skip
            except Exception as error:  # explanations never fail a decision
                self._warn("explain", f"contributions failed: {_brief(error)}")
        return out

    def _degraded(
        self,
        request: Request,
        now: datetime,
        reason: str,
        started: float,
        row: Mapping[str, Any] | None = None,
        found: bool = False,
        member: bool | None = None,
    ) -> dict[str, Any]:
        if member is None:
            member = self.holdout is not None and self.holdout.contains(request.customer_id)
        self._warn(reason.split(":")[0], f"degraded decision: {reason}")
        ranking = tuple(
            Ranked(a, a == NONE, 0.0 if a == NONE else math.nan, 0.0 if a == NONE else math.nan, ())
            for a in (NONE, *[c for c in request.candidates if c != NONE])
        )
        decision = Decision(NONE, 1.0, ranking, False)
        reasons = [f"degraded: {reason}; answering the safe action"] if request.explain else []
        response = _response(request, decision, reasons, self.model, True, found, member)
        self._write_log(request, now, decision, response, row or {}, found, reason, started,
                        NONE)  # fmt: skip
        return response

    def _write_log(
        self,
        request: Request,
        now: datetime,
        decision: Decision,
        response: Mapping[str, Any],
        row: Mapping[str, Any],
        found: bool,
        degraded_reason: str | None,
        started: float,
        intended: str,
    ) -> None:
        if self._log is None:
            return
        version = self.model.version if self.model is not None else None
        record = log_record(request, now, decision, response, row, found, degraded_reason,
                            intended, version)  # fmt: skip
        record["latency_ms"] = (time.perf_counter() - started) * 1000.0
        self._log(record)

    def _warn(self, key: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warned.get(key, -math.inf) >= LOG_EVERY_SECONDS:
            self._last_warned[key] = now
            logger.warning(message)


#: Stored timestamp features (the derived durations are measured from them).
_TIMESTAMPS: Final = tuple(n for n, kind in schema.STORED.items() if kind == "timestamp")
