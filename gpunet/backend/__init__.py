"""Backend selection: ``get_backend("auto" | "cpu" | "gpu" | "gpu:N")``, ``use_backend``.

The default backend comes from the ``GPUNET_DEVICE`` environment variable (``auto`` when
unset). ``auto`` tries CuPy, a device count and a tiny kernel compile, and falls back to NumPy
with one warning that says why; an explicit ``gpu`` that cannot be had raises
``BackendUnavailableError`` naming what to install. The fallback's reason stays available to
``device_label``, which the command line puts in the header line naming the device instead of
printing the warning on every command.

``GPUNET_THREADS=N`` bounds every thread pool: the NumPy backend's own (``cpu/pool.py``) and,
through threadpoolctl, every BLAS and OpenMP library loaded in the process when a backend is
made (``cpu/pool.py``, ``bound_native_threads``).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator

from ..errors import ConfigError, GpunetError
from .base import Array, Backend, BatchTooSmallError
from .cpu.pool import bound_native_threads
from .numpy_backend import NumpyBackend, env_threads

__all__ = [
    "Array",
    "Backend",
    "BackendUnavailableError",
    "BatchTooSmallError",
    "NoGpuWarning",
    "NumpyBackend",
    "current_backend",
    "device_label",
    "fallback_reason",
    "get_backend",
    "use_backend",
]

INSTALL_HINT = (
    "install CuPy for your CUDA version: pip install 'gpunet[cuda12]' or 'gpunet[cuda13]'"
)


class BackendUnavailableError(GpunetError, RuntimeError):
    """An explicitly requested backend cannot be used here."""


class NoGpuWarning(RuntimeWarning):
    """``auto`` found no usable GPU and fell back to the NumPy CPU backend."""


_cache: dict[str, Backend] = {}
_stack: list[Backend] = []
#: why ``auto`` fell back to the CPU, by spec (only "auto" falls back)
_fallbacks: dict[str, str] = {}
#: the reason the latest ``get_backend`` call by name fell back to the CPU (None: it did not)
_latest: list[str | None] = [None]


def fallback_reason() -> str | None:
    """Why the latest ``get_backend`` call by name (``"auto"``, ``"cpu"``...; a ``Backend``
    passed in does not count) fell back to the CPU, or None if it did not: ``auto`` without
    a usable GPU."""
    return _latest[0]


def device_label(name: str) -> str:
    """A backend's name for a header line: ``"cpu (no usable GPU: CuPy is not installed)"``
    when the latest ``get_backend`` call by name was ``auto`` falling back to the CPU (a run
    asks for its device just before it starts), else ``name`` itself."""
    reason = fallback_reason()
    return f"{name} (no usable GPU: {reason})" if name == "cpu" and reason else name


def _probe_gpu(device: int) -> Backend:
    """A working ``CupyBackend`` on ``device``, or an exception saying why not."""
    import cupy

    count = cupy.cuda.runtime.getDeviceCount()
    if count < 1:
        raise RuntimeError("no CUDA device found")
    if device >= count:
        raise RuntimeError(f"CUDA device {device} requested but only {count} present")
    from .cupy_backend import CupyBackend

    be = CupyBackend(device)
    with be.device:
        probe = cupy.ElementwiseKernel("float32 x", "float32 y", "y = x + 1", "gpunet_probe")
        out = probe(cupy.zeros(4, dtype=cupy.float32))
        if float(out.sum()) != 4.0:
            raise RuntimeError("a test kernel returned a wrong result")
    return be


def get_backend(spec: str | Backend | None = None) -> Backend:
    """The backend named by ``spec``: ``"auto"``, ``"cpu"``, ``"gpu"`` or ``"gpu:N"``.

    ``None`` means the innermost ``use_backend`` context, else ``GPUNET_DEVICE``, else auto.
    """
    if isinstance(spec, Backend):
        return spec
    if spec is None:
        if _stack:
            return _stack[-1]
        spec = os.environ.get("GPUNET_DEVICE", "auto")
    spec = spec.strip().lower()
    _latest[0] = _fallbacks.get(spec)
    if spec in _cache:
        return _cache[spec]
    if spec in ("cpu", "numpy"):
        be: Backend = NumpyBackend()
    elif spec == "auto":
        try:
            be = _probe_gpu(0)
        except Exception as exc:  # noqa: BLE001 - any failure means "no usable GPU"
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if isinstance(exc, ImportError):
                reason = "CuPy is not installed"
            warnings.warn(
                f"gpunet: no usable GPU ({reason}); using the NumPy CPU backend",
                NoGpuWarning,
                stacklevel=2,
            )
            be = get_backend("cpu")
            _fallbacks[spec] = _latest[0] = reason
    elif spec == "gpu" or spec.startswith("gpu:") or spec in ("cuda", "cupy"):
        index = 0
        if ":" in spec:
            try:
                index = int(spec.split(":", 1)[1])
            except ValueError:
                raise ConfigError(
                    f"bad device {spec!r}: expected gpu:N with N an integer") from None
        try:
            be = _probe_gpu(index)
        except ImportError:
            raise BackendUnavailableError(
                f"device {spec!r} requested but CuPy is not installed; {INSTALL_HINT}"
            ) from None
        except Exception as exc:  # noqa: BLE001
            raise BackendUnavailableError(
                f"device {spec!r} requested but no usable GPU: {exc}; {INSTALL_HINT}"
            ) from None
    else:
        raise ConfigError(f"unknown device {spec!r}: use auto, cpu, gpu or gpu:N")
    threads = env_threads()
    if threads is not None:  # after CuPy (and its libraries) loaded
        bound_native_threads(threads)
    _cache[spec] = be
    return be


def current_backend() -> Backend:
    """The backend that ``get_backend(None)`` would return."""
    return get_backend(None)


@contextlib.contextmanager
def use_backend(spec: str | Backend) -> Iterator[Backend]:
    """Make ``spec`` the default backend inside a ``with`` block."""
    be = get_backend(spec)
    _stack.append(be)
    try:
        yield be
    finally:
        _stack.pop()
