"""gpunet's native CPU kernels (``native.c``): compiled on first use, loaded through ctypes.

Batch norm and the optimizer updates each become one C call doing in one or two passes what
the NumPy path does in six to twelve ufunc passes; ctypes releases the GIL, so the backend
shares a call's columns (or rows) among its threads. The source is compiled once per machine
with the system C compiler (``$CC``, else ``cc``) as
``cc -O3 -march=native -ffp-contract=off -fno-math-errno -shared -fPIC`` into the cache
folder (``$GPUNET_CACHE_DIR``, else ``$XDG_CACHE_HOME/gpunet``, else ``~/.cache/gpunet``),
named by a hash of the source, the command and the CPU's flags, and written atomically (a
temporary name, then a rename), so concurrent first uses are safe.

Optional, as MKL is: without a working compiler, or with ``GPUNET_NATIVE=off``, ``load_native``
returns None and the backend keeps to its NumPy path (``cpu/batchnorm.py``, ``cpu/optim.py``).
The kernels compute the reference's formulas (``base.py``), tested against it in
``tests/test_native_cpu.py``.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shlex
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

SOURCE = Path(__file__).with_name("native.c")
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-std=c99",
         "-shared", "-fPIC")
#: the optimizer kinds of ``gn_optimizer_rows``
KINDS = {"sgd": 0, "momentum": 1, "rmsprop": 2, "adam": 3}

_lock = threading.Lock()
_loaded: dict[str, NativeKernels | None] = {}

_i64, _f64, _int, _vp = ctypes.c_int64, ctypes.c_double, ctypes.c_int, ctypes.c_void_p
_SIGNATURES = {
    "gn_bn_forward_train": [_i64, _i64, _i64, _vp, _i64, _vp, _i64, _vp, _i64, _vp, _vp, _vp,
                            _vp, _vp, _f64, _int, _vp, _i64, _vp, _vp],
    "gn_bn_backward": [_i64, _i64, _i64, _vp, _i64, _vp, _i64, _vp, _vp, _vp, _vp, _i64, _vp,
                       _i64, _vp, _vp, _vp, _i64],
    "gn_optimizer_rows": [_int, _i64, _i64, _i64, _i64, _i64] + [_vp] * 13,
}


def enabled() -> bool:
    """False when ``GPUNET_NATIVE`` is ``off`` (or ``0``, ``no``, ``none``)."""
    return os.environ.get("GPUNET_NATIVE", "").strip().lower() not in ("off", "0", "no",
                                                                       "none")


def cache_dir() -> Path:
    """Where the compiled library is kept (see the module docstring)."""
    env = os.environ.get("GPUNET_CACHE_DIR", "").strip()
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg else Path.home() / ".cache") / "gpunet"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return os.uname().machine if hasattr(os, "uname") else ""


def _compiler() -> list[str]:
    return shlex.split(os.environ.get("CC", "").strip() or "cc")


def library_path() -> Path:
    """The compiled library's path for this source, compiler command and CPU."""
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(_compiler() + list(FLAGS)).encode(),
                 _cpu_flags().encode()):
        key.update(part)
        key.update(b"\0")
    return cache_dir() / f"native-{key.hexdigest()[:20]}.so"


def build(path: Path) -> None:
    """Compile ``native.c`` to ``path`` (a temporary name beside it, then a rename).
    Raises ``OSError`` / ``subprocess.CalledProcessError`` when it cannot."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".native-", suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        subprocess.run([*_compiler(), *FLAGS, "-o", tmp, str(SOURCE), "-lm"], check=True,
                       capture_output=True, timeout=120)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class NativeKernels:
    """The loaded library's three kernels (see ``native.c`` for each one's formulas)."""

    def __init__(self, path: Path) -> None:
        lib = ctypes.CDLL(str(path))
        for name, argtypes in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, None
        self.path = path
        self.bn_forward_train = lib.gn_bn_forward_train
        self.bn_backward = lib.gn_bn_backward
        self.optimizer_rows = lib.gn_optimizer_rows

    def __repr__(self) -> str:
        return f"NativeKernels(path={str(self.path)!r})"


def load_native() -> NativeKernels | None:
    """The native kernels, compiled if needed (a cached library that does not load is
    compiled again); None when turned off or when they cannot be built or loaded (no
    compiler, a read-only cache folder, ...). Tried once per process and library path."""
    if not enabled():
        return None
    try:
        path = library_path()
    except OSError:
        return None
    with _lock:
        if str(path) in _loaded:
            return _loaded[str(path)]
        kernels = None
        for attempt in range(2):  # a cached file that does not load is built again, once
            try:
                if attempt or not path.exists():
                    build(path)
                kernels = NativeKernels(path)
                break
            except (OSError, subprocess.SubprocessError, AttributeError):
                kernels = None
        _loaded[str(path)] = kernels
        return kernels


def ptr(a: np.ndarray | None) -> int | None:
    """The address of ``a``'s first element (None for None)."""
    return None if a is None else a.ctypes.data


def row_stride(a: np.ndarray) -> int:
    """``a``'s row stride in elements (a 2-D array with unit column stride)."""
    return a.strides[0] // a.itemsize


def fits_rows(*arrays: Any) -> bool:
    """2-D NumPy arrays of float32 (or bool / uint8 masks) with unit column stride."""
    for a in arrays:
        if a is None:
            continue
        if not isinstance(a, np.ndarray) or a.ndim != 2 or a.strides[1] != a.itemsize:
            return False
        if a.dtype not in (np.float32, np.bool_, np.uint8) or a.strides[0] % a.itemsize:
            return False
        if a.strides[0] < 0:
            return False
    return True
