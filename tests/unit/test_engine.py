"""How ``MultiActionUplift`` trains: early stopping, binning once, threaded batch predictions,
and the engine helpers of ``training.engine`` that need no cluster (the Dask engine itself is
tested in ``tests/integration/test_dask_training.py``)."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from tests.unit.test_uplift import FAST, Log, make_log
from training import uplift
from training.engine import DaskData, best_iteration, trimmed, validation_curve
from training.uplift import MultiActionUplift


@pytest.fixture(scope="module")
def log() -> Log:
    return make_log(n=6000, seed=2)


def _fit(log: Log, **params: object) -> MultiActionUplift:
    return MultiActionUplift(**{**FAST, **params}).fit(
        log.X, log.action, log.propensity, log.outcomes
    )


def _trees(model: MultiActionUplift) -> list[int]:
    return [b.num_trees() for b in [*model.models_.values(), *model.base_models_.values()]]


# ------------------------------------------------------------ early stopping


@pytest.mark.parametrize("method", ["s", "t", "dr"])
def test_early_stopping_cuts_models_at_their_best_iteration(log: Log, method: str) -> None:
    """300 trees at learning rate 0.3 over-fit a few thousand rows: every model stops early, and
    holds exactly the trees up to its best iteration (no trailing trees)."""
    params = {"n_estimators": 300, "learning_rate": 0.3, "n_iter_no_change": 10}
    stopped = _fit(log, method=method, early_stopping=True, **params)
    assert max(_trees(stopped)) < 300
    # A real cut, not best_iteration metadata over trailing trees.
    assert all(b.best_iteration in (0, b.num_trees()) for b in stopped.models_.values())
    full = _fit(log, method=method, early_stopping=False, **params)
    assert set(_trees(full)) == {300}
    # Stopping early on an over-fitting schedule does not lose ranking quality.
    truth = log.true_uplift
    corr_stopped = np.corrcoef(stopped.predict(log.X)[:, 0], truth[:, 0])[0, 1]
    corr_full = np.corrcoef(full.predict(log.X)[:, 0], truth[:, 0])[0, 1]
    assert corr_stopped > corr_full - 0.05


def test_early_stopping_is_deterministic_across_n_jobs(log: Log) -> None:
    one = _fit(log, method="dr", early_stopping=True, n_jobs=1)
    two = _fit(log, method="dr", early_stopping=True, n_jobs=2)
    np.testing.assert_array_equal(one.predict(log.X), two.predict(log.X))
    assert _trees(one) == _trees(two)


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("max_bin", 1),
        ("early_stopping", "yes"),
        ("early_stopping", "auto"),
        ("validation_fraction", 0.0),
        ("validation_fraction", 1.0),
        ("n_iter_no_change", 0),
        ("engine", "spark"),
        ("dask_scheduler", ""),
    ],
)
def test_new_parameters_are_validated_at_fit(log: Log, param: str, value: object) -> None:
    est = MultiActionUplift(**{**FAST, param: value})  # __init__ only stores (sklearn)
    with pytest.raises(ValueError, match=param):
        est.fit(log.X, log.action, log.propensity, log.outcomes)


def test_max_bin_reaches_lightgbm(log: Log) -> None:
    coarse = _fit(log, method="t", max_bin=4)
    fine = _fit(log, method="t", max_bin=255)
    assert not np.array_equal(coarse.predict(log.X), fine.predict(log.X))
    # With 4 bins a feature has at most 3 distinct thresholds in the whole model.
    booster = coarse.models_[("promo", "converted")]
    splits = booster.trees_to_dataframe().dropna(subset=["split_feature"])
    assert splits.groupby("split_feature")["threshold"].nunique().max() <= 3


# ------------------------------------------------------------ predictions


@pytest.mark.parametrize("method", ["s", "t", "dr"])
def test_threaded_batch_predictions_equal_single_threaded(
    log: Log, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _fit(log, method=method, n_jobs=1)
    single = model.predict_effects(log.X)
    monkeypatch.setattr(uplift, "PARALLEL_PREDICT_ROWS", 100)
    model.set_params(n_jobs=3)  # three uneven chunks
    threaded = model.predict_effects(log.X)
    assert single.keys() == threaded.keys()
    for key in single:
        np.testing.assert_array_equal(threaded[key], single[key], err_msg=key)
    np.testing.assert_array_equal(model.predict(log.X), single["converted"])


# ------------------------------------------------------------ engine helpers


def _booster(objective: str, seed: int = 0) -> tuple[lgb.Booster, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(3000, 4))
    signal = X[:, 0] - 0.5 * X[:, 1]
    if objective == "binary":
        y = (rng.random(3000) < 1 / (1 + np.exp(-signal))).astype(float)
    else:
        y = 10 + 3 * signal + rng.normal(size=3000)
    params = {"objective": objective, "learning_rate": 0.3, "num_leaves": 15, "verbose": -1,
              "num_threads": 1, "min_data_in_leaf": 5}  # fmt: skip
    return (
        lgb.train(params, lgb.Dataset(X[:2000], y[:2000]), num_boost_round=60),
        X[2000:],
        y[2000:],
    )


@pytest.mark.parametrize("objective", ["binary", "regression"])
def test_validation_curve_matches_lightgbm_metric(objective: str) -> None:
    """The per-iteration loss the Dask engine picks its best iteration from is LightGBM's own
    metric for the objective (weighted), iteration by iteration."""
    booster, X_val, y_val = _booster(objective)
    weight = np.random.default_rng(1).uniform(0.5, 3.0, len(y_val))
    curve = validation_curve(booster, X_val, y_val, weight, objective)
    assert len(curve) == booster.num_trees()
    raw = booster.predict(X_val, raw_score=True, num_iteration=25, num_threads=1)
    if objective == "binary":
        p = 1 / (1 + np.exp(-raw))
        expected = -np.average(y_val * np.log(p) + (1 - y_val) * np.log(1 - p), weights=weight)
    else:
        expected = np.average((raw - y_val) ** 2, weights=weight)
    assert curve[24] == pytest.approx(expected, rel=1e-9)
    best = best_iteration(booster, X_val, y_val, weight, objective)
    assert curve[best - 1] == curve.min()


def test_trimmed_keeps_the_first_trees() -> None:
    booster, X_val, _ = _booster("binary")
    cut = trimmed(booster, 17)
    assert cut.num_trees() == 17
    np.testing.assert_allclose(
        cut.predict(X_val, num_threads=1), booster.predict(X_val, num_iteration=17, num_threads=1)
    )
    assert trimmed(booster, 500) is booster


def test_dask_data_splits_rows_by_block() -> None:
    """Rows map to the block holding them and their position there; labels follow the same
    order (no cluster needed)."""
    owner = np.array([0, 1, 1, 0, 2, 1, 0, 2, 2, 0])
    position = np.array([0, 0, 1, 1, 0, 2, 2, 1, 2, 3])
    data = DaskData(client=None, workers=["a", "b", "c"], blocks=[None, None, None],
                    owner=owner, position=position, n_features=2)  # fmt: skip
    rows = np.array([1, 3, 4, 6, 9])
    assert [c.tolist() for c in data.chunks(rows)] == [[3, 6, 9], [1], [4]]
    labels = np.arange(10) * 10.0
    vector = data.vector(labels, rows)
    assert vector.chunks == ((3, 1, 1),)
    np.testing.assert_array_equal(vector.compute(), [30.0, 60.0, 90.0, 10.0, 40.0])
    # A block holding none of the rows gives no (empty) chunk.
    assert data.vector(labels, np.array([1, 2])).chunks == ((2,),)
