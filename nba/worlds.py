"""A family of simulated worlds: knobs for the causal structure, and named presets.

One simulator written by the same hands as the model flatters the model: the learned policy
captured 80% of the oracle's value here and 9% on an independently written travel world. These
knobs change what the learner must find, not the raw contract it reads:

* ``effect_scale``: multiplies every action's effect on conversion and unsubscribes (0: no
  action has any effect, so the best policy is to do nothing and anything else only costs).
* ``segments``: ``broad`` (today's apology and recognition effects over 14-60 day windows) or
  ``rare`` (large effects only in rare event-defined segments: an apology credit within 7 days
  of a cancellation or a 4-hour delay not yet compensated, recognition within 7 days of a
  milestone; nothing elsewhere), so that the rule policy's windows are wrong.
* ``promo_driver``: ``price`` (the promo helps price-sensitive browsers, as today) or ``hidden``
  (the promo helps customers "due" for a trip, 60-300 days after their last booking, features
  with no main effect on conversion, and hurts the others).
* ``fare_sigma`` / ``typical_fare_sigma``: log-normal spread of a conversion's fare and of a
  customer's typical fare (heavy-tailed, noisy revenue next to small incremental values).
* ``random_share`` and ``logging``: how much of the log is randomized, and whether the rest
  comes from ``rules-v1`` or from a ``targeted`` policy that acts on latent traits the model
  never sees (price sensitivity), with its propensities logged truthfully.

``PRESETS`` names combinations; ``default`` is the world documented in ``docs/simulator.md``
and draws exactly the same numbers as before the knobs existed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from features.contract import ACTIONS

#: Name of the latent-trait targeting policy of ``logging="targeted"``.
TARGETED = "targeted-v0"


@dataclass(frozen=True)
class World:
    """Causal-structure knobs of a simulated world (module docstring)."""

    description: str
    effect_scale: float = 1.0
    segments: Literal["broad", "rare"] = "broad"
    promo_driver: Literal["price", "hidden"] = "price"
    fare_sigma: float = 0.3
    typical_fare_sigma: float = 0.35
    #: Share of randomized decisions; None keeps ``SimulationConfig.random_share``.
    random_share: float | None = None
    logging: Literal["rules", "targeted"] = "rules"

    def __post_init__(self) -> None:
        if self.effect_scale < 0:
            raise ValueError(f"effect_scale must be >= 0, got {self.effect_scale}")
        if self.fare_sigma <= 0 or self.typical_fare_sigma <= 0:
            raise ValueError("fare_sigma and typical_fare_sigma must be > 0")
        if self.random_share is not None and not 0 < self.random_share <= 1:
            raise ValueError(f"random_share must be in (0, 1], got {self.random_share}")


PRESETS: dict[str, World] = {
    "default": World("the documented world: broad effects, 80% randomized, rules-v1 logging"),
    "no_effect": World("no action changes anything: doing nothing is optimal", effect_scale=0.0),
    "rare_segments": World(
        "apology and recognition pay only in rare event-defined segments (7-day windows)",
        segments="rare",
    ),
    "heavy_tail": World(
        "heavy-tailed, noisy revenue; half-size effects, mostly promo by price sensitivity",
        effect_scale=0.5,
        fare_sigma=1.1,
        typical_fare_sigma=0.8,
    ),
    "hidden_drivers": World(
        "the promo's effect is driven by features without main effects (days since booking)",
        promo_driver="hidden",
    ),
    "confounded": World(
        "10% randomized; the rest targeted on latent price sensitivity",
        random_share=0.1,
        logging="targeted",
    ),
    "transfer": World(
        "the independent world's shape: rare segments, heavy tails, little randomized data",
        segments="rare",
        fare_sigma=1.1,
        typical_fare_sigma=0.8,
        random_share=0.3,
        logging="targeted",
    ),
}


@dataclass(frozen=True)
class Traits:
    """Latent traits of the customers behind each decision (never written to the raw data)."""

    price_sensitivity: np.ndarray
    trips_per_year: np.ndarray
    engagement: np.ndarray
    typical_fare: np.ndarray


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _conversion_effects(
    world: World, traits: Traits, feats: pd.DataFrame, derived: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Each action's effect on the log-odds of conversion (before ``effect_scale``)."""
    ps = traits.price_sensitivity
    days_neg = np.nan_to_num(derived["days_since_last_negative"], nan=1e9)
    days_mile = np.nan_to_num(derived["days_since_last_milestone"], nan=1e9)
    tenure = np.nan_to_num(derived["tenure_days"], nan=0.0)
    compensated = derived["compensated_since_last_negative"]
    open_case = feats["open_case_count"].to_numpy() > 0
    browsing = (feats["abandons_30d"].to_numpy() > 0) | (feats["searches_30d"].to_numpy() >= 3)
    hurting = open_case | (days_neg <= 14)
    neg30 = days_neg <= 30

    if world.promo_driver == "price":
        promo = 1.1 * ps * (0.5 + browsing) - 0.25
    else:
        since_booking = np.nan_to_num(derived["days_since_last_booking"], nan=1e9)
        due = (since_booking >= 60) & (since_booking <= 300)
        promo = np.where(due, 0.9, -0.5)
    effect = {"none": np.zeros(len(ps)), "promo": np.where(hurting, -0.9, promo)}
    if world.segments == "broad":
        effect["apology_credit"] = np.where(neg30, np.where(compensated, 0.4, 1.0), 0.0)
        effect["recognition"] = np.where(
            days_mile <= 14, 0.9, np.where(days_mile <= 60, 0.4, 0.15 * (tenure > 5 * 365))
        )
    else:
        kind = feats["last_negative_kind"].to_numpy(object)
        delay = np.nan_to_num(feats["last_negative_delay_minutes"].to_numpy(np.float64), nan=0.0)
        severe = (kind == "cancellation") | (delay >= 240)
        effect["apology_credit"] = np.where((days_neg <= 7) & ~compensated & severe, 2.5, 0.0)
        effect["recognition"] = np.where(days_mile <= 7, 2.0, 0.0)
    return effect


