"""gpunet's CUDA kernels (``*.cu`` here) and their loader.

Each ``.cu`` file is one CuPy ``RawModule``, compiled by NVRTC the first time one of its
kernels is needed on a device, then kept here per (file, device); CuPy also caches the
compiled binary on disk (see ``cache_dir()``), so later processes skip the compile. Sources
are read with ``importlib.resources`` from the installed ``gpunet.kernels`` package. A compile
error raises ``KernelCompileError`` naming the file and line.

The kernels use no toolkit headers, so the same files also compile with ``nvcc`` and, under
the small CUDA emulation in ``tests/cuda_emu``, with the host C++ compiler.
"""

from __future__ import annotations

import os
import re
import threading
from importlib import resources
from typing import Any

__all__ = [
    "COMPILE_OPTIONS",
    "FILES",
    "KernelCompileError",
    "cache_dir",
    "get_function",
    "get_module",
    "source",
]

#: the kernel sources, one RawModule each
FILES = ("batchnorm.cu", "softmax.cu", "optim.cu")
#: NVRTC options (no fast math: results must match the float64 reference to 1e-5)
COMPILE_OPTIONS = ("--std=c++17",)

_lock = threading.Lock()
_modules: dict[tuple[str, int], Any] = {}
_functions: dict[tuple[str, str, int], Any] = {}


class KernelCompileError(RuntimeError):
    """A kernel source failed to compile; the message names ``file:line``."""


def source(name: str) -> str:
    """The text of ``kernels/<name>`` as installed."""
    if name not in FILES:
        raise ValueError(f"unknown kernel file {name!r}: expected one of {', '.join(FILES)}")
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


_LOG_LINE = re.compile(r"^(?:.*?)\((\d+)\):\s*((?:catastrophic\s+)?error.*)$", re.MULTILINE)


def describe_compile_log(name: str, log: str) -> str:
    """Rewrite NVRTC's ``<tmpfile>(LINE): error: ...`` lines as ``kernels/<name>:LINE: ...``."""
    errors = [f"kernels/{name}:{m.group(1)}: {m.group(2).strip()}" for m in _LOG_LINE.finditer(log)]
    if not errors:
        tail = log.strip().splitlines()[-5:] if log.strip() else ["(no compiler log)"]
        return f"kernels/{name}: compile failed: " + " | ".join(tail)
    extra = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return errors[0] + extra + "\n" + "\n".join(errors[1:])


def get_module(name: str, device: int | None = None) -> Any:
    """The compiled ``cupy.RawModule`` of ``kernels/<name>`` on ``device`` (default: current)."""
    import cupy

    dev = cupy.cuda.Device().id if device is None else int(device)
    key = (name, dev)
    mod = _modules.get(key)
    if mod is not None:
        return mod
    with _lock:
        mod = _modules.get(key)
        if mod is None:
            code = source(name)
            with cupy.cuda.Device(dev):
                mod = cupy.RawModule(code=code, options=COMPILE_OPTIONS)
                try:
                    mod.compile()
                except Exception as exc:  # noqa: BLE001 - CompileException and friends
                    log = ""
                    getter = getattr(exc, "get_message", None)
                    if callable(getter):
                        try:
                            log = str(getter())
                        except Exception:  # noqa: BLE001
                            log = ""
                    log = log or str(exc)
                    raise KernelCompileError(describe_compile_log(name, log)) from exc
            _modules[key] = mod
    return mod


def get_function(name: str, kernel: str, device: int | None = None) -> Any:
    """The ``cupy.RawKernel`` ``kernel`` of ``kernels/<name>`` on ``device``."""
    import cupy

    dev = cupy.cuda.Device().id if device is None else int(device)
    key = (name, kernel, dev)
    fn = _functions.get(key)
    if fn is None:
        mod = get_module(name, dev)
        with cupy.cuda.Device(dev):
            fn = mod.get_function(kernel)
        _functions[key] = fn
    return fn


def cache_dir() -> str:
    """CuPy's on-disk kernel cache (``CUPY_CACHE_DIR``, default ``~/.cupy/kernel_cache``)."""
    return os.environ.get("CUPY_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cupy", "kernel_cache"
    )
