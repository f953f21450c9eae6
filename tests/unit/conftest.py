"""Fixtures shared by the unit tests of the fitted estimator's prediction paths."""

from __future__ import annotations

import pytest

from tests.unit.test_uplift import FAST, make_log
from training.uplift import MultiActionUplift


@pytest.fixture(scope="module")
def models() -> dict[str, MultiActionUplift]:
    """An S- and a T-learner fitted on one small seeded log (each test module gets its own)."""
    log = make_log(n=3000, seed=5)
    return {
        method: MultiActionUplift(method=method, **FAST).fit(
            log.X, log.action, log.propensity, log.outcomes
        )
        for method in ("s", "t")
    }
