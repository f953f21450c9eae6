"""What a command prints: its own stage lines and summary on the terminal, everything else in a
log file.

Feast prints its protobuf diffs and coloured materialization lines, MLflow logs INFO lines and
SQLAlchemy deprecation warnings, the libraries' progress bars go to stderr: none of that is the
user's business on a daily cron job. ``capture`` therefore keeps the streams in effect when the
command starts for the project's own consoles (``err``, ``out``), and points ``sys.stdout``,
``sys.stderr``, Python warnings and the root logger at ``<workspace>/logs/nba.log`` for the rest
of the command, with ANSI colour codes stripped. ``--verbose`` leaves the libraries' output on
the terminal instead. Rich writes colour only to a terminal, so a log or a pipe gets plain text.
"""

from __future__ import annotations

import io
import logging
import re
import sys
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
#: The streams the project's own output goes to while a capture is on (the terminal's, or a
#: test runner's); None: whatever ``sys.stdout`` / ``sys.stderr`` are at the time of writing.
_TERMINAL: dict[str, TextIO | None] = {"out": None, "err": None}


def _stream(name: str) -> TextIO:
    bound = _TERMINAL[name]
    if bound is not None:
        return bound
    return sys.stdout if name == "out" else sys.stderr


class _Streamed(io.TextIOBase):
    """A text stream that forwards to whichever terminal stream is current (``_TERMINAL``)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def write(self, text: str) -> int:
        return _stream(self._name).write(text)

    def flush(self) -> None:
        _stream(self._name).flush()

    def isatty(self) -> bool:
        return bool(getattr(_stream(self._name), "isatty", lambda: False)())

    def fileno(self) -> int:
        return _stream(self._name).fileno()


#: Progress and messages (stderr) and results (stdout) of the commands.
err = Console(file=_Streamed("err"), soft_wrap=True)  # type: ignore[arg-type]
out = Console(file=_Streamed("out"), soft_wrap=True)  # type: ignore[arg-type]


def wide() -> Console:
    """A results console wide enough for the tables whatever the terminal (CI logs have none)."""
    return Console(file=_Streamed("out"), width=max(out.width, 160))  # type: ignore[arg-type]


class _LogFile(io.TextIOBase):
    """Appends to a file opened on the first write (a quiet command leaves no empty log), with
    ANSI codes stripped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: TextIO | None = None

    def write(self, text: str) -> int:
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (process-long)
            # Which command the lines below came from.
            command = " ".join(["nba", *sys.argv[1:]])
            self._handle.write(f"--- {datetime.now(UTC).isoformat(timespec='seconds')} {command}\n")
        self._handle.write(_ANSI.sub("", text))
        self._handle.flush()
        return len(text)

    def isatty(self) -> bool:
        return False

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.flush()

    def close_file(self) -> None:
        """Close the file (a later write reopens it)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def capture(log_file: Path, verbose: bool = False) -> Callable[[], None]:
    """Send the libraries' output to ``log_file`` from now on (see the module docstring).

    The streams in effect now stay the project's own (``err``, ``out``). With ``verbose`` only
    that binding happens and the libraries keep the terminal. Returns the function that undoes
    it (the CLI calls it when the command ends: tests run many commands in one process).
    """
    saved_streams = (sys.stdout, sys.stderr)
    saved_terminal = dict(_TERMINAL)
    _TERMINAL["out"], _TERMINAL["err"] = saved_streams
    if verbose:
        return lambda: _TERMINAL.update(saved_terminal)
    root = logging.getLogger()
    saved_logging = (list(root.handlers), root.level)
    filters = warnings.catch_warnings()
    filters.__enter__()
    log = _LogFile(log_file)
    sys.stdout = log
    sys.stderr = log
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    warnings.simplefilter("default")

    def restore() -> None:
        logging.captureWarnings(False)
        filters.__exit__(None, None, None)
        root.handlers[:], level = saved_logging
        root.setLevel(level)
        sys.stdout, sys.stderr = saved_streams
        _TERMINAL.update(saved_terminal)
        log.close_file()

    return restore


class Stages:
    """A progress bar over the named stages of a command, with each stage's duration.

    Stages are few, so the bar advances per stage, with a spinner and the elapsed time while one
    runs; each closed stage stays on screen with its duration.
    """

    def __init__(self, title: str, total: int) -> None:
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        )
        self._title = title
        self._total = total
        self._task: TaskID | None = None
        self._started = time.perf_counter()
        self._label: str | None = None

    def __enter__(self) -> Stages:
        self._progress.start()
        self._task = self._progress.add_task(self._title, total=self._total)
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self._finish_current()
        self._progress.stop()

    def _finish_current(self) -> None:
        if self._label is not None and self._task is not None:
            elapsed = time.perf_counter() - self._started
            self._progress.console.print(f"[green]✓[/] {self._label} [dim]({elapsed:.1f} s)[/]")
            self._progress.advance(self._task)
        self._label = None

    def __call__(self, label: str) -> None:
        """Start the next stage (and close the previous one)."""
        self._finish_current()
        self._label = label
        self._started = time.perf_counter()
        if self._task is not None:
            self._progress.update(self._task, description=f"{self._title}: {label}")

    def done(self, label: str) -> None:
        """Close the current stage under a final label (e.g. with a count learned meanwhile)."""
        self._label = label
        self._finish_current()
