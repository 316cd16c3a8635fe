"""The optional MKL GEMM of the CPU backend (``gpunet[mkl]``; the dev extra installs it)
against a float64 product, on every operand layout the backend hands it; and which BLAS the
backend picks (MKL on Intel CPUs, NumPy's OpenBLAS elsewhere, ``GPUNET_BLAS`` to choose)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import gpunet.backend.cpu.mkl as mkl_module
from gpunet.backend.cpu.mkl import MklGemm, blas_choice, cpu_vendor, load_mkl
from gpunet.backend.numpy_backend import NumpyBackend
from gpunet.errors import ConfigError

gemm = load_mkl("mkl")  # on any CPU: the tests check its results, not its speed
needs_mkl = pytest.mark.skipif(gemm is None, reason="MKL is not installed (gpunet[mkl])")


def _views(rng, r, c):
    """(r, c) float32 operands: C-contiguous, a transposed view, a column block of a wider
    array, and a row block of a transposed wider array."""
    base = rng.standard_normal((r, c)).astype(np.float32)
    wide = rng.standard_normal((r, c + 7)).astype(np.float32)
    tall_t = rng.standard_normal((c + 5, r)).astype(np.float32)
    return {
        "C": base,
        "T": np.ascontiguousarray(base.T).T,
        "colblock": wide[:, 3:3 + c],
        "T-block": tall_t[2:2 + c].T,
    }


@needs_mkl
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (1, 5, 3), (7, 1, 4), (17, 33, 65), (64, 100, 10)])
def test_mkl_gemm_every_layout(rng, m, k, n):
    assert isinstance(gemm, MklGemm)
    for la, a in _views(rng, m, k).items():
        for lb, b in _views(rng, k, n).items():
            ref = a.astype(np.float64) @ b.astype(np.float64)
            big = np.full((m, n + 9), np.nan, np.float32)
            for out in (np.empty((m, n), np.float32), big[:, 4:4 + n]):
                assert gemm.accepts(a, b, out), (la, lb)
                gemm(a, b, out)
                np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.sqrt(k),
                                           err_msg=f"{la} @ {lb}")
            assert np.isnan(big[:, :4]).all() and np.isnan(big[:, 4 + n:]).all()


@needs_mkl
def test_mkl_refuses_what_it_cannot_do(rng):
    a = rng.standard_normal((6, 4)).astype(np.float32)
    b = rng.standard_normal((4, 5)).astype(np.float32)
    assert not gemm.accepts(a.astype(np.float64), b, np.empty((6, 5), np.float32))
    assert not gemm.accepts(a[:, ::2], b[:2], np.empty((6, 5), np.float32))  # no unit stride
    assert gemm.accepts(a[::2], b, np.empty((3, 5), np.float32))  # every other row: ld 8
    assert not gemm.accepts(a, b, np.empty((5, 6), np.float32).T)  # out not row-major
    assert not gemm.accepts(a, b[:3], np.empty((6, 5), np.float32))  # shapes


@needs_mkl
def test_backend_products_on_mkl_equal_numpys(rng, monkeypatch):
    monkeypatch.setenv("GPUNET_BLAS", "mkl")
    be = NumpyBackend(threads=2)
    assert be.blas == "mkl"
    monkeypatch.setenv("GPUNET_BLAS", "openblas")
    ref_be = NumpyBackend(threads=2)
    assert ref_be.blas == "numpy"
    x = rng.standard_normal((512, 300)).astype(np.float32)
    w = rng.standard_normal((300, 1000)).astype(np.float32)
    for a, b in ((x, w), (w.T, x.T), (x[:, :10].T, x)):
        got = be.matmul(a, b, out=np.empty((a.shape[0], b.shape[1]), np.float32))
        np.testing.assert_allclose(got, ref_be.matmul(a, b), rtol=1e-4, atol=1e-4)


def test_blas_choice_by_vendor_and_environment(monkeypatch):
    monkeypatch.delenv("GPUNET_BLAS", raising=False)
    assert blas_choice("GenuineIntel") == "mkl"
    assert blas_choice("AuthenticAMD") == "openblas"  # MKL's generic path: slower there
    assert blas_choice("") == "mkl"  # unknown vendor: MKL, as before the vendor check
    for env, want in (("mkl", "mkl"), ("openblas", "openblas"), ("numpy", "openblas"),
                      ("auto", "openblas"), (" MKL ", "mkl")):
        monkeypatch.setenv("GPUNET_BLAS", env)
        assert blas_choice("AuthenticAMD") == want, env
    monkeypatch.setenv("GPUNET_BLAS", "openblas")
    assert blas_choice("GenuineIntel") == "openblas"
    monkeypatch.setenv("GPUNET_BLAS", "fastest")
    with pytest.raises(ConfigError, match="GPUNET_BLAS='fastest': use mkl, openblas or auto"):
        blas_choice("GenuineIntel")


def test_cpu_vendor_is_this_machines():
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    vendors = {ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("vendor_id")}
    if not vendors:
        pytest.skip("no vendor_id in /proc/cpuinfo (not an x86 Linux machine)")
    assert cpu_vendor() in vendors


@needs_mkl
@pytest.mark.parametrize("vendor,blas", [("GenuineIntel", "mkl"), ("AuthenticAMD", "numpy")])
def test_backend_picks_mkl_only_on_intel(monkeypatch, vendor, blas):
    monkeypatch.delenv("GPUNET_BLAS", raising=False)
    monkeypatch.setattr(mkl_module, "cpu_vendor", lambda: vendor)
    be = NumpyBackend(threads=2)
    assert be.blas == blas
    assert be.blas1 is None or be.blas1.source == ("mkl" if blas == "mkl" else "openblas")


@needs_mkl
@pytest.mark.parametrize("k", [1, 3, 16])
@pytest.mark.parametrize("shared", [False, True])
def test_mkl_batched_members_of_wide_activations(rng, k, shared):
    """``cblas_sgemm_batch`` over the strided member views a pack hands it (forward, dW with
    a transposed input, dx with transposed weights, a shared input) against float64, and
    only the given members written."""
    from gpunet.packed.model import member_view

    n, i, o = 9, 13, 6
    h = rng.standard_normal((n, i if shared else k * i)).astype(np.float32)
    w = rng.standard_normal((k, i * o + 3)).astype(np.float32)[:, :i * o].reshape(k, i, o)
    a = h if shared else member_view(h, k, i)
    z = np.full((n, k * o), np.nan, np.float32)
    assert gemm.accepts_batched(a, w, member_view(z, k, o))
    gemm.batched(a, w, member_view(z, k, o))
    want = np.matmul(np.float64(a), np.float64(w))
    assert np.abs(member_view(z, k, o) - want).max() <= 1e-5 * np.abs(want).max()
    dz = rng.standard_normal((n, k * o)).astype(np.float32)
    at = a.T if shared else a.transpose(0, 2, 1)
    gw = np.full((k, i, o), np.nan, np.float32)
    gemm.batched(at, member_view(dz, k, o), gw)
    want = np.matmul(np.float64(at), np.float64(member_view(dz, k, o)))
    assert np.abs(gw - want).max() <= 1e-5 * np.abs(want).max()
    dx = np.full((n, k * i), np.nan, np.float32)
    part = max(k - 1, 1)  # all but the last member (of more than one)
    gemm.batched(member_view(dz, k, o), w.transpose(0, 2, 1), member_view(dx, k, i),
                 range(part))
    want = np.matmul(np.float64(member_view(dz, k, o)), np.float64(w.transpose(0, 2, 1)))
    got = member_view(dx, k, i)
    assert np.abs(got[:part] - want[:part]).max() <= 1e-5 * np.abs(want).max()
    assert np.isnan(got[part:]).all()


@needs_mkl
def test_backend_batched_products_on_mkl_equal_numpys(rng, monkeypatch):
    """The backend's ``matmul_batched`` on MKL (one call, and members shared out among
    threads) and on NumPy's BLAS give the same products within float32 rounding."""
    k, n, i, o = 16, 64, 256, 128
    a = rng.standard_normal((k, n, i)).astype(np.float32)
    b = rng.standard_normal((k, i, o)).astype(np.float32)
    want = np.matmul(np.float64(a), np.float64(b))
    for threads in (1, 2):
        nb = NumpyBackend(threads=threads)
        assert nb.mkl is not None
        got = nb.matmul_batched(a, b, np.empty((k, n, o), np.float32))
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    monkeypatch.setenv("GPUNET_BLAS", "openblas")
    nb = NumpyBackend(threads=2)
    assert nb.mkl is None
    got = nb.matmul_batched(a, b, np.empty((k, n, o), np.float32))
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
