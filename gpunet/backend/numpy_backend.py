"""The CPU backend: the reference ``Backend`` on NumPy, with three CPU-only fast paths.

Each fast path computes the same math as the base op it overrides (and
``tests/test_numpy_fastpath.py`` compares them on fresh random inputs):

- ``matmul``: gpunet's threads do the splitting. While a product runs, the BLAS is held at
  one thread and the product is cut into column (or row) blocks, one per thread of the
  backend's pool. Left to itself, OpenBLAS's worker threads keep spinning for a while after
  each product and take the cores from the elementwise work that follows (batch norm, the
  optimizer): on 2 cores that made the work outside the products ~1.7x slower (measured with
  benchmarks/cpu_step.py). This needs ``threadpoolctl`` and NumPy on OpenBLAS; otherwise
  products go to the BLAS unchanged.
- ``batchnorm_forward_train``: the first pass (a float64-accurate mean, only used to centre
  the data) sums blocks of ``MEAN_BLOCK`` rows in float32 and merges them in float64 instead of
  casting every element to float64; ``x - mean`` is then exact near the mean and the second
  pass refines the mean as the base op does.
- ``batchnorm_backward``: ``x - mean`` as ``(x - hi) - lo`` with the ``lo`` part folded into the
  per-column constants (one pass over the data fewer), and the fused ReLU's mask written as
  float32 by the comparison itself (multiplying by a bool array casts it, slowly).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from .base import Array, Backend, BatchTooSmallError


def _openblas_controllers() -> list[Any]:
    """threadpoolctl's controllers for the OpenBLAS libraries loaded in this process, or []."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return []
    try:
        ctl = ThreadpoolController()
    except Exception:  # a broken or unknown library must never stop the backend
        return []
    return [lc for lc in ctl.lib_controllers if lc.internal_api == "openblas"]


