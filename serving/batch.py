"""``Decider.decide_batch``'s arrays: a batch judged and arbitrated together, settled in order.

Kept apart from ``serving.decider`` (which imports it when a batch comes): the single decision's
steps live there, the vectorized path here, and ``tests/unit/test_decide_batch.py`` checks with
hypothesis that a batch answers and logs exactly what a series of ``/decide`` calls would.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pandas as pd

from features import decision_log, schema
from features.columns import FeatureColumns
from features.contract import ACTIONS
from memory.store import micros as _micros
from serving.advice import advises
from serving.advice import many as advice_many
from serving.advice import reasons as advice_reasons
from serving.decision import NEW_VISITOR, Request, _brief, apology_key
from serving.history import COUNTS, Contact, ContactHistory, contact_counts
from serving.holdout import HOLDOUT_REASON, HOLDOUT_RULE, policy_label
from serving.policy import NONE, Decision, Ranked, choose, evaluate_batch, ranking_order
from training.served import Advice

if TYPE_CHECKING:
    from serving.decider import Decider

_PROMO: Final = ACTIONS.index("promo")
_APOLOGY: Final = ACTIONS.index("apology_credit")
_NONE: Final = ACTIONS.index(NONE)
_DEFAULT_CANDIDATES: Final = ";".join(ACTIONS)


class Batch:
    """One ``decide_batch`` call's arrays: judged and arbitrated together, settled in order."""

    def __init__(
        self,
        decider: Decider,
        requests: Sequence[Request],
        columns: FeatureColumns,
        derived: Mapping[str, np.ndarray],
        scored: tuple[np.ndarray, np.ndarray, np.ndarray],
        now: datetime,
    ) -> None:
        """``scored``: the model features, the uplift model's values and its uplifts."""
        X, values, uplifts = scored
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
        # The served policy's advice (``serving.advice``): its values replace the model's.
        self.advice: Advice | None = None
        self.lower = np.full(values.shape, np.nan)
        estimator = decider.model.estimator if decider.model is not None else None
        if advises(estimator):
            self.advice = estimator.advise(X, self.frame, values)  # type: ignore[union-attr]
            self.values = self.advice.values.copy()
            self.values[:, _NONE] = 0.0
            self.lower = self.advice.lower.copy()
            self.lower[:, _NONE] = np.nan  # ``none`` is worth 0, not an estimate
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
        prefer = advice_many(self.advice, rows, blocked, blocked_by)
        eligible = self.candidate[rows] & ~blocked & np.isfinite(self.values[rows])
        eligible[:, _NONE] = True
        chosen, propensity, explored = choose(
            self.values[rows], eligible, self.decider.epsilon, self._rng, prefer
        )
        self.intended[rows] = chosen
        held = self.member[rows]
        if held.any():
            eligible[held] &= ~self.withheld
            chosen[held], propensity[held], explored[held] = choose(
                self.values[rows][held],
                eligible[held],
                0.0,
                self._rng,
                None if prefer is None else prefer[held],
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
        lowers = _finite_list(np.take_along_axis(self.lower, order, axis=1).ravel())
        blocked = [self.blocked_by[k // m][c] for k, c in enumerate(flat)]
        entries = [
            {"action": a, "eligible": e, "uplift": u, "expected_value": v, "blocked_by": list(b),
             "value_lower": lo}
            for a, e, u, v, b, lo in zip(names, eligible, uplifts, values, blocked, lowers,
                                         strict=True)
        ]  # fmt: skip
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
                float(self.lower[i, c]),
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
        out += advice_reasons(self.advice, i)
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
