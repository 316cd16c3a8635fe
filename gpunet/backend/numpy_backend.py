"""The CPU backend: the reference ``Backend`` on NumPy, with one CPU-only fast path,
tested against the base op in ``tests/test_numpy_fastpath.py``:

- ``matmul``: gpunet's threads do the splitting. While a product runs, the BLAS is held at
  one thread and the product is cut into column (or row) blocks, one per thread of the
  backend's pool. Left to itself, OpenBLAS's worker threads keep spinning for a while after
  each product and take the cores from the elementwise work that follows (batch norm, the
  optimizer): on 2 cores that made the work outside the products ~1.7x slower (measured with
  benchmarks/cpu_step.py). This needs ``threadpoolctl`` and NumPy on OpenBLAS; otherwise
  products go to the BLAS unchanged.
- the optimizer updates: the same chunks as the reference, with every ``y = a x + b y`` step
  (the moment averages, the parameter step) one BLAS ``saxpby`` / ``saxpy`` pass instead of
  two or three ufunc passes (``blas1.py``). Only for contiguous float32 flat arrays; anything
  else, or no BLAS routines found, runs the reference.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
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
        from .blas1 import load_blas1
        from .mkl import load_mkl

        env = os.environ.get("GPUNET_THREADS")
        self.threads = max(1, int(threads or (env and int(env)) or os.cpu_count() or 1))
        openblas = _openblas_controllers()
        self._blas = openblas if self.threads > 1 else []
        #: MKL's sequential sgemm when ``gpunet[mkl]`` is installed (else None: NumPy's BLAS)
        self.mkl = load_mkl()
        #: saxpy / saxpby for the optimizers (MKL's, else NumPy's OpenBLAS; None: ufuncs)
        self.blas1 = load_blas1(self.mkl.lib if self.mkl is not None else None, openblas)

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

    # ------------------------------------------------------------------ optimizers
    def _flat_ok(self, *arrays: Any) -> bool:
        """Whether the level-1 BLAS can take these optimizer arrays (else: the reference)."""
        n = arrays[0].shape
        return self.blas1 is not None and all(
            isinstance(a, np.ndarray) and a.dtype == np.float32 and a.ndim == 1
            and a.shape == n and a.flags.c_contiguous for a in arrays)

    def _blas1_chunks(
        self,
        w: Array,
        g: Array,
        decay: float,
        decay_mask: Array | None,
        body: Callable[[int, int, Array, int, Array, int], None],
    ) -> None:
        """The reference's ``_for_chunks`` with addresses for the BLAS:
        ``body(start, stop, gd, gd_address, t, t_address)`` per chunk; the address of a state
        array's chunk is its base address plus ``4 * start``. The BLAS is held at one thread
        (the chunks are already spread over the backend's threads)."""
        parts = self._parts(w.shape[0], min_size=self.CHUNK)
        pg = g.ctypes.data

        def run(i: int) -> None:
            a = self._workspace("opt_g", (self.CHUNK,), w.dtype)
            b = self._workspace("opt_t", (self.CHUNK,), w.dtype)
            pa, pb = a.ctypes.data, b.ctypes.data
            part = parts[i]
            for s in range(part.start, part.stop, self.CHUNK):
                e = min(s + self.CHUNK, part.stop)
                gd = self._decayed(w, g, slice(s, e), decay, decay_mask, a[: e - s])
                body(s, e, gd, pa if decay else pg + 4 * s, b[: e - s], pb)

        with self._blas_one_thread():
            self._parallel(run, list(range(len(parts))))

    def sgd_update(
        self, w: Array, g: Array, lr: float, decay: float = 0.0, decay_mask: Array | None = None
    ) -> None:
        """``w -= lr * g``: one ``saxpy`` per chunk."""
        if not self._flat_ok(w, g):
            return super().sgd_update(w, g, lr, decay, decay_mask)
        blas, pw = self.blas1, w.ctypes.data

        def body(s: int, e: int, gd: Array, pgd: int, t: Array, pt: int) -> None:
            blas.axpy(e - s, -lr, pgd, pw + 4 * s)

        self._blas1_chunks(w, g, decay, decay_mask, body)

    def momentum_update(
        self,
        w: Array,
        g: Array,
        v: Array,
        lr: float,
        beta: float,
        decay: float = 0.0,
        decay_mask: Array | None = None,
    ) -> None:
        """``v = beta v + (1 - beta) g`` (``saxpby``); ``w -= lr v`` (``saxpy``)."""
        if not self._flat_ok(w, g, v):
            return super().momentum_update(w, g, v, lr, beta, decay, decay_mask)
        blas, pw, pv = self.blas1, w.ctypes.data, v.ctypes.data

        def body(s: int, e: int, gd: Array, pgd: int, t: Array, pt: int) -> None:
            blas.axpby(e - s, 1.0 - beta, pgd, beta, pv + 4 * s)
            blas.axpy(e - s, -lr, pv + 4 * s, pw + 4 * s)

        self._blas1_chunks(w, g, decay, decay_mask, body)

    def rmsprop_update(
        self,
        w: Array,
        g: Array,
        s: Array,
        lr: float,
        beta2: float,
        eps: float,
        decay: float = 0.0,
        decay_mask: Array | None = None,
    ) -> None:
        """``s = beta2 s + (1 - beta2) g^2`` (``saxpby``); ``w -= lr g / (sqrt(s) + eps)``
        (ufuncs, then ``saxpy``)."""
        if not self._flat_ok(w, g, s):
            return super().rmsprop_update(w, g, s, lr, beta2, eps, decay, decay_mask)
        blas, pw, ps, f = self.blas1, w.ctypes.data, s.ctypes.data, np.float32

        def body(a: int, e: int, gd: Array, pgd: int, t: Array, pt: int) -> None:
            np.multiply(gd, gd, out=t)
            blas.axpby(e - a, 1.0 - beta2, pt, beta2, ps + 4 * a)
            np.sqrt(s[a:e], out=t)
            np.add(t, f(eps), out=t)
            np.divide(gd, t, out=t)
            blas.axpy(e - a, -lr, pt, pw + 4 * a)

        self._blas1_chunks(w, g, decay, decay_mask, body)

    def adam_update(
        self,
        w: Array,
        g: Array,
        m: Array,
        v: Array,
        lr: float,
        beta1: float,
        beta2: float,
        eps: float,
        step: int,
        decay: float = 0.0,
        decay_mask: Array | None = None,
    ) -> None:
        """The reference's Adam with ``m = b1 m + (1 - b1) g`` and ``v = b2 v + (1 - b2) g^2``
        as ``saxpby`` and ``w -= step_size * m / (sqrt(v) + eps_hat)`` ending in ``saxpy``:
        7 passes per chunk instead of 12."""
        if not self._flat_ok(w, g, m, v):
            return super().adam_update(w, g, m, v, lr, beta1, beta2, eps, step, decay,
                                       decay_mask)
        blas, f = self.blas1, np.float32
        pw, pm, pv = w.ctypes.data, m.ctypes.data, v.ctypes.data
        step_size, eps_hat = self._adam_factors(lr, beta1, beta2, eps, step)

        def body(s: int, e: int, gd: Array, pgd: int, t: Array, pt: int) -> None:
            k, o = e - s, 4 * s
            blas.axpby(k, 1.0 - beta1, pgd, beta1, pm + o)
            np.multiply(gd, gd, out=t)
            blas.axpby(k, 1.0 - beta2, pt, beta2, pv + o)
            np.sqrt(v[s:e], out=t)
            np.add(t, f(eps_hat), out=t)
            np.divide(m[s:e], t, out=t)
            blas.axpy(k, -step_size, pt, pw + o)

        self._blas1_chunks(w, g, decay, decay_mask, body)
