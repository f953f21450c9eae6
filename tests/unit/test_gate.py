"""The champion gate's compare-and-set (``training.gate``) on fakes: no MLflow here.

The race with a real MLflow store and two processes is in ``tests/integration/test_tracking.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from training.gate import (
    LOCK_SUFFIX,
    MAX_ATTEMPTS,
    BaselineCheck,
    GateDecision,
    baseline_refusal,
    champion_lock,
    compare_and_promote,
    lock_path,
)


class Registry:
    """A champion alias; ``moves`` are applied by the n-th read (another host promoting)."""

    def __init__(self, champion: int | None, moves: dict[int, int] | None = None) -> None:
        self.champion = champion
        self.moves = moves or {}
        self.reads = 0
        self.promoted: list[int] = []

    def read(self) -> int | None:
        self.reads += 1
        if self.reads in self.moves:
            self.champion = self.moves[self.reads]
        return self.champion

    def promote(self, version: int) -> None:
        self.promoted.append(version)
        self.champion = version


VALUES = {1: 1.0, 4: 1.4, 7: 1.7}


def gate(
    registry: Registry,
    version: int,
    value: float,
    measured: tuple[int | None, float | None],
    value_of: Callable[[int], float] | None = VALUES.__getitem__,
    **kwargs: object,
) -> GateDecision:
    return compare_and_promote(
        version,
        value,
        measured=measured,
        read_champion=registry.read,
        value_of=value_of,
        promote=registry.promote,
        **kwargs,  # type: ignore[arg-type]
    )


def test_unchanged_champion_uses_the_measured_value() -> None:
    registry = Registry(1)
    evaluated: list[int] = []

    def value_of(version: int) -> float:
        evaluated.append(version)
        return VALUES[version]

    decision = gate(registry, 5, 1.2, (1, 1.0), value_of)
    assert decision.promoted and registry.champion == 5
    assert (decision.champion_version, decision.champion_value) == (1, 1.0)
    assert evaluated == []  # nothing re-evaluated when nothing moved


def test_moved_champion_is_evaluated_and_named_in_the_decision() -> None:
    # v5 measured against v1 (1.0) but v4 (1.4) became champion meanwhile: v5 (1.2) loses.
    registry = Registry(4)
    decision = gate(registry, 5, 1.2, (1, 1.0))
    assert not decision.promoted and registry.champion == 4
    assert (decision.champion_version, decision.champion_value) == (4, 1.4)
    assert "champion v4 1.4" in decision.reason
    # Measured when there was no champion, and one was forced in meanwhile.
    registry = Registry(1)
    decision = gate(registry, 5, 1.2, (None, None))
    assert decision.promoted and decision.champion_version == 1


def test_champion_moving_between_evaluation_and_promotion_restarts_the_comparison() -> None:
    # Read 1: v1. Read 2 (just before the alias is set): v7 arrived from another host.
    registry = Registry(1, moves={2: 7})
    decision = gate(registry, 5, 1.2, (1, 1.0))
    assert registry.promoted == [] and registry.champion == 7
    assert not decision.promoted and decision.champion_version == 7
    # A champion that never stops moving is an error, not a silent promotion.
    registry = Registry(1, moves={n: 100 + n for n in range(2, 3 * MAX_ATTEMPTS)})
    with pytest.raises(RuntimeError, match="kept moving"):
        gate(registry, 5, 9.9, (1, 1.0), value_of=lambda v: 0.0)
    assert registry.promoted == []


def test_moved_champion_without_value_of() -> None:
    with pytest.raises(ValueError, match=r"champion moved \(measured against v1, now v4\)"):
        gate(Registry(4), 5, 1.2, (1, 1.0), value_of=None)
    # Forced: promoted, the replaced champion named, its value unknown.
    registry = Registry(4)
    decision = gate(registry, 5, 1.2, (1, 1.0), value_of=None, force=True)
    assert decision.promoted and registry.champion == 5
    assert (decision.champion_version, decision.champion_value) == (4, None)


def test_lock_file_sits_beside_the_sqlite_store_or_per_server() -> None:
    assert lock_path("sqlite:////srv/nba/mlruns/mlflow.db") == Path(
        f"/srv/nba/mlruns/mlflow.db{LOCK_SUFFIX}"
    )
    one, other = lock_path("http://a:5000"), lock_path("http://b:5000")
    assert one != other and one.name.endswith(LOCK_SUFFIX)


def test_lock_excludes_other_holders_and_has_a_deadline(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    events: list[str] = []
    held = threading.Event()

    def holder() -> None:
        with champion_lock(uri):
            held.set()
            events.append("first in")
            time.sleep(0.3)
            events.append("first out")

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(5)
    with (
        pytest.raises(TimeoutError, match=r"mlflow\.db\.gate\.lock"),
        champion_lock(uri, timeout=0.05),
    ):
        pass
    with champion_lock(uri, timeout=5):
        events.append("second in")
    thread.join()
    assert events == ["first in", "first out", "second in"]


def test_a_candidate_not_beating_the_baselines_beyond_noise_is_refused_with_the_reason() -> None:
    registry = Registry(champion=1)
    checks = (
        BaselineCheck("none", gain=3.0, lower=1.0),
        BaselineCheck("rules-v1", gain=0.8, lower=-0.4),
    )
    decision = gate(registry, 7, 5.0, (1, 1.0), baselines=checks)
    assert not decision.promoted
    assert registry.promoted == []
    assert decision.reason == (
        "not better than rules-v1 beyond noise: gain +0.80 a decision, 95% lower bound -0.40 "
        "<= 0; champion v1 kept"
    )
    sure = (BaselineCheck("none", 3.0, 1.0), BaselineCheck("rules-v1", 0.8, 0.1))
    assert gate(Registry(champion=1), 7, 5.0, (1, 1.0), baselines=sure).promoted
    # --force still overrides (the way out when the baselines cannot be estimated).
    assert gate(Registry(champion=1), 7, 5.0, (1, 1.0), baselines=checks, force=True).promoted


def test_baseline_refusal_names_the_first_failing_baseline_and_a_missing_bound() -> None:
    assert baseline_refusal(()) is None
    nan_check = (BaselineCheck("none", 1.0, float("nan")),)
    assert "not better than none beyond noise" in str(baseline_refusal(nan_check))
