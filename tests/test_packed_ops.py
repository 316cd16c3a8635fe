"""The ops with a member axis (``matmul_batched``, per-column batch-norm momentum,
``softmax_cross_entropy_packed``, the ``*_update_packed`` optimizers) against K separate
single-model calls and the float64 references of ``reference64``, on every backend.

The reference ``Backend`` is a backend here too: its packed ops must give member k exactly
(bit for bit) what its single ops give for member k's scalars; the faster backends within
float32 rounding of their own single ops and of float64.
"""

from __future__ import annotations

import numpy as np
import pytest
import reference64 as R
from conftest import BACKENDS

import gpunet as gn
from gpunet.backend import Backend, NumpyBackend

KS = [1, 2, 5]


@pytest.fixture(params=[pytest.param("reference", id="reference"),
                        pytest.param("cpu-numpy", id="cpu-numpy"), *BACKENDS])
def be(request):
    """The reference Backend, the CPU backend on its NumPy paths alone (``native=False``),
    then each available backend (the CPU one on its native kernels where they build)."""
    if request.param == "reference":
        return Backend()
    if request.param == "cpu-numpy":
        return NumpyBackend(native=False)
    return gn.get_backend(request.param)


def exact(be) -> bool:
    """Whether the packed op must equal the single op bit for bit (the reference's own)."""
    return type(be) is Backend


def f32(be, a):
    return be.asarray(np.array(a, dtype=np.float32))


def host(be, a):
    return np.array(be.to_host(a))


def same(be, got, want, tol=1e-6, scale=None):
    """Bit-for-bit on the reference; elsewhere within ``tol`` times ``scale`` (the size of
    what the result was computed from; default: the largest ``|want|``)."""
    if exact(be):
        np.testing.assert_array_equal(got, want)
    else:
        scale = np.abs(want).max() if scale is None else scale
        assert R.scaled_err(got, want, scale) <= tol


# ---------------------------------------------------------------- matmul_batched
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("n,fin,c", [(1, 1, 1), (3, 7, 5), (37, 33, 17), (64, 20, 130)])
def test_matmul_batched_strided_members_of_wide_activations(be, rng, k, n, fin, c):
    """Forward ``z[k] = x[k] @ W[k]`` and the two backward products on (K, n, C) views of
    (n, K*C) activations, as the packed Dense uses them; each member as ``matmul`` alone."""
    x = rng.standard_normal((n, k * fin)).astype(np.float32)
    w = rng.standard_normal((k, fin, c)).astype(np.float32)
    dz = rng.standard_normal((n, k * c)).astype(np.float32)
    xd, wd, dzd = f32(be, x), f32(be, w), f32(be, dz)
    members = lambda a, width: a.reshape(n, k, width).transpose(1, 0, 2)  # noqa: E731
    z = be.zeros((n, k * c))
    dw = be.zeros((k, fin, c))
    dx = be.zeros((n, k * fin))
    be.matmuls_batched([(members(xd, fin), wd, members(z, c)),
                        (members(xd, fin).transpose(0, 2, 1), members(dzd, c), dw)])
    be.matmul_batched(members(dzd, c), wd.transpose(0, 2, 1), members(dx, fin))
    for i in range(k):
        xi, dzi = x[:, i * fin:(i + 1) * fin], dz[:, i * c:(i + 1) * c]
        solo = [host(be, be.matmul(f32(be, a), f32(be, b)))
                for a, b in ((xi, w[i]), (xi.T, dzi), (dzi, w[i].T))]
        got = (host(be, z)[:, i * c:(i + 1) * c], host(be, dw)[i],
               host(be, dx)[:, i * fin:(i + 1) * fin])
        for g, s, (a, b) in zip(got, solo, ((xi, w[i]), (xi.T, dzi), (dzi, w[i].T)),
                                strict=True):
            assert R.relerr(g, s) <= 1e-5
            assert R.relerr(g, a.astype(np.float64) @ b) <= 1e-5


@pytest.mark.parametrize("k", KS)
def test_matmul_batched_shared_a_equals_per_member_a(be, rng, k):
    """A shared (m, p) ``a`` (the batch read once) gives what K copies of it give."""
    m, p, q = 29, 13, 6
    a = rng.standard_normal((m, p)).astype(np.float32)
    b = rng.standard_normal((k, p, q)).astype(np.float32)
    shared, copies = be.zeros((k, m, q)), be.zeros((k, m, q))
    be.matmul_batched(f32(be, a), f32(be, b), shared)
    be.matmul_batched(f32(be, np.broadcast_to(a, (k, m, p))), f32(be, b), copies)
    assert R.relerr(host(be, shared), host(be, copies)) <= 1e-6
    assert R.relerr(host(be, shared), a.astype(np.float64) @ b) <= 1e-5


