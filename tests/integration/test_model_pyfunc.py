"""The registered model's pyfunc against a real MLflow store in a temporary folder: a labeled
DataFrame, one ``uplift_<action>`` column per action, named by the logged signature too."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.tracking import Tracker
from training.uplift import MultiActionUplift

pytestmark = pytest.mark.integration

ARMS = np.array(["promo", "apology_credit", "recognition", "none"])
COLUMNS = ["uplift_promo", "uplift_apology_credit", "uplift_recognition"]


def tiny_model(data: pd.DataFrame) -> MultiActionUplift:
    """A tiny fitted uplift model (random actions, noise outcomes): fast, not useful."""
    rng = np.random.default_rng(8)
    n = len(data)
    outcomes = pd.DataFrame(
        {
            "converted": rng.random(n) < 0.3,
            "revenue": rng.random(n) * 100,
            "unsubscribed": rng.random(n) < 0.05,
        }
    )
    action = ARMS[rng.integers(0, len(ARMS), n)]
    estimator = MultiActionUplift(n_estimators=10, num_leaves=4, min_child_samples=10)
    return estimator.fit(data, action, np.full(n, 0.25), outcomes)


def test_pyfunc_returns_one_named_column_per_action(tmp_path: Path) -> None:
    import mlflow.pyfunc

    rng = np.random.default_rng(7)
    data = pd.DataFrame({f"x{i}": rng.normal(size=400) for i in range(4)})
    model = tiny_model(data)
    tracker = Tracker(
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifact_location=str(tmp_path / "artifacts"),
        experiment="pyfunc",
        model_name="pyfunc-model",
    )
    with tracker.start_run():
        uri = tracker.log_model(model, data.head(5))
        version = tracker.register(uri, {})

    pyfunc = mlflow.pyfunc.load_model(f"models:/pyfunc-model/{version}")
    out = pyfunc.predict(data.iloc[10:30])

    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == COLUMNS
    assert out.shape == (20, 3)
    assert list(out.index) == list(range(10, 30))
    np.testing.assert_array_equal(out.to_numpy(), model.predict(data.iloc[10:30]))
    assert pyfunc.metadata.get_output_schema().input_names() == COLUMNS
    # The estimator stays the scikit-learn one: for Tracker.load, serving, and the pyfunc.
    assert type(pyfunc.get_raw_model()) is MultiActionUplift
    assert type(tracker.load(version)) is MultiActionUplift
    assert pyfunc.metadata.flavors["sklearn"]["serialization_format"] == "cloudpickle"
