"""The champion gate's rule and its compare-and-set, free of MLflow (``Tracker.gate`` wires it).

Why a compare-and-set
---------------------
``nba train`` measures the champion's policy value on the candidate's held-out decisions long
before it promotes (training takes minutes). Two trainings running at once used to compare
with the champion read at their start: v5 replaced champion v4 while its record compared it
with v1's value. Now the candidate is compared with the champion it actually replaces, read at
the moment of promotion:

1. Under a lock shared by every process of the host (``champion_lock``), the champion alias is
   read again. If it is not the version the caller measured, that champion is evaluated on the
   candidate's data (the caller's ``value_of``), under the lock.
2. The rule (``decide``) runs on that pair; when it promotes, the alias is read once more just
   before it is moved, and the comparison starts over if it moved (see "residual window").
3. The record names that champion and its value (``Tracker.gate`` writes the ``gate.*`` tags).

Residual window
---------------
The lock is a file (``filelock``): beside the SQLite store of the embedded profile, it
serializes every gate of that store. With a tracking server (``http://...``) the lock file is
per host (in the temporary folder, named after the server's URI): gates on one host are
serialized, but MLflow has no conditional alias update, so a gate on ANOTHER host can still
move the alias between our last read and our ``set_registered_model_alias`` (one request, a
few milliseconds). The re-read in step 2 narrows the window to that request; it cannot close
it. Run the trainings of one registry from one host (one scheduler) to rule it out.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: How long a gate waits for another process's gate on the same store before giving up. A gate
#: holds the lock while it loads and evaluates one champion model (seconds).
LOCK_TIMEOUT_S: Final = 300.0
#: How many times the comparison starts over when the champion moves under it (another host).
MAX_ATTEMPTS: Final = 5
#: Suffix of the lock file beside a SQLite store (``mlflow.db`` -> ``mlflow.db.gate.lock``).
LOCK_SUFFIX: Final = ".gate.lock"


@dataclass(frozen=True)
class BaselineCheck:
    """The candidate's doubly-robust gain over a baseline policy: per decision, with the lower
    end of its interval (paired, clustered by customer; ``level`` names the interval)."""

    baseline: str
    gain: float
    lower: float
    level: str = "95%"


def baseline_refusal(checks: tuple[BaselineCheck, ...]) -> str | None:
    """Why the candidate may not be promoted over the baselines, or None when it may.

    A candidate must beat doing nothing and the rule policy beyond noise (each lower bound
    above 0): a policy no better than the rules a brand already runs is not worth a change."""
    for check in checks:
        if not (math.isfinite(check.lower) and check.lower > 0):
            return (
                f"not better than {check.baseline} beyond noise: gain {check.gain:+.2f} a "
                f"decision, {check.level} lower bound {check.lower:+.2f} <= 0"
            )
    return None


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided for a candidate version, and why.

    ``champion_version`` and ``champion_value`` are the champion read at the moment of
    promotion and its value on the candidate's data: the one the candidate was compared with.
    """

    promoted: bool
    reason: str
    candidate_value: float
    champion_value: float | None
    champion_version: int | None
    forced: bool


