"""Evaluation metrics for multi-action uplift models, as free functions over arrays.

Two families, both pure numpy over 1-d arrays (anything ``np.asarray`` accepts: lists, numpy
arrays, pandas Series):

* **Uplift ranking metrics** for one treatment versus control (``qini_curve``,
  ``qini_auc_score``, ``uplift_curve``, ``uplift_auc_score``, ``uplift_at_k``). They reproduce
  scikit-uplift 0.5.1 (``sklift.metrics``) number for number, with two differences of form: the
  argument order is ``(y, treatment, uplift)`` (scikit-uplift's is ``(y_true, uplift,
  treatment)``), and the curves and ``qini_auc_score(negative_effect=True)`` also accept a
  continuous outcome (scikit-uplift requires a binary one). Where a score is undefined
  scikit-uplift raises (``ZeroDivisionError``, or ``ValueError`` from ``sklearn.metrics.auc``)
  or warns; these return ``nan`` (below). To score one action of a multi-action
  model, restrict the rows to that action and ``"none"`` and set ``treatment = action != "none"``.
* **Off-policy value of a learned policy** from logged decisions (``ipw_value``, ``snipw_value``,
  ``dr_value``, ``policy_value_se``/``policy_value_ci``), and, in a simulated world with a
  ``truth`` table, its true value (``true_policy_value``, ``oracle_policy``, ``captured_share``).

Conventions:

* ``treatment`` is 1 for treated, 0 for control (bool, int or float), and both groups must be
  present. Actions are named by strings; ``"none"`` is the control action.
* ``propensity`` is the probability with which the logging policy chose the logged action, in
  (0, 1]. A target policy is deterministic: ``chosen[i]`` is the action it picks for row ``i``.
* Invalid input raises ``ValueError`` naming the argument and the rule (length mismatch, empty
  arrays, non-finite numbers, a non-binary treatment, a propensity outside (0, 1], an unknown
  action name). A metric that is *undefined on valid input* returns ``nan`` without a warning:
  a normalising area of zero, no treated or no control row in the top k, no logged row that
  agrees with the target policy (SNIPW), a standard error from a single row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Final, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from features.contract import ACTIONS

#: Estimators ``policy_value_se`` knows.
ESTIMATORS: Final[tuple[str, ...]] = ("ipw", "snipw", "dr")
#: ``uplift_at_k`` strategies (scikit-uplift's names).
STRATEGIES: Final[tuple[str, ...]] = ("overall", "by_group")

Estimator = Literal["ipw", "snipw", "dr"]
FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


# --------------------------------------------------------------------------- input validation


def _float_vector(values: ArrayLike, name: str) -> FloatArray:
    """``values`` as a non-empty 1-d finite float64 array, or a ``ValueError`` naming it."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric: {exc}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: a metric needs at least one row")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return arr


def _same_length(**arrays: np.ndarray) -> int:
    lengths = {name: len(arr) for name, arr in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"length mismatch: {lengths}")
    return next(iter(lengths.values()))


def _binary(arr: FloatArray, name: str, *, both: bool) -> None:
    """Every value is 0 or 1 (and, with ``both``, each of them occurs at least once)."""
    if not np.all((arr == 0) | (arr == 1)):
        raise ValueError(f"{name} must be binary (0 or 1), got values {np.unique(arr)[:10]}")
    if both and (arr.min() != 0 or arr.max() != 1):
        group = "control (0)" if arr.min() != 0 else "treated (1)"
        raise ValueError(f"{name} has no {group} row: an uplift metric needs both groups")


def _uplift_inputs(
    y: ArrayLike, treatment: ArrayLike, uplift: ArrayLike, *, binary_y: bool = False
) -> tuple[FloatArray, FloatArray, FloatArray]:
    y_arr = _float_vector(y, "y")
    t_arr = _float_vector(treatment, "treatment")
    u_arr = _float_vector(uplift, "uplift")
    _same_length(y=y_arr, treatment=t_arr, uplift=u_arr)
    _binary(t_arr, "treatment", both=True)
    if binary_y:
        _binary(y_arr, "y", both=False)
    return y_arr, t_arr, u_arr


