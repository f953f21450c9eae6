"""The vocabulary of a decision: requests, the loaded model, store protocols, the answer.

Shared by the single decision (``serving.decider``) and the batch (``serving.batch``), so
neither imports the other's internals.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Protocol

from features import schema
from features.columns import FeatureColumns
from features.contract import ACTIONS
from memory.fold import empty_state, served
from serving.history import Contact
from serving.holdout import policy_label
from serving.policy import Decision

#: Channel assumed when a request gives none (booking sites call at search time).
DEFAULT_CHANNEL: Final = "web"
#: What a customer with nothing on record (a new visitor) is judged with by the guardrails:
#: no open case, no disruption, no unsubscribe, no miles. Consent stays unknown (missing): the
#: rule ``no_marketing_consent_on_record`` names it.
NEW_VISITOR: Final[dict[str, Any]] = {
    k: v for k, v in served(empty_state()).items() if v is not None and k != "marketing_opt_in"
}
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
    """A fitted model (a ``training.served.ServedPolicy``, or a bare ``MultiActionUplift``
    registered before policy selection) and the label it is logged under (``nba-uplift/7``)."""

    estimator: Any
    version: str


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
                "value_lower": _finite(r.value_lower),
            }
            for r in decision.ranking
        ],
        "reasons": reasons,
        "model_version": model.version if model is not None else None,
        "degraded": degraded,
        "known_customer": known,
        "holdout": holdout,
    }


def log_record(
    request: Request,
    now: datetime,
    decision: Decision,
    response: Mapping[str, Any],
    row: Mapping[str, Any],
    found: bool,
    degraded_reason: str | None,
    intended: str,
    version: str | None,
) -> dict[str, Any]:
    """One decision's decision-log row (``features.decision_log``), but its latency."""
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
    return record
