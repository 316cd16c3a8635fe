"""``gpunet info``: backend, device, versions and the CUDA kernel cache folder."""

from __future__ import annotations

import os
import platform
import sys
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import typer

from gpunet.text import escape, json_line


def kernel_cache_dir() -> str:
    """CuPy's kernel cache: ``CUPY_CACHE_DIR`` or ``~/.cupy/kernel_cache``."""
    return os.environ.get("CUPY_CACHE_DIR") or str(Path("~/.cupy/kernel_cache").expanduser())


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def collect_info() -> dict[str, Any]:
    """Everything ``gpunet info`` reports; never raises for a missing or broken GPU."""
    import gpunet

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            be = gpunet.get_backend("auto")
            backend, device = be.name, _device_name(be)
        except Exception as e:  # noqa: BLE001 - info must not crash
            backend, device = "cpu", f"unavailable ({e})"
    note = "; ".join(str(w.message) for w in caught) or None
    reason = gpunet.backend.fallback_reason()
    if note is None and backend == "cpu" and reason:  # warned earlier in this process
        note = f"gpunet: no usable GPU ({reason}); using the NumPy CPU backend"
    cupy_version = None
    for dist in ("cupy-cuda12x", "cupy-cuda13x", "cupy-cuda11x", "cupy"):
        cupy_version = cupy_version or _version(dist)
    import h5py
    import numpy

    return {
        "backend": backend,
        "device": device,
        "note": note,
        "gpunet": gpunet.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": numpy.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "typer": _version("typer"),
        "cupy": cupy_version,
        "cpu_blas": _cpu_blas(),
        "cpu_kernels": _cpu_kernels(),
        "kernel_cache_dir": kernel_cache_dir(),
        **{k: os.environ.get(k) for k in ("GPUNET_DEVICE", "GPUNET_BLAS", "GPUNET_THREADS",
                                          "GPUNET_NATIVE")},
    }


def _cpu_blas() -> str:
    """Which BLAS the CPU backend's products run on, and the CPU vendor that chose it."""
    import gpunet
    from gpunet.backend.cpu.mkl import cpu_vendor

    try:
        blas = gpunet.get_backend("cpu").blas
    except Exception as e:  # noqa: BLE001 - info must not crash
        return f"unavailable ({e})"
    name = "MKL" if blas == "mkl" else "NumPy's OpenBLAS"
    return f"{name} (CPU vendor: {cpu_vendor() or 'unknown'})"


def _cpu_kernels() -> str:
    """Whether batch norm and the optimizers run on gpunet's native C kernels (and where the
    compiled library is), or on the NumPy paths (and why)."""
    from gpunet.backend.cpu import native

    if not native.enabled():
        return "NumPy paths (GPUNET_NATIVE=off)"
    try:
        kernels = native.load_native()
    except Exception as e:  # noqa: BLE001 - info must not crash
        return f"NumPy paths ({e})"
    if kernels is None:
        return "NumPy paths (the native kernels did not build: no C compiler?)"
    return f"native ({kernels.path})"


def _device_name(be: Any) -> str:
    """The host CPU for a backend whose arrays live in host memory, else its GPU."""
    if not be.device_memory:
        return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(be.device_id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        mem = props.get("totalGlobalMem", 0) / 2**30
        return f"{name} (device {be.device_id}, {mem:.0f} GiB, sm_{props['major']}{props['minor']})"
    except Exception:  # noqa: BLE001
        return f"GPU {getattr(be, 'device_id', 0)}"


def info_command(
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Show the backend gpunet would use, the device, versions and the kernel cache."""
    info = collect_info()
    if json_out:
        typer.echo(json_line(info))
        return
    width = max(len(k) for k in info)
    for k, v in info.items():
        if v is not None:
            typer.echo(f"{k:<{width}}  {escape(v)}")