def test_matmul_batched_writes_only_its_members_columns(be, rng):
    """Out as a view of wider activations: the columns around it are left alone."""
    n, k, c = 11, 3, 4
    buf = rng.standard_normal((n, k * c + 2)).astype(np.float32)
    bd = f32(be, buf)
    a = rng.standard_normal((k, n, 5)).astype(np.float32)
    b = rng.standard_normal((k, 5, c)).astype(np.float32)
    be.matmul_batched(f32(be, a), f32(be, b), bd[:, 1:-1].reshape(n, k, c).transpose(1, 0, 2))
    got = host(be, bd)
    np.testing.assert_array_equal(got[:, [0, -1]], buf[:, [0, -1]])
    assert R.relerr(got[:, 1:-1].reshape(n, k, c).transpose(1, 0, 2),
                    a.astype(np.float64) @ b) <= 1e-5


# ---------------------------------------------------------------- batch norm momentum
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("n,c", [(2, 1), (3, 5), (70, 33)])
@pytest.mark.parametrize("inplace", [False, True])
def test_batchnorm_per_column_momentum_is_per_member(be, rng, k, n, c, inplace):
    """(n, K*C) batch norm with each member's momentum repeated over its C columns gives
    each member's outputs and running statistics as its own (n, C) call with its float."""
    x = (rng.standard_normal((n, k * c)) * 2 + rng.uniform(-3, 3, k * c)).astype(np.float32)
    gamma = rng.uniform(0.5, 2, k * c).astype(np.float32)
    beta = rng.standard_normal(k * c).astype(np.float32)
    rm0 = rng.standard_normal(k * c).astype(np.float32)
    rv0 = rng.uniform(0.5, 2, k * c).astype(np.float32)
    mom = rng.choice(np.array([0.1, 0.01, 0.5, 0.999, 0.0], np.float32), k)
    op = be.batchnorm_forward_train_inplace if inplace else be.batchnorm_forward_train
    rm, rv = f32(be, rm0), f32(be, rv0)
    y, _, invstd = op(f32(be, x), f32(be, gamma), f32(be, beta), rm, rv,
                      f32(be, np.repeat(mom, c)), 1e-5, relu=True)
    for i in range(k):
        cols = slice(i * c, (i + 1) * c)
        rm_i, rv_i = f32(be, rm0[cols]), f32(be, rv0[cols])
        y_i, _, invstd_i = op(f32(be, x[:, cols]), f32(be, gamma[cols]), f32(be, beta[cols]),
                              rm_i, rv_i, float(mom[i]), 1e-5, relu=True)
        for got, want in ((y, y_i), (invstd, invstd_i), (rm, rm_i), (rv, rv_i)):
            same(be, host(be, got)[..., cols], host(be, want), 1e-5)
        y_r, _, invstd_r, rm_r, rv_r = R.bn_train(x[:, cols], gamma[cols], beta[cols],
                                                  rm0[cols], rv0[cols], mom[i], 1e-5, True)
        assert R.relerr(host(be, rm)[cols], rm_r) <= 1e-5
        assert R.relerr(host(be, rv)[cols], rv_r) <= 1e-5
        assert R.relerr(host(be, y)[:, cols], y_r) <= 1e-5


# ---------------------------------------------------------------- softmax cross-entropy
def _logits_labels(rng, n, k, c, shared_labels=False):
    z = (rng.standard_normal((n, k * c)) * 4).astype(np.float32)
    labels = rng.integers(0, c, (n, 1 if shared_labels else k))
    return z, np.ascontiguousarray(np.broadcast_to(labels, (n, k)))


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("n,c", [(1, 2), (3, 7), (70, 10), (1000, 3), (5, 1500)])
@pytest.mark.parametrize("weighted", [False, True])
def test_softmax_cross_entropy_packed_is_each_member_alone(be, rng, k, n, c, weighted):
    z, labels = _logits_labels(rng, n, k, c, shared_labels=n == 70)
    w = rng.uniform(0.2, 3, (k, c)).astype(np.float32) if weighted else None
    losses, dz = be.softmax_cross_entropy_packed(f32(be, z), be.asarray(labels),
                                                 None if w is None else f32(be, w))
    assert tuple(losses.shape) == (k,) and losses.dtype == np.float32
    losses, dz = host(be, losses), host(be, dz)
    for i in range(k):
        cols = slice(i * c, (i + 1) * c)
        wi = None if w is None else w[i]
        loss_i, dz_i = be.softmax_cross_entropy(f32(be, z[:, cols]), be.asarray(labels[:, i]),
                                                None if wi is None else f32(be, wi))
        same(be, losses[i:i + 1], host(be, loss_i).reshape(1))
        same(be, dz[:, cols], host(be, dz_i))
        loss_r, dz_r = R.softmax_ce(z[:, cols], labels[:, i], wi)
        # the loss cancels (logsumexp - z_y) when one logit dominates: error relative to 1
        assert abs(losses[i] - loss_r) <= 1e-5 * max(abs(loss_r), 1.0)
        # softmax - 1 cancels at a dominant label: error relative to the row's weight
        wl = np.ones(n) if wi is None else wi[labels[:, i]].astype(np.float64)
        assert R.scaled_err(dz[:, cols], dz_r, (wl / wl.sum()).max()) <= 1e-5


