"""Row-major float32 GEMM through Intel MKL's ``cblas_sgemm``, for the CPU backend.

Optional: used when the ``mkl`` wheel is installed (``pip install "gpunet[mkl]"``) and the
CPU is Intel's. MKL runs its sequential layer (one thread per call); the NumPy backend splits
each product over its own threads, as it does with OpenBLAS. On the shapes of an MLP training
step (benchmarks/cpu_step.py's model) MKL's single-threaded sgemm made the step ~14% faster
than NumPy's OpenBLAS on a Sapphire Rapids VM, and 17% slower (28.2 vs 24.0 ms) on an AMD EPYC
(Zen 5) VM, where MKL takes its generic code path: so by default MKL serves Intel CPUs only.
``GPUNET_BLAS=mkl`` uses it on any CPU, ``GPUNET_BLAS=openblas`` on none.

Any 2-D float32 array with a unit stride along one axis is accepted as an operand (a
C-contiguous block, a column block of a wider array, or a transposed view); ``out`` needs a
unit stride along its rows' axis.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import platform
import site
import sys
from typing import Any

import numpy as np

from ...errors import ConfigError

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
MKL_THREADING_SEQUENTIAL = 1
_F4 = 4  # bytes per float32


def _candidates() -> list[str]:
    roots = {sys.prefix, sys.base_prefix, getattr(site, "USER_BASE", None) or ""}
    found = []
    for root in roots:
        if root:
            found += sorted(glob.glob(os.path.join(root, "lib", "libmkl_rt.so*")))
    lib = ctypes.util.find_library("mkl_rt")
    if lib:
        found.append(lib)
    return found


def _operand(x: Any) -> tuple[int, int] | None:
    """``(transpose flag, leading dimension)`` for cblas, or None if ``x`` doesn't fit."""
    r, c = x.shape
    s0, s1 = x.strides
    if s1 == _F4 and s0 % _F4 == 0 and s0 // _F4 >= max(1, c):
        return NO_TRANS, s0 // _F4
    if s0 == _F4 and s1 % _F4 == 0 and s1 // _F4 >= max(1, r):
        return TRANS, s1 // _F4
    if r == 1 and s1 == _F4:  # a single row: any row stride will do
        return NO_TRANS, max(1, c)
    if c == 1 and s0 == _F4:  # a single column
        return TRANS, max(1, r)
    return None


