"""Shared fixtures: every backend available here, the GPU alone, and seeded random generators.

Random inputs: a test takes the ``rng`` fixture (a NumPy ``Generator``) or ``seed`` (an int,
for ``MLP(seed=...)``, ``torch.manual_seed`` ...). Each test's seed is derived from the run's
base seed and the test's id, so a test draws the same inputs whether it runs alone or in the
whole suite. The base seed is ``GPUNET_TEST_SEED`` (an integer, or ``random`` for a fresh one),
else ``DEFAULT_SEED``; a failing test that used a seed reports it in a "random seed" section
with the command that reruns it on the same inputs.

Backends: ``be`` is each backend in turn (the GPU one skips where there is none); a GPU-only
test takes ``gpu_backend`` instead, which skips with the reason (CuPy missing, no usable GPU).
Both mark the GPU cases ``gpu`` (``-m gpu`` selects them, ``-m "not gpu"`` leaves them out).
"""

from __future__ import annotations

import os
import secrets
import shlex
import zlib

import numpy as np
import pytest

import gpunet as gn

SEED_ENV = "GPUNET_TEST_SEED"
#: the base seed when GPUNET_TEST_SEED is not set
DEFAULT_SEED = 20250611


def _base_seed() -> int:
    """``GPUNET_TEST_SEED`` as an int (``random``: a fresh one), else ``DEFAULT_SEED``."""
    text = os.environ.get(SEED_ENV, "").strip()
    if not text:
        return DEFAULT_SEED
    if text.lower() == "random":
        return secrets.randbits(32)
    try:
        value = int(text, 0)
    except ValueError:
        raise pytest.UsageError(
            f"{SEED_ENV} must be a non-negative integer or 'random', got {text!r}") from None
    if value < 0:
        raise pytest.UsageError(f"{SEED_ENV} must be a non-negative integer, got {value}")
    return value


BASE_SEED: int = DEFAULT_SEED
_SEED_KEY = pytest.StashKey[int]()


def pytest_configure(config: pytest.Config) -> None:
    global BASE_SEED
    BASE_SEED = _base_seed()


def pytest_report_header(config: pytest.Config) -> str:
    return f"random seed: {SEED_ENV}={BASE_SEED}"


def seed_for(nodeid: str, base: int | None = None) -> int:
    """The seed of the test with this pytest node id under a base seed (the run's by default):
    a 32-bit mix of the two, the same on every machine and in every test order."""
    base = BASE_SEED if base is None else base
    seq = np.random.SeedSequence([base, zlib.crc32(nodeid.encode())])
    return int(seq.generate_state(1, np.uint32)[0])


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """This test's seed (see the module docstring); reported if the test fails."""
    value = seed_for(request.node.nodeid)
    request.node.stash[_SEED_KEY] = value
    return value


@pytest.fixture
def rng(seed: int) -> np.random.Generator:
    """A generator seeded with this test's ``seed``: the same inputs on every run of the same
    base seed."""
    return np.random.default_rng(seed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Add a "random seed" section to the failure report of a test that used ``seed``."""
    outcome = yield
    report = outcome.get_result()
    value = item.stash.get(_SEED_KEY, None)
    if report.failed and value is not None:
        rerun = f"{SEED_ENV}={BASE_SEED} python -m pytest {shlex.quote(item.nodeid)}"
        report.sections.append(
            ("random seed", f"{SEED_ENV}={BASE_SEED} (this test's seed {value}); rerun: {rerun}"))


# ---------------------------------------------------------------------- backends
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
        marks=[pytest.mark.gpu,
               pytest.mark.skipif(GPU_SKIP_REASON is not None, reason=str(GPU_SKIP_REASON))],
    ),
]


@pytest.fixture(params=BACKENDS)
def be(request):
    """Each available backend in turn (the GPU one skips with a reason where there is none)."""
    return gn.get_backend(request.param)


@pytest.fixture
def gpu_backend():
    """The GPU backend, for a test that only means something on a GPU; skips with the reason
    ("CuPy is not installed" or "no usable GPU: ...") where there is none."""
    if GPU_SKIP_REASON is not None:
        pytest.skip(GPU_SKIP_REASON)
    return gn.get_backend("gpu")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that takes ``gpu_backend`` as ``gpu``."""
    for item in items:
        if "gpu_backend" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.gpu)


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


# ---------------------------------------------------------------------- the CUDA emulation
# Fixtures of the kernel tests under tests/cuda_emu (test_kernels_emulated.py and
# test_packed_kernels_emulated.py).
@pytest.fixture
def xp():
    """Arrays whose guard bytes show a kernel writing outside them (checked at teardown)."""
    import cuda_emu as emu

    g = emu.GuardedXP()
    yield g
    g.check()  # no kernel wrote outside its arrays


@pytest.fixture(scope="module")
def launch():
    """Launches kernels of kernels/*.cu compiled for the emulation."""
    import cuda_emu as emu

    return emu.launcher()
