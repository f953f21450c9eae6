"""One-row LightGBM predictions for the request path, through LightGBM's "fast" C API.

``Booster.predict`` re-parses its parameters, validates and converts the input and allocates
the output on every call: ≈ 40-100 µs of Python and setup around a few µs of tree walking for
one row. LightGBM's C API has a path made for this case:
``LGBM_BoosterPredictForMatSingleRowFastInit`` builds the prediction configuration once (one
thread, the row width, the prediction type) and ``LGBM_BoosterPredictForMatSingleRowFast`` then
predicts one row into a preallocated buffer. ``RowPredictor`` wraps that pair; the numbers are
LightGBM's own, equal to ``Booster.predict(row, num_threads=1)`` (tested).

The configuration handle belongs to one process: a ``RowPredictor`` is never pickled (the
estimator builds its predictors lazily after loading) and serializes its calls with a lock.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any, Final

import lightgbm as lgb
import numpy as np
from lightgbm.basic import _LIB, _safe_call

_DTYPE_FLOAT64: Final = 1
#: Prediction types of the C API.
NORMAL: Final = 0
CONTRIB: Final = 3


class RowPredictor:
    """Predicts one row at a time with a booster (see the module docstring)."""

    def __init__(self, booster: lgb.Booster, predict_type: int = NORMAL) -> None:
        self._booster = booster  # keeps the model alive as long as the handle
        self.n_features = booster.num_feature()
        # Booster.predict uses the best iteration when one is recorded, else every tree.
        iterations = booster.best_iteration if booster.best_iteration > 0 else -1
        width = self.n_features + 1 if predict_type == CONTRIB else 1
        self._out = np.zeros(width, dtype=np.float64)
        self._out_ptr = self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_double))
        self._out_len = ctypes.c_int64(0)
        self._handle = ctypes.c_void_p()
        self._lock = threading.Lock()
        _safe_call(
            _LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
                booster._handle,
                ctypes.c_int(predict_type),
                ctypes.c_int(0),
                ctypes.c_int(iterations),
                ctypes.c_int(_DTYPE_FLOAT64),
                ctypes.c_int32(self.n_features),
                ctypes.c_char_p(b"num_threads=1"),
                ctypes.byref(self._handle),
            )
        )

    def __call__(self, row: np.ndarray) -> np.ndarray:
        """The prediction for one row (a C-contiguous float64 vector of ``n_features``).

        Returns the output buffer's values as a new array (length 1, or ``n_features + 1``
        contributions).
        """
        if row.dtype != np.float64 or not row.flags.c_contiguous or row.size != self.n_features:
            raise ValueError(
                f"one C-contiguous float64 row of {self.n_features} values expected, got "
                f"{row.dtype} of shape {row.shape}"
            )
        with self._lock:
            _safe_call(
                _LIB.LGBM_BoosterPredictForMatSingleRowFast(
                    self._handle,
                    row.ctypes.data_as(ctypes.c_void_p),
                    ctypes.byref(self._out_len),
                    self._out_ptr,
                )
            )
            return self._out.copy()

    def predict_at(self, address: int) -> float:
        """The first output for the row at ``address`` (``row.ctypes.data`` of a C-contiguous
        float64 row of ``n_features`` that the caller keeps alive and checked once): the
        request path's call, without per-call checks or copies."""
        with self._lock:
            _safe_call(
                _LIB.LGBM_BoosterPredictForMatSingleRowFast(
                    self._handle, ctypes.c_void_p(address), ctypes.byref(self._out_len),
                    self._out_ptr,
                )
            )  # fmt: skip
            return float(self._out[0])

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None and handle.value:
            _LIB.LGBM_FastConfigFree(handle)

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("RowPredictor holds a process-local handle: build it after loading")
