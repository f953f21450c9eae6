"""Multi-action uplift on logged decisions, with LightGBM base learners.

Each logged row has features ``X``, the action taken (one of ``actions`` or the ``control``), the
logging propensity (the probability that the policy which took the decision chose that action)
and three outcomes: ``converted`` (0/1), ``revenue`` (>= 0) and ``unsubscribed`` (0/1).
``MultiActionUplift`` estimates, per row and action, the effect of the action versus the control
on each outcome (the conditional average treatment effect, CATE).

Part of the log comes from a non-random rule policy, so which action a row received depends on
its features: every estimator here weights by the inverse of the logged propensity, which undoes
that selection (a plain per-arm regression only undoes it where its model is right everywhere).

Methods
-------
``"t"`` (T-learner)
    One model per (arm, outcome) on that arm's rows, weighted by ``1 / propensity``;
    ``uplift_a = mu_a - mu_control``.
``"dr"`` (DR-learner, Kennedy 2020)
    Nuisance models ``mu_arm`` as in the T-learner, cross-fitted over ``n_folds`` (each row's
    ``mu`` comes from models that never saw it). Per row ``i`` and action ``a``, the doubly-robust
    pseudo-outcome::

        phi_a = mu_a - mu_c + 1[A=a] (Y - mu_a) / p_a - 1[A=c] (Y - mu_c) / p_c

    is regressed on ``X`` (one LightGBM regressor per action and outcome). Its mean is unbiased
    for the effect when *either* the ``mu`` models or the propensities are right.

``"s"`` (S-learner with structural revenue)
    One propensity-weighted model per binary outcome (converted, unsubscribed) on *all* rows,
    with the action as one-hot input columns: ``uplift_a = mu(x, a) - mu(x, control)``. The
    baseline is learned once from every arm (four times the data of a per-arm model), and trees
    only split on the action where the data show an effect, so noise in small arms does not turn
    into spurious uplift. Revenue is modelled structurally: an action changes *whether* a
    customer books, not the fare, so ``revenue uplift = conversion uplift * fare(x)``, with
    ``fare(x)`` regressed on the converted rows of all arms. Measured on simulated worlds, this
    captured far more of the oracle's value than ``"t"`` or ``"dr"`` (see the issue notes).

Which propensities the pseudo-outcome needs
-------------------------------------------
``p_a`` is multiplied by ``1[A=a]`` and ``p_c`` by ``1[A=c]``: the pseudo-outcome divides by a
propensity only at the action the row actually received, and there the logged propensity *is*
the logging policy's probability, exactly. The other actions' probabilities (``p_a`` on a row that
got the control, ...) are multiplied by zero. So no estimate of the full logging distribution is
needed, and estimating one (a multinomial classifier on ``X``) would only replace a known number by
a noisy one. When the full distribution is known it can still be passed (``propensities=`` in
``fit``): it is checked against the logged propensity and used for overlap diagnostics
(``low_overlap_share_``: rows where an action is (almost) never taken, where its effect is an
extrapolation).

Predictions go through the raw LightGBM ``Booster`` with ``num_threads=1``: with the default
thread count a single-row prediction costs ~8 ms of OpenMP spin-up on these machines. Large
batches (evaluation, scoring) are split across ``n_jobs`` Python threads instead, each on one
LightGBM thread: the same numbers, without OpenMP.

Training cost
-------------
``benchmarks/train.py`` times fit and evaluation on 1M simulated decisions x 40 features (the
figures are in the README). What keeps it affordable:

* The feature matrix is binned once per fit; every model trains on a row subset of that binned
  copy (``Dataset.subset``: no re-binning, no float copy of ``X`` per model).
* ``n_jobs`` models train at once, one LightGBM thread each (see ``n_jobs``).
* ``early_stopping`` (off by default) holds out ``validation_fraction`` of each model's rows and
  stops when its weighted validation loss has not improved for ``n_iter_no_change`` rounds,
  keeping the best iteration. At 1M decisions it made ``"dr"`` four times cheaper and better
  (share of the oracle's value 0.889 against 0.804), but it lowered the default S-learner's
  share on a 350k-decision world (0.886 against 0.894, four seeds) and the tuned Hillstrom
  Qini (0.071 against 0.087): off by default.

Engines
-------
``engine="local"`` (the default) trains in this process, ``n_jobs`` models at once.
``engine="dask"`` trains each model with ``lightgbm.dask`` over a Dask cluster: the one at
``dask_scheduler``, or a ``LocalCluster`` of two worker processes started and closed by ``fit``
(``training.engine``). The fitted attributes are the same ``Booster`` objects either way, so
prediction and serving do not depend on the engine.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.model_selection import StratifiedKFold
from sklearn.utils.validation import check_is_fitted

from training.engine import ENGINES, DaskData, dask_client, train_dask, trimmed

#: The outcomes every model is fitted for, in the order of ``outcomes`` columns.
OUTCOMES: Final[tuple[str, ...]] = ("converted", "revenue", "unsubscribed")
#: Outcomes modelled as probabilities (binary classifiers); the others are regressions.
BINARY_OUTCOMES: Final[frozenset[str]] = frozenset({"converted", "unsubscribed"})
#: Fewest logged rows an arm (an action or the control) needs to be modelled at all.
MIN_ARM_ROWS: Final = 50
METHODS: Final[tuple[str, ...]] = ("s", "t", "dr")
#: Relative tolerance between a logged propensity and the full distribution's value (logs may
#: store rounded propensities, e.g. 0.3333 for 1/3).
PROPENSITY_RTOL: Final = 1e-3
#: At most this many offending row positions are quoted in an error message.
MAX_EXAMPLES: Final = 5
#: Predictions on at least this many rows are split across ``n_jobs`` threads; below it the
#: threads cost more than they save (and a request-path prediction stays on its own thread).
PARALLEL_PREDICT_ROWS: Final = 20_000
#: With ``compile_for_batches``, predictions on at least this many rows use the compiled forests
#: (below it a call costs about the same either way, and LightGBM's result is the reference).
COMPILED_MIN_ROWS: Final = 256
#: Characters LightGBM refuses in feature names (its model format is JSON-like).
_UNSAFE_NAME: Final = re.compile(r"[^0-9A-Za-z_]")

Array = np.ndarray
Task = Callable[[], None]


class MultiActionUplift(BaseEstimator):
    """Uplift of several actions versus a control on three outcomes, scikit-learn style.

    Parameters
    ----------
    method
        ``"s"`` (S-learner with structural revenue, the default), ``"dr"`` (doubly-robust
        DR-learner with cross-fitting) or ``"t"`` (propensity-weighted T-learner). See the
        module docstring.
    actions
        The treatments, in the column order of every prediction.
    control
        The action uplifts are measured against (doing nothing).
    n_folds
        Cross-fitting folds for the DR-learner's nuisance models (>= 2; ignored by ``"t"``).
    n_estimators, learning_rate, num_leaves, min_child_samples
        LightGBM settings shared by every model (``n_estimators`` is an upper bound when
        early stopping is on).
    max_bin
        Histogram bins per feature (LightGBM ``max_bin``, same default).
    early_stopping
        Off by default (it lowered quality where measured, see "Training cost" in the module
        docstring). When on, each model holds out ``validation_fraction`` of its rows (the
        same random rows for every model of a fit) and stops once its propensity-weighted loss
        on them has not improved for ``n_iter_no_change`` rounds; it keeps the best iteration.
    validation_fraction
        Share of rows held out for early stopping, in (0, 1).
    n_iter_no_change
        Rounds without improvement of the validation loss before a model stops.
    propensity_clip
        Propensities below this are raised to it before dividing by them (caps weights at
        ``1 / propensity_clip``).
    random_state
        Seed of the fold split and of LightGBM; a given seed gives identical models (with the
        local engine: see ``engine``).
    n_jobs
        Models trained at once, each on one LightGBM thread (-1: one per core). Parallelism is
        across the independent models, not OpenMP threads inside each: on 2 cores, ``"dr"`` on
        200k x 40 took 69 s with ``n_jobs=2`` against 122 s with two OpenMP threads per model
        (91 s with ``n_jobs=1``), and there is no OpenMP spin. Results do not depend on it.
        Predictions on large batches use ``n_jobs`` threads, each on one LightGBM thread;
        small ones (a request) one thread. Ignored in training by ``engine="dask"``.
    engine
        ``"local"`` (this process) or ``"dask"`` (``lightgbm.dask`` on a Dask cluster, one
        model at a time over all workers; needs the ``distributed`` package). Models differ
        slightly between engines (distributed LightGBM finds bin boundaries per worker), not
        their kind: ``models_`` holds plain Boosters either way. Dask fits are not
        bit-reproducible (which worker bins which feature follows the order lightgbm.dask
        ranks them in); their quality is, within noise (``tests/integration``).
    dask_scheduler
        Address of the Dask scheduler for ``engine="dask"`` (e.g. ``"tcp://10.0.0.5:8786"``);
        None starts a two-worker ``LocalCluster`` for the fit and closes it after. Ignored by
        ``engine="local"``. Settings (``NBA_TRAIN_ENGINE``, ``NBA_DASK_SCHEDULER``) are read by
        the entry point, not here.

    Attributes
    ----------
    actions_, control_, arms_
        The actions, the control, and both (``actions_ + (control_,)``).
    feature_names_, n_features_in_
        Feature columns seen in ``fit`` (predictions select columns by these names).
    models_
        ``{(action, outcome): Booster}``. For ``"dr"`` the CATE model (predicts the uplift); for
        ``"t"`` the arm's outcome model (predicts ``mu_action``).
    base_models_
        ``{outcome: Booster}``: the control arm's outcome models ``mu_control`` fitted on all
        control rows (``"t"``: every outcome; ``"dr"``: converted and revenue, for the
        ``base_*`` predictions).
    arm_counts_
        Logged rows per arm.
    low_overlap_share_
        ``{action: share of rows whose logging probability for it is < propensity_clip}`` when
        the full logging distribution was given to ``fit``, else ``None``.
    """

    def __init__(
        self,
        method: str = "s",
        actions: tuple[str, ...] = ("promo", "apology_credit", "recognition"),
        control: str = "none",
        n_folds: int = 2,
        n_estimators: int = 200,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        min_child_samples: int = 50,
        propensity_clip: float = 0.01,
        random_state: int = 0,
        n_jobs: int = 1,
        max_bin: int = 255,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 20,
        engine: str = "local",
        dask_scheduler: str | None = None,
    ) -> None:
        self.method = method
        self.actions = actions
        self.control = control
        self.n_folds = n_folds
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.propensity_clip = propensity_clip
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.max_bin = max_bin
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.engine = engine
        self.dask_scheduler = dask_scheduler

    # ------------------------------------------------------------------ fit

    def fit(
        self,
        X: pd.DataFrame | Array,
        action: Sequence[str] | Array | pd.Series,
        propensity: Sequence[float] | Array | pd.Series,
        outcomes: pd.DataFrame,
        propensities: pd.DataFrame | None = None,
    ) -> MultiActionUplift:
        """Fit the uplift models on a decision log; returns ``self``.

        Rows of ``X``, ``action``, ``propensity``, ``outcomes`` (and ``propensities``) are aligned
        by position; pandas inputs must also share ``X``'s index, so that a reordered frame fails
        loudly instead of pairing the wrong rows.

        ``propensities`` (optional) is the full logging distribution: one column per arm
        (``actions`` and ``control``), each row the probability the logging policy that took the
        decision would have chosen each action. Its value at the taken action must equal the
        logged ``propensity`` (relative tolerance ``PROPENSITY_RTOL``); if it does not on any
        row, ``fit`` raises ``ValueError`` rather than guess which of the two is right. It does
        not change the models (the pseudo-outcome only needs the taken action's propensity, see
        the module docstring); it sets ``low_overlap_share_``.

        Raises ``ValueError`` with what to do for: non-numeric ``X``; unknown, missing or too
        rare actions (fewer than ``MIN_ARM_ROWS`` rows in an arm); missing, non-positive or > 1
        propensities; outcomes with a missing column, another row count or invalid values.
        """
        self._check_params()
        X_arr, names, index = _feature_matrix(X)
        n = len(X_arr)
        arms = (*tuple(self.actions), self.control)
        codes, counts = _action_codes(action, arms, n, index)
        p_logged = _propensity_vector(propensity, n, index)
        y = _outcome_arrays(outcomes, n, index)
        low_overlap = None
        if propensities is not None:
            full = _full_propensities(propensities, arms, n, index)
            _check_agreement(full, codes, p_logged, arms)
            low_overlap = {
                a: float(np.mean(full[:, j] < self.propensity_clip))
                for j, a in enumerate(arms[:-1])
            }
        # Inverse-propensity weights of the taken action: undo the rule policy's selection.
        weight = 1.0 / np.maximum(p_logged, self.propensity_clip)

        validation = self._validation_rows(n)
        with self._cluster() as client:
            if self.method == "s":
                self._fit_s(X_arr, names, codes, y, weight, arms, validation, client)
                return self._finish_fit(arms, names, counts, low_overlap)
            data = self._prepare(X_arr, names, validation, client)
            self._fit_t_dr(data, codes, y, weight, p_logged, arms)
        return self._finish_fit(arms, names, counts, low_overlap)

    def _fit_t_dr(
        self,
        data: _Data,
        codes: Array,
        y: dict[str, Array],
        weight: Array,
        p_logged: Array,
        arms: tuple[str, ...],
    ) -> None:
        """The T- and DR-learners' models (see the module docstring)."""
        models: dict[tuple[str, str], lgb.Booster] = {}
        base: dict[str, lgb.Booster] = {}
        control_rows = np.flatnonzero(codes == len(arms) - 1)
        if self.method == "t":
            tasks = [
                self._task(models, (a, o), data, rows, y[o], weight, _objective(o))
                for j, a in enumerate(arms[:-1])
                for rows in [np.flatnonzero(codes == j)]
                for o in OUTCOMES
            ]
            tasks += [
                self._task(base, o, data, control_rows, y[o], weight, _objective(o))
                for o in OUTCOMES
            ]
            self._run(tasks)
        else:
            # The control models do not need the nuisances: train them alongside.
            nuisance, mu = self._cross_fit_tasks(data, codes, y, weight, arms)
            self._run(
                nuisance
                + [
                    self._task(base, o, data, control_rows, y[o], weight, _objective(o))
                    for o in ("converted", "revenue")
                ]
            )
            p = np.maximum(p_logged, self.propensity_clip)
            c = len(arms) - 1
            tasks = []
            for o in OUTCOMES:
                resid_c = np.where(codes == c, (y[o] - mu[o][:, c]) / p, 0.0)
                for j, a in enumerate(arms[:-1]):
                    resid_a = np.where(codes == j, (y[o] - mu[o][:, j]) / p, 0.0)
                    phi = mu[o][:, j] - mu[o][:, c] + resid_a - resid_c
                    # The CATE model: an L2 regression of the pseudo-outcome on X, unweighted
                    # (the weights are inside phi).
                    tasks.append(self._task(models, (a, o), data, None, phi, None, "regression"))
            self._run(tasks)

        self.models_ = {(a, o): models[(a, o)] for a in arms[:-1] for o in OUTCOMES}
        self.base_models_ = {o: base[o] for o in OUTCOMES if o in base}

    def _validation_rows(self, n: int) -> Array | None:
        """Rows held out for early stopping (a boolean mask), or None when it is off."""
        if not self.early_stopping:
            return None
        # One mask for the whole fit, drawn from random_state: every model holds out its share
        # of the same rows, and which rows does not depend on the order threads run in.
        return np.random.default_rng(self.random_state).random(n) < self.validation_fraction

    @contextmanager
    def _cluster(self) -> Iterator[Any]:
        """The Dask client for ``engine="dask"`` during the fit (None for the local engine)."""
        if self.engine != "dask":
            yield None
            return
        with dask_client(self.dask_scheduler) as client:
            yield client

    def _prepare(self, X: Array, names: list[str], validation: Array | None, client: Any) -> _Data:
        """``X`` made ready once for all the models of a fit: binned (local) or scattered."""
        if client is not None:
            return _Data(X, None, DaskData.scatter(client, X, self.random_state), validation)
        # One binned copy gives every model the same bin boundaries; models train on subsets
        # of it. A constant label: subsets need one, each model sets its own.
        binned = lgb.Dataset(
            X,
            label=np.zeros(len(X)),
            feature_name=_lgb_names(names),
            params=self._dataset_params(),
        ).construct()
        return _Data(X, binned, None, validation)

    def _finish_fit(
        self,
        arms: tuple[str, ...],
        names: list[str],
        counts: Array,
        low_overlap: dict[str, float] | None,
    ) -> MultiActionUplift:
        self.actions_ = tuple(self.actions)
        self.control_ = self.control
        self.arms_ = arms
        self.feature_names_ = names
        self.n_features_in_ = len(names)
        self.arm_counts_ = dict(zip(arms, counts.tolist(), strict=True))
        self.low_overlap_share_ = low_overlap
        return self

    def _fit_s(
        self,
        X: Array,
        names: list[str],
        codes: Array,
        y: dict[str, Array],
        weight: Array,
        arms: tuple[str, ...],
        validation: Array | None,
        client: Any,
    ) -> None:
        """The S-learner: one model per binary outcome over all rows, the action as input."""
        design = _with_action(X, codes, len(arms) - 1)
        s_names = [*names, *(f"action_{a}" for a in arms[:-1])]
        data = self._prepare(design, s_names, validation, client)
        models: dict[str, lgb.Booster] = {}
        converted = np.flatnonzero(y["converted"] > 0)
        # The fare model needs no action columns: it gets X itself.
        fare_data = self._prepare(X, names, validation, client)
        tasks = [
            self._task(models, o, data, None, y[o], weight, "binary")
            for o in ("converted", "unsubscribed")
        ]
        tasks.append(
            self._task(models, "fare", fare_data, converted, y["revenue"], weight, "regression")
        )
        self._run(tasks)
        # The same boosters answer for every action (the action is an input); models_ keeps its
        # (action, outcome) keys so that callers need not know the method.
        self.models_ = {
            (a, o): models["fare" if o == "revenue" else o] for a in arms[:-1] for o in OUTCOMES
        }
        self.base_models_ = {"converted": models["converted"], "fare": models["fare"]}

    def _cross_fit_tasks(
        self,
        data: _Data,
        codes: Array,
        y: dict[str, Array],
        weight: Array,
        arms: tuple[str, ...],
    ) -> tuple[list[Task], dict[str, Array]]:
        """Tasks that fill ``mu[outcome][:, arm]`` with out-of-fold nuisance predictions for
        every row and arm, and ``mu``."""
        n = len(data.X)
        mu = {o: np.empty((n, len(arms))) for o in OUTCOMES}
        # Stratified on the action, so every training part holds every arm in its logged share;
        # on the names, not the codes, so the folds do not depend on the order of actions=.
        folds = StratifiedKFold(self.n_folds, shuffle=True, random_state=self.random_state)
        names = np.asarray(arms, dtype=object)[codes]
        tasks: list[Task] = []
        for train, held_out in folds.split(np.zeros(n), names):
            for arm in range(len(arms)):
                rows = train[codes[train] == arm]
                for o in OUTCOMES:

                    def task(rows: Array = rows, held_out: Array = held_out, arm: int = arm,
                             o: str = o) -> None:  # fmt: skip
                        booster = self._train(data, rows, y[o], weight, _objective(o))
                        mu[o][held_out, arm] = _predict(booster, data.X[held_out])

                    tasks.append(task)
        return tasks, mu

    def _task(
        self,
        into: dict[Any, lgb.Booster],
        key: Any,
        data: _Data,
        rows: Array | None,
        label: Array,
        weight: Array | None,
        objective: str,
    ) -> Task:
        def task() -> None:
            into[key] = self._train(data, rows, label, weight, objective)

        return task

    def _run(self, tasks: list[Task]) -> None:
        """Run independent training tasks, ``n_jobs`` at a time (each with one LightGBM thread).

        Model-level parallelism: OpenMP threads inside one small LightGBM model barely help and
        spin badly on these VMs (stack-facts), while separate models share nothing. The Dask
        engine runs them one at a time (each already spans the cluster; ``training.engine``).
        """
        threads = 1 if self.engine == "dask" else self._threads()
        if threads == 1 or len(tasks) == 1:
            for task in tasks:
                task()
            return
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for future in [pool.submit(task) for task in tasks]:
                future.result()

    def _train(
        self,
        data: _Data,
        rows: Array | None,
        label: Array,
        weight: Array | None,
        objective: str,
    ) -> lgb.Booster:
        """One LightGBM model on ``rows`` of ``data`` (None: all rows); ``label`` and ``weight``
        are full-length. With early stopping, the validation rows among ``rows`` are held out
        and the booster is cut at its best iteration."""
        rows = np.arange(len(data.X)) if rows is None else rows
        fit_rows, valid_rows = data.split(rows)
        params = self._train_params(objective)
        if data.remote is not None:
            validation = None
            if len(valid_rows):
                w_val = None if weight is None else weight[valid_rows]
                validation = (data.X[valid_rows], label[valid_rows], w_val)
            return train_dask(
                data.remote, fit_rows, label, weight, params, self.n_estimators, validation
            )
        assert data.binned is not None  # the local engine always bins
        train_set = _subset(data.binned, fit_rows, label, weight)
        if not len(valid_rows):
            return lgb.train(params, train_set, num_boost_round=self.n_estimators)
        booster = lgb.train(
            params,
            train_set,
            num_boost_round=self.n_estimators,
            valid_sets=[_subset(data.binned, valid_rows, label, weight)],
            callbacks=[lgb.early_stopping(self.n_iter_no_change, verbose=False)],
        )
        return trimmed(booster, booster.best_iteration or booster.num_trees())

    def _threads(self) -> int:
        if self.n_jobs == -1:
            return os.cpu_count() or 1
        return int(self.n_jobs)

    def _dataset_params(self) -> dict[str, Any]:
        # feature_pre_filter=False: the pre-filter depends on min_data_in_leaf and would be
        # computed once on the reference; every model must be free to split any feature.
        return {
            "verbose": -1,
            "feature_pre_filter": False,
            "seed": self.random_state,
            "max_bin": self.max_bin,
            # One OpenMP thread per model: parallelism is across models (``_run``). Datasets
            # and subsets must say so too: every LightGBM call sets one process-wide thread
            # count from its params, and a subset made without num_threads (= all cores) while
            # another thread's model was sizing its buffers for one thread crashed LightGBM
            # (segfault in Dataset::GetMultiBinFromSparseFeatures, measured with 2 threads).
            "num_threads": 1,
        }

    def _train_params(self, objective: str) -> dict[str, Any]:
        return {
            **self._dataset_params(),
            "objective": objective,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_child_samples,
            "deterministic": True,
            # Column-wise histograms. Row-wise ones took 9-18% less CPU at 1M x 40 (one thread
            # per model, benchmarks/train.py), but with the sparse offer-history features
            # LightGBM 4.7's row-wise multi-value bins corrupted memory on a subset of a
            # binned dataset ("double free or corruption", then a segfault; measured on the
            # hidden_drivers world at 24,000 customers, reproducible, and gone with col-wise;
            # lightgbm issue #3679 is the same family); col-wise costs 17% more CPU (4.28 s
            # against 3.64 s, an S-learner of 300 trees on 67k decisions x 30 features, same
            # run). force_*: skips LightGBM's timing of both at the start of every model.
            "force_col_wise": True,
        }

    def _check_params(self) -> None:
        """Validate constructor arguments at fit time (scikit-learn: ``__init__`` only stores)."""
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        actions = () if isinstance(self.actions, str) else tuple(self.actions)
        if not actions or not all(isinstance(a, str) and a for a in actions):
            raise ValueError(f"actions must be a non-empty tuple of names, got {self.actions!r}")
        if len(set(actions)) != len(actions):
            raise ValueError(f"actions must not repeat a name, got {self.actions!r}")
        if not isinstance(self.control, str) or self.control in actions:
            raise ValueError(
                f"control must be a name not among actions, got {self.control!r} "
                f"with actions {list(actions)}"
            )
        checks = [
            ("n_folds", isinstance(self.n_folds, int) and self.n_folds >= 2, "an int >= 2"),
            ("n_estimators", isinstance(self.n_estimators, int) and self.n_estimators >= 1,
             "an int >= 1"),
            ("learning_rate", self.learning_rate > 0, "> 0"),
            ("num_leaves", isinstance(self.num_leaves, int) and self.num_leaves >= 2,
             "an int >= 2"),
            ("min_child_samples",
             isinstance(self.min_child_samples, int) and self.min_child_samples >= 1,
             "an int >= 1"),
            ("propensity_clip", 0 < self.propensity_clip < 1, "in (0, 1)"),
            ("n_jobs", isinstance(self.n_jobs, int) and (self.n_jobs == -1 or self.n_jobs >= 1),
             "-1 or an int >= 1"),
            ("max_bin", isinstance(self.max_bin, int) and self.max_bin >= 2, "an int >= 2"),
            ("early_stopping", isinstance(self.early_stopping, bool | np.bool_), "True or False"),
            ("validation_fraction", 0 < self.validation_fraction < 1, "in (0, 1)"),
            ("n_iter_no_change",
             isinstance(self.n_iter_no_change, int) and self.n_iter_no_change >= 1,
             "an int >= 1"),
            ("engine", self.engine in ENGINES, f"one of {list(ENGINES)}"),
            ("dask_scheduler", self.dask_scheduler is None
             or (isinstance(self.dask_scheduler, str) and bool(self.dask_scheduler)),
             "None or a scheduler address such as 'tcp://host:8786'"),
        ]  # fmt: skip
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)!r}")

    # ------------------------------------------------------------- predict

    def predict(self, X: pd.DataFrame | Array) -> Array:
        """Estimated uplift on the conversion probability of each action versus the control.

        Returns shape ``(n, len(actions_))``, columns in ``actions_`` order, values in [-1, 1].
        """
        check_is_fitted(self, "models_")
        X_arr = self._matrix(X)
        if self.method == "s":
            return self._predict_s(X_arr, converted_only=True)["converted"]
        threads = self._threads()
        base = (
            _predict(self.base_models_["converted"], X_arr, threads) if self.method == "t" else None
        )
        return np.column_stack(
            [self._uplift(a, "converted", X_arr, base, threads) for a in self.actions_]
        ).reshape(len(X_arr), len(self.actions_))

    def predict_effects(self, X: pd.DataFrame | Array) -> dict[str, Array]:
        """Uplifts versus the control on every outcome, and the control arm's predictions.

        Returns ``{"converted", "revenue", "unsubscribed"}``: ``(n, len(actions_))`` uplifts
        (columns in ``actions_`` order; probability uplifts clipped to [-1, 1]), plus
        ``"base_converted"`` and ``"base_revenue"``: ``(n,)`` predictions ``mu_control`` of the
        conversion probability and the expected revenue when the control is taken.
        """
        check_is_fitted(self, "models_")
        X_arr = self._matrix(X)
        if self.method == "s":
            return self._predict_s(X_arr)
        n, k = len(X_arr), len(self.actions_)
        threads = self._threads()
        base = {
            o: self._predict_with(booster, X_arr, threads)
            for o, booster in self.base_models_.items()
        }
        out: dict[str, Array] = {}
        for o in OUTCOMES:
            out[o] = np.column_stack(
                [self._uplift(a, o, X_arr, base.get(o), threads) for a in self.actions_]
            ).reshape(n, k)
        out["base_converted"] = base["converted"]
        out["base_revenue"] = base["revenue"]
        return out

    def _predict_s(self, X: Array, converted_only: bool = False) -> dict[str, Array]:
        """``predict_effects`` of the S-learner: each action's prediction against the control's
        on the same rows (one stacked call per model: 4 copies of X, one per arm). With
        ``converted_only``, only ``"converted"`` (what ``predict`` needs: a third of the work)."""
        n, k = len(X), len(self.actions_)
        threads = self._threads()
        stacked = np.vstack([_with_action(X, np.full(n, j), k) for j in range(k + 1)])
        out: dict[str, Array] = {}
        for o in ("converted",) if converted_only else ("converted", "unsubscribed"):
            booster = self.models_[(self.actions_[0], o)]
            p = self._predict_with(booster, stacked, threads).reshape(k + 1, n)
            out[o] = (p[:k] - p[k]).T
            if o == "converted":
                base_converted = p[k]
        if converted_only:
            return out
        fare = np.maximum(self._predict_with(self.base_models_["fare"], X, threads), 0.0)
        out["revenue"] = out["converted"] * fare[:, None]
        out["base_converted"] = base_converted
        out["base_revenue"] = base_converted * fare
        return out

    def predict_effects_row(self, x: Array) -> dict[str, Array]:
        """``predict_effects`` for one row (the request path), shaped as for one-row ``X``.

        The S-learner's nine one-row predictions go through LightGBM's single-row fast C API
        (``training.fastpredict``): the same numbers as ``predict_effects(x[None])`` at a
        fraction of the cost. The other learners call ``predict_effects``.
        """
        check_is_fitted(self, "models_")
        x = np.ascontiguousarray(x, dtype=np.float64).reshape(-1)
        if self.method != "s":
            return self.predict_effects(x[None, :])
        fast = self.__dict__.get("_row_predictors")
        if fast is None:
            fast = self._build_row_predictors()
        converted, unsubscribed, fare_model, design, rows = fast
        k = len(self.actions_)
        if x.shape != (self.n_features_in_,):
            raise ValueError(f"one row of {self.n_features_in_} features expected, got {x.shape}")
        design[:, : len(x)] = x  # rows: each action's one-hot, then the control (all zero)
        p_conv = np.array([converted.predict_at(row) for row in rows])
        p_unsub = np.array([unsubscribed.predict_at(row) for row in rows])
        fare = max(fare_model.predict_at(design[k].ctypes.data), 0.0)
        uplift = (p_conv[:k] - p_conv[k])[None, :]
        return {
            "converted": uplift,
            "unsubscribed": (p_unsub[:k] - p_unsub[k])[None, :],
            "revenue": uplift * fare,
            "base_converted": p_conv[k : k + 1],
            "base_revenue": p_conv[k : k + 1] * fare,
        }

    def contributions_row(self, x: Array, action: str) -> Array:
        """``contributions(x)`` for one action, without the bias: one value per feature.

        The S-learner's two TreeSHAP passes (the action's row and the control's) go through
        the single-row fast C API; the other learners use ``contributions``.
        """
        check_is_fitted(self, "models_")
        x = np.ascontiguousarray(x, dtype=np.float64).reshape(-1)
        if self.method != "s":
            return self.contributions(x[None, :]).loc[action].to_numpy()[: self.n_features_in_]
        explainer = self.__dict__.get("_row_explainer")
        if explainer is None:
            from training.fastpredict import CONTRIB, RowPredictor

            booster = self.models_[(self.actions_[0], "converted")]
            explainer = RowPredictor(booster, CONTRIB)
            self.__dict__["_row_explainer"] = explainer
        k = len(self.actions_)
        j = list(self.actions_).index(action)
        row = np.zeros(self.n_features_in_ + k)
        row[: self.n_features_in_] = x
        control = explainer(row)
        row[self.n_features_in_ + j] = 1.0
        treated = explainer(row)
        return (treated - control)[: self.n_features_in_]

    def _build_row_predictors(self) -> tuple[Any, Any, Any, Array, list[int]]:
        """Single-row predictors of the S-learner's three boosters and a design buffer; kept
        out of pickles (``__getstate__``) since their handles belong to this process."""
        from training.fastpredict import RowPredictor

        k = len(self.actions_)
        design = np.zeros((k + 1, self.n_features_in_ + k))
        design[np.arange(k), self.n_features_in_ + np.arange(k)] = 1.0
        fast = (
            RowPredictor(self.models_[(self.actions_[0], "converted")]),
            RowPredictor(self.models_[(self.actions_[0], "unsubscribed")]),
            # The fare model reads X only: the control row's first n_features_in_ values.
            RowPredictor(self.base_models_["fare"]),
            design,
            [design[j].ctypes.data for j in range(k + 1)],
        )
        self.__dict__["_row_predictors"] = fast
        return fast

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state.pop("_row_predictors", None)
        state.pop("_row_explainer", None)
        state.pop("_compiled", None)
        return state

    def compile_for_batches(self, cache_dir: Path) -> int:
        """Compile every booster to native code for large batch predictions (the service).

        After this, predictions on at least ``COMPILED_MIN_ROWS`` rows go through the compiled
        forests (``training.compiled``: equal to LightGBM's up to rounding, about 8x faster);
        smaller ones and the single-row path stay on LightGBM. Compiled code is cached in
        ``cache_dir``. Returns how many boosters were compiled (0: lleaves unavailable, and
        predictions stay on LightGBM). Not pickled.
        """
        from training.compiled import compile_booster

        check_is_fitted(self, "models_")
        compiled: dict[int, Any] = {}
        for booster in [*self.models_.values(), *self.base_models_.values()]:
            if id(booster) in compiled:
                continue
            fast = compile_booster(booster, cache_dir)
            if fast is None:
                return 0
            compiled[id(booster)] = fast
        self.__dict__["_compiled"] = compiled
        return len(compiled)

    def _predict_with(self, booster: lgb.Booster, X: Array, threads: int) -> Array:
        """``_predict``, through the booster's compiled forest for a large enough batch."""
        compiled = self.__dict__.get("_compiled")
        if compiled and len(X) >= COMPILED_MIN_ROWS:
            fast = compiled.get(id(booster))
            if fast is not None:
                return fast.predict(X, threads if len(X) >= PARALLEL_PREDICT_ROWS else 1)
        return _predict(booster, X, threads)

    def _uplift(
        self, action: str, outcome: str, X: Array, base: Array | None, threads: int = 1
    ) -> Array:
        pred = self._predict_with(self.models_[(action, outcome)], X, threads)
        if self.method == "t":
            assert base is not None  # the T-learner always has every control model
            pred = pred - base
        # A probability uplift lies in [-1, 1]; the DR regression on pseudo-outcomes can
        # overshoot where data are thin.
        return np.clip(pred, -1.0, 1.0) if outcome in BINARY_OUTCOMES else pred

    def contributions(self, X_row: pd.DataFrame | pd.Series | Array) -> pd.DataFrame:
        """Per-feature contributions (LightGBM ``pred_contrib``, TreeSHAP) to the conversion
        uplift of each action for one row, for explanations.

        Returns a frame with one row per action (``actions_`` order) and one column per feature
        name, plus ``"bias"`` (the expected value over the training data); each row sums to:

        * ``"dr"``: the conversion-uplift model's raw prediction (before clipping to [-1, 1]);
        * ``"t"``: ``logit(mu_action) - logit(mu_control)``: the difference of the two arms'
          contributions in log-odds, where LightGBM computes them for a classifier. Signs and
          ranking of features carry over to the probability uplift, amounts do not.
        """
        check_is_fitted(self, "models_")
        if isinstance(X_row, pd.Series):
            X_row = X_row.to_frame().T
        X_arr = self._matrix(X_row)
        if len(X_arr) != 1:
            raise ValueError(
                f"contributions explains one row, got {len(X_arr)}: pass X.iloc[[i]] for row i"
            )
        rows = []
        if self.method == "s":
            k = len(self.actions_)
            booster = self.models_[(self.actions_[0], "converted")]
            control = booster.predict(_with_action(X_arr, np.array([k]), k), pred_contrib=True,
                                      num_threads=1)  # fmt: skip
            for j in range(k):
                contrib = booster.predict(_with_action(X_arr, np.array([j]), k),
                                          pred_contrib=True, num_threads=1)  # fmt: skip
                # Drop the action columns: their difference is the action's own effect, kept in
                # "bias" so that the row still sums to the log-odds uplift.
                diff = (np.asarray(contrib) - np.asarray(control))[0]
                features, action_part = diff[: len(self.feature_names_)], diff[-(k + 1) : -1]
                rows.append(np.r_[features, diff[-1] + action_part.sum()])
            return pd.DataFrame(
                np.vstack(rows), index=list(self.actions_), columns=[*self.feature_names_, "bias"]
            )
        for a in self.actions_:
            contrib = self.models_[(a, "converted")].predict(
                X_arr, pred_contrib=True, num_threads=1
            )
            if self.method == "t":
                contrib = np.asarray(contrib) - np.asarray(
                    self.base_models_["converted"].predict(X_arr, pred_contrib=True, num_threads=1)
                )
            rows.append(contrib[0])
        return pd.DataFrame(
            np.vstack(rows), index=list(self.actions_), columns=[*self.feature_names_, "bias"]
        )

    def _matrix(self, X: pd.DataFrame | Array) -> Array:
        """``X`` as a float64 matrix with the fitted feature columns, in their order."""
        if isinstance(X, pd.DataFrame):
            if list(X.columns) != self.feature_names_:
                missing = [c for c in self.feature_names_ if c not in X.columns]
                if missing:
                    raise ValueError(
                        f"X lacks feature columns {missing[:MAX_EXAMPLES]} (of "
                        f"{len(missing)} missing) that the model was fitted on: build X with "
                        "the same feature set"
                    )
                X = X[self.feature_names_]
            try:
                return X.to_numpy(dtype=np.float64, na_value=np.nan)
            except (TypeError, ValueError) as error:
                raise ValueError(f"X must be numeric (NaN for missing): {error}") from error
        X_arr = np.asarray(X, dtype=np.float64)
        if X_arr.ndim == 1:
            X_arr = X_arr.reshape(1, -1)
        if X_arr.ndim != 2 or X_arr.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has shape {X_arr.shape}; the model expects {self.n_features_in_} feature "
                f"columns ({self.feature_names_[:MAX_EXAMPLES]}...): pass a DataFrame with them"
            )
        return X_arr


