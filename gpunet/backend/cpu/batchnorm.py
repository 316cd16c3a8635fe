"""Batch norm on the CPU: fewer passes over memory, split over the NumPy backend's threads.

The same results as the reference ops in ``base.py`` (tested against them in
``tests/test_numpy_fastpath.py``), reached differently:

- the training forward centres x by a shift taken from a sample of its rows, then sums the
  centred values and their squares in one pass (float32 blocks, float64 merge: ``sums.py``),
  instead of a float64 two-pass;
- ``centre=`` (the in-place variant) keeps the centred batch in x's own memory, so that the
  backward needs no centring pass and can write dx over it;
- every pass is split by rows over ``pool``'s threads.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..base import check_training_batch
from .pool import WorkPool
from .sums import MEAN_BLOCK, blocksum, colsum


def _sample_shift(x: np.ndarray) -> np.ndarray:
    """The column mean of every k-th row (at least a 16th of the rows and ``MEAN_BLOCK`` of
    them), rounded to x's dtype. The mean of any b of the n rows lies within
    ``sqrt(n / b - 1) * std`` of the batch mean, so ``x - shift`` is centred to within 4 std
    whatever the data, and exact near the mean."""
    n = x.shape[0]
    sample = x[:: max(1, n // max(MEAN_BLOCK, -(-n // 16)))]
    return (blocksum(sample) / sample.shape[0]).astype(x.dtype)


def _centred_moments(pool: WorkPool, src: np.ndarray, by: np.ndarray, dst: np.ndarray,
                     parts: list[slice]) -> tuple[np.ndarray, np.ndarray]:
    """``dst = src - by``, then ``(mean(dst), mean(dst^2) - mean(dst)^2)`` in float64 (the
    biased variance, clipped at 0)."""
    def centre_part(p: slice) -> tuple[np.ndarray, np.ndarray]:
        d = dst[p]
        np.subtract(src[p], by, out=d)
        return colsum(d), colsum(d, d)

    s1, s2 = zip(*pool.map(centre_part, parts), strict=True)
    n = src.shape[0]
    resid = sum(s1) / n
    return resid, np.maximum(sum(s2) / n - resid * resid, 0.0)


def batchnorm_forward_train(pool: WorkPool, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                            running_mean: np.ndarray, running_var: np.ndarray,
                            momentum: float | np.ndarray, eps: float, relu: bool,
                            out: np.ndarray,
                            centre: np.ndarray | None = None,
                            relu_mask: np.ndarray | None = None
                            ) -> tuple[np.ndarray, Any, np.ndarray]:
    """The reference's ``(y, mean, invstd)`` and running-statistics update.

    Never ``E[x^2] - E[x]^2`` on raw x: ``d = x - shift`` (``_sample_shift``), one pass sums
    ``d`` and ``d^2``: ``mean = shift + mean(d)``, ``var = mean(d^2) - mean(d)^2``.
    ``mean(d)^2`` is typically ~0.1 ``var``; where it exceeds ``var`` (a sample far from the
    batch's mean) ``d`` is centred once more by ``mean(d)`` and summed again, so the
    cancellation never costs more than a bit. ``y = d * scale + shift'`` with
    ``scale = gamma * invstd``.

    ``centre`` (an (n, C) array, ``x`` itself allowed, not ``out``) keeps ``d``: the
    returned mean is then ``mean(d)``, the mean of what ``centre`` holds (the in-place
    contract of ``Backend.batchnorm_forward_train_inplace``). ``relu_mask`` (bool (n, C),
    with ``relu``) receives ``y > 0``.
    """
    n = x.shape[0]
    check_training_batch(n)
    keep = centre is not None
    if keep and (tuple(centre.shape) != tuple(x.shape) or centre is out):
        raise ValueError("centre must be an array of x's shape other than out")
    dbuf = centre if keep else out
    parts = pool.parts(n)
    hi = _sample_shift(x)
    resid, var = _centred_moments(pool, x, hi, dbuf, parts)
    centred_at = hi.astype(np.float64)
    if bool(np.any(resid * resid > var)):  # an unrepresentative sample: centre again
        again = resid.astype(x.dtype)
        resid, var = _centred_moments(pool, dbuf, again, dbuf, parts)
        centred_at = centred_at + again.astype(np.float64)
    mean = centred_at + resid
    invstd = (1.0 / np.sqrt(var + eps)).astype(x.dtype)
    scale = (invstd * gamma).astype(x.dtype)
    shift = (beta - resid * scale).astype(x.dtype)
    zero = x.dtype.type(0)

    def apply(p: slice) -> None:
        y = out[p]
        np.multiply(dbuf[p], scale, out=y)
        np.add(y, shift, out=y)
        if relu:
            np.maximum(y, zero, out=y)
            if relu_mask is not None:
                np.greater(y, zero, out=relu_mask[p])

    pool.map(apply, parts)
    _update_running(running_mean, running_var, momentum, mean, var, n)
    return out, (resid if keep else mean), invstd


def _update_running(running_mean: np.ndarray, running_var: np.ndarray,
                    momentum: float | np.ndarray, mean: np.ndarray, var: np.ndarray,
                    n: int) -> None:
    """The reference's running-statistics update, for a float ``momentum`` or a float32 (C,)
    one (per column): ``1 - momentum`` rounded to float32 once either way."""
    if isinstance(momentum, np.ndarray):
        keep, m = 1 - momentum, momentum.astype(np.float64)
    else:
        m = float(momentum)
        keep = 1 - m
    running_mean[...] = keep * running_mean + m * mean
    running_var[...] = keep * running_var + (m * n / (n - 1)) * var


def batchnorm_forward_infer(pool: WorkPool, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                            running_mean: np.ndarray, running_var: np.ndarray, eps: float,
                            relu: bool, out: np.ndarray) -> np.ndarray:
    """The reference's inference op in float32, split by rows: ``y = (x - running_mean) *
    scale + beta`` with ``scale = gamma / sqrt(running_var + eps)`` from float64."""
    scale = (gamma / np.sqrt(running_var.astype(np.float64) + eps)).astype(x.dtype)
    mean = running_mean.astype(x.dtype)  # float32 statistics: x - mean is exact near it

    def apply(p: slice) -> None:
        y = out[p]
        np.subtract(x[p], mean, out=y)
        np.multiply(y, scale, out=y)
        np.add(y, beta, out=y)
        if relu:
            np.maximum(y, 0, out=y)

    pool.map(apply, pool.parts(x.shape[0]))
    return out


def _split(mean: np.ndarray, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """float64 ``mean`` as ``hi + lo`` in ``dtype``: ``(x - hi) - lo`` centres x exactly
    to its rounding even when |mean| >> std (``x - hi`` is exact for x near the mean)."""
    hi = mean.astype(dtype)
    return hi, (mean - hi).astype(dtype)


def batchnorm_backward(pool: WorkPool, dy: np.ndarray, x: np.ndarray, gamma: np.ndarray,
                       mean: np.ndarray, invstd: np.ndarray, dgamma: np.ndarray,
                       dbeta: np.ndarray, y: np.ndarray | None, out: np.ndarray,
                       centred: bool = False,
                       overwrite_dy: bool = False,
                       relu_mask: np.ndarray | None = None) -> np.ndarray:
    """The reference's backward in two passes over rows split among the threads.

    ``d = x - mean`` is used as ``(x - hi) - lo`` (``mean = hi + lo``) with the ``lo`` terms
    folded into per-column constants: ``sum(g * d) = sum(g * (x - hi)) - lo * sum(g)``, and
    ``dx = (x - hi) * k_d + k_0 + g`` times ``gamma * invstd``.

    ``centred``: ``x`` is the in-place forward's ``centre`` (its mean is ``mean``), used as
    it is with the whole mean folded (``hi = 0``): no centring pass. ``out`` may be ``x``
    either way (each row block is read before it is written). ``relu_mask``: the forward's
    bool ``y > 0``, used in place of ``y``; with ``overwrite_dy`` the masked gradient is
    formed in ``dy`` rather than in a scratch array.
    """
    n = x.shape[0]
    masked = y is not None or relu_mask is not None
    if not masked or (overwrite_dy and relu_mask is not None):
        g = dy
    else:
        g = pool.workspace("bn_g", x.shape, x.dtype)
    hi, lo = (None, mean) if centred else _split(mean, x.dtype)
    parts = pool.parts(n)

    def sums(p: slice) -> tuple[np.ndarray, np.ndarray]:
        if relu_mask is not None:
            np.multiply(dy[p], relu_mask[p], out=g[p])
        elif y is not None:  # the ReLU mask as 0.0 / 1.0 straight from the comparison
            np.greater(y[p], 0, out=g[p])
            np.multiply(g[p], dy[p], out=g[p])
        if centred:
            d = x[p]
        else:
            d = out[p]
            np.subtract(x[p], hi, out=d)
        return colsum(g[p]), colsum(g[p], d)

    s1, s2 = zip(*pool.map(sums, parts), strict=True)
    db = sum(s1)
    dg = (sum(s2) - lo * db) * invstd
    dbeta[...] = db
    dgamma[...] = dg
    kd = -invstd * dg / n  # coefficient of x - hi (float64)
    k_d = kd.astype(x.dtype)
    k_0 = (-db / n - kd * lo).astype(x.dtype)
    k_1 = (gamma * invstd).astype(x.dtype)

    def apply(p: slice) -> None:
        dx = out[p]
        np.multiply(x[p] if centred else dx, k_d, out=dx)
        np.add(dx, k_0, out=dx)
        np.add(dx, g[p], out=dx)
        np.multiply(dx, k_1, out=dx)

    pool.map(apply, parts)
    return out