def _actions_tuple(actions: Sequence[str]) -> tuple[str, ...]:
    if isinstance(actions, str):
        # A bare string is a sequence of characters; almost certainly a mistake.
        raise ValueError(f"actions must be a sequence of action names, got the string {actions!r}")
    out = tuple(actions)
    if not out:
        raise ValueError("actions is empty")
    if not all(isinstance(a, str) for a in out):
        raise ValueError(f"actions must be strings, got {list(out)}")
    if len(set(out)) != len(out):
        raise ValueError(f"actions must be unique, got {list(out)}")
    return out


def _action_codes(values: ArrayLike, actions: tuple[str, ...], name: str) -> NDArray[np.intp]:
    """Column index in ``actions`` of every name in ``values`` (``ValueError`` for unknown names).

    One vectorised comparison per action (a handful) is several times faster than sorting the
    names with ``np.unique`` on ~1e5-1e6 rows.
    """
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: a metric needs at least one row")
    if arr.dtype.kind not in "UO":
        raise ValueError(f"{name} must hold action names (str), got dtype {arr.dtype}")
    codes = np.full(arr.size, -1, dtype=np.intp)
    for index, action_name in enumerate(actions):
        codes[arr == action_name] = index
    if np.any(codes < 0):
        unknown = list(dict.fromkeys(arr[codes < 0].tolist()))[:5]
        raise ValueError(
            f"{name} has unknown action names {unknown}: expected one of {list(actions)}"
        )
    return codes


def _value_matrix(values: ArrayLike, n: int, actions: tuple[str, ...], name: str) -> FloatArray:
    """``values`` as a finite float64 (n, len(actions)) matrix whose columns follow ``actions``."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric: {exc}") from None
    if arr.shape != (n, len(actions)):
        raise ValueError(
            f"{name} must have shape (n rows, len(actions)) = {(n, len(actions))}, got {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return arr


@dataclass(frozen=True)
class _Logged:
    """Validated logged bandit data: action codes, propensities and rewards, one row each."""

    chosen: NDArray[np.intp]
    action: NDArray[np.intp]
    propensity: FloatArray
    reward: FloatArray

    @property
    def weight(self) -> FloatArray:
        """Importance weight 1[chosen == action] / propensity."""
        return (self.chosen == self.action) / self.propensity


def _logged(
    chosen: ArrayLike,
    action: ArrayLike,
    propensity: ArrayLike,
    reward: ArrayLike,
    actions: Sequence[str],
) -> _Logged:
    names = _actions_tuple(actions)
    chosen_codes = _action_codes(chosen, names, "chosen")
    action_codes = _action_codes(action, names, "action")
    p = _float_vector(propensity, "propensity")
    r = _float_vector(reward, "reward")
    _same_length(chosen=chosen_codes, action=action_codes, propensity=p, reward=r)
    if not np.all((p > 0) & (p <= 1)):
        bad = p[(p <= 0) | (p > 1)][:5]
        raise ValueError(f"propensity must lie in (0, 1], got e.g. {bad.tolist()}")
    return _Logged(chosen_codes, action_codes, p, r)


# --------------------------------------------------------------------------- uplift curves


def _trapezoid_area(x: ArrayLike, y: ArrayLike) -> float:
    """Trapezoidal area under the points (x, y) (``sklearn.metrics.auc`` for increasing x)."""
    return float(np.trapezoid(np.asarray(y, dtype=np.float64), np.asarray(x, dtype=np.float64)))


def _cumulative_counts(
    y: FloatArray, treatment: FloatArray, uplift: FloatArray
) -> tuple[IntArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """Cumulative counts and outcome sums at each cut of the descending-uplift ranking.

    Rows are sorted by descending ``uplift``; a cut is placed only after the last row of each
    group of tied scores, so the result does not depend on the order of rows within a tie (a
    model cannot target half of a group it scores identically). Returns, per cut, ``(k, N_t(k),
    N_c(k), Y_t(k), Y_c(k))``: rows targeted, treated and control rows among them, and the sum of
    the outcome over those treated and control rows.
    """
    # Same order as scikit-uplift (reversed stable argsort), so identical cuts and sums.
    order = np.argsort(uplift, kind="stable")[::-1]
    y_sorted, t_sorted, u_sorted = y[order], treatment[order], uplift[order]
    cuts = np.r_[np.flatnonzero(np.diff(u_sorted)), u_sorted.size - 1]
    n_all = (cuts + 1).astype(np.int64)
    n_t = np.cumsum(t_sorted)[cuts]
    y_t = np.cumsum(np.where(t_sorted == 1, y_sorted, 0.0))[cuts]
    y_c = np.cumsum(np.where(t_sorted == 0, y_sorted, 0.0))[cuts]
    n_c = n_all - n_t
    return n_all, n_t, n_c, y_t, y_c


def _safe_ratio(num: FloatArray, den: FloatArray) -> FloatArray:
    """num / den, 0 where den == 0 (an empty group contributes nothing; scikit-uplift's rule)."""
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den != 0)