# ---------------------------------------------------------------- helpers


def _with_action(X: Array, codes: Array, n_actions: int) -> Array:
    """``X`` with one-hot columns for the actions (the control, code ``n_actions``, is all 0)."""
    onehot = (np.asarray(codes)[:, None] == np.arange(n_actions)[None, :]).astype(np.float64)
    if len(onehot) == 1 and len(X) > 1:
        onehot = np.repeat(onehot, len(X), axis=0)
    return np.hstack([X, onehot])


def _objective(outcome: str) -> str:
    """Nuisance objective: binary classifier (predicts a probability) or L2 regression."""
    return "binary" if outcome in BINARY_OUTCOMES else "regression"


def _predict(booster: lgb.Booster, X: Array, threads: int = 1) -> Array:
    """Booster prediction, each call on one LightGBM thread (default threads cost ~8 ms of
    OpenMP spin per call here). From ``PARALLEL_PREDICT_ROWS`` rows, the rows are split across
    ``threads`` Python threads (LightGBM releases the GIL while predicting): same result."""
    if threads <= 1 or len(X) < PARALLEL_PREDICT_ROWS:
        return np.asarray(booster.predict(X, num_threads=1))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        parts = pool.map(
            lambda part: booster.predict(part, num_threads=1), np.array_split(X, threads)
        )
        return np.concatenate(list(parts))


