"""gpunet's native CPU kernels (``gpunet/backend/cpu/native.c``): that they build where a C
compiler is, that the backend falls back to its NumPy paths where they cannot, and their
results against the float64 references of ``reference64`` on shapes the other tests do not
reach (several column blocks split among threads, strided rows, huge activations).

The ops themselves are also checked, native and NumPy path side by side, by
``test_numpy_fastpath.py`` (the ``nb`` fixture) and ``test_packed_ops.py`` (``cpu-numpy``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import reference64 as R

from gpunet.backend import NumpyBackend
from gpunet.backend.base import Backend
from gpunet.backend.cpu import native, native_ops


def _compiler_here() -> bool:
    cc = os.environ.get("CC", "").strip() or "cc"
    return shutil.which(cc.split()[0]) is not None


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder of the test's own."""
    monkeypatch.setenv("GPUNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("GPUNET_NATIVE", raising=False)
    return tmp_path / "cache"


def test_kernels_build_and_load_where_a_compiler_is(cache):
    kernels = native.load_native()
    if _compiler_here():
        assert kernels is not None, "a C compiler is here, yet the native kernels did not build"
        assert kernels.path.parent == cache and kernels.path.exists()
        assert not [p for p in cache.iterdir() if p.name.startswith(".native-")]  # no temps
        assert NumpyBackend().native is not None
    else:
        assert kernels is None


def test_no_compiler_falls_back_to_the_numpy_paths(cache, monkeypatch, rng):
    monkeypatch.setenv("CC", str(cache.parent / "no-such-compiler"))
    assert native.load_native() is None
    nb = NumpyBackend()
    assert nb.native is None
    x = rng.standard_normal((40, 30)).astype(np.float32)
    g, b = np.ones(30, np.float32), np.zeros(30, np.float32)
    y, mean, _ = nb.batchnorm_forward_train(x, g, b, np.zeros(30, np.float32),
                                            np.ones(30, np.float32), 0.1, 1e-5)
    assert R.relerr(mean, x.astype(np.float64).mean(0)) < 1e-6
    assert np.abs(y.mean(0)).max() < 1e-5


@pytest.mark.parametrize("value", ["off", "0", "OFF"])
def test_gpunet_native_off(cache, monkeypatch, value):
    monkeypatch.setenv("GPUNET_NATIVE", value)
    assert native.load_native() is None
    assert NumpyBackend().native is None
    assert not cache.exists()  # nothing compiled


def test_a_broken_cached_library_is_built_again(cache):
    if not _compiler_here():
        assert native.load_native() is None
        return
    path = native.library_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a shared library")
    kernels = native.load_native()
    assert kernels is not None and path.stat().st_size > 1000


def test_concurrent_first_builds_all_load(cache):
    """Processes starting together on an empty cache each compile to a temporary name and
    rename it into place: every one of them loads a whole library."""
    code = textwrap.dedent("""
        from gpunet.backend.cpu import native, native_ops
        k = native.load_native()
        print("loaded" if k is not None else "none")
    """)
    env = {**os.environ, "GPUNET_CACHE_DIR": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    want = "loaded" if _compiler_here() else "none"
    assert outs == [want] * 3
    assert not [p for p in cache.iterdir() if p.name.startswith(".native-")] \
        if cache.exists() else True


# ---------------------------------------------------------------- against float64
def _bn_args(rng, n, c, scale=1.0, offset=0.0):
    x = (rng.standard_normal((n, c)) * scale + offset).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, c).astype(np.float32)
    beta = rng.standard_normal(c).astype(np.float32)
    return x, gamma, beta


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("n,c", [(2, 1), (7, 257), (64, 1000), (33, 4099), (260, 4100)])
@pytest.mark.parametrize("relu", [False, True])
def test_batchnorm_kernels_on_column_blocks_of_a_wider_array(rng, threads, n, c, relu):
    assert native_ops.MIN_SPLIT_BN <= 260 * 4100  # the split is exercised
    """Member columns inside a wider (n, ld) array (row stride != width), several 256-column
    blocks, split among threads (the last shape is above ``MIN_SPLIT_BN``): forward and
    backward against float64."""
    nb = NumpyBackend(threads=threads)
    assert (nb.native is not None) == _compiler_here()
    wide, gamma, beta = _bn_args(rng, n, c + 13, offset=3.0)
    x = wide[:, 5:5 + c]
    gamma, beta = gamma[:c].copy(), beta[:c].copy()
    rm = rng.standard_normal(c).astype(np.float32)
    rv = rng.uniform(0.5, 2.0, c).astype(np.float32)
    mom = rng.uniform(0.01, 0.5, c).astype(np.float32)
    y64, mean64, invstd64, rm64, rv64 = R.bn_train(x, gamma, beta, rm, rv, 0.0, 1e-5, relu)
    keep = (1 - mom).astype(np.float64)
    rm64 = keep * rm + mom.astype(np.float64) * mean64
    rv64 = keep * rv + mom.astype(np.float64) * (1 / invstd64**2 - 1e-5) * n / max(n - 1, 1)
    y, mean, invstd = nb.batchnorm_forward_train(x, gamma, beta, rm, rv, mom, 1e-5, relu=relu,
                                                 out=np.empty((n, c), np.float32))
    assert R.relerr(mean, mean64) < 1e-7
    assert R.relerr(invstd, invstd64) < 1e-6
    assert R.scaled_err(y, y64, max(1.0, np.abs(y64).max())) < 1e-6
    assert R.relerr(rm, rm64) < 1e-6 and R.relerr(rv, rv64) < 1e-5
    dy = rng.standard_normal((n, c)).astype(np.float32)
    dg, db = np.empty(c, np.float32), np.empty(c, np.float32)
    dx = nb.batchnorm_backward(dy, x, gamma, mean, invstd, dg, db, y=y if relu else None)
    dx64, dg64, db64 = R.bn_backward(dy, x, gamma, mean, invstd, y if relu else None)
    sdx, sdg, sdb = R.bn_backward_scales(dy, x, gamma, mean, invstd, y if relu else None)
    assert R.ulp_err(dx, dx64, sdx) < 1e-5
    assert R.ulp_err(dg, dg64, sdg) < 1e-6 and R.ulp_err(db, db64, sdb) < 1e-6


def test_batchnorm_kernel_of_huge_activations_is_the_float64_reference(rng):
    """Activations near 1e30 square past float32's range; the kernel sums in double, as the
    reference does, so the result is the reference's (finite), not inf or NaN."""
    nb = NumpyBackend(threads=2)
    assert (nb.native is not None) == _compiler_here()
    x, gamma, beta = _bn_args(rng, 16, 40, scale=1e30)
    y, mean, _ = nb.batchnorm_forward_train(x, gamma, beta, np.zeros(40, np.float32),
                                            np.ones(40, np.float32), 0.1, 1e-5)
    y64, mean64, *_ = R.bn_train(x, gamma, beta, np.zeros(40), np.ones(40), 0.1, 1e-5)
    if nb.native is not None:
        assert R.relerr(mean, mean64) < 1e-7
        assert R.scaled_err(y, y64, np.abs(y64).max()) < 1e-6


@pytest.mark.parametrize("opt", ["sgd", "momentum", "rmsprop", "adam"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_single_optimizer_kernel_against_float64(rng, opt, threads):
    """One flat vector larger than a split (``MIN_SPLIT_OPT``), cut into column ranges among
    the threads, with decay and a decay mask: within float32 rounding of float64."""
    nb = NumpyBackend(threads=threads)
    assert (nb.native is not None) == _compiler_here()
    p = (1 << 17) + 37
    w = rng.standard_normal(p).astype(np.float32)
    g = rng.standard_normal(p).astype(np.float32)
    s1 = rng.standard_normal(p).astype(np.float32) * 0.1
    s2 = rng.uniform(0.0, 1.0, p).astype(np.float32)
    mask = (rng.uniform(size=p) > 0.3).astype(np.float32)
    if opt == "rmsprop":
        s1 = s2.copy()
    w0, s10, s20 = w.copy(), s1.copy(), s2.copy()
    states = []
    if opt == "sgd":
        nb.sgd_update(w, g, 0.01, 1e-2, mask)
        w64 = R.sgd(w0, g, 0.01, 1e-2, mask)
    elif opt == "momentum":
        nb.momentum_update(w, g, s1, 0.01, 0.9, 1e-2, mask)
        w64, v64 = R.momentum(w0, g, s10, 0.01, 0.9, 1e-2, mask)
        states = [(s1, v64)]
    elif opt == "rmsprop":
        nb.rmsprop_update(w, g, s1, 0.01, 0.9, 1e-7, 1e-2, mask)
        w64, sq64 = R.rmsprop(w0, g, s10, 0.01, 0.9, 1e-7, 1e-2, mask)
        states = [(s1, sq64)]
    else:
        nb.adam_update(w, g, s1, s2, 0.01, 0.9, 0.999, 1e-8, 3, 1e-2, mask)
        w64, m64, v64 = R.adam(w0, g, s10, s20, 0.01, 0.9, 0.999, 1e-8, 3, 1e-2, mask)
        states = [(s1, m64), (s2, v64)]
    assert R.scaled_err(w, w64, np.abs(w0).max()) < 1e-6
    assert not np.array_equal(w, w0)
    for got, want in states:  # the moment averages, to float32 rounding
        assert R.scaled_err(got, want, np.abs(want).max()) < 1e-6


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_batchnorm_kernel_keeps_a_nan_through_the_relu(rng):
    """A NaN in a column (a diverging member's) stays NaN after the fused ReLU, as the
    reference's ``maximum`` keeps it: the step then sees the member's loss as NaN."""
    nb = NumpyBackend(threads=1)
    assert (nb.native is not None) == _compiler_here()
    x, gamma, beta = _bn_args(rng, 8, 20)
    x[3, 7] = np.nan
    y, _, _ = nb.batchnorm_forward_train(x, gamma, beta, np.zeros(20, np.float32),
                                         np.ones(20, np.float32), 0.1, 1e-5, relu=True)
    ref, _, _ = Backend().batchnorm_forward_train(x, gamma, beta, np.zeros(20, np.float32),
                                                  np.ones(20, np.float32), 0.1, 1e-5, relu=True)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    assert np.isnan(y[:, 7]).all() and not np.isnan(np.delete(y, 7, axis=1)).any()
