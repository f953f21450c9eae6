"""Write or check ``requirements.lock``: the exact versions every install of the project uses.

The lock is a pip constraints file produced by pip's own resolver: ``pip install --dry-run
--ignore-installed --report`` resolves ``nba[dev,production]`` plus the installer's own tools
(pip, setuptools, wheel) without installing anything, and every distribution of the answer is
written as ``name==version``. ``make demo``, ``make test`` (so ``.ci/run``), and the Dockerfile
all install with ``--constraint requirements.lock``: a fresh clone installs exactly these
versions, whatever was released upstream since. A constraints file rather than uv's lock because
pip is what a fresh Python 3.11 has; nothing else needs bootstrapping.

The resolution is for the interpreter and platform that run this script (CPython 3.11 on Linux
x86_64: this project's CI, developer machines and image). Upgrading is deliberate:

    make lock                                  # resolve the newest allowed versions, rewrite the
                                               # lock, rebuild .venv from it and run the tests
    python tools/lock.py --check               # exit 1 unless the lock satisfies pyproject.toml
    python tools/lock.py --check-installed     # exit 1 unless this environment is the lock

``--keep FILE`` resolves with an older lock as an extra constraint (keeps its versions where
they still satisfy ``pyproject.toml``; used to add a package without upgrading the others).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
#: The extras every developer and CI environment has (the image takes ``production`` only).
EXTRAS = ("dev", "production")
#: The installer's own tools, pinned too: the Makefile installs them first, and the project
#: itself is then built without build isolation (no unpinned setuptools fetched for the build).
TOOLS = ("pip", "setuptools", "wheel")
HEADER = """\
# The lock: exact versions of nba[dev,production] and of pip/setuptools/wheel, resolved by pip
# for CPython 3.11 on Linux x86_64. Written by `python tools/lock.py` (make lock); do not edit.
# Used as a constraints file everywhere: make demo, make test (.ci/run) and the Dockerfile.
"""


def canonical(name: str) -> str:
    """PEP 503 normalized distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """``{canonical name: version}`` of a lock file."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonical(name)] = version.strip()
    return pins


def render(pins: dict[str, str]) -> str:
    """The lock's text: the header, then ``name==version`` sorted by name."""
    return HEADER + "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))


def resolve(keep: Path | None = None) -> dict[str, str]:
    """Ask pip's resolver what ``nba[dev,production]`` and the tools resolve to today."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
                   "--quiet", "--report", str(report), *TOOLS,
                   f"{ROOT}[{','.join(EXTRAS)}]"]  # fmt: skip
        if keep is not None:
            command += ["--constraint", str(keep)]
        subprocess.run(command, check=True)
        resolved = json.loads(report.read_text())["install"]
    pins = {canonical(item["metadata"]["name"]): item["metadata"]["version"] for item in resolved}
    pins.pop("nba", None)  # the project itself is installed from its folder
    return pins


def requirements(extras: tuple[str, ...] = EXTRAS) -> list[Requirement]:
    """The project's requirements with ``extras``, read from ``pyproject.toml``."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project.get("optional-dependencies", {})
    lines = [*project["dependencies"], *(line for extra in extras for line in optional[extra])]
    return [Requirement(line) for line in lines]


def unsatisfied(pins: dict[str, str]) -> list[str]:
    """The project's requirements that the lock misses or pins outside their range."""
    problems = []
    for requirement in requirements():
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        version = pins.get(canonical(requirement.name))
        if version is None:
            problems.append(f"{requirement.name} is not in the lock")
        elif not requirement.specifier.contains(Version(version), prereleases=True):
            problems.append(f"{requirement.name}=={version} is outside {requirement}")
    return problems


def installed_mismatches(pins: dict[str, str]) -> list[str]:
    """Distributions of this environment that differ from the lock (or are not in it)."""
    problems = []
    for dist in metadata.distributions():
        name = canonical(dist.metadata["Name"])
        if name == "nba":
            continue
        if name not in pins:
            problems.append(f"{name}=={dist.version} is installed but not locked")
        elif pins[name] != dist.version:
            problems.append(f"{name}=={dist.version} is installed, the lock says {pins[name]}")
    return sorted(set(problems))


def main() -> int:
    """Rewrite the lock (default) or check it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true", help="the lock satisfies pyproject.toml")
    group.add_argument("--check-installed", action="store_true",
                       help="this environment has exactly the locked versions")  # fmt: skip
    parser.add_argument("--keep", type=Path, help="resolve with this older lock as constraint")
    args = parser.parse_args()
    if args.check or args.check_installed:
        pins = read_lock()
        problems = unsatisfied(pins) if args.check else installed_mismatches(pins)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("run `make lock` (or `make test` for a fresh environment)", file=sys.stderr)
        return 1 if problems else 0
    pins = resolve(args.keep)
    LOCK.write_text(render(pins))
    print(f"wrote {LOCK.relative_to(ROOT)} ({len(pins)} pins)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
