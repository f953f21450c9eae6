"""The global control group: a stable share of customers who never get a marketing action.

Buyers ask whether next-best-action pays; the only clean answer compares customers the service
acts on with customers it leaves alone, chosen at random *before* anything about them is known.
Membership is a salted hash of ``customer_id`` (``NBA_HOLDOUT_SALT``), compared with
``NBA_HOLDOUT_SHARE``: no state, so every worker, host and restart agrees, and a customer stays
in (or out of) the group for as long as the salt and share are unchanged. Changing the salt
draws a new group (do it only between measurement periods).

A member's decision is taken as for anyone else first, so the decision log can record the
action the policy *would* have chosen (``intended_action``: impact per action compares like with
like); then the withheld actions (``promo``, ``recognition``; ``apology_credit`` too unless
``NBA_HOLDOUT_SERVICE`` allows service actions) are blocked by the pseudo-rule ``holdout`` and
the decision is taken again without exploration. It is logged with ``policy = "holdout"`` and
propensity 1 (the contract's raw ``actions`` table).

Pure functions: no clock, no I/O (``serving.decider`` and ``serving.score`` call them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from features.contract import ACTIONS

#: ``policy`` of a control-group decision in the decision log and the raw ``actions`` table.
HOLDOUT_POLICY: Final = "holdout"
#: The pseudo-rule named in ``blocked_by`` for an action withheld from a control-group member.
HOLDOUT_RULE: Final = "holdout"
#: The reason line of a member's decision (with ``explain``).
HOLDOUT_REASON: Final = "in the global control group: no marketing action (measures the impact)"
#: Actions that are marketing (always withheld); ``apology_credit`` is a service action.
MARKETING_ACTIONS: Final = ("promo", "recognition")
SERVICE_ACTIONS: Final = ("apology_credit",)
#: 2**64: the hash's first 8 bytes as an integer, divided by this, is uniform in [0, 1).
_SCALE: Final = float(2**64)


def hash_unit(customer_id: str, salt: str) -> float:
    """A uniform number in [0, 1) fixed by ``(salt, customer_id)``: SHA-256, first 8 bytes.

    A cryptographic hash, not Python's ``hash`` (randomized per process), so that every worker
    and host computes the same value; the NUL separator keeps ``("ab", "c")`` and
    ``("a", "bc")`` apart.
    """
    digest = hashlib.sha256(f"{salt}\x00{customer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def in_holdout(customer_id: str, share: float, salt: str) -> bool:
    """Whether ``customer_id`` is in the global control group of ``share`` under ``salt``."""
    return share > 0.0 and hash_unit(customer_id, salt) < share


@dataclass(frozen=True)
class Holdout:
    """The global control group's configuration (``NBA_HOLDOUT_*``)."""

    share: float = 0.05
    salt: str = "nba-holdout"
    #: Whether members may still get service actions (an apology credit after a disruption).
    service_allowed: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.share < 1.0:
            raise ValueError(f"holdout share must be in [0, 1), got {self.share}")

    def contains(self, customer_id: str) -> bool:
        """Whether this customer is in the control group."""
        return in_holdout(customer_id, self.share, self.salt)

    def members(self, customer_ids: Iterable[str]) -> np.ndarray:
        """``contains`` for many customers, as a boolean array."""
        if self.share <= 0.0:
            return np.zeros(len(list(customer_ids)), dtype=bool)
        return np.fromiter(
            (hash_unit(str(c), self.salt) < self.share for c in customer_ids), dtype=bool
        )

    @property
    def withheld(self) -> tuple[str, ...]:
        """The actions a member never gets."""
        return MARKETING_ACTIONS + (() if self.service_allowed else SERVICE_ACTIONS)

    def withheld_mask(self) -> np.ndarray:
        """``(len(ACTIONS),)`` True at the withheld actions' columns (``ACTIONS`` order)."""
        return np.array([a in self.withheld for a in ACTIONS], dtype=bool)

    def block(self, blocked: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
        """``blocked`` (action -> rule names) with ``HOLDOUT_RULE`` added to the withheld."""
        out = {a: tuple(rules) for a, rules in blocked.items()}
        for action in self.withheld:
            out[action] = (*out.get(action, ()), HOLDOUT_RULE)
        return out


def policy_label(member: bool, explored: bool, version: str | None) -> str:
    """The decision log's ``policy`` of one decision (``holdout``, ``random`` or the model)."""
    if member:
        return HOLDOUT_POLICY
    return "random" if explored else (version or "none")