def test_softmax_cross_entropy_packed_into_given_buffer(be, rng):
    n, k, c = 9, 3, 4
    z, labels = _logits_labels(rng, n, k, c)
    buf = be.zeros((n, k * c))
    losses, dz = be.softmax_cross_entropy_packed(f32(be, z), be.asarray(labels), dlogits=buf)
    assert dz is buf
    ref_losses, ref_dz = be.softmax_cross_entropy_packed(f32(be, z), be.asarray(labels))
    np.testing.assert_array_equal(host(be, buf), host(be, ref_dz))
    np.testing.assert_array_equal(host(be, losses), host(be, ref_losses))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the bad member's own NaN
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_softmax_cross_entropy_packed_bad_member_leaves_the_others(be, rng, bad):
    n, k, c = 40, 4, 6
    z, labels = _logits_labels(rng, n, k, c)
    w = rng.uniform(0.2, 3, (k, c)).astype(np.float32)
    clean = [host(be, a) for a in be.softmax_cross_entropy_packed(
        f32(be, z), be.asarray(labels), f32(be, w))]
    z[5, 2 * c + 1] = bad
    got = [host(be, a) for a in be.softmax_cross_entropy_packed(
        f32(be, z), be.asarray(labels), f32(be, w))]
    others = [0, 1, 3]
    np.testing.assert_array_equal(got[0][others], clean[0][others])
    keep = np.ones(k * c, bool)
    keep[2 * c:3 * c] = False
    np.testing.assert_array_equal(got[1][:, keep], clean[1][:, keep])
    assert not np.isfinite(got[0][2]) or bad == -np.inf  # -inf where it is not the label


# ---------------------------------------------------------------- optimizers
OPTS = ["sgd", "momentum", "rmsprop", "adam"]


def _hyper(rng, k):
    """Per-member scalars, each different (float32 (K,); t int64)."""
    return {
        "lr": rng.choice(np.array([1e-3, 0.05, 0.3, 1e-4, 0.01], np.float32), k, replace=False),
        "beta": rng.uniform(0.5, 0.99, k).astype(np.float32),
        "beta1": rng.uniform(0.5, 0.95, k).astype(np.float32),
        "beta2": rng.uniform(0.9, 0.9999, k).astype(np.float32),
        "eps": rng.choice(np.array([1e-8, 1e-6, 1e-3, 1e-7, 1e-4], np.float32), k,
                          replace=False),
        "decay": rng.choice(np.array([0.0, 1e-4, 0.01, 0.1, 0.0], np.float32), k,
                            replace=False),
        "t": rng.integers(1, 400, k).astype(np.int64),
    }


def _states(opt):
    return {"sgd": 0, "momentum": 1, "rmsprop": 1, "adam": 2}[opt]


def _packed_call(be, opt, w, g, st, h, mask, active):
    d = {key: be.asarray(val) for key, val in h.items()}
    if opt == "sgd":
        be.sgd_update_packed(w, g, d["lr"], d["decay"], mask, active)
    elif opt == "momentum":
        be.momentum_update_packed(w, g, st[0], d["lr"], d["beta"], d["decay"], mask, active)
    elif opt == "rmsprop":
        be.rmsprop_update_packed(w, g, st[0], d["lr"], d["beta2"], d["eps"], d["decay"], mask,
                                 active)
    else:
        be.adam_update_packed(w, g, st[0], st[1], d["lr"], d["beta1"], d["beta2"], d["eps"],
                              d["t"], d["decay"], mask, active)


def _single_call(be, opt, w, g, st, h, i, mask):
    lr, dec = float(h["lr"][i]), float(h["decay"][i])
    if opt == "sgd":
        be.sgd_update(w, g, lr, dec, mask)
    elif opt == "momentum":
        be.momentum_update(w, g, st[0], lr, float(h["beta"][i]), dec, mask)
    elif opt == "rmsprop":
        be.rmsprop_update(w, g, st[0], lr, float(h["beta2"][i]), float(h["eps"][i]), dec, mask)
    else:
        be.adam_update(w, g, st[0], st[1], lr, float(h["beta1"][i]), float(h["beta2"][i]),
                       float(h["eps"][i]), int(h["t"][i]), dec, mask)


