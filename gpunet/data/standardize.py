"""Input standardization: ``(X - mean) / std`` per feature, fitted on the training split.

``mean`` and ``std`` are float32 ``(d,)`` host arrays: the population std (ddof=0) of the
training split, a std of 0 (a constant feature) replaced by 1. They are stored in every
checkpoint and applied to raw float32 batches on the host (NumPy) or the device (CuPy)
(docs/architecture.md, "Data files").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DataError
from .sources import ArraySource


def _array_module(x: Any) -> Any:
    mod = type(x).__module__.split(".")[0]
    if mod == "cupy":
        import cupy

        return cupy
    return np


class Standardizer:
    """Input standardization fitted on the training set: ``(X - mean) / std`` in float32.

    ``mean`` and ``std`` are float32 ``(d,)`` host arrays (population std, ddof=0; a std of 0,
    a constant feature, is replaced by 1). ``apply`` works on NumPy or CuPy arrays.
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean = np.ascontiguousarray(mean, dtype=np.float32).reshape(-1)
        std = np.ascontiguousarray(std, dtype=np.float32).reshape(-1).copy()
        if self.mean.shape != std.shape:
            raise DataError(f"standardizer mean {self.mean.shape} and std {std.shape} differ")
        std[std == 0] = 1
        self.std = std
        self._device: dict[int, tuple[Any, Any]] = {}

    @classmethod
    def fit(cls, source: ArraySource) -> Standardizer:
        """Fit on ``source`` (one streamed pass; it also checks X for NaN / inf)."""
        mean, std = source.feature_stats()
        return cls(mean, std)

    @property
    def n_features(self) -> int:
        return int(self.mean.shape[0])

    def apply(self, X: Any, out: Any | None = None) -> Any:
        """float32 ``(X - mean) / std`` for X ``(b, d)``; into ``out`` (may be ``X``) if given."""
        xp = _array_module(X)
        if xp is np:
            mean, std = self.mean, self.std
        else:
            dev = int(xp.cuda.Device().id)
            if dev not in self._device:
                self._device[dev] = (xp.asarray(self.mean), xp.asarray(self.std))
            mean, std = self._device[dev]
        if X.shape[-1] != self.mean.shape[0]:
            raise DataError(f"data has {X.shape[-1]} features but the standardizer was fitted "
                            f"on {self.mean.shape[0]}")
        if out is None:
            out = xp.empty(X.shape, dtype=xp.float32)
        xp.subtract(X, mean, out=out, dtype=xp.float32)
        xp.divide(out, std, out=out)
        return out

    def __repr__(self) -> str:
        return f"Standardizer(d={self.n_features})"
