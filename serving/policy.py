"""Arbitration: from expected values and guardrail verdicts to one action, with its propensity.

The chosen action is the eligible candidate with the highest expected value, and ``none`` when
no eligible action has a positive one (``none`` is worth 0, is always eligible and always a
candidate). An action is eligible when no guardrail blocks it and its expected value is a finite
number: a NaN (or infinite) value from the model is a failure, and failures fail closed.

Exploration is epsilon-greedy *inside* the eligible set: with probability ``epsilon`` the policy
picks uniformly among the other eligible candidates, so guardrails bind exploration too. The
returned ``propensity`` is the true probability that this policy returns that action given the
eligible set (``k`` eligible candidates, ``none`` included):

* greedy action: ``1 - epsilon`` when ``k > 1``, ``1.0`` when it is the only one;
* explored action: ``epsilon / (k - 1)``.

``arbitrate`` serves one request; ``arbitrate_batch`` and ``evaluate_batch`` do the same over
arrays for offline scoring (``nba score``), with the same semantics (tested to agree).
``DailyBudget`` paces apology credits across the day; its count is kept by a ``BudgetCounter``
(in process here, shared between workers and hosts in ``serving.budget``).
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Final, Protocol

import numpy as np
import pandas as pd

from features import contract
from serving import guardrails

#: Every action, in the column order of the batch arrays.
ACTIONS: Final[tuple[str, ...]] = contract.ACTIONS
#: The safe action.
NONE: Final = "none"
_NONE_COLUMN: Final = ACTIONS.index(NONE)
_ORDER: Final = {action: i for i, action in enumerate(ACTIONS)}
#: An unreadable budget counter is logged at most once per this many seconds.
BUDGET_WARN_EVERY_SECONDS: Final = 10.0

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranked:
    """One candidate in a decision's ranking (the contract's ``ranking`` entries)."""

    action: str
    eligible: bool
    #: Estimated change in conversion probability against ``none`` (NaN when unknown).
    uplift: float
    #: Estimated incremental net value in currency units (NaN when the model gave none).
    expected_value: float
    #: Names of the guardrail rules that block the action. An ineligible action with no rule
    #: here had no usable expected value.
    blocked_by: tuple[str, ...]
    #: One-sided 95% lower bound of ``expected_value`` where the served policy has one.
    value_lower: float = math.nan


@dataclass(frozen=True)
class Decision:
    """The policy's answer for one request."""

    action: str
    #: Probability that this policy returns ``action`` given the eligible set (for off-policy
    #: evaluation of the logs).
    propensity: float
    #: Every candidate: eligible ones first by expected value (descending; ``none`` first among
    #: ties at zero, else ``ACTIONS`` order), then the ineligible ones the same way.
    ranking: tuple[Ranked, ...]
    #: Whether ``action`` was drawn by exploration rather than chosen greedily.
    explored: bool


def _check_epsilon(epsilon: float) -> float:
    epsilon = float(epsilon)
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be a probability in [0, 1], got {epsilon}")
    return epsilon


def _as_float(value: object) -> float:
    """A float, NaN when missing or not a number."""
    if value is None or isinstance(value, str):
        return math.nan
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _candidate_set(candidates: Sequence[str]) -> tuple[str, ...]:
    """Validated candidates in ``ACTIONS`` order, ``none`` always included."""
    if candidates is ACTIONS:  # the default: skip the checks on the request path
        return ACTIONS
    if isinstance(candidates, str):
        raise TypeError("candidates must be a sequence of action names, not one string")
    unknown = [c for c in candidates if c not in _ORDER]
    if unknown:
        raise ValueError(f"unknown candidate actions {unknown}: expected some of {list(ACTIONS)}")
    chosen = set(candidates) | {NONE}
    return tuple(a for a in ACTIONS if a in chosen)


def _rank_key(row: Ranked) -> tuple[bool, bool, float, bool, int]:
    # Eligible first; NaN values last, then by value descending; ``none`` wins ties so that a
    # zero-valued action never displaces it; then the fixed ACTIONS order (deterministic).
    value = row.expected_value
    nan = math.isnan(value)
    return (not row.eligible, nan, 0.0 if nan else -value, row.action != NONE, _ORDER[row.action])


