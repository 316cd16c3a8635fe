"""The kernels with a member axis under the CUDA emulation (tests/cuda_emu), through the host
code of ``gpunet/backend/cuda_host.py`` and through ``CupyBackend``'s packed ops (on NumPy
arrays, kernels emulated): the per-column-momentum batch-norm finish, the packed
cross-entropy (per-member weight totals, weights and losses) and the four packed optimizers,
each against the single-member kernels (bit for bit) and the float64 references, at sizes
that exercise multi-block merges and grid-stride loops (the launch geometry is shrunk).
"""

from __future__ import annotations

import numpy as np
import pytest
import reference64 as R
from test_kernels_emulated import CFG, CFG_BLOCK_SOFTMAX, EmuBackend, _f32, emu

from gpunet.backend import cuda_host as host

pytestmark = pytest.mark.skipif(emu.compiler() is None,
                                reason="no C++ compiler (g++, c++, clang++) for the CUDA emulation")


# ------------------------------------------------------------------ batch norm
@pytest.mark.parametrize("n", (2, 3, 70, 1000))
@pytest.mark.parametrize("k,c", [(1, 5), (2, 3), (5, 14)])
def test_batchnorm_finish_with_momentum_per_column(xp, launch, n, k, c):
    """Per-column momentum: a column gets the bits the scalar kernel gives it with its
    momentum (same geometry), and each member the float64 reference's statistics."""
    rng = np.random.default_rng(n * 100 + k)
    width = k * c
    x = xp.array(_f32(rng, (n, width), 0.5, 2.0))
    gamma, beta = xp.array(_f32(rng, width, 1, 0.5)), xp.array(_f32(rng, width))
    rm0, rv0 = _f32(rng, width), (rng.random(width) + 0.5).astype(np.float32)
    mom = np.array([0.1, 0.01, 0.5, 0.9, 0.0], np.float32)[:k]
    rm, rv = xp.array(rm0), xp.array(rv0)
    y, mean, invstd = host.batchnorm_forward_train(
        xp, launch, CFG, x, gamma, beta, rm, rv, xp.array(np.repeat(mom, c)), 1e-5, True,
        xp.empty((n, width)))
    for i in range(k):
        cols = slice(i * c, (i + 1) * c)
        rm_s, rv_s = xp.array(rm0), xp.array(rv0)
        y_s, _, _ = host.batchnorm_forward_train(xp, launch, CFG, x, gamma, beta, rm_s, rv_s,
                                                 float(mom[i]), 1e-5, True,
                                                 xp.empty((n, width)))
        np.testing.assert_array_equal(rm[cols], rm_s[cols])
        np.testing.assert_array_equal(rv[cols], rv_s[cols])
        np.testing.assert_array_equal(y[:, cols], y_s[:, cols])
        want = R.bn_train(x[:, cols], gamma[cols], beta[cols], rm0[cols], rv0[cols], mom[i],
                          1e-5, True)
        for got, ref in zip((y[:, cols], mean[cols], invstd[cols], rm[cols], rv[cols]), want,
                            strict=True):
            assert R.relerr(got, ref) < R.TOL


def test_batchnorm_names_the_per_column_finish(xp, launch):
    rng = np.random.default_rng(3)
    x = xp.array(_f32(rng, (9, 8)))
    mod = emu.build("batchnorm.cu")
    start = len(mod.launches)
    host.batchnorm_forward_train(xp, launch, CFG, x, xp.array(np.ones(8, np.float32)),
                                 xp.zeros((8,)), xp.zeros((8,)), xp.array(np.ones(8, np.float32)),
                                 xp.array(np.full(8, 0.1, np.float32)), 1e-5, False,
                                 xp.empty((9, 8)))
    names = [name for name, _, _ in mod.launches[start:]]
    assert names[1] == "batchnorm_forward_train_finish_colmomentum"


# ------------------------------------------------------------------ cross-entropy
CE_CASES = [(1, 1, 3), (3, 2, 10), (70, 5, 33), (300, 5, 10), (1000, 1, 3), (3, 2, 1100)]


