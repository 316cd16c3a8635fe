"""Row-major float32 GEMM through a cuBLAS handle that gpunet owns, called with ctypes.

CuPy refuses cuBLAS calls while a stream is being captured into a CUDA graph. cuBLAS itself
supports capture when the handle has a workspace of its own (no allocation inside the
capture); this module creates such a handle, so a whole training step, GEMMs included, can be
recorded once and replayed. Alpha and beta are host scalars, baked into the graph.

Layout: ``out (m, n) = a (m, k) @ b (k, n)``, each operand C-contiguous or the transpose of
a C-contiguous array (``x.T``); ``out`` C-contiguous. cuBLAS is column-major, so the call
computes ``out^T = b^T @ a^T``, reading a C-contiguous row-major matrix as its transpose.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

import numpy as np

OP_N, OP_T = 0, 1
DEFAULT_MATH, TF32_TENSOR_OP_MATH = 0, 3
_INT_MAX = 2**31 - 1


def _libcublas_path(cupy: Any) -> str:
    """The libcublas that CuPy loaded in this process (so both use the same library)."""
    try:
        cupy.cuda.device.get_cublas_handle()
    except Exception:  # noqa: BLE001 - a tiny product loads it as well
        cupy.matmul(cupy.ones((2, 2), np.float32), cupy.ones((2, 2), np.float32))
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if line.strip() else ""
                name = path.rsplit("/", 1)[-1]
                if name.startswith("libcublas.so"):
                    return path
    except OSError:
        pass
    found = ctypes.util.find_library("cublas")
    if found:
        return found
    raise OSError("libcublas is not loaded and was not found")


class CublasGemm:
    """``gemm(a, b, out)``: ``out = a @ b`` in float32 on the current CuPy stream."""

    WORKSPACE_BYTES = 32 << 20  # cuBLAS' recommendation for Hopper

    def __init__(self, cupy: Any) -> None:
        self.cp = cupy
        self.path = _libcublas_path(cupy)
        lib = ctypes.CDLL(self.path)
        vp, i = ctypes.c_void_p, ctypes.c_int
        lib.cublasCreate_v2.argtypes = [ctypes.POINTER(vp)]
        lib.cublasSetStream_v2.argtypes = [vp, vp]
        lib.cublasSetMathMode.argtypes = [vp, i]
        lib.cublasSgemm_v2.argtypes = [vp, i, i, i, i, i, vp, vp, i, vp, i, vp, vp, i]
        for fn in (lib.cublasCreate_v2, lib.cublasSetStream_v2, lib.cublasSetMathMode,
                   lib.cublasSgemm_v2):
            fn.restype = i
        self.lib = lib
        handle = vp()
        self._check(lib.cublasCreate_v2(ctypes.byref(handle)), "cublasCreate")
        self.handle = handle
        # a workspace of our own: cuBLAS then allocates nothing while a graph is captured
        self.workspace = cupy.empty(self.WORKSPACE_BYTES, dtype=np.uint8)
        set_ws = getattr(lib, "cublasSetWorkspace_v2", None)
        if set_ws is not None:
            set_ws.argtypes = [vp, vp, ctypes.c_size_t]
            set_ws.restype = i
            self._check(set_ws(handle, vp(self.workspace.data.ptr), self.WORKSPACE_BYTES),
                        "cublasSetWorkspace")
        self._alpha = ctypes.c_float(1.0)
        self._beta = ctypes.c_float(0.0)
        self._stream: int | None = None
        self.tf32 = False

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"{what} failed with cuBLAS status {status}")

    def set_tf32(self, on: bool) -> None:
        """TF32 tensor-core products (``on``) or full float32 (the default)."""
        mode = TF32_TENSOR_OP_MATH if on else DEFAULT_MATH
        self._check(self.lib.cublasSetMathMode(self.handle, mode), "cublasSetMathMode")
        self.tf32 = bool(on)

    @staticmethod
    def _layout(x: Any) -> str | None:
        """``"C"`` for a C-contiguous 2-D array, ``"T"`` for the transpose of one."""
        if x.flags.c_contiguous:
            return "C"
        if x.flags.f_contiguous:
            return "T"
        return None

    def accepts(self, a: Any, b: Any, out: Any) -> bool:
        """Whether ``gemm(a, b, out)`` can run: float32 2-D on this device, usable layouts,
        matching shapes, sizes within cuBLAS' 32-bit ints."""
        try:
            if not all(isinstance(x, self.cp.ndarray) for x in (a, b, out)):
                return False
            if a.dtype != np.float32 or b.dtype != np.float32 or out.dtype != np.float32:
                return False
            if a.ndim != 2 or b.ndim != 2 or out.ndim != 2:
                return False
            m, k = a.shape
            if b.shape[0] != k or out.shape != (m, b.shape[1]) or min(m, k, b.shape[1]) < 1:
                return False
            if max(m, k, b.shape[1]) > _INT_MAX or not out.flags.c_contiguous:
                return False
            return self._layout(a) is not None and self._layout(b) is not None
        except AttributeError:
            return False

    def __call__(self, a: Any, b: Any, out: Any) -> Any:
        m, k = a.shape
        n = b.shape[1]
        stream = self.cp.cuda.get_current_stream().ptr
        if stream != self._stream:
            self._check(self.lib.cublasSetStream_v2(self.handle, ctypes.c_void_p(stream)),
                        "cublasSetStream")
            self._stream = stream
        op_b, ld_b = (OP_N, n) if self._layout(b) == "C" else (OP_T, k)
        op_a, ld_a = (OP_N, k) if self._layout(a) == "C" else (OP_T, m)
        status = self.lib.cublasSgemm_v2(
            self.handle, op_b, op_a, n, m, k, ctypes.byref(self._alpha),
            ctypes.c_void_p(b.data.ptr), ld_b, ctypes.c_void_p(a.data.ptr), ld_a,
            ctypes.byref(self._beta), ctypes.c_void_p(out.data.ptr), n)
        self._check(status, "cublasSgemm")
        return out