def causal_model(
    traits: Traits,
    feats: pd.DataFrame,
    derived: dict[str, np.ndarray],
    world: World = PRESETS["default"],  # frozen: a safe shared default
) -> pd.DataFrame:
    """True outcome probabilities and expected revenue of every action (``docs/simulator.md``).

    Returns one row per decision with ``p_convert_<a>``, ``revenue_<a>`` and
    ``p_unsubscribe_<a>`` for each action ``a``.
    """
    days_neg = np.nan_to_num(derived["days_since_last_negative"], nan=1e9)
    open_case = feats["open_case_count"].to_numpy() > 0
    searches7 = feats["searches_7d"].to_numpy() > 0
    browsing = (feats["abandons_30d"].to_numpy() > 0) | (feats["searches_30d"].to_numpy() >= 3)
    hurting = open_case | (days_neg <= 14)
    neg30 = days_neg <= 30
    reachable = feats["marketing_opt_in"].to_numpy() & ~feats["unsubscribed"].to_numpy()

    base = -3.0 + 0.55 * np.log(traits.trips_per_year) + 0.35 * searches7 + 0.3 * browsing
    base -= 0.4 * open_case
    effect = _conversion_effects(world, traits, feats, derived)
    unsub_base = -5.2 + 1.2 * (1 - traits.engagement)
    unsub_effect = {
        "none": 0.0,
        "promo": 0.7 + 1.6 * hurting,
        "apology_credit": -0.3 * neg30,
        "recognition": -0.2,
    }
    scale = world.effect_scale
    out: dict[str, np.ndarray] = {}
    for a in ACTIONS:
        p = _sigmoid(base + scale * effect[a])
        out[f"p_convert_{a}"] = p
        out[f"revenue_{a}"] = p * traits.typical_fare
        # Only a reachable customer can unsubscribe from marketing.
        p_unsub = _sigmoid(unsub_base + scale * np.asarray(unsub_effect[a]))
        out[f"p_unsubscribe_{a}"] = np.where(reachable, p_unsub, 0.0)
    return pd.DataFrame(out)


def targeted_probabilities(traits: Traits, allowed: np.ndarray) -> np.ndarray:
    """The ``targeted`` logging policy: ``(n, 4)`` action probabilities (``ACTIONS`` order).

    It acts on a latent trait the model never sees: a promo with probability 0.05 + 0.85 ps
    (when allowed), the rest split none 70%, apology credit 15%, recognition 15%. Its
    propensities are logged truthfully, so weighting can undo the confounding; the model's
    features can not, and the log holds few promos for price-insensitive customers.
    """
    ps = traits.price_sensitivity
    promo = np.where(allowed[:, ACTIONS.index("promo")], 0.05 + 0.85 * ps, 0.0)
    rest = 1.0 - promo
    probs = np.zeros((len(ps), len(ACTIONS)))
    probs[:, ACTIONS.index("promo")] = promo
    probs[:, ACTIONS.index("none")] = 0.7 * rest
    probs[:, ACTIONS.index("apology_credit")] = 0.15 * rest
    probs[:, ACTIONS.index("recognition")] = 0.15 * rest
    return probs
