"""The NumPy backend's ops on the native kernels (``native.c``): argument checks, the
per-column momentum and per-row scalars the kernels take, and the split over the pool's
threads (columns for batch norm, rows or columns for the optimizers).

Each function returns None, doing nothing, when the arrays do not fit the kernels (another
dtype, a column stride that is not 1, ...): the caller then takes its NumPy path.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .native import KINDS, NativeKernels, fits_rows, ptr, row_stride
from .optim import adam_factors
from .pool import WorkPool, column_ranges

#: batch-norm calls over fewer elements than this run on the calling thread alone (a
#: (64, 4096) call took 0.32 ms on one thread and 0.46 ms split in two on the 2-core VM)
MIN_SPLIT_BN = 1 << 20
#: optimizer calls over fewer elements than this run on the calling thread alone (Adam
#: over 16 x 51k parameters: 1.31 ms on one thread, 0.86 ms split in two; memory-bound)
MIN_SPLIT_OPT = 1 << 17


def _vector(a: Any, c: int) -> bool:
    return (isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == (c,)
            and a.flags.c_contiguous)


def _column_parts(pool: WorkPool, c: int, elements: int, minimum: int) -> list[tuple[int, int]]:
    """Column ranges, one per thread (multiples of 16 columns), or one when small."""
    k = pool.threads if elements >= minimum else 1
    return column_ranges(c, max(1, min(k, c // 16)))


def _momenta(momentum: float | np.ndarray, c: int) -> np.ndarray | None:
    if isinstance(momentum, np.ndarray):
        return momentum if _vector(momentum, c) else None
    return np.full(c, momentum, dtype=np.float32)


def bn_forward_train(nk: NativeKernels, pool: WorkPool, x: np.ndarray, gamma: np.ndarray,
                     beta: np.ndarray, running_mean: np.ndarray, running_var: np.ndarray,
                     momentum: float | np.ndarray, eps: float, relu: bool, out: np.ndarray,
                     centre: np.ndarray | None = None, relu_mask: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``batchnorm_forward_train`` (``centre``: the in-place variant, ``x`` allowed) on the
    native kernel: ``(out, mean, invstd)``, or None when the arrays do not fit."""
    if centre is not None and isinstance(out, np.ndarray) and np.may_share_memory(centre, out):
        raise ValueError("centre must be an array of x's shape other than out")
    n, c = x.shape if getattr(x, "ndim", 0) == 2 else (0, 0)
    mom = _momenta(momentum, c) if c else None
    if (mom is None or x.dtype != np.float32 or not fits_rows(x, out, centre, relu_mask)
            or out.shape != x.shape or out.dtype != np.float32
            or not all(_vector(a, c) for a in (gamma, beta, running_mean, running_var))
            or (centre is not None and (centre.shape != x.shape or centre.dtype != x.dtype))
            or (relu_mask is not None and relu_mask.shape != x.shape)):
        return None
    mean = np.empty(c, dtype=np.float64)
    invstd = np.empty(c, dtype=np.float32)
    ldc = row_stride(centre) if centre is not None else 0
    ldm = row_stride(relu_mask) if relu_mask is not None else 0
    mask = relu_mask if relu else None

    def run(part: tuple[int, int]) -> None:
        nk.bn_forward_train(n, part[0], part[1], ptr(x), row_stride(x), ptr(out),
                            row_stride(out), ptr(centre), ldc, ptr(gamma), ptr(beta),
                            ptr(running_mean), ptr(running_var), ptr(mom), float(eps),
                            int(bool(relu)), ptr(mask), ldm, ptr(mean), ptr(invstd))

    pool.map(run, _column_parts(pool, c, n * c, MIN_SPLIT_BN))
    return out, mean, invstd


def bn_backward(nk: NativeKernels, pool: WorkPool, dy: np.ndarray, x: np.ndarray,
                gamma: np.ndarray, mean: np.ndarray, invstd: np.ndarray, dgamma: np.ndarray,
                dbeta: np.ndarray, y: np.ndarray | None, out: np.ndarray,
                relu_mask: np.ndarray | None = None) -> np.ndarray | None:
    """``batchnorm_backward`` on the native kernel (``out`` may be ``x`` or ``dy``), or None
    when the arrays do not fit."""
    n, c = x.shape if getattr(x, "ndim", 0) == 2 else (0, 0)
    if (not c or x.dtype != np.float32 or not fits_rows(dy, x, out, y, relu_mask)
            or dy.shape != x.shape or out.shape != x.shape
            or any(a is not None and (a.shape != x.shape) for a in (y, relu_mask))
            or dy.dtype != np.float32 or out.dtype != np.float32
            or (y is not None and y.dtype != np.float32)
            or not all(_vector(a, c) for a in (gamma, invstd, dgamma, dbeta))):
        return None
    mean64 = np.ascontiguousarray(mean, dtype=np.float64)
    if mean64.shape != (c,):
        return None
    ldm = row_stride(relu_mask) if relu_mask is not None else 0
    ldy = row_stride(y) if y is not None and relu_mask is None else 0
    yr = y if relu_mask is None else None

    def run(part: tuple[int, int]) -> None:
        nk.bn_backward(n, part[0], part[1], ptr(dy), row_stride(dy), ptr(x), row_stride(x),
                       ptr(gamma), ptr(mean64), ptr(invstd), ptr(relu_mask), ldm, ptr(yr), ldy,
                       ptr(dgamma), ptr(dbeta), ptr(out), row_stride(out))

    pool.map(run, _column_parts(pool, c, n * c, MIN_SPLIT_BN))
    return out