@dataclass
class _Data:
    """A feature matrix made ready once per fit for all the models trained on its rows."""

    X: Array
    #: Local engine: ``X`` binned once (models train on subsets of it), else None.
    binned: lgb.Dataset | None
    #: Dask engine: ``X`` scattered over the workers, else None.
    remote: DaskData | None
    #: Rows held out for early stopping (boolean mask), None when it is off.
    validation: Array | None

    def split(self, rows: Array) -> tuple[Array, Array]:
        """``rows`` split into the rows a model trains on and its validation rows."""
        if self.validation is None:
            return rows, rows[:0]
        held_out = self.validation[rows]
        if held_out.all() or not held_out.any():
            # Too few rows to spare a validation part (or nothing left to train on).
            return rows, rows[:0]
        return rows[~held_out], rows[held_out]


def _subset(binned: lgb.Dataset, rows: Array, label: Array, weight: Array | None) -> lgb.Dataset:
    """``rows`` of the binned matrix (copied bins, no re-binning) with this model's label and
    weights (full-length arrays, indexed here)."""
    # A list: Dataset.subset sorts its argument with sorted(), slow on a NumPy array.
    subset = binned.subset(rows.tolist()).construct()
    subset.set_label(label[rows])
    if weight is not None:
        subset.set_weight(weight[rows])
    return subset


