"""Drift of the decision log against the training reference: the plain-Python part of ``nba drift``.

What is compared (reference = ``training.reference``, the champion's training rows and scores;
current = the decision log's window, ``features.decision_log``):

* **data drift** per model feature (``f_<name>``) and **prediction drift** per action
  (``uplift_<a>``, ``value_<a>``): a per-column drift score from the engine (Evidently), by
  default the normed Wasserstein distance (Wasserstein distance over the reference's standard
  deviation), drifted when ``score >= column_threshold``. Missing values are left out of the
  distributions; their shares are reported beside the score. A feature with values in the
  reference but none in the window (it stopped arriving) counts as drifted.
* **the action mix**: the share of each action the model prefers (:func:`preferred_action` of
  the logged ``value_<a>``, degraded rows left out) against the learned policy's choices on the
  reference, which are made by the same rule. Both sides are the model's unconstrained choice,
  so the comparison moves only when the travellers or the model's scores move. The logged
  (chosen) mix, after guardrails, exploration and degraded answers, is reported beside it: the
  reference has no guardrails (training has no request context), so comparing the logged mix
  with it would alert on the guardrails themselves.
* **guardrail block rates** (share of decisions where each action was blocked, and how often
  each rule fired), the **degraded share** and its reasons, the explored share and the share of
  decisions whose customer had features: window figures, over every row of the window.

Thresholds (``DriftConfig``): the run alerts (exit code ``EXIT_DRIFT``) when the share of drifted
features is at least ``feature_share``, or when a preferred-action share moved by more than
``action_share`` (absolute) from the reference.

Small windows: below ``min_rows`` decisions (``NBA_DRIFT_MIN_ROWS``, default 200) the run never
alerts. On a handful of rows every distribution looks shifted (three decisions "drift" on 29 of
30 features) and one decision moves an action share by a third: such a verdict is noise. The
report and the summary are still written, with the status ``too_few_decisions``, the sample
warning, and the alerts the thresholds would have raised (``suppressed_alerts``); the exit code
is ``EXIT_TOO_FEW`` so that a scheduler can tell "not judged" from "no drift".

Columns that hold one and the same value on both sides (the uplift and value of ``none``, the
control, are always 0) carry no information: they are not compared and not plotted.

Large windows: the engine sees a uniform random sample (seeded) of at most ``sample_rows`` rows
of each side; the drift scores are effect sizes, whose sampling error at 100k rows (about 0.005
for the normed Wasserstein distance) is far below the 0.1 threshold. Counts, the action mix,
block rates and the degraded share are computed on the whole window.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
import pandas as pd

from features.contract import ACTIONS
from training.reference import FEATURE_COLUMNS, PREDICTION_COLUMNS, preferred_action

#: Exit codes of ``nba drift`` (2 is any other bad input, as for every ``nba`` command).
EXIT_OK: Final = 0
EXIT_DRIFT: Final = 3
EXIT_EMPTY_WINDOW: Final = 4
EXIT_MISSING_COLUMNS: Final = 5
EXIT_NO_REFERENCE: Final = 6
EXIT_TOO_FEW: Final = 7

#: Status of a summary: no alert, alerts, or too few decisions to judge.
STATUS_OK: Final = "ok"
STATUS_DRIFT: Final = "drift"
STATUS_TOO_FEW: Final = "too_few_decisions"

#: Distance-like drift methods of Evidently (higher is more drift; drifted when >= threshold).
#: P-value tests (ks, chisquare, ...) would flag everything on a million rows: not offered.
DISTANCE_METHODS: Final = ("wasserstein", "psi", "jensenshannon", "hellinger", "ed", "kl_div")

#: Window columns ``nba drift`` cannot do without.
REQUIRED_COLUMNS: Final[tuple[str, ...]] = (
    "decided_at",
    "action",
    "degraded",
    *PREDICTION_COLUMNS,
    *FEATURE_COLUMNS,
)
#: Reference columns (``training.reference``).
REFERENCE_COLUMNS: Final[tuple[str, ...]] = (*FEATURE_COLUMNS, *PREDICTION_COLUMNS, "action")
#: Columns of the frames handed to the engine besides features and predictions.
MIX_COLUMNS: Final[tuple[str, ...]] = ("action", "preferred_action")
BLOCKED_COLUMNS: Final[tuple[str, ...]] = tuple(f"blocked_{a}" for a in ACTIONS)


class DriftInputError(ValueError):
    """Bad input for ``nba drift``; ``exit_code`` tells a scheduler which kind."""

    exit_code: int = 2


class EmptyWindowError(DriftInputError):
    """No decisions in the window."""

    exit_code = EXIT_EMPTY_WINDOW


class MissingColumnsError(DriftInputError):
    """The window lacks columns ``nba drift`` needs."""

    exit_code = EXIT_MISSING_COLUMNS


class NoReferenceError(DriftInputError):
    """No usable reference (no champion, no reference artifact, or a malformed file)."""

    exit_code = EXIT_NO_REFERENCE


@dataclass(frozen=True)
class DriftConfig:
    """Thresholds and sampling of a drift run (``NBA_DRIFT_*`` settings)."""

    feature_share: float = 0.3
    action_share: float = 0.10
    method: str = "wasserstein"
    column_threshold: float = 0.1
    sample_rows: int = 100_000
    seed: int = 0
    min_rows: int = 200

    def __post_init__(self) -> None:
        if self.method not in DISTANCE_METHODS:
            raise ValueError(f"drift method {self.method!r} is not one of {DISTANCE_METHODS}")
        if not 0 < self.feature_share <= 1:
            raise ValueError(f"feature_share must be in (0, 1], got {self.feature_share}")
        if not 0 < self.action_share <= 1:
            raise ValueError(f"action_share must be in (0, 1], got {self.action_share}")
        if self.sample_rows < 1000:
            raise ValueError(f"sample_rows must be at least 1000, got {self.sample_rows}")
        if self.min_rows < 1:
            raise ValueError(f"min_rows must be at least 1, got {self.min_rows}")


class EngineRun(Protocol):
    """What a drift engine returns: per-column scores, and its rendered report."""

    @property
    def scores(self) -> Mapping[str, float]:
        """Per-column drift scores."""
        ...

    def save_html(self, path: Path, summary: Mapping[str, Any]) -> None:
        """Write the report as a self-contained HTML file, headed by the run's ``summary``
        (window, model, reference, status, sample warning, action mix)."""
        ...


class DriftEngine(Protocol):
    """Computes per-column drift scores of ``current`` against ``reference``."""

    def run(
        self,
        reference: pd.DataFrame,
        current: pd.DataFrame,
        features: Sequence[str],
        predictions: Sequence[str],
        config: DriftConfig,
        meta: Mapping[str, str],
    ) -> EngineRun:
        """Score every column of ``features`` and ``predictions`` (each has values on both
        sides); ``reference`` and ``current`` also carry ``MIX_COLUMNS``, ``degraded`` and
        ``BLOCKED_COLUMNS`` for the engine's own report."""
        ...