def _reference64(opt, w, g, st, h, i, mask):
    lr, dec = float(h["lr"][i]), float(h["decay"][i])
    if opt == "sgd":
        return (R.sgd(w, g, lr, dec, mask),)
    if opt == "momentum":
        return R.momentum(w, g, st[0], lr, float(h["beta"][i]), dec, mask)
    if opt == "rmsprop":
        return R.rmsprop(w, g, st[0], lr, float(h["beta2"][i]), float(h["eps"][i]), dec, mask)
    return R.adam(w, g, st[0], st[1], lr, float(h["beta1"][i]), float(h["beta2"][i]),
                  float(h["eps"][i]), int(h["t"][i]), dec, mask)


def _opt_arrays(rng, opt, k, p):
    w = rng.standard_normal((k, p)).astype(np.float32)
    g = rng.standard_normal((k, p)).astype(np.float32)
    states = [rng.standard_normal((k, p)).astype(np.float32) * 0.1]
    states.append(rng.uniform(0, 0.1, (k, p)).astype(np.float32))
    if opt == "rmsprop":
        states = states[1:]  # s >= 0
    return w, g, states[:_states(opt)]


@pytest.mark.parametrize("opt", OPTS)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("p", [1, 1000, (1 << 17) + 3])
@pytest.mark.parametrize("masked", [False, True])
def test_optimizer_packed_rows_are_single_updates(be, rng, opt, k, p, masked):
    """Row k after the packed update is member k's single update with its own scalars."""
    w, g, st = _opt_arrays(rng, opt, k, p)
    h = _hyper(rng, k)
    mask = (rng.random(p) < 0.6).astype(np.float32) if masked else None
    wd, std = f32(be, w), [f32(be, s) for s in st]
    _packed_call(be, opt, wd, f32(be, g), std, h, None if mask is None else f32(be, mask),
                 None)
    for i in range(k):
        wi, sti = f32(be, w[i]), [f32(be, s[i]) for s in st]
        _single_call(be, opt, wi, f32(be, g[i]), sti, h, i, None if mask is None
                     else f32(be, mask))
        ref = _reference64(opt, w[i], g[i], [s[i] for s in st], h, i, mask)
        # the updates may cancel: errors relative to the size of the inputs
        scale = max(np.abs(a[i]).max() for a in (w, g, *st))
        for got, solo, want in zip([wd, *std], [wi, *sti], ref, strict=True):
            same(be, host(be, got)[i], host(be, solo), scale=scale)
            assert R.scaled_err(host(be, got)[i], want, scale) <= 1e-5


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the bad member's own NaN
@pytest.mark.parametrize("opt", OPTS)
@pytest.mark.parametrize("k", [2, 5])
def test_optimizer_packed_inactive_rows_untouched_and_bad_rows_alone(be, rng, opt, k):
    """Inactive rows (even holding NaN) keep every bit; a NaN / inf member that stays active
    changes no other member's numbers."""
    p = 777
    w, g, st = _opt_arrays(rng, opt, k, p)
    h = _hyper(rng, k)
    mask = f32(be, (rng.random(p) < 0.5).astype(np.float32))
    runs = {}
    for case in ("clean", "bad"):
        wc, gc, stc = w.copy(), g.copy(), [s.copy() for s in st]
        if case == "bad":
            gc[k - 1, ::3] = np.nan
            gc[k - 1, 1::3] = np.inf
            wc[0, 5] = np.nan  # an inactive row's NaN stays where it is
        active = np.ones(k, bool)
        active[0] = False
        wd, std = f32(be, wc), [f32(be, s) for s in stc]
        _packed_call(be, opt, wd, f32(be, gc), std, h, mask, be.asarray(active))
        runs[case] = [host(be, a) for a in (wd, *std)]
        for got, before in zip(runs[case], (wc, *stc), strict=True):
            np.testing.assert_array_equal(got[0].view(np.uint32), before[0].view(np.uint32))
    for clean, bad in zip(runs["clean"], runs["bad"], strict=True):
        np.testing.assert_array_equal(clean[1:k - 1], bad[1:k - 1])
    assert not np.isfinite(runs["bad"][0][k - 1]).all()  # the bad member's weights went bad


@pytest.mark.parametrize("opt", OPTS)
def test_optimizer_packed_all_inactive_changes_nothing(be, rng, opt):
    w, g, st = _opt_arrays(rng, opt, 3, 50)
    wd, std = f32(be, w), [f32(be, s) for s in st]
    _packed_call(be, opt, wd, f32(be, g), std, _hyper(rng, 3), None,
                 be.asarray(np.zeros(3, bool)))
    for got, before in zip((wd, *std), (w, *st), strict=True):
        np.testing.assert_array_equal(host(be, got), before)
