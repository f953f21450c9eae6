"""The request path's one-row predictions equal the estimator's batch predictions exactly."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from training.fastpredict import RowPredictor
from training.uplift import MultiActionUplift


def rows() -> np.ndarray:
    X = np.random.default_rng(0).normal(size=(60, 5)) * 2
    X[::7, 4] = np.nan
    return X


@pytest.mark.parametrize("method", ["s", "t"])
def test_effects_row_equals_predict_effects(
    models: dict[str, MultiActionUplift], method: str
) -> None:
    model = models[method]
    for x in rows():
        batch = model.predict_effects(x[None, :])
        one = model.predict_effects_row(x)
        assert batch.keys() == one.keys()
        for key in batch:
            np.testing.assert_array_equal(one[key], batch[key], err_msg=key)


@pytest.mark.parametrize("method", ["s", "t"])
def test_contributions_row_equals_contributions(
    models: dict[str, MultiActionUplift], method: str
) -> None:
    model = models[method]
    for x in rows()[:10]:
        frame = model.contributions(x[None, :])
        for action in model.actions_:
            np.testing.assert_array_equal(
                model.contributions_row(x, action), frame.loc[action].to_numpy()[:5]
            )


def test_fast_state_survives_pickling_and_is_rebuilt(models: dict[str, MultiActionUplift]) -> None:
    model = models["s"]
    model.predict_effects_row(rows()[0])  # builds the process-local predictors
    clone = pickle.loads(pickle.dumps(model))
    assert "_row_predictors" not in clone.__dict__
    np.testing.assert_array_equal(
        clone.predict_effects_row(rows()[1])["converted"],
        model.predict_effects_row(rows()[1])["converted"],
    )
    with pytest.raises(TypeError, match="process-local"):
        pickle.dumps(model.__dict__["_row_predictors"][0])


def test_row_predictor_refuses_a_wrong_row(models: dict[str, MultiActionUplift]) -> None:
    predictor = RowPredictor(models["s"].base_models_["fare"])
    with pytest.raises(ValueError, match="float64 row of 5"):
        predictor(np.zeros(4))
    with pytest.raises(ValueError, match="one row of 5"):
        models["s"].predict_effects_row(np.zeros(6))
