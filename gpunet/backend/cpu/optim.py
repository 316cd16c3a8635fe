"""The optimizer updates on the CPU: the reference formulas over cache-sized chunks.

The flat arrays are walked in chunks of ``CHUNK`` elements shared among the pool's threads,
with two per-thread scratch chunks, so every pass stays in cache and nothing is allocated per
step. (Chunks of 2^17 floats, 512 KiB, measured fastest: smaller ones cost more in per-call
overhead, larger ones fall out of L2.) Each update has two chunk bodies: NumPy ufuncs, and,
when ``blas`` (``blas1.Blas1``) is given, one using the level-1 BLAS: every ``y = a x + b y``
step (the moment averages, the parameter step) one ``saxpby`` / ``saxpy`` pass instead of two
or three ufunc passes. The BLAS bodies need contiguous float32 flat arrays: a chunk of a
state array is found at its base address plus ``4 * sl.start``.

Adam folds its bias correction into two scalars (``adam_factors``): the reference's value,
one pass fewer.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .blas1 import Blas1
from .pool import WorkPool

CHUNK = 1 << 17
Body = Callable[[slice, np.ndarray, np.ndarray], None]


def for_chunks(pool: WorkPool, w: np.ndarray, g: np.ndarray, decay: float,
               decay_mask: np.ndarray | None, body: Body) -> None:
    """Call ``body(sl, gd, t)`` per chunk ``sl`` of the flat arrays: ``gd`` holds the
    (decayed) gradient and must not be written (it is ``g[sl]`` itself without decay),
    ``t`` is scratch; the chunks are shared among the pool's threads."""
    parts = pool.parts(w.shape[0], min_size=CHUNK)

    def run(i: int) -> None:
        a = pool.workspace("opt_g", (CHUNK,), w.dtype)
        b = pool.workspace("opt_t", (CHUNK,), w.dtype)
        part = parts[i]
        for start in range(part.start, part.stop, CHUNK):
            sl = slice(start, min(start + CHUNK, part.stop))
            k = sl.stop - start
            body(sl, _decayed(w, g, sl, decay, decay_mask, a[:k]), b[:k])

    pool.map(run, list(range(len(parts))))


def _decayed(w: np.ndarray, g: np.ndarray, sl: slice, decay: float,
             decay_mask: np.ndarray | None, buf: np.ndarray) -> np.ndarray:
    """The gradient of chunk ``sl`` with L2 decay, ``g + decay * decay_mask * w``, in
    ``buf``; without decay ``g[sl]`` itself (read only: no copy)."""
    if not decay:
        return g[sl]
    np.multiply(w[sl], w.dtype.type(decay), out=buf)
    if decay_mask is not None:
        np.multiply(buf, decay_mask[sl], out=buf)
    np.add(buf, g[sl], out=buf)
    return buf


def adam_factors(lr: float, beta1: float, beta2: float, eps: float,
                 step: int) -> tuple[float, float]:
    """``(lr * sqrt(c2) / c1, eps * sqrt(c2))`` with ``c1 = 1 - beta1^step`` and
    ``c2 = 1 - beta2^step``: ``w -= lr * (m / c1) / (sqrt(v / c2) + eps)`` is
    ``w -= step_size * m / (sqrt(v) + eps_hat)``."""
    c1 = 1.0 - float(beta1) ** step
    root_c2 = (1.0 - float(beta2) ** step) ** 0.5
    return lr * root_c2 / c1, eps * root_c2


def sgd_update(pool: WorkPool, blas: Blas1 | None, w: np.ndarray, g: np.ndarray, lr: float,
               decay: float, decay_mask: np.ndarray | None) -> None:
    """``w -= lr * g``: two ufunc passes, or one ``saxpy``."""
    f = w.dtype.type

    def ufuncs(sl: slice, gd: np.ndarray, t: np.ndarray) -> None:
        np.multiply(gd, f(lr), out=t)
        np.subtract(w[sl], t, out=w[sl])

    def blas1(sl: slice, gd: np.ndarray, t: np.ndarray) -> None:
        blas.axpy(gd.shape[0], -lr, gd.ctypes.data, w.ctypes.data + 4 * sl.start)

    for_chunks(pool, w, g, decay, decay_mask, ufuncs if blas is None else blas1)