def _lgb_names(names: list[str]) -> list[str] | Literal["auto"]:
    """Feature names LightGBM accepts (it rejects JSON punctuation); ``"auto"`` if unsafe ones
    would collide after cleaning. ``feature_names_`` keeps the originals either way."""
    clean = [_UNSAFE_NAME.sub("_", name) or "_" for name in names]
    return clean if len(set(clean)) == len(clean) else "auto"


def _examples(mask: Array) -> list[int]:
    return np.flatnonzero(mask)[:MAX_EXAMPLES].tolist()


def _check_index(obj: object, name: str, index: pd.Index | None) -> None:
    if index is None or not isinstance(obj, pd.Series | pd.DataFrame):
        return
    if not obj.index.equals(index):
        raise ValueError(
            f"{name}'s index differs from X's: rows are paired by position, so reorder or "
            "reset_index(drop=True) both consistently before fitting"
        )


def _feature_matrix(X: pd.DataFrame | Array) -> tuple[Array, list[str], pd.Index | None]:
    """Validated feature matrix, feature names and (for a DataFrame) the row index."""
    if isinstance(X, pd.DataFrame):
        if X.columns.duplicated().any():
            dupes = X.columns[X.columns.duplicated()].tolist()
            raise ValueError(f"X has duplicate column names {dupes}: rename or drop them")
        bad = [
            str(c)
            for c in X.columns
            if not (pd.api.types.is_numeric_dtype(X[c]) or pd.api.types.is_bool_dtype(X[c]))
        ]
        if bad:
            raise ValueError(
                f"X must be numeric; columns {bad[:MAX_EXAMPLES]} are not (dtypes "
                f"{[str(X[c].dtype) for c in bad[:MAX_EXAMPLES]]}): encode them as numbers "
                "(NaN for missing) or drop them"
            )
        if len(X.columns) == 0:
            raise ValueError("X has no feature columns")
        X_arr = X.to_numpy(dtype=np.float64, na_value=np.nan)
        return X_arr, [str(c) for c in X.columns], X.index
    try:
        X_arr = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"X must be numeric (NaN for missing): {error}") from error
    if X_arr.ndim != 2 or X_arr.shape[1] == 0:
        raise ValueError(f"X must be 2-D with at least one column, got shape {X_arr.shape}")
    return X_arr, [f"x{i}" for i in range(X_arr.shape[1])], None


