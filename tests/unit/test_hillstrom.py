"""The Hillstrom benchmark: loading and encoding, the split, our estimator, peers, the table.

Most tests use a small synthetic CSV in Hillstrom's format whose only effect is known: the
women's e-mail raises the visit rate by 0.4 for customers who bought women's merchandise
(``womens == 1``) and does nothing for the others; the men's e-mail does nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.hillstrom import (
    CONTROL,
    METRICS,
    Peer,
    evaluate_ours,
    evaluate_peers,
    load_hillstrom,
    reference_rows,
    run,
    score,
    split,
)
from training.metrics import qini_auc_score

REAL_FILE = Path("/work/shared/data/hillstrom.csv")
SEGMENTS = ("Mens E-Mail", "Womens E-Mail", "No E-Mail")
HISTORY = ("1) $0 - $100", "2) $100 - $200", "3) $200 - $350", "7) $1,000 +")
# Small coarse models: a few thousand rows.
FAST = {"n_estimators": 30, "learning_rate": 0.1, "num_leaves": 4, "min_child_samples": 40}


def synthetic_frame(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    """A randomized 3-arm experiment in the raw Hillstrom format (see the module docstring)."""
    rng = np.random.default_rng(seed)
    womens = rng.integers(0, 2, n)
    segment = rng.choice(SEGMENTS, n)
    p_visit = 0.1 + 0.4 * ((segment == "Womens E-Mail") & (womens == 1))
    return pd.DataFrame(
        {
            "recency": rng.integers(1, 13, n),
            "history_segment": rng.choice(HISTORY, n),
            "history": rng.gamma(2.0, 100.0, n).round(2),
            "mens": rng.integers(0, 2, n),
            "womens": womens,
            "zip_code": rng.choice(["Urban", "Surburban", "Rural"], n),
            "newbie": rng.integers(0, 2, n),
            "channel": rng.choice(["Phone", "Web", "Multichannel"], n),
            "segment": segment,
            "visit": (rng.random(n) < p_visit).astype(int),
            "conversion": 0,
            "spend": 0.0,
        }
    )


@pytest.fixture
def csv(tmp_path: Path) -> Path:
    path = tmp_path / "hillstrom.csv"
    synthetic_frame().to_csv(path, index=False)
    return path


def test_load_encodes_every_covariate_as_numbers(csv: Path) -> None:
    raw = pd.read_csv(csv)
    X, arm, y = load_hillstrom(csv)
    assert len(X) == len(arm) == len(y) == len(raw)
    assert all(pd.api.types.is_float_dtype(X[c]) for c in X.columns)
    assert set(arm) == {"mens", "womens", "control"}
    assert (arm[raw["segment"].eq("No E-Mail").to_numpy()] == CONTROL).all()
    np.testing.assert_array_equal(y, raw["visit"].to_numpy())
    # The history segment's rank, not a hash of its label.
    expected = raw["history_segment"].str[0].astype(float).to_numpy()
    np.testing.assert_array_equal(X["history_segment"].to_numpy(), expected)
    # One-hot over fixed categories: exactly one per row, matching the label.
    zips = X[["zip_urban", "zip_suburban", "zip_rural"]]
    channels = X[["channel_phone", "channel_web", "channel_multichannel"]]
    assert (zips.sum(axis=1) == 1).all() and (channels.sum(axis=1) == 1).all()
    np.testing.assert_array_equal(X["zip_suburban"] == 1, raw["zip_code"] == "Surburban")


@pytest.mark.skipif(not REAL_FILE.exists(), reason="the real Hillstrom file is not on this machine")
def test_load_real_file_head(tmp_path: Path) -> None:
    head = tmp_path / "head.csv"
    pd.read_csv(REAL_FILE, nrows=2000).to_csv(head, index=False)
    X, arm, y = load_hillstrom(head)
    assert X.shape == (2000, 12)
    assert not X.isna().any().any()
    assert set(arm) == {"mens", "womens", "control"}
    assert set(np.unique(y)) == {0, 1}
    assert X["history_segment"].between(1, 7).all()


@pytest.mark.parametrize("column", ["segment", "visit", "zip_code"])
def test_missing_column_is_a_clear_error(tmp_path: Path, column: str) -> None:
    path = tmp_path / "broken.csv"
    synthetic_frame(50).drop(columns=column).to_csv(path, index=False)
    with pytest.raises(ValueError, match=rf"missing columns \['{column}'\]"):
        load_hillstrom(path)


def test_unknown_arm_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.csv"
    frame = synthetic_frame(50)
    frame.loc[3, "segment"] = "Kids E-Mail"
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"unknown segment values \['Kids E-Mail'\]"):
        load_hillstrom(path)


def test_split_is_deterministic_disjoint_and_stratified(csv: Path) -> None:
    _, arm, y = load_hillstrom(csv)
    train, test = split(arm, y, seed=7)
    again_train, again_test = split(arm, y, seed=7)
    np.testing.assert_array_equal(train, again_train)
    np.testing.assert_array_equal(test, again_test)
    assert not np.isin(train, test).any()
    np.testing.assert_array_equal(np.sort(np.r_[train, test]), np.arange(len(arm)))
    assert not np.array_equal(test, split(arm, y, seed=8)[1])
    # Every arm x visit cell keeps (to one row) the test share.
    for a in np.unique(arm):
        for outcome in (0, 1):
            cell = np.flatnonzero((arm == a) & (y == outcome))
            assert abs(np.isin(cell, test).sum() - 0.3 * len(cell)) <= 1


def test_ours_finds_the_effect_of_the_womens_email(csv: Path) -> None:
    X, arm, y = load_hillstrom(csv)
    train, test = split(arm, y, seed=0)
    # The Qini of the true effect on the same rows: the best a model can do here (~0.24; the
    # normalised Qini's "perfect" ranking is one no model can reach on noisy 0/1 outcomes).
    rows = test[arm[test] != "mens"]
    best = qini_auc_score(
        y[rows], (arm[rows] == "womens").astype(int), X["womens"].to_numpy()[rows]
    )
    for method in ("t", "dr"):
        row = evaluate_ours(X, arm, y, train, test, method=method, **FAST)
        assert row["qini_womens"] > 0.8 * best > 0.1, (method, row)
        # Sending the women's e-mail to those who respond is worth 0.1 + 0.4 / 2 = 0.3 visits
        # per customer; sending nothing, 0.1.
        assert row["ipw_value_3arm"] > 0.22, (method, row)
        assert set(METRICS) <= row.keys()


def test_score_policy_prefers_control_on_ties_and_ipw_of_constant_policies() -> None:
    arm = np.array(["control", "mens", "womens"] * 4, dtype=object)
    y = np.array([0, 1, 0] * 4)
    zeros = np.zeros(len(arm))
    metrics = score(arm, y, uplift_mens=zeros - 0.1, uplift_womens=zeros)
    assert metrics["share_control"] == 1.0
    assert metrics["ipw_value_3arm"] == pytest.approx(0.0)
    values = {row["learner"]: row["ipw_value_3arm"] for row in reference_rows(arm, y)}
    assert values == pytest.approx(
        {"always control": 0.0, "always mens": 1.0, "always womens": 0.0}
    )


def test_missing_peer_libraries_give_rows_not_crashes(
    csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes `import sklift` raise ImportError, installed or not.
    monkeypatch.setitem(sys.modules, "sklift", None)
    monkeypatch.setitem(sys.modules, "causalml", None)
    X, arm, y = load_hillstrom(csv)
    train, test = split(arm, y)
    rows = evaluate_peers(X, arm, y, train, test)
    assert [row["learner"] for row in rows] == ["scikit-uplift", "causalml"]
    assert all("not importable" in row["error"] and "bench" in row["error"] for row in rows)


def test_failing_peer_gives_a_row_with_its_error(csv: Path) -> None:
    def broken(seed: int) -> object:
        raise RuntimeError("boom")

    X, arm, y = load_hillstrom(csv)
    train, test = split(arm, y)
    peer = Peer("broken learner", "numpy", broken, "binary")
    (row,) = evaluate_peers(X, arm, y, train, test, peers=[peer])
    assert row == {"learner": "broken learner", "error": "RuntimeError: boom"}


def test_run_table_has_first_seed_and_mean_columns(
    csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "sklift", None)
    monkeypatch.setitem(sys.modules, "causalml", None)
    steps: list[str] = []
    table = run(csv, seeds=(42, 0), progress=steps.append, methods=("t",))
    assert table.attrs["seeds"] == (42, 0)
    assert list(table["learner"]) == [
        "ours MultiActionUplift (t)",
        "scikit-uplift",
        "causalml",
        "always control",
        "always mens",
        "always womens",
    ]
    ours = table.iloc[0]
    for metric in METRICS:
        assert np.isfinite(ours[metric]) and np.isfinite(ours[f"{metric}_mean"])
    assert ours["error"] == ""
    assert table.set_index("learner").loc["causalml", "error"].startswith("not importable")
    assert np.isnan(table.set_index("learner").loc["always mens", "qini_womens"])
    assert steps[0].startswith("loading") and "seed 0: ours (t)" in steps
