"""The family of worlds: each preset's knobs do what they say, the default world is unchanged."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.contract import ACTIONS, RawData
from nba.simulate import SimulationConfig, simulate
from nba.worlds import PRESETS, TARGETED, World

END = pd.Timestamp("2026-11-01T00:00:00Z")


def _world(name: str, seed: int = 5) -> RawData:
    return simulate(SimulationConfig(end=END, customers=500, days=200, seed=seed, world=name))


def test_at_least_five_named_presets_and_default_first() -> None:
    assert len(PRESETS) >= 5
    assert next(iter(PRESETS)) == "default"
    assert {"no_effect", "rare_segments", "heavy_tail", "confounded"} <= set(PRESETS)


def test_no_effect_world_has_zero_true_effects() -> None:
    truth = _world("no_effect").truth
    assert truth is not None
    for kind in ("p_convert", "revenue", "p_unsubscribe"):
        for a in ACTIONS:
            np.testing.assert_allclose(truth[f"{kind}_{a}"], truth[f"{kind}_none"], err_msg=kind)


def test_default_world_has_effects_and_preset_name_changes_the_truth() -> None:
    default, rare = _world("default").truth, _world("rare_segments").truth
    assert default is not None and rare is not None
    assert (default["p_convert_apology_credit"] != default["p_convert_none"]).mean() > 0.01
    # Same customers and decisions (the knobs act after them), different causal structure.
    assert len(default) == len(rare)
    lift = rare["p_convert_apology_credit"] - rare["p_convert_none"]
    broad = default["p_convert_apology_credit"] - default["p_convert_none"]
    assert (lift > 0).mean() < (broad > 0).mean()  # rarer segments
    assert lift.max() > broad.max()  # with larger effects


def test_targeted_logging_logs_its_policy_and_true_propensities() -> None:
    world = _world("confounded")
    actions = world.actions
    assert set(actions["policy"]) == {"random", TARGETED}
    assert (actions["policy"] == "random").mean() < 0.2
    assert actions["propensity"].between(0, 1, inclusive="right").all()
    # Promos follow latent price sensitivity: not a constant share of the targeted decisions.
    targeted = actions[actions["policy"] == TARGETED]
    assert targeted.loc[targeted["action"] == "promo", "propensity"].std() > 0.05


def test_heavy_tail_world_has_noisier_revenue() -> None:
    light = _world("default").outcomes["revenue"]
    heavy = _world("heavy_tail").outcomes["revenue"]
    assert (
        heavy[heavy > 0].std() / heavy[heavy > 0].mean()
        > light[light > 0].std() / light[light > 0].mean()
    )


def test_unknown_world_and_bad_knobs_are_refused() -> None:
    with pytest.raises(ValueError, match="world 'mars' is not one of"):
        SimulationConfig(end=END, world="mars")
    with pytest.raises(ValueError, match="effect_scale"):
        World("x", effect_scale=-1.0)
