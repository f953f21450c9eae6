"""``nba train``: from a raw folder to a registered, evaluated and gated model.

The steps are plain Python over two adapters passed in (Feast's historical retrieval and the
MLflow ``Tracker``), so a test can run them with stubs. Order matters for "no half-registered
model": everything that can fail on bad data (features, checks, fitting, evaluation, loading
the champion) happens before anything is written to MLflow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.contract import RawData
from training import plots
from training.baselines import rules_v1
from training.dataset import (
    TrainingSet,
    assemble,
    check_learnable,
    entity_frame,
    fingerprint,
    time_split,
)
from training.evaluate import Evaluation, evaluate, fit_reward_model, learned_choice
from training.gate import BaselineCheck
from training.metrics import policy_value_se
from training.policy_learning import aipw_scores, feasible
from training.reference import REFERENCE_ARTIFACT, build_reference
from training.selection import value_table
from training.uplift import MultiActionUplift
from training.value import ActionCosts, realized_value


@dataclass
class TrainResult:
    """What a training run produced."""

    evaluation: Evaluation
    version: int | None
    run_id: str | None
    gate: Any
    train_rows: int
    test_rows: int


def champion_dr_value(
    champion: Any, test: TrainingSet, q_hat: np.ndarray, costs: ActionCosts
) -> float:
    """The champion's DR policy value on the candidate's held-out decisions (same q_hat)."""
    missing = [c for c in champion.feature_names_ if c not in test.X.columns]
    if missing:
        raise ValueError(
            f"the champion model needs features {missing[:5]} that this data no longer has: "
            "retrain with `nba train --force` to replace it"
        )
    chosen, _ = learned_choice(champion, test.X[list(champion.feature_names_)], costs)
    reward = realized_value(
        test.decisions["action"], test.outcomes["revenue"], test.outcomes["unsubscribed"], costs
    )
    return policy_value_se(
        "dr",
        chosen,
        test.decisions["action"].to_numpy(object),
        test.decisions["propensity"].to_numpy(np.float64),
        reward,
        q_hat=q_hat,
    ).value


def baseline_checks(
    chosen: np.ndarray, test: TrainingSet, q_hat: np.ndarray, costs: ActionCosts
) -> tuple[BaselineCheck, ...]:
    """The candidate's DR gains over doing nothing and over ``rules-v1`` on the held-out
    decisions, paired and clustered by customer (``training.selection.value_table``).

    The candidate is judged as served: promos the contract forbids become ``none`` (the
    guardrails' job in the service), as their value there would be the reward model's guess."""
    action = test.decisions["action"].to_numpy(object)
    reward = realized_value(action, test.outcomes["revenue"], test.outcomes["unsubscribed"], costs)
    scores = aipw_scores(q_hat, action, test.decisions["propensity"].to_numpy(np.float64), reward)
    table = value_table(
        {
            "candidate": feasible(chosen, test.features),
            "none": np.full(len(test), "none", dtype=object),
            "rules": rules_v1(test.features),
        },
        scores,
        test.decisions["customer_id"].to_numpy(object),
    )
    row = table.loc["candidate"]
    return (
        BaselineCheck("none", float(row["gain_vs_none"]), float(row["lb_vs_none"])),
        BaselineCheck("rules-v1", float(row["gain_vs_rules"]), float(row["lb_vs_rules"])),
    )


def run_training(
    raw: RawData,
    historical: Callable[[pd.DataFrame], pd.DataFrame],
    tracker: Any,
    params: dict[str, Any],
    *,
    costs: ActionCosts | None = None,
    force: bool = False,
    test_share: float = 0.2,
    stage: Callable[[str], None] = lambda _label: None,
    source: str = "",
    gate_baselines: bool = True,
) -> TrainResult:
    """Train, evaluate, log, register and gate one model (see the module docstring).

    ``gate_baselines``: the gate also requires the candidate to beat ``none`` and ``rules-v1``
    beyond noise (``baseline_checks``; the ``NBA_GATE_BASELINES`` setting)."""
    costs = costs or ActionCosts()
    stage(f"retrieving features at {len(raw.actions):,} decisions (Feast, point in time)")
    stored = historical(entity_frame(raw))
    data = assemble(raw, stored)
    train, test = time_split(data, test_share)
    check_learnable(train)

    stage(f"fitting the uplift model on {len(train):,} decisions")
    model = MultiActionUplift(**params).fit(
        train.X,
        train.decisions["action"],
        train.decisions["propensity"],
        train.outcomes,
    )
    stage(f"evaluating on the latest {len(test):,} decisions")
    reward_model = fit_reward_model(
        train, costs, random_state=params.get("random_state", 0), n_jobs=params.get("n_jobs", 1)
    )
    evaluation = evaluate(model, test, reward_model, costs)
    candidate_value = float(evaluation.policy_table.loc["learned", "dr"])
    q_hat = reward_model.predict(test.X)
    checks = baseline_checks(evaluation.chosen, test, q_hat, costs) if gate_baselines else ()

    def value_of(version: int) -> float:
        """A champion's DR value on this candidate's held-out decisions (same q_hat)."""
        return champion_dr_value(tracker.load(version), test, q_hat, costs)

    # Measured now, before anything is written (bad data fails here); the gate re-evaluates
    # with value_of if another training moved the champion in the meantime.
    champion_info = tracker.champion()
    champion_version = champion_info.version if champion_info is not None else None
    champion_value = None
    if champion_version is not None:
        try:
            champion_value = value_of(champion_version)
        except Exception:
            # Without --force an unusable champion is an error that says what to do; with
            # --force the new model replaces it, which is the way out.
            if not force:
                raise
    # The drift reference (nba drift): training inputs and the model's scores on them.
    reference = build_reference(train.X, model, costs, seed=params.get("random_state", 0))

    stage("logging to MLflow and registering")
    with tracker.start_run(run_name=f"{params.get('method', 'dr')}-{len(train)}") as run_id:
        tracker.log_params({**params, "test_share": test_share, "source": source})
        tracker.set_tags(
            {
                "data.fingerprint": fingerprint(raw),
                "data.decisions": str(len(raw.actions)),
                "data.train_rows": str(len(train)),
                "data.test_rows": str(len(test)),
                "data.reference_rows": str(len(reference)),
            }
        )
        tracker.log_metrics({k: v for k, v in evaluation.metrics.items() if np.isfinite(v)})
        tracker.log_table(evaluation.policy_table.reset_index(), "policy_values.json")
        tracker.log_table(evaluation.uplift_table.reset_index(), "uplift_metrics.json")
        tracker.log_figure(plots.qini_curves(evaluation.qini_curves), "qini_curves.png")
        tracker.log_figure(plots.policy_values(evaluation.policy_table), "policy_values.png")
        tracker.log_figure(plots.feature_importance(model), "feature_importance.png")
        tracker.log_parquet(reference, REFERENCE_ARTIFACT)
        uri = tracker.log_model(model, test.X.head(5))
        version = tracker.register(uri, {"data.fingerprint": fingerprint(raw)})
        decision = tracker.gate(
            version,
            candidate_value,
            champion_value,
            force=force,
            compared_with=champion_version,
            value_of=value_of,
            baselines=checks,
        )
    return TrainResult(evaluation, version, run_id, decision, len(train), len(test))
