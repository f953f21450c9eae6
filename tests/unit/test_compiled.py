"""Compiled forests (lleaves) predict what LightGBM predicts, up to rounding, and fall back."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from training.uplift import COMPILED_MIN_ROWS, MultiActionUplift

pytest.importorskip("lleaves")


def rows(n: int) -> np.ndarray:
    X = np.random.default_rng(1).normal(size=(n, 5)) * 2
    X[::7, 4] = np.nan  # missing values take the trees' default branches
    return X


@pytest.mark.parametrize("method", ["s", "t"])
def test_compiled_predictions_equal_lightgbm(
    models: dict[str, MultiActionUplift], method: str, tmp_path: Path
) -> None:
    model = pickle.loads(pickle.dumps(models[method]))  # a private copy to compile
    X = rows(COMPILED_MIN_ROWS + 100)
    expected = model.predict_effects(X)
    assert model.compile_for_batches(tmp_path) == len(
        {id(b) for b in [*model.models_.values(), *model.base_models_.values()]}
    )
    got = model.predict_effects(X)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-12, atol=1e-12, err_msg=key)
    # The same policy: every row's best action is the same.
    assert (got["converted"].argmax(axis=1) == expected["converted"].argmax(axis=1)).all()
    # Small batches and single rows stay on LightGBM itself (bit-equal to the request path).
    small = X[:10]
    np.testing.assert_array_equal(
        model.predict_effects(small)["converted"],
        models[method].predict_effects(small)["converted"],
    )


def test_compiled_code_is_cached_and_not_pickled(
    models: dict[str, MultiActionUplift], tmp_path: Path
) -> None:
    model = pickle.loads(pickle.dumps(models["s"]))
    model.compile_for_batches(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files and all(name.startswith("forest-") and name.endswith(".so") for name in files)
    again = pickle.loads(pickle.dumps(model))
    assert "_compiled" not in again.__dict__
    again.compile_for_batches(tmp_path)  # loads the cached files: nothing new is written
    assert sorted(p.name for p in tmp_path.iterdir()) == files
    X = rows(COMPILED_MIN_ROWS)
    np.testing.assert_array_equal(
        again.predict_effects(X)["converted"], model.predict_effects(X)["converted"]
    )


def test_without_lleaves_predictions_stay_on_lightgbm(
    models: dict[str, MultiActionUplift], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "lleaves", None)  # import lleaves -> ImportError
    model = pickle.loads(pickle.dumps(models["s"]))
    assert model.compile_for_batches(tmp_path) == 0
    X = rows(COMPILED_MIN_ROWS)
    np.testing.assert_array_equal(
        model.predict_effects(X)["converted"], models["s"].predict_effects(X)["converted"]
    )


def test_cache_folder_beside_a_writable_model_else_beside_the_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    import serving.runtime
    from serving.runtime import compiled_trees_dir

    model, logs = tmp_path / "model", tmp_path / "logs" / "decisions"
    model.mkdir()
    settings = SimpleNamespace(model_path=model, decision_log_dir=logs)
    assert compiled_trees_dir(settings) == model / "compiled"
    # A read-only mounted model folder (root ignores permission bits: say it is not writable).
    monkeypatch.setattr(serving.runtime.os, "access", lambda path, mode: False)
    assert compiled_trees_dir(settings) == tmp_path / "logs" / "compiled-trees"
    monkeypatch.undo()
    assert compiled_trees_dir(SimpleNamespace(model_path=None, decision_log_dir=logs)) == (
        tmp_path / "logs" / "compiled-trees"
    )
