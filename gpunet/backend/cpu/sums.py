"""Column sums of float32 (n, C) arrays to float64 accuracy without a float64 copy.

A float32 sum of n numbers errs by up to ~n * eps; summing blocks of k rows in float32 and
adding the block sums in float64 errs by ~k * eps, at the speed of float32 reductions.
"""

from __future__ import annotations

import numpy as np

#: rows per float32 partial sum in ``colsum`` (batch-norm sums, after centring)
REDUCE_ROWS = 256
#: rows per float32 partial sum in ``blocksum`` (batch norm's centring shift)
MEAN_BLOCK = 32


def colsum(a: np.ndarray, b: np.ndarray | None = None, rows: int = REDUCE_ROWS) -> np.ndarray:
    """float64 column sums of ``a`` (or of ``a * b``): float32 partials over blocks of
    ``rows`` rows, added in float64 (error ~ rows * eps, not n * eps)."""
    step = rows or a.shape[0] or 1
    total = np.zeros(a.shape[1], dtype=np.float64)
    for s in range(0, a.shape[0], step):
        blk = a[s:s + step]
        total += blk.sum(axis=0) if b is None else np.einsum("ij,ij->j", blk, b[s:s + step])
    return total


def blocksum(a: np.ndarray, block: int = MEAN_BLOCK) -> np.ndarray:
    """float64 column sums of ``a``: float32 sums of ``block`` rows, merged in float64
    (error ~ block * eps relative)."""
    r, c = a.shape
    k = r // block
    total = np.zeros(c, dtype=np.float64)
    if k:
        total += a[: k * block].reshape(k, block, c).sum(axis=1).sum(axis=0, dtype=np.float64)
    if r > k * block:
        total += a[k * block:].sum(axis=0, dtype=np.float64)
    return total
