"""The NumPy backend's overrides against the reference ``Backend`` ops and float64, with 1-3
threads.

``NumpyBackend`` overrides the reference ops with the CPU machinery of ``gpunet/backend/cpu``
(docs/architecture.md, "Op table"): products split over its threads, batch norm in fewer
passes (and in place), optimizer updates in chunks on the level-1 BLAS. Each test runs the
override (``NumpyBackend.op``) and the reference (``Backend.op``, a different function: see
``test_fast_paths_are_overrides``) on the same inputs and compares both with the float64
references of ``reference64``, and with each other.
"""

from __future__ import annotations

import numpy as np
import pytest
import reference64 as R
from conftest import relu_mask

import gpunet as gn
from gpunet.backend import NumpyBackend
from gpunet.backend.base import Backend, BatchTooSmallError
from gpunet.backend.cpu.blas1 import load_blas1
from gpunet.backend.cpu.gemm import openblas_controllers
from gpunet.backend.cpu.mkl import load_mkl

THREADS = [1, 2, 3]
BN_SHAPES = [(2, 1), (3, 3), (17, 33), (64, 10), (5, 1000), (100, 37), (512, 1024)]


def rel(a, b):
    return R.relerr(a, b)


@pytest.fixture(params=[(t, nat) for nat in (True, False) for t in THREADS],
                ids=lambda p: f"threads{p[0]}-{'native' if p[1] else 'numpy'}")
def nb(request):
    """The backend with each thread count, on the native kernels (``cpu/native.c``) and on
    the NumPy paths (``cpu/batchnorm.py``, ``cpu/optim.py``)."""
    threads, native = request.param
    return NumpyBackend(threads=threads, native=native)


OVERRIDES = ["matmul", "matmuls", "batchnorm_forward_train", "batchnorm_forward_infer",
             "batchnorm_backward", "batchnorm_forward_train_inplace",
             "batchnorm_backward_inplace", "sgd_update", "momentum_update", "rmsprop_update",
             "adam_update"]


@pytest.mark.parametrize("op", OVERRIDES)
def test_fast_paths_are_overrides(op):
    """The fast path and the reference are two functions: comparing them tests something."""
    assert getattr(NumpyBackend, op) is not getattr(Backend, op)


# ---------------------------------------------------------------- matmul
MM_CASES = [
    # (m, k, n, transpose a, transpose b)
    (512, 784, 1024, False, False),   # forward
    (784, 512, 1024, True, False),    # dW = x.T @ dy
    (512, 1024, 1024, False, True),   # dx = dy @ W.T
    (1024, 512, 10, True, False),     # narrow: row blocks
    (512, 10, 1024, False, True),
    (300, 333, 257, False, False),    # odd sizes
    (3, 5, 2, False, False),          # tiny: one call
]


@pytest.mark.parametrize("m,k,n,ta,tb", MM_CASES)
def test_matmul_matches_float64(nb, rng, m, k, n, ta, tb):
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
    a_, b_ = (a.T if ta else a), (b.T if tb else b)
    ref = a_.astype(np.float64) @ b_.astype(np.float64)
    got = nb.matmul(a_, b_)
    assert got.shape == (m, n) and got.dtype == np.float32
    assert rel(got, ref) < 1e-5
    assert rel(got, Backend.matmul(nb, a_, b_)) < 1e-5
    # out= a view into a flat buffer, as the MLP's gradient buffer is
    flat = np.full(m * n + 7, np.nan, np.float32)
    view = flat[3:3 + m * n].reshape(m, n)
    assert nb.matmul(a_, b_, out=view) is view
    assert rel(view, ref) < 1e-5
    assert np.isnan(flat[:3]).all() and np.isnan(flat[3 + m * n:]).all()


