"""The CPU backend: the reference ``Backend`` on NumPy, with one CPU-only fast path,
tested against the base op in ``tests/test_numpy_fastpath.py``:

- ``matmul``: gpunet's threads do the splitting. While a product runs, the BLAS is held at
  one thread and the product is cut into column (or row) blocks, one per thread of the
  backend's pool. Left to itself, OpenBLAS's worker threads keep spinning for a while after
  each product and take the cores from the elementwise work that follows (batch norm, the
  optimizer): on 2 cores that made the work outside the products ~1.7x slower (measured with
  benchmarks/cpu_step.py). This needs ``threadpoolctl`` and NumPy on OpenBLAS; otherwise
  products go to the BLAS unchanged.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from .base import Array, Backend


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