@dataclass
class DriftResult:
    """A drift run: the JSON-safe summary, the exit code it implies, and the engine's run."""

    summary: dict[str, Any]
    exit_code: int
    run: Any = field(repr=False)


def check_window(window: pd.DataFrame, present: set[str] | None = None, where: str = "") -> None:
    """Raise ``EmptyWindowError`` or ``MissingColumnsError`` for a window ``nba drift`` cannot use.

    ``present`` is the set of columns the window's files actually hold (a reader that fills
    absent columns with nulls would otherwise hide them); ``None``: the frame's columns.
    """
    if len(window) == 0:
        raise EmptyWindowError(f"no decisions in the window{where}: nothing to compare")
    have = set(window.columns) if present is None else set(present) & set(window.columns)
    missing = [c for c in REQUIRED_COLUMNS if c not in have]
    if missing:
        more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
        shown = ", ".join(missing[:6]) + more
        raise MissingColumnsError(
            f"the decision log window{where} lacks {len(missing)} column(s) nba drift needs: "
            f"{shown} (written by an older service?)"
        )


def check_reference(reference: pd.DataFrame, what: str = "the reference") -> None:
    """Raise ``NoReferenceError`` when ``reference`` is empty or lacks reference columns."""
    missing = [c for c in REFERENCE_COLUMNS if c not in reference.columns]
    if missing:
        raise NoReferenceError(
            f"{what} lacks columns {missing[:5]}: it is not a drift reference "
            "(retrain with `nba train` to log one)"
        )
    if len(reference) == 0:
        raise NoReferenceError(f"{what} has no rows: retrain with `nba train` to log one")