class MklGemm:
    """``gemm(a, b, out)``: ``out = a @ b`` in float32 by MKL's sequential ``cblas_sgemm``."""

    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)
        set_layer = getattr(lib, "MKL_Set_Threading_Layer", None)
        if set_layer is not None:
            set_layer.argtypes = [ctypes.c_int]
            set_layer.restype = ctypes.c_int
            set_layer(MKL_THREADING_SEQUENTIAL)
        i, f, vp = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
        lib.cblas_sgemm.argtypes = [i, i, i, i, i, i, f, vp, i, vp, i, f, vp, i]
        lib.cblas_sgemm.restype = None
        self.path = path
        #: the loaded library (its level-1 routines serve the optimizers: ``blas1.py``)
        self.lib = lib
        self._sgemm = lib.cblas_sgemm
        self._batch = getattr(lib, "cblas_sgemm_batch", None)
        if self._batch is not None:
            pi, pf, pv = (ctypes.POINTER(t) for t in (i, f, vp))
            self._batch.argtypes = [i, pi, pi, pi, pi, pi, pf, pv, pi, pv, pi, pf, pv, pi, i, pi]
            self._batch.restype = None

    def accepts(self, a: Any, b: Any, out: Any) -> bool:
        if not all(isinstance(x, np.ndarray) and x.ndim == 2 and x.dtype == np.float32
                   for x in (a, b, out)):
            return False
        m, k = a.shape
        if b.shape[0] != k or out.shape != (m, b.shape[1]) or min(m, k, b.shape[1]) < 1:
            return False
        if max(m, k, b.shape[1]) >= 2**31 or not out.flags.writeable:
            return False
        s0, s1 = out.strides
        ok_out = s1 == _F4 and s0 % _F4 == 0 and s0 // _F4 >= out.shape[1]
        return ok_out and _operand(a) is not None and _operand(b) is not None

    def __call__(self, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
        m, k = a.shape
        n = b.shape[1]
        op_a, lda = _operand(a)  # type: ignore[misc]
        op_b, ldb = _operand(b)  # type: ignore[misc]
        ldc = out.strides[0] // _F4
        self._sgemm(ROW_MAJOR, op_a, op_b, m, n, k, 1.0, a.ctypes.data, lda, b.ctypes.data,
                    ldb, 0.0, out.ctypes.data, ldc)
        return out


    def accepts_batched(self, a: Any, b: Any, out: Any) -> bool:
        """Whether ``batched`` takes these: (K, m, p) or shared (m, p) ``a``, (K, p, q)
        ``b``, (K, m, q) ``out``, each matrix one ``accepts`` takes (any member strides)."""
        if self._batch is None or not all(isinstance(x, np.ndarray) for x in (a, b, out)):
            return False
        if b.ndim != 3 or out.ndim != 3 or a.ndim not in (2, 3):
            return False
        k = b.shape[0]
        if out.shape[0] != k or (a.ndim == 3 and a.shape[0] != k) or k < 1:
            return False
        return self.accepts(a if a.ndim == 2 else a[0], b[0], out[0])

    def batched(self, a: np.ndarray, b: np.ndarray, out: np.ndarray,
                members: range | None = None) -> np.ndarray:
        """``out[k] = a[k] @ b[k]`` (``a`` shared when 2-D) for ``k`` in ``members`` (default:
        all) in one ``cblas_sgemm_batch`` call (one group)."""
        a0 = a if a.ndim == 2 else a[0]
        m, p = a0.shape
        q = b.shape[2]
        op_a, lda = _operand(a0)  # type: ignore[misc]
        op_b, ldb = _operand(b[0])  # type: ignore[misc]
        ks = range(b.shape[0]) if members is None else members
        n = len(ks)
        sa = 0 if a.ndim == 2 else a.strides[0]
        vp, i = ctypes.c_void_p, ctypes.c_int
        pa = (vp * n)(*[a.ctypes.data + k * sa for k in ks])
        pb = (vp * n)(*[b.ctypes.data + k * b.strides[0] for k in ks])
        pc = (vp * n)(*[out.ctypes.data + k * out.strides[0] for k in ks])
        one = ctypes.c_float(1.0)
        zero = ctypes.c_float(0.0)
        self._batch(ROW_MAJOR, i(op_a), i(op_b), i(m), i(q), i(p), one, pa, i(lda), pb, i(ldb),
                    zero, pc, i(out.strides[1] // _F4), 1, i(n))
        return out


def cpu_vendor() -> str:
    """The CPU's vendor string (``GenuineIntel``, ``AuthenticAMD``, ...), or "" if unknown."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    proc = platform.processor()  # Windows: "Intel64 Family 6 Model 85 Stepping 7, GenuineIntel"
    for vendor in ("GenuineIntel", "AuthenticAMD"):
        if vendor in proc:
            return vendor
    return ""


def blas_choice(vendor: str | None = None) -> str:
    """``"mkl"`` or ``"openblas"``: ``GPUNET_BLAS`` when set (``mkl``, ``openblas``; ``numpy``
    means ``openblas``), else MKL unless the CPU is known not to be Intel's."""
    env = os.environ.get("GPUNET_BLAS", "").strip().lower()
    if env in ("openblas", "numpy"):
        return "openblas"
    if env == "mkl":
        return "mkl"
    if env not in ("", "auto"):
        raise ConfigError(f"GPUNET_BLAS={env!r}: use mkl, openblas or auto")
    vendor = cpu_vendor() if vendor is None else vendor
    return "mkl" if vendor in ("", "GenuineIntel") else "openblas"


def load_mkl(choice: str | None = None) -> MklGemm | None:
    """MKL's GEMM when the ``mkl`` wheel is installed and ``choice`` (default:
    :func:`blas_choice`) is ``"mkl"``; else None (the backend then uses NumPy's BLAS)."""
    if (choice or blas_choice()) != "mkl":
        return None
    for path in _candidates():
        try:
            return MklGemm(path)
        except (OSError, AttributeError):
            continue
    return None
