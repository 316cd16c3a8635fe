"""BLAS level-1 updates for the CPU backend's optimizers: ``saxpy`` and ``saxpby``.

``y = a * x + b * y`` is one pass over memory in the BLAS, where NumPy needs three ufunc
calls (``t = a * x``, ``y *= b``, ``y += t``), each a full pass. Adam's moment updates and
its parameter step are of this form; taking them from the BLAS makes Adam's update ~25%
faster on a 2-core machine (benchmarks/cpu_step.py's model, measured on the whole step).

Where the routines come from, in order:

- Intel MKL's ``cblas_saxpy`` / ``cblas_saxpby`` when ``gpunet[mkl]`` is installed (MKL on its
  sequential layer, as for the products);
- else the OpenBLAS that NumPy's wheels bundle (``scipy_cblas_saxpby64_`` and the like; the
  library is located through ``threadpoolctl``);
- else nothing, and the backend keeps to the ufunc reference.

``GPUNET_BLAS1=off`` turns them off. Arguments are raw pointers and element counts: callers
pass contiguous float32 memory only.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

#: (symbol prefix, symbol suffix, 64-bit integers) of the builds tried, in order
_NAMINGS = (("scipy_cblas_", "64_", True), ("cblas_", "64_", True), ("scipy_cblas_", "", False),
            ("cblas_", "", False))


class Blas1:
    """``axpy(n, a, px, py)``: ``y += a x``; ``axpby(n, a, px, b, py)``: ``y = a x + b y``;
    ``n`` float32 elements at unit stride from the addresses ``px`` and ``py``."""

    def __init__(self, lib: Any, prefix: str, suffix: str, int64: bool, source: str) -> None:
        i = ctypes.c_int64 if int64 else ctypes.c_int
        f, vp = ctypes.c_float, ctypes.c_void_p
        axpy = getattr(lib, f"{prefix}saxpy{suffix}")
        axpby = getattr(lib, f"{prefix}saxpby{suffix}")
        axpy.argtypes = [i, f, vp, i, vp, i]
        axpby.argtypes = [i, f, vp, i, f, vp, i]
        axpy.restype = axpby.restype = None
        self._axpy, self._axpby = axpy, axpby
        #: where the routines come from: ``"mkl"`` or ``"openblas"``
        self.source = source

    def axpy(self, n: int, a: float, px: int, py: int) -> None:
        self._axpy(n, a, px, 1, py, 1)

    def axpby(self, n: int, a: float, px: int, b: float, py: int) -> None:
        self._axpby(n, a, px, 1, b, py, 1)

    def __repr__(self) -> str:
        return f"Blas1(source={self.source!r})"


def _from_lib(lib: Any, source: str) -> Blas1 | None:
    for prefix, suffix, int64 in _NAMINGS:
        try:
            return Blas1(lib, prefix, suffix, int64, source)
        except AttributeError:
            continue
    return None


def load_blas1(mkl_lib: Any = None, openblas: list[Any] | None = None) -> Blas1 | None:
    """The level-1 routines from MKL's library handle ``mkl_lib`` if given, else from the
    first of the threadpoolctl OpenBLAS controllers ``openblas`` that exports them; None
    when neither does or ``GPUNET_BLAS1`` is ``off``."""
    if os.environ.get("GPUNET_BLAS1", "").strip().lower() in ("off", "0", "no", "none"):
        return None
    if mkl_lib is not None:
        found = _from_lib(mkl_lib, "mkl")
        if found is not None:
            return found
    for lc in openblas or []:
        try:
            lib = ctypes.CDLL(lc.filepath)
        except (OSError, AttributeError, TypeError):
            continue
        found = _from_lib(lib, "openblas")
        if found is not None:
            return found
    return None
