"""One apology credit per negative experience, whatever worker, channel or path decides it."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from memory.ledger import Memory
from memory.store import Database, sqlite_url
from serving.decider import Request, apology_key
from tests.unit.test_decide_batch import _decider
from tests.unit.test_decider import NOW


class SharedClaims:
    """``serving.decider.Apologies`` over one in-memory set (as the memory's claims table)."""

    def __init__(self) -> None:
        self.held: set[tuple[str, str]] = set()
        self.granted_keys: list[tuple[str, str]] = []
        self.released: list[tuple[str, str]] = []

    def claim(self, customer_id: str, key: str, now: datetime) -> bool:
        if (customer_id, key) in self.held:
            return False
        self.held.add((customer_id, key))
        return True

    def granted(self, customer_id: str, key: str, now: datetime) -> None:
        self.granted_keys.append((customer_id, key))

    def release(self, customer_id: str, key: str) -> None:
        self.held.discard((customer_id, key))
        self.released.append((customer_id, key))


def _disrupted() -> dict[str, Any]:
    from features import schema

    row: dict[str, Any] = {name: None for name in schema.STORED}
    row.update(open_case_count=0, unsubscribed=False, marketing_opt_in=True,
               last_negative_at=pd.Timestamp(NOW - timedelta(days=1)),
               last_negative_kind="cancellation", last_negative_delay_minutes=0,
               worst_delay_30d=0, lifetime_miles=1000,
               created_at=pd.Timestamp("2020-01-01", tz="UTC"))  # fmt: skip
    return row


def _request(channel: str) -> Request:
    return Request("C1", {"channel": channel}, ("apology_credit", "none"), True)


def test_a_second_channel_gets_no_second_apology_for_one_experience() -> None:
    claims = SharedClaims()
    email = _decider({"C1": _disrupted()}, {"apology_credit": 0.9}, 10, [])
    web = _decider({"C1": _disrupted()}, {"apology_credit": 0.9}, 10, [])
    email.apologies = web.apologies = claims  # two workers, one memory
    first = email.decide(_request("email"))
    assert first["action"] == "apology_credit"
    assert claims.granted_keys == [("C1", apology_key(_disrupted()))]
    second = web.decide(_request("web"))
    assert second["action"] == "none"
    apology = next(r for r in second["ranking"] if r["action"] == "apology_credit")
    assert apology["blocked_by"] == ["apology_needs_recent_uncompensated_negative"]
    assert any("compensated: yes" in reason for reason in second["reasons"]), second["reasons"]


def test_a_refused_budget_gives_the_claim_back() -> None:
    claims = SharedClaims()
    decider = _decider({"C1": _disrupted()}, {"apology_credit": 0.9}, 0, [])
    decider.apologies = claims
    assert decider.decide(_request("email"))["action"] == "none"
    assert claims.held == set() and claims.granted_keys == []


def test_the_batch_path_gives_one_apology_per_experience() -> None:
    claims = SharedClaims()
    decider = _decider({"C1": _disrupted()}, {"apology_credit": 0.9}, 10, [])
    decider.apologies = claims
    decider.small_batch = 0  # the array path
    answers = decider.decide_batch([_request("email"), _request("web"), _request("app")])
    assert [a["action"] for a in answers].count("apology_credit") == 1


def test_unreadable_claims_fail_closed() -> None:
    class Broken(SharedClaims):
        def claim(self, customer_id: str, key: str, now: datetime) -> bool:
            raise ConnectionError("memory down")

    decider = _decider({"C1": _disrupted()}, {"apology_credit": 0.9}, 10, [])
    decider.apologies = Broken()
    assert decider.decide(_request("email"))["action"] == "none"


def test_memory_claims_are_one_shot_until_released(tmp_path: Path) -> None:
    memory = Memory(Database(sqlite_url(tmp_path / "memory.db")))
    at = pd.Timestamp(NOW)
    assert memory.claim("C1", "apology:x", "d-1", at)
    assert not memory.claim("C1", "apology:x", "d-2", at)
    assert memory.claim("C2", "apology:x", "d-3", at)
    memory.release("C1", "apology:x")
    assert memory.claim("C1", "apology:x", "d-4", at)
