"""Real-data benchmark on the Hillstrom (MineThatData 2008) e-mail experiment.

64,000 customers were randomized with equal probability to one of three arms: a men's
merchandise e-mail, a women's merchandise e-mail, or no e-mail. The outcome here is ``visit``
(the customer visited the site within two weeks). Because assignment is random and uniform,
every row's logging propensity is 1/3: held-out rows score an uplift ranking (Qini) without any
confounding correction, and the IPW value of any 3-arm targeting policy is unbiased on them.

The benchmark fits ``MultiActionUplift`` (actions ``mens`` and ``womens`` versus ``control``) on
a stratified training split and reports, on the test split:

* ``qini_womens`` / ``qini_mens``: normalised Qini AUC (scikit-uplift's ``qini_auc_score``) of
  that arm's predicted uplift, on the rows of that arm and of the control (rows of the other
  e-mail are excluded);
* ``ipw_value_3arm``: IPW value of the visit rate of the policy "argmax over {control: 0, mens:
  uplift_mens, womens: uplift_womens}", with its standard error ``ipw_se``.

Peers (scikit-uplift, causalml) run the same protocol with LightGBM base learners. They live in
the optional ``bench`` extra, are imported lazily, and a missing library gives a row saying so.
Binary-treatment peers (scikit-uplift) are fitted once per e-mail on that e-mail's and the
control's rows.

Parameters of our estimator (``TUNED_PARAMS``) were fixed before looking at any test split: they
were chosen by 5-fold cross-validation on the training split of seed 42 (``tune_ours``; the grid
and scores are in ``benchmarks/hillstrom_peers.md``). The peers' LightGBM models get the settings
cross-validated for our T-learner.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from training.metrics import policy_value_se, qini_auc_score
from training.uplift import MultiActionUplift

#: Raw ``segment`` value -> arm name used by the estimator and the policy.
SEGMENTS: Final[dict[str, str]] = {
    "Mens E-Mail": "mens",
    "Womens E-Mail": "womens",
    "No E-Mail": "control",
}
ACTIONS: Final[tuple[str, ...]] = ("mens", "womens")
CONTROL: Final = "control"
#: Policy actions in argmax order: on a tie (e.g. every uplift <= 0) the control wins.
POLICY_ACTIONS: Final[tuple[str, ...]] = (CONTROL, *ACTIONS)
#: Randomized, equal arms: the logging probability of every arm on every row.
PROPENSITY: Final = 1.0 / 3.0
#: Columns the raw file must have (``conversion`` and ``spend`` are not used).
COVARIATES: Final[tuple[str, ...]] = (
    "recency",
    "history_segment",
    "history",
    "mens",
    "womens",
    "zip_code",
    "newbie",
    "channel",
)
REQUIRED_COLUMNS: Final[tuple[str, ...]] = (*COVARIATES, "segment", "visit")
#: Fixed one-hot categories, so that the feature columns never depend on which rows were read.
ZIP_CODES: Final[dict[str, str]] = {"Urban": "urban", "Surburban": "suburban", "Rural": "rural"}
CHANNELS: Final[dict[str, str]] = {"Phone": "phone", "Web": "web", "Multichannel": "multichannel"}
#: ``history_segment`` values look like ``"3) $200 - $350"``: the leading number is the ordinal.
_SEGMENT_ORDINAL: Final = re.compile(r"^\s*(\d+)\)")

#: Our estimator's LightGBM settings per method, each the best of a 62-setting grid by 5-fold
#: cross-validation on the seed-42 training split only (criterion fixed beforehand: the mean of
#: the two Qinis; see ``tune_ours`` and ``benchmarks/hillstrom_peers.md``). Strong shrinkage and
#: large leaves win: the effects are small (a few visit points) and the outcome noisy.
TUNED_PARAMS: Final[dict[str, dict[str, Any]]] = {
    # Re-run of the same cross-validation with method "s" added (8 settings): it came first.
    "s": {"n_estimators": 300, "learning_rate": 0.03, "num_leaves": 7, "min_child_samples": 200},
    "dr": {"n_estimators": 50, "learning_rate": 0.03, "num_leaves": 7, "min_child_samples": 1000},
    "t": {"n_estimators": 100, "learning_rate": 0.015, "num_leaves": 7, "min_child_samples": 400},
}
#: The method that won that cross-validation.
OUR_METHOD: Final = "s"
#: Seeds of ``run``: the first one is reported on its own, then the mean over all.
SEEDS: Final[tuple[int, ...]] = (42, 0, 1, 2, 3)
METRICS: Final[tuple[str, ...]] = ("qini_womens", "qini_mens", "ipw_value_3arm")
#: Import name -> distribution name of the peer libraries.
LIBRARIES: Final[dict[str, str]] = {"sklift": "scikit-uplift", "causalml": "causalml"}
#: How to get the peers: causalml goes in without its dependencies, because its ``xgboost``
#: requirement pulls a CUDA library on Linux; the bench extra carries the CPU-only build and the
#: rest of causalml's requirements (benchmarks/hillstrom_peers.md).
BENCH_HINT: Final = "pip install -e '.[bench]' && pip install --no-deps causalml==0.18.0"

Progress = Callable[[str], None] | None


# ------------------------------------------------------------------------------------ data


def load_hillstrom(path: str | Path) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Read the Hillstrom CSV and encode it for tree models.

    Returns ``(X, arm, y)``: ``X`` all-numeric (``history_segment`` as its ordinal 1-7,
    ``zip_code`` and ``channel`` one-hot over fixed categories, the rest as is), ``arm`` the
    arm name per row (``"mens"``, ``"womens"`` or ``"control"``, object dtype) and ``y`` the
    ``visit`` outcome (int 0/1).

    Raises ``ValueError`` naming the problem for: missing columns, missing values, unknown
    ``segment``/``zip_code``/``channel`` values, a malformed ``history_segment``, a non-binary
    ``visit``.
    """
    raw = pd.read_csv(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise ValueError(
            f"{path}: missing columns {missing}; a Hillstrom file needs {list(REQUIRED_COLUMNS)} "
            "(the MineThatData 2008 e-mail challenge CSV)"
        )
    if raw.empty:
        raise ValueError(f"{path}: no rows")
    na = raw[list(REQUIRED_COLUMNS)].isna().sum()
    if na.any():
        raise ValueError(f"{path}: missing values in {na[na > 0].to_dict()}: drop or fill them")

    arm = _lookup(raw["segment"], SEGMENTS, "segment", path).to_numpy(dtype=object)
    y = raw["visit"].to_numpy()
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"{path}: visit must be 0/1, got values {np.unique(y)[:10].tolist()}")

    ordinal = raw["history_segment"].astype(str).str.extract(_SEGMENT_ORDINAL, expand=False)
    if ordinal.isna().any():
        bad = raw.loc[ordinal.isna(), "history_segment"].unique()[:5].tolist()
        raise ValueError(
            f"{path}: history_segment must start with its rank like '3) $200 - $350', got {bad}"
        )
    X = pd.DataFrame({"recency": _numeric(raw, "recency", path)})
    X["history_segment"] = ordinal.astype(float)
    for column in ("history", "mens", "womens", "newbie"):
        X[column] = _numeric(raw, column, path)
    for column, categories in (("zip_code", ZIP_CODES), ("channel", CHANNELS)):
        names = _lookup(raw[column], categories, column, path)
        prefix = "zip" if column == "zip_code" else column
        for name in categories.values():
            X[f"{prefix}_{name}"] = (names == name).astype(float)
    return X, arm, y.astype(np.int64)


