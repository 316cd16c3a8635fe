"""MLP: flat buffers, learning, softmax/logistic regression, state export, buffer reuse."""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import host

import gpunet as gn
from gpunet.layers import BatchNorm, Dense, Dropout, ReLU, Tanh


def two_spirals(n_per_class: int, rng: np.random.Generator, noise: float = 0.05):
    """Two interleaved spirals of two turns each: not separable by any linear model."""
    t = np.sqrt(rng.uniform(0.02, 1, n_per_class)) * 4 * np.pi
    a = np.stack([t * np.cos(t), t * np.sin(t)], 1) / (4 * np.pi)
    x = np.concatenate([a, -a]) + noise * rng.standard_normal((2 * n_per_class, 2))
    y = np.repeat([0, 1], n_per_class)
    return x.astype(np.float32), y


def test_public_api_names(rng):
    be = gn.get_backend("cpu")
    x = rng.standard_normal((16, 64)).astype(np.float32)
    bn = gn.layers.BatchNorm(64, momentum=0.1, eps=1e-5, backend=be)
    y = bn.forward(x, training=True)
    dx = bn.backward(np.ones_like(y))
    assert dx.shape == x.shape and set(bn.grads) == {"gamma", "beta"}
    assert bn.params["gamma"].shape == bn.params["beta"].shape == bn.running_mean.shape == (64,)
    assert bn.running_var.shape == (64,)
    dense = gn.layers.Dense(64, 32, bias=True, backend=be)
    assert dense.params["W"].shape == (64, 32) and dense.params["b"].shape == (32,)
    loss, dlogits = gn.losses.softmax_cross_entropy(dense.forward(x), np.arange(16) % 10)
    model = gn.MLP(in_features=64, hidden=[256, 256], classes=10, batchnorm=True, dropout=0.0,
                   activation="relu", backend=be, seed=0)
    logits = model.forward(x, training=True)
    model.backward(gn.losses.softmax_cross_entropy(logits, np.arange(16) % 10)[1])
    kinds = [type(layer) for layer in model.layers]
    assert kinds == [Dense, BatchNorm, ReLU, Dense, BatchNorm, ReLU, Dense]
    opt = gn.optim.Adam(model, lr=1e-3)
    opt.step()
    for cls in (gn.optim.SGD, gn.optim.Momentum, gn.optim.RMSprop):
        cls(model, lr=1e-3).step()


def test_layer_params_and_grads_are_views_into_flat_buffers(rng):
    model = gn.MLP(5, hidden=[8, 4], classes=3, dropout=0.1, backend="cpu", seed=1)
    total = 0
    for layer in model.layers:
        for name, p in layer.params.items():
            assert np.shares_memory(p, model.params), (layer, name)
            assert np.shares_memory(layer.grads[name], model.grads), (layer, name)
            total += p.size
    assert total == model.num_params == model.params.size
    # Dense before BatchNorm has no bias; the final Dense has one
    assert "b" not in model.layers[0].params and "b" in model.layers[-1].params
    assert any(isinstance(layer, Dropout) for layer in model.layers)
    # decay mask: 1 exactly on Dense weights
    w_count = sum(layer.params["W"].size for layer in model.layers if isinstance(layer, Dense))
    assert int(model.decay_mask.sum()) == w_count
    # an optimizer step changes params in place: the views see it
    w0 = model.layers[0].params["W"]
    before = w0.copy()
    x = rng.standard_normal((6, 5)).astype(np.float32)
    model.backward(gn.losses.softmax_cross_entropy(model.forward(x, True), np.arange(6) % 3)[1])
    gn.optim.SGD(model, lr=0.1).step()
    assert model.layers[0].params["W"] is w0 and not np.array_equal(w0, before)


def test_training_step_reuses_buffers(rng):
    """After the first step, forward and backward allocate no new activation buffers."""
    model = gn.MLP(10, hidden=[16, 16], classes=4, backend="cpu", seed=0)
    opt = gn.optim.Adam(model)
    x = rng.standard_normal((32, 10)).astype(np.float32)
    y = np.arange(32) % 4

    def step():
        _, d = gn.losses.softmax_cross_entropy(model.forward(x, True), y)
        model.backward(d)
        opt.step()

    step()
    ids = [{k: id(v) for k, v in layer._buffers.items()} for layer in model.layers]
    step()
    assert ids == [{k: id(v) for k, v in layer._buffers.items()} for layer in model.layers]


def test_mlp_learns_two_spirals(be, rng, seed):
    x, y = two_spirals(300, rng)
    model = gn.MLP(2, hidden=[64, 64], classes=2, backend=be, seed=seed)
    opt = gn.optim.Adam(model, lr=1e-2)
    t0 = time.perf_counter()
    for _epoch in range(600):  # most seeds need 60-150 epochs, a few over 200
        perm = rng.permutation(len(x))
        for s in range(0, len(x), 100):
            idx = perm[s:s + 100]
            _, d = gn.losses.softmax_cross_entropy(model.forward(x[idx], True),
                                                   be.asarray(y[idx]))
            model.backward(d)
            opt.step()
        if (model.predict(x) == y).mean() >= 0.99:
            break
    print(f"epochs: {_epoch + 1}, seconds: {time.perf_counter() - t0:.2f}")
    acc = (model.predict(x) == y).mean()
    assert acc >= 0.99, acc
    assert time.perf_counter() - t0 < 60  # generous: typically 1-3 s