@pytest.mark.parametrize("cfg", [CFG, CFG_BLOCK_SOFTMAX], ids=["warp", "block"])
@pytest.mark.parametrize("n,k,c", CE_CASES)
@pytest.mark.parametrize("weighted", [False, True])
def test_softmax_cross_entropy_packed(xp, launch, cfg, n, k, c, weighted):
    """Each member's loss and gradient are the single op's kernels' bits for that member
    alone, and within float32 rounding of float64."""
    rng = np.random.default_rng(n * 7 + k * 3 + c)
    z = xp.array(_f32(rng, (n, k * c), 0, 4))
    labels = xp.array(rng.integers(0, c, (n, k)).astype(np.int64))
    w = xp.array((rng.random((k, c)) + 0.2).astype(np.float32)) if weighted else None
    losses, dz = host.softmax_cross_entropy_packed(xp, launch, cfg, z, labels, w,
                                                   xp.empty((n, k * c)))
    assert losses.shape == (k,)
    for i in range(k):
        cols = slice(i * c, (i + 1) * c)
        zi, yi = xp.array(z[:, cols]), xp.array(labels[:, i])
        wi = None if w is None else xp.array(w[i])
        loss_i, dz_i = host.softmax_cross_entropy(xp, launch, cfg, zi, yi, wi,
                                                  xp.empty((n, c)))
        assert losses[i] == loss_i
        np.testing.assert_array_equal(dz[:, cols], dz_i)
        loss_r, dz_r = R.softmax_ce(zi, yi, wi)
        assert abs(losses[i] - loss_r) <= R.TOL * max(abs(loss_r), 1.0)
        wl = np.ones(n) if wi is None else wi[yi].astype(np.float64)
        assert R.scaled_err(dz[:, cols], dz_r, (wl / wl.sum()).max()) < R.TOL


# ------------------------------------------------------------------ optimizers
def _hyper(rng, k):
    return {"lr": rng.uniform(1e-3, 0.3, k).astype(np.float32),
            "beta": rng.uniform(0.5, 0.99, k).astype(np.float32),
            "beta1": rng.uniform(0.5, 0.95, k).astype(np.float32),
            "beta2": rng.uniform(0.9, 0.9999, k).astype(np.float32),
            "eps": rng.choice(np.array([1e-8, 1e-6, 1e-3], np.float32), k),
            "decay": rng.choice(np.array([0.0, 1e-3, 0.05], np.float32), k),
            "t": rng.integers(1, 300, k).astype(np.int64)}


def _packed(xp, launch, opt, w, g, st, h, mask, active):
    d = {key: xp.array(val) for key, val in h.items()}
    if opt == "sgd":
        host.sgd_update_packed(xp, launch, CFG, w, g, d["lr"], d["decay"], mask, active)
    elif opt == "momentum":
        host.momentum_update_packed(xp, launch, CFG, w, g, st[0], d["lr"], d["beta"],
                                    d["decay"], mask, active)
    elif opt == "rmsprop":
        host.rmsprop_update_packed(xp, launch, CFG, w, g, st[0], d["lr"], d["beta2"], d["eps"],
                                   d["decay"], mask, active)
    else:
        host.adam_update_packed(xp, launch, CFG, w, g, st[0], st[1], d["lr"], d["beta1"],
                                d["beta2"], d["eps"], d["t"], d["decay"], mask, active)


def _single(launch, opt, w, g, st, h, i, mask):
    lr, dec = float(h["lr"][i]), float(h["decay"][i])
    if opt == "sgd":
        host.sgd_update(launch, CFG, w, g, lr, dec, mask)
    elif opt == "momentum":
        host.momentum_update(launch, CFG, w, g, st[0], lr, float(h["beta"][i]), dec, mask)
    elif opt == "rmsprop":
        host.rmsprop_update(launch, CFG, w, g, st[0], lr, float(h["beta2"][i]),
                            float(h["eps"][i]), dec, mask)
    else:
        host.adam_update(launch, CFG, w, g, st[0], st[1], lr, float(h["beta1"][i]),
                         float(h["beta2"][i]), float(h["eps"][i]), int(h["t"][i]), dec, mask)


