"""The one adapter over MLflow: runs, artifacts, the uplift model, its registry and the gate.

Everything else in the project talks to MLflow through :class:`Tracker`, so the MLflow API (and
its traps, below) is confined to this module. ``import mlflow`` costs seconds, so it happens
lazily inside the methods: importing this module is cheap, and the serving process (which only
needs ``load``) pays for MLflow only when it loads a model.

Lifecycle of a model version, recorded in its ``nba.status`` tag
----------------------------------------------------------------
``pending``
    Set atomically when :meth:`Tracker.register` creates the version: registered, not yet gated.
``gated``
    Set by :meth:`Tracker.gate` once the decision is recorded (promoted or not): the version went
    through the whole pipeline and may be loaded.
``failed``
    Set when the run that registered the version raised before gating it (see below).

"No half-registered model": if anything raises inside ``with tracker.start_run()`` after
``log_model``, MLflow marks the run ``FAILED`` and every version registered from that run that
has not been gated is tagged ``nba.status=failed`` (plus ``nba.failure``, the error). We tag
rather than delete: the version and its run stay inspectable for the post-mortem, version numbers
are not silently skipped, and a process killed outright (no ``except`` runs) still leaves an
unusable ``pending`` version rather than a usable one. ``gate`` refuses a ``failed`` version and
``load`` refuses to load one, so the champion alias can never be moved to it by this module.

The gate is a compare-and-set (``training.gate``): under a cross-process lock, the candidate is
compared with the champion it would replace at that moment (re-evaluated on the candidate's data
when another training moved the alias), and its ``gate.champion_*`` tags name that champion.

MLflow 3.17 traps handled here
------------------------------
* ``mlflow.sklearn`` serializes with skops by default, which cannot store ``MultiActionUplift``
  (dicts keyed by tuples of LightGBM boosters): we pass ``serialization_format="cloudpickle"``.
  Cloudpickle stores importable classes by reference, so ``training.uplift`` must be importable
  wherever the model is loaded (it is: the ``nba`` package ships it).
* ``search_model_versions`` returns versions with empty ``aliases`` on the SQL store; aliases are
  read from the registered model instead.
* A missing alias raises ``INVALID_PARAMETER_VALUE`` (not ``RESOURCE_DOES_NOT_EXIST``); we look
  aliases up in the registered model's alias map instead of interpreting error codes.
* ``mlflow.log_table`` *appends* to an existing table of the same name, and drops the index;
  :meth:`Tracker.log_table` refuses a repeated name and keeps a non-default index as columns.
* The fluent logging functions silently start a new run when none is active; every logging
  method here requires the run opened by :meth:`Tracker.start_run`.
* Even with explicit ``pip_requirements``, the first ``log_model`` in a process scans installed
  distributions (≈ 1 s) to warn about version mismatches; later calls are instant.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final, Literal

# The gate's rule and compare-and-set live in training.gate (no MLflow there); re-exported.
from training.gate import BaselineCheck, GateDecision, champion_lock, compare_and_promote
from training.reroot import reroot

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

MODEL_NAME: Final = "nba-uplift"
CHAMPION: Final = "champion"

#: Model-version tag holding the lifecycle state (see the module docstring).
STATUS_TAG: Final = "nba.status"
STATUS_PENDING: Final = "pending"
STATUS_GATED: Final = "gated"
STATUS_FAILED: Final = "failed"
#: Model-version tag holding the error that failed the run, on ``failed`` versions.
FAILURE_TAG: Final = "nba.failure"

#: Artifact folder of the model inside the run / logged model.
MODEL_ARTIFACT: Final = "model"
#: Packages the pickled estimator needs at load time, pinned to the installed versions so that
#: ``log_model`` does not spend seconds inferring them.
MODEL_PACKAGES: Final[tuple[str, ...]] = (
    "lightgbm",
    "scikit-learn",
    "pandas",
    "numpy",
    "cloudpickle",
)
#: How long ``register`` waits for a version to become READY (immediate on the SQL store).
REGISTRATION_TIMEOUT_S: Final = 300
#: What to tell an operator when no usable model is there.
RETRAIN_HINT: Final = "train and promote one with `nba train --force`"

_log = logging.getLogger(__name__)
#: Tracking URIs whose embedded store this process has re-rooted already (training.reroot).
_REROOTED: set[str] = set()


class ModelNotAvailableError(RuntimeError):
    """The requested model version or alias does not exist, is marked failed, or cannot load."""


class ArtifactNotFoundError(ModelNotAvailableError):
    """The model version exists but its run lacks the requested artifact."""


@dataclass(frozen=True)
class ModelVersionInfo:
    """One registered version of the model, with the metrics of the run that produced it."""

    version: int
    run_id: str
    created: datetime
    aliases: list[str]
    metrics: dict[str, float]
    tags: dict[str, str]


class Tracker:
    """Runs, artifacts, model registry and champion gate on one MLflow tracking store.

    Args:
        tracking_uri: A database URI such as ``sqlite:///<workspace>/models/mlflow.db`` (MLflow
            3.17 refuses the old file store); also used as the registry URI.
        artifact_location: Where a newly created experiment stores artifacts (a path or URI);
            ignored when the experiment already exists. ``None``: MLflow's default.
        experiment: Experiment name, created on first use.
        model_name: Registered model name.

    MLflow's fluent API reads process-global URIs, so each method sets them to this tracker's
    before calling it: use one tracker at a time per process (the CLI does).
    """

    def __init__(
        self,
        tracking_uri: str,
        artifact_location: str | None = None,
        experiment: str = "nba-uplift",
        model_name: str = MODEL_NAME,
    ) -> None:
        # No I/O here: constructing a tracker must stay free for code paths that never log.
        self.tracking_uri = tracking_uri
        self.artifact_location = artifact_location
        self.experiment = experiment
        self.model_name = model_name
        self._run_id: str | None = None
        self._tables: set[str] = set()
        self._client_cache: MlflowClient | None = None

    # ------------------------------------------------------------------ runs

    @contextlib.contextmanager
    def start_run(self, run_name: str | None = None) -> Iterator[str]:
        """Open a run in the experiment (created if missing); yields its run id.

        All logging methods write into this run. If the body raises, the run ends ``FAILED``
        and versions registered from it but not gated are tagged ``nba.status=failed``.
        """
        if self._run_id is not None:
            raise RuntimeError(f"run {self._run_id} is still active on this tracker: end it first")
        mlflow = self._mlflow()
        experiment_id = self._experiment_id()
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
            run_id = run.info.run_id
            self._run_id, self._tables = run_id, set()
            try:
                yield run_id
            except BaseException as error:
                # ActiveRun.__exit__ marks the run FAILED when this re-raises; the registry is
                # ours to clean up.
                self._fail_ungated_versions(run_id, error)
                raise
            finally:
                self._run_id = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log parameters; nested mappings are flattened to dotted keys (``model.n_folds``)."""
        run_id = self._require_run()
        self._mlflow().log_params(_flatten(params), run_id=run_id)

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        """Log metrics (floats) on the active run."""
        run_id = self._require_run()
        self._mlflow().log_metrics({k: float(v) for k, v in metrics.items()}, run_id=run_id)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set tags on the active run."""
        self._require_run()
        self._mlflow().set_tags({k: str(v) for k, v in tags.items()})

    def log_figure(self, fig: Any, name: str) -> None:
        """Save a matplotlib (or plotly) figure as ``figures/<name>`` (``.png`` if no suffix)."""
        self._require_run()
        file = name if Path(name).suffix else f"{name}.png"
        self._mlflow().log_figure(fig, f"figures/{file}")

    def log_artifact(self, path: Path, subdir: str | None = None) -> None:
        """Copy a local file or folder into the run's artifacts, optionally under ``subdir``."""
        run_id = self._require_run()
        mlflow = self._mlflow()
        path = Path(path)
        if path.is_dir():
            # log_artifacts copies a folder's contents; keep the folder's own name above them.
            target = f"{subdir}/{path.name}" if subdir else path.name
            mlflow.log_artifacts(str(path), artifact_path=target, run_id=run_id)
        elif path.is_file():
            mlflow.log_artifact(str(path), artifact_path=subdir, run_id=run_id)
        else:
            raise FileNotFoundError(f"cannot log artifact {path}: no such file or folder")

    def log_table(self, df: pd.DataFrame, name: str) -> None:
        """Log a DataFrame as ``tables/<name>.json`` (shown as a table in the MLflow UI).

        A non-default index is kept as leading columns (MLflow drops the index). Logging the
        same name twice in a run raises ``ValueError``, because MLflow would append the rows.
        """
        run_id = self._require_run()
        file = name if Path(name).suffix in {".json", ".parquet"} else f"{name}.json"
        if file in self._tables:
            raise ValueError(f"table {file!r} was already logged in run {run_id}: use a new name")
        if not _is_default_index(df):
            df = df.reset_index()
        self._mlflow().log_table(df, artifact_file=f"tables/{file}", run_id=run_id)
        self._tables.add(file)

    def log_parquet(self, df: pd.DataFrame, artifact_file: str) -> None:
        """Log a DataFrame as a Parquet artifact at ``artifact_file`` (e.g. ``ref/x.parquet``).

        Unlike :meth:`log_table` this keeps dtypes and scales to large frames (a drift
        reference of 200k rows), at the cost of no table view in the MLflow UI.
        """
        import tempfile

        run_id = self._require_run()
        target = Path(artifact_file)
        if target.suffix != ".parquet" or target.is_absolute():
            raise ValueError(f"artifact_file must be a relative .parquet path: {artifact_file}")
        with tempfile.TemporaryDirectory(prefix="nba-parquet-") as tmp:
            local = Path(tmp) / target.name
            df.to_parquet(local, index=False)
            parent = str(target.parent) if str(target.parent) != "." else None
            self._mlflow().log_artifact(str(local), artifact_path=parent, run_id=run_id)

    def load_parquet(
        self, artifact_file: str, version_or_alias: int | str = CHAMPION
    ) -> tuple[pd.DataFrame, ModelVersionInfo]:
        """A Parquet artifact of the run that produced a model version (default: the champion).

        Raises ``ModelNotAvailableError`` when the version or alias does not exist, and
        ``ArtifactNotFoundError`` when its run has no such artifact (e.g. a run logged before
        the artifact was introduced).
        """
        import tempfile

        import pandas as pd
        from mlflow.exceptions import MlflowException

        mv = self._resolve(version_or_alias)
        aliases = self._aliases() or {}
        info = self._info(mv, _by_version(aliases))
        what = _describe(version_or_alias, int(mv.version), self.model_name)
        if not mv.run_id:
            raise ArtifactNotFoundError(f"{what} has no training run to read {artifact_file} from")
        self._mlflow()  # sets the URIs; the import below binds ``mlflow`` with ``artifacts``
        import mlflow.artifacts

        with tempfile.TemporaryDirectory(prefix="nba-artifact-") as tmp:
            try:
                local = mlflow.artifacts.download_artifacts(
                    run_id=mv.run_id, artifact_path=artifact_file, dst_path=tmp
                )
            except (MlflowException, OSError) as error:
                raise ArtifactNotFoundError(
                    f"the training run of {what} has no {artifact_file} "
                    f"({type(error).__name__}); retrain with `nba train` to log it"
                ) from error
            return pd.read_parquet(local), info

    # ----------------------------------------------------------------- model

    def log_model(self, model: Any, input_example: pd.DataFrame) -> str:
        """Log a fitted scikit-learn estimator in the active run; returns its model URI.

        Saved as ``mlflow.sklearn`` saves it (``load`` and serving read that flavor), with a
        pyfunc that returns one named column per action (``training.mlflow_flavor``). The
        signature is inferred from ``input_example`` and that frame, so it names the columns;
        requirements are pinned to the installed versions of ``MODEL_PACKAGES``.
        """
        self._require_run()
        self._mlflow()  # sets the URIs
        from mlflow.models import Model, infer_signature

        from training import mlflow_flavor

        output = mlflow_flavor.predict_frame(model, input_example)
        signature = infer_signature(input_example, output)
        with _without_pickle_warning():
            info = Model.log(
                artifact_path=None,  # deprecated for name=, still a positional parameter
                flavor=mlflow_flavor,
                sk_model=model,
                name=MODEL_ARTIFACT,
                signature=signature,
                input_example=input_example,
                serialization_format="cloudpickle",  # skops cannot store MultiActionUplift
                pip_requirements=pinned_requirements(),
            )
        return info.model_uri

    def register(self, model_uri: str, tags: Mapping[str, str]) -> int:
        """Register ``model_uri`` as a new version of ``model_name``; returns its number.

        The version is created with ``tags`` plus ``nba.status=pending`` and is READY on return.
        """
        mlflow = self._mlflow()
        all_tags = {**{k: str(v) for k, v in tags.items()}, STATUS_TAG: STATUS_PENDING}
        mv = mlflow.register_model(
            model_uri,
            self.model_name,
            await_registration_for=REGISTRATION_TIMEOUT_S,
            tags=all_tags,
        )
        version = int(mv.version)
        if mv.status != "READY":
            # register_model returns the version as first created; re-read after its wait.
            mv = self._client().get_model_version(self.model_name, str(version))
            if mv.status != "READY":
                raise RuntimeError(
                    f"model version {version} of {self.model_name!r} is {mv.status} after "
                    f"{REGISTRATION_TIMEOUT_S} s ({mv.status_message}): check the registry"
                )
        return version

    def champion(self) -> ModelVersionInfo | None:
        """The version the ``champion`` alias points at, or ``None`` if there is none."""
        aliases = self._aliases()
        if aliases is None or CHAMPION not in aliases:
            return None
        mv = self._client().get_model_version(self.model_name, str(aliases[CHAMPION]))
        return self._info(mv, _by_version(aliases))

    def versions(self) -> list[ModelVersionInfo]:
        """Every registered version, newest first, with aliases and its run's metrics."""
        aliases = self._aliases()
        if aliases is None:
            return []
        found = self._client().search_model_versions(f"name = '{_quoted(self.model_name)}'")
        by_version = _by_version(aliases)
        infos = [self._info(mv, by_version) for mv in found]
        return sorted(infos, key=lambda info: info.version, reverse=True)

    def load(self, version_or_alias: int | str = CHAMPION) -> Any:
        """Load the estimator of a version number or alias (default: the champion).

        Raises ``ModelNotAvailableError`` saying what to do when the version or alias does not
        exist, the version is marked failed, or its artifacts cannot be loaded.
        """
        mv = self._resolve(version_or_alias)
        what = _describe(version_or_alias, int(mv.version), self.model_name)
        if mv.tags.get(STATUS_TAG) == STATUS_FAILED:
            raise ModelNotAvailableError(
                f"{what} is marked failed (its training run raised: "
                f"{mv.tags.get(FAILURE_TAG, 'unknown error')}); {RETRAIN_HINT}"
            )
        self._mlflow()  # sets the URIs; the import below binds ``mlflow`` with its sklearn flavor
        import mlflow.sklearn

        try:
            # By number, not alias: the alias could move between the status check and the load.
            return mlflow.sklearn.load_model(f"models:/{self.model_name}/{mv.version}")
        except Exception as error:
            raise ModelNotAvailableError(
                f"{what} could not be loaded ({type(error).__name__}: {error}); {RETRAIN_HINT}"
            ) from error

    # ------------------------------------------------------------------ gate

    def gate(
        self,
        version: int,
        candidate_value: float,
        champion_value: float | None,
        force: bool = False,
        min_improvement: float = 0.0,
        *,
        compared_with: int | Literal["current"] | None = "current",
        value_of: Callable[[int], float] | None = None,
        on_read: Callable[[int | None], None] | None = None,
        baselines: tuple[BaselineCheck, ...] = (),
    ) -> GateDecision:
        """Decide whether ``version`` becomes the champion, move the alias if so, record why.

        A compare-and-set (``training.gate``): under the store's cross-process lock, the
        candidate is compared with the champion read at that moment, the one it would replace.
        ``champion_value`` is the value the caller measured for champion ``compared_with`` (a
        version, or ``None`` when there was no champion); if another version is champion by
        now, ``value_of(version)`` evaluates that one on the candidate's data. ``"current"``
        (the default) means ``champion_value`` belongs to whichever version is champion when
        the gate runs: only for callers that hold no earlier reading.

        Promotes when ``force``; otherwise never when there is no champion yet (the first model
        needs an explicit ``--force``), else when ``candidate_value > champion_value +
        min_improvement`` (both the same policy-value estimate, higher is better, on the same
        evaluation data) and, given ``baselines``, its gains over them have positive lower
        bounds (``training.gate.decide``). The decision (with the champion it was compared
        with and its value) is stored as ``gate.*`` tags on the model version and on its run,
        and the version is tagged ``nba.status=gated``. ``on_read`` is a test seam (see
        ``compare_and_promote``).

        Raises ``ValueError`` for a version marked failed, when a champion exists, ``force``
        is off and its value is unknown, and ``TimeoutError`` when another gate holds the lock
        for longer than ``training.gate.LOCK_TIMEOUT_S``.
        """
        client = self._client()
        mv = client.get_model_version(self.model_name, str(version))
        if mv.tags.get(STATUS_TAG) == STATUS_FAILED:
            raise ValueError(
                f"version {version} of {self.model_name!r} is marked failed "
                f"({mv.tags.get(FAILURE_TAG, 'unknown error')}): it cannot be gated; retrain"
            )

        def read_champion() -> int | None:
            return (self._aliases() or {}).get(CHAMPION)

        def promote(target: int) -> None:
            client.set_registered_model_alias(self.model_name, CHAMPION, str(target))

        with champion_lock(self.tracking_uri):
            measured_version = read_champion() if compared_with == "current" else compared_with
            # Alias first, tags after: if moving the alias fails the version stays pending, and
            # the run's failure handler marks it failed; recorded tags describe what happened.
            decision = compare_and_promote(
                version,
                candidate_value,
                measured=(measured_version, champion_value),
                read_champion=read_champion,
                value_of=value_of,
                promote=promote,
                force=force,
                min_improvement=min_improvement,
                on_read=on_read,
                baselines=baselines,
            )
        value, current_version = decision.champion_value, decision.champion_version
        tags = {
            "gate.promoted": _flag(decision.promoted),
            "gate.candidate_dr_value": repr(float(candidate_value)),
            "gate.champion_dr_value": "none" if value is None else repr(value),
            "gate.champion_version": "none" if current_version is None else str(current_version),
            "gate.reason": decision.reason,
            "gate.forced": _flag(force),
        }
        for check in baselines:
            tags[f"gate.gain_vs_{check.baseline}"] = f"{check.gain:.6g}"
            tags[f"gate.lower_bound_vs_{check.baseline}"] = f"{check.lower:.6g}"
        for key, text in tags.items():
            client.set_model_version_tag(self.model_name, str(version), key, text)
        if mv.run_id:
            from mlflow.entities import RunTag

            client.log_batch(mv.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        # Last: only a version whose decision is fully recorded counts as through the pipeline.
        client.set_model_version_tag(self.model_name, str(version), STATUS_TAG, STATUS_GATED)
        return decision

    # -------------------------------------------------------------- internals

    def _mlflow(self) -> ModuleType:
        """``mlflow``, imported on first use, with this tracker's URIs set."""
        import mlflow

        _ensure_sqlite_folder(self.tracking_uri)
        if self.tracking_uri not in _REROOTED:
            # A moved or copied workspace: its store's recorded paths follow it (reroot.py).
            reroot(self.tracking_uri)
            _REROOTED.add(self.tracking_uri)
        # The fluent API (start_run, log_model, load_model of models:/ URIs) reads global URIs.
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        return mlflow

    def _client(self) -> MlflowClient:
        if self._client_cache is None:
            mlflow = self._mlflow()
            self._client_cache = mlflow.MlflowClient(
                tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri
            )
        return self._client_cache

    def _require_run(self) -> str:
        # MLflow's fluent functions would otherwise start a stray run of their own.
        if self._run_id is None:
            raise RuntimeError("no active run: call this inside `with tracker.start_run():`")
        return self._run_id

    def _experiment_id(self) -> str:
        """Id of the experiment, created (with ``artifact_location``) if missing."""
        from mlflow.exceptions import MlflowException

        client = self._client()
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise RuntimeError(
                    f"experiment {self.experiment!r} is deleted in {self.tracking_uri}: restore "
                    "it (`mlflow experiments restore`) or use another experiment name"
                )
            return found.experiment_id
        location = _as_uri(self.artifact_location) if self.artifact_location else None
        try:
            return client.create_experiment(self.experiment, artifact_location=location)
        except MlflowException as error:
            # Another process created it between our lookup and create.
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            again = client.get_experiment_by_name(self.experiment)
            if again is None:
                raise
            return again.experiment_id

    def _aliases(self) -> dict[str, int] | None:
        """``{alias: version}`` of the registered model; ``None`` if it is not registered."""
        from mlflow.exceptions import MlflowException

        try:
            model = self._client().get_registered_model(self.model_name)
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return {alias: int(v) for alias, v in (model.aliases or {}).items()}

    def _resolve(self, version_or_alias: int | str) -> ModelVersion:
        """The model version a number or alias names, or ``ModelNotAvailableError``."""
        from mlflow.exceptions import MlflowException

        aliases = self._aliases()
        if aliases is None:
            raise ModelNotAvailableError(
                f"no model {self.model_name!r} is registered in {self.tracking_uri}; {RETRAIN_HINT}"
            )
        if isinstance(version_or_alias, str):
            if version_or_alias not in aliases:
                known = ", ".join(sorted(aliases)) or "none"
                raise ModelNotAvailableError(
                    f"model {self.model_name!r} has no {version_or_alias!r} alias in "
                    f"{self.tracking_uri} (aliases: {known}); {RETRAIN_HINT}"
                )
            version = aliases[version_or_alias]
        else:
            version = int(version_or_alias)
        try:
            return self._client().get_model_version(self.model_name, str(version))
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            raise ModelNotAvailableError(
                f"{_describe(version_or_alias, version, self.model_name)} does not exist in "
                f"{self.tracking_uri}; {RETRAIN_HINT}"
            ) from error

    def _info(self, mv: ModelVersion, aliases: dict[int, list[str]]) -> ModelVersionInfo:
        from mlflow.exceptions import MlflowException

        metrics: dict[str, float] = {}
        if mv.run_id:
            try:
                metrics = dict(self._client().get_run(mv.run_id).data.metrics)
            except MlflowException as error:
                # A run deleted from the store must not hide the version list.
                if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
        return ModelVersionInfo(
            version=int(mv.version),
            run_id=mv.run_id or "",
            created=datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=UTC),
            aliases=sorted(aliases.get(int(mv.version), [])),
            metrics=metrics,
            tags=dict(mv.tags or {}),
        )

    def _fail_ungated_versions(self, run_id: str, error: BaseException) -> None:
        """Tag every version registered from ``run_id`` and not yet gated as failed.

        Looked up by run id in the registry rather than remembered, so a version created by a
        ``register`` call that itself raised (after creating it) is caught too. Never raises: the
        run's own error is the one to report.
        """
        try:
            if self._aliases() is None:
                return
            client = self._client()
            found = client.search_model_versions(
                f"name = '{_quoted(self.model_name)}' and run_id = '{_quoted(run_id)}'"
            )
            failure = f"{type(error).__name__}: {error}"[:500]
            for mv in found:
                if mv.tags.get(STATUS_TAG) in {STATUS_GATED, STATUS_FAILED}:
                    continue
                client.set_model_version_tag(self.model_name, str(mv.version), FAILURE_TAG, failure)
                client.set_model_version_tag(
                    self.model_name, str(mv.version), STATUS_TAG, STATUS_FAILED
                )
                _log.warning(
                    "run %s failed before the gate: marked version %s of %r as %s",
                    run_id,
                    mv.version,
                    self.model_name,
                    STATUS_FAILED,
                )
        except Exception:
            _log.exception(
                "run %s failed and its ungated model versions could not be marked failed; "
                "they stay %s (not loadable as gated)",
                run_id,
                STATUS_PENDING,
            )