def _qini_points(
    y: FloatArray, treatment: FloatArray, uplift: FloatArray
) -> tuple[IntArray, FloatArray]:
    n_all, n_t, n_c, y_t, y_c = _cumulative_counts(y, treatment, uplift)
    values = y_t - y_c * _safe_ratio(n_t, n_c)
    return np.r_[0, n_all], np.r_[0.0, values]


def _uplift_points(
    y: FloatArray, treatment: FloatArray, uplift: FloatArray
) -> tuple[IntArray, FloatArray]:
    n_all, n_t, n_c, y_t, y_c = _cumulative_counts(y, treatment, uplift)
    values = (_safe_ratio(y_t, n_t) - _safe_ratio(y_c, n_c)) * n_all
    return np.r_[0, n_all], np.r_[0.0, values]


def qini_curve(
    y: ArrayLike, treatment: ArrayLike, uplift: ArrayLike
) -> tuple[IntArray, FloatArray]:
    """Qini curve of an uplift ranking (scikit-uplift's ``qini_curve``).

    Rows are targeted in order of descending ``uplift``. After targeting the top ``k`` rows::

        qini(k) = Y_t(k) - Y_c(k) * N_t(k) / N_c(k)

    where ``N_t(k)``/``N_c(k)`` count the treated/control rows among them and ``Y_t(k)``/``Y_c(k)``
    sum their outcomes: the incremental outcome of the targeted treated rows, with the control
    rows' outcome rescaled to the treated group's size. While no control row has been reached
    (``N_c(k) = 0``) the correction term is 0, so ``qini(k) = Y_t(k)``, as in scikit-uplift.

    Ties: points are placed only at the end of each group of equal scores, so the curve does not
    depend on the order of tied rows; without ties ``x`` is ``0, 1, ..., n``.

    Args:
        y: outcome per row, binary or continuous.
        treatment: 1 treated, 0 control; both groups must be present.
        uplift: predicted uplift score per row (higher = target first).

    Returns:
        ``(x, qini)``: number of targeted rows (int, starting at 0) and the Qini value there
        (starting at 0.0).
    """
    y_arr, t_arr, u_arr = _uplift_inputs(y, treatment, uplift)
    return _qini_points(y_arr, t_arr, u_arr)


def uplift_curve(
    y: ArrayLike, treatment: ArrayLike, uplift: ArrayLike
) -> tuple[IntArray, FloatArray]:
    """Uplift curve of an uplift ranking (scikit-uplift's ``uplift_curve``).

    After targeting the top ``k`` rows by descending ``uplift``::

        uplift(k) = (Y_t(k) / N_t(k) - Y_c(k) / N_c(k)) * k

    the difference of mean outcomes between the targeted treated and control rows, times the
    number targeted; a group's mean is 0 while it is empty. Ties and the returned ``(x, values)``
    follow ``qini_curve``.
    """
    y_arr, t_arr, u_arr = _uplift_inputs(y, treatment, uplift)
    return _uplift_points(y_arr, t_arr, u_arr)


