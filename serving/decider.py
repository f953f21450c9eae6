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
   a chosen promo is recorded in the shared history before the answer leaves;
5. reasons when asked (``serving.explain``); one decision-log row queued for the writer.

Degraded mode: if the features or the model cannot be read (or the model fails), the answer is
``none`` with ``degraded: true``, the cause is logged (without feature values) and kept in the
decision log's ``degraded_reason``. A valid request never raises out of ``decide``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np

from features import schema
from features.contract import ACTIONS
from features.derive import derive_row
from serving import explain, guardrails
from serving.guardrails import RuleSet
from serving.history import PromoHistory
from serving.policy import NONE, DailyBudget, Decision, Ranked, arbitrate
from training.value import ActionCosts, expected_value

logger = logging.getLogger(__name__)

#: Channel assumed when a request gives none (booking sites call at search time).
DEFAULT_CHANNEL: Final = "web"
#: The guardrail a budget race falls back on (its rule name must exist in the rule file).
BUDGET_RULE: Final = "apology_daily_budget"
#: Degraded-mode causes are logged at most once per this many seconds each (no log flood when
#: the store is down under load).
LOG_EVERY_SECONDS: Final = 10.0

Reader = Callable[[str], Mapping[str, Any]]
ManyReader = Callable[[Sequence[str]], Sequence[Mapping[str, Any]]]


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
        epsilon: exploration probability.
        rng: exploration draws.
        clock: the current time (tz-aware).
        top_contributions: feature contributions listed with ``explain``.
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
        history: PromoHistory,
        log: Callable[[Mapping[str, Any]], None] | None = None,
        epsilon: float = 0.0,
        rng: random.Random | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        top_contributions: int = 3,
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
        self.epsilon = epsilon
        self._rng = rng or random.Random()
        self._clock = clock
        self.top_contributions = top_contributions
        self._last_warned: dict[str, float] = {}
        if model is not None:
            self._names: list[str] = list(model.estimator.feature_names_)
            self._actions: tuple[str, ...] = tuple(model.estimator.actions_)
            self._columns = [ACTIONS.index(a) for a in self._actions]

    # ---------------------------------------------------------------- public

    def decide(self, request: Request) -> dict[str, Any]:
        """The contract's ``/decide`` response for one request (and its log row queued)."""
        started = time.perf_counter()
        now = self._clock()
        try:
            stored = self._read(request.customer_id)
        except Exception as error:
            return self._degraded(request, now, f"feature store unavailable: {_brief(error)}",
                                  started)  # fmt: skip
        return self._decide_with(request, stored, now, None, started)

    def decide_batch(self, requests: Sequence[Request]) -> list[dict[str, Any]]:
        """``decide`` for many requests: one online read and one model call for all of them.

        Budget, promo history and exploration are applied request by request in order, so a
        customer listed twice gets at most one promo, exactly as with two ``/decide`` calls.
        """
        if not requests:
            return []
        started = time.perf_counter()
        now = self._clock()
        try:
            rows = list(self._read_many([r.customer_id for r in requests]))
        except Exception as error:
            reason = f"feature store unavailable: {_brief(error)}"
            return [self._degraded(r, now, reason, started) for r in requests]
        derived = [{**stored, **derive_row(stored, now)} for stored in rows]
        values: np.ndarray | None = None
        uplifts: np.ndarray | None = None
        failure = None
        if self.model is None:
            failure = "no model loaded"
        else:
            try:
                X = np.vstack([self._vector(row) for row in derived])
                values, uplifts = self._score(X)
            except Exception as error:
                failure = f"model failed: {_brief(error)}"
        out = []
        for i, request in enumerate(requests):
            if failure is not None:
                out.append(self._degraded(request, now, failure, started))
                continue
            assert values is not None and uplifts is not None
            scored = (values[i], uplifts[i])
            out.append(self._decide_with(request, rows[i], now, scored, started, derived[i]))
        return out

    @property
    def ready(self) -> bool:
        """Whether a model is loaded (the reader is checked by the service's readiness probe)."""
        return self.model is not None

    # ---------------------------------------------------------------- internals

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

    def _decide_with(
        self,
        request: Request,
        stored: Mapping[str, Any],
        now: datetime,
        scored: tuple[np.ndarray, np.ndarray] | None,
        started: float,
        row: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if row is None:
            row = {**stored, **derive_row(stored, now)}
        found = stored.get("marketing_opt_in") is not None
        if scored is None:
            if self.model is None:
                return self._degraded(request, now, "no model loaded", started, row, found)
            try:
                scored = self._score_one(self._vector(row))
            except Exception as error:
                return self._degraded(request, now, f"model failed: {_brief(error)}", started,
                                      row, found)  # fmt: skip
        value_row, uplift_row = scored
        values = dict(zip(ACTIONS, value_row.tolist(), strict=True))
        uplifts = dict(zip(ACTIONS, uplift_row.tolist(), strict=True))

        row["channel"] = request.channel
        row["promos_7d"] = self.history.count(request.customer_id, now, 7.0)
        row["apology_budget_left"] = self.budget.remaining()
        blocked = guardrails.evaluate(self.rules, row)
        decision = arbitrate(values, uplifts, blocked, request.candidates, self.epsilon, self._rng)
        if decision.action == "apology_credit" and not self.budget.take():
            # A concurrent request took the last credit of the pace: decide again without it.
            row["apology_budget_left"] = 0
            blocked = guardrails.evaluate(self.rules, row)
            decision = arbitrate(values, uplifts, blocked, request.candidates, self.epsilon,
                                 self._rng)  # fmt: skip
        if decision.action == "promo":
            self.history.add(request.customer_id, now)

        reasons: list[str] = []
        if request.explain:
            reasons = self._reasons(request, row, found, decision, blocked)
        response = _response(request, decision, reasons, self.model, False)
        self._write_log(request, now, decision, response, row, found, None, started)
        return response

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
    ) -> dict[str, Any]:
        self._warn(reason.split(":")[0], f"degraded decision: {reason}")
        ranking = tuple(
            Ranked(a, a == NONE, 0.0 if a == NONE else math.nan, 0.0 if a == NONE else math.nan, ())
            for a in (NONE, *[c for c in request.candidates if c != NONE])
        )
        decision = Decision(NONE, 1.0, ranking, False)
        reasons = [f"degraded: {reason}; answering the safe action"] if request.explain else []
        response = _response(request, decision, reasons, self.model, True)
        self._write_log(request, now, decision, response, row or {}, found, reason, started)
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
    ) -> None:
        if self._log is None:
            return
        version = self.model.version if self.model is not None else None
        record: dict[str, Any] = {
            "decision_id": response["decision_id"],
            "customer_id": request.customer_id,
            "decided_at": now,
            "action": decision.action,
            "policy": "random" if decision.explored else (version or "none"),
            "propensity": decision.propensity,
            "channel": request.channel,
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
    }