def momentum_update(pool: WorkPool, blas: Blas1 | None, w: np.ndarray, g: np.ndarray,
                    v: np.ndarray, lr: float, beta: float, decay: float,
                    decay_mask: np.ndarray | None) -> None:
    """``v = beta v + (1 - beta) g`` (``saxpby``); ``w -= lr v`` (``saxpy``)."""
    f = w.dtype.type

    def ufuncs(sl: slice, gd: np.ndarray, t: np.ndarray) -> None:
        vs = v[sl]
        np.multiply(vs, f(beta), out=vs)
        np.multiply(gd, f(1.0 - beta), out=t)
        np.add(vs, t, out=vs)
        np.multiply(vs, f(lr), out=t)
        np.subtract(w[sl], t, out=w[sl])

    def blas1(sl: slice, gd: np.ndarray, t: np.ndarray) -> None:
        k, o = gd.shape[0], 4 * sl.start
        blas.axpby(k, 1.0 - beta, gd.ctypes.data, beta, v.ctypes.data + o)
        blas.axpy(k, -lr, v.ctypes.data + o, w.ctypes.data + o)

    for_chunks(pool, w, g, decay, decay_mask, ufuncs if blas is None else blas1)


def rmsprop_update(pool: WorkPool, blas: Blas1 | None, w: np.ndarray, g: np.ndarray,
                   s: np.ndarray, lr: float, beta2: float, eps: float, decay: float,
                   decay_mask: np.ndarray | None) -> None:
    """``s = beta2 s + (1 - beta2) g^2`` (``saxpby``); ``w -= lr g / (sqrt(s) + eps)``
    (ufuncs, then ``saxpy``)."""
    f = w.dtype.type

    def ufuncs(sl: slice, gd: np.ndarray, t: np.ndarray) -> None:
        ss = s[sl]
        np.multiply(gd, gd, out=t)
        np.multiply(t, f(1.0 - beta2), out=t)
        np.multiply(ss, f(beta2), out=ss)
        np.add(ss, t, out=ss)
        np.sqrt(ss, out=t)
        np.add(t, f(eps), out=t)
        np.divide(gd, t, out=t)
        np.multiply(t, f(lr), out=t)
        np.subtract(w[sl], t, out=w[sl])

    def blas1(sl: slice, gd: np.ndarray, t: np.ndarray) -> None:
        k, o, pt = gd.shape[0], 4 * sl.start, t.ctypes.data
        np.multiply(gd, gd, out=t)
        blas.axpby(k, 1.0 - beta2, pt, beta2, s.ctypes.data + o)
        np.sqrt(s[sl], out=t)
        np.add(t, f(eps), out=t)
        np.divide(gd, t, out=t)
        blas.axpy(k, -lr, pt, w.ctypes.data + o)

    for_chunks(pool, w, g, decay, decay_mask, ufuncs if blas is None else blas1)


def adam_update(pool: WorkPool, blas: Blas1 | None, w: np.ndarray, g: np.ndarray,
                m: np.ndarray, v: np.ndarray, lr: float, beta1: float, beta2: float, eps: float,
                step: int, decay: float, decay_mask: np.ndarray | None) -> None:
    """Adam as ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2`` (``saxpby`` each) and
    ``w -= step_size * m / (sqrt(v) + eps_hat)`` (ending in ``saxpy``): 7 passes per chunk
    with the BLAS, 12 with ufuncs."""
    f = w.dtype.type
    step_size, eps_hat = adam_factors(lr, beta1, beta2, eps, step)

    def ufuncs(sl: slice, gd: np.ndarray, t: np.ndarray) -> None:
        ms, vs = m[sl], v[sl]
        np.multiply(ms, f(beta1), out=ms)
        np.multiply(gd, f(1.0 - beta1), out=t)
        np.add(ms, t, out=ms)
        np.multiply(gd, gd, out=t)
        np.multiply(t, f(1.0 - beta2), out=t)
        np.multiply(vs, f(beta2), out=vs)
        np.add(vs, t, out=vs)
        np.sqrt(vs, out=t)
        np.add(t, f(eps_hat), out=t)
        np.divide(ms, t, out=t)  # m / (sqrt(v) + eps sqrt(c2))
        np.multiply(t, f(step_size), out=t)
        np.subtract(w[sl], t, out=w[sl])

    def blas1(sl: slice, gd: np.ndarray, t: np.ndarray) -> None:
        k, o, pt = gd.shape[0], 4 * sl.start, t.ctypes.data
        blas.axpby(k, 1.0 - beta1, gd.ctypes.data, beta1, m.ctypes.data + o)
        np.multiply(gd, gd, out=t)
        blas.axpby(k, 1.0 - beta2, pt, beta2, v.ctypes.data + o)
        np.sqrt(v[sl], out=t)
        np.add(t, f(eps_hat), out=t)
        np.divide(m[sl], t, out=t)
        blas.axpy(k, -step_size, pt, w.ctypes.data + o)

    for_chunks(pool, w, g, decay, decay_mask, ufuncs if blas is None else blas1)
