"""The drift reference: what the model saw at training, in the decision log's column names.

``nba train`` logs it with the model's run (``reference/reference.parquet``) and ``nba drift``
compares the decision log's window with it column to column:

* ``f_<name>`` for every ``features.schema.MODEL_FEATURES`` input (the training split's rows);
* ``uplift_<a>`` (conversion uplift against ``none``) and ``value_<a>`` (expected net value),
  computed as the service computes them (``predict_effects`` + ``training.value.expected_value``);
* ``action``: the learned policy's choice on the row, :func:`preferred_action` of the values
  (the action of highest expected value, ``none`` when none is positive; no guardrails, which
  live in ``serving/`` and need request context training does not have).

The training split is sampled down to ``max_rows`` (uniformly, seeded) when it is larger: drift
scores are effect sizes (normed Wasserstein distances), whose sampling error at 200k rows is far
below any useful threshold, while the artifact's size stays bounded whatever the log's size.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import pandas as pd

from features import schema
from features.contract import ACTIONS
from training.value import ActionCosts, expected_value

#: Largest number of training rows kept in the reference.
REFERENCE_MAX_ROWS: Final = 200_000
#: Artifact path of the reference inside the training run.
REFERENCE_ARTIFACT: Final = "reference/reference.parquet"
#: The decision log's prefix of feature snapshot columns (``features.decision_log``).
FEATURE_PREFIX: Final = "f_"

FEATURE_COLUMNS: Final[tuple[str, ...]] = tuple(FEATURE_PREFIX + n for n in schema.MODEL_FEATURES)
UPLIFT_COLUMNS: Final[tuple[str, ...]] = tuple(f"uplift_{a}" for a in ACTIONS)
VALUE_COLUMNS: Final[tuple[str, ...]] = tuple(f"value_{a}" for a in ACTIONS)
PREDICTION_COLUMNS: Final[tuple[str, ...]] = UPLIFT_COLUMNS + VALUE_COLUMNS


def preferred_action(values: np.ndarray) -> np.ndarray:
    """The learned policy's choice per row of ``values`` (``(n, 4)``, ``ACTIONS`` order).

    The action of highest expected value, ``none`` when no value is positive; a NaN value (an
    action that was not a candidate) never wins. Same rule as ``training.evaluate.learned_choice``
    and as the service's arbitration before guardrails.
    """
    values = np.asarray(values, dtype=np.float64)
    filled = np.where(np.isnan(values), -np.inf, values)
    chosen = np.array(ACTIONS, dtype=object)[filled.argmax(axis=1)]
    chosen[~(filled.max(axis=1) > 0)] = "none"
    return chosen


def build_reference(
    X: pd.DataFrame,
    model: Any,
    costs: ActionCosts | None = None,
    *,
    max_rows: int = REFERENCE_MAX_ROWS,
    seed: int = 0,
) -> pd.DataFrame:
    """The reference frame of a fitted model on its training inputs ``X`` (see module doc).

    Rows are sampled uniformly without replacement (``seed``) down to ``max_rows``, keeping their
    original order.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    rows = np.arange(len(X))
    if len(X) > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(len(X), size=max_rows, replace=False))
    sample = X.iloc[rows].reset_index(drop=True)
    inputs = sample[list(model.feature_names_)].astype(np.float64)
    effects = model.predict_effects(inputs)
    ev = expected_value(effects, model.actions_, costs or ActionCosts())
    values = np.zeros((len(sample), len(ACTIONS)))
    uplift = np.zeros((len(sample), len(ACTIONS)))
    for j, action in enumerate(model.actions_):
        values[:, ACTIONS.index(action)] = ev[:, j]
        uplift[:, ACTIONS.index(action)] = effects["converted"][:, j]
    out = {
        FEATURE_PREFIX + name: (
            sample[name].to_numpy(np.float64) if name in sample else np.full(len(sample), np.nan)
        )
        for name in schema.MODEL_FEATURES
    }
    for j, action in enumerate(ACTIONS):
        out[f"uplift_{action}"] = uplift[:, j]
        out[f"value_{action}"] = values[:, j]
    out["action"] = preferred_action(values)
    return pd.DataFrame(out)
