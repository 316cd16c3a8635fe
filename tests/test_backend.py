"""Every backend op against the float64 references of ``reference64``, on every backend, and
the backends' overrides against the reference ``Backend``'s signatures."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest
import reference64 as R
from conftest import GPU_SKIP_REASON, host, relu_mask

import gpunet as gn
from gpunet.backend import Backend, BackendUnavailableError, BatchTooSmallError, NumpyBackend
from gpunet.backend.cupy_backend import CupyBackend

SHAPES = [(2, 1), (3, 3), (17, 33), (64, 10), (5, 1000)]


def rel(a, b):
    return R.relerr(a, b)


def f32(be, a):
    """A fresh float32 copy on the backend (in-place ops must not touch the test's inputs)."""
    return be.asarray(np.array(a, dtype=np.float32))


# ---------------------------------------------------------------- activations
@pytest.mark.parametrize("shape", SHAPES)
def test_activations_forward_backward(be, rng, shape):
    x = rng.standard_normal(shape).astype(np.float32) * 3
    dy = rng.standard_normal(shape).astype(np.float32)
    xd = x.astype(np.float64)
    refs = {
        "relu": (np.maximum(xd, 0), lambda y: dy * (y > 0)),
        "tanh": (np.tanh(xd), lambda y: dy * (1 - y**2)),
        "sigmoid": (1 / (1 + np.exp(-xd)), lambda y: dy * y * (1 - y)),
    }
    for name, (y_ref, dx_ref) in refs.items():
        y = getattr(be, f"{name}_forward")(f32(be, x))
        assert rel(host(be, y), y_ref) < 1e-6, name
        dx = getattr(be, f"{name}_backward")(f32(be, dy), y)
        # the backward op is given y in float32: compare with its exact value from that y
        # (1 - y^2 cancels near |y| = 1, so the float64 y would differ for reasons not its own)
        assert rel(host(be, dx), dx_ref(host(be, y))) < 1e-5, name


def test_sigmoid_extreme_inputs_finite(be):
    x = f32(be, [[-1e4, -100.0, 0.0, 100.0, 1e4]])
    y = host(be, be.sigmoid_forward(x))
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y, [[0, 0, 0.5, 1, 1]], atol=1e-30)


# ---------------------------------------------------------------- batch norm
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("relu", [False, True])
def test_batchnorm_train_forward(be, rng, shape, relu):
    n, c = shape
    x = (rng.standard_normal(shape) * rng.uniform(0.1, 5, c) + rng.uniform(-3, 3, c))
    x = x.astype(np.float32)
    gamma = rng.uniform(0.5, 2, c).astype(np.float32)
    beta = rng.standard_normal(c).astype(np.float32)
    rm0 = rng.standard_normal(c).astype(np.float32)
    rv0 = rng.uniform(0.5, 2, c).astype(np.float32)
    rm, rv = f32(be, rm0), f32(be, rv0)
    y, mean, invstd = be.batchnorm_forward_train(f32(be, x), f32(be, gamma), f32(be, beta), rm, rv,
                                                 0.1, 1e-5, relu=relu)
    y_ref, mean_ref, invstd_ref, rm_ref, rv_ref = R.bn_train(x, gamma, beta, rm0, rv0, 0.1, 1e-5,
                                                            relu)
    assert rel(host(be, y), y_ref) < 1e-5
    assert rel(host(be, mean), mean_ref) < 1e-5
    assert rel(host(be, invstd), invstd_ref) < 1e-5
    assert rel(host(be, rm), rm_ref) < 1e-5
    assert rel(host(be, rv), rv_ref) < 1e-5