def test_matmul_strided_out_and_aliasing(nb, rng):
    a = rng.standard_normal((256, 300)).astype(np.float32)
    b = rng.standard_normal((300, 256)).astype(np.float32)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    big = np.zeros((256, 512), np.float32)
    nb.matmul(a, b, out=big[:, ::2])  # a strided out
    assert rel(big[:, ::2], ref) < 1e-5 and not big[:, 1::2].any()
    sq = rng.standard_normal((256, 256)).astype(np.float32)
    ref2 = sq.astype(np.float64) @ sq.astype(np.float64)
    nb.matmul(sq, sq.copy(), out=sq)  # out aliases an input: one BLAS call, still right
    assert rel(sq, ref2) < 1e-5


@pytest.mark.parametrize("shapes", [
    [(1024, 512, 1024, True, False), (512, 1024, 1024, False, True)],  # dW and dx, hidden
    [(1024, 512, 10, True, False), (512, 10, 1024, False, True)],      # dW and dx, output
    [(300, 333, 257, False, False), (3, 5, 2, False, False), (64, 64, 64, False, True)],
])
def test_matmuls_side_by_side_match_float64(nb, rng, shapes):
    """``matmuls`` (the threads shared out among independent products) against float64,
    for more products than threads too; outputs are views into one flat buffer."""
    products, refs = [], []
    flat = np.full(sum(m * n for m, _, n, _, _ in shapes) + 5, np.nan, np.float32)
    at = 5
    for m, k, n, ta, tb in shapes:
        a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
        b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
        a_, b_ = (a.T if ta else a), (b.T if tb else b)
        out = flat[at:at + m * n].reshape(m, n)
        at += m * n
        products.append((a_, b_, out))
        refs.append(a_.astype(np.float64) @ b_.astype(np.float64))
    nb.matmuls(products)
    for (_, _, out), ref in zip(products, refs, strict=True):
        assert rel(out, ref) < 1e-5
    assert np.isnan(flat[:5]).all()


def test_matmuls_aliasing_falls_back(nb, rng):
    sq = rng.standard_normal((128, 128)).astype(np.float32)
    other = rng.standard_normal((128, 128)).astype(np.float32)
    ref1 = sq.astype(np.float64) @ sq.astype(np.float64)
    out2 = np.empty((128, 128), np.float32)
    ref2 = other.astype(np.float64) @ other.astype(np.float64)
    nb.matmuls([(sq, sq.copy(), sq), (other, other, out2)])  # the first writes its input
    assert rel(sq, ref1) < 1e-5 and rel(out2, ref2) < 1e-5


def test_matmul_restores_blas_threads():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    be = NumpyBackend(threads=2)
    before = [i["num_threads"] for i in threadpoolctl.threadpool_info()]
    a = np.ones((512, 512), np.float32)
    be.matmul(a, a)
    after = [i["num_threads"] for i in threadpoolctl.threadpool_info()]
    assert before == after


# ---------------------------------------------------------------- batch norm
def _bn_inputs(rng, shape, hard=False):
    n, c = shape
    if hard:
        x = 1e4 + 1e-2 * rng.standard_normal(shape)
    else:
        x = rng.standard_normal(shape) * rng.uniform(0.1, 5, c) + rng.uniform(-3, 3, c)
    gamma = rng.uniform(0.5, 2, c) * rng.choice([-1, 1], c)
    beta = rng.standard_normal(c)
    rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2, c)
    dy = rng.standard_normal(shape)
    return [np.asarray(a, np.float32) for a in (x, gamma, beta, rm, rv, dy)]


def _ref64(x, gamma, beta, rm, rv, dy, relu, y_got=None, tol=1e-5):
    """float64 batch norm [+ ReLU] and its backward (``reference64``); with ``y_got``, the
    gradient goes through the implementation's ReLU mask (see conftest.relu_mask; ``tol`` is
    y's relative accuracy)."""
    pre, mean, invstd, rm, rv = R.bn_train(x, gamma, beta, rm, rv, 0.1, 1e-5)
    mask = None
    if relu:
        mask = pre if y_got is None else relu_mask(y_got, pre, tol)
    dx, dgamma, dbeta = R.bn_backward(dy, x, gamma, mean, invstd, mask)
    y = np.maximum(pre, 0) if relu else pre
    return y, mean, invstd, rm, rv, dx, dgamma, dbeta


