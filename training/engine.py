"""Where ``MultiActionUplift`` trains its LightGBM models: in process, or on a Dask cluster.

The local engine lives in ``training.uplift`` (one LightGBM thread per model, several models at
once). This module holds the Dask engine: each model is trained by ``lightgbm.dask`` over every
worker of a cluster (data-parallel LightGBM: each worker builds histograms on its rows and the
workers merge them over LightGBM's own sockets), and comes back as a plain ``lightgbm.Booster``,
so a model trained on Dask predicts, pickles and serves exactly like a local one.

The feature matrix is sent to the workers once per fit (``DaskData``), a random share of its
rows to each; each model then selects its rows on the workers, so that only labels and weights
travel per model.

Models are trained one after another: a ``lightgbm.dask`` fit occupies one thread on every
worker until all of them finish, so two concurrent fits on single-threaded workers could each
hold half the cluster and wait for the other half forever.

``distributed`` (Dask's cluster scheduler) is imported only when the Dask engine is used.
"""

from __future__ import annotations

import io
import operator
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import lightgbm as lgb
import numpy as np

if TYPE_CHECKING:
    from distributed import Client

ENGINES: Final[tuple[str, ...]] = ("local", "dask")
#: Workers of the LocalCluster started when no scheduler address is given (one per core here).
LOCAL_WORKERS: Final = 2
#: Seconds to wait for a scheduler given by address before giving up with an error (a wrong
#: address must not look like a hang).
CONNECT_TIMEOUT_S: Final = 10
#: LightGBM parameter names -> the scikit-learn wrapper's names for the same setting.
_SKLEARN_NAMES: Final[dict[str, str]] = {
    "min_data_in_leaf": "min_child_samples",
    "seed": "random_state",
}
#: Set by ``lightgbm.dask`` itself (threads = each worker's cores; the network).
_DASK_OWNED: Final[frozenset[str]] = frozenset({"num_threads", "objective"})

Array = np.ndarray


@contextmanager
def dask_client(scheduler: str | None = None, n_workers: int = LOCAL_WORKERS) -> Iterator[Client]:
    """A Dask client for the duration of the block.

    With ``scheduler`` (e.g. ``"tcp://10.0.0.5:8786"``) it connects to that cluster and closes
    only the client; its workers need the same ``lightgbm`` installed. Without, it starts a
    ``LocalCluster`` of ``n_workers`` single-threaded worker processes and closes it at the end.

    Raises ``ValueError`` naming the address when the scheduler cannot be reached within
    ``CONNECT_TIMEOUT_S`` seconds or the address is malformed.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the dask training engine needs the `distributed` package (pip install "
            "'distributed'); or train with engine='local'"
        ) from error
    if scheduler:
        try:
            # The default client while open: lightgbm.dask waits on futures through it.
            client = Client(scheduler, timeout=CONNECT_TIMEOUT_S)
        except Exception as error:
            # Whatever the cause (refused, timed out, a malformed address, something else
            # answering on that port), the fix is the same setting.
            raise ValueError(
                f"cannot connect to the Dask scheduler at {scheduler!r} ({type(error).__name__}: "
                f"{error}; waited at most {CONNECT_TIMEOUT_S} s): start it, fix "
                "NBA_DASK_SCHEDULER, or unset it to train on a local cluster"
            ) from error
        with client:
            yield client
        return
    # Processes, not threads: each worker is a LightGBM "machine" with its own socket, and
    # processes keep a worker's Python (GIL) work off the others. The scheduler's HTTP server
    # (dashboard) on any free port: the default 8787 may belong to another cluster, and None
    # still binds 8787.
    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
        ) as cluster,
        Client(cluster) as client,
    ):
        client.run(_silence_stdout)
        yield client


def _silence_stdout() -> None:
    """Send a worker process's standard output to /dev/null (run there by ``client.run``).

    Distributed LightGBM prints its port binding and ranks for every model, whatever
    ``verbose`` says (LightGBM's log level and log callback are per thread, and the network is
    set up before the parameters are read), and a LocalCluster's workers share the terminal of
    the command that started them. Errors still arrive: they are raised, not printed."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