def _normalised_area(
    actual: tuple[IntArray, FloatArray], perfect: tuple[ArrayLike, ArrayLike]
) -> float:
    """(area(actual) - area(random)) / (area(perfect) - area(random)), nan when the latter is 0.

    The random line joins (0, 0) to the perfect curve's end point, which is the end point of
    every curve of the same data (all rows targeted).
    """
    x_perfect, y_perfect = np.asarray(perfect[0]), np.asarray(perfect[1])
    random_area = _trapezoid_area([0, x_perfect[-1]], [0, y_perfect[-1]])
    perfect_gain = _trapezoid_area(x_perfect, y_perfect) - random_area
    actual_gain = _trapezoid_area(*actual) - random_area
    if perfect_gain == 0:
        return math.nan
    return actual_gain / perfect_gain


def qini_auc_score(
    y: ArrayLike, treatment: ArrayLike, uplift: ArrayLike, negative_effect: bool = True
) -> float:
    """Normalised area under the Qini curve (scikit-uplift's ``qini_auc_score``).

    ::

        score = (A(model) - A(random)) / (A(perfect) - A(random))

    with ``A`` the trapezoidal area under a Qini curve, ``random`` the straight line from (0, 0)
    to the curve's end point ``(n, qini(n))``, and ``perfect`` the best possible curve:

    * ``negative_effect=True``: the Qini curve of the ranking ``y * t - y * (1 - t)`` (treated
      rows by descending outcome first, control rows by ascending outcome last), so the perfect
      curve also avoids the rows the treatment hurts. A continuous ``y`` is accepted here (the
      same ranking; scikit-uplift itself requires a binary ``y``).
    * ``negative_effect=False``: binary ``y`` only; the ``qini(n)`` persuadables first, one
      incremental response each, then flat: points ``(0, 0), (qini(n), qini(n)), (n, qini(n))``.

    1.0 is the perfect ranking, about 0 a random one, negative worse than random. ``nan`` when the
    perfect curve encloses no area with the random line (e.g. every outcome equal), and, with
    ``negative_effect=False``, when ``qini(n) < 0`` (no persuadables to rank; scikit-uplift
    raises there).

    Raises:
        TypeError: ``negative_effect`` is not a bool (as scikit-uplift).
    """
    if not isinstance(negative_effect, bool):
        raise TypeError(f"negative_effect must be a bool, got {type(negative_effect).__name__}")
    y_arr, t_arr, u_arr = _uplift_inputs(y, treatment, uplift, binary_y=not negative_effect)
    perfect: tuple[ArrayLike, ArrayLike]
    if negative_effect:
        perfect = _qini_points(y_arr, t_arr, y_arr * t_arr - y_arr * (1 - t_arr))
    else:
        treated = t_arr == 1
        n_t, n_c = treated.sum(), (~treated).sum()
        total = y_arr[treated].sum() - n_t * y_arr[~treated].sum() / n_c
        if total < 0:
            return math.nan
        perfect = (np.array([0.0, total, y_arr.size]), np.array([0.0, total, total]))
    return _normalised_area(_qini_points(y_arr, t_arr, u_arr), perfect)


def uplift_auc_score(y: ArrayLike, treatment: ArrayLike, uplift: ArrayLike) -> float:
    """Normalised area under the uplift curve, AUUC (scikit-uplift's ``uplift_auc_score``).

    ``(A(model) - A(random)) / (A(perfect) - A(random))`` over ``uplift_curve``, ``random`` being
    the line from (0, 0) to the curve's end point. Binary ``y`` only, because the perfect ranking
    is defined by response type: treated responders first, control non-responders next, then
    treated non-responders before control responders when there are at least as many of the
    former (the reverse otherwise), exactly as scikit-uplift's ``perfect_uplift_curve``. ``nan``
    when the perfect curve encloses no area with the random line.
    """
    y_arr, t_arr, u_arr = _uplift_inputs(y, treatment, uplift, binary_y=True)
    control_responders = np.sum((y_arr == 1) & (t_arr == 0))
    treated_non_responders = np.sum((y_arr == 0) & (t_arr == 1))
    tie_breaker = y_arr if control_responders > treated_non_responders else t_arr
    perfect_scores = 2.0 * (y_arr == t_arr) + tie_breaker
    return _normalised_area(
        _uplift_points(y_arr, t_arr, u_arr), _uplift_points(y_arr, t_arr, perfect_scores)
    )


