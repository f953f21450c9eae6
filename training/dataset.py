"""The training set: the decision log joined point in time to features, plus outcomes.

``assemble`` is pure: it takes the logged decisions, their outcomes and the stored features as
of each decision (from Feast's historical retrieval, or ``features.build.build_features``; both
give the same values) and returns aligned model inputs, actions, propensities and outcomes.
``time_split`` holds out the latest decisions, as a live model meets the future, not a shuffle.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features import schema
from features.contract import ACTIONS, RawData
from features.derive import derive_features

#: An arm with fewer logged decisions in the training split than this cannot be learned.
MIN_ROWS_PER_ACTION = 200


class TrainingDataError(ValueError):
    """The decision log cannot support training; the message says what to do."""


@dataclass
class TrainingSet:
    """Aligned rows: one per decision that has an observed outcome."""

    X: pd.DataFrame
    decisions: pd.DataFrame
    outcomes: pd.DataFrame
    features: pd.DataFrame
    truth: pd.DataFrame | None = None

    def __len__(self) -> int:
        return len(self.X)

    def take(self, rows: np.ndarray) -> TrainingSet:
        """The subset at integer positions ``rows`` (re-indexed from 0)."""

        def pick(frame: pd.DataFrame) -> pd.DataFrame:
            return frame.iloc[rows].reset_index(drop=True)

        return TrainingSet(
            X=pick(self.X),
            decisions=pick(self.decisions),
            outcomes=pick(self.outcomes),
            features=pick(self.features),
            truth=None if self.truth is None else pick(self.truth),
        )


def entity_frame(raw: RawData) -> pd.DataFrame:
    """The entity rows for point-in-time retrieval: each decision's customer and time."""
    return entity_frame_of(raw.actions)


def entity_frame_of(decisions: pd.DataFrame) -> pd.DataFrame:
    """Entity rows (``customer_id``, ``event_timestamp``) of a frame with ``decided_at``."""
    return pd.DataFrame(
        {
            schema.ENTITY: decisions["customer_id"].to_numpy(object),
            schema.EVENT_TIMESTAMP: decisions["decided_at"].to_numpy(),
        }
    ).astype({schema.EVENT_TIMESTAMP: "datetime64[ns, UTC]"})


def assemble(raw: RawData, stored: pd.DataFrame) -> TrainingSet:
    """Join decisions, their outcomes and the features as of each decision.

    Args:
        raw: validated raw tables (``actions``, ``outcomes``, optionally ``truth``).
        stored: the ``schema.STORED`` features of each row of ``entity_frame(raw)``, aligned.

    Raises:
        TrainingDataError: no outcomes joined, features missing for the decisions, or an action
            too rare / never explored to learn its effect.
    """
    actions = raw.actions.reset_index(drop=True)
    if len(stored) != len(actions):
        raise TrainingDataError(
            f"{len(stored)} feature rows for {len(actions)} decisions: retrieve one per decision"
        )
    missing = [c for c in schema.STORED if c not in stored.columns]
    if missing:
        raise TrainingDataError(f"feature rows lack columns {missing[:5]}: run `nba features`")
    if len(actions) and stored["marketing_opt_in"].isna().all():
        raise TrainingDataError(
            "no features were found at the logged decisions: run `nba features --raw DIR` on "
            "the same folder before `nba train`"
        )
    outcome_pos = pd.Index(raw.outcomes["decision_id"]).get_indexer(actions["decision_id"])
    has_outcome = outcome_pos >= 0
    if not has_outcome.any():
        raise TrainingDataError(
            "no outcomes joined: none of the decisions in `actions` has a row in `outcomes` "
            "(outcomes are observed 30 days after a decision; train on an older log)"
        )
    rows = np.flatnonzero(has_outcome)
    features = derive_features(
        stored.iloc[rows].reset_index(drop=True),
        actions["decided_at"].iloc[rows].reset_index(drop=True),
    )
    X = features[list(schema.MODEL_FEATURES)].astype(np.float64)
    outcomes = (
        raw.outcomes.iloc[outcome_pos[rows]][["converted", "revenue", "unsubscribed"]]
        .reset_index(drop=True)
        .astype({"converted": np.int64, "unsubscribed": np.int64, "revenue": np.float64})
    )
    truth = None
    if raw.truth is not None:
        truth_pos = pd.Index(raw.truth["decision_id"]).get_indexer(actions["decision_id"])
        if (truth_pos[rows] >= 0).all():
            truth = raw.truth.iloc[truth_pos[rows]].reset_index(drop=True)
    return TrainingSet(
        X=X,
        decisions=actions.iloc[rows].reset_index(drop=True),
        outcomes=outcomes,
        features=features,
        truth=truth,
    )


def time_split(data: TrainingSet, test_share: float = 0.2) -> tuple[TrainingSet, TrainingSet]:
    """Train on the earlier decisions, evaluate on the latest ``test_share`` of them."""
    if not 0 < test_share < 1:
        raise ValueError(f"test_share must be in (0, 1), got {test_share}")
    order = np.argsort(data.decisions["decided_at"].to_numpy(), kind="stable")
    cut = round(len(order) * (1 - test_share))
    return data.take(np.sort(order[:cut])), data.take(np.sort(order[cut:]))


def check_learnable(train: TrainingSet, min_rows: int = MIN_ROWS_PER_ACTION) -> None:
    """Every action needs enough logged decisions, some of them explored (propensity < 1).

    An action only ever chosen deterministically (propensity 1) carries no contrast with the
    alternatives for the same customers, so its effect cannot be identified from the log.
    """
    decisions = train.decisions
    counts = decisions["action"].value_counts()
    for action in ACTIONS:
        n = int(counts.get(action, 0))
        if n < min_rows:
            raise TrainingDataError(
                f"too few decisions for action {action!r}: {n} in the training split, at least "
                f"{min_rows} needed; log more decisions (e.g. a randomized holdout) first"
            )
        explored = (decisions["action"] == action) & (decisions["propensity"] < 1.0)
        if not explored.any():
            raise TrainingDataError(
                f"action {action!r} was never randomized (every logged choice had propensity "
                "1): its effect cannot be estimated; run a randomized holdout that explores it"
            )


def fingerprint(raw: RawData) -> str:
    """A short content hash of the decision log and outcomes (what the model learned from)."""
    digest = hashlib.sha256()
    for frame in (raw.actions, raw.outcomes):
        digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]
