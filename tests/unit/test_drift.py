"""nba drift's plain-Python part with a stub engine: window and reference checks, thresholds,
the action mix, guardrail figures, the reference builder, and the command's bad-input exits."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from features.contract import ACTIONS
from features.decision_log import DECISION_SCHEMA, write_part
from monitoring.drift import (
    EXIT_DRIFT,
    EXIT_EMPTY_WINDOW,
    EXIT_MISSING_COLUMNS,
    EXIT_NO_REFERENCE,
    EXIT_OK,
    EXIT_TOO_FEW,
    DriftConfig,
    EmptyWindowError,
    MissingColumnsError,
    NoReferenceError,
    check_window,
    guardrail_rates,
    metrics_of,
    run_drift,
    sample_rows,
)
from monitoring.job import parse_since
from training.reference import (
    FEATURE_COLUMNS,
    PREDICTION_COLUMNS,
    build_reference,
    preferred_action,
)

VALUES = [f"value_{a}" for a in ACTIONS]


@dataclass
class StubRun:
    scores: dict[str, float]
    saved: list[Path] = field(default_factory=list)

    def save_html(self, path: Path, summary: Mapping[str, Any]) -> None:
        self.saved.append(path)


@dataclass
class StubEngine:
    """Scores every column it is given from a fixed table (0.0 when not listed)."""

    fixed: dict[str, float] = field(default_factory=dict)
    seen: dict[str, Any] = field(default_factory=dict)

    def run(
        self,
        reference: pd.DataFrame,
        current: pd.DataFrame,
        features: Sequence[str],
        predictions: Sequence[str],
        config: DriftConfig,
        meta: Mapping[str, str],
    ) -> StubRun:
        self.seen = {"rows": (len(reference), len(current)), "columns": [*features, *predictions]}
        return StubRun({c: self.fixed.get(c, 0.0) for c in [*features, *predictions]})


def reference_frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({c: rng.normal(size=n) for c in (*FEATURE_COLUMNS, *PREDICTION_COLUMNS)})
    frame["action"] = preferred_action(frame[VALUES].to_numpy())
    return frame


def window_frame(n: int = 300, seed: int = 1, values: np.ndarray | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({c: rng.normal(size=n) for c in (*FEATURE_COLUMNS, *PREDICTION_COLUMNS)})
    if values is not None:
        frame[VALUES] = values
    frame["decided_at"] = pd.Timestamp("2026-11-01T00:00:00Z")
    frame["action"] = rng.choice(ACTIONS, n)
    frame["degraded"] = False
    frame["degraded_reason"] = None
    for a in ACTIONS:
        frame[f"eligible_{a}"] = True
        frame[f"blocked_by_{a}"] = ""
    return frame


def test_no_drift_and_stable_mix_exit_zero() -> None:
    ref = reference_frame()
    cur = window_frame(values=ref[VALUES].to_numpy()[:300])
    engine = StubEngine()
    result = run_drift(ref, cur, engine, DriftConfig(), {"window_end": "x"})
    assert result.exit_code == EXIT_OK and result.summary["status"] == "ok"
    assert result.summary["features"]["compared"] == len(FEATURE_COLUMNS)
    assert engine.seen["columns"] == [*FEATURE_COLUMNS, *PREDICTION_COLUMNS]
    assert result.summary["window_end"] == "x"


def test_drifted_feature_share_at_threshold_alerts_and_sorts_drifted_first() -> None:
    ref = reference_frame()
    cur = window_frame(values=ref[VALUES].to_numpy()[:300])
    drifted = FEATURE_COLUMNS[:9]  # 9 of them: the share is exactly at the threshold
    fixed = {c: 0.2 + i / 100 for i, c in enumerate(drifted)} | {FEATURE_COLUMNS[9]: 0.099}
    at_threshold = DriftConfig(feature_share=9 / len(FEATURE_COLUMNS))
    result = run_drift(ref, cur, StubEngine(fixed), at_threshold)
    assert result.exit_code == EXIT_DRIFT
    columns = result.summary["features"]["columns"]
    assert [c["column"] for c in columns[:9]] == list(reversed(drifted))  # highest score first
    assert not columns[9]["drifted"] and columns[9]["column"] == FEATURE_COLUMNS[9]
    # One fewer drifted feature stays under the threshold.
    fixed.pop(drifted[0])
    assert run_drift(ref, cur, StubEngine(fixed), at_threshold).exit_code == EXIT_OK


def test_preferred_action_shift_past_threshold_alerts() -> None:
    ref = reference_frame()
    values = np.zeros((300, 4))
    values[:, 0] = 5.0  # the model now prefers promo everywhere
    result = run_drift(ref, window_frame(values=values), StubEngine(), DriftConfig())
    assert result.exit_code == EXIT_DRIFT
    promo = next(r for r in result.summary["actions"] if r["action"] == "promo")
    assert promo["preferred_share"] == 1.0
    assert promo["shift"] == pytest.approx(1.0 - promo["reference_share"])
    assert any(a.startswith("promo share moved") for a in result.summary["alerts"])
    assert metrics_of(result.summary)["preferred_share_promo"] == 1.0


def test_degraded_rows_leave_the_preferred_mix_and_are_counted() -> None:
    ref = reference_frame()
    cur = window_frame(values=ref[VALUES].to_numpy()[:300])
    cur.loc[:99, "degraded"] = True
    cur.loc[:99, "degraded_reason"] = "feature_store: timeout after 50 ms"
    cur.loc[:99, [v for v in VALUES if v != "value_none"]] = np.nan
    summary = run_drift(ref, cur, StubEngine(), DriftConfig()).summary
    assert summary["degraded"] == {"share": pytest.approx(1 / 3), "reasons": {"feature_store": 100}}
    expected = pd.Series(preferred_action(ref[VALUES].to_numpy()[100:300])).value_counts(
        normalize=True
    )
    for row in summary["actions"]:
        assert row["preferred_share"] == pytest.approx(expected.get(row["action"], 0.0))


def test_a_feature_that_stopped_arriving_counts_as_drifted() -> None:
    ref = reference_frame()
    cur = window_frame(values=ref[VALUES].to_numpy()[:300])
    cur[FEATURE_COLUMNS[0]] = np.nan
    engine = StubEngine()
    summary = run_drift(ref, cur, engine, DriftConfig()).summary
    assert FEATURE_COLUMNS[0] not in engine.seen["columns"]  # Evidently fails on empty columns
    first = summary["features"]["columns"][0]
    assert first["column"] == FEATURE_COLUMNS[0] and first["drifted"] and first["score"] is None
    assert summary["features"]["drifted"] == 1


def test_a_window_below_the_minimum_sample_never_alerts_and_says_so() -> None:
    ref = reference_frame()
    values = np.zeros((3, 4))
    values[:, 0] = 5.0  # three decisions, all promo: a 75-point shift of the mix
    n = len(FEATURE_COLUMNS)
    fixed = {c: 1.0 for c in FEATURE_COLUMNS[: n - 1]}  # all features but one "drifted"
    result = run_drift(ref, window_frame(3, values=values), StubEngine(fixed), DriftConfig())
    summary = result.summary
    assert result.exit_code == EXIT_TOO_FEW and summary["status"] == "too_few_decisions"
    assert summary["alerts"] == []
    assert "3 decisions in the window, at least 200 needed" in summary["sample_warning"]
    assert "NBA_DRIFT_MIN_ROWS" in summary["sample_warning"]
    assert any(a.startswith(f"{n - 1} of {n} features") for a in summary["suppressed_alerts"])
    assert any(a.startswith("promo share moved") for a in summary["suppressed_alerts"])
    assert summary["thresholds"]["min_rows"] == 200
    assert metrics_of(summary)["alert"] == 0.0 and metrics_of(summary)["too_few_decisions"] == 1.0


def test_a_window_at_the_minimum_sample_is_judged() -> None:
    ref = reference_frame()
    values = np.zeros((50, 4))
    values[:, 0] = 5.0
    cur = window_frame(50, values=values)
    judged = run_drift(ref, cur, StubEngine(), DriftConfig(min_rows=50))
    assert judged.exit_code == EXIT_DRIFT and judged.summary["sample_warning"] is None
    assert judged.summary["suppressed_alerts"] == []
    quiet = run_drift(ref, cur, StubEngine(), DriftConfig(min_rows=51))
    assert quiet.exit_code == EXIT_TOO_FEW and quiet.summary["alerts"] == []
    with pytest.raises(ValueError, match="min_rows"):
        DriftConfig(min_rows=0)


def test_a_column_constant_on_both_sides_is_not_compared_nor_drawn() -> None:
    ref = reference_frame()
    cur = window_frame(values=ref[VALUES].to_numpy()[:300])
    for frame in (ref, cur):
        frame[["uplift_none", "value_none"]] = 0.0  # the control: always 0
    cur.loc[5, "uplift_recognition"] = np.nan
    engine = StubEngine()
    summary = run_drift(ref, cur, engine, DriftConfig()).summary
    assert "uplift_none" not in engine.seen["columns"]
    assert "value_none" not in engine.seen["columns"]
    assert "uplift_recognition" in engine.seen["columns"]
    rows = {r["column"]: r for r in summary["predictions"]["columns"]}
    assert rows["uplift_none"]["score"] is None and not rows["uplift_none"]["drifted"]
    assert "constant" in rows["uplift_none"]["note"]
    assert summary["predictions"]["compared"] == len(PREDICTION_COLUMNS) - 2
    # A constant that moved is still a drift to look at.
    cur["uplift_none"] = 0.5
    moved = StubEngine()
    run_drift(ref, cur, moved, DriftConfig())
    assert "uplift_none" in moved.seen["columns"]


def test_the_command_prints_the_sample_warning(capsys: pytest.CaptureFixture[str]) -> None:
    from nba.report import print_drift

    ref = reference_frame()
    fixed = {c: 1.0 for c in FEATURE_COLUMNS}
    summary = run_drift(ref, window_frame(3), StubEngine(fixed), DriftConfig()).summary
    summary.update(window_start="2026-11-01", window_end="2026-11-08", reference="nba-uplift/3")
    print_drift(summary)
    out = capsys.readouterr().out
    assert out.startswith("NOT JUDGED: 3 decisions")
    assert "warning: too few decisions to judge drift: 3 decisions" in out
    n = len(FEATURE_COLUMNS)
    assert f"would have alerted: {n} of {n} features drifted" in out


def test_large_sides_are_sampled_for_the_engine_only() -> None:
    ref = reference_frame(n=3000)
    cur = window_frame(n=2500)
    engine = StubEngine()
    summary = run_drift(ref, cur, engine, DriftConfig(sample_rows=1000)).summary
    assert engine.seen["rows"] == (1000, 1000)
    assert summary["window_rows"] == 2500 and summary["reference_rows"] == 3000


def test_window_checks_have_their_own_exit_codes() -> None:
    with pytest.raises(EmptyWindowError) as empty:
        check_window(window_frame().iloc[:0])
    assert empty.value.exit_code == EXIT_EMPTY_WINDOW
    cur = window_frame()
    with pytest.raises(MissingColumnsError, match="f_bookings_7d") as missing:
        check_window(cur, present=set(cur.columns) - {"f_bookings_7d"})
    assert missing.value.exit_code == EXIT_MISSING_COLUMNS
    with pytest.raises(MissingColumnsError, match="uplift_promo"):
        check_window(cur.drop(columns=["uplift_promo"]))
    with pytest.raises(NoReferenceError) as no_ref:
        run_drift(reference_frame().drop(columns=["action"]), cur, StubEngine())
    assert no_ref.value.exit_code == EXIT_NO_REFERENCE


def test_guardrail_rates_count_rules_per_decision() -> None:
    cur = window_frame(n=4)
    cur["eligible_promo"] = [False, False, True, None]
    cur["blocked_by_promo"] = ["open_case;recent_negative", "open_case", "", None]
    cur["eligible_apology_credit"] = [False, True, True, True]
    cur["blocked_by_apology_credit"] = ["no_recent_negative", "", "", ""]
    rates = guardrail_rates(cur)
    assert rates["blocked_share"]["promo"] == pytest.approx(2 / 3)
    assert rates["blocked_share"]["apology_credit"] == 0.25
    assert rates["rule_blocks"] == {"no_recent_negative": 1, "open_case": 2, "recent_negative": 1}


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 20), st.just(4)),
              elements=st.one_of(st.floats(-100, 100), st.just(np.nan))))  # fmt: skip
def test_preferred_action_is_the_best_positive_value_or_none(values: np.ndarray) -> None:
    chosen = preferred_action(values)
    for row, action in zip(values, chosen, strict=True):
        best = np.nanmax(np.where(np.isnan(row), -np.inf, row))
        if best > 0:
            assert row[ACTIONS.index(action)] == best
        else:
            assert action == "none"


@given(st.integers(0, 50), st.integers(1, 60), st.integers(0, 3))
def test_sample_rows_keeps_order_and_size(n: int, cap: int, seed: int) -> None:
    frame = pd.DataFrame({"i": np.arange(n)})
    out = sample_rows(frame, cap, seed)
    assert len(out) == min(n, cap)
    assert out["i"].is_monotonic_increasing and out["i"].is_unique


def test_build_reference_uses_the_decision_log_names_and_samples() -> None:
    class Model:
        actions_ = ("promo", "apology_credit", "recognition")
        feature_names_ = ("bookings_7d", "open_case_count")

        def predict_effects(self, X: pd.DataFrame) -> dict[str, np.ndarray]:
            n = len(X)
            lift = np.column_stack([X["bookings_7d"], -X["bookings_7d"], np.zeros(n)])
            return {"converted": lift / 10, "revenue": lift * 100, "unsubscribed": 0 * lift,
                    "base_revenue": np.zeros(n)}  # fmt: skip

    X = pd.DataFrame({"bookings_7d": np.arange(10.0) - 5, "open_case_count": 0.0})
    ref = build_reference(X, Model(), max_rows=6, seed=1)
    assert len(ref) == 6 and ref["f_bookings_7d"].is_monotonic_increasing
    assert set(ref.columns) - {"action"} <= set(DECISION_SCHEMA.names)
    assert ref["f_tenure_days"].isna().all()  # not a model input: NaN, not dropped
    assert (ref["uplift_none"] == 0).all() and (ref["value_none"] == 0).all()
    expected = np.where(ref["f_bookings_7d"] > 0, "promo",
                        np.where(ref["f_bookings_7d"] < 0, "apology_credit", "none"))  # fmt: skip
    assert ref["action"].tolist() == expected.tolist()


def test_parse_since() -> None:
    assert parse_since("7d") == timedelta(days=7)
    assert parse_since("24h") == timedelta(hours=24)
    assert parse_since("2w") == timedelta(weeks=2)
    for bad in ("7", "d7", "0d", "1y", ""):
        with pytest.raises(ValueError, match="--since"):
            parse_since(bad)


# ---------------------------------------------------------------- the command's bad input


def nba(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nba.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **env},
        timeout=120,
    )


def test_bad_input_exits_with_one_line_and_its_code(tmp_path: Path) -> None:
    now = pd.Timestamp.now(tz="UTC")
    rows = window_frame(n=20).assign(decided_at=now - pd.Timedelta(hours=1))
    rows = rows.assign(decision_id=[f"d{i}" for i in range(20)], customer_id="C1")
    records = rows[[c for c in rows.columns if c in DECISION_SCHEMA.names]].to_dict("records")
    write_part(tmp_path / "log", records, DECISION_SCHEMA, "decided_at", 0)
    reduced = DECISION_SCHEMA.remove(DECISION_SCHEMA.get_field_index("f_worst_delay_30d"))
    old = [{k: v for k, v in r.items() if k != "f_worst_delay_30d"} for r in records]
    write_part(tmp_path / "old", old, reduced, "decided_at", 0)
    reference_frame().to_parquet(tmp_path / "ref.parquet")
    env = {
        "NBA_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "NBA_MLFLOW_ARTIFACT_LOCATION": str(tmp_path / "artifacts"),
        "NBA_DRIFT_REPORT_DIR": str(tmp_path / "reports"),
        "NBA_EVIDENTLY_WORKSPACE": str(tmp_path / "ws"),
    }
    cases = [
        (["--start", "2020-01-01T00:00:00Z", "--end", "2020-01-02T00:00:00Z",
          "--reference", "ref.parquet"], EXIT_EMPTY_WINDOW, "no decisions in the window"),
        (["--log-dir", "old", "--reference", "ref.parquet"], EXIT_MISSING_COLUMNS,
         "lacks 1 column(s) nba drift needs: f_worst_delay_30d"),
        (["--reference", "nothere.parquet"], EXIT_NO_REFERENCE, "is not a file"),
        ([], EXIT_NO_REFERENCE, "no model 'nba-uplift' is registered"),
        (["--since", "7x"], 2, "is not a duration"),
        (["--since", "7d", "--start", "2020-01-01T00:00:00Z"], 2, "not both"),
    ]  # fmt: skip
    for args, code, needle in cases:
        log = [] if "--log-dir" in args else ["--log-dir", "log"]
        result = nba("drift", *log, *args, cwd=tmp_path, env=env)
        assert result.returncode == code, (args, result.stderr)
        assert needle in result.stderr and "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "reports").exists()  # nothing written on bad input
