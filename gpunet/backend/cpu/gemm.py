"""Matrix products on the CPU, split over the NumPy backend's threads.

While a product runs, the BLAS is held at one thread and the product is cut into column (or
row) blocks, one per thread of the pool. Left to itself, OpenBLAS's worker threads keep
spinning for a while after each product and take the cores from the elementwise work that
follows (batch norm, the optimizer): on 2 cores that made the work outside the products
~1.7x slower (measured with benchmarks/cpu_step.py). Holding the BLAS at one thread needs
``threadpoolctl`` and NumPy on OpenBLAS; otherwise products go to the BLAS unchanged. Each
block runs on MKL's sequential sgemm when ``gpunet[mkl]`` is installed (``mkl.py``), else on
NumPy's BLAS.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from .mkl import MklGemm
from .pool import WorkPool, column_ranges

Product = tuple[np.ndarray, np.ndarray, np.ndarray]


def openblas_controllers() -> list[Any]:
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


def splittable(a: Any, b: Any, out: Any) -> bool:
    """2-D operands and an ``out`` of their result's dtype that aliases neither."""
    return (out is not None and a.ndim == 2 and b.ndim == 2
            and out.dtype == np.result_type(a, b)
            and out.shape == (a.shape[0], b.shape[1])
            and not (np.may_share_memory(out, a) or np.may_share_memory(out, b)))


def blocks(a: np.ndarray, b: np.ndarray, out: np.ndarray, k: int) -> list[Product]:
    """``a @ b -> out`` cut into ``k`` blocks: column blocks of ``b`` (multiples of 16
    columns) when the result is wide enough, else row blocks of ``a``."""
    m, n = out.shape
    if k == 1:
        return [(a, b, out)]
    if n >= 64 * k:
        return [(a, b[:, lo:hi], out[:, lo:hi]) for lo, hi in column_ranges(n, k)]
    cuts = [m * i // k for i in range(k + 1)]
    return [(a[cuts[i]:cuts[i + 1]], b, out[cuts[i]:cuts[i + 1]]) for i in range(k)
            if cuts[i + 1] > cuts[i]]


def _flops(a: np.ndarray, b: np.ndarray, out: Any) -> int:
    return 2 * a.shape[0] * a.shape[1] * b.shape[1]


class SplitGemm:
    """``matmul`` / ``matmuls`` over ``pool``'s threads, each block one BLAS call (MKL's
    sgemm when ``mkl`` is given and takes the arrays, else ``np.matmul``); ``openblas``:
    the threadpoolctl controllers held at one thread while products run (empty: none)."""

    #: products smaller than this many flops run as one BLAS call: waking a worker thread
    #: costs ~60 us on the 2-core VM (``WorkPool.map`` of two empty jobs), a 16-MFLOP
    #: product ~100 us; below that, splitting made small nets' steps slower (the digits
    #: recipe's ``fit``: 0.30 s at 2^22, 0.21-0.24 s at 2^24, benchmarks/packed.py's single row)
    MIN_SPLIT_FLOPS = 1 << 24

    def __init__(self, pool: WorkPool, mkl: MklGemm | None, openblas: list[Any]) -> None:
        self.pool, self.mkl, self.openblas = pool, mkl, openblas

    def gemm(self, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
        """One product into ``out``: MKL when it takes these arrays, else ``np.matmul``."""
        if self.mkl is not None and self.mkl.accepts(a, b, out):
            self.mkl(a, b, out)
        else:
            np.matmul(a, b, out=out)

    def matmul(self, a: np.ndarray, b: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        """``a @ b``: column blocks of ``b`` when the result is wide enough, row blocks of
        ``a`` otherwise. Small products, and anything unusual (not 2-D, ``out`` aliasing an
        input or of another dtype), are one call."""
        threads = self.pool.threads
        if not self.openblas and (self.mkl is None or threads == 1):
            if out is not None and splittable(a, b, out) and self.mkl is not None:
                self.gemm(a, b, out)
                return out
            return np.matmul(a, b, out=out)
        with self.one_thread():
            if a.ndim == 2 and b.ndim == 2 and out is None:
                out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
            if not splittable(a, b, out):
                return np.matmul(a, b, out=out)
            if _flops(a, b, out) < self.MIN_SPLIT_FLOPS:
                self.gemm(a, b, out)
            else:
                self.pool.map(lambda blk: self.gemm(*blk), blocks(a, b, out, threads))
            return out

    def matmuls(self, products: list[Product]) -> bool:
        """Independent products side by side: the threads are shared out among them (one
        thread each with two threads) and every block runs as one BLAS call, all in one
        hand-off. Two products of similar cost, each on its own core, finish sooner than one
        after the other each split in two (a Dense layer's dW and dx in backward: -0.2 to
        -0.6 ms per 1024-wide layer on 2 cores, benchmarks/cpu_step.py's model). Returns
        False, doing nothing, when there are more products than threads or one does not
        split."""
        k, count = self.pool.threads, len(products)
        if k < count or not all(splittable(*p) for p in products):
            return False
        if all(_flops(*p) < self.MIN_SPLIT_FLOPS for p in products):
            return False  # a hand-off to a worker costs more than these products
        shares = [k // count + (i < k % count) for i in range(count)]
        with self.one_thread():
            blks = [blk for p, t in zip(products, shares, strict=True)
                    for blk in blocks(*p, t)]
            self.pool.map(lambda blk: self.gemm(*blk), blks)
        return True

    @contextlib.contextmanager
    def one_thread(self) -> Iterator[None]:
        """Hold the BLAS at one thread (restored afterwards): its own worker threads then
        stay asleep instead of spinning on the cores the next elementwise op needs."""
        prev = [lc.get_num_threads() for lc in self.openblas]
        for lc in self.openblas:
            lc.set_num_threads(1)
        try:
            yield
        finally:
            for lc, t in zip(self.openblas, prev, strict=True):
                lc.set_num_threads(t)