def _f32(values: list[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def row_scalars(kind: str, scalars: dict[str, list[float]], k: int) -> dict[str, np.ndarray]:
    """Per-row float32 scalars for ``gn_optimizer_rows`` from each row's Python floats,
    rounded as the NumPy path's single ops round them (``f(1.0 - beta)``; Adam's step size
    and eps from ``adam_factors`` in double)."""
    out: dict[str, np.ndarray] = {}
    if kind == "adam":
        fac = [adam_factors(scalars["lr"][i], scalars["beta1"][i], scalars["beta2"][i],
                            scalars["eps"][i], max(1, int(scalars["t"][i])))
               for i in range(k)]  # t < 1: a row that is not updated
        out["lr"], out["eps"] = _f32([f[0] for f in fac]), _f32([f[1] for f in fac])
        out["b"], out["ob"] = _f32(scalars["beta1"]), _f32([1.0 - b for b in scalars["beta1"]])
        out["b2"] = _f32(scalars["beta2"])
        out["ob2"] = _f32([1.0 - b for b in scalars["beta2"]])
        return out
    out["lr"] = _f32(scalars["lr"])
    beta = scalars.get("beta", scalars.get("beta2"))
    if beta is not None:
        out["b"], out["ob"] = _f32(beta), _f32([1.0 - b for b in beta])
    if "eps" in scalars:
        out["eps"] = _f32(scalars["eps"])
    return out


def optimizer_rows(nk: NativeKernels, pool: WorkPool, kind: str, w: np.ndarray,
                   g: np.ndarray, states: tuple[np.ndarray, ...],
                   scalars: dict[str, list[float]], decay: list[float],
                   decay_mask: np.ndarray | None, active: np.ndarray | None) -> bool:
    """One update of (K, P) ``w`` (row k: member k's flat parameters) with each row's Python
    scalars (``lr``, ``beta`` / ``beta1`` / ``beta2``, ``eps``, ``t``); False, doing
    nothing, when the arrays do not fit (contiguous float32 (K, P), a (P,) mask)."""
    arrays = (w, g, *states)
    if not all(isinstance(a, np.ndarray) and a.ndim == 2 and a.shape == w.shape
               and a.dtype == np.float32 and a.flags.c_contiguous for a in arrays):
        return False
    k, p = w.shape
    if decay_mask is not None and not _vector(decay_mask, p):
        return False
    on = None if active is None else np.ascontiguousarray(active, dtype=np.uint8)
    sc = row_scalars(kind, scalars, k)
    dec = _f32(decay)
    s1 = states[0] if states else None
    s2 = states[1] if len(states) > 1 else None
    code = KINDS[kind]

    def run(part: tuple[int, int, int, int]) -> None:
        r0, r1, p0, p1 = part
        nk.optimizer_rows(code, p, r0, r1, p0, p1, ptr(w), ptr(g), ptr(s1), ptr(s2),
                          ptr(sc["lr"]), ptr(sc.get("b")), ptr(sc.get("ob")),
                          ptr(sc.get("b2")), ptr(sc.get("ob2")), ptr(sc.get("eps")), ptr(dec),
                          ptr(decay_mask), ptr(on))

    pool.map(run, _optimizer_parts(pool.threads if k * p >= MIN_SPLIT_OPT else 1, k, p))
    return True


def _optimizer_parts(threads: int, k: int, p: int) -> list[tuple[int, int, int, int]]:
    """``(r0, r1, p0, p1)`` blocks, one per thread: whole rows when the rows share out
    evenly among the threads, else column ranges of every row."""
    if threads <= 1:
        return [(0, k, 0, p)]
    if k >= threads and k % threads == 0:
        bounds = [k * i // threads for i in range(threads + 1)]
        return [(bounds[i], bounds[i + 1], 0, p) for i in range(threads)]
    return [(0, k, lo, hi) for lo, hi in column_ranges(p, threads)]
