"""Offline scoring: the champion's values, guardrails and arbitration over a file of rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.build import build_features, count_in_window
from features.contract import ACTIONS
from nba.simulate import SimulationConfig, simulate
from serving.guardrails import load_rules
from serving.score import contact_counts_offline, read_requests, score
from training.dataset import assemble, entity_frame, entity_frame_of, time_split
from training.uplift import MultiActionUplift

END = pd.Timestamp("2026-11-01T00:00:00Z")


@pytest.fixture(scope="module")
def scored() -> tuple[pd.DataFrame, pd.DataFrame]:
    world = simulate(SimulationConfig(end=END, customers=1_200, days=200, seed=8))
    data = assemble(world, build_features(world, entity_frame(world)))
    train, _ = time_split(data)
    model = MultiActionUplift(method="t", n_estimators=20, min_child_samples=20).fit(
        train.X, train.decisions.action, train.decisions.propensity, train.outcomes
    )
    requests = read_requests(world.actions[["customer_id", "decided_at", "decision_id"]])
    stored = build_features(world, entity_frame_of(requests))
    out = score(model, load_rules(), requests, stored, history=world.actions)
    return out, stored


def test_output_columns_and_choices(scored: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    out, _ = scored
    for action in ACTIONS:
        for prefix in ("uplift_", "value_", "eligible_", "blocked_by_"):
            assert f"{prefix}{action}" in out.columns
    assert set(out.action) <= set(ACTIONS)
    chosen_value = out.apply(lambda r: r[f"value_{r.action}"], axis=1)
    assert (out.loc[out.action != "none", "value_none"] <= chosen_value[out.action != "none"]).all()
    assert out.eligible_none.all()


def test_guardrails_hold_offline(scored: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    out, stored = scored
    hurting = (stored.open_case_count.to_numpy() > 0) | ~stored.marketing_opt_in.to_numpy(bool)
    assert not (out.action.to_numpy()[hurting] == "promo").any()
    assert not out.eligible_promo.to_numpy()[hurting].any()
    blocked = out.loc[stored.open_case_count.to_numpy() > 0, "blocked_by_promo"]
    assert blocked.str.contains("open_service_case").all()


def test_requests_are_checked() -> None:
    with pytest.raises(ValueError, match="missing columns"):
        read_requests(pd.DataFrame({"customer_id": ["C1"]}))
    with pytest.raises(ValueError, match="UTC offset"):
        read_requests(pd.DataFrame({"customer_id": ["C1"], "decided_at": ["2026-01-01T00:00"]}))
    mixed = read_requests(
        pd.DataFrame({"customer_id": ["C1", "C2"],
                      "decided_at": ["2026-01-01T00:00Z", "2026-01-01T02:00+02:00"]})
    )  # fmt: skip
    assert mixed.decided_at.nunique() == 1
    with pytest.raises(ValueError, match="rows \\[2\\]"):
        read_requests(pd.DataFrame({"customer_id": ["C1", "C2"],
                                    "decided_at": ["2026-01-01T00:00Z", "soon"]}))  # fmt: skip
    ok = read_requests(
        pd.DataFrame({"customer_id": ["C1"], "decided_at": ["2026-01-01T01:00+01:00"]})
    )
    assert ok.decision_id.tolist() == ["s-0"]
    assert ok.decided_at.iloc[0] == pd.Timestamp("2026-01-01T00:00Z")


def test_promo_history_window() -> None:
    t = pd.Timestamp("2026-05-10T12:00Z")
    day = pd.Timedelta(days=1)
    history = pd.DataFrame(
        {
            "customer_id": ["A", "A", "A", "B"],
            "decided_at": [t - 8 * day, t - 6 * day, t, t - day / 24],
            "action": ["promo", "promo", "promo", "none"],
            "channel": ["email", "web", "web", "web"],
        }
    )
    requests = pd.DataFrame({"customer_id": ["A", "B", "C"], "decided_at": [t, t, t]})
    counts = contact_counts_offline(requests.assign(channel=["email", "web", "web"]), history)
    assert counts["promos_7d"].tolist() == [1, 0, 0]
    assert counts["contacts_7d"].tolist() == [1, 0, 0]
    assert counts["contacts_7d_channel"].tolist() == [0, 0, 0]  # A's was on web, asked on email
    assert contact_counts_offline(requests, None)["promos_7d"].tolist() == [0, 0, 0]
    assert count_in_window(history.customer_id, history.decided_at, requests.customer_id,
                           requests.decided_at, 30).tolist() == [2, 1, 0]  # fmt: skip
    assert np.all(count_in_window(history.customer_id[:0], history.decided_at[:0],
                                  requests.customer_id, requests.decided_at, 7) == 0)  # fmt: skip