def monitored(frame: pd.DataFrame, reference: bool) -> pd.DataFrame:
    """The columns the engine compares, in the same layout for both sides.

    Reference: its features and scores, ``action`` = ``preferred_action`` = the learned policy's
    choice, ``degraded`` 0 and block rates unknown (NaN). Window: ``preferred_action`` from the
    logged values (None on degraded rows), ``degraded`` and ``blocked_<a>`` as 0/1.
    """
    out = frame[list(FEATURE_COLUMNS) + list(PREDICTION_COLUMNS)].astype(np.float64)
    if reference:
        out["action"] = frame["action"].astype(object).to_numpy()
        out["preferred_action"] = out["action"]
        out["degraded"] = 0.0
        for col in BLOCKED_COLUMNS:
            out[col] = np.nan
        return out
    degraded = frame["degraded"].fillna(False).astype(bool).to_numpy()
    values = frame[[f"value_{a}" for a in ACTIONS]].to_numpy(np.float64)
    preferred = preferred_action(values)
    preferred[degraded] = None
    out["action"] = frame["action"].astype(object).to_numpy()
    out["preferred_action"] = preferred
    out["degraded"] = degraded.astype(np.float64)
    for a, col in zip(ACTIONS, BLOCKED_COLUMNS, strict=True):
        eligible = frame.get(f"eligible_{a}")
        if eligible is None:
            out[col] = np.nan
        else:
            blocked = ~eligible.astype("boolean")
            out[col] = blocked.astype("Float64").to_numpy(np.float64, na_value=np.nan)
    return out


