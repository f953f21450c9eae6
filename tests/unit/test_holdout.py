"""The global control group: a stable salted hash, the share it promises, and every decision path
(single, batch, degraded, offline score) withholding marketing and logging ``policy=holdout``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, settings

from serving.decider import Request
from serving.holdout import HOLDOUT_RULE, Holdout, hash_unit, in_holdout
from tests.unit.test_decide_batch import (
    SCENARIOS,
    _comparable,
    _decider,
    _without_ids,
    scenario,
)
from tests.unit.test_decider import NOW, make, quiet_customer

IDS = [f"C{i:07d}" for i in range(100_000)]


def test_membership_is_the_same_in_another_process() -> None:
    # Python's own hash() differs per process (PYTHONHASHSEED): the group must not.
    code = (
        "from serving.holdout import in_holdout;"
        "print(''.join('1' if in_holdout(f'C{i:07d}', 0.05, 's') else '0' for i in range(2000)))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=env, check=True).stdout.strip()  # fmt: skip
    here = "".join("1" if in_holdout(f"C{i:07d}", 0.05, "s") else "0" for i in range(2000))
    assert other == here and "1" in here


def test_known_values_pin_the_hash() -> None:
    # A change of hash function or separator would silently reshuffle every brand's group.
    assert hash_unit("C0000001", "nba-holdout") == pytest.approx(0.9140142248379447, abs=1e-15)
    assert hash_unit("C0000002", "nba-holdout") == pytest.approx(0.07676140724846695, abs=1e-15)
    assert not in_holdout("C0000001", 0.05, "nba-holdout")
    assert in_holdout("C0000002", 0.08, "nba-holdout")


@pytest.mark.parametrize("share", [0.01, 0.05, 0.2])
def test_share_is_kept_within_sampling_error(share: float) -> None:
    members = Holdout(share=share, salt="brand-a").members(IDS)
    sd = (share * (1 - share) / len(IDS)) ** 0.5
    assert abs(members.mean() - share) < 5 * sd


def test_a_new_salt_draws_a_new_group() -> None:
    a = Holdout(0.05, "salt-1").members(IDS)
    b = Holdout(0.05, "salt-2").members(IDS)
    assert abs(b.mean() - 0.05) < 0.005
    # Independent draws: the groups overlap about as much as share² of customers, not more.
    assert (a & b).sum() / a.sum() < 0.1
    assert not Holdout(0.0, "x").members(IDS[:100]).any()


def test_withheld_actions_follow_the_service_setting() -> None:
    assert Holdout(service_allowed=True).withheld == ("promo", "recognition")
    assert Holdout(service_allowed=False).withheld == ("promo", "recognition", "apology_credit")
    assert Holdout().block({"promo": ("open_service_case",)}) == {
        "promo": ("open_service_case", HOLDOUT_RULE),
        "recognition": (HOLDOUT_RULE,),
    }
    with pytest.raises(ValueError):
        Holdout(share=1.0)


def _member_and_not(holdout: Holdout) -> tuple[str, str]:
    ids = [f"C{i}" for i in range(200)]
    flags = holdout.members(ids)
    return ids[int(np.argmax(flags))], ids[int(np.argmin(flags))]


def test_a_member_gets_no_promo_and_says_so_in_answer_and_log() -> None:
    holdout = Holdout(share=0.5, salt="t")
    member, other = _member_and_not(holdout)
    log: list[Mapping[str, Any]] = []
    decider = make({member: quiet_customer(), other: quiet_customer()}, log=log)
    decider.holdout = holdout
    held = decider.decide(Request(member, explain=True))
    free = decider.decide(Request(other))
    assert held["action"] == "none" and held["holdout"] is True
    assert free["action"] == "promo" and free["holdout"] is False
    promo = next(r for r in held["ranking"] if r["action"] == "promo")
    assert not promo["eligible"] and HOLDOUT_RULE in promo["blocked_by"]
    assert any("control group" in reason for reason in held["reasons"])
    assert log[0]["policy"] == "holdout" and log[0]["propensity"] == 1.0
    assert log[0]["intended_action"] == "promo"  # what the policy would have done
    assert log[1]["policy"] == "nba-uplift/3" and log[1]["intended_action"] == "promo"
    # No promo was recorded for the member: the frequency cap sees only real promos.
    assert decider.history.count(member, NOW, 7.0) == 0


@pytest.mark.parametrize("service", [True, False])
def test_apology_credit_follows_the_service_setting(service: bool) -> None:
    holdout = Holdout(share=0.5, salt="t", service_allowed=service)
    member, _ = _member_and_not(holdout)
    hurt = quiet_customer(
        last_negative_at=pd.Timestamp(NOW - timedelta(days=2)), last_negative_kind="delay",
        last_negative_delay_minutes=200,
    )  # fmt: skip
    log: list[Mapping[str, Any]] = []
    decider = make({member: hurt}, {"apology_credit": 0.2}, log=log)
    decider.holdout = holdout
    out = decider.decide(Request(member))
    assert out["action"] == ("apology_credit" if service else "none")
    assert log[0]["intended_action"] == "apology_credit" and log[0]["policy"] == "holdout"


def test_a_degraded_member_is_still_marked() -> None:
    holdout = Holdout(share=0.5, salt="t")
    member, _ = _member_and_not(holdout)
    log: list[Mapping[str, Any]] = []
    decider = make(read_fails=True, log=log)
    decider.holdout = holdout
    out = decider.decide(Request(member))
    assert out["degraded"] and out["holdout"] is True and out["action"] == "none"
    assert log[0]["policy"] == "holdout" and log[0]["intended_action"] == "none"
    batch = decider.decide_batch([Request(member), Request("nobody-held")])
    assert [d["holdout"] for d in batch] == [True, holdout.contains("nobody-held")]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@SCENARIOS
def test_batch_equals_a_series_of_single_decisions_with_a_control_group(
    customers: list[dict[str, Any]], requests: list[tuple[int, Any, Any, bool]], promo: float,
    apology: float, recognition: float, budget: int,
) -> None:  # fmt: skip
    rows, uplifts, made = scenario(customers, requests, promo, apology, recognition)
    # Which of the five customers are held out varies with the salt, drawn from the example.
    holdout = Holdout(share=0.5, salt=f"{len(requests)}-{promo:.3f}", service_allowed=budget != 1)
    one_log: list[Mapping[str, Any]] = []
    batch_log: list[Mapping[str, Any]] = []
    single = _decider(rows, uplifts, budget, one_log)
    batched = _decider(rows, uplifts, budget, batch_log)
    single.holdout = batched.holdout = holdout
    batched.small_batch = 0
    expected = [single.decide(r) for r in made]
    got = batched.decide_batch(made)
    assert [_without_ids(d) for d in got] == [_without_ids(d) for d in expected]
    assert [_comparable(r) for r in batch_log] == [_comparable(r) for r in one_log]
    for answer, record in zip(got, batch_log, strict=True):
        assert answer["holdout"] == holdout.contains(answer["customer_id"])
        if answer["holdout"]:
            assert answer["action"] not in holdout.withheld
            assert record["policy"] == "holdout" and record["propensity"] == 1.0
        else:
            assert record["intended_action"] == record["action"]


def test_offline_score_marks_the_same_customers() -> None:
    from serving.score import score
    from tests.unit.test_decider import RULES, StubModel

    holdout = Holdout(share=0.5, salt="t")
    ids = [f"C{i}" for i in range(40)]
    requests = pd.DataFrame({"customer_id": ids, "decided_at": pd.Timestamp(NOW),
                             "decision_id": [f"s-{i}" for i in range(40)]})  # fmt: skip
    stored = pd.DataFrame([quiet_customer() for _ in ids])
    out = score(StubModel({"promo": 0.05}), RULES, requests, stored, holdout=holdout)
    assert out["holdout"].tolist() == holdout.members(ids).tolist()
    held = out[out["holdout"]]
    assert len(held) and (held["action"] == "none").all() and (held["propensity"] == 1.0).all()
    assert (held["intended_action"] == "promo").all() and not held["eligible_promo"].any()
    free = out[~out["holdout"]]
    assert (free["action"] == "promo").all() and (free["intended_action"] == "promo").all()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@SCENARIOS
def test_awaited_decisions_equal_blocking_ones_with_a_control_group(
    customers: list[dict[str, Any]], requests: list[tuple[int, Any, Any, bool]], promo: float,
    apology: float, recognition: float, budget: int,
) -> None:  # fmt: skip
    import asyncio

    from tests.unit.test_decide_async import StoresIO

    rows, uplifts, made = scenario(customers, requests, promo, apology, recognition)
    holdout = Holdout(share=0.5, salt=f"{len(requests)}-{apology:.3f}", service_allowed=budget != 2)
    blocking_log: list[Mapping[str, Any]] = []
    awaited_log: list[Mapping[str, Any]] = []
    blocking = _decider(rows, uplifts, budget, blocking_log)
    awaited = _decider(rows, uplifts, budget, awaited_log)
    blocking.holdout = awaited.holdout = holdout
    io = StoresIO(awaited)

    async def run() -> list[dict[str, Any]]:
        return [await awaited.decide_async(r, io) for r in made]

    expected = [blocking.decide(r) for r in made]
    got = asyncio.run(run())
    assert [_without_ids(d) for d in got] == [_without_ids(d) for d in expected]
    assert [_comparable(r) for r in awaited_log] == [_comparable(r) for r in blocking_log]
    assert all(d["holdout"] == holdout.contains(d["customer_id"]) for d in got)


def test_a_member_refused_the_last_credit_logs_what_the_policy_could_still_do() -> None:
    import asyncio

    from tests.unit.test_decide_async import StoresIO

    holdout = Holdout(share=0.5, salt="t")
    member, _ = _member_and_not(holdout)
    hurt = quiet_customer(
        last_negative_at=pd.Timestamp(NOW - timedelta(days=2)), last_negative_kind="delay",
        last_negative_delay_minutes=200,
    )  # fmt: skip
    log: list[Mapping[str, Any]] = []
    decider = make({member: hurt}, {"apology_credit": 0.2}, log=log)
    decider.holdout = holdout
    # Another worker took the last credit between the read and the take.
    out = asyncio.run(decider.decide_async(Request(member), StoresIO(decider, take=False)))
    assert out["action"] == "none" and out["holdout"] is True
    assert log[0]["intended_action"] == "none" and log[0]["policy"] == "holdout"