BN_NAMES = ["y", "mean", "invstd", "running_mean", "running_var", "dx", "dgamma", "dbeta"]


def _bn_scale(name, ref, args):
    """What an error in ``name`` is measured against: the largest value of the float64
    result ``ref`` (``_ref64``'s tuple), or for dx the size of its terms (it cancels to ~0
    for n = 2): max |dy| * max |gamma| * max invstd."""
    if name != "dx":
        return max(np.abs(ref[BN_NAMES.index(name)]).max(), 1e-30)
    return np.abs(args[5]).max() * np.abs(args[1]).max() * ref[2].max()


def _run(be, op_owner, x, gamma, beta, rm, rv, dy, relu):
    rm, rv = rm.copy(), rv.copy()
    y, mean, invstd = op_owner.batchnorm_forward_train(be, x.copy(), gamma, beta, rm, rv, 0.1,
                                                       1e-5, relu=relu)
    y = y.copy()
    dgamma, dbeta = np.zeros_like(gamma), np.zeros_like(gamma)
    dx = op_owner.batchnorm_backward(be, dy.copy(), x.copy(), gamma, mean, invstd, dgamma, dbeta,
                                     y=y if relu else None)
    return y, mean, invstd, rm, rv, dx.copy(), dgamma, dbeta


@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("relu", [False, True])
def test_batchnorm_fastpath_matches_reference_and_float64(nb, rng, shape, relu):
    args = _bn_inputs(rng, shape)
    fast = _run(nb, NumpyBackend, *args, relu)
    ref = _run(nb, Backend, *args, relu)
    # each against float64 through its own ReLU mask (they may differ where y rounds to 0)
    ref_f, ref_r = (_ref64(*args, relu, y_got=got[0]) for got in (fast, ref))
    for name, f, r, rf, rr in zip(BN_NAMES, fast, ref, ref_f, ref_r, strict=True):
        assert f.shape == r.shape and f.dtype == r.dtype, name
        scale = _bn_scale(name, ref_f, args)
        # the override against the reference (not for the ReLU's gradients: the two masks
        # may differ near 0, so each is compared through its own, with float64, below)
        if not (relu and name in ("dx", "dgamma", "dbeta")):
            assert np.abs(f - r).max() / scale < 2e-5, f"{name}: override vs reference"
        assert np.abs(f - rf).max() / scale < 1e-5, f"{name}: override vs float64"
        assert np.abs(r - rr).max() / scale < 1e-5, f"{name}: reference vs float64"


def test_batchnorm_infer_fastpath_matches_reference_and_float64(nb, rng):
    x, gamma, beta, rm, rv, _ = _bn_inputs(rng, (300, 37))
    for relu in (False, True):
        fast = nb.batchnorm_forward_infer(x, gamma, beta, rm, rv, 1e-5, relu=relu)
        ref = Backend.batchnorm_forward_infer(nb, x, gamma, beta, rm, rv, 1e-5, relu=relu)
        want = R.bn_infer(x, gamma, beta, rm, rv, 1e-5, relu)
        assert fast.dtype == ref.dtype == np.float32
        assert rel(fast, want) < 1e-5 and rel(ref, want) < 1e-5 and rel(fast, ref) < 2e-5