def sample_rows(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """At most ``n`` rows of ``frame``, uniformly without replacement (seeded), in order."""
    if len(frame) <= n:
        return frame.reset_index(drop=True)
    rows = np.sort(np.random.default_rng(seed).choice(len(frame), size=n, replace=False))
    return frame.iloc[rows].reset_index(drop=True)


def run_drift(
    reference: pd.DataFrame,
    window: pd.DataFrame,
    engine: DriftEngine,
    config: DriftConfig | None = None,
    meta: Mapping[str, str] | None = None,
) -> DriftResult:
    """Compare ``window`` (decision-log rows) with ``reference``; see the module docstring.

    The caller checks the window (``check_window``) first; the reference is checked here.
    """
    config = config or DriftConfig()
    meta = dict(meta or {})
    check_reference(reference)
    check_window(window)
    ref_all = monitored(reference, reference=True)
    cur_all = monitored(window, reference=False)
    ref = sample_rows(ref_all, config.sample_rows, config.seed)
    cur = sample_rows(cur_all, config.sample_rows, config.seed + 1)
    # The engine needs values on both sides, and something to compare: a column holding one
    # value on both sides (the control's uplift, always 0) would only draw a flat line. The
    # rest is judged here (see _columns).
    usable = [
        c
        for c in (*FEATURE_COLUMNS, *PREDICTION_COLUMNS)
        if ref[c].notna().any() and cur[c].notna().any() and not _constant(ref, cur, c)
    ]
    features = [c for c in FEATURE_COLUMNS if c in usable]
    predictions = [c for c in PREDICTION_COLUMNS if c in usable]
    run = engine.run(ref, cur, features, predictions, config, meta)
    summary = summarize(ref_all, cur_all, window, dict(run.scores), config, meta,
                        sampled=(len(ref), len(cur)))  # fmt: skip
    codes = {STATUS_OK: EXIT_OK, STATUS_DRIFT: EXIT_DRIFT, STATUS_TOO_FEW: EXIT_TOO_FEW}
    return DriftResult(summary, codes[summary["status"]], run)


def _constant(ref: pd.DataFrame, cur: pd.DataFrame, column: str) -> bool:
    """Whether ``column`` holds one and the same value on both sides (missing values aside)."""
    values = pd.concat([ref[column], cur[column]]).dropna()
    return len(values) > 0 and bool((values == values.iloc[0]).all())


def _columns(
    names: Sequence[str],
    scores: Mapping[str, float],
    ref: pd.DataFrame,
    cur: pd.DataFrame,
    threshold: float,
) -> list[dict[str, Any]]:
    """Per-column results, drifted first, then by score (highest first)."""
    rows = []
    for name in names:
        ref_missing = float(ref[name].isna().mean())
        cur_missing = float(cur[name].isna().mean())
        score = scores.get(name)
        if score is not None and math.isfinite(score):
            drifted, note = bool(score >= threshold), ""
        elif ref_missing < 1.0 and cur_missing < 1.0 and _constant(ref, cur, name):
            score, drifted, note = None, False, "one constant value on both sides: not compared"
        elif ref_missing < 1.0 and cur_missing == 1.0:
            score, drifted, note = None, True, "no values in the window (stopped arriving?)"
        elif ref_missing == 1.0 and cur_missing < 1.0:
            score, drifted, note = None, True, "values in the window, none in the reference"
        else:
            score, drifted, note = None, False, "no values on either side: not compared"
        rows.append(
            {
                "column": name,
                "score": None if score is None else float(score),
                "drifted": drifted,
                "missing_reference": ref_missing,
                "missing_current": cur_missing,
                "mean_reference": _finite(ref[name].mean()),
                "mean_current": _finite(cur[name].mean()),
                "note": note,
            }
        )
    rows.sort(
        key=lambda r: (not r["drifted"], -(float(r["score"]) if r["score"] is not None else 1e9))
    )
    return rows


def _group(rows: list[dict[str, Any]]) -> dict[str, Any]:
    compared = [r for r in rows if r["score"] is not None or r["drifted"]]
    drifted = sum(r["drifted"] for r in compared)
    return {
        "drifted": drifted,
        "compared": len(compared),
        "share": drifted / len(compared) if compared else 0.0,
        "columns": rows,
    }


def action_mix(ref: pd.DataFrame, cur: pd.DataFrame) -> list[dict[str, Any]]:
    """Per action: reference share (learned policy), preferred share in the window (same rule,
    degraded rows left out), logged share in the window, and the shift (preferred - reference).
    """
    ref_share = ref["preferred_action"].value_counts(normalize=True)
    pref = cur["preferred_action"].dropna()
    pref_share = pref.value_counts(normalize=True) if len(pref) else pd.Series(dtype=float)
    logged = cur["action"].value_counts(normalize=True)
    out = []
    for a in ACTIONS:
        r, p, g = (float(s.get(a, 0.0)) for s in (ref_share, pref_share, logged))
        out.append(
            {
                "action": a,
                "reference_share": r,
                "preferred_share": p if len(pref) else None,
                "logged_share": g,
                "shift": p - r if len(pref) else None,
            }
        )
    return out


def guardrail_rates(window: pd.DataFrame) -> dict[str, Any]:
    """Share of decisions on which each action was blocked, and decisions blocked per rule."""
    blocked: dict[str, float | None] = {}
    rules: dict[str, int] = {}
    for a in ACTIONS:
        eligible = window.get(f"eligible_{a}")
        known = eligible.dropna() if eligible is not None else pd.Series(dtype=bool)
        blocked[a] = float((~known.astype(bool)).mean()) if len(known) else None
        names = window.get(f"blocked_by_{a}")
        if names is None:
            continue
        # Split the distinct strings, not a million rows.
        for joined, count in names.dropna().value_counts().items():
            for rule in str(joined).split(";"):
                if rule:
                    rules[rule] = rules.get(rule, 0) + int(count)
    return {"blocked_share": blocked, "rule_blocks": dict(sorted(rules.items()))}


def summarize(
    ref: pd.DataFrame,
    cur: pd.DataFrame,
    window: pd.DataFrame,
    scores: Mapping[str, float],
    config: DriftConfig,
    meta: Mapping[str, str],
    sampled: tuple[int, int],
) -> dict[str, Any]:
    """The JSON-safe summary of a run (``ref``/``cur`` are ``monitored`` frames)."""
    features = _group(_columns(FEATURE_COLUMNS, scores, ref, cur, config.column_threshold))
    predictions = _group(_columns(PREDICTION_COLUMNS, scores, ref, cur, config.column_threshold))
    mix = action_mix(ref, cur)
    alerts = []
    if features["share"] >= config.feature_share:
        alerts.append(
            f"{features['drifted']} of {features['compared']} features drifted "
            f"({features['share']:.0%} >= {config.feature_share:.0%})"
        )
    for row in mix:
        if row["shift"] is not None and abs(row["shift"]) > config.action_share:
            alerts.append(
                f"{row['action']} share moved {row['shift']:+.1%} "
                f"({row['reference_share']:.1%} -> {row['preferred_share']:.1%}; "
                f"threshold {config.action_share:.0%})"
            )
    suppressed: list[str] = []
    enough = len(window) >= config.min_rows
    if not enough:
        # Refuse to judge a handful of decisions (module docstring): keep what would have
        # alerted, for the reader, but raise nothing.
        suppressed, alerts = alerts, []
    status = STATUS_DRIFT if alerts else STATUS_OK if enough else STATUS_TOO_FEW
    degraded = window["degraded"].fillna(False).astype(bool)
    versions = window.get("model_version", pd.Series(dtype=object)).fillna("none").value_counts()
    reasons = window.loc[degraded.to_numpy(), "degraded_reason"] if "degraded_reason" in window \
        else pd.Series(dtype=object)  # fmt: skip
    return {
        "status": status,
        "alerts": alerts,
        "sample_warning": None if enough else sample_warning(len(window), config.min_rows),
        "suppressed_alerts": suppressed,
        **meta,
        "window_rows": len(window),
        "reference_rows": len(ref),
        "sampled_rows": {"reference": sampled[0], "current": sampled[1]},
        "thresholds": {
            "feature_share": config.feature_share,
            "action_share": config.action_share,
            "method": config.method,
            "column_threshold": config.column_threshold,
            "sample_rows": config.sample_rows,
            "min_rows": config.min_rows,
        },
        "features": features,
        "predictions": predictions,
        "actions": mix,
        "guardrails": guardrail_rates(window),
        "degraded": {
            "share": float(degraded.mean()),
            "reasons": {
                str(k).split(":")[0]: int(v) for k, v in reasons.dropna().value_counts().items()
            },
        },
        "explored_share": _share(window.get("explored")),
        "features_found_share": _share(window.get("features_found")),
        "model_versions": {str(k): int(v) for k, v in versions.head(10).items()},
    }


def sample_warning(rows: int, min_rows: int) -> str:
    """The plain sentence of a window too small to judge."""
    noun = "decision" if rows == 1 else "decisions"
    return (
        f"too few decisions to judge drift: {rows:,} {noun} in the window, at least "
        f"{min_rows:,} needed (NBA_DRIFT_MIN_ROWS); no alert is raised, the figures are shown "
        "for information only"
    )


def metrics_of(summary: Mapping[str, Any]) -> dict[str, float]:
    """Flat numeric figures of a summary, for MLflow metrics."""
    out = {
        "window_rows": float(summary["window_rows"]),
        "drifted_feature_share": float(summary["features"]["share"]),
        "drifted_features": float(summary["features"]["drifted"]),
        "drifted_prediction_share": float(summary["predictions"]["share"]),
        "degraded_share": float(summary["degraded"]["share"]),
        "alert": float(bool(summary["alerts"])),
        "too_few_decisions": float(summary["status"] == STATUS_TOO_FEW),
    }
    for row in summary["actions"]:
        out[f"reference_share_{row['action']}"] = row["reference_share"]
        out[f"logged_share_{row['action']}"] = row["logged_share"]
        if row["preferred_share"] is not None:
            out[f"preferred_share_{row['action']}"] = row["preferred_share"]
    for a, share in summary["guardrails"]["blocked_share"].items():
        if share is not None:
            out[f"blocked_share_{a}"] = share
    for group in ("features", "predictions"):
        for row in summary[group]["columns"]:
            if row["score"] is not None:
                out[f"drift_{row['column']}"] = row["score"]
    return out


def _share(column: pd.Series | None) -> float | None:
    if column is None:
        return None
    known = column.dropna()
    return float(known.astype(bool).mean()) if len(known) else None


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None
