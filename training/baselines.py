"""Baseline policies the learned policy must beat, as pure functions of decision-time features.

``rules_v1`` is the simple rule policy the simulator logs (``nba.simulate`` takes its decisions
from here, so the baseline evaluated offline is exactly the one in the logs, minus exploration).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Name of the rule policy in the ``actions.policy`` column.
RULES_V1 = "rules-v1"


def rules_v1(features: pd.DataFrame) -> np.ndarray:
    """The rule policy's preferred action per row (before its epsilon-greedy exploration).

    Apology credit after a negative experience in the last 14 days that was not compensated;
    else recognition within 30 days of a milestone; else a promo to a recent abandoner who may
    receive marketing; else nothing.

    ``features`` holds stored and derived features (``features.derive.derive_features``).
    """
    days_neg = features["days_since_last_negative"].fillna(np.inf).to_numpy(np.float64)
    days_mile = features["days_since_last_milestone"].fillna(np.inf).to_numpy(np.float64)
    compensated = features["compensated_since_last_negative"].to_numpy(bool)
    reachable = features["marketing_opt_in"].to_numpy(bool) & ~features["unsubscribed"].to_numpy(
        bool
    )
    abandoner = features["abandons_30d"].to_numpy(np.int64) > 0
    return np.select(
        [(days_neg <= 14) & ~compensated, days_mile <= 30, abandoner & reachable],
        np.array(["apology_credit", "recognition", "promo"], dtype=object),
        default="none",
    ).astype(object)
