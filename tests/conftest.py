"""Shared fixtures: every backend available here, and fresh random generators."""

from __future__ import annotations

import numpy as np
import pytest

import gpunet as gn


def _gpu_reason() -> str | None:
    """None when a usable CuPy GPU backend exists, else why not."""
    try:
        import cupy  # noqa: F401
    except Exception:  # noqa: BLE001
        return "CuPy is not installed"
    try:
        gn.get_backend("gpu")
    except Exception as exc:  # noqa: BLE001
        return f"no usable GPU: {exc}"
    return None


GPU_SKIP_REASON = _gpu_reason()

BACKENDS = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "gpu",
        id="gpu",
        marks=pytest.mark.skipif(GPU_SKIP_REASON is not None, reason=str(GPU_SKIP_REASON)),
    ),
]


@pytest.fixture(params=BACKENDS)
def be(request):
    """Each available backend in turn (the GPU one skips with a reason where there is none)."""
    return gn.get_backend(request.param)


@pytest.fixture
def rng():
    """A fresh generator per test, seeded from the OS: inputs differ from run to run."""
    seed = np.random.SeedSequence().entropy
    print(f"rng seed: {seed}")
    return np.random.default_rng(seed)


def host(be, x):
    """A float64 host copy of a backend array."""
    return np.asarray(be.to_host(x), dtype=np.float64)