def _action_codes(
    action: Sequence[str] | Array | pd.Series,
    arms: tuple[str, ...],
    n: int,
    index: pd.Index | None,
) -> tuple[Array, Array]:
    """Index of each row's action in ``arms``, and the row count of every arm."""
    _check_index(action, "action", index)
    values = np.asarray(action, dtype=object).ravel()
    if len(values) != n:
        raise ValueError(f"action has {len(values)} values for {n} rows of X: one per row")
    missing = pd.isna(values)
    if missing.any():
        raise ValueError(
            f"action is missing on {int(missing.sum())} rows (e.g. rows {_examples(missing)}): "
            "drop those rows or fill in the action taken"
        )
    lookup = {a: i for i, a in enumerate(arms)}
    codes = pd.Series(values).map(lookup)
    unknown = codes.isna().to_numpy()
    if unknown.any():
        names = sorted({str(v) for v in values[unknown]})
        raise ValueError(
            f"unknown actions {names[:MAX_EXAMPLES]} on {int(unknown.sum())} rows: expected "
            f"one of {list(arms)}; add them to actions= or drop those rows"
        )
    codes_arr = codes.to_numpy(dtype=np.int64)
    counts = np.bincount(codes_arr, minlength=len(arms))
    for arm, count in zip(arms, counts.tolist(), strict=True):
        role = "the control" if arm == arms[-1] else "action"
        if count == 0:
            raise ValueError(
                f"{role} {arm!r} never appears in the log, so its effect cannot be estimated: "
                f"drop it from actions= (or pick another control=) or log decisions for it"
            )
        if count < MIN_ARM_ROWS:
            raise ValueError(
                f"{role} {arm!r} has only {count} logged rows; at least {MIN_ARM_ROWS} are "
                f"needed per arm: collect more data or drop it from actions="
            )
    return codes_arr, counts


