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
        ll = ctypes.c_longlong
        lib.cublasSgemmStridedBatched.argtypes = [vp, i, i, i, i, i, vp, vp, i, ll, vp, i, ll,
                                                  vp, vp, i, ll, i]
        for fn in (lib.cublasCreate_v2, lib.cublasSetStream_v2, lib.cublasSetMathMode,
                   lib.cublasSgemm_v2, lib.cublasSgemmStridedBatched):
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

    def _set_stream(self) -> None:
        stream = self.cp.cuda.get_current_stream().ptr
        if stream != self._stream:
            self._check(self.lib.cublasSetStream_v2(self.handle, ctypes.c_void_p(stream)),
                        "cublasSetStream")
            self._stream = stream

    def __call__(self, a: Any, b: Any, out: Any) -> Any:
        m, k = a.shape
        n = b.shape[1]
        self._set_stream()
        op_b, ld_b = (OP_N, n) if self._layout(b) == "C" else (OP_T, k)
        op_a, ld_a = (OP_N, k) if self._layout(a) == "C" else (OP_T, m)
        status = self.lib.cublasSgemm_v2(
            self.handle, op_b, op_a, n, m, k, ctypes.byref(self._alpha),
            ctypes.c_void_p(b.data.ptr), ld_b, ctypes.c_void_p(a.data.ptr), ld_a,
            ctypes.byref(self._beta), ctypes.c_void_p(out.data.ptr), n)
        self._check(status, "cublasSgemm")
        return out

    # ------------------------------------------------------------ strided batches
    def accepts_batched(self, a: Any, b: Any, out: Any) -> bool:
        """Whether ``batched(a, b, out)`` can run: ``a`` (K, m, k) or a shared (m, k),
        ``b`` (K, k, n), ``out`` (K, m, n), float32 on this device, each member matrix
        addressable by a leading dimension (``batched_layout``), ``out``'s rows with unit
        stride, sizes within cuBLAS' 32-bit ints."""
        try:
            if not all(isinstance(x, self.cp.ndarray) and x.dtype == np.float32
                       for x in (a, b, out)):
                return False
            if b.ndim != 3 or out.ndim != 3 or a.ndim not in (2, 3):
                return False
            kk, p, q = b.shape
            m = out.shape[1]
            if (tuple(a.shape[-2:]) != (m, p) or tuple(out.shape) != (kk, m, q)
                    or a.ndim == 3 and a.shape[0] != kk):
                return False
            if min(kk, m, p, q) < 1 or max(kk, m, p, q) > _INT_MAX:
                return False
            lay = batched_layout(out)
            return (lay is not None and lay[0] == OP_N and _members_apart(lay, kk, m, q)
                    and batched_layout(a) is not None and batched_layout(b) is not None
                    and not _overlap(out, a) and not _overlap(out, b))
        except AttributeError:
            return False

    def batched(self, a: Any, b: Any, out: Any) -> Any:
        """``out[k] = a[k] @ b[k]`` (a shared 2-D ``a`` for every k) as one
        ``cublasSgemmStridedBatched``: column-major ``out^T = b^T @ a^T`` per member, each
        operand addressed by its leading dimension and member stride (0 for a shared ``a``),
        so member views of (n, K*C) activations need no copies."""
        op_b, op_a, q, m, p, ld_b, st_b, ld_a, st_a, ld_c, st_c, kk = batched_args(a, b, out)
        self._set_stream()
        status = self.lib.cublasSgemmStridedBatched(
            self.handle, op_b, op_a, q, m, p, ctypes.byref(self._alpha),
            ctypes.c_void_p(b.data.ptr), ld_b, st_b, ctypes.c_void_p(a.data.ptr), ld_a, st_a,
            ctypes.byref(self._beta), ctypes.c_void_p(out.data.ptr), ld_c, st_c, kk)
        self._check(status, "cublasSgemmStridedBatched")
        return out


def batched_args(a: Any, b: Any, out: Any) -> tuple[int, ...]:
    """The integer arguments of ``cublasSgemmStridedBatched`` for row-major
    ``out[k] = a[k] @ b[k]`` (``accepts_batched`` holds): ``(transa, transb, M, N, K, lda,
    strideA, ldb, strideB, ldc, strideC, batch)`` with cuBLAS' A = ``b`` and B = ``a``."""
    kk, p, q = b.shape
    m = out.shape[1]
    op_b, ld_b, st_b = batched_layout(b)  # type: ignore[misc]
    op_a, ld_a, st_a = batched_layout(a)  # type: ignore[misc]
    _, ld_c, st_c = batched_layout(out)  # type: ignore[misc]
    return op_b, op_a, q, m, p, ld_b, st_b, ld_a, st_a, ld_c, st_c, kk


def batched_layout(x: Any) -> tuple[int, int, int] | None:
    """``(op, ld, member stride)`` in elements of a (K, r, c) or shared (r, c) float32 array
    for a row-major call through column-major cuBLAS: ``OP_N`` when its rows have unit stride
    (``ld`` = the row stride, at least c), ``OP_T`` when its columns do (a transposed view:
    ``ld`` = the column stride, at least r); None when neither (or a stride is negative or
    not whole elements). A shared 2-D array has member stride 0."""
    r, c = x.shape[-2:]
    strides = [s // 4 if s % 4 == 0 else -1 for s in x.strides]
    member = strides[0] if x.ndim == 3 else 0
    if member < 0 and not (x.ndim == 3 and x.shape[0] == 1):
        return None
    member = max(member, 0)
    s_row, s_col = strides[-2], strides[-1]
    if s_col == 1 or c == 1:
        ld = s_row if r > 1 else c
        if ld >= c:
            return OP_N, ld, member
    if s_row == 1 or r == 1:
        ld = s_col if c > 1 else r
        if ld >= r:
            return OP_T, ld, member
    return None


def _members_apart(layout: tuple[int, int, int], k: int, m: int, q: int) -> bool:
    """Whether the K (m, q) output members of an ``OP_N`` layout share no element: one after
    the other (member stride at least m rows), or side by side in each row (member stride
    at least q, all K within the row stride)."""
    _, ld, stride = layout
    if k == 1:
        return True
    return stride >= m * ld or (stride >= q and (k - 1) * stride + q <= ld)


def _overlap(out: Any, x: Any) -> bool:
    """Whether ``out``'s memory span meets ``x``'s (conservative: spans, not elements)."""
    def span(a: Any) -> tuple[int, int]:
        lo = hi = a.data.ptr
        for n, s in zip(a.shape, a.strides, strict=True):
            if s < 0:
                lo += (n - 1) * s
            else:
                hi += (n - 1) * s
        return lo, hi + a.itemsize

    (a0, a1), (b0, b1) = span(out), span(x)
    return a0 < b1 and b0 < a1
