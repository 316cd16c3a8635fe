"""Checks on raw values that reading and writing share: numeric dtypes, finite X, batch sizes.

Numeric means a NumPy kind of ``b`` (bool), ``i``, ``u`` or ``f``; X must hold no NaN or inf;
a batch size is at least 1. Messages name a file by its base name only
(docs/architecture.md, "Data files").
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import ConfigError
from ..text import escape


def _name(path: str | os.PathLike[str]) -> str:
    """The file name that messages cite (no folder)."""
    return os.path.basename(str(path))


def _printable(s: str | bytes) -> str:
    """``s`` (bytes decoded as UTF-8) through ``gpunet.text.escape``: control and other
    non-printable characters escaped, so a string from a file cannot forge a line."""
    if isinstance(s, bytes):
        s = s.decode("utf-8", "replace")
    return escape(s)


def _is_numeric(dtype: np.dtype) -> bool:
    return dtype.kind in "biuf"


def _check_batch_size(batch_size: int) -> int:
    b = int(batch_size)
    if b < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    return b


def _finite_rows(X: np.ndarray) -> int:
    """-1 when every value of float32 ``X`` (m, d) is finite, else the first bad row.

    The common case costs no temporary: a float64 sum is NaN or inf exactly when some value is.
    """
    if X.size == 0 or np.isfinite(X.sum(dtype=np.float64)):
        return -1
    return int(np.argmin(np.isfinite(X).all(axis=1)))
