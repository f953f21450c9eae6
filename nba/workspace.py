"""Workspaces: the folder a command works in, never the folder the package is installed in.

A workspace is a folder with a settings file, ``nba.yaml``, at its top (the marker, like
``.git`` or ``dbt_project.yml``). ``nba init DIR`` creates one::

    DIR/
      nba.yaml          settings (any NBA_* setting, by field name; relative paths are
                        relative to DIR); environment variables win over it
      guardrails.yaml   the guardrail rules (serving/guardrails.py)
      triggers.yaml     the event triggers (serving/triggers.py)
      rules.yaml        the rule policy: segment -> action (features/rule_policy.py)
      feature_repo/     the Feast repository: declarations, feature_store*.yaml, data/
      data/             raw tables (``nba simulate --out data/raw``)
      models/           the embedded MLflow store (mlflow.db, artifacts/) and the exported
                        model the service serves (serving/)
      logs/             decision and event logs, promo history, apology budget
      reports/          drift reports

Which workspace a command uses: ``--workspace DIR``, else ``NBA_HOME``, else the nearest folder
holding ``nba.yaml`` from the current directory upwards, else the current directory itself
(whose missing parts are created on first use). The repository is a workspace too: its
``nba.yaml`` points at the shipped ``serving/guardrails.yaml``, ``serving/triggers.yaml`` and
``serving/rules.yaml``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Final

#: The settings file that marks a workspace.
MARKER: Final = "nba.yaml"
#: Folders every workspace has.
FOLDERS: Final = ("data", "models", "logs", "reports")
#: Files of the Feast repository template (package ``feature_repo``); ``data/`` is created empty.
FEATURE_REPO_FILES: Final = (
    "definitions.py",
    "feature_store.yaml",
    "feature_store.redis.yaml",
    "feature_store.production.yaml",
    "README.md",
    ".feastignore",
)

SETTINGS_TEMPLATE: Final = """\
# Settings of this nba workspace. Any setting can be given here by its name (the environment
# variable without NBA_, lower case); environment variables win over this file. Relative paths
# are relative to this folder. Reference: docs/cli.md (settings) in the nba repository.
profile: embedded          # embedded: SQLite + local MLflow store; production: Redis, PostgreSQL
guardrails: guardrails.yaml
triggers: triggers.yaml
rule_policy: rules.yaml
feature_repo: feature_repo
# api_keys: [change-me]     # clients send one in the X-API-Key header (or NBA_API_KEYS)
"""


class WorkspaceError(ValueError):
    """A workspace cannot be created or found as asked."""


def find(start: Path) -> Path | None:
    """The nearest folder from ``start`` upwards that holds ``nba.yaml``, or None."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if (folder / MARKER).is_file():
            return folder
    return None


def locate(explicit: Path | str | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """The workspace of a command (see the module docstring for the order), absolute."""
    environ = os.environ if environ is None else environ
    if explicit is not None and str(explicit):
        return Path(explicit).expanduser().resolve()
    home = environ.get("NBA_HOME")
    if home:
        return Path(home).expanduser().resolve()
    cwd = Path.cwd()
    return find(cwd) or cwd.resolve()


def _template(package: str, name: str) -> bytes:
    """A file shipped in one of the project's packages (works from a wheel and a checkout)."""
    return resources.files(package).joinpath(name).read_bytes()


def materialize(root: Path, overwrite: bool = False) -> list[Path]:
    """Create the parts of a workspace that ``root`` lacks; returns what was written.

    Existing files are kept unless ``overwrite`` (a brand's edited guardrails must survive).
    """
    written: list[Path] = []

    def put(path: Path, content: bytes) -> None:
        if path.exists() and not overwrite:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        written.append(path)

    root.mkdir(parents=True, exist_ok=True)
    put(root / MARKER, SETTINGS_TEMPLATE.encode())
    put(root / "guardrails.yaml", _template("serving", "guardrails.yaml"))
    put(root / "triggers.yaml", _template("serving", "triggers.yaml"))
    put(root / "rules.yaml", _template("serving", "rules.yaml"))
    repo = root / "feature_repo"
    for name in FEATURE_REPO_FILES:
        put(repo / name, _template("feature_repo", name))
    for folder in (repo / "data", *(root / name for name in FOLDERS)):
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            written.append(folder)
    return written


def init(directory: Path, force: bool = False) -> list[Path]:
    """``nba init DIR``: a new workspace in ``directory`` (created if missing).

    Refuses a folder that is already a workspace unless ``force`` (which rewrites the template
    files, keeping data, models and logs).
    """
    root = directory.expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise WorkspaceError(f"{directory} exists and is not a folder")
    if (root / MARKER).exists() and not force:
        raise WorkspaceError(
            f"{root} is already an nba workspace ({MARKER} exists): use --force to rewrite its "
            "template files"
        )
    return materialize(root, overwrite=force)


__all__ = [
    "FOLDERS",
    "MARKER",
    "WorkspaceError",
    "find",
    "init",
    "locate",
    "materialize",
]
