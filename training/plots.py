"""Figures logged with every training run (matplotlib, headless)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def qini_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> Any:
    """One Qini curve per action against the random-targeting diagonal."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, max(len(curves), 1), figsize=(4.5 * max(len(curves), 1), 3.8))
    axes = np.atleast_1d(axes)
    for ax, (action, (x, y)) in zip(axes, curves.items(), strict=False):
        ax.plot(x, y, label="model")
        ax.plot([0, x[-1]], [0, y[-1]], "--", color="grey", label="random")
        ax.set_title(f"Qini: {action} vs none")
        ax.set_xlabel("decisions targeted")
        ax.set_ylabel("incremental conversions")
        ax.legend(loc="best")
    fig.tight_layout()
    return fig


def policy_values(table: pd.DataFrame) -> Any:
    """Estimated (DR, with ±2 s.e.) and, when known, true value per decision of each policy."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    names = list(table.index)
    pos = np.arange(len(names))
    ax.barh(pos - 0.2, table["dr"], height=0.4, xerr=2 * table["dr_se"], label="DR estimate")
    if "true" in table.columns:
        ax.barh(pos + 0.2, table["true"], height=0.4, label="true (simulator)")
    ax.set_yticks(pos, names)
    ax.invert_yaxis()
    ax.set_xlabel("net value per decision")
    ax.set_title("Policy value on held-out decisions")
    ax.legend(loc="best")
    fig.tight_layout()
    return fig


def feature_importance(model: Any, top: int = 20) -> Any:
    """Total gain of each feature over the conversion-uplift models of every action."""
    plt = _pyplot()
    gain: dict[str, float] = {}
    seen: set[int] = set()
    for (_, outcome), booster in model.models_.items():
        # An S-learner shares one booster between actions: count it once.
        if outcome != "converted" or id(booster) in seen:
            continue
        seen.add(id(booster))
        # The booster's own names: an S-learner's include its action columns.
        for name, value in zip(
            booster.feature_name(), booster.feature_importance("gain"), strict=True
        ):
            gain[name] = gain.get(name, 0.0) + float(value)
    ranked = sorted(gain.items(), key=lambda kv: kv[1], reverse=True)[:top]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(ranked) + 1))
    ax.barh([k for k, _ in ranked][::-1], [v for _, v in ranked][::-1])
    ax.set_title("Feature importance (gain), conversion uplift models")
    fig.tight_layout()
    return fig
