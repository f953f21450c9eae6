"""``nba impact``'s HTML report: one page a marketer reads without help.

A headline sentence (what the decisions earned per decision and in total, and how sure we are),
then four charts with a sentence each: treated against control, the effect per action, per week
(does it fade?) and by the number of recent contacts (fatigue). Matplotlib PNGs embedded in
the page (no network, one file to mail).
"""

from __future__ import annotations

import base64
import html
import io
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from monitoring.impact import MIN_CONTROL_CUSTOMERS, Estimate, Impact

_GREEN, _GREY, _RED = "#2a9d8f", "#8d99ae", "#e76f51"
_ACTION_NAMES = {"promo": "Promo", "apology_credit": "Apology credit", "recognition": "Recognition"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _money(value: float) -> str:
    if not np.isfinite(value):
        return "n/a"
    sign = "−" if value < 0 else ""
    return f"{sign}{abs(value):,.2f}"


def _day(stamp: str) -> str:
    """``2026-08-06T21:49:49+00:00`` as ``6 Aug 2026`` (empty stays empty)."""
    if not stamp:
        return ""
    day = datetime.fromisoformat(stamp)
    return html.escape(f"{day.day} {day:%b %Y}")


def _verdict(e: Estimate) -> str:
    if not np.isfinite(e.ci_low) or e.few:
        return f"too few control-group customers ({e.control_customers}) to tell"
    if e.ci_low > 0:
        return "a gain (the whole 95% interval is above zero)"
    if e.ci_high < 0:
        return "a loss (the whole 95% interval is below zero)"
    return "not distinguishable from zero yet (the 95% interval includes zero)"


def _short(e: Estimate) -> str:
    """``_verdict`` in a table cell's words."""
    if not np.isfinite(e.ci_low) or e.few:
        return "too few to tell"
    return "a gain" if e.ci_low > 0 else "a loss" if e.ci_high < 0 else "not sure yet"


def _bars(labels: list[str], estimates: list[Estimate], title: str, xlabel: str) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 0.6 + 0.55 * max(len(labels), 1)))
    y = np.arange(len(labels))
    mid = np.array([e.estimate for e in estimates])
    lo = np.array([e.ci_low for e in estimates])
    hi = np.array([e.ci_high for e in estimates])
    colors = [
        _GREY if e.few else _GREEN if a > 0 else _RED if b < 0 else _GREY
        for e, a, b in zip(estimates, lo, hi, strict=True)
    ]
    labels = [f"{label}\n(too few to tell)" if e.few else label
              for label, e in zip(labels, estimates, strict=True)]  # fmt: skip
    ax.barh(y, mid, color=colors, height=0.55)
    ax.errorbar(mid, y, xerr=[mid - lo, hi - mid], fmt="none", ecolor="black", capsize=4, lw=1)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def _weekly(impact: Impact) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    weeks = [w for w, _ in impact.by_week]
    est = [e for _, e in impact.by_week]
    x = np.arange(len(weeks))
    mid = np.array([e.estimate for e in est])
    ax.fill_between(x, [e.ci_low for e in est], [e.ci_high for e in est], color=_GREEN,
                    alpha=0.2, label="95% interval")  # fmt: skip
    ax.plot(x, mid, marker="o", color=_GREEN, label="incremental value per decision")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, [f"week of {w}" for w in weeks], rotation=30, ha="right")
    ax.set_ylabel("per decision")
    ax.set_title("Does the effect fade? Incremental value per decision, week by week")
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    return _png(fig)


