"""Optimizer classes over a model, state round trips, weight-decay placement, schedules."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import numpy as np
import pytest

import gpunet as gn
from gpunet.layers import BatchNorm, Dense
from gpunet.optim import (
    CosineDecay,
    ExponentialDecay,
    InverseTimeDecay,
    StepDecay,
    make_optimizer,
    make_schedule,
)


def _model():
    return gn.MLP(4, hidden=[6], classes=3, backend="cpu", seed=0)


def test_momentum_is_the_course_formula_over_steps(rng):
    m = _model()
    opt = gn.optim.Momentum(m, lr=0.1, beta=0.9)
    w, v = m.params.astype(np.float64).copy(), np.zeros(m.num_params)
    for _ in range(4):
        g = rng.standard_normal(m.num_params).astype(np.float32)
        m.grads[...] = g
        opt.step()
        v = 0.9 * v + 0.1 * g
        w = w - 0.1 * v
    np.testing.assert_allclose(m.params, w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(opt.state["v"], v, rtol=1e-5, atol=1e-7)
    assert opt.t == 4


@pytest.mark.parametrize("name", list(gn.optim.OPTIMIZERS))
def test_weight_decay_never_touches_batchnorm_or_biases(name):
    m = _model()
    opt = make_optimizer(name, m, lr=0.1, weight_decay=0.5)
    before = {(i, k): np.array(v) for i, layer in enumerate(m.layers)
              for k, v in layer.params.items()}
    m.params[...] += 1.0  # nonzero everywhere, so decay would show
    m.grads[...] = 0.0
    snapshot = m.params.copy()
    opt.step()
    for i, layer in enumerate(m.layers):
        for k, p in layer.params.items():
            changed = not np.array_equal(p, snapshot[_slice(m, i, k)].reshape(p.shape))
            if isinstance(layer, Dense) and k == "W":
                assert changed, (layer, k)
            else:
                assert not changed, (layer, k)
    assert before  # the model had parameters to look at
    assert any(isinstance(layer, BatchNorm) for layer in m.layers)


def _slice(m, i, name):
    for e in m.layout:
        if e["layer"] == i and e["name"] == name:
            return slice(e["offset"], e["offset"] + e["size"])
    raise KeyError(name)


@pytest.mark.parametrize("name", list(gn.optim.OPTIMIZERS))
def test_state_dict_round_trip_continues_identically(name, rng):
    grads = [rng.standard_normal(_model().num_params).astype(np.float32) for _ in range(6)]
    a = _model()
    oa = make_optimizer(name, a, lr=0.01)
    for g in grads[:3]:
        a.grads[...] = g
        oa.step()
    state = oa.state_dict()
    assert state["t"] == 3 and all(isinstance(state[k], np.ndarray) for k in oa.state_names)
    b = _model()
    b.params[...] = a.params
    ob = make_optimizer(name, b, lr=0.01)
    ob.load_state_dict(state)
    for g in grads[3:]:
        a.grads[...] = g
        b.grads[...] = g
        oa.step()
        ob.step()
    np.testing.assert_array_equal(a.params, b.params)


def test_bad_hyperparameters_raise():
    m = _model()
    with pytest.raises(ValueError, match="learning rate"):
        gn.optim.Adam(m, lr=0)
    with pytest.raises(ValueError, match="beta1"):
        gn.optim.Adam(m, beta1=1.0)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("lion", m)
    with pytest.raises(ValueError, match="unknown lr schedule"):
        make_schedule("warmup")


def test_schedules():
    assert StepDecay(step_size=10, gamma=0.5)(0.1, 25) == pytest.approx(0.025)
    assert ExponentialDecay(gamma=0.9)(0.1, 3) == pytest.approx(0.1 * 0.9**3)
    assert InverseTimeDecay(decay_rate=1.0)(0.2, 4) == pytest.approx(0.2 / 5)
    cos = CosineDecay(total_epochs=10)
    assert cos(0.1, 0) == pytest.approx(0.1)
    assert cos(0.1, 5) == pytest.approx(0.05)
    assert cos(0.1, 10) == pytest.approx(0.0, abs=1e-12)
    assert make_schedule("cosine", epochs=20)(1.0, 10) == pytest.approx(0.5)
    assert make_schedule("none")(0.3, 99) == 0.3
    opt = gn.optim.SGD(_model(), lr=0.1, schedule=make_schedule("exp", gamma=0.5))
    assert opt.set_epoch(2) == pytest.approx(0.025) and opt.lr == pytest.approx(0.025)
    assert math.isclose(opt.lr0, 0.1)


def test_repr():
    text = repr(gn.optim.Adam(_model(), lr=0.001))
    assert text.startswith("Adam(lr=0.001") and "beta2=0.999" in text and "t=0" in text


def test_make_schedule_reads_the_schedule_table(monkeypatch):
    """``make_schedule`` builds whatever ``SCHEDULES`` holds, and names its entries when a name
    is unknown: the table is the one list of schedules."""
    assert set(gn.optim.SCHEDULES) == {"none", "step", "exp", "cosine", "inverse"}
    for name, cls in gn.optim.SCHEDULES.items():
        assert type(make_schedule(name, epochs=7)) is cls, name

    @dataclass(frozen=True)
    class Halving(gn.optim.Schedule):
        def __call__(self, lr0: float, epoch: int) -> float:
            return lr0 / 2**epoch

    monkeypatch.setitem(gn.optim.SCHEDULES, "halving", Halving)
    assert make_schedule("halving")(1.0, 3) == 0.125
    with pytest.raises(ValueError, match="use none, step, exp, cosine, inverse, halving$"):
        make_schedule("warmup")


def test_make_optimizer_reads_the_optimizer_table(monkeypatch):
    """``make_optimizer`` builds whatever ``OPTIMIZERS`` holds; each class says which
    configuration keys it takes (``train_defaults``) and under which keyword."""
    for name, cls in gn.optim.OPTIMIZERS.items():
        assert type(make_optimizer(name, _model())) is cls
        assert "lr" in cls.train_defaults and set(cls.train_defaults) <= {
            "lr", "beta1", "beta2", "eps"}
        init = inspect.signature(cls.__init__).parameters
        for key in cls.train_defaults:
            assert cls.config_keywords.get(key, key) in init, (name, key)

    class Nesterov(gn.optim.Momentum):
        pass

    monkeypatch.setitem(gn.optim.OPTIMIZERS, "nesterov", Nesterov)
    assert type(make_optimizer("nesterov", _model(), beta=0.5)) is Nesterov
    with pytest.raises(ValueError, match="use adam, sgd, momentum, rmsprop, nesterov$"):
        make_optimizer("lion", _model())