@dataclass
class DaskData:
    """A feature matrix scattered over a cluster once: one block of rows per worker.

    Rows go to workers at random (balanced, seeded), not in contiguous ranges: distributed
    LightGBM finds each feature's bin boundaries from one worker's rows, and a log sorted by
    time would otherwise give it only the earliest or the latest decisions.

    ``select(rows)`` gives a Dask array of those rows built on the workers from the blocks
    already there (one chunk per worker holding any of them); ``vector`` gives labels and
    weights in the same order.
    """

    client: Client
    #: Worker address and the future of its block, per block.
    workers: list[str]
    blocks: list[Any]
    #: Block of each row of ``X``, and its position within that block.
    owner: Array
    position: Array
    n_features: int

    @classmethod
    def scatter(cls, client: Client, X: Array, seed: int = 0) -> DaskData:
        """Send ``X`` to the workers, a random ``1 / workers`` share of its rows to each."""
        workers = sorted(client.scheduler_info()["workers"])
        k = len(workers)
        owner = np.random.default_rng(seed).permutation(np.arange(len(X)) % k)
        position = np.empty(len(X), dtype=np.int64)
        blocks = []
        for w, worker in enumerate(workers):
            mine = np.flatnonzero(owner == w)
            position[mine] = np.arange(len(mine))
            blocks.append(client.scatter(X[mine], workers=[worker], broadcast=False))
        return cls(client, workers, blocks, owner, position, X.shape[1])

    def chunks(self, rows: Array) -> list[Array]:
        """``rows`` (positions in ``X``) split by block, in their order: one array per block."""
        held_by = self.owner[rows]
        return [rows[held_by == w] for w in range(len(self.blocks))]

    def select(self, rows: Array) -> Any:
        """A Dask array of the rows ``rows`` of ``X``, in ``chunks(rows)`` order."""
        import dask.array as da

        held = zip(self.workers, self.blocks, self.chunks(rows), strict=True)
        parts = [
            da.from_delayed(
                # A built-in function, so a remote cluster's workers need no code of ours; on
                # the block's own worker, so that each worker trains on its share.
                self.client.submit(
                    operator.getitem,
                    block,
                    self.position[chunk],
                    workers=[worker],
                    allow_other_workers=False,
                    pure=False,
                ),
                shape=(len(chunk), self.n_features),
                dtype=np.float64,
            )
            for worker, block, chunk in held
            if len(chunk)
        ]
        return da.concatenate(parts, axis=0)

    def vector(self, values: Array, rows: Array) -> Any:
        """A Dask array of ``values`` at ``rows``, ordered and chunked like ``select(rows)``."""
        import dask.array as da

        chunks = [chunk for chunk in self.chunks(rows) if len(chunk)]
        ordered = np.concatenate([values[chunk] for chunk in chunks])
        return da.from_array(ordered, chunks=(tuple(len(chunk) for chunk in chunks),))


def train_dask(
    data: DaskData,
    rows: Array,
    label: Array,
    weight: Array | None,
    params: dict[str, Any],
    num_boost_round: int,
    validation: tuple[Array, Array, Array | None] | None = None,
) -> lgb.Booster:
    """One LightGBM model trained by ``lightgbm.dask`` on ``rows`` of the scattered matrix.

    Args:
        data: the feature matrix on the cluster.
        rows: positions of the training rows in ``X``; ``label`` and ``weight`` are full-length
            and indexed by them.
        params: ``lightgbm.train`` parameters (LightGBM names), including ``objective``.
        num_boost_round: trees to grow.
        validation: ``(X, y, weight)`` held out for early stopping, or None. LightGBM's Dask
            interface cannot stop early, so all ``num_boost_round`` trees are grown and the
            model is cut at the iteration with the lowest validation loss (``best_iteration``),
            which is where local early stopping would have kept it, unless the loss falls
            again after ``n_iter_no_change`` rounds without improvement.

    Returns:
        A local ``Booster``.
    """
    from lightgbm.dask import DaskLGBMRegressor

    kwargs = {_SKLEARN_NAMES.get(k, k): v for k, v in params.items() if k not in _DASK_OWNED}
    # The regressor wrapper for both objectives: it passes ``objective="binary"`` through to
    # LightGBM unchanged (the booster predicts probabilities), without the classifier's label
    # encoding, which would reject an outcome that happens to take one value in an arm.
    model = DaskLGBMRegressor(
        client=data.client,
        objective=params["objective"],
        n_estimators=num_boost_round,
        **kwargs,
    )
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        # lightgbm.dask warns that the wrapper's n_jobs is ignored (it sets threads per worker)
        # and prints "Finding random open ports for workers" for every model: noise in a CLI.
        warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
        model.fit(
            data.select(rows),
            data.vector(label, rows),
            sample_weight=None if weight is None else data.vector(weight, rows),
        )
    booster = model.booster_
    if validation is not None:
        X_val, y_val, w_val = validation
        best = best_iteration(booster, X_val, y_val, w_val, params["objective"])
        booster = trimmed(booster, best)
    return booster


def validation_curve(
    booster: lgb.Booster, X: Array, y: Array, weight: Array | None, objective: str
) -> Array:
    """The weighted validation loss after each iteration: log loss for ``"binary"``, squared
    error otherwise (LightGBM's default metrics for those objectives).

    One pass per tree (``start_iteration=k, num_iteration=1``) and a running sum of the raw
    scores: as cheap as one full prediction. LightGBM folds the initial score (the label mean)
    into the first tree, so the running sum is the model's raw score.
    """
    raw = np.zeros(len(X))
    losses = np.empty(booster.num_trees())
    w = np.ones(len(X)) if weight is None else weight
    for k in range(len(losses)):
        raw += booster.predict(X, start_iteration=k, num_iteration=1, raw_score=True,
                               num_threads=1)  # fmt: skip
        if objective == "binary":
            # log(1 + e^-z) for y=1 and log(1 + e^z) for y=0, computed stably.
            loss = np.logaddexp(0.0, np.where(y > 0, -raw, raw))
        else:
            loss = (raw - y) ** 2
        losses[k] = np.average(loss, weights=w)
    return losses


def best_iteration(
    booster: lgb.Booster, X: Array, y: Array, weight: Array | None, objective: str
) -> int:
    """Trees (>= 1) at the lowest validation loss; the first such iteration on ties."""
    return int(np.argmin(validation_curve(booster, X, y, weight, objective))) + 1


def trimmed(booster: lgb.Booster, iterations: int) -> lgb.Booster:
    """A booster with only the first ``iterations`` trees.

    A real cut, not ``best_iteration`` metadata: the extra trees would otherwise still be used
    by any caller that passes ``num_iteration=-1`` or by a re-loaded model file.
    """
    if iterations >= booster.num_trees():
        return booster
    return lgb.Booster(model_str=booster.model_to_string(num_iteration=iterations))
