"""The MLflow flavor of the uplift model: scikit-learn, with a pyfunc that names its columns.

``MultiActionUplift.predict`` is a scikit-learn ``predict``: an ``(n, len(actions_))`` array of
uplifts on the conversion probability, columns in ``actions_`` order. Through the plain
scikit-learn flavor, ``mlflow.pyfunc.load_model(uri).predict(df)`` returns that array as is,
an unlabeled ``(-1, 3)`` tensor, and the caller has to know the column order.

This module is an MLflow flavor module (``mlflow.models.Model.log(flavor=...)``, MLflow's own
mechanism for custom flavors): ``save_model`` writes exactly what ``mlflow.sklearn`` writes
(the ``sklearn`` flavor, which ``Tracker.load`` and serving keep using: serving takes the raw
boosters from the estimator), and points the ``python_function`` flavor at ``_load_pyfunc``
below, whose ``predict`` returns a DataFrame with one column ``uplift_<action>`` per action.
The logged signature is inferred from that frame, so it names the same columns.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

#: Prefix of the pyfunc's output columns (the decision log and the drift reference use it too).
UPLIFT_PREFIX = "uplift_"


def output_columns(model: Any) -> list[str]:
    """The pyfunc's output columns of a fitted ``MultiActionUplift``: ``uplift_<action>``."""
    return [f"{UPLIFT_PREFIX}{action}" for action in model.actions_]


def predict_frame(model: Any, data: pd.DataFrame | np.ndarray) -> pd.DataFrame:
    """``model.predict(data)`` as a DataFrame with one named column per action."""
    index = data.index if isinstance(data, pd.DataFrame) else None
    return pd.DataFrame(model.predict(data), columns=output_columns(model), index=index)


class UpliftPyfunc:
    """What ``mlflow.pyfunc.load_model`` wraps: the estimator, predicting a labeled frame."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Uplift of each action versus the control, one ``uplift_<action>`` column each."""
        return predict_frame(self.model, data)

    def get_raw_model(self) -> Any:
        """The scikit-learn estimator (``PyFuncModel.get_raw_model()``)."""
        return self.model


def save_model(sk_model: Any, path: str, mlflow_model: Any = None, **kwargs: Any) -> None:
    """Save like ``mlflow.sklearn.save_model``, with this module as the pyfunc loader.

    Called by ``mlflow.models.Model.log(flavor=training.mlflow_flavor, sk_model=...)``.
    """
    import mlflow.sklearn
    from mlflow.models import Model
    from mlflow.pyfunc import FLAVOR_NAME as PYFUNC

    mlflow_model = mlflow_model if mlflow_model is not None else Model()
    mlflow.sklearn.save_model(sk_model, path, mlflow_model=mlflow_model, **kwargs)
    # mlflow.sklearn names itself as the loader; only the loader changes, the data and the
    # environment of the pyfunc flavor stay the ones it wrote.
    mlflow_model.flavors[PYFUNC]["loader_module"] = __name__
    mlflow_model.save(os.path.join(path, "MLmodel"))


def _load_pyfunc(path: str) -> UpliftPyfunc:
    """Loader of the pyfunc flavor (``path``: the model folder or its pickled estimator)."""
    import mlflow.sklearn

    folder = os.path.dirname(path) if os.path.isfile(path) else path
    return UpliftPyfunc(mlflow.sklearn.load_model(folder))
