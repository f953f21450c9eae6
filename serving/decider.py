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
import json
import logging
import math
import os
import random
import time
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import numpy as np
import pandas as pd

from features import decision_log, schema
from features.columns import FeatureColumns
from features.contract import ACTIONS
from features.derive import derive_columns, derive_row
from memory.fold import empty_state, served
from serving import explain, guardrails
from serving.guardrails import RuleSet
from serving.history import COUNTS, Contact, ContactHistory, contact_counts
from serving.history import micros as _micros
from serving.holdout import HOLDOUT_REASON, HOLDOUT_RULE, Holdout, policy_label
from serving.policy import (
    NONE,
    DailyBudget,
    Decision,
    Ranked,
    arbitrate,
    choose,
    evaluate_batch,
    ranking_order,
)
from training.value import ActionCosts, expected_value

logger = logging.getLogger(__name__)

#: Channel assumed when a request gives none (booking sites call at search time).
DEFAULT_CHANNEL: Final = "web"
#: What a customer with nothing on record (a new visitor) is judged with by the guardrails:
#: no open case, no disruption, no unsubscribe, no miles. Consent stays unknown (missing): the
#: rule ``no_marketing_consent_on_record`` names it.
NEW_VISITOR: Final[dict[str, Any]] = {
    k: v for k, v in served(empty_state()).items() if v is not None and k != "marketing_opt_in"
}
#: The guardrail a budget race falls back on (its rule name must exist in the rule file).
BUDGET_RULE: Final = "apology_daily_budget"
#: ``decide_batch`` below this many requests runs ``decide`` per request: measured here, a batch
#: of 8 took 4.5 ms on the array path against 8 x 0.27 ms, and from 32 the array path wins.
SMALL_BATCH: Final = 32
#: Degraded-mode causes are logged at most once per this many seconds each (no log flood when
#: the store is down under load).
LOG_EVERY_SECONDS: Final = 10.0

Reader = Callable[[str], Mapping[str, Any]]
ManyReader = Callable[[Sequence[str]], Sequence[Mapping[str, Any]]]
ColumnReader = Callable[[Sequence[str]], FeatureColumns]
#: (customer, decision time) -> (stored features, recent contacts or None, credits left).
ContextReader = Callable[[str, datetime], tuple[Mapping[str, Any], list[Contact] | None, int]]
#: A batch of decision-log rows as columns: name -> list, array, or (array, null mask).
LogColumns = Mapping[str, Any]
#: A decision's reads: stored features, and ``(recent contacts, apology_budget_left)`` when
#: read with them (None: the decider asks its history and budget itself).
Context = tuple[Mapping[str, Any], tuple[list[Contact] | None, int] | None]
#: ``Decider._steps``: yields store operations, is sent their answers, returns the response.
Steps = Generator[tuple[Any, ...], Any, dict[str, Any]]

# The store operations of ``Decider._steps`` (compared by identity on the request path).
_READ: Final = "read"
_TAKE: Final = "take"
_ADD_CONTACT: Final = "add_contact"
_CLAIM: Final = "claim"
_GRANTED: Final = "granted"
_RELEASE: Final = "release"


class Apologies(Protocol):
    """One apology credit per negative experience (the customer memory's claims).

    ``claim`` takes the experience's one-shot claim (False: another decision holds it);
    ``granted`` records the credit as the customer's compensation (the next decision sees
    it); ``release`` gives a claim back when the budget then refused the credit.
    """

    def claim(self, customer_id: str, key: str, now: datetime) -> bool: ...

    def granted(self, customer_id: str, key: str, now: datetime) -> None: ...

    def release(self, customer_id: str, key: str) -> None: ...


def apology_key(row: Mapping[str, Any]) -> str:
    """The negative experience an apology credit answers: its time, as the claim's key."""
    return f"apology:{row.get('last_negative_at')}"


def _resume(
    steps: Steps, answer: Any, error: Exception | None
) -> tuple[tuple[Any, ...] | None, dict[str, Any]]:
    """Send ``answer`` (or throw ``error``) into ``steps``: (its next operation, {}), or
    (None, the response) when the decision is done."""
    try:
        return (steps.throw(error) if error is not None else steps.send(answer)), {}
    except StopIteration as done:
        return None, done.value