def _propensity_vector(
    propensity: Sequence[float] | Array | pd.Series, n: int, index: pd.Index | None
) -> Array:
    """Logged propensities as floats, each in (0, 1]."""
    _check_index(propensity, "propensity", index)
    try:
        p = np.asarray(propensity, dtype=np.float64).ravel()
    except (TypeError, ValueError) as error:
        raise ValueError(f"propensity must be numeric: {error}") from error
    if len(p) != n:
        raise ValueError(f"propensity has {len(p)} values for {n} rows of X: one per row")
    bad = ~((p > 0) & (p <= 1))  # NaN fails both comparisons
    if bad.any():
        raise ValueError(
            f"propensity must be in (0, 1] (the logging policy's probability of the action it "
            f"took); {int(bad.sum())} rows are missing or outside (e.g. rows {_examples(bad)}: "
            f"{p[bad][:MAX_EXAMPLES].tolist()}): fix the action log, or drop rows whose "
            "propensity is unknown"
        )
    return p


def _outcome_arrays(outcomes: pd.DataFrame, n: int, index: pd.Index | None) -> dict[str, Array]:
    """Each outcome as float64, validated: 0/1 for binary outcomes, finite >= 0 for revenue."""
    if not isinstance(outcomes, pd.DataFrame):
        raise ValueError(f"outcomes must be a DataFrame with columns {list(OUTCOMES)}")
    missing = [o for o in OUTCOMES if o not in outcomes.columns]
    if missing:
        raise ValueError(
            f"outcomes lacks columns {missing}: it needs {list(OUTCOMES)} (join the outcomes "
            "table on decision_id)"
        )
    if len(outcomes) != n:
        raise ValueError(f"outcomes has {len(outcomes)} rows for {n} rows of X: one per row")
    _check_index(outcomes, "outcomes", index)
    out: dict[str, Array] = {}
    for o in OUTCOMES:
        try:
            values = outcomes[o].to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError) as error:
            raise ValueError(f"outcomes[{o!r}] must be numeric or bool: {error}") from error
        if o in BINARY_OUTCOMES:
            bad, rule = ~np.isin(values, (0.0, 1.0)), "0/1 (or bool)"
        else:
            bad, rule = ~(np.isfinite(values) & (values >= 0)), "finite and >= 0"
        if bad.any():
            raise ValueError(
                f"outcomes[{o!r}] must be {rule} with no missing values; {int(bad.sum())} rows "
                f"are not (e.g. rows {_examples(bad)}): fix or drop them"
            )
        out[o] = values
    return out