def test_batchnorm_hard_values_mean_1e4_std_1e_2(be, rng):
    """Large mean, tiny spread: a two-pass variance keeps ~3 digits where E[x^2]-E[x]^2 has none."""
    n, c = 256, 37
    x = (1e4 + 1e-2 * rng.standard_normal((n, c))).astype(np.float32)
    gamma, beta = np.ones(c, np.float32), np.zeros(c, np.float32)
    rm, rv = be.zeros((c,)), f32(be, np.ones(c))
    y, mean, invstd = be.batchnorm_forward_train(f32(be, x), f32(be, gamma), f32(be, beta), rm, rv,
                                                 0.1, 1e-5)
    y_ref, mean_ref, invstd_ref, _, rv_ref = R.bn_train(x, gamma, beta, np.zeros(c), np.ones(c),
                                                        0.1, 1e-5)
    assert rel(host(be, mean), mean_ref) < 1e-6
    # float32 inputs quantized at 1e4 have spacing ~1e-3: the variance itself is exact in
    # float64 from the same float32 numbers, and the float32 two-pass result tracks it.
    assert rel(host(be, invstd), invstd_ref) < 1e-3
    assert rel(host(be, y), y_ref) < 1e-3
    # the naive formula is badly wrong here: proof the test would catch it
    naive_var = (x.astype(np.float32) ** 2).mean(0) - x.mean(0, dtype=np.float32) ** 2
    assert rel(naive_var, 1 / invstd_ref**2 - 1e-5) > 1.0


@pytest.mark.parametrize("relu", [False, True])
def test_batchnorm_infer(be, rng, relu):
    n, c = 33, 17
    x = rng.standard_normal((n, c)).astype(np.float32) * 2 + 1
    gamma = rng.uniform(0.5, 2, c).astype(np.float32)
    beta = rng.standard_normal(c).astype(np.float32)
    rm = rng.standard_normal(c).astype(np.float32)
    rv = rng.uniform(0.5, 2, c).astype(np.float32)
    rm_d, rv_d = f32(be, rm), f32(be, rv)
    y = be.batchnorm_forward_infer(f32(be, x), f32(be, gamma), f32(be, beta), rm_d, rv_d, 1e-5,
                                   relu=relu)
    ref = R.bn_infer(x, gamma, beta, rm, rv, 1e-5, relu)
    assert rel(host(be, y), ref) < 1e-5
    np.testing.assert_array_equal(host(be, rm_d), rm)  # nothing changes in inference
    np.testing.assert_array_equal(host(be, rv_d), rv)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("relu", [False, True])
def test_batchnorm_backward(be, rng, shape, relu):
    n, c = shape
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    gamma = rng.uniform(0.5, 2, c).astype(np.float32)
    beta = rng.standard_normal(c).astype(np.float32)
    y, mean, invstd = be.batchnorm_forward_train(f32(be, x), f32(be, gamma), f32(be, beta),
                                                 be.zeros((c,)), f32(be, np.ones(c)), 0.1, 1e-5,
                                                 relu=relu)
    dgamma, dbeta = be.zeros((c,)), be.zeros((c,))
    dx = be.batchnorm_backward(f32(be, dy), f32(be, x), f32(be, gamma), mean, invstd, dgamma,
                               dbeta, y=y if relu else None)
    pre, mean_ref, invstd_ref, _, _ = R.bn_train(x, gamma, beta, 0, 1, 0.1, 1e-5)
    # through the implementation's ReLU mask (it may differ from float64's where y rounds to 0)
    y_mask = relu_mask(host(be, y), pre) if relu else None
    dx_ref, dgamma_ref, dbeta_ref = R.bn_backward(dy, x, gamma, mean_ref, invstd_ref, y_mask)
    # the sums may cancel (n = 2: x_hat is +-1): errors relative to the summed terms
    scales = R.bn_backward_scales(dy, x, gamma, mean_ref, invstd_ref, y_mask)
    for name, got, ref, sc in zip(("dx", "dgamma", "dbeta"), (dx, dgamma, dbeta),
                                  (dx_ref, dgamma_ref, dbeta_ref), scales, strict=True):
        assert R.scaled_err(host(be, got), ref, sc) < 1e-5, name


def test_batchnorm_one_sample_is_an_error(be):
    x = f32(be, [[1.0, 2.0, 3.0]])
    with pytest.raises(BatchTooSmallError, match="at least 2 samples"):
        be.batchnorm_forward_train(x, f32(be, np.ones(3)), be.zeros((3,)), be.zeros((3,)),
                                   f32(be, np.ones(3)), 0.1, 1e-5)


# ---------------------------------------------------------------- softmax
@pytest.mark.parametrize("shape", SHAPES)
def test_softmax(be, rng, shape):
    z = (rng.standard_normal(shape) * 5).astype(np.float32)
    p = host(be, be.softmax(f32(be, z)))
    assert rel(p, R.softmax(z)) < 1e-5
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-5)


