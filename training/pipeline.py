"""``nba train``: from a raw folder to a registered, evaluated and gated model.

The steps are plain Python over two adapters passed in (Feast's historical retrieval and the
MLflow ``Tracker``), so a test can run them with stubs. Order matters for "no half-registered
model": everything that can fail on bad data (features, checks, fitting, evaluation, loading
the champion) happens before anything is written to MLflow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.contract import RawData
from features.rule_policy import RulePolicy, load_rule_policy
from training import plots
from training.dataset import (
    TrainingSet,
    assemble,
    check_learnable,
    entity_frame,
    fingerprint,
    time_split,
)
from training.evaluate import Evaluation, evaluate, fit_reward_model, served_choice
from training.metrics import policy_value_se
from training.reference import REFERENCE_ARTIFACT, build_reference
from training.selection import BASELINES, Selection, checks_of, default_learners, select
from training.served import ServedPolicy, ValuePolicy
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
    #: The cross-fitted comparison of the candidate policies and the one selected.
    selection: Selection | None = None
    #: The selected policy as registered (``describe()`` reads it).
    served: ServedPolicy | None = None


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
    chosen = served_choice(champion, test, costs)
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


def select_policy(
    train: TrainingSet,
    model: MultiActionUplift,
    params: dict[str, Any],
    costs: ActionCosts,
    rule_policy: RulePolicy,
    candidates: Sequence[str] | None,
    confident_only: bool,
    stage: Callable[[str], None],
    require_baselines: bool = True,
) -> tuple[Selection, ServedPolicy]:
    """Choose the policy on the training decisions (cross-fitted DR values) and fit it on all
    of them; ``model`` (the uplift model fitted on them) serves the S-learner candidate and
    every answer's uplifts."""
    seed = int(params.get("random_state", 0))
    learners = default_learners(costs, seed, rule_policy, candidates, params, confident_only)
    stage(f"selecting the policy among {len(learners) - len(BASELINES)} candidates and "
          f"{len(BASELINES)} baselines (cross-fitted on {len(train):,} decisions)")  # fmt: skip
    selection = select(train, learners, costs, k=3, seed=seed, confident_only=confident_only,
                       require_baselines=require_baselines)  # fmt: skip
    name = selection.selected
    if name == "s-learner":
        fitted: Any = ValuePolicy(model, costs)  # the very learner, fitted on all of train
    else:
        fitted = learners[name](train, selection.scores)
    value_model = getattr(fitted, "value_model", None) or model
    summary = {"reason": selection.reason, "table": selection.table.round(4).to_dict("index")}
    return selection, ServedPolicy(name, value_model, fitted, costs, summary)


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
    rule_policy: RulePolicy | None = None,
    candidates: Sequence[str] | None = None,
    confident_only: bool = False,
) -> TrainResult:
    """Train, select, evaluate, log, register and gate one policy (the module docstring).

    ``gate_baselines``: the gate also requires the candidate to beat ``none`` and the rule
    policy beyond noise (``baseline_checks``; the ``NBA_GATE_BASELINES`` setting).
    ``rule_policy``: the brand's rule file (default: the shipped one); ``candidates``: the
    candidate policies compared (``training.selection.CANDIDATES``; default all);
    ``confident_only``: only policies that act when confident may be selected."""
    costs = costs or ActionCosts()
    rule_policy = rule_policy if rule_policy is not None else load_rule_policy()
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
    selection, served = select_policy(
        train, model, params, costs, rule_policy, candidates, confident_only, stage,
        require_baselines=gate_baselines,
    )  # fmt: skip
    stage(f"evaluating {served.name} on the latest {len(test):,} decisions")
    reward_model = fit_reward_model(
        train, costs, random_state=params.get("random_state", 0), n_jobs=params.get("n_jobs", 1)
    )
    evaluation = evaluate(served, test, reward_model, costs, rule_policy)
    candidate_value = float(evaluation.policy_table.loc["learned", "dr"])
    q_hat = reward_model.predict(test.X)
    # The gate's evidence against the baselines is the selection's: cross-fitted on every
    # training decision, with the multiple-candidate correction (the held-out split is
    # smaller, so it only measures the champion comparison and the reported values).
    checks = checks_of(selection) if gate_baselines else ()

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
    reference = build_reference(train.X, served, costs, seed=params.get("random_state", 0))

    stage("logging to MLflow and registering")
    with tracker.start_run(run_name=f"{served.name}-{len(train)}") as run_id:
        tracker.log_params({**params, "test_share": test_share, "source": source})
        tracker.set_tags(
            {
                "policy.selected": served.name,
                "policy.reason": selection.reason[:5000],
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
        tracker.log_table(selection.table.reset_index(), "policy_selection.json")
        tracker.log_table(pd.DataFrame({"line": served.describe()}), "policy.json")
        tracker.log_figure(plots.qini_curves(evaluation.qini_curves), "qini_curves.png")
        tracker.log_figure(plots.policy_values(evaluation.policy_table), "policy_values.png")
        tracker.log_figure(plots.feature_importance(model), "feature_importance.png")
        tracker.log_parquet(reference, REFERENCE_ARTIFACT)
        uri = tracker.log_model(served, test.X.head(5))
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
    return TrainResult(evaluation, version, run_id, decision, len(train), len(test), selection,
                       served)  # fmt: skip