def arbitrate(
    values: Mapping[str, float],
    uplifts: Mapping[str, float],
    blocked: Mapping[str, Sequence[str]],
    candidates: Sequence[str] = ACTIONS,
    epsilon: float = 0.0,
    rng: random.Random | None = None,
    prefer: str | None = None,
    lowers: Mapping[str, float] | None = None,
) -> Decision:
    """Choose an action for one request.

    Args:
        values: expected value of each action (absent or NaN: the action is ineligible;
            the value of ``none`` is 0 whatever is given).
        uplifts: uplift of each action, reported in the ranking only.
        blocked: rule names blocking each action (``guardrails.evaluate``'s result).
        candidates: the actions the caller may show; ``none`` is added when absent.
        epsilon: exploration probability in [0, 1].
        rng: source of the exploration draw (default: the ``random`` module's generator);
            not used when ``epsilon`` is 0 or only one action is eligible.
        prefer: a rule-based policy's action for this customer (``training.served``): taken
            when eligible, whatever its value; ``none`` when it is not.
        lowers: lower bounds of the values, reported in the ranking only.

    Raises:
        ValueError: on an unknown candidate, an epsilon outside [0, 1], or a rule blocking
            ``none`` (the guardrail loader refuses such rules: it can only be a caller's bug).
    """
    epsilon = _check_epsilon(epsilon)
    if blocked.get(NONE):
        raise ValueError(f"'none' cannot be blocked, got blocked_by {list(blocked[NONE])}")
    rows: list[Ranked] = []
    for action in _candidate_set(candidates):
        if action == NONE:
            rows.append(Ranked(NONE, True, 0.0, 0.0, ()))
            continue
        value = _as_float(values.get(action))
        by = tuple(blocked.get(action, ()))
        ok = not by and (math.isfinite(value) or action == prefer)
        lower = _as_float(lowers.get(action)) if lowers is not None else math.nan
        rows.append(Ranked(action, ok, _as_float(uplifts.get(action)), value, by, lower))
    ranking = tuple(sorted(rows, key=_rank_key))
    eligible = [r for r in ranking if r.eligible]

    # ``none`` is eligible with value 0, so the first eligible row is the greedy choice: a
    # positive-valued action if any, else ``none`` (ties at 0 go to ``none`` by the sort key).
    # A rule-based policy's own action instead, when eligible (else ``none``).
    greedy, k = eligible[0], len(eligible)
    if prefer is not None:
        greedy = next((r for r in eligible if r.action == prefer),
                      next(r for r in eligible if r.action == NONE))  # fmt: skip
    if k > 1 and epsilon > 0.0:
        draw = rng if rng is not None else random
        if draw.random() < epsilon:
            explored = draw.choice([r for r in eligible if r is not greedy])
            return Decision(explored.action, epsilon / (k - 1), ranking, True)
    return Decision(greedy.action, 1.0 - epsilon if k > 1 else 1.0, ranking, False)