def _numeric(raw: pd.DataFrame, column: str, path: object) -> pd.Series:
    """``raw[column]`` as float; ``ValueError`` quoting values that are not numbers."""
    values = pd.to_numeric(raw[column], errors="coerce")
    if values.isna().any():
        bad = raw.loc[values.isna(), column].astype(str).unique()[:5].tolist()
        raise ValueError(f"{path}: {column} must be numeric, got {bad}")
    return values.astype(float)


def _lookup(values: pd.Series, mapping: Mapping[str, str], column: str, path: object) -> pd.Series:
    """``values`` mapped through ``mapping``; ``ValueError`` listing any value it lacks."""
    mapped = values.astype(str).str.strip().map(mapping)
    if mapped.isna().any():
        unknown = sorted(values[mapped.isna()].astype(str).unique().tolist())[:5]
        raise ValueError(f"{path}: unknown {column} values {unknown}; expected {list(mapping)}")
    return mapped


def split(
    arm: Sequence[str] | np.ndarray,
    y: Sequence[int] | np.ndarray,
    seed: int = 42,
    test_size: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/test row positions, stratified by arm x outcome.

    Stratifying on both keeps each arm's share and visit rate equal in the two parts, so the
    test Qini and IPW values are not shifted by an unlucky draw of a small arm-outcome cell.
    Returns sorted position arrays ``(train_idx, test_idx)``.
    """
    strata = pd.Series(np.asarray(arm, dtype=str)) + "|" + pd.Series(np.asarray(y).astype(str))
    positions = np.arange(len(strata))
    train_idx, test_idx = train_test_split(
        positions, test_size=test_size, random_state=seed, stratify=strata.to_numpy()
    )
    return np.sort(train_idx), np.sort(test_idx)


# ------------------------------------------------------------------------------- scoring


def score(
    arm: np.ndarray, y: np.ndarray, uplift_mens: np.ndarray, uplift_womens: np.ndarray
) -> dict[str, float]:
    """Test metrics of predicted uplifts (rows aligned with ``arm`` and ``y``).

    Qini per e-mail on that e-mail's and the control's rows; the IPW value (and its standard
    error) of the 3-arm argmax policy, with the policy's share of each action.
    """
    arm = np.asarray(arm, dtype=object)
    y = np.asarray(y, dtype=np.float64)
    out: dict[str, float] = {}
    for action, uplift in (("womens", uplift_womens), ("mens", uplift_mens)):
        rows = (arm == action) | (arm == CONTROL)
        out[f"qini_{action}"] = qini_auc_score(
            y[rows], (arm[rows] == action).astype(int), np.asarray(uplift)[rows]
        )
    # Column order = POLICY_ACTIONS; argmax breaks ties toward the control (column 0).
    gains = np.column_stack([np.zeros(len(arm)), uplift_mens, uplift_womens])
    chosen = np.asarray(POLICY_ACTIONS, dtype=object)[np.argmax(gains, axis=1)]
    out.update(policy_value(chosen, arm, y))
    for action in POLICY_ACTIONS:
        out[f"share_{action}"] = float(np.mean(chosen == action))
    return out


def policy_value(chosen: np.ndarray, arm: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """IPW value of the visit rate under ``chosen`` (uniform logging, p = 1/3) and its SE."""
    estimate = policy_value_se(
        "ipw",
        chosen,
        arm,
        np.full(len(arm), PROPENSITY),
        np.asarray(y, dtype=np.float64),
        actions=POLICY_ACTIONS,
    )
    return {"ipw_value_3arm": estimate.value, "ipw_se": estimate.se}


def reference_rows(arm: np.ndarray, y: np.ndarray) -> list[dict[str, Any]]:
    """IPW values of the constant policies (always control / mens / womens) on these rows."""
    rows = []
    for action in POLICY_ACTIONS:
        chosen = np.full(len(arm), action, dtype=object)
        rows.append({"learner": f"always {action}", **policy_value(chosen, arm, y)})
    return rows


# ----------------------------------------------------------------------------- our model


def fit_ours(
    X: pd.DataFrame,
    arm: np.ndarray,
    y: np.ndarray,
    rows: np.ndarray,
    method: str = OUR_METHOD,
    **params: Any,
) -> MultiActionUplift:
    """``MultiActionUplift`` on ``rows``: actions mens and womens versus control, p = 1/3.

    The estimator models three outcomes; Hillstrom has only ``visit``, given as ``converted``.
    Revenue and unsubscribes are set to zero: constant labels cost almost nothing to fit and
    never touch the conversion uplift.
    """
    params = {"random_state": 0, "n_jobs": -1, **params}
    model = MultiActionUplift(method=method, actions=ACTIONS, control=CONTROL, **params)
    X_fit = X.iloc[rows].reset_index(drop=True)
    n = len(rows)
    outcomes = pd.DataFrame(
        {"converted": np.asarray(y)[rows], "revenue": np.zeros(n), "unsubscribed": np.zeros(n)}
    )
    return model.fit(X_fit, np.asarray(arm, dtype=object)[rows], np.full(n, PROPENSITY), outcomes)


def evaluate_ours(
    X: pd.DataFrame,
    arm: np.ndarray,
    y: np.ndarray,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    method: str = OUR_METHOD,
    **params: Any,
) -> dict[str, Any]:
    """Fit ``MultiActionUplift`` on ``train_idx`` and score it on ``test_idx`` (see ``score``).

    ``params`` go to the estimator, over ``TUNED_PARAMS[method]`` (``random_state`` defaults to
    0, ``n_jobs`` to -1).
    Returns one result row: ``learner``, the metrics, the policy's action shares, ``seconds``.
    """
    params = {**TUNED_PARAMS.get(method, {}), **params}
    start = time.perf_counter()
    model = fit_ours(X, arm, y, train_idx, method=method, **params)
    uplift = model.predict(X.iloc[test_idx].reset_index(drop=True))
    mens, womens = uplift[:, ACTIONS.index("mens")], uplift[:, ACTIONS.index("womens")]
    metrics = score(np.asarray(arm)[test_idx], np.asarray(y)[test_idx], mens, womens)
    return {
        "learner": f"ours MultiActionUplift ({method})",
        **metrics,
        "seconds": time.perf_counter() - start,
    }


def tune_ours(
    X: pd.DataFrame,
    arm: np.ndarray,
    y: np.ndarray,
    train_idx: np.ndarray,
    grid: Iterable[Mapping[str, Any]],
    n_folds: int = 5,
    seed: int = 42,
    progress: Progress = None,
) -> pd.DataFrame:
    """Cross-validated scores of settings on the training rows only (never the test split).

    Each entry of ``grid`` holds ``method`` and estimator parameters. The training rows are
    split into ``n_folds`` folds stratified by arm x visit; every setting is fitted on all folds
    but one and scored on the held-out one. Returns one row per setting with the mean (and
    standard deviation across folds) of each metric, sorted by the mean of the two Qinis.
    """
    train_idx = np.asarray(train_idx)
    arm_t, y_t = np.asarray(arm, dtype=object)[train_idx], np.asarray(y)[train_idx]
    strata = pd.Series(arm_t.astype(str)) + "|" + pd.Series(y_t.astype(str))
    folds = list(StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(train_idx, strata))
    rows = []
    for setting in grid:
        setting = dict(setting)
        method = setting.pop("method", OUR_METHOD)
        if progress is not None:
            progress(f"cv {method} {setting}")
        scores = [
            evaluate_ours(X, arm, y, train_idx[fit], train_idx[held], method=method, **setting)
            for fit, held in folds
        ]
        frame = pd.DataFrame(scores)
        row: dict[str, Any] = {"method": method, **setting}
        for metric in METRICS:
            row[metric] = frame[metric].mean()
            row[f"{metric}_std"] = frame[metric].std()
        row["qini_mean"] = (row["qini_womens"] + row["qini_mens"]) / 2
        rows.append(row)
    return pd.DataFrame(rows).sort_values("qini_mean", ascending=False, ignore_index=True)


# ---------------------------------------------------------------------------------- peers


@dataclass(frozen=True)
class Peer:
    """A peer learner: its library, how to build it, and how it is fitted.

    ``kind``: ``"binary"`` (scikit-uplift: one binary-treatment model per e-mail, fitted on
    that e-mail's and the control's rows), ``"meta"`` (a causalml meta-learner, natively
    multi-treatment, given the known propensities), ``"forest"`` (causalml's uplift forest).
    """

    name: str
    module: str
    build: Callable[[int], Any]
    kind: str

    @property
    def library(self) -> str:
        """The distribution to install (``sklift`` is published as ``scikit-uplift``)."""
        return LIBRARIES.get(self.module, self.module)


def _lgbm_params(seed: int) -> dict[str, Any]:
    """Peers' LightGBM settings: those cross-validated for our T-learner, whose models (one
    outcome classifier per arm) are what most peers' base learners are; not tuned per peer.

    One thread per model: on these 2-core VMs OpenMP spin-up dominates small LightGBM fits.
    """
    return {**TUNED_PARAMS["t"], "random_state": seed, "n_jobs": 1, "verbose": -1}


def _clf(seed: int) -> Any:
    from lightgbm import LGBMClassifier

    return LGBMClassifier(**_lgbm_params(seed))


def _reg(seed: int) -> Any:
    from lightgbm import LGBMRegressor

    return LGBMRegressor(**_lgbm_params(seed))


def _sklift(name: str) -> Callable[[int], Any]:
    def build(seed: int) -> Any:
        from sklift import models

        if name == "TwoModels":
            return models.TwoModels(_clf(seed), _clf(seed), method="vanilla")
        return getattr(models, name)(_clf(seed))

    return build


def _causalml_meta(name: str) -> Callable[[int], Any]:
    def build(seed: int) -> Any:
        from causalml.inference import meta

        if name == "BaseXClassifier":
            return meta.BaseXClassifier(
                outcome_learner=_clf(seed), effect_learner=_reg(seed), control_name=CONTROL
            )
        # The DR-learner regresses outcomes and pseudo-outcomes: regressors throughout.
        learner = _reg(seed) if name == "BaseDRLearner" else _clf(seed)
        return getattr(meta, name)(learner=learner, control_name=CONTROL)

    return build


def _uplift_forest(seed: int) -> Any:
    from causalml.inference.tree import UpliftRandomForestClassifier

    # Not LightGBM: causalml's own forest of KL-divergence uplift trees. min_samples_leaf is
    # raised from 100 so that leaves hold enough treated and control rows at ~15% visit rates.
    return UpliftRandomForestClassifier(
        control_name=CONTROL,
        n_estimators=100,
        max_depth=5,
        min_samples_leaf=200,
        evaluationFunction="KL",
        random_state=seed,
        n_jobs=-1,
    )


PEERS: Final[tuple[Peer, ...]] = (
    Peer("sklift SoloModel (LGBM)", "sklift", _sklift("SoloModel"), "binary"),
    Peer("sklift TwoModels (LGBM)", "sklift", _sklift("TwoModels"), "binary"),
    Peer("sklift ClassTransformation (LGBM)", "sklift", _sklift("ClassTransformation"), "binary"),
    Peer("causalml BaseTClassifier (LGBM)", "causalml", _causalml_meta("BaseTClassifier"), "meta"),
    Peer("causalml BaseXClassifier (LGBM)", "causalml", _causalml_meta("BaseXClassifier"), "meta"),
    Peer("causalml BaseDRLearner (LGBM)", "causalml", _causalml_meta("BaseDRLearner"), "meta"),
    Peer("causalml UpliftRandomForest (KL)", "causalml", _uplift_forest, "forest"),
)


def _fit_predict(
    peer: Peer,
    seed: int,
    X: np.ndarray,
    arm: np.ndarray,
    y: np.ndarray,
    train_idx: np.ndarray,
    X_test: np.ndarray,
) -> dict[str, np.ndarray]:
    """Fit ``peer`` on ``train_idx`` and predict each e-mail's uplift on ``X_test``."""
    if peer.kind == "binary":
        out = {}
        for action in ACTIONS:
            rows = train_idx[np.isin(arm[train_idx], (action, CONTROL))]
            model = peer.build(seed)
            model.fit(X[rows], y[rows], (arm[rows] == action).astype(int))
            out[action] = np.asarray(model.predict(X_test), dtype=np.float64)
        return out
    model = peer.build(seed)
    X_fit, t_fit, y_fit = X[train_idx], arm[train_idx].astype(str), y[train_idx]
    if peer.kind == "forest":
        model.fit(X_fit, t_fit, y_fit)
        frame = model.predict(X_test, full_output=True)
        return {a: frame[f"delta_{a}"].to_numpy(dtype=np.float64) for a in ACTIONS}

    # Meta-learners take the propensity of each e-mail within {e-mail, control}: 1/2 by design
    # (equal randomization). Passing it skips causalml's propensity model, which could only add
    # noise to a known number (the same reasoning as our estimator's logged propensities).
    def half(n: int) -> dict[str, np.ndarray]:
        return {a: np.full(n, 0.5) for a in ACTIONS}

    # The DR-learner's folds take their own seed.
    fit_kwargs = {"seed": seed} if "seed" in inspect.signature(model.fit).parameters else {}
    model.fit(X_fit, t_fit, y_fit, p=half(len(train_idx)), **fit_kwargs)
    te = np.asarray(model.predict(X_test, p=half(len(X_test))), dtype=np.float64)
    groups = [str(g) for g in model.t_groups]  # te's columns: the sorted treatment names
    return {a: te[:, groups.index(a)] for a in ACTIONS}


def evaluate_peers(
    X: pd.DataFrame,
    arm: np.ndarray,
    y: np.ndarray,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    seed: int = 42,
    progress: Progress = None,
    peers: Sequence[Peer] = PEERS,
) -> list[dict[str, Any]]:
    """scikit-uplift and causalml learners on the same split and metrics as ``evaluate_ours``.

    Never raises for a peer: a library that cannot be imported gives one row naming it with an
    ``error`` (and how to install it) instead of its learners' rows, and a learner that fails
    gives its own row with the error.
    """
    X_arr = X.to_numpy(dtype=np.float64)
    arm_arr = np.asarray(arm, dtype=object)
    y_arr = np.asarray(y, dtype=np.int64)
    train_idx, test_idx = np.asarray(train_idx), np.asarray(test_idx)
    rows: list[dict[str, Any]] = []
    broken: dict[str, str] = {}
    for peer in peers:
        if peer.library not in broken:
            try:
                importlib.import_module(peer.module)
            except Exception as error:  # ImportError, or a broken install failing at import
                broken[peer.library] = (
                    f"not importable ({type(error).__name__}: {error}); "
                    f"install the bench extra: {BENCH_HINT}"
                )
                rows.append({"learner": peer.library, "error": broken[peer.library]})
        if peer.library in broken:
            continue
        if progress is not None:
            progress(f"seed {seed}: {peer.name}")
        start = time.perf_counter()
        try:
            uplift = _fit_predict(peer, seed, X_arr, arm_arr, y_arr, train_idx, X_arr[test_idx])
            metrics = score(arm_arr[test_idx], y_arr[test_idx], uplift["mens"], uplift["womens"])
        except Exception as error:  # one peer's failure must not sink the whole benchmark
            rows.append({"learner": peer.name, "error": f"{type(error).__name__}: {error}"})
            continue
        rows.append({"learner": peer.name, **metrics, "seconds": time.perf_counter() - start})
    return rows


# ------------------------------------------------------------------------------------ run


def run(
    path: str | Path,
    seeds: Sequence[int] = SEEDS,
    progress: Progress = None,
    methods: Sequence[str] = ("s", "dr", "t"),
    peers: bool = True,
) -> pd.DataFrame:
    """The benchmark table: every learner on every seed's split, plus constant policies.

    Columns: ``learner``; ``qini_womens``, ``qini_mens``, ``ipw_value_3arm``, ``ipw_se`` on the
    first seed's split (42 by default); the same three metrics averaged over all seeds
    (``*_mean``) with their standard deviation across seeds (``*_std``); the mean ``seconds``
    per fit; and ``error`` (empty unless a peer is missing or failed). Reference rows ``always
    control``/``always mens``/``always womens`` carry only IPW values. ``progress`` is called
    with a short label as each step starts. ``df.attrs["seeds"]`` holds the seeds.
    ``methods``: our estimator's methods to run; ``peers=False`` skips the peers.
    """
    return summarize(run_per_seed(path, seeds, progress, methods, peers), seeds)


def run_per_seed(
    path: str | Path,
    seeds: Sequence[int] = SEEDS,
    progress: Progress = None,
    methods: Sequence[str] = ("s", "dr", "t"),
    peers: bool = True,
) -> pd.DataFrame:
    """``run``'s measurements before averaging: one row per learner and seed (column ``seed``).

    Our estimator is seeded with the split's seed; so are the peers.
    """
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed")
    if progress is not None:
        progress(f"loading {path}")
    X, arm, y = load_hillstrom(path)
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        train_idx, test_idx = split(arm, y, seed=seed)
        for method in methods:
            if progress is not None:
                progress(f"seed {seed}: ours ({method})")
            row = evaluate_ours(X, arm, y, train_idx, test_idx, method=method, random_state=seed)
            rows.append({**row, "seed": seed})
        if peers:
            rows += [
                {**row, "seed": seed}
                for row in evaluate_peers(X, arm, y, train_idx, test_idx, seed, progress)
            ]
        rows += [{**row, "seed": seed} for row in reference_rows(arm[test_idx], y[test_idx])]
    return pd.DataFrame(rows)


def summarize(per_seed: pd.DataFrame, seeds: Sequence[int]) -> pd.DataFrame:
    """One row per learner: first-seed metrics, and mean and std over seeds (see ``run``)."""
    per_seed = per_seed.copy()
    for column in (*METRICS, "ipw_se", "seconds", "error"):
        if column not in per_seed.columns:
            per_seed[column] = math.nan if column != "error" else None
    order = list(dict.fromkeys(per_seed["learner"]))
    grouped = per_seed.groupby("learner", sort=False)
    first = per_seed[per_seed["seed"] == seeds[0]].set_index("learner")
    table = pd.DataFrame({"learner": order}).set_index("learner")
    for metric in METRICS:
        table[metric] = first[metric].reindex(table.index)
    table["ipw_se"] = first["ipw_se"].reindex(table.index)
    for metric in METRICS:
        table[f"{metric}_mean"] = grouped[metric].mean()
        table[f"{metric}_std"] = grouped[metric].std()
    table["seconds"] = grouped["seconds"].mean()
    table["error"] = grouped["error"].agg(
        lambda errors: next((e for e in errors if isinstance(e, str) and e), "")
    )
    table = table.reset_index()
    table.attrs["seeds"] = tuple(seeds)
    return table
