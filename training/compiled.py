"""LightGBM boosters compiled to native code (lleaves) for large batch predictions.

A ``/decide_batch`` of 10,000 customers makes nine predictions per customer with the S-learner
(four arms of the conversion and unsubscribe models, plus the fare model): 90,000 rows through
300 trees each. ``Booster.predict`` took ≈ 7 µs a row here, 0.68 s for the batch, most of the
batch's time. lleaves (https://github.com/siboehm/lleaves) compiles a LightGBM model file into a
native function with LLVM; the same rows took about an eighth of the time. Its results equal
LightGBM's up to floating-point rounding (measured here: at most 6e-16 apart on probabilities,
the order of summation differs), so the single-row request path keeps LightGBM's own fast C API
(bit-equal to ``Booster.predict``) and only large batches use the compiled forest.

Compiling takes ≈ 2.5 s per model; the compiled code is cached in a folder, one file per model,
named by a hash of the model text and the host CPU (a cached file is only valid for the CPU it
was compiled for). ``nba serve`` compiles once before the workers start, and each worker loads
the files. If lleaves or llvmlite is missing or fails, ``compile_booster`` returns None and the
caller keeps ``Booster.predict``: slower, never wrong.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


class CompiledBooster:
    """One booster's compiled forest: ``predict(X)`` as ``Booster.predict(X)`` would."""

    def __init__(self, model: Any, num_features: int) -> None:
        self._model = model
        self.num_features = num_features

    def predict(self, X: np.ndarray, threads: int = 1) -> np.ndarray:
        """Predictions (objective applied, as ``Booster.predict``) for a 2-D float matrix."""
        data = np.ascontiguousarray(X, dtype=np.float64)
        if data.ndim != 2 or data.shape[1] != self.num_features:
            raise ValueError(f"expected (n, {self.num_features}) rows, got {data.shape}")
        return np.asarray(self._model.predict(data, n_jobs=max(1, threads)))


def compile_booster(booster: Any, cache_dir: Path) -> CompiledBooster | None:
    """``booster`` compiled (or loaded from ``cache_dir``), or None when that is not possible."""
    try:
        from importlib.metadata import version

        import lleaves
        from llvmlite import binding
    except ImportError as error:  # an optional speed-up: fall back to LightGBM
        logger.warning("compiled trees unavailable (%s): batches use Booster.predict", error)
        return None
    text = booster.model_to_string()
    cpu = binding.get_host_cpu_name()
    tools = f"{version('lleaves')}|{version('llvmlite')}|{cpu}|"
    digest = hashlib.sha256(tools.encode() + text.encode()).hexdigest()
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache = cache_dir / f"forest-{digest[:24]}.so"
    # lleaves reads the model from a file even when the compiled code comes from the cache.
    handle, model_file = tempfile.mkstemp(suffix=".txt", dir=cache_dir)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        model = lleaves.Model(model_file=model_file)
        if cache.exists():
            model.compile(cache=str(cache))
        else:
            # Compile to a private name, then rename: a worker never loads half a file.
            partial = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
            model.compile(cache=str(partial))
            os.replace(partial, cache)
    except Exception as error:
        logger.warning("could not compile a booster (%s): batches use Booster.predict", error)
        return None
    finally:
        Path(model_file).unlink(missing_ok=True)
    return CompiledBooster(model, booster.num_feature())