def test_batchnorm_fastpath_hard_values(nb, rng):
    """Mean 1e4, std 1e-2: the fast path's variance is as good as the reference's."""
    x, gamma, beta, rm, rv, dy = _bn_inputs(rng, (512, 37), hard=True)
    fast = _run(nb, NumpyBackend, x, gamma, beta, rm, rv, dy, False)
    base = _run(nb, Backend, x, gamma, beta, rm, rv, dy, False)
    ref = _ref64(x, gamma, beta, rm, rv, dy, False)
    assert rel(fast[1], ref[1]) < 1e-6  # mean
    assert rel(fast[2], ref[2]) <= max(2 * rel(base[2], ref[2]), 1e-5)  # invstd
    assert rel(fast[0], ref[0]) <= max(2 * rel(base[0], ref[0]), 1e-5)  # y


def test_batchnorm_fastpath_batch_of_one_is_an_error(nb):
    with pytest.raises(BatchTooSmallError, match="at least 2 samples"):
        nb.batchnorm_forward_train(np.ones((1, 3), np.float32), np.ones(3, np.float32),
                                   np.zeros(3, np.float32), np.zeros(3, np.float32),
                                   np.ones(3, np.float32), 0.1, 1e-5)


# ---------------------------------------------------------------- optimizers
@pytest.mark.parametrize("opt", ["sgd", "momentum", "rmsprop", "adam"])
def test_optimizers_leave_gradients_alone(nb, rng, opt):
    """Without weight decay the chunk bodies read the gradient in place: it must not change."""
    n = (1 << 17) * 2 + 12345  # several chunks and a ragged end
    w = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    g0 = g.copy()
    s1, s2 = np.zeros(n, np.float32), np.zeros(n, np.float32)
    if opt == "sgd":
        nb.sgd_update(w, g, 0.1)
    elif opt == "momentum":
        nb.momentum_update(w, g, s1, 0.1, 0.9)
    elif opt == "rmsprop":
        nb.rmsprop_update(w, g, s1, 0.1, 0.999, 1e-8)
    else:
        nb.adam_update(w, g, s1, s2, 0.1, 0.9, 0.999, 1e-8, 1)
    np.testing.assert_array_equal(g, g0)


# ---------------------------------------------------------------- optimizers on the level-1 BLAS
def _blas1_sources():
    """Every level-1 BLAS this machine has: MKL's (gpunet[mkl]) and NumPy's OpenBLAS."""
    mkl = load_mkl("mkl")  # on any CPU: tested for its results
    found = {"mkl": load_blas1(mkl.lib) if mkl is not None else None,
             "openblas": load_blas1(None, openblas_controllers())}
    return {k: v for k, v in found.items() if v is not None}


BLAS1 = _blas1_sources()


def test_blas1_found_for_numpys_openblas():
    """NumPy's wheels bundle OpenBLAS with saxpby: the default install gets the fast path."""
    assert "openblas" in BLAS1 or not any(
        lc.internal_api == "openblas" for lc in openblas_controllers())


def _opt_call(be, owner, opt, w, g, s1, s2, lr, step, decay, mask):
    """One update of ``opt`` with ``R.OPT_HYPER``, by ``owner``'s op on ``be``."""
    h = R.OPT_HYPER.get(opt, {})
    if opt == "sgd":
        owner.sgd_update(be, w, g, lr, decay, mask)
    elif opt == "momentum":
        owner.momentum_update(be, w, g, s1, lr, h["beta"], decay, mask)
    elif opt == "rmsprop":
        owner.rmsprop_update(be, w, g, s1, lr, h["beta2"], h["eps"], decay, mask)
    else:
        owner.adam_update(be, w, g, s1, s2, lr, h["beta1"], h["beta2"], h["eps"], step, decay,
                          mask)


OPT_BUILDS = [None, *sorted(BLAS1)]  # None: the chunked ufuncs (no level-1 BLAS)