def uplift_at_k(
    y: ArrayLike,
    treatment: ArrayLike,
    uplift: ArrayLike,
    k: float = 0.3,
    strategy: str = "overall",
) -> float:
    """Mean outcome of treated minus control rows among the top ``k`` by uplift (scikit-uplift).

    ``k`` is a share in (0, 1) or a row count in [1, n - 1] (an ``int``). Rows are ordered by
    descending ``uplift``; tied rows are taken in reverse row order (scikit-uplift's order: a
    reversed stable sort), so the result is deterministic but can depend on row order at the
    cut-off.

    * ``"overall"``: take the top ``int(n * k)`` (or ``k``) rows of the whole sample, then
      ``mean(y | treated) - mean(y | control)`` over them.
    * ``"by_group"``: take the top ``int(N_t * k)`` treated and the top ``int(N_c * k)`` control
      rows (or ``k`` of each, which must not exceed a group's size), and difference their means.

    ``nan`` when a group has no row in its top k.
    """
    y_arr, t_arr, u_arr = _uplift_inputs(y, treatment, uplift)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
    n = y_arr.size
    is_int = isinstance(k, int | np.integer) and not isinstance(k, bool | np.bool_)
    is_float = isinstance(k, float | np.floating)
    if not ((is_int and 0 < k < n) or (is_float and 0 < k < 1)):
        raise ValueError(
            f"k={k!r} must be an int in [1, n - 1] = [1, {n - 1}] or a float in (0, 1)"
        )
    order = np.argsort(u_arr, kind="stable")[::-1]
    y_sorted, t_sorted = y_arr[order], t_arr[order]
    if strategy == "overall":
        size = int(n * k) if is_float else int(k)
        top_y, top_t = y_sorted[:size], t_sorted[:size]
        return _mean_or_nan(top_y[top_t == 1]) - _mean_or_nan(top_y[top_t == 0])
    y_treated, y_control = y_sorted[t_sorted == 1], y_sorted[t_sorted == 0]
    if is_float:
        size_t, size_c = int(y_treated.size * k), int(y_control.size * k)
    else:
        size_t = size_c = int(k)
        for group, group_size in (("treated", y_treated.size), ("control", y_control.size)):
            if size_t > group_size:
                raise ValueError(f"k={k} exceeds the {group} group's {group_size} rows")
    return _mean_or_nan(y_treated[:size_t]) - _mean_or_nan(y_control[:size_c])


def _mean_or_nan(values: FloatArray) -> float:
    return float(values.mean()) if values.size else math.nan


# --------------------------------------------------------------------------- off-policy value


def _ipw_terms(logged: _Logged) -> FloatArray:
    return logged.weight * logged.reward


def _dr_terms(logged: _Logged, q_hat: FloatArray) -> FloatArray:
    rows = np.arange(q_hat.shape[0])
    residual = logged.reward - q_hat[rows, logged.action]
    return q_hat[rows, logged.chosen] + logged.weight * residual


def ipw_value(
    chosen: ArrayLike,
    action: ArrayLike,
    propensity: ArrayLike,
    reward: ArrayLike,
    *,
    actions: Sequence[str] = ACTIONS,
) -> float:
    """Inverse-propensity-weighted (IPW) value of the target policy ``chosen``.

    ::

        V_ipw = (1/n) Σ_i 1[chosen_i == action_i] * reward_i / propensity_i

    Unbiased when the logging propensities are correct and positive for every chosen action;
    its variance grows with the weights 1/propensity.

    Args:
        chosen: action the target policy picks per row (names).
        action: action the logging policy took per row (names).
        propensity: probability the logging policy took ``action``, in (0, 1].
        reward: observed reward per row.
        actions: valid action names (default: the contract's ``ACTIONS``).
    """
    return float(_ipw_terms(_logged(chosen, action, propensity, reward, actions)).mean())