def _ref64(opt, w, g, st, h, i, mask):
    lr, dec = float(h["lr"][i]), float(h["decay"][i])
    if opt == "sgd":
        return (R.sgd(w, g, lr, dec, mask),)
    if opt == "momentum":
        return R.momentum(w, g, st[0], lr, float(h["beta"][i]), dec, mask)
    if opt == "rmsprop":
        return R.rmsprop(w, g, st[0], lr, float(h["beta2"][i]), float(h["eps"][i]), dec, mask)
    return R.adam(w, g, st[0], st[1], lr, float(h["beta1"][i]), float(h["beta2"][i]),
                  float(h["eps"][i]), int(h["t"][i]), dec, mask)


@pytest.mark.parametrize("opt", ["sgd", "momentum", "rmsprop", "adam"])
@pytest.mark.parametrize("k,p", [(1, 1), (2, 70), (5, 1000)])
@pytest.mark.parametrize("masked,with_active", [(False, False), (True, True)])
def test_optimizers_packed(xp, launch, opt, k, p, masked, with_active):
    """Row k is the single kernel's result for member k's scalars, bit for bit; an inactive
    row keeps every bit; all within rounding of float64."""
    rng = np.random.default_rng(k * 1000 + p)
    w0, g = _f32(rng, (k, p)), xp.array(_f32(rng, (k, p)))
    nst = {"sgd": 0, "momentum": 1, "rmsprop": 1, "adam": 2}[opt]
    st0 = [np.abs(_f32(rng, (k, p), 0, 0.1)) for _ in range(nst)]
    h = _hyper(rng, k)
    mask = xp.array((rng.random(p) < 0.5).astype(np.float32)) if masked else None
    active = np.arange(k) % 2 == 0 if with_active else None
    w, st = xp.array(w0), [xp.array(s) for s in st0]
    _packed(xp, launch, opt, w, g, st, h, mask, None if active is None else xp.array(active))
    for i in range(k):
        if active is not None and not active[i]:
            for got, before in zip((w, *st), (w0, *st0), strict=True):
                np.testing.assert_array_equal(got[i], before[i])
            continue
        wi, sti = xp.array(w0[i]), [xp.array(s[i]) for s in st0]
        _single(launch, opt, wi, xp.array(g[i]), sti, h, i, mask)
        scale = max(np.abs(a[i]).max() for a in (w0, g, *st0))
        ref = _ref64(opt, w0[i], g[i], [s[i] for s in st0], h, i, mask)
        for got, solo, want in zip((w, *st), (wi, *sti), ref, strict=True):
            np.testing.assert_array_equal(got[i], solo)
            assert R.scaled_err(got[i], want, scale) < R.TOL


# ------------------------------------------------------------------ through the backend class
def test_backend_packed_ops_launch_their_kernels_and_match_the_reference():
    """``CupyBackend``'s packed ops (guards, host functions, kernels) on NumPy arrays give the
    reference ``Backend``'s results within float32 rounding, through the packed kernels."""
    from gpunet.backend import Backend

    be, ref = EmuBackend(), Backend()
    rng = np.random.default_rng(11)
    n, k, c, p = 37, 3, 6, 500
    z, labels = _f32(rng, (n, k * c), 0, 3), rng.integers(0, c, (n, k))
    cw = (rng.random((k, c)) + 0.2).astype(np.float32)
    got, want = (b.softmax_cross_entropy_packed(z, labels, cw) for b in (be, ref))
    assert R.relerr(got[0], want[0]) < R.TOL and R.relerr(got[1], want[1]) < R.TOL
    h = _hyper(rng, k)
    w0, g, m0, v0 = (np.abs(_f32(rng, (k, p))) for _ in range(4))
    active = np.array([True, False, True])
    outs = []
    for b in (be, ref):
        w, m, v = w0.copy(), m0.copy(), v0.copy()
        b.adam_update_packed(w, g, m, v, h["lr"], h["beta1"], h["beta2"], h["eps"], h["t"],
                             h["decay"], None, active)
        outs.append((w, m, v))
    for a, r in zip(*outs, strict=True):
        assert R.relerr(a, r) < R.TOL
    x = _f32(rng, (n, k * c))
    mom = np.repeat(np.array([0.1, 0.3, 0.01], np.float32), c)
    stats = [[np.zeros(k * c, np.float32), np.ones(k * c, np.float32)] for _ in range(2)]
    for b, (rm, rv) in zip((be, ref), stats, strict=True):
        b.batchnorm_forward_train(x, np.ones(k * c, np.float32), np.zeros(k * c, np.float32),
                                  rm, rv, mom, 1e-5)
    assert R.relerr(stats[0][0], stats[1][0]) < R.TOL
    assert R.relerr(stats[0][1], stats[1][1]) < R.TOL
    assert {"softmax_cross_entropy_packed_weight_total",
            "softmax_cross_entropy_packed_weight_apply",
            "softmax_cross_entropy_packed_loss_reduce", "adam_update_packed_scalars",
            "adam_update_packed", "batchnorm_forward_train_finish_colmomentum"} <= set(be.calls)