@pytest.mark.parametrize("source", OPT_BUILDS, ids=lambda s: s or "ufuncs")
@pytest.mark.parametrize("opt", ["sgd", "momentum", "rmsprop", "adam"])
@pytest.mark.parametrize("n,decay,masked", [
    ((1 << 17) * 3 + 4321, 0.0, False),  # several chunks per thread, a ragged end
    ((1 << 17) + 1, 1e-2, True),         # decay on masked entries only
    (7, 1e-2, False),                     # decay everywhere, one tiny chunk
    (1, 0.0, False),
])
def test_optimizers_fastpath_match_reference_and_float64(nb, rng, source, opt, n, decay,
                                                         masked):
    """Three steps of each update through the chunked override (on saxpy / saxpby, or on
    ufuncs without a level-1 BLAS) against the reference (``Backend``'s op on the same
    backend) and against float64 textbook formulas."""
    nb.blas1 = BLAS1[source] if source else None
    w = rng.standard_normal(n).astype(np.float32)
    s1 = (rng.uniform(0, 0.01, n) if opt == "rmsprop"  # a mean square: not negative
          else rng.standard_normal(n) * 0.1).astype(np.float32)
    s2 = rng.uniform(0, 0.01, n).astype(np.float32)
    mask = (rng.random(n) < 0.7).astype(np.float32) if masked else None
    fast, ref = [a.copy() for a in (w, s1, s2)], [a.copy() for a in (w, s1, s2)]
    ref64, scales = [a.astype(np.float64) for a in (w, s1, s2)], None
    for step in (1, 2, 3):
        g = rng.standard_normal(n).astype(np.float32)
        lr = 0.01 * step
        _opt_call(nb, NumpyBackend, opt, *fast[:1], g, *fast[1:], lr, step, decay, mask)
        _opt_call(nb, Backend, opt, *ref[:1], g, *ref[1:], lr, step, decay, mask)
        ref64, scales = R.optimizer_step(opt, *ref64[:1], g, *ref64[1:], lr, step, decay, mask,
                                         scales)
    for name, f, r, r64, sc in zip(["w", "state 1", "state 2"], fast, ref, ref64, scales,
                                   strict=True):
        # float32 is 6e-8 per rounding; 2e-6 leaves room for the three steps' roundings
        assert R.ulp_err(f, r64, sc) < 2e-6, name
        assert R.ulp_err(r, r64, sc) < 2e-6, name
        assert R.ulp_err(f, r, sc) < 2e-6, name


def test_optimizer_fast_path_falls_back_on_strided_arrays(rng):
    """Arrays the BLAS path cannot take (a strided view) go to the reference, still right."""
    be = NumpyBackend(threads=2)
    w = rng.standard_normal(2000).astype(np.float32)
    g = rng.standard_normal(2000).astype(np.float32)
    m, v = np.zeros(2000, np.float32), np.zeros(2000, np.float32)
    w0 = w.copy()
    be.adam_update(w[::2], g[::2], m[::2], v[::2], 0.1, 0.9, 0.999, 1e-8, 1)
    ref, scale = R.optimizer_step("adam", w0[::2], g[::2], np.zeros(1000), np.zeros(1000), 0.1,
                                  1, 0.0, None)
    assert R.ulp_err(w[::2], ref[0], scale[0]) < 2e-6
    np.testing.assert_array_equal(w[1::2], w0[1::2])
    assert not m[1::2].any() and not v[1::2].any()


def test_blas1_off_by_environment(monkeypatch):
    monkeypatch.setenv("GPUNET_BLAS1", "off")
    assert NumpyBackend(threads=2).blas1 is None