def snipw_value(
    chosen: ArrayLike,
    action: ArrayLike,
    propensity: ArrayLike,
    reward: ArrayLike,
    *,
    actions: Sequence[str] = ACTIONS,
) -> float:
    """Self-normalised IPW (SNIPW) value: the IPW sum divided by the sum of the weights.

    ::

        w_i = 1[chosen_i == action_i] / propensity_i,    V_snipw = Σ_i w_i reward_i / Σ_i w_i

    A weighted mean of the matching rows' rewards, so always within [min reward, max reward];
    slightly biased (consistent) but usually of much lower variance than IPW. ``nan`` when no
    logged action agrees with ``chosen``. Arguments as ``ipw_value``.
    """
    logged = _logged(chosen, action, propensity, reward, actions)
    weight = logged.weight
    total = weight.sum()
    if total == 0:
        return math.nan
    return float(np.dot(weight, logged.reward) / total)


def dr_value(
    chosen: ArrayLike,
    action: ArrayLike,
    propensity: ArrayLike,
    reward: ArrayLike,
    q_hat: ArrayLike,
    actions: Sequence[str],
) -> float:
    """Doubly robust (DR) value: the reward model's value plus an IPW correction of its error.

    ::

        V_dr = (1/n) Σ_i [ q_hat[i, chosen_i]
                           + 1[chosen_i == action_i] (reward_i - q_hat[i, action_i]) / p_i ]

    with ``p_i = propensity_i``.

    Unbiased if either the propensities or ``q_hat`` are correct; with ``q_hat = 0`` it is exactly
    IPW, and the better ``q_hat`` predicts the reward the smaller its variance.

    Args:
        q_hat: (n, len(actions)) predicted expected reward of every action for every row.
        actions: names of ``q_hat``'s columns, in order; ``chosen`` and ``action`` must use them.
        Others as ``ipw_value``.
    """
    logged = _logged(chosen, action, propensity, reward, actions)
    q = _value_matrix(q_hat, logged.reward.size, _actions_tuple(actions), "q_hat")
    return float(_dr_terms(logged, q).mean())


@dataclass(frozen=True)
class PolicyValueEstimate:
    """An off-policy value estimate with its normal-approximation standard error.

    Attributes:
        kind: the estimator, ``"ipw"``, ``"snipw"`` or ``"dr"``.
        value: the estimate (equal to ``ipw_value``/``snipw_value``/``dr_value``).
        se: its standard error (``nan`` for a single row or an undefined SNIPW).
        n: the number of logged rows.
    """

    kind: str
    value: float
    se: float
    n: int

    def ci(self, level: float = 0.95) -> tuple[float, float]:
        """Two-sided normal-approximation confidence interval ``value ± z * se``."""
        if not 0 < level < 1:
            raise ValueError(f"level must lie in (0, 1), got {level}")
        z = NormalDist().inv_cdf(0.5 + level / 2)
        return self.value - z * self.se, self.value + z * self.se


def policy_value_se(
    kind: Estimator,
    chosen: ArrayLike,
    action: ArrayLike,
    propensity: ArrayLike,
    reward: ArrayLike,
    *,
    q_hat: ArrayLike | None = None,
    actions: Sequence[str] = ACTIONS,
) -> PolicyValueEstimate:
    """Value and standard error of one off-policy estimator (normal approximation, no resampling).

    * ``"ipw"``, ``"dr"``: each is a mean of i.i.d. per-row terms ``z_i`` (the summands in
      ``ipw_value``/``dr_value``), so ``se = std(z, ddof=1) / sqrt(n)``.
    * ``"snipw"``: a ratio of means; by the delta method (linearising around the estimate ``V``)
      ``se = sqrt(n / (n - 1) * Σ_i w_i² (reward_i - V)²) / Σ_i w_i``.

    ``q_hat`` is required for ``"dr"`` (columns named by ``actions``) and ignored otherwise.
    """
    if kind not in ESTIMATORS:
        raise ValueError(f"kind must be one of {list(ESTIMATORS)}, got {kind!r}")
    logged = _logged(chosen, action, propensity, reward, actions)
    n = logged.reward.size
    if kind == "snipw":
        weight = logged.weight
        total = weight.sum()
        if total == 0:
            return PolicyValueEstimate(kind, math.nan, math.nan, n)
        value = float(np.dot(weight, logged.reward) / total)
        if n < 2:
            return PolicyValueEstimate(kind, value, math.nan, n)
        influence = weight * (logged.reward - value)
        se = math.sqrt(n / (n - 1) * float(np.dot(influence, influence))) / total
        return PolicyValueEstimate(kind, value, se, n)
    if kind == "dr":
        if q_hat is None:
            raise ValueError("q_hat is required for the 'dr' estimator")
        terms = _dr_terms(logged, _value_matrix(q_hat, n, _actions_tuple(actions), "q_hat"))
    else:
        terms = _ipw_terms(logged)
    se = float(terms.std(ddof=1) / math.sqrt(n)) if n >= 2 else math.nan
    return PolicyValueEstimate(kind, float(terms.mean()), se, n)


