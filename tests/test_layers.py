"""Layers: numerical gradient checks in float64, batch-norm statistics and inference, repr."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import host

import gpunet as gn
from gpunet.backend import BatchTooSmallError
from gpunet.gradcheck import check_layer, check_model
from gpunet.layers import BatchNorm, Dense, Dropout, ReLU, Sigmoid, Tanh

F64 = {"backend": "cpu", "dtype": np.float64}


@pytest.mark.parametrize("bias", [True, False])
def test_dense_gradients(rng, bias):
    layer = Dense(7, 5, bias=bias, rng=rng, **F64)
    errors = check_layer(layer, rng.standard_normal((4, 7)))
    assert set(errors) == ({"x", "W", "b"} if bias else {"x", "W"})
    assert max(errors.values()) < 1e-7, errors


@pytest.mark.parametrize("n", [2, 3, 9])
def test_batchnorm_gradients_training(rng, n):
    layer = BatchNorm(6, **F64)
    layer.params["gamma"][...] = rng.uniform(0.5, 2, 6)
    layer.params["beta"][...] = rng.standard_normal(6)
    errors = check_layer(layer, rng.standard_normal((n, 6)) * 3 + 2)
    if n == 2:
        # with two samples x_hat is +-1 whatever x is: dx is ~0 and only its scale is tested
        errors.pop("x")
    assert max(errors.values()) < 1e-6, errors


def test_batchnorm_fused_relu_gradient(rng):
    """BatchNorm(relu=True) equals BatchNorm then ReLU, forward and backward."""
    x = rng.standard_normal((11, 5))
    dy = rng.standard_normal((11, 5))
    a, b, relu = BatchNorm(5, **F64), BatchNorm(5, **F64), ReLU(**F64)
    for bn in (a, b):
        bn.params["gamma"][...] = [1.0, 0.5, 2.0, 1.5, 0.7]
    ya = a.forward(x, training=True, relu=True).copy()
    yb = relu.forward(b.forward(x, training=True), training=True)
    np.testing.assert_allclose(ya, yb, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.backward(dy), b.backward(relu.backward(dy)), rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(a.grads["gamma"], b.grads["gamma"], rtol=1e-10)


@pytest.mark.parametrize("cls", [ReLU, Tanh, Sigmoid])
def test_activation_gradients(rng, cls):
    x = rng.standard_normal((5, 8)) * 2
    x[np.abs(x) < 1e-3] = 0.5  # keep ReLU away from its kink
    errors = check_layer(cls(**F64), x)
    assert errors["x"] < 1e-7, errors


def test_dropout_is_inverted_and_identity_at_inference(rng):
    d = Dropout(0.25, rng=np.random.default_rng(1), backend="cpu")
    x = rng.standard_normal((300, 40)).astype(np.float32)
    assert d.forward(x, training=False) is not None
    np.testing.assert_array_equal(d.forward(x, training=False), x)
    y = d.forward(x, training=True).copy()
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / 0.75, rtol=1e-6)
    assert abs(kept.mean() - 0.75) < 0.02
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx = d.backward(dy)
    np.testing.assert_allclose(dx, dy * kept / 0.75, rtol=1e-6)


def test_batchnorm_running_statistics_after_several_steps(be, rng):
    c, momentum = 9, 0.2
    bn = BatchNorm(c, momentum=momentum, backend=be)
    rm, rv = np.zeros(c), np.ones(c)
    for step in range(5):
        n = 8 + step
        x = (rng.standard_normal((n, c)) * (step + 1) + step).astype(np.float32)
        bn.forward(be.asarray(x), training=True)
        xd = x.astype(np.float64)
        rm = (1 - momentum) * rm + momentum * xd.mean(0)
        rv = (1 - momentum) * rv + momentum * xd.var(0, ddof=1)
    np.testing.assert_allclose(host(be, bn.running_mean), rm, rtol=1e-5)
    np.testing.assert_allclose(host(be, bn.running_var), rv, rtol=1e-5)


def test_batchnorm_inference_is_row_independent_and_changes_nothing(be, rng):
    c = 12
    bn = BatchNorm(c, backend=be)
    for _ in range(3):
        bn.forward(be.asarray(rng.standard_normal((16, c)).astype(np.float32) * 2 + 1),
                   training=True)
    rm, rv = host(be, bn.running_mean).copy(), host(be, bn.running_var).copy()
    x = rng.standard_normal((10, c)).astype(np.float32)
    full = host(be, bn.forward(be.asarray(x), training=False)).copy()
    other = np.concatenate([x[:3], rng.standard_normal((50, c)).astype(np.float32) * 100])
    part = host(be, bn.forward(be.asarray(other), training=False))[:3]
    single = host(be, bn.forward(be.asarray(x[4:5]), training=False))
    np.testing.assert_array_equal(part, full[:3])
    np.testing.assert_array_equal(single, full[4:5])
    np.testing.assert_array_equal(host(be, bn.running_mean), rm)
    np.testing.assert_array_equal(host(be, bn.running_var), rv)


def test_batchnorm_training_batch_of_one_raises(be):
    bn = BatchNorm(4, backend=be)
    with pytest.raises(BatchTooSmallError, match="at least 2 samples"):
        bn.forward(be.asarray(np.ones((1, 4), np.float32)), training=True)
    # inference on one sample is fine
    assert bn.forward(be.asarray(np.ones((1, 4), np.float32)), training=False).shape == (1, 4)


def test_batchnorm_mean_1e4_std_1e_2_against_float64_two_pass(be, rng):
    n, c = 128, 33
    x = (1e4 + 1e-2 * rng.standard_normal((n, c))).astype(np.float32)
    bn = BatchNorm(c, backend=be)
    y = host(be, bn.forward(be.asarray(x), training=True))
    xd = x.astype(np.float64)
    mean = xd.mean(0)
    var = ((xd - mean) ** 2).mean(0)
    ref = (xd - mean) / np.sqrt(var + 1e-5)
    assert np.abs(y - ref).max() / np.abs(ref).max() < 1e-5
    np.testing.assert_allclose(host(be, bn.running_var), 0.9 + 0.1 * var * n / (n - 1),
                               rtol=1e-6)


def test_reprs():
    assert repr(Dense(3, 4, bias=False, backend="cpu")) == "Dense(3, 4, bias=False, init='he')"
    assert repr(BatchNorm(8, momentum=0.01, backend="cpu")) == (
        "BatchNorm(8, momentum=0.01, eps=1e-05)")
    assert repr(Dropout(0.5, backend="cpu")) == "Dropout(p=0.5)"
    assert repr(ReLU(backend="cpu")) == "ReLU()"


def test_dense_init_scales(rng):
    he = Dense(400, 300, init="he", rng=rng, backend="cpu")
    xa = Dense(400, 300, init="xavier", rng=rng, backend="cpu")
    assert abs(np.std(he.params["W"]) - np.sqrt(2 / 400)) < 0.002
    assert abs(np.std(xa.params["W"]) - np.sqrt(1 / 400)) < 0.002
    np.testing.assert_array_equal(he.params["b"], 0)


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_whole_mlp_gradient_with_batchnorm_in_training_mode(rng, activation):
    model = gn.MLP(6, hidden=[7, 5], classes=4, batchnorm=True, activation=activation,
                   seed=int(rng.integers(1 << 30)), **F64)
    # move gamma/beta off their defaults so every path contributes
    model.params[...] += 0.1 * rng.standard_normal(model.num_params)
    x = rng.standard_normal((9, 6))
    y = rng.integers(0, 4, 9)
    assert check_model(model, x, y) < 1e-6


def test_mlp_without_batchnorm_gradient(rng):
    model = gn.MLP(5, hidden=[6], classes=3, batchnorm=False, seed=3, **F64)
    assert check_model(model, rng.standard_normal((4, 5)), rng.integers(0, 3, 4)) < 1e-7