def test_hidden_empty_is_softmax_regression_and_two_classes_is_logistic(rng):
    model = gn.MLP(4, hidden=[], classes=2, backend="cpu", seed=0)
    assert [type(layer) for layer in model.layers] == [Dense]
    model.params[...] = rng.standard_normal(model.num_params).astype(np.float32)
    x = rng.standard_normal((50, 4)).astype(np.float32)
    W, b = model.layers[0].params["W"].astype(np.float64), model.layers[0].params["b"]
    p = model.predict_proba(x)
    z = x @ W + b
    # softmax regression
    e = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(p, e / e.sum(1, keepdims=True), rtol=1e-5)
    # logistic regression on the difference of the two logits
    logistic = 1 / (1 + np.exp(-(x @ (W[:, 1] - W[:, 0]) + (b[1] - b[0]))))
    np.testing.assert_allclose(p[:, 1], logistic, rtol=1e-5)


def test_state_arrays_round_trip(rng):
    a = gn.MLP(6, hidden=[5], classes=3, backend="cpu", seed=1)
    x = rng.standard_normal((8, 6)).astype(np.float32)
    a.forward(x, training=True)  # moves the running statistics
    state = a.state_arrays()
    assert set(state) == {"params", "layers.1.running_mean", "layers.1.running_var"}
    assert all(isinstance(v, np.ndarray) for v in state.values())
    b = gn.MLP(6, hidden=[5], classes=3, backend="cpu", seed=2)
    assert not np.array_equal(b.params, a.params)
    b.load_state_arrays(state)
    np.testing.assert_array_equal(b.forward(x), a.forward(x))
    with pytest.raises(ValueError, match="params has"):
        gn.MLP(6, hidden=[4], classes=3, backend="cpu").load_state_arrays(state)


def test_seed_makes_runs_repeat_and_dropout_masks_come_from_the_model_rng(rng):
    x = rng.standard_normal((20, 5)).astype(np.float32)
    outs = []
    for _ in range(2):
        m = gn.MLP(5, hidden=[9], classes=3, dropout=0.5, backend="cpu", seed=7)
        outs.append(m.forward(x, training=True).copy())
    np.testing.assert_array_equal(outs[0], outs[1])
    m3 = gn.MLP(5, hidden=[9], classes=3, dropout=0.5, backend="cpu", seed=8)
    assert not np.array_equal(m3.forward(x, training=True), outs[0])


def test_mlp_repr_and_validation():
    m = gn.MLP(3, hidden=[4], classes=2, activation="tanh", backend="cpu")
    assert isinstance(m.layers[2], Tanh)
    text = repr(m)
    assert "MLP(params=" in text and "(1) BatchNorm(4" in text and "Tanh()" in text
    with pytest.raises(ValueError, match="unknown activation"):
        gn.MLP(3, hidden=[4], classes=2, activation="gelu", backend="cpu")
    with pytest.raises(ValueError, match=r"expects input of shape \(n, 3\)"):
        m.forward(np.ones((2, 4), np.float32))


def test_model_on_the_gpu_matches_cpu(gpu_backend, rng):
    """The same seed gives the same model on the GPU as on the CPU; a few Adam steps agree."""
    x = rng.standard_normal((64, 12)).astype(np.float32)
    y = rng.integers(0, 5, 64)
    results = []
    for backend in ("cpu", gpu_backend):
        m = gn.MLP(12, hidden=[32, 16], classes=5, backend=backend, seed=4)
        opt = gn.optim.Adam(m, lr=1e-2)
        b = m.backend
        for _ in range(5):
            _, d = gn.losses.softmax_cross_entropy(m.forward(b.asarray(x), True), b.asarray(y))
            m.backward(d)
            opt.step()
        results.append(host(b, m.params))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-4, atol=1e-5)


def test_fused_bn_relu_equals_separate_layers(be, rng):
    x = rng.standard_normal((24, 7)).astype(np.float32)
    y = rng.integers(0, 3, 24)
    grads, logits = [], []
    for fuse in (False, True):
        m = gn.MLP(7, hidden=[16, 8], classes=3, backend=be, seed=5)
        m.fuse_bn_relu = fuse
        out = m.forward(be.asarray(x), training=True)
        logits.append(host(be, out).copy())
        m.backward(gn.losses.softmax_cross_entropy(out, be.asarray(y))[1])
        grads.append(host(be, m.grads).copy())
        assert (m._fused != set()) == fuse
    np.testing.assert_allclose(logits[0], logits[1], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-7)
