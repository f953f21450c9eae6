"""What serving the selected policy costs a decision: the champion against its own uplift model.

Needs a workspace with a champion registered by ``nba train`` (a ``ServedPolicy``) and
materialized features (``make demo``, or ``NBA_HOME`` of another workspace). In one process,
with the same reader, guardrails and requests, it times ``Decider.decide`` and
``decide_batch`` for two models, interleaved round by round so that a noisy spell of the host
hits both: the champion as registered, and its uplift model alone (the argmax of its expected
values, how the service chose before policy selection). The ratio is the cost of the advice
(a rule segment, a tree leaf, a confidence bound) per decision.

    python benchmarks/policy_overhead.py [--requests 3000] [--batch 10000] [--rounds 3]
"""

from __future__ import annotations

import os

# LightGBM's OpenMP threads spin unless told not to (docs: stack-facts); set before import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import sys
from pathlib import Path

if __name__ == "__main__" and __package__ in (None, ""):
    # `python benchmarks/policy_overhead.py`: this folder's features.py would shadow the package.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import gc
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from benchmarks.decide import bench_decider, customer_ids

console = Console()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from features.store import FeastAdapter
    from nba.settings import load_settings
    from serving.decision import LoadedModel, Request
    from serving.runtime import load_champion

    settings = load_settings()
    reader = FeastAdapter(settings.feature_repo, settings.feature_store_yaml).direct_reader()
    champion = load_champion(settings)
    served = champion.estimator
    if not hasattr(served, "value_model"):
        raise SystemExit("the champion predates policy selection: retrain with `nba train`")
    models = {
        f"champion ({served.name})": champion,
        "its uplift model alone": LoadedModel(served.value_model, champion.version),
    }
    deciders = {label: bench_decider(m, reader, settings, 0.0) for label, m in models.items()}
    ids = customer_ids(args.requests)
    singles: dict[str, list[float]] = {label: [] for label in models}
    batches: dict[str, list[float]] = {label: [] for label in models}
    gc.collect()
    gc.freeze()
    for _ in range(args.rounds):
        for label, decider in deciders.items():
            for customer in ids:
                t0 = time.perf_counter()
                decider.decide(Request(customer))
                singles[label].append(time.perf_counter() - t0)
            requests = [Request(ids[i % len(ids)]) for i in range(args.batch)]
            t0 = time.perf_counter()
            decider.decide_batch(requests)
            batches[label].append(time.perf_counter() - t0)

    table = Table(title=f"serving the selected policy: {args.rounds} rounds of {args.requests:,} "
                  f"/decide and one {args.batch:,}-request batch each, in process")  # fmt: skip
    for col in ("model", "/decide p50 ms", "p99 ms", "batch /s (median)", "p50 ratio"):
        table.add_column(col, justify="left" if col == "model" else "right")
    base = float(np.median(singles["its uplift model alone"])) * 1000
    for label in models:
        ms = np.array(singles[label]) * 1000
        rate = args.batch / float(np.median(batches[label]))
        table.add_row(label, f"{np.percentile(ms, 50):.3f}", f"{np.percentile(ms, 99):.3f}",
                      f"{rate:,.0f}", f"{np.percentile(ms, 50) / base:.2f}")  # fmt: skip
    console.print(table)


if __name__ == "__main__":
    main()