def _full_propensities(
    propensities: pd.DataFrame, arms: tuple[str, ...], n: int, index: pd.Index | None
) -> Array:
    """The full logging distribution as an ``(n, len(arms))`` matrix, validated."""
    if not isinstance(propensities, pd.DataFrame):
        raise ValueError(f"propensities must be a DataFrame with one column per arm {list(arms)}")
    missing = [a for a in arms if a not in propensities.columns]
    if missing:
        raise ValueError(
            f"propensities lacks columns {missing}: it needs one column per action and the "
            f"control {list(arms)}, or pass propensities=None"
        )
    if len(propensities) != n:
        raise ValueError(f"propensities has {len(propensities)} rows for {n} rows of X")
    _check_index(propensities, "propensities", index)
    full = propensities[list(arms)].to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~((full >= 0) & (full <= 1)).all(axis=1) | (full.sum(axis=1) > 1 + PROPENSITY_RTOL)
    if bad.any():
        raise ValueError(
            f"propensities must be probabilities in [0, 1] summing to at most 1 per row; "
            f"{int(bad.sum())} rows are not (e.g. rows {_examples(bad)}): fix the logging "
            "distribution or pass propensities=None"
        )
    return full


def _check_agreement(full: Array, codes: Array, p_logged: Array, arms: tuple[str, ...]) -> None:
    """The full distribution at the taken action must be the logged propensity."""
    at_taken = full[np.arange(len(codes)), codes]
    bad = ~np.isclose(at_taken, p_logged, rtol=PROPENSITY_RTOL, atol=1e-9)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"propensities disagrees with the logged propensity of the action taken on "
            f"{int(bad.sum())} rows (e.g. row {first}: action {arms[codes[first]]!r}, logged "
            f"{p_logged[first]:.6g}, propensities {at_taken[first]:.6g}): both must describe the "
            "policy that took each decision; fix whichever is wrong, or pass propensities=None "
            "to rely on the logged propensity alone"
        )