# ------------------------------------------------------------------ strided-batched GEMM
def _cublas_sgemm_strided_batched(ta, tb, m, n, k, a_buf, lda, sa, b_buf, ldb, sb, c_buf, ldc,
                                  sc, batch):
    """cuBLAS' column-major ``C_i = op(A_i) @ op(B_i)`` on flat float buffers (element
    offsets), as its documentation defines it."""
    for i in range(batch):
        def mat(buf, off, rows, cols, ld):
            return np.lib.stride_tricks.as_strided(buf[off:], (rows, cols), (4, 4 * ld))
        a = mat(a_buf, i * sa, *((m, k) if ta == 0 else (k, m)), lda)
        b = mat(b_buf, i * sb, *((k, n) if tb == 0 else (n, k)), ldb)
        c = mat(c_buf, i * sc, m, n, ldc)
        c[...] = (a if ta == 0 else a.T) @ (b if tb == 0 else b.T)


def _flat(x):
    """``(base buffer, element offset of x in it)``."""
    base = x
    while base.base is not None:
        base = base.base
    flat = base.reshape(-1)
    return flat, (x.__array_interface__["data"][0] - flat.__array_interface__["data"][0]) // 4


@pytest.mark.parametrize("k", (1, 2, 5))
@pytest.mark.parametrize("n,fin,c", [(1, 1, 1), (3, 7, 5), (37, 33, 17)])
def test_strided_batched_gemm_arguments_address_members_of_wide_activations(k, n, fin, c):
    """The arguments ``CublasGemm.batched`` passes, run through cuBLAS' documented
    semantics: member views of (n, K*C) activations (forward, dW, dx) and a shared input."""
    from gpunet.backend.cublas import _members_apart, batched_args, batched_layout

    rng = np.random.default_rng(n + k)
    x, dz = _f32(rng, (n, k * fin)), _f32(rng, (n, k * c))
    w = _f32(rng, (k, fin, c))
    members = lambda a, width: a.reshape(n, k, width).transpose(1, 0, 2)  # noqa: E731
    z, dw, dx = np.zeros((n, k * c), np.float32), np.zeros_like(w), np.zeros_like(x)
    shared_out = np.zeros((k, n, c), np.float32)
    cases = [(members(x, fin), w, members(z, c)),
             (members(x, fin).transpose(0, 2, 1), members(dz, c), dw),
             (members(dz, c), w.transpose(0, 2, 1), members(dx, fin)),
             (x[:, :fin], w, shared_out)]
    for a, b, out in cases:
        lay = batched_layout(out)
        assert lay is not None and lay[0] == 0 and _members_apart(lay, k, *out.shape[1:])
        ta, tb, mm, nn, kk, lda, sa, ldb, sb, ldc, sc, batch = batched_args(a, b, out)
        (bb, ob), (ab, oa), (cb_, oc) = _flat(b), _flat(a), _flat(out)
        _cublas_sgemm_strided_batched(ta, tb, mm, nn, kk, bb[ob:], lda, sa, ab[oa:], ldb, sb,
                                      cb_[oc:], ldc, sc, batch)
        want = (a if a.ndim == 3 else a[None]).astype(np.float64) @ b
        assert R.relerr(out, want) < R.TOL


def test_strided_batched_gemm_refuses_overlapping_members():
    from gpunet.backend.cublas import _members_apart, batched_layout

    buf = np.zeros((4, 10), np.float32)
    overlapping = np.lib.stride_tricks.as_strided(buf, (3, 4, 6), (8, 40, 4))  # 2-col stride
    assert not _members_apart(batched_layout(overlapping), 3, 4, 6)
    assert batched_layout(np.zeros((3, 4, 6), np.float32)[:, :, ::2]) is None