def arbitrate_batch(
    values: np.ndarray,
    blocked_mask: np.ndarray,
    epsilon: float = 0.0,
    seed: int | np.random.Generator | None = None,
    prefer: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``arbitrate`` over many rows at once (offline scoring).

    Args:
        values: ``(n, 4)`` expected values in ``ACTIONS`` order (non-finite: ineligible; the
            ``none`` column is taken as 0).
        blocked_mask: ``(n, 4)`` True where an action is blocked. A caller restricting the
            candidates marks the non-candidates as blocked: both are simply not eligible.
        epsilon: exploration probability in [0, 1].
        seed: seed (or generator) of the exploration draws.
        prefer: a rule-based policy's column per row (``choose``).

    Returns:
        (chosen action names as an object array, propensities), one per row; the same choice as
        ``arbitrate`` when ``epsilon`` is 0, and the same distribution otherwise.
    """
    epsilon = _check_epsilon(epsilon)
    values = np.asarray(values, dtype=np.float64)
    mask = np.asarray(blocked_mask, dtype=bool)
    if values.ndim != 2 or values.shape[1] != len(ACTIONS) or mask.shape != values.shape:
        raise ValueError(
            f"values and blocked_mask must both be (n, {len(ACTIONS)}) in ACTIONS order, got "
            f"{values.shape} and {mask.shape}"
        )
    if mask[:, _NONE_COLUMN].any():
        raise ValueError("'none' cannot be blocked (blocked_mask has True in its column)")
    eligible = ~mask & np.isfinite(values)
    chosen, propensity, _ = choose(values, eligible, epsilon, np.random.default_rng(seed), prefer)
    return np.asarray(ACTIONS, dtype=object)[chosen], propensity


def choose(
    values: np.ndarray,
    eligible: np.ndarray,
    epsilon: float,
    rng: np.random.Generator,
    prefer: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The arbitration of ``arbitrate`` over arrays: chosen columns, propensities, explored.

    Args:
        values: ``(n, 4)`` expected values in ``ACTIONS`` order (the ``none`` column is taken
            as 0).
        eligible: ``(n, 4)`` True where an action may be chosen (the ``none`` column is taken
            as True); a non-finite value must already be marked ineligible.
        epsilon: exploration probability in [0, 1] (checked by the caller).
        rng: source of the exploration draws.
        prefer: ``(n,)`` a rule-based policy's column per row (-1: none), taken when eligible
            whatever its value, else ``none`` (as ``arbitrate``'s ``prefer``).

    Returns:
        ``(chosen, propensity, explored)``: the column in ``ACTIONS`` of each row's action, the
        probability this policy had of choosing it, and whether it was drawn by exploration.
    """
    n = len(values)
    eligible = eligible.copy()
    eligible[:, _NONE_COLUMN] = True
    scored = np.where(eligible, values, -np.inf)
    scored[:, _NONE_COLUMN] = 0.0
    # argmax takes the first maximum, i.e. ACTIONS order among ties; a best value <= 0 means
    # nothing beats ``none`` (ties at 0 go to ``none``, as in ``arbitrate``).
    best = scored.argmax(axis=1)
    greedy = np.where(scored[np.arange(n), best] > 0.0, best, _NONE_COLUMN)
    if prefer is not None:
        ruled = prefer >= 0
        column = np.maximum(prefer, 0)
        taken = eligible[np.arange(n), column]
        greedy = np.where(ruled, np.where(taken, column, _NONE_COLUMN), greedy)
    k = eligible.sum(axis=1)
    chosen = greedy
    explored = np.zeros(n, dtype=bool)
    if epsilon > 0.0 and n:
        explored = (k > 1) & (rng.random(n) < epsilon)
        others = eligible.copy()
        others[np.arange(n), greedy] = False
        # The pick-th (0-based) other eligible column, uniform over the k - 1 others.
        pick = np.minimum((rng.random(n) * (k - 1)).astype(np.int64), np.maximum(k - 2, 0))
        column = (others.cumsum(axis=1) > pick[:, None]).argmax(axis=1)
        chosen = np.where(explored, column, greedy)
    propensity = np.where(
        explored, epsilon / np.maximum(k - 1, 1), np.where(k > 1, 1.0 - epsilon, 1.0)
    )
    return chosen, propensity, explored


def ranking_order(values: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Each row's columns in ``Decision.ranking`` order (``arbitrate``'s sort, vectorized).

    Eligible actions first, then by value descending (NaN last, ``none`` first among ties,
    then ``ACTIONS`` order); ``values`` and ``eligible`` as in ``choose``.
    """
    n, m = values.shape
    value = values.copy()
    value[:, _NONE_COLUMN] = 0.0
    nan = np.isnan(value)
    ineligible = ~eligible
    ineligible[:, _NONE_COLUMN] = False
    column = np.broadcast_to(np.arange(m), (n, m))
    row = np.broadcast_to(np.arange(n)[:, None], (n, m))
    keys = (
        column.ravel(),
        (column != _NONE_COLUMN).ravel(),
        np.where(nan, 0.0, -value).ravel(),
        nan.ravel(),
        ineligible.ravel(),
        row.ravel(),
    )
    return np.lexsort(keys).reshape(n, m) % m


def evaluate_batch(
    rules: guardrails.RuleSet, frame: pd.DataFrame
) -> tuple[np.ndarray, list[list[tuple[str, ...]]]]:
    """``guardrails.evaluate`` over every row of ``frame`` (vectorized).

    ``frame`` holds the stored and derived features and any context columns (``promos_7d``,
    ``apology_budget_left``, ``channel``); a column a rule needs but ``frame`` lacks is missing
    on every row and fails closed.

    Returns:
        ``blocked_mask``: ``(n, 4)`` True where an action is blocked (``ACTIONS`` order), and
        ``blocked_by[i][j]``: the names of the rules blocking ``ACTIONS[j]`` on row ``i``, in file
        order.
    """
    n = len(frame)
    fired = guardrails.evaluate_frame(rules, frame)
    mask = np.zeros((n, len(ACTIONS)), dtype=bool)
    per_action: list[list[tuple[str, ...]]] = []
    for j, action in enumerate(ACTIONS):
        names = [rule.name for rule in rules.rules if rule.action == action]
        if not names or not n:
            per_action.append([()] * n)
            continue
        hits = np.column_stack([fired[name] for name in names])
        mask[:, j] = hits.any(axis=1)
        # Few distinct combinations of fired rules exist: number each combination (one bit per
        # rule, sorting rows would dominate the run time) and build its tuple once, not per row.
        if len(names) <= 62:
            codes = hits.astype(np.int64) @ (np.int64(1) << np.arange(len(names), dtype=np.int64))
            combos, inverse = np.unique(codes, return_inverse=True)
            hit_sets = [[bool(c >> b & 1) for b in range(len(names))] for c in combos.tolist()]
        else:
            combos, inverse = np.unique(hits, axis=0, return_inverse=True)
            hit_sets = combos.tolist()
        tuples = [
            tuple(nm for nm, hit in zip(names, hit_set, strict=True) if hit) for hit_set in hit_sets
        ]
        per_action.append([tuples[i] for i in inverse.reshape(-1).tolist()])
    blocked_by = [list(row) for row in zip(*per_action, strict=True)] if n else []
    return mask, blocked_by


class BudgetCounter(Protocol):
    """Where ``DailyBudget`` counts the credits granted per UTC day.

    In process (``MemoryBudgetCounter``) for tests and offline use; ``serving.budget`` has the
    counters shared by the workers of a host (SQLite) or by every host (Redis). A counter
    only counts: the pacing arithmetic stays in ``DailyBudget``.
    """

    def spent(self, day: date) -> int:
        """Credits granted on ``day`` (UTC); raises when the count cannot be read."""
        ...

    def take(self, day: date, limit: int) -> bool:
        """Atomically grant one credit on ``day`` if fewer than ``limit`` were granted that day.

        True when granted (the count grew by one), False when ``limit`` is reached (nothing
        changed); raises when the count cannot be read or written.
        """
        ...


class MemoryBudgetCounter:
    """A per-process count (tests, offline use): each process paces its own ``per_day``.

    Only the last day seen is kept: any other day starts again from zero.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._day: date | None = None
        self._spent = 0

    def _roll(self, day: date) -> None:
        """Start a new count when the day changed (caller holds the lock)."""
        if day != self._day:
            self._day = day
            self._spent = 0

    def spent(self, day: date) -> int:
        """Credits granted on ``day``."""
        with self._lock:
            self._roll(day)
            return self._spent

    def take(self, day: date, limit: int) -> bool:
        """Grant one credit on ``day`` if fewer than ``limit`` were granted."""
        with self._lock:
            self._roll(day)
            if self._spent >= limit:
                return False
            self._spent += 1
            return True


class DailyBudget:
    """Paces a daily number of apology credits so that one disruption wave cannot spend it all.

    Pacing: at time ``t`` of a UTC day, the credits granted so far that day may not exceed

        allowance(t) = min(per_day, floor(per_day * elapsed(t) / 86400) + burst)

    where ``elapsed(t)`` is the number of seconds since UTC midnight and ``burst`` defaults to
    one hour's worth, ``ceil(per_day / 24)``. So the budget accrues evenly over the day, a burst
    can be served at once, and unspent allowance carries over within the day (a quiet morning
    leaves room for the afternoon). The count resets at UTC midnight.

    The count lives in ``counter`` (default: in this process, so replicas each pace their own
    ``per_day``; ``serving.budget`` shares it between workers and hosts). Thread-safe as long
    as the counter is. A counter that cannot be read fails closed: ``remaining()`` is 0 and
    ``take()`` False (no credit rather than too many), with a rate-limited warning.
    """

    def __init__(
        self,
        per_day: int,
        clock: Callable[[], datetime],
        burst: int | None = None,
        counter: BudgetCounter | None = None,
    ) -> None:
        if per_day < 0:
            raise ValueError(f"per_day must be >= 0, got {per_day}")
        if burst is not None and burst < 0:
            raise ValueError(f"burst must be >= 0, got {burst}")
        self.per_day = int(per_day)
        self.burst = math.ceil(per_day / 24) if burst is None else int(burst)
        self.counter: BudgetCounter = counter if counter is not None else MemoryBudgetCounter()
        self._clock = clock
        self._day: date | None = None
        self._warned_at = -math.inf

    def now(self) -> datetime:
        """The budget's clock in UTC (the day whose count ``remaining`` and ``take`` use)."""
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("DailyBudget's clock must return timezone-aware datetimes")
        now = now.astimezone(UTC)
        self._day = now.date()
        return now

    def _unreadable(self, error: Exception) -> None:
        # Under load every request would log the same outage: one line per interval is enough.
        now = time.monotonic()
        if now - self._warned_at >= BUDGET_WARN_EVERY_SECONDS:
            self._warned_at = now
            logger.warning(
                "apology budget unreadable (%s: %s): no apology credit granted",
                type(error).__name__,
                str(error).splitlines()[0][:200] if str(error) else "",
            )

    def allowance(self, now: datetime) -> int:
        """Credits that may have been granted by ``now`` since its UTC midnight."""
        now = now.astimezone(UTC)
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        fraction = (now - midnight).total_seconds() / 86_400
        return min(self.per_day, math.floor(self.per_day * fraction) + self.burst)

    def remaining(self) -> int:
        """Credits that ``take`` would grant now (the guardrail value ``apology_budget_left``)."""
        now = self.now()
        try:
            spent: int | Exception = self.counter.spent(now.date())
        except Exception as error:  # any store failure fails closed, never fails the decision
            spent = error
        return self.left(now, spent)

    def left(self, now: datetime, spent: int | Exception) -> int:
        """``remaining()`` at ``now`` given the count of ``now``'s day, read by the caller.

        ``spent`` is the error when the count could not be read: 0 then (fail closed), with a
        rate-limited warning. ``serving.redisreads`` reads the count in the same round trip as
        the features and the promo count, then calls this.
        """
        if isinstance(spent, Exception):
            self._unreadable(spent)
            return 0
        return max(0, self.allowance(now) - spent)

    def take(self) -> bool:
        """Spend one credit if the pace allows it now; False (nothing spent) otherwise.

        A service reads ``remaining()`` for the guardrails and calls ``take()`` once an apology
        credit is chosen; False there means a concurrent request (of any worker sharing the
        counter) took the last one, or the counter is unreadable, and the decision must be made
        again without it.
        """
        now = self.now()
        try:
            return self.counter.take(now.date(), self.allowance(now))
        except Exception as error:  # fail closed: no credit rather than too many
            return self.granted(error)

    def granted(self, reply: object) -> bool:
        """``take()``'s answer from the counter's reply, read by the caller (1/0, True/False),
        or the error that prevented it: False then (fail closed), with a rate-limited warning.
        ``serving.redisreads`` sends the counter's command itself, then calls this."""
        if isinstance(reply, Exception):
            self._unreadable(reply)
            return False
        return bool(int(reply))  # type: ignore[call-overload]

    @property
    def spent(self) -> int:
        """Credits granted so far in the current (last seen) UTC day."""
        if self._day is None:
            return 0
        return self.counter.spent(self._day)

    def close(self) -> None:
        """Release the counter's connection, if it holds one."""
        close = getattr(self.counter, "close", None)
        if close is not None:
            close()
