"""Drift benchmark: ``nba drift`` on 1M logged decisions against a 200k-row reference.

Builds a realistic log once (a simulated world with a disruption wave, a small uplift model,
decisions replayed in the wave's week by ``nba.replay``, tiled to ``--rows`` with fresh ids and
times spread over the week, written in the decision log's layout), then runs the real command
(``nba drift --reference``, with MLflow logging and the Evidently workspace) in a subprocess and
prints its stages, wall time and peak memory. Target (issue #5): <= 60 s on 2 cores.

Then opens the HTML report in headless Chromium, saves a screenshot and checks that the table
lists the drifted features first (the names in the report's table, in order, against the JSON
summary). Look at the PNG to confirm.

    python benchmarks/drift.py [--rows 1000000] [--reference-rows 200000] [--out benchmarks/out]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and __package__ in (None, ""):
    # Run as `python benchmarks/drift.py`: put the project root first (see features.py).
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import tempfile
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from features.build import build_features
from features.decision_log import DECISION_SCHEMA
from nba.replay import replay, visit_points
from nba.simulate import SimulationConfig, simulate
from serving.guardrails import load_rules
from training.dataset import assemble, entity_frame
from training.reference import build_reference
from training.uplift import MultiActionUplift

#: The repository checkout (benchmarks run from it).
REPO_ROOT = Path(__file__).resolve().parents[1]

console = Console()
END = pd.Timestamp("2026-11-01T00:00:00Z")
WEEK = pd.Timedelta(days=7)
#: Rows per Parquet part, about what a service flushes in a few seconds at full load.
PART_ROWS = 50_000


def build_inputs(folder: Path, rows: int, reference_rows: int, seed: int) -> tuple[Path, Path]:
    """A reference Parquet file and a decision log folder of ``rows`` decisions."""
    world = simulate(
        SimulationConfig(end=END, customers=3_000, days=500, seed=seed, scenario="disruption_wave")
    )
    data = assemble(world, build_features(world, entity_frame(world)))
    model = MultiActionUplift(method="t", n_estimators=30, min_child_samples=20).fit(
        data.X, data.decisions["action"], data.decisions["propensity"], data.outcomes
    )
    rng = np.random.default_rng(seed)
    # The training split is small here: resample it to the reference size nba train would keep.
    X = data.X.iloc[rng.integers(0, len(data.X), reference_rows)].reset_index(drop=True)
    reference = folder / "reference.parquet"
    build_reference(X, model, max_rows=reference_rows).to_parquet(reference, index=False)

    points = visit_points(world, END - WEEK, END, intensity=40, seed=seed)
    rules = load_rules(REPO_ROOT / "serving" / "guardrails.yaml")
    base = replay(world, points, model, rules, model_version="nba-uplift/1")
    log = folder / "log"
    start_ns = (END - WEEK).value
    for part, first in enumerate(range(0, rows, PART_ROWS)):
        n = min(PART_ROWS, rows - first)
        chunk = base.iloc[rng.integers(0, len(base), n)].reset_index(drop=True)
        chunk["decision_id"] = [f"b-{first + i}" for i in range(n)]
        stamps = np.sort(start_ns + rng.integers(0, WEEK.value, n)) // 1000 * 1000  # µs
        chunk["decided_at"] = pd.to_datetime(stamps, utc=True)
        # The decision log's layout (features.decision_log.write_part), one day per file.
        days = chunk["decided_at"].dt.strftime("%Y-%m-%d")
        for day in days.unique():
            table = pa.Table.from_pandas(
                chunk[(days == day).to_numpy()], schema=DECISION_SCHEMA, preserve_index=False
            )
            target = log / f"date={day}"
            target.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, target / f"part-{day}-bench-{part:06d}.parquet")
    return reference, log


def run_command(folder: Path, reference: Path, log: Path) -> tuple[float, str, str, int]:
    """Run ``nba drift`` as an operator would; (wall seconds, stdout, stderr, exit code)."""
    env = {
        **os.environ,
        "OMP_WAIT_POLICY": "PASSIVE",
        "NBA_MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
        "NBA_MLFLOW_ARTIFACT_LOCATION": str(folder / "artifacts"),
        "NBA_DRIFT_REPORT_DIR": str(folder / "reports"),
        "NBA_EVIDENTLY_WORKSPACE": str(folder / "workspace"),
        "COLUMNS": "200",
    }
    args = ["drift", "--log-dir", str(log), "--reference", str(reference),
            "--start", (END - WEEK).isoformat(), "--end", END.isoformat()]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "nba.cli", *args], capture_output=True, text=True, env=env
    )
    return time.perf_counter() - started, done.stdout, done.stderr, done.returncode


def screenshot(html: Path, png: Path) -> str:
    """Headless Chromium screenshot of the report; returns a status line."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        return "chromium not installed (apt-get install -y chromium): no screenshot"
    with tempfile.TemporaryDirectory(prefix="nba-chromium-") as profile:
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", f"--screenshot={png}",
             "--window-size=1400,1800", "--virtual-time-budget=20000", html.as_uri()],
            capture_output=True, timeout=180, check=False,
        )  # fmt: skip
    if not png.is_file() or png.stat().st_size < 20_000:
        return f"screenshot failed ({png})"
    return f"screenshot {png} ({png.stat().st_size // 1024} KB)"