class DecisionIO(Protocol):
    """The store calls of one decision, awaited (``Decider.decide_async``).

    ``serving.redisreads.PipelinedDecisionIO`` implements it on Redis, sharing round trips
    between the concurrent decisions of an event loop.
    """

    async def read(self, customer_id: str, now: datetime) -> Context:
        """Stored features and ``(recent contacts or None, apology credits left)``; raises
        when the features cannot be read."""
        ...

    async def take_credit(self) -> bool:
        """Take one apology credit from the shared budget if the pace allows it now."""
        ...

    async def add_contact(self, customer_id: str, at: datetime, action: str, channel: str) -> None:
        """Record ``action`` given on ``channel`` at ``at``; raises when it cannot be recorded."""
        ...


@dataclass(frozen=True)
class Request:
    """A validated decision request (the HTTP layer has checked types and names)."""

    customer_id: str
    context: Mapping[str, Any] = field(default_factory=dict)
    candidates: tuple[str, ...] = ACTIONS
    explain: bool = False

    @property
    def channel(self) -> str:
        return str(self.context.get("channel") or DEFAULT_CHANNEL)


@dataclass
class LoadedModel:
    """A fitted ``MultiActionUplift`` and the label it is logged under (``nba-uplift/7``)."""

    estimator: Any
    version: str


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
        batch = _Batch(self, requests, columns, derived, values, uplifts, now)
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

    def _log_batch(self, batch: _Batch, responses: Sequence[Mapping[str, Any]],
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
        try:
            value_row, uplift_row = self._score_one(self._vector(row))
        except Exception as error:
            return self._degraded(request, now, f"model failed: {_brief(error)}", started,
                                  row, found, member)  # fmt: skip
        values = dict(zip(ACTIONS, value_row.tolist(), strict=True))
        uplifts = dict(zip(ACTIONS, uplift_row.tolist(), strict=True))

        row["channel"] = request.channel
        read_as = {k: row.get(k) for k in NEW_VISITOR}  # the log keeps what was read
        if not found:
            # A new visitor: nothing on record is no case, no disruption, no opt-out (scored
            # as unknown above; judged here as what it is, so blocked_by is honest).
            row.update(NEW_VISITOR)
        if server_side is None:
            contacts = self.history.contacts(request.customer_id, now)
            row["apology_budget_left"] = self.budget.remaining()
        else:  # read with the features (``read_context``, ``DecisionIO.read``)
            contacts, row["apology_budget_left"] = server_side
        row.update(contact_counts(contacts, now, request.channel))
        blocked = guardrails.evaluate(self.rules, row)
        decision, intended = self._arbitrate(values, uplifts, blocked, request, member)
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
                decision, intended = self._arbitrate(values, uplifts, blocked, request, member)
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
                decision, intended = self._arbitrate(values, uplifts, blocked, request, member)
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
            if member:
                reasons.append(HOLDOUT_REASON)
        row.update(read_as)
        response = _response(request, decision, reasons, self.model, False, found, member)
        self._write_log(request, now, decision, response, row, found, None, started, intended)
        return response

    def _arbitrate(
        self,
        values: Mapping[str, float],
        uplifts: Mapping[str, float],
        blocked: Mapping[str, Sequence[str]],
        request: Request,
        member: bool,
    ) -> tuple[Decision, str]:
        """The decision, and the action the policy intended: for the global control group the
        intended one is kept for the log, then marketing is withheld and the rest re-ranked."""
        decision = arbitrate(values, uplifts, blocked, request.candidates, self.epsilon,
                             self._rng)  # fmt: skip
        if not member:
            return decision, decision.action
        assert self.holdout is not None
        held = arbitrate(values, uplifts, self.holdout.block(blocked), request.candidates)
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
        record: dict[str, Any] = {
            "decision_id": response["decision_id"],
            "customer_id": request.customer_id,
            "decided_at": now,
            "action": decision.action,
            "policy": policy_label(response["holdout"], decision.explored, version),
            "propensity": decision.propensity,
            "channel": request.channel,
            "intended_action": intended,
            "model_version": version,
            "degraded": degraded_reason is not None,
            "degraded_reason": degraded_reason,
            "explored": decision.explored,
            "candidates": ";".join(request.candidates),
            "context": json.dumps(dict(request.context), default=str) if request.context else None,
            "features_found": found,
        }
        for ranked in decision.ranking:
            a = ranked.action
            record[f"uplift_{a}"] = _finite(ranked.uplift)
            record[f"value_{a}"] = _finite(ranked.expected_value)
            record[f"eligible_{a}"] = ranked.eligible
            record[f"blocked_by_{a}"] = ";".join(ranked.blocked_by)
        for name in schema.MODEL_FEATURES:
            value = row.get(name)
            record[f"f_{name}"] = None if value is None else float(value)
        record["latency_ms"] = (time.perf_counter() - started) * 1000.0
        self._log(record)

    def _warn(self, key: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warned.get(key, -math.inf) >= LOG_EVERY_SECONDS:
            self._last_warned[key] = now
            logger.warning(message)


#: Stored timestamp features (the derived durations are measured from them).
_TIMESTAMPS: Final = tuple(n for n, kind in schema.STORED.items() if kind == "timestamp")
_PROMO: Final = ACTIONS.index("promo")
_APOLOGY: Final = ACTIONS.index("apology_credit")
_NONE: Final = ACTIONS.index(NONE)
_DEFAULT_CANDIDATES: Final = ";".join(ACTIONS)


class _Batch:
    """One ``decide_batch`` call's arrays: judged and arbitrated together, settled in order."""

    def __init__(
        self,
        decider: Decider,
        requests: Sequence[Request],
        columns: FeatureColumns,
        derived: Mapping[str, np.ndarray],
        values: np.ndarray,
        uplifts: np.ndarray,
        now: datetime,
    ) -> None:
        self.decider = decider
        self.requests = requests
        self.columns = columns
        self.derived = derived
        self.now = now
        self.n = n = len(requests)
        # ``none`` is worth 0 with no uplift, whatever the model says (as in ``arbitrate``).
        values[:, _NONE] = 0.0
        uplifts[:, _NONE] = 0.0
        self.values, self.uplifts = values, uplifts
        self.candidate = np.ones((n, len(ACTIONS)), dtype=bool)
        for i, request in enumerate(requests):
            if request.candidates is not ACTIONS:
                chosen = set(request.candidates)
                self.candidate[i] = [a in chosen or a == NONE for a in ACTIONS]
        self.channels = np.array([r.channel for r in requests], dtype=object)
        self.contacts = _contacts(decider.history, [r.customer_id for r in requests], now)
        self.counts = {name: np.full(n, np.nan) for name in COUNTS}
        for i in range(n):
            self._count(i)
        self.budget_left = np.full(n, decider.budget.remaining(), dtype=np.float64)
        frame: dict[str, Any] = {}
        for name, kind in schema.STORED.items():
            if kind == "string":
                frame[name] = columns.values[name]
            elif kind != "timestamp":
                frame[name] = columns.numeric(name)
        frame.update(derived)
        self.frame = pd.DataFrame(frame, copy=False)
        self.known = np.asarray(columns.present["marketing_opt_in"], dtype=bool)
        if not self.known.all():  # new visitors, judged as in ``Decider._steps``
            for name, value in NEW_VISITOR.items():
                if name in self.frame:
                    self.frame.loc[~self.known, name] = float(value)
        self.eligible = np.zeros((n, len(ACTIONS)), dtype=bool)
        self.blocked_by: list[list[tuple[str, ...]]] = [[] for _ in range(n)]
        self.chosen = np.zeros(n, dtype=np.int64)
        self.propensity = np.ones(n)
        self.explored = np.zeros(n, dtype=bool)
        # The global control group (``serving.holdout``): members' intended action is kept,
        # then their withheld actions are blocked and the choice made again, greedily.
        self.intended = np.zeros(n, dtype=np.int64)
        if decider.holdout is not None:
            self.member = decider.holdout.members(r.customer_id for r in requests)
            self.withheld = decider.holdout.withheld_mask()
        else:
            self.member = np.zeros(n, dtype=bool)
            self.withheld = np.zeros(len(ACTIONS), dtype=bool)
        self._rng = np.random.default_rng(decider._rng.getrandbits(64))
        self._decide(np.arange(n))

    def _decide(self, rows: np.ndarray) -> None:
        """Judge and arbitrate ``rows`` with the current context arrays."""
        if len(rows) == self.n:
            frame = self.frame.copy(deep=False)
        else:
            frame = self.frame.iloc[rows].reset_index(drop=True)
        frame["channel"] = self.channels[rows]
        for name, values in self.counts.items():
            frame[name] = values[rows]
        frame["apology_budget_left"] = self.budget_left[rows]
        blocked, blocked_by = evaluate_batch(self.decider.rules, frame)
        eligible = self.candidate[rows] & ~blocked & np.isfinite(self.values[rows])
        eligible[:, _NONE] = True
        chosen, propensity, explored = choose(
            self.values[rows], eligible, self.decider.epsilon, self._rng
        )
        self.intended[rows] = chosen
        held = self.member[rows]
        if held.any():
            eligible[held] &= ~self.withheld
            chosen[held], propensity[held], explored[held] = choose(
                self.values[rows][held], eligible[held], 0.0, self._rng
            )
            for j in np.flatnonzero(held).tolist():
                blocked_by[j] = [
                    (*rules, HOLDOUT_RULE) if self.withheld[c] else rules
                    for c, rules in enumerate(blocked_by[j])
                ]
        self.eligible[rows] = eligible
        self.chosen[rows], self.propensity[rows], self.explored[rows] = (
            chosen, propensity, explored)  # fmt: skip
        for j, i in enumerate(rows.tolist()):
            self.blocked_by[i] = blocked_by[j]

    def _claim(self, i: int) -> bool:
        """Take request ``i``'s apology claim (``Decider.apologies``); when it is held or
        unreadable, decide ``i`` again as compensated and answer False."""
        apologies = self.decider.apologies
        if apologies is None:
            return True
        request = self.requests[i]
        try:
            if apologies.claim(request.customer_id, apology_key(self.row(i)), self.now):
                return True
        except Exception as error:  # fail closed: no credit rather than a second one
            self.decider._warn("claims", f"apology claims unavailable: {_brief(error)}")
        self.frame.loc[i, "compensated_since_last_negative"] = True
        self._decide(np.array([i]))
        return False

    def _granted(self, i: int) -> None:
        apologies = self.decider.apologies
        if apologies is not None:
            request = self.requests[i]
            apologies.granted(request.customer_id, apology_key(self.row(i)), self.now)

    def _release(self, i: int) -> None:
        apologies = self.decider.apologies
        if apologies is not None:
            request = self.requests[i]
            apologies.release(request.customer_id, apology_key(self.row(i)))

    def _count(self, i: int) -> None:
        """Request ``i``'s contact counts from its contacts (NaN when unreadable)."""
        counted = contact_counts(self.contacts[i], self.now, self.channels[i])
        for name, value in counted.items():
            self.counts[name][i] = np.nan if value is None else value

    def settle(self) -> None:
        """Apply the budget and the promo history in request order (see ``decide_batch``)."""
        ids = [r.customer_id for r in self.requests]
        later: dict[int, list[int]] = {}  # a repeated customer's row -> his rows after it
        if len(set(ids)) != self.n:
            rows_of: dict[str, list[int]] = {}
            for i, customer in enumerate(ids):
                rows_of.setdefault(customer, []).append(i)
            for rows in rows_of.values():
                for k, i in enumerate(rows[:-1]):
                    later[i] = rows[k + 1 :]
        repeated = np.zeros(self.n, dtype=bool)
        for rows in later.values():
            repeated[rows] = True
        stale = np.zeros(self.n, dtype=bool)
        budget = self.decider.budget
        has_later = np.zeros(self.n, dtype=bool)
        has_later[list(later)] = True
        care = np.flatnonzero((self.chosen == _APOLOGY) | repeated | has_later)
        position = 0
        while position < len(care):
            i = int(care[position])
            if stale[i]:  # an earlier entry of this customer got a promo: decide again
                stale[i] = False
                self._decide(np.array([i]))
            changed = False
            if self.chosen[i] == _APOLOGY and not self._claim(i):
                changed = True  # decided again as compensated: no second credit
            for attempt in range(3):
                if self.chosen[i] != _APOLOGY:
                    break
                if budget.take():
                    self._granted(i)
                    left = budget.remaining()
                    if left <= 0 and i + 1 < self.n:
                        # That was the last credit of the pace: the requests after this one see
                        # none left, as a series of /decide calls would.
                        self.budget_left[i + 1 :] = left
                        self._decide(np.arange(i + 1, self.n))
                        changed = True
                    break
                self._release(i)
                # Another worker took the last credit first: this request and the ones after
                # it are decided again with what is left (then with nothing).
                self.budget_left[i:] = budget.remaining() if attempt == 0 else 0
                self._decide(np.arange(i, self.n))
                changed = True
            if changed:
                tail = np.arange(i + 1, self.n)
                needs = (self.chosen[i + 1 :] == _APOLOGY) | repeated[i + 1 :] | has_later[i + 1 :]
                care = np.concatenate([care[: position + 1], tail[needs]])
            if self.chosen[i] != _NONE:
                given = (_micros(self.now), ACTIONS[self.chosen[i]], self.channels[i])
                for j in later.get(i, ()):
                    contacts = self.contacts[j]
                    if contacts is not None:
                        contacts.append(given)
                        self._count(j)
                    stale[j] = True
            position += 1
        chosen = np.flatnonzero(self.chosen != _NONE).tolist()
        if chosen:
            self.decider.history.add_contacts(
                [(ids[i], self.now, ACTIONS[self.chosen[i]], self.channels[i]) for i in chosen]
            )

    def responses(self) -> list[dict[str, Any]]:
        """The contract's response bodies, in request order."""
        decider = self.decider
        version = decider.model.version if decider.model is not None else None
        n, m = self.n, len(ACTIONS)
        order = ranking_order(self.values, self.eligible)
        # Every (request, action) entry in ranking order, built in one pass over flat lists:
        # request i's ranking is then the slice [m * i, m * i + m) (minus non-candidates).
        flat = order.ravel().tolist()
        names = np.asarray(ACTIONS, dtype=object)[order].ravel().tolist()
        eligible = np.take_along_axis(self.eligible, order, axis=1).ravel().tolist()
        values = _finite_list(np.take_along_axis(self.values, order, axis=1).ravel())
        uplifts = _finite_list(np.take_along_axis(self.uplifts, order, axis=1).ravel())
        blocked = [self.blocked_by[k // m][c] for k, c in enumerate(flat)]
        entries = [
            {"action": a, "eligible": e, "uplift": u, "expected_value": v, "blocked_by": list(b)}
            for a, e, u, v, b in zip(names, eligible, uplifts, values, blocked, strict=True)
        ]
        candidate = np.take_along_axis(self.candidate, order, axis=1)
        restricted = set(np.flatnonzero(~candidate.all(axis=1)).tolist())
        self.decision_ids = _decision_ids(n)
        chosen = np.asarray(ACTIONS, dtype=object)[self.chosen].tolist()
        out = [
            {
                "decision_id": decision_id,
                "customer_id": request.customer_id,
                "action": action,
                "ranking": entries[m * i : m * i + m],
                "reasons": [],
                "model_version": version,
                "degraded": False,
                "known_customer": bool(self.known[i]),
                "holdout": member,
            }
            for i, (decision_id, request, action, member) in enumerate(
                zip(self.decision_ids, self.requests, chosen, self.member.tolist(), strict=True)
            )
        ]
        for i in restricted:
            shown = candidate[i].tolist()
            out[i]["ranking"] = [e for e, c in zip(out[i]["ranking"], shown, strict=True) if c]
        for i, request in enumerate(self.requests):
            if request.explain:
                out[i]["reasons"] = self._reasons(i, order[i].tolist())
        return out

    def row(self, i: int) -> dict[str, Any]:
        """Request ``i``'s values as the single-request path sees them (for reasons)."""
        row: dict[str, Any] = self.columns.row(i)
        row.update({name: values[i].item() for name, values in self.derived.items()})
        if not self.known[i]:
            row.update(NEW_VISITOR)
        row["channel"] = self.channels[i]
        for name, values in self.counts.items():
            row[name] = None if np.isnan(values[i]) else int(values[i])
        row["apology_budget_left"] = int(self.budget_left[i])
        return row

    def _reasons(self, i: int, order: list[int]) -> list[str]:
        request = self.requests[i]
        ranking = tuple(
            Ranked(
                ACTIONS[c],
                bool(self.eligible[i, c]),
                float(self.uplifts[i, c]),
                float(self.values[i, c]),
                self.blocked_by[i][c],
            )
            for c in order
            if self.candidate[i, c]
        )
        decision = Decision(ACTIONS[self.chosen[i]], float(self.propensity[i]), ranking,
                            bool(self.explored[i]))  # fmt: skip
        blocked = {ACTIONS[c]: self.blocked_by[i][c] for c in range(len(ACTIONS))
                   if self.blocked_by[i][c]}  # fmt: skip
        found = bool(self.columns.present["marketing_opt_in"][i])
        out = self.decider._reasons(request, self.row(i), found, decision, blocked)
        if self.member[i]:
            out.append(HOLDOUT_REASON)
        return out

    def log_columns(self, responses: Sequence[Mapping[str, Any]], latency_ms: float
                    ) -> dict[str, Any]:  # fmt: skip
        """The batch's decision-log rows as columns (``features.decision_log`` schema)."""
        decider = self.decider
        n = self.n
        version = decider.model.version if decider.model is not None else None
        candidate = self.candidate
        out: dict[str, Any] = {
            "decision_id": self.decision_ids,
            "customer_id": [r.customer_id for r in self.requests],
            "decided_at": [self.now] * n,
            "action": [ACTIONS[c] for c in self.chosen.tolist()],
            "policy": [
                policy_label(m, e, version)
                for m, e in zip(self.member.tolist(), self.explored.tolist(), strict=True)
            ],
            "propensity": self.propensity,
            "channel": self.channels.tolist(),
            "intended_action": [ACTIONS[c] for c in self.intended.tolist()],
            "model_version": [version] * n,
            "degraded": np.zeros(n, dtype=bool),
            "degraded_reason": [None] * n,
            "explored": self.explored,
            "candidates": [
                _DEFAULT_CANDIDATES if r.candidates is ACTIONS else ";".join(r.candidates)
                for r in self.requests
            ],
            "context": [
                json.dumps(dict(r.context), default=str) if r.context else None
                for r in self.requests
            ],
            "features_found": self.columns.present["marketing_opt_in"],
            "latency_ms": np.full(n, latency_ms),
        }
        finite_values, finite_uplifts = np.isfinite(self.values), np.isfinite(self.uplifts)
        for c, action in enumerate(ACTIONS):
            # A non-candidate has no ranking entry: its columns are null, as in ``decide``.
            shown = candidate[:, c]
            out[f"uplift_{action}"] = (self.uplifts[:, c], ~shown | ~finite_uplifts[:, c])
            out[f"value_{action}"] = (self.values[:, c], ~shown | ~finite_values[:, c])
            out[f"eligible_{action}"] = (self.eligible[:, c], ~shown)
            out[f"blocked_by_{action}"] = [
                ";".join(self.blocked_by[i][c]) if shown[i] else None for i in range(n)
            ]
        for name in schema.MODEL_FEATURES:
            if name in self.derived:
                out[decision_log.FEATURE_PREFIX + name] = self.derived[name].astype(np.float64)
            else:
                out[decision_log.FEATURE_PREFIX + name] = (
                    self.columns.values[name].astype(np.float64),
                    ~self.columns.present[name],
                )
        return out


def _contacts(history: ContactHistory, ids: list[str], now: datetime) -> list[list[Contact] | None]:
    """Each request's recent contacts (None where unreadable: the caps then fail closed)."""
    many = getattr(history, "contacts_many", None)
    found = many(ids, now) if many is not None else [history.contacts(c, now) for c in ids]
    return [None if c is None else list(c) for c in found]


def _finite_list(array: np.ndarray) -> list[Any]:
    """``array`` as (nested) Python lists, None for NaN and infinities (JSON has neither)."""
    return np.where(np.isfinite(array), array, np.array(None, dtype=object)).tolist()


def _decision_ids(n: int) -> list[str]:
    """``n`` decision ids like ``_response``'s (``d-`` and a random UUID4 in hex), in bulk."""
    raw = np.frombuffer(os.urandom(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, 6] = raw[:, 6] & 0x0F | 0x40  # version 4
    raw[:, 8] = raw[:, 8] & 0x3F | 0x80  # RFC 4122 variant
    text = raw.tobytes().hex()
    return ["d-" + text[32 * i : 32 * i + 32] for i in range(n)]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _brief(error: BaseException) -> str:
    """An error in one short line (no feature values: they could be personal data)."""
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


def _response(
    request: Request,
    decision: Decision,
    reasons: list[str],
    model: LoadedModel | None,
    degraded: bool,
    known: bool,
    holdout: bool = False,
) -> dict[str, Any]:
    """The contract's response body."""
    return {
        "decision_id": f"d-{uuid.uuid4().hex}",
        "customer_id": request.customer_id,
        "action": decision.action,
        "ranking": [
            {
                "action": r.action,
                "eligible": r.eligible,
                "uplift": _finite(r.uplift),
                "expected_value": _finite(r.expected_value),
                "blocked_by": list(r.blocked_by),
            }
            for r in decision.ranking
        ],
        "reasons": reasons,
        "model_version": model.version if model is not None else None,
        "degraded": degraded,
        "known_customer": known,
        "holdout": holdout,
    }
