"""The optional MKL GEMM of the CPU backend (``gpunet[mkl]``; the dev extra installs it)
against a float64 product, on every operand layout the backend hands it."""

from __future__ import annotations

import numpy as np
import pytest

from gpunet.backend.mkl import MklGemm, load_mkl
from gpunet.backend.numpy_backend import NumpyBackend

gemm = load_mkl()
pytestmark = pytest.mark.skipif(gemm is None, reason="MKL is not installed (gpunet[mkl])")


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


def test_mkl_refuses_what_it_cannot_do(rng):
    a = rng.standard_normal((6, 4)).astype(np.float32)
    b = rng.standard_normal((4, 5)).astype(np.float32)
    assert not gemm.accepts(a.astype(np.float64), b, np.empty((6, 5), np.float32))
    assert not gemm.accepts(a[:, ::2], b[:2], np.empty((6, 5), np.float32))  # no unit stride
    assert gemm.accepts(a[::2], b, np.empty((3, 5), np.float32))  # every other row: ld 8
    assert not gemm.accepts(a, b, np.empty((5, 6), np.float32).T)  # out not row-major
    assert not gemm.accepts(a, b[:3], np.empty((6, 5), np.float32))  # shapes


def test_backend_products_on_mkl_equal_numpys(rng, monkeypatch):
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