def drifted_first(html: Path, summary: dict) -> bool:
    """Whether the report's feature table lists exactly the drifted features first."""
    names = re.findall(r'"column_name": *"([A-Za-z0-9_]+)"', html.read_text())
    scored = [c for c in summary["features"]["columns"] if c["score"] is not None]
    drifted = {c["column"] for c in scored if c["drifted"]}
    return bool(drifted) and set(names[: len(drifted)]) == drifted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--reference-rows", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nba-drift-bench-") as tmp:
        folder = Path(tmp)
        with console.status("building the reference and the decision log…"):
            t0 = time.perf_counter()
            reference, log = build_inputs(folder, args.rows, args.reference_rows, args.seed)
        size = sum(f.stat().st_size for f in log.rglob("*.parquet")) / 1e6
        console.print(f"[green]✓[/] inputs ({time.perf_counter() - t0:.0f} s): "
                      f"{args.rows:,} decisions in {size:.0f} MB of Parquet")  # fmt: skip
        with console.status("nba drift…"):
            wall, _, stderr, code = run_command(folder, reference, log)
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        stages = re.findall(r"✓ (.+?) \((\d+\.\d) s\)", re.sub(r"\s*\n\s*", " ", stderr))
        reports = sorted((folder / "reports").glob("drift-*.html"))
        if code not in (0, 3) or not reports:
            console.print(stderr)
            raise SystemExit(f"nba drift failed with exit code {code}")
        html = reports[0]
        summary = json.loads(html.with_suffix(".json").read_text())
        kept = args.out / "drift_report.html"
        shutil.copy(html, kept)
        shot = screenshot(kept, args.out / "drift_report.png")
        first = drifted_first(kept, summary)

    table = Table(title=f"nba drift: {args.rows:,} decisions vs {args.reference_rows:,} reference "
                        f"rows, {os.cpu_count()} cores")  # fmt: skip
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for label, seconds in stages:
        table.add_row(re.sub(r" \[.*?\) of \S+", "", label)[:70], seconds)
    table.add_row("[bold]command wall time (incl. imports)[/]", f"[bold]{wall:.1f}[/]")
    table.add_row("peak RSS of the command (MB)", f"{peak_mb:,.0f}")
    table.add_row("exit code", str(code))
    table.add_row("drifted features", f"{summary['features']['drifted']} of "
                  f"{summary['features']['compared']}")  # fmt: skip
    table.add_row("report lists drifted features first", "yes" if first else "NO")
    Console(width=120).print(table)
    console.print(shot)
    console.print(f"report kept at {kept}")
    if wall > 60 or not first:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