# ---------------------------------------------------------------- batch norm, centred in place
def _run_in_place(be, owner, x, gamma, beta, rm, rv, dy, relu, bool_mask=False):
    """The MLP's CPU path by ``owner``'s ops: x centred in place by the forward, dx written
    over it, the masked gradient formed in dy (from y, or from the forward's bool mask)."""
    x, dy, rm, rv = x.copy(), dy.copy(), rm.copy(), rv.copy()
    mask = np.zeros(x.shape, bool) if (relu and bool_mask) else None
    y, mean_c, invstd = owner.batchnorm_forward_train_inplace(
        be, x, gamma, beta, rm, rv, 0.1, 1e-5, relu=relu, relu_mask=mask)
    y = y.copy()
    if mask is not None:
        np.testing.assert_array_equal(mask, y > 0)
    x64 = x.astype(np.float64)  # the centred batch: mean_c is its mean, to its spread's rounding
    assert np.abs(x64.mean(0) - mean_c).max() <= 1e-6 * x64.std(0).max()
    dgamma, dbeta = np.zeros_like(gamma), np.zeros_like(gamma)
    dx = owner.batchnorm_backward_inplace(be, dy, x, gamma, mean_c, invstd, dgamma, dbeta,
                                          y=y if relu and mask is None else None,
                                          relu_mask=mask, overwrite_dy=True)
    assert dx is x
    return y, mean_c, invstd, rm, rv, dx.copy(), dgamma, dbeta


@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("relu,bool_mask", [(False, False), (True, False), (True, True)])
def test_batchnorm_in_place_matches_reference_and_float64(nb, rng, shape, relu, bool_mask):
    """``batchnorm_*_inplace``: the override and the reference against float64 and each
    other (all but the returned mean, which is that of each one's own centred batch)."""
    args = _bn_inputs(rng, shape)
    fast = _run_in_place(nb, NumpyBackend, *args, relu, bool_mask)
    ref = _run_in_place(nb, Backend, *args, relu, bool_mask)
    ref_f, ref_r = (_ref64(*args, relu, y_got=got[0]) for got in (fast, ref))
    for name, f, r, rf, rr in zip(BN_NAMES, fast, ref, ref_f, ref_r, strict=True):
        if name == "mean":
            continue  # checked in _run_in_place, and through the running mean
        scale = _bn_scale(name, ref_f, args)
        if not (relu and name in ("dx", "dgamma", "dbeta")):  # masks may differ near 0
            assert np.abs(f - r).max() / scale < 2e-5, f"{name}: override vs reference"
        assert np.abs(f - rf).max() / scale < 1e-5, f"{name}: override vs float64"
        assert np.abs(r - rr).max() / scale < 1e-5, f"{name}: reference vs float64"


def test_batchnorm_centred_in_place_hard_values(nb, rng):
    """Mean 1e4, std 1e-2: centring in place loses nothing against the out-of-place op."""
    x, gamma, beta, rm, rv, dy = _bn_inputs(rng, (512, 37), hard=True)
    got = _run_in_place(nb, NumpyBackend, x, gamma, beta, rm, rv, dy, True, bool_mask=True)
    base = _run(nb, Backend, x, gamma, beta, rm, rv, dy, True)
    # y is good to ~1e-3 here (test_backend's hard-values test): masks may differ that near 0
    ref_g, ref_b = (_ref64(x, gamma, beta, rm, rv, dy, True, y_got=r[0], tol=2e-3)
                    for r in (got, base))
    for i in (0, 2, 5, 6, 7):  # y, invstd, dx, dgamma, dbeta
        assert rel(got[i], ref_g[i]) <= max(2 * rel(base[i], ref_b[i]), 1e-5), i
    assert rel(got[3], ref_g[3]) < 1e-6  # running mean: the true batch mean went in


@pytest.mark.parametrize("owner", [NumpyBackend, Backend])
def test_batchnorm_in_place_out_must_not_be_x(nb, rng, owner):
    x, gamma, beta, rm, rv, _ = _bn_inputs(rng, (8, 3))
    with pytest.raises(ValueError, match="out"):
        owner.batchnorm_forward_train_inplace(nb, x, gamma, beta, rm, rv, 0.1, 1e-5, out=x)