@pytest.mark.parametrize("shape", [s for s in SHAPES if s[1] >= 2])
@pytest.mark.parametrize("weighted", [False, True])
def test_softmax_cross_entropy(be, rng, shape, weighted):
    n, c = shape
    z = (rng.standard_normal(shape) * 4).astype(np.float32)
    y = rng.integers(0, c, n)
    w = rng.uniform(0.2, 3, c).astype(np.float32) if weighted else None
    wd = None if w is None else f32(be, w)
    loss, dz = be.softmax_cross_entropy(f32(be, z), be.asarray(y), wd)
    loss_ref, dz_ref = R.softmax_ce(z, y, w)
    assert abs(float(loss) - loss_ref) / abs(loss_ref) < 1e-5
    assert rel(host(be, dz), dz_ref) < 1e-5


def test_softmax_cross_entropy_hard_values(be):
    z = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [5.0, 5.0, 5.0], [-1e4, 1e4, 1e4]],
                 np.float32)
    y = np.array([1, 2, 0, 1])
    loss, dz = be.softmax_cross_entropy(f32(be, z), be.asarray(y))
    loss_ref, dz_ref = R.softmax_ce(z, y)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(host(be, dz)))
    assert abs(float(loss) - loss_ref) / loss_ref < 1e-5  # loss_ref = (2e4 + 2 log 3 + log 2) / 4
    assert np.abs(host(be, dz) - dz_ref).max() < 1e-6
    p = host(be, be.softmax(f32(be, z)))
    np.testing.assert_allclose(p[1], [1 / 3] * 3, rtol=1e-6)
    np.testing.assert_allclose(p[0], [1, 0, 0], atol=1e-30)


# ---------------------------------------------------------------- dropout
def test_dropout_mask_statistics(be):
    rng = np.random.default_rng(0)
    mask = host(be, be.dropout_mask((400, 500), 0.3, rng))
    assert set(np.unique(mask)) == {0.0, np.float32(1 / 0.7)}
    keep = (mask > 0).mean()
    assert abs(keep - 0.7) < 4 * np.sqrt(0.21 / mask.size)
    # same generator state -> same mask, on any backend
    again = host(be, be.dropout_mask((400, 500), 0.3, np.random.default_rng(0)))
    np.testing.assert_array_equal(mask, again)


# ---------------------------------------------------------------- optimizer updates
def _opt_inputs(rng, size=1000):
    w = rng.standard_normal(size).astype(np.float32)
    g = rng.standard_normal(size).astype(np.float32)
    mask = (rng.random(size) < 0.5).astype(np.float32)
    return w, g, mask


@pytest.mark.parametrize("decay", [0.0, 0.01])
def test_sgd_and_momentum_updates(be, rng, decay):
    w, g, mask = _opt_inputs(rng)
    dmask = mask if decay else None
    wd = f32(be, w)
    be.sgd_update(wd, f32(be, g), 0.1, decay, f32(be, mask) if decay else None)
    assert rel(host(be, wd), R.sgd(w, g, 0.1, decay, dmask)) < 1e-5
    v0 = rng.standard_normal(w.size).astype(np.float32)
    wd, vd = f32(be, w), f32(be, v0)
    be.momentum_update(wd, f32(be, g), vd, 0.05, 0.9, decay, f32(be, mask) if decay else None)
    w_ref, v_ref = R.momentum(w, g, v0, 0.05, 0.9, decay, dmask)
    assert rel(host(be, vd), v_ref) < 1e-5
    assert rel(host(be, wd), w_ref) < 1e-5


