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


def relu_mask(y_got, pre_ref, tol: float = 1e-5):
    """The implementation's ReLU mask (y > 0), once it is checked against the float64 one.

    Where the float64 pre-activation `pre_ref` is within rounding of 0 (tol times its largest
    magnitude) a float32 rounding decides the mask, so the two may differ there and only there.
    A gradient reference must then follow the implementation's choice: one element moved across
    0 changes a column sum by a whole term.
    """
    got = np.asarray(y_got) > 0
    near_zero = np.abs(pre_ref) <= tol * np.abs(pre_ref).max()
    assert not ((got != (pre_ref > 0)) & ~near_zero).any(), "ReLU mask differs away from 0"
    return got