def test_batchnorm_backward_out_may_be_x_as_in_the_reference(nb, rng):
    """``out=x`` (dx over the saved batch) in the out-of-place backward: the override gives
    the reference's result, as its signature promises."""
    x, gamma, beta, rm, rv, dy = _bn_inputs(rng, (100, 37))
    y, mean, invstd = Backend.batchnorm_forward_train(nb, x, gamma, beta, rm, rv, 0.1, 1e-5)
    results = []
    for owner in (NumpyBackend, Backend):
        xc, dg, db = x.copy(), np.zeros_like(gamma), np.zeros_like(gamma)
        assert owner.batchnorm_backward(nb, dy, xc, gamma, mean, invstd, dg, db, out=xc) is xc
        results.append((xc, dg, db))
    for f, r in zip(*results, strict=True):
        assert rel(f, r) < 2e-5


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_mlp_gradients_same_with_and_without_in_place_batchnorm(nb, rng, dropout):
    """The MLP's in-place batch norm (CPU) gives the gradients of the out-of-place ops, with
    the backend's threads splitting the work, and leaves the forward output alone."""
    x = rng.standard_normal((300, 40)).astype(np.float32)
    labels = rng.integers(0, 5, 300)
    grads, logits = [], []
    for in_place in (False, True):
        nb.bn_centre_in_place = in_place
        model = gn.MLP(40, hidden=[64, 48, 32], classes=5, dropout=dropout, backend=nb, seed=3)
        out = model.forward(x, training=True).copy()
        _, dl = nb.softmax_cross_entropy(model.forward(x, training=True), labels)
        model.backward(dl)
        grads.append(model.grads.copy())
        logits.append(out)
    np.testing.assert_array_equal(logits[0], logits[1])
    assert rel(grads[1], grads[0]) < 1e-5