# ----------------------------------------------------------------- helpers


def pinned_requirements() -> list[str]:
    """``MODEL_PACKAGES`` pinned to their installed versions (``pkg==x.y.z``)."""
    from importlib import metadata  # ≈ 40 ms: only when a model is logged

    return [f"{name}=={metadata.version(name)}" for name in MODEL_PACKAGES]


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _describe(version_or_alias: int | str, version: int, model_name: str) -> str:
    if isinstance(version_or_alias, str):
        return f"{version_or_alias} (version {version}) of model {model_name!r}"
    return f"version {version} of model {model_name!r}"


def _by_version(aliases: dict[str, int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for alias, version in aliases.items():
        out.setdefault(version, []).append(alias)
    return out


def _quoted(value: str) -> str:
    """``value`` for a single-quoted MLflow filter string."""
    return value.replace("'", "\\'")


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _is_default_index(df: pd.DataFrame) -> bool:
    """Whether the index is the plain 0..n-1 range (nothing worth keeping)."""
    index = df.index
    return (
        index.name is None
        and index.nlevels == 1
        and type(index).__name__ == "RangeIndex"
        and index.start == 0
        and index.step == 1
    )


def _as_uri(location: str) -> str:
    """A local path as a ``file://`` URI; URIs unchanged."""
    if "://" in location or location.startswith("file:"):
        return location
    return Path(location).expanduser().resolve().as_uri()


def _ensure_sqlite_folder(uri: str) -> None:
    """Create the folder of a ``sqlite:///`` database: SQLite creates the file, not its folder."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and ":memory:" not in uri:
        Path(uri[len(prefix) :].split("?", 1)[0]).parent.mkdir(parents=True, exist_ok=True)


class _DropPickleWarning(logging.Filter):
    """Drops mlflow.sklearn's per-call warning about (cloud)pickle, a deliberate choice here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pickle or cloudpickle format" not in record.getMessage()


@contextlib.contextmanager
def _without_pickle_warning() -> Iterator[None]:
    logger = logging.getLogger("mlflow.sklearn")
    drop = _DropPickleWarning()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


__all__ = [
    "CHAMPION",
    "MODEL_NAME",
    "ArtifactNotFoundError",
    "GateDecision",
    "ModelNotAvailableError",
    "ModelVersionInfo",
    "Tracker",
    "pinned_requirements",
]
