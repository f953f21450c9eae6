"""Training set assembly, the time split, learnability checks, evaluation, and the training
pipeline with a stub tracker (the MLflow adapter has its own integration test)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from features import schema
from features.build import build_features
from features.contract import ACTIONS, RawData
from nba.simulate import SimulationConfig, simulate
from training.dataset import (
    TrainingDataError,
    assemble,
    check_learnable,
    entity_frame,
    time_split,
)
from training.pipeline import run_training

END = pd.Timestamp("2026-11-01T00:00:00Z")
PARAMS = {"method": "t", "n_estimators": 15, "min_child_samples": 20, "random_state": 0}


@pytest.fixture(scope="module")
def world() -> RawData:
    return simulate(SimulationConfig(end=END, customers=1_500, days=200, seed=4))


def historical(world: RawData) -> Any:
    """A stand-in for FeastAdapter.historical: the same features from the pure function."""

    def retrieve(entity_df: pd.DataFrame) -> pd.DataFrame:
        return build_features(world, entity_df)

    return retrieve


class StubTracker:
    """Records what the pipeline logs; stands in for training.tracking.Tracker."""

    def __init__(self, champion_model: Any = None) -> None:
        self.calls: list[str] = []
        self.champion_model = champion_model
        self.gate_args: tuple[Any, ...] | None = None

    def champion(self) -> Any:
        return None if self.champion_model is None else SimpleNamespace(version=1)

    def load(self, version: int) -> Any:
        return self.champion_model

    @contextmanager
    def start_run(self, run_name: str | None = None) -> Iterator[str]:
        self.calls.append("start_run")
        yield "run-1"

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return {"log_model": "models:/x", "register": 2}.get(name)

        return record

    def gate(
        self, version: int, candidate: float, champion: float | None, force: bool, **cas: Any
    ) -> Any:
        self.gate_args = (version, candidate, champion, force)
        self.gate_cas = cas
        return SimpleNamespace(promoted=force, reason="stub")


def test_assemble_aligns_decisions_features_and_outcomes(world: RawData) -> None:
    data = assemble(world, build_features(world, entity_frame(world)))
    assert len(data) == len(world.actions)
    assert list(data.X.columns) == list(schema.MODEL_FEATURES)
    joined = data.decisions.merge(world.outcomes, on="decision_id")
    assert (joined["converted"].astype(int).to_numpy() == data.outcomes["converted"]).all()
    train, test = time_split(data, 0.2)
    assert train.decisions.decided_at.max() <= test.decisions.decided_at.min()
    assert len(test) == pytest.approx(0.2 * len(data), abs=1)
    assert data.truth is not None and len(data.truth) == len(data)


def test_decisions_without_outcomes_are_dropped_and_none_is_an_error(world: RawData) -> None:
    stored = build_features(world, entity_frame(world))
    half = replace(world, outcomes=world.outcomes.iloc[::2])
    assert len(assemble(half, stored)) == len(world.outcomes.iloc[::2])
    with pytest.raises(TrainingDataError, match="no outcomes joined"):
        assemble(replace(world, outcomes=world.outcomes.iloc[:0]), stored)


def test_missing_features_say_run_nba_features(world: RawData) -> None:
    stored = build_features(world, entity_frame(world))
    empty = stored.copy()
    for name in schema.STORED:
        empty[name] = pd.Series([None] * len(stored), dtype=object)
    with pytest.raises(TrainingDataError, match="nba features"):
        assemble(world, empty)


def test_learnability_checks(world: RawData) -> None:
    data = assemble(world, build_features(world, entity_frame(world)))
    with pytest.raises(TrainingDataError, match="too few decisions for action"):
        check_learnable(data, min_rows=10**6)
    decisions = data.decisions.copy()
    decisions.loc[decisions.action == "recognition", "propensity"] = 1.0
    with pytest.raises(TrainingDataError, match="'recognition' was never randomized"):
        check_learnable(replace(data, decisions=decisions), min_rows=1)


def test_pipeline_evaluates_then_logs_and_gates(world: RawData) -> None:
    tracker = StubTracker()
    result = run_training(world, historical(world), tracker, PARAMS, force=True)
    table = result.evaluation.policy_table
    assert {"learned", "rules-v1", "oracle", *(f"always {a}" for a in ACTIONS)} <= set(table.index)
    assert np.isfinite(table["dr"]).all() and "true" in table.columns
    assert tracker.calls[0] == "start_run" and "register" in tracker.calls
    assert tracker.gate_args is not None and tracker.gate_args[2] is None  # no champion yet
    assert tracker.gate_args[3] is True
    assert tracker.gate_cas["compared_with"] is None

    # With a champion, it is evaluated on the same held-out decisions before anything is logged.
    from training.uplift import MultiActionUplift

    data = assemble(world, build_features(world, entity_frame(world)))
    train, _ = time_split(data)
    champion = MultiActionUplift(**{**PARAMS, "n_estimators": 5}).fit(
        train.X, train.decisions.action, train.decisions.propensity, train.outcomes
    )
    second = StubTracker(champion_model=champion)
    run_training(world, historical(world), second, PARAMS)
    assert second.gate_args is not None and np.isfinite(second.gate_args[2])
    # The gate can re-evaluate whichever champion it finds at promotion, on the same data.
    assert second.gate_cas["compared_with"] == 1
    assert second.gate_cas["value_of"](1) == second.gate_args[2]


def test_a_failure_before_logging_writes_nothing(world: RawData) -> None:
    tracker = StubTracker()
    with pytest.raises(ValueError):
        run_training(world, historical(world), tracker, {**PARAMS, "method": "nonsense"})
    assert tracker.calls == []