class NumpyBackend(Backend):
    """NumPy arrays on the host.

    ``threads`` (``GPUNET_THREADS``, default: the number of cores) threads share the work:
    elementwise ops split by rows or chunks (NumPy releases the GIL inside ufuncs) and, with
    ``threadpoolctl`` installed and NumPy on OpenBLAS, the matrix products too (the BLAS then
    runs one thread per call). ``threads=1`` leaves all parallelism to the BLAS.
    """

    name = "cpu"
    xp = np
    #: products smaller than this many flops run as one BLAS call
    MIN_SPLIT_FLOPS = 1 << 22
    #: rows per float32 partial sum in batch norm's first (centring) pass, merged in float64
    MEAN_BLOCK = 32

    def __init__(self, threads: int | None = None) -> None:
        from .mkl import load_mkl

        env = os.environ.get("GPUNET_THREADS")
        self.threads = max(1, int(threads or (env and int(env)) or os.cpu_count() or 1))
        self._blas = _openblas_controllers() if self.threads > 1 else []
        #: MKL's sequential sgemm when ``gpunet[mkl]`` is installed (else None: NumPy's BLAS)
        self.mkl = load_mkl()

    @property
    def blas(self) -> str:
        """Which BLAS the products run on: ``"mkl"`` or ``"numpy"`` (NumPy's own)."""
        return "mkl" if self.mkl is not None else "numpy"

    # ------------------------------------------------------------------ dense
    def _gemm(self, a: Array, b: Array, out: Array) -> None:
        """One product into ``out``: MKL when it takes these arrays, else ``np.matmul``."""
        if self.mkl is not None and self.mkl.accepts(a, b, out):
            self.mkl(a, b, out)
        else:
            np.matmul(a, b, out=out)

    def matmul(self, a: Array, b: Array, out: Array | None = None) -> Array:
        """``a @ b`` with the BLAS held at one thread, split over the backend's threads.

        Column blocks of ``b`` (multiples of 16 columns) when the result is wide enough, row
        blocks of ``a`` otherwise. Small products, and anything unusual (not 2-D, ``out``
        aliasing an input or of another dtype), are one call. Each block runs on MKL's
        sequential sgemm when ``gpunet[mkl]`` is installed, else on NumPy's BLAS."""
        if not self._blas and (self.mkl is None or self.threads == 1):
            if out is not None and a.ndim == 2 and b.ndim == 2 and self.mkl is not None \
                    and not (np.may_share_memory(out, a) or np.may_share_memory(out, b)):
                self._gemm(a, b, out)
                return out
            return np.matmul(a, b, out=out)
        with self._blas_one_thread():
            if a.ndim != 2 or b.ndim != 2:
                return np.matmul(a, b, out=out)
            m, n = a.shape[0], b.shape[1]
            dtype = np.result_type(a, b)
            if out is not None and (out.dtype != dtype or np.may_share_memory(out, a)
                                    or np.may_share_memory(out, b)):
                return np.matmul(a, b, out=out)
            out = self._out(out, (m, n), dtype)
            if 2 * m * a.shape[1] * n < self.MIN_SPLIT_FLOPS:
                self._gemm(a, b, out)
                return out
            k = self.threads
            if n >= 64 * k:
                bounds = [(n * i // k) // 16 * 16 for i in range(k)] + [n]
                parts = [slice(bounds[i], bounds[i + 1]) for i in range(k)]

                def block(p: slice) -> None:
                    self._gemm(a, b[:, p], out[:, p])
            else:
                parts = self._parts(m, 16)

                def block(p: slice) -> None:
                    self._gemm(a[p], b, out[p])

            self._parallel(block, parts)
            return out

    @contextlib.contextmanager
    def _blas_one_thread(self) -> Iterator[None]:
        """Hold the BLAS at one thread (restored afterwards): its own worker threads then
        stay asleep instead of spinning on the cores the next elementwise op needs."""
        prev = [lc.get_num_threads() for lc in self._blas]
        for lc in self._blas:
            lc.set_num_threads(1)
        try:
            yield
        finally:
            for lc, t in zip(self._blas, prev, strict=True):
                lc.set_num_threads(t)

    # ------------------------------------------------------------------ batch norm
    def _blocksum(self, a: Array) -> Array:
        """float64 column sums of ``a``: float32 sums of ``MEAN_BLOCK`` rows, merged in
        float64 (error ~ MEAN_BLOCK * eps relative, without a float64 copy of ``a``)."""
        r, c = a.shape
        k = r // self.MEAN_BLOCK
        total = np.zeros(c, np.float64)
        if k:
            blocks = a[: k * self.MEAN_BLOCK].reshape(k, self.MEAN_BLOCK, c).sum(axis=1)
            total += blocks.sum(axis=0, dtype=np.float64)
        if r > k * self.MEAN_BLOCK:
            total += a[k * self.MEAN_BLOCK:].sum(axis=0, dtype=np.float64)
        return total

    def batchnorm_forward_train(
        self,
        x: Array,
        gamma: Array,
        beta: Array,
        running_mean: Array,
        running_var: Array,
        momentum: float,
        eps: float,
        relu: bool = False,
        out: Array | None = None,
    ) -> tuple[Array, Array, Array]:
        """The base op (see there), with a cheaper first pass: a mean accurate to
        ~MEAN_BLOCK * eps, rounded to ``hi``, centres the data (``x - hi`` is exact near the
        mean); the second pass sums ``d = x - hi`` and ``d^2`` and refines the mean."""
        n, c = x.shape
        if n < 2:
            raise BatchTooSmallError(
                f"batch norm needs at least 2 samples per training batch, got {n}"
            )
        out = self._out(out, x.shape, x.dtype)
        parts = self._parts(n)
        hi = (sum(self._parallel(lambda p: self._blocksum(x[p]), parts)) / n).astype(x.dtype)

        def centre(p: slice) -> tuple[Array, Array]:
            d = out[p]
            np.subtract(x[p], hi, out=d)
            return self._colsum(d), self._colsum(d, d)

        s1, s2 = zip(*self._parallel(centre, parts), strict=True)
        resid = sum(s1) / n
        var = np.maximum(sum(s2) / n - resid * resid, 0.0)
        mean = hi.astype(np.float64) + resid
        invstd = (1.0 / np.sqrt(var + eps)).astype(x.dtype)
        scale = (invstd * gamma).astype(x.dtype)
        shift = (beta - resid * scale).astype(x.dtype)
        zero = x.dtype.type(0)

        def apply(p: slice) -> None:
            y = out[p]
            np.multiply(y, scale, out=y)
            np.add(y, shift, out=y)
            if relu:
                np.maximum(y, zero, out=y)

        self._parallel(apply, parts)
        m = float(momentum)
        running_mean[...] = (1 - m) * running_mean + m * mean
        running_var[...] = (1 - m) * running_var + (m * n / (n - 1)) * var
        return out, mean, invstd

    def batchnorm_backward(
        self,
        dy: Array,
        x: Array,
        gamma: Array,
        mean: Array,
        invstd: Array,
        dgamma: Array,
        dbeta: Array,
        y: Array | None = None,
        out: Array | None = None,
    ) -> Array:
        """The base op (see there), with ``x - mean = (x - hi) - lo`` where the ``lo`` terms
        go into the per-column constants: ``sum(g * d) = sum(g * (x - hi)) - lo * sum(g)``."""
        n = x.shape[0]
        out = self._out(out, x.shape, x.dtype)
        g = self._workspace("bn_g", x.shape, x.dtype) if y is not None else dy
        hi, lo = self._split(mean, x.dtype)
        parts = self._parts(n)

        def sums(p: slice) -> tuple[Array, Array]:
            if y is not None:  # the ReLU mask as 0.0 / 1.0 straight from the comparison:
                np.greater(y[p], 0, out=g[p])  # ~30% faster than multiplying by a bool array
                np.multiply(g[p], dy[p], out=g[p])
            d = out[p]
            np.subtract(x[p], hi, out=d)
            return self._colsum(g[p]), self._colsum(g[p], d)

        s1, s2 = zip(*self._parallel(sums, parts), strict=True)
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
            np.multiply(dx, k_d, out=dx)
            np.add(dx, k_0, out=dx)
            np.add(dx, g[p], out=dx)
            np.multiply(dx, k_1, out=dx)

        self._parallel(apply, parts)
        return out