def policy_value_ci(
    kind: Estimator,
    chosen: ArrayLike,
    action: ArrayLike,
    propensity: ArrayLike,
    reward: ArrayLike,
    *,
    q_hat: ArrayLike | None = None,
    actions: Sequence[str] = ACTIONS,
    level: float = 0.95,
) -> tuple[float, float]:
    """Normal-approximation confidence interval of ``policy_value_se``'s estimate."""
    estimate = policy_value_se(
        kind, chosen, action, propensity, reward, q_hat=q_hat, actions=actions
    )
    return estimate.ci(level)


# --------------------------------------------------------------------------- simulated truth


def true_policy_value(chosen: ArrayLike, truth_values: ArrayLike, actions: Sequence[str]) -> float:
    """True value of a policy in a simulated world: ``(1/n) Σ_i truth_values[i, chosen_i]``.

    Args:
        chosen: action the policy picks per row (names).
        truth_values: (n, len(actions)) true expected value of every action for every row.
        actions: names of ``truth_values``' columns, in order.
    """
    names = _actions_tuple(actions)
    codes = _action_codes(chosen, names, "chosen")
    truth = _value_matrix(truth_values, codes.size, names, "truth_values")
    return float(truth[np.arange(codes.size), codes].mean())


def oracle_policy(truth_values: ArrayLike, actions: Sequence[str]) -> NDArray[np.object_]:
    """The best action per row by true value (names, object dtype).

    Ties go to the action listed first in ``actions`` (``np.argmax``), so the result is
    deterministic.
    """
    names = _actions_tuple(actions)
    try:
        n = np.asarray(truth_values).shape[0]
    except IndexError:
        raise ValueError("truth_values must be a (n, len(actions)) matrix") from None
    if n == 0:
        raise ValueError("truth_values is empty: a metric needs at least one row")
    truth = _value_matrix(truth_values, n, names, "truth_values")
    return np.array(names, dtype=object)[np.argmax(truth, axis=1)]


def captured_share(policy_value: float, baseline_value: float, oracle_value: float) -> float:
    """Share of the oracle's gain over the baseline that a policy captures.

    ::

        captured = (policy_value - baseline_value) / (oracle_value - baseline_value)

    The baseline is always the policy that does nothing for everyone (always ``"none"``), e.g.
    ``true_policy_value(np.full(n, "none"), truth, actions)``, and the oracle the
    ``oracle_policy``'s value on the same rows: 1 is the oracle, 0 no better than doing nothing,
    negative worse than doing nothing. ``nan`` when the oracle does not beat the baseline.

    Raises:
        ValueError: a value is not finite, or ``oracle_value < baseline_value`` (impossible when
            both come from the same truth table).
    """
    named = {"policy": policy_value, "baseline": baseline_value, "oracle": oracle_value}
    for name, value in named.items():
        if not math.isfinite(value):
            raise ValueError(f"{name}_value must be finite, got {value}")
    if oracle_value < baseline_value:
        raise ValueError(
            f"oracle_value {oracle_value} < baseline_value {baseline_value}: the oracle is at "
            "least as good as any policy on the same truth table"
        )
    if oracle_value == baseline_value:
        return math.nan
    return (policy_value - baseline_value) / (oracle_value - baseline_value)