def lock_path(tracking_uri: str) -> Path:
    """The lock file of a store: beside a ``sqlite:///`` database, else per URI in the temp dir."""
    prefix = "sqlite:///"
    if tracking_uri.startswith(prefix) and ":memory:" not in tracking_uri:
        database = Path(tracking_uri[len(prefix) :].split("?", 1)[0])
        return database.with_name(database.name + LOCK_SUFFIX)
    digest = hashlib.sha256(tracking_uri.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"nba-gate-{digest}{LOCK_SUFFIX}"


@contextlib.contextmanager
def champion_lock(tracking_uri: str, timeout: float = LOCK_TIMEOUT_S) -> Iterator[Path]:
    """Hold the gate's cross-process lock of ``tracking_uri``; yields the lock file's path.

    Raises ``TimeoutError`` naming the lock file when another gate holds it past ``timeout``.
    """
    from filelock import FileLock, Timeout

    path = lock_path(tracking_uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    # thread_local=False: the lock belongs to this object, whichever thread releases it.
    lock = FileLock(path, timeout=timeout, thread_local=False)
    try:
        lock.acquire()
    except Timeout as error:
        raise TimeoutError(
            f"another `nba train` has held the champion gate's lock {path} for more than "
            f"{timeout:.0f} s; if no training is running, delete that file"
        ) from error
    try:
        yield path
    finally:
        lock.release()


def compare_and_promote(
    version: int,
    candidate_value: float,
    *,
    measured: tuple[int | None, float | None],
    read_champion: Callable[[], int | None],
    value_of: Callable[[int], float] | None,
    promote: Callable[[int], None],
    force: bool = False,
    min_improvement: float = 0.0,
    on_read: Callable[[int | None], None] | None = None,
    baselines: tuple[BaselineCheck, ...] = (),
) -> GateDecision:
    """Compare ``version`` with the champion of the moment and promote it if the rule says so.

    Call it under ``champion_lock``. ``measured`` is ``(champion version, its value)`` as the
    caller evaluated them earlier (``(None, None)``: there was no champion); when the champion
    read now differs, ``value_of(current)`` evaluates it on the candidate's data (once per
    version). ``promote(version)`` moves the
    alias. ``on_read`` is called with each champion read, before anything is decided: tests
    inject a pause there to make a race certain. ``baselines``: the candidate's gains over
    the baseline policies (``decide``).

    Raises ``ValueError`` when the champion moved, the gate is not forced and there is no
    ``value_of`` to evaluate the new one with; ``RuntimeError`` when it kept moving.
    """
    known: dict[int | None, float | None] = {measured[0]: measured[1]}
    for _attempt in range(MAX_ATTEMPTS):
        current = read_champion()
        if on_read is not None:
            on_read(current)
        value = _value_of(current, known, value_of, force)
        promoted, reason = decide(
            version, candidate_value, value, current, force, min_improvement, baselines
        )
        if promoted and current != version:
            # Narrows the window for a gate that takes no lock (another host): see the module
            # docstring. On one host the lock already excludes any move.
            if read_champion() != current:
                continue
            promote(version)
        return GateDecision(
            promoted=promoted,
            reason=reason,
            candidate_value=float(candidate_value),
            champion_value=value,
            champion_version=current,
            forced=force,
        )
    raise RuntimeError(
        f"the champion kept moving while version {version} was gated ({MAX_ATTEMPTS} attempts): "
        "another training is promoting at the same time; retry later"
    )


def _value_of(
    current: int | None,
    known: dict[int | None, float | None],
    value_of: Callable[[int], float] | None,
    force: bool,
) -> float | None:
    """The value of champion ``current`` on the candidate's data, evaluated once per version."""
    if current is None:
        return None
    if current in known:
        return known[current]
    if value_of is None:
        if force:
            return None  # forced: the value is only informative
        measured = ", ".join(f"v{v}" for v in known if v is not None) or "no champion"
        raise ValueError(
            f"the champion moved (measured against {measured}, now v{current}) and there is "
            "no value_of to evaluate the new champion with"
        )
    try:
        value: float | None = float(value_of(current))
    except Exception:
        if not force:
            raise
        value = None  # forced past an unusable champion: the way out (see the pipeline)
    known[current] = value
    return value


def decide(
    version: int,
    candidate: float,
    champion_value: float | None,
    champion_version: int | None,
    force: bool,
    min_improvement: float,
    baselines: tuple[BaselineCheck, ...] = (),
) -> tuple[bool, str]:
    """The gate's rule: ``(promoted, reason)``.

    Promotes when ``force``; otherwise never when there is no champion yet (the first model
    needs an explicit ``--force``), nor when a ``baselines`` check fails (its gain's lower
    bound is not above 0: the champion, or the rules where it serves them, stays), else when
    ``candidate > champion_value + min_improvement``.
    """
    if champion_version is None:
        if force:
            return True, "forced: no champion yet, this version becomes the first champion"
        return False, (
            "no champion yet: the first model is promoted only with --force; check its "
            "evaluation, then run `nba train --force`"
        )
    if force:
        return True, (
            f"forced: replaces champion v{champion_version} regardless of value "
            f"(candidate {candidate:.6g}, champion {_fmt(champion_value)})"
        )
    if champion_version == version:
        return True, f"v{version} is already the champion"
    refusal = baseline_refusal(baselines)
    if refusal is not None:
        return False, f"{refusal}; champion v{champion_version} kept"
    if champion_value is None:
        raise ValueError(
            f"champion v{champion_version} exists but champion_value is None: evaluate it on the "
            "same data as the candidate, or pass force=True"
        )
    if not math.isfinite(candidate):
        return (
            False,
            f"candidate value {candidate} is not finite; champion v{champion_version} kept",
        )
    threshold = champion_value + min_improvement
    if candidate > threshold:
        return True, (
            f"candidate {candidate:.6g} > champion v{champion_version} {champion_value:.6g} "
            f"+ min_improvement {min_improvement:.6g}"
        )
    return False, (
        f"candidate {candidate:.6g} <= champion v{champion_version} {champion_value:.6g} "
        f"+ min_improvement {min_improvement:.6g}; champion kept"
    )


def _fmt(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.6g}"


__all__ = [
    "LOCK_TIMEOUT_S",
    "BaselineCheck",
    "GateDecision",
    "baseline_refusal",
    "champion_lock",
    "compare_and_promote",
    "decide",
    "lock_path",
]