@pytest.mark.parametrize("decay", [0.0, 0.01])
def test_rmsprop_and_adam_updates(be, rng, decay):
    w, g, mask = _opt_inputs(rng)
    dmask = mask if decay else None
    s0 = rng.uniform(0, 1, w.size).astype(np.float32)
    wd, sd = f32(be, w), f32(be, s0)
    be.rmsprop_update(wd, f32(be, g), sd, 0.01, 0.99, 1e-8, decay, f32(be, mask) if decay else None)
    w_ref, s_ref = R.rmsprop(w, g, s0, 0.01, 0.99, 1e-8, decay, dmask)
    assert rel(host(be, sd), s_ref) < 1e-5
    assert rel(host(be, wd), w_ref) < 1e-5
    m0 = rng.standard_normal(w.size).astype(np.float32) * 0.1
    v0 = rng.uniform(0, 0.1, w.size).astype(np.float32)
    for t in (1, 7):
        wd, md, vd = f32(be, w), f32(be, m0), f32(be, v0)
        be.adam_update(wd, f32(be, g), md, vd, 1e-3, 0.9, 0.999, 1e-8, t, decay,
                       f32(be, mask) if decay else None)
        w_ref, m_ref, v_ref = R.adam(w, g, m0, v0, 1e-3, 0.9, 0.999, 1e-8, t, decay, dmask)
        assert rel(host(be, md), m_ref) < 1e-5
        assert rel(host(be, vd), v_ref) < 1e-5
        assert np.abs(host(be, wd) - w_ref).max() < 1e-5


def test_adam_first_step_hand_computed(be):
    """At t=1 with zero state, Adam moves each weight by lr * sign(g) (up to eps)."""
    w = f32(be, [1.0, -2.0, 0.5])
    g = f32(be, [0.3, -4.0, 1e-3])
    m, v = be.zeros((3,)), be.zeros((3,))
    be.adam_update(w, g, m, v, 0.1, 0.9, 0.999, 1e-8, 1)
    np.testing.assert_allclose(host(be, w), [0.9, -1.9, 0.4], rtol=1e-5)
    np.testing.assert_allclose(host(be, m), [0.03, -0.4, 1e-4], rtol=1e-6)
    np.testing.assert_allclose(host(be, v), [0.3**2 * 1e-3, 16e-3, 1e-9], rtol=1e-5)


# ---------------------------------------------------------------- overrides
OPS = ["matmul", "matmuls", "batchnorm_forward_train", "batchnorm_forward_infer",
       "batchnorm_backward", "batchnorm_forward_train_inplace", "batchnorm_backward_inplace",
       "softmax", "softmax_cross_entropy", "sgd_update", "momentum_update", "rmsprop_update",
       "adam_update", "matmul_batched", "softmax_cross_entropy_packed", "sgd_update_packed",
       "momentum_update_packed", "rmsprop_update_packed", "adam_update_packed"]


@pytest.mark.parametrize("cls", [NumpyBackend, CupyBackend])
def test_overrides_keep_the_reference_signatures(cls):
    """Every op a backend overrides takes exactly the reference's parameters (names, order,
    defaults), so that a caller never needs to know which backend it holds."""
    overridden = [op for op in OPS if getattr(cls, op) is not getattr(Backend, op)]
    assert overridden  # each backend overrides something
    for op in overridden:
        ref = inspect.signature(getattr(Backend, op)).parameters
        got = inspect.signature(getattr(cls, op)).parameters
        assert [(p.name, p.kind, p.default) for p in got.values()] == [
            (p.name, p.kind, p.default) for p in ref.values()], op


# ---------------------------------------------------------------- selection
def test_get_backend_names_and_context(monkeypatch):
    cpu = gn.get_backend("cpu")
    assert isinstance(cpu, NumpyBackend) and cpu.xp is np
    assert gn.get_backend(cpu) is cpu
    with gn.use_backend("cpu") as be:
        assert gn.get_backend() is be
    monkeypatch.setenv("GPUNET_DEVICE", "cpu")
    assert gn.get_backend() is cpu
    with pytest.raises(ValueError, match="unknown device"):
        gn.get_backend("tpu")


@pytest.mark.skipif(GPU_SKIP_REASON is None, reason="a GPU is present: fallback not exercised")
def test_auto_falls_back_with_one_warning_and_gpu_fails_loudly():
    from gpunet import backend as bmod

    bmod._cache.pop("auto", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        be = gn.get_backend("auto")
    assert isinstance(be, NumpyBackend)
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 1 and "using the NumPy CPU backend" in msgs[0], msgs
    with pytest.raises(BackendUnavailableError, match=r"gpunet\[cuda12\]"):
        gn.get_backend("gpu")