@pytest.mark.parametrize("layout", ["sorted", "every16th"])
def test_batchnorm_shift_from_a_sample_survives_adversarial_rows(nb, rng, layout):
    """The centring shift comes from every k-th row: sorted batches and rows placed exactly
    on the sample still give float32-accurate statistics (the sample's mean is within 4 std
    of the batch mean whatever the data)."""
    n, c = 512, 24
    x = 1e3 + rng.standard_normal((n, c))
    if layout == "sorted":
        x[: n // 2] += 50.0  # two clusters, the first sampled half of the rows
    else:
        x[::16] += 200.0  # the sampled rows sit far from the rest
    x = x.astype(np.float32)
    gamma, beta = np.ones(c, np.float32), np.zeros(c, np.float32)
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    y, mean, invstd = nb.batchnorm_forward_train(x.copy(), gamma, beta, rm, rv, 0.1, 1e-5)
    x64 = x.astype(np.float64)
    var64 = x64.var(0)
    assert rel(mean, x64.mean(0)) < 1e-7
    assert rel(invstd, 1 / np.sqrt(var64 + 1e-5)) < 2e-6
    assert np.abs(y - (x64 - x64.mean(0)) / np.sqrt(var64 + 1e-5)).max() < 1e-4


def test_mlp_second_backward_after_in_place_batchnorm_is_an_error(rng):
    """The in-place backward writes dx over the saved batch: a second backward without a new
    forward must fail loudly, not use the overwritten data."""
    model = gn.MLP(12, hidden=[16], classes=3, backend=NumpyBackend(threads=2), seed=0)
    x = rng.standard_normal((32, 12)).astype(np.float32)
    _, dl = model.backend.softmax_cross_entropy(model.forward(x, training=True),
                                                rng.integers(0, 3, 32))
    model.backward(dl)
    with pytest.raises(RuntimeError, match="one per backward"):
        model.backward(dl)


# ---------------------------------------------------------------- ops with a member axis
PACKED_OVERRIDES = ["matmul_batched", "sgd_update_packed", "momentum_update_packed",
                    "rmsprop_update_packed", "adam_update_packed"]


@pytest.mark.parametrize("op", PACKED_OVERRIDES)
def test_packed_fast_paths_are_overrides(op):
    assert getattr(NumpyBackend, op) is not getattr(Backend, op)


@pytest.mark.parametrize("k,m,p,q,shared", [(5, 64, 64, 128, False), (3, 7, 5, 3, True),
                                            (16, 256, 256, 256, False),
                                            (4, 300, 333, 257, True)])
def test_matmul_batched_fastpath_matches_reference_and_float64(nb, rng, k, m, p, q, shared):
    """Small products in one call, large ones split by members over the threads; out as
    member views of an (m, K*q) activation."""
    a = rng.standard_normal((m, p) if shared else (k, m, p)).astype(np.float32)
    b = rng.standard_normal((k, p, q)).astype(np.float32)
    fast, ref = (np.full((m, k * q), np.nan, np.float32) for _ in range(2))
    members = lambda z: z.reshape(m, k, q).transpose(1, 0, 2)  # noqa: E731
    assert nb.matmul_batched(a, b, members(fast)) is not None
    Backend.matmul_batched(nb, a, b, members(ref))
    want = a.astype(np.float64) @ b
    assert rel(members(fast), want) < 1e-5
    assert rel(members(fast), members(ref)) < 1e-5


@pytest.mark.parametrize("opt", ["sgd", "momentum", "rmsprop", "adam"])
@pytest.mark.parametrize("k,p", [(5, 1000), (3, (1 << 18) + 5), (1, 1)])
def test_optimizer_packed_fastpath_rows_are_the_single_fastpath(nb, rng, opt, k, p):
    """Each active row through the single chunked update: bit for bit the single override
    with that member's scalars, within rounding of the packed reference and of float64;
    the inactive row untouched."""
    w, g = (rng.standard_normal((k, p)).astype(np.float32) for _ in range(2))
    s1 = rng.uniform(0, 0.01, (k, p)).astype(np.float32)
    s2 = rng.uniform(0, 0.01, (k, p)).astype(np.float32)
    lr = rng.uniform(1e-3, 0.1, k).astype(np.float32)
    b1, b2 = rng.uniform(0.5, 0.95, k).astype(np.float32), rng.uniform(0.9, 0.999, k)
    b2 = b2.astype(np.float32)
    eps = rng.choice(np.array([1e-8, 1e-6, 1e-3], np.float32), k)
    decay = rng.choice(np.array([0.0, 1e-3, 0.1], np.float32), k)
    t = rng.integers(1, 50, k)
    mask = (rng.random(p) < 0.7).astype(np.float32)
    active = np.arange(k) != k - 1 if k > 1 else None
    args = {"sgd": (lr,), "momentum": (lr, b1), "rmsprop": (lr, b2, eps),
            "adam": (lr, b1, b2, eps, t)}[opt]
    nstate = {"sgd": 0, "momentum": 1, "rmsprop": 1, "adam": 2}[opt]
    fast = [a.copy() for a in (w, s1, s2)[:nstate + 1]]
    ref = [a.copy() for a in fast]
    getattr(nb, f"{opt}_update_packed")(fast[0], g, *fast[1:], *args, decay, mask, active)
    getattr(Backend, f"{opt}_update_packed")(nb, ref[0], g, *ref[1:], *args, decay, mask,
                                             active)
    for i in range(k):
        solo = [a[i].copy() for a in (w, s1, s2)[:nstate + 1]]
        if active is not None and not active[i]:
            for f, s in zip(fast, solo, strict=True):
                np.testing.assert_array_equal(f[i], s)
            continue
        scalars = [float(a[i]) if a.dtype.kind == "f" else int(a[i]) for a in args]
        getattr(nb, f"{opt}_update")(solo[0], g[i], *solo[1:], *scalars, float(decay[i]),
                                     mask)
        scale = max(np.abs(a[i]).max() for a in (w, g, s1, s2))
        for f, r, s in zip(fast, ref, solo, strict=True):
            np.testing.assert_array_equal(f[i], s)
            assert R.scaled_err(f[i], r[i], scale) < 1e-6
