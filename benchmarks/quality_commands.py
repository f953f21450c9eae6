"""Decision quality as a user gets it: ``nba``'s own commands on each world preset.

For every preset: a fresh workspace (``nba init``), ``nba simulate --world``, ``nba features``,
``nba train --force`` (the policy selection, the gate's reason, the registered champion), then
``nba score`` of the held-out latest 20% of the logged decisions at their own times (point in
time, the guardrails applied, no contact history). The champion's actions are scored against
the simulator's truth as in ``benchmarks/quality.py``:

    oracle share = (V(champion) - V(none)) / (V(oracle) - V(none))

over the actions the contract allows (no promo without consent, for the oracle too); in the
no-effect world the row is the true value per decision against ``none`` ($, 0 at best).

    python benchmarks/quality_commands.py [--customers 6000] [--seed 0] [--worlds default ...]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __name__ == "__main__" and __package__ in (None, ""):
    # `python benchmarks/quality_commands.py`: this folder's features.py would shadow the package.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import re
import subprocess
import tempfile
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from features.build import build_features
from features.contract import ACTIONS, load_raw
from nba.worlds import PRESETS
from training import metrics
from training.dataset import entity_frame_of
from training.policy_learning import promo_allowed
from training.value import ActionCosts, true_value

console = Console(width=200)
END = "2026-11-01T00:00:00Z"


def nba(*args: str, env: dict[str, str]) -> str:
    """Run one ``nba`` command; its standard output, or an error naming the command."""
    done = subprocess.run([sys.executable, "-m", "nba.cli", *args], capture_output=True,
                          text=True, env=env, timeout=3600)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"nba {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def held_out(raw_dir: Path, share: float = 0.2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The latest ``share`` of the decisions that have outcomes (``training.dataset.time_split``'s
    cut), with their truth."""
    raw = load_raw(raw_dir)
    assert raw.truth is not None, "a simulated world writes its truth"
    actions = raw.actions[raw.actions["decision_id"].isin(raw.outcomes["decision_id"])]
    order = np.argsort(actions["decided_at"].to_numpy(), kind="stable")
    cut = round(len(order) * (1 - share))
    test = actions.iloc[np.sort(order[cut:])].reset_index(drop=True)
    truth = raw.truth.set_index("decision_id").loc[test["decision_id"]].reset_index()
    features = build_features(raw, entity_frame_of(test))
    return test.assign(promo_allowed=promo_allowed(features)), truth


def run_world(name: str, customers: int, seed: int, root: Path) -> dict[str, object]:
    """The commands on one preset, and the champion's oracle share on its held-out decisions."""
    started = time.perf_counter()
    home = root / name
    env = {**os.environ, "NBA_HOME": str(home), "OMP_WAIT_POLICY": "PASSIVE"}
    nba("init", str(home), env=env)
    raw_dir = home / "data" / "raw"
    nba("simulate", "--out", str(raw_dir), "--customers", str(customers), "--seed", str(seed),
        "--end", END, "--world", name, env=env)  # fmt: skip
    nba("features", "--raw", str(raw_dir), env=env)
    trained = " ".join(nba("train", "--raw", str(raw_dir), "--force", env=env).split())
    chosen = re.search(r"selected: (.+?)(?::| stays)", trained)
    test, truth = held_out(raw_dir)
    rows = home / "held_out.csv"
    test[["decision_id", "customer_id", "decided_at", "channel"]].to_csv(rows, index=False)
    scored_path = home / "scored.parquet"
    nba("score", "--actions", str(rows), "--out", str(scored_path), env=env)
    scored = pd.read_parquet(scored_path).set_index("decision_id").loc[test["decision_id"]]
    costs = ActionCosts()
    value = true_value(truth, ACTIONS, costs)
    blocked = ~test["promo_allowed"].to_numpy(bool)
    value[blocked, ACTIONS.index("promo")] = value[blocked, ACTIONS.index("none")]
    v_none = metrics.true_policy_value(np.full(len(test), "none", dtype=object), value, ACTIONS)
    v_oracle = metrics.true_policy_value(metrics.oracle_policy(value, ACTIONS), value, ACTIONS)
    v = metrics.true_policy_value(scored["action"].to_numpy(object), value, ACTIONS)
    effects = v_oracle - v_none > 1e-9
    share = metrics.captured_share(v, v_none, v_oracle) if effects else v - v_none
    seconds = time.perf_counter() - started
    console.print(f"[green]✓[/] {name}: {chosen.group(1) if chosen else '?'} ({seconds:.0f} s)")
    return {"world": name, "decisions": len(test), "champion": chosen.group(1) if chosen else "?",
            "share": share, "effects": effects, "seconds": seconds}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worlds", nargs="*", default=list(PRESETS))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nba-quality-") as tmp:
        rows = [run_world(w, args.customers, args.seed, Path(tmp)) for w in args.worlds]
    table = Table(title=f"nba's own commands: the champion's oracle share on the held-out "
                  f"decisions ({args.customers:,} customers, seed {args.seed})")  # fmt: skip
    for col in ("world", "held-out decisions", "champion", "oracle share", "seconds"):
        table.add_column(col, justify="left" if col in ("world", "champion") else "right")
    for r in rows:
        unit = "" if r["effects"] else " $"
        table.add_row(str(r["world"]), f"{r['decisions']:,}", str(r["champion"]),
                      f"{float(r['share']):.2f}{unit}", f"{float(r['seconds']):.0f}")  # type: ignore[arg-type]  # fmt: skip
    effect_rows = [float(r["share"]) for r in rows if r["effects"]]  # type: ignore[arg-type]
    if effect_rows:
        table.add_row("mean (worlds with effects)", "", "", f"{np.mean(effect_rows):.2f}", "")
    console.print(table)


if __name__ == "__main__":
    main()
