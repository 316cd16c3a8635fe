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

from ..errors import ConfigError
from .base import Array, Backend


def _env_threads() -> int | None:
    """``GPUNET_THREADS`` as a positive integer, or None when it is unset or empty."""
    env = os.environ.get("GPUNET_THREADS", "").strip()
    if not env:
        return None
    if not env.isdigit() or int(env) < 1:
        raise ConfigError(f"GPUNET_THREADS={env!r}: expected a positive integer")
    return int(env)


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

        self.threads = max(1, int(threads or _env_threads() or os.cpu_count() or 1))
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
            if out is not None and self._splittable(a, b, out) and self.mkl is not None:
                self._gemm(a, b, out)
                return out
            return np.matmul(a, b, out=out)
        with self._blas_one_thread():
            if a.ndim == 2 and b.ndim == 2 and out is None:
                out = self._out(None, (a.shape[0], b.shape[1]), np.result_type(a, b))
            if not self._splittable(a, b, out):
                return np.matmul(a, b, out=out)
            if 2 * a.shape[0] * a.shape[1] * b.shape[1] < self.MIN_SPLIT_FLOPS:
                self._gemm(a, b, out)
            else:
                self._parallel(lambda blk: self._gemm(*blk), self._blocks(a, b, out,
                                                                          self.threads))
            return out

    def matmuls(self, products: list[tuple[Array, Array, Array]]) -> None:
        """Independent products side by side: the backend's threads are shared out among
        them (one thread each with two threads) and every block runs as one BLAS call, all in
        one hand-off. Two products of similar cost, each on its own core, finish sooner than
        one after the other each split in two (a Dense layer's dW and dx in backward: -0.2 to
        -0.6 ms per 1024-wide layer on 2 cores, benchmarks/cpu_step.py's model)."""
        k, count = self.threads, len(products)
        if k < count or not all(self._splittable(*p) for p in products):
            return super().matmuls(products)
        shares = [k // count + (i < k % count) for i in range(count)]
        with self._blas_one_thread():
            blocks = [blk for p, t in zip(products, shares, strict=True)
                      for blk in self._blocks(*p, t)]
            self._parallel(lambda blk: self._gemm(*blk), blocks)

    @staticmethod
    def _splittable(a: Array, b: Array, out: Array | None) -> bool:
        """2-D operands and an ``out`` of their result's dtype that aliases neither."""
        return (out is not None and a.ndim == 2 and b.ndim == 2
                and out.dtype == np.result_type(a, b)
                and out.shape == (a.shape[0], b.shape[1])
                and not (np.may_share_memory(out, a) or np.may_share_memory(out, b)))

    @staticmethod
    def _blocks(a: Array, b: Array, out: Array, k: int) -> list[tuple[Array, Array, Array]]:
        """``a @ b -> out`` cut into ``k`` blocks: column blocks of ``b`` (multiples of 16
        columns) when the result is wide enough, else row blocks of ``a``."""
        m, n = out.shape
        if k == 1:
            return [(a, b, out)]
        if n >= 64 * k:
            bounds = [(n * i // k) // 16 * 16 for i in range(k)] + [n]
            return [(a, b[:, bounds[i]:bounds[i + 1]], out[:, bounds[i]:bounds[i + 1]])
                    for i in range(k)]
        cuts = [m * i // k for i in range(k + 1)]
        return [(a[cuts[i]:cuts[i + 1]], b, out[cuts[i]:cuts[i + 1]]) for i in range(k)
                if cuts[i + 1] > cuts[i]]

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

    def _for_chunks(self, w: Array, g: Array, decay: float, decay_mask: Array | None,
                    body: Callable[[slice, Array, Array], None]) -> None:
        """The reference's chunk loop with the BLAS held at one thread (the chunks are already
        spread over the backend's threads). A body finds a state array's chunk at its base
        address plus ``4 * sl.start``."""
        with self._blas_one_thread():
            super()._for_chunks(w, g, decay, decay_mask, body)

    def sgd_update(
        self, w: Array, g: Array, lr: float, decay: float = 0.0, decay_mask: Array | None = None
    ) -> None:
        """``w -= lr * g``: one ``saxpy`` per chunk."""
        if not self._flat_ok(w, g):
            return super().sgd_update(w, g, lr, decay, decay_mask)
        blas, pw = self.blas1, w.ctypes.data

        def body(sl: slice, gd: Array, t: Array) -> None:
            blas.axpy(gd.shape[0], -lr, gd.ctypes.data, pw + 4 * sl.start)

        self._for_chunks(w, g, decay, decay_mask, body)

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

        def body(sl: slice, gd: Array, t: Array) -> None:
            k, o = gd.shape[0], 4 * sl.start
            blas.axpby(k, 1.0 - beta, gd.ctypes.data, beta, pv + o)
            blas.axpy(k, -lr, pv + o, pw + o)

        self._for_chunks(w, g, decay, decay_mask, body)

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

        def body(sl: slice, gd: Array, t: Array) -> None:
            k, o, pt = gd.shape[0], 4 * sl.start, t.ctypes.data
            np.multiply(gd, gd, out=t)
            blas.axpby(k, 1.0 - beta2, pt, beta2, ps + o)
            np.sqrt(s[sl], out=t)
            np.add(t, f(eps), out=t)
            np.divide(gd, t, out=t)
            blas.axpy(k, -lr, pt, pw + o)

        self._for_chunks(w, g, decay, decay_mask, body)

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

        def body(sl: slice, gd: Array, t: Array) -> None:
            k, o, pt = gd.shape[0], 4 * sl.start, t.ctypes.data
            blas.axpby(k, 1.0 - beta1, gd.ctypes.data, beta1, pm + o)
            np.multiply(gd, gd, out=t)
            blas.axpby(k, 1.0 - beta2, pt, beta2, pv + o)
            np.sqrt(v[sl], out=t)
            np.add(t, f(eps_hat), out=t)
            np.divide(m[sl], t, out=t)
            blas.axpy(k, -step_size, pt, pw + o)

        self._for_chunks(w, g, decay, decay_mask, body)