def _arms(impact: Impact) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 2.4))
    values = [impact.control_adjusted, impact.treated_adjusted]
    ax.barh([0, 1], values, color=[_GREY, _GREEN], height=0.55)
    ax.set_yticks([0, 1], ["control group\n(no marketing)", "customers we decided for"])
    for i, v in enumerate(values):
        ax.text(v, i, f"  {_money(v)}", va="center")
    ax.set_xlabel(
        "average net value per decision (revenue − costs − unsubscribes), "
        "adjusted for past spending"
    )
    ax.set_title("What a decision was worth, with and without nba")
    ax.set_xlim(0, max(max(values), 1.0) * 1.25)
    return _png(fig)


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:900px;margin:2em auto;
color:#1d3557;line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} .sub{color:#555;margin-top:0}
.headline{font-size:1.25em;background:#f1faee;border-left:6px solid #2a9d8f;padding:.8em 1em}
.kpis{display:flex;gap:1em;margin:1em 0} .kpi{flex:1;background:#f8f9fa;padding:.7em 1em;
border-radius:6px} .kpi b{display:block;font-size:1.4em} img{max-width:100%}
table{border-collapse:collapse;margin:.5em 0} td,th{padding:.25em .8em;border-bottom:1px solid #ddd;
text-align:right} th:first-child,td:first-child{text-align:left} .note{color:#555;font-size:.9em}
"""


def render(impact: Impact, currency: str = "") -> str:
    """The report as one HTML page."""
    o, total = impact.overall, impact.total
    unit = f" {currency}" if currency else ""
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(_ACTION_NAMES.get(a, a))}</td><td>{e.treated:,}</td><td>{e.control:,}</td>"
        f"<td>{_money(e.estimate)}</td><td>{_money(e.ci_low)} to {_money(e.ci_high)}</td>"
        f"<td>{_short(e)}</td></tr>"
        for a, e in impact.by_action.items()
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>nba impact</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Does next-best-action pay?</h1>",
        f"<p class='sub'>Decisions from {_day(impact.start)} to {_day(impact.end)}, outcomes "
        f"over the {impact.horizon_days} days after each, against the global control group.</p>",
        f"<p class='headline'>Each decision earned <b>{_money(abs(o.estimate))}{unit}</b> "
        f"{'more' if o.estimate >= 0 else 'less'} net value than doing nothing (95% interval "
        f"{_money(o.ci_low)} to {_money(o.ci_high)}): "
        f"{_verdict(o)}. Over the {impact.decisions:,} decisions of the period that is "
        f"<b>{_money(total.estimate)}{unit}</b> (from {_money(total.ci_low)} to "
        f"{_money(total.ci_high)}).</p>",
        "<div class='kpis'>",
        f"<div class='kpi'>decisions<b>{impact.decisions:,}</b></div>",
        f"<div class='kpi'>control group<b>{impact.holdout_decisions:,}</b></div>",
        f"<div class='kpi'>per decision<b>{_money(o.estimate)}{unit}</b></div>",
        f"<div class='kpi'>in total<b>{_money(total.estimate)}{unit}</b></div>",
        "</div>",
        "<h2>With and without nba</h2>",
        "<p>The control group is a fixed random share of customers who never get a marketing "
        "action. Comparing what a decision was worth for them and for everyone else shows what "
        "the decisions add. Net value is revenue minus the actions' costs and the value lost "
        "when a customer unsubscribes. Both averages are adjusted for what the customers spent "
        "before (by chance one group may hold more frequent travellers): the gap between the "
        "bars is the headline figure.</p>",
        f"<img alt='treated against control' src='data:image/png;base64,{_arms(impact)}'>",
    ]
    if impact.by_action:
        labels = [_ACTION_NAMES.get(a, a) for a in impact.by_action]
        parts += [
            "<h2>Which actions pay</h2>",
            "<p>For each action, the customers who got it are compared with control-group "
            "customers for whom nba <i>would have chosen</i> the same action. A green bar is a "
            "sure gain, red a sure loss, grey: not sure yet. The black line is the 95% "
            "interval.</p>",
            "<img alt='per action' src='data:image/png;base64,"
            + _bars(
                labels,
                list(impact.by_action.values()),
                "Incremental net value per decision, by action",
                f"per decision{unit}",
            )
            + "'>",
            "<table><tr><th>action</th><th>decisions</th><th>control</th><th>per decision</th>"
            f"<th>95% interval</th><th>verdict</th></tr>{rows}</table>",
            f"<p class='note'>A slice with fewer than {MIN_CONTROL_CUSTOMERS} control-group "
            "customers is marked <i>too few to tell</i>: its interval cannot be trusted.</p>",
        ]
    if impact.by_week:
        parts += [
            "<h2>Week by week</h2>",
            "<p>A line that drifts down means the effect fades (customers get used to offers, "
            "or the model ages): retrain, or review the offers.</p>",
            f"<img alt='per week' src='data:image/png;base64,{_weekly(impact)}'>",
        ]
    if impact.by_contacts:
        parts += [
            "<h2>Fatigue: does contacting more often still help?</h2>",
            "<p>Decisions grouped by how many actions nba meant to give the same customer in "
            "the 30 days before. If the bars shrink to the right, frequent contacts are worth "
            "less: consider a stricter frequency cap.</p>",
            "<img alt='fatigue' src='data:image/png;base64,"
            + _bars(
                [
                    f"{label} contact{'' if label == '1' else 's'}"
                    for label, _ in impact.by_contacts
                ],
                [e for _, e in impact.by_contacts],
                "Incremental net value per decision, by recent contacts",
                f"per decision{unit}",
            )
            + "'>",
        ]
    parts += [
        "<h2>How this is measured</h2>",
        "<p class='note'>Difference in mean net value per decision between the customers nba "
        "decided for and the control group (chosen at random by a hash of the customer id), "
        "adjusted for each customer's revenue in the same number of days before the decision "
        "(CUPED: same expected result, narrower interval), with intervals that account for "
        "several decisions of one customer. A booking within the horizon of several decisions "
        "counts for each of them, so the total is the sum over decisions.</p>",
        "</body></html>",
    ]
    return "\n".join(parts)


def write(impact: Impact, path: Path, currency: str = "") -> Path:
    """Write the report to ``path`` (folders created); returns it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(impact, currency), encoding="utf-8")
    return path
