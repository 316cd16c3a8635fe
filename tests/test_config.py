"""The configuration's option lists come from the registries that implement them: every
registered activation, schedule and optimizer is accepted, an unknown one is refused with the
registry's list, and an entry added to a registry reaches the configuration."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import gpunet as gn
from gpunet import config, layers, optim
from gpunet.config import TrainConfig
from gpunet.errors import ConfigError


def test_option_lists_are_the_registries():
    assert config.ACTIVATIONS == tuple(layers.ACTIVATIONS) == ("relu", "tanh", "sigmoid")
    assert config.SCHEDULES == tuple(optim.SCHEDULES) == (
        "none", "step", "exp", "cosine", "inverse")
    # the defaults `gpunet train --help` states, with None where an optimizer has no such value
    assert config.OPTIMIZER_DEFAULTS == {
        "adam": {"lr": 2e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
        "sgd": {"lr": 0.1, "beta1": None, "beta2": None, "eps": None},
        "momentum": {"lr": 0.1, "beta1": 0.9, "beta2": None, "eps": None},
        "rmsprop": {"lr": 1e-3, "beta1": None, "beta2": 0.99, "eps": 1e-8},
    }
    assert list(config.OPTIMIZER_DEFAULTS) == list(optim.OPTIMIZERS)


@pytest.mark.parametrize("name", list(layers.ACTIVATIONS))
def test_every_activation_is_accepted_and_builds(name):
    cfg = TrainConfig(activation=name).resolve()
    model = gn.MLP(3, hidden=[4], classes=2, activation=cfg.activation, backend="cpu")
    assert isinstance(model.layers[2], layers.ACTIVATIONS[name])


@pytest.mark.parametrize("name", list(optim.SCHEDULES))
def test_every_schedule_is_accepted_and_builds(name):
    cfg = TrainConfig(lr_schedule=name).resolve()
    sched = optim.make_schedule(cfg.lr_schedule, epochs=cfg.epochs, **cfg.schedule_kwargs())
    assert type(sched) is optim.SCHEDULES[name]


@pytest.mark.parametrize("name", list(optim.OPTIMIZERS))
def test_every_optimizer_resolves_to_its_defaults_and_builds(name):
    """``resolve`` fills the optimizer's own defaults and ``optimizer_kwargs`` passes them under
    its keyword names: the built optimizer holds exactly the configured values."""
    cfg = TrainConfig(optimizer=name).resolve()
    defaults = config.OPTIMIZER_DEFAULTS[name]
    for key, value in defaults.items():
        if value is not None:
            assert getattr(cfg, key) == value, key
    model = gn.MLP(3, hidden=[4], classes=2, backend="cpu")
    opt = optim.make_optimizer(name, model, **cfg.optimizer_kwargs())
    assert type(opt) is optim.OPTIMIZERS[name]
    hp = opt.hyperparams()
    assert hp["lr"] == defaults["lr"]
    cls = optim.OPTIMIZERS[name]
    for key in cls.train_defaults:
        assert hp[cls.config_keywords.get(key, key)] == defaults[key], key
    # a value given explicitly wins over the default
    cfg = TrainConfig(optimizer=name, lr=0.125).resolve()
    assert optim.make_optimizer(name, model, **cfg.optimizer_kwargs()).lr == 0.125


def test_unknown_options_are_refused_with_the_registry_list():
    with pytest.raises(ConfigError, match=r"unknown activation 'gelu': use relu, tanh, sigmoid$"):
        TrainConfig(activation="gelu").validate()
    with pytest.raises(ConfigError, match=r"'warmup': use none, step, exp, cosine, inverse$"):
        TrainConfig(lr_schedule="warmup").validate()
    with pytest.raises(ConfigError,
                       match=r"unknown optimizer 'adamw': use adam, sgd, momentum, rmsprop$"):
        TrainConfig(optimizer="adamw").resolve()


_ADD_TO_REGISTRIES = textwrap.dedent("""
    import sys
    from dataclasses import dataclass

    import gpunet
    from gpunet import layers, optim

    # layering: the registries do not depend on the configuration
    assert "gpunet.config" not in sys.modules, "gpunet / layers / optim import gpunet.config"

    class Softsign(layers.Tanh):
        pass

    @dataclass(frozen=True)
    class Halving(optim.Schedule):
        def __call__(self, lr0, epoch):
            return lr0 / 2**epoch

    class Nesterov(optim.Momentum):
        train_defaults = {"lr": 0.05, "beta1": 0.8}

    layers.ACTIVATIONS["softsign"] = Softsign
    optim.SCHEDULES["halving"] = Halving
    optim.OPTIMIZERS["nesterov"] = Nesterov

    from gpunet import config

    assert config.ACTIVATIONS[-1] == "softsign", config.ACTIVATIONS
    assert config.SCHEDULES[-1] == "halving", config.SCHEDULES
    assert config.OPTIMIZER_DEFAULTS["nesterov"] == {
        "lr": 0.05, "beta1": 0.8, "beta2": None, "eps": None}, config.OPTIMIZER_DEFAULTS
    cfg = config.TrainConfig(activation="softsign", lr_schedule="halving",
                             optimizer="nesterov").resolve()
    assert (cfg.lr, cfg.beta1) == (0.05, 0.8)
    assert cfg.optimizer_kwargs() == {"lr": 0.05, "weight_decay": 0.0, "beta": 0.8}
    model = gpunet.MLP(3, hidden=[4], classes=2, activation=cfg.activation, backend="cpu")
    opt = optim.make_optimizer(cfg.optimizer, model, **cfg.optimizer_kwargs())
    assert type(opt) is Nesterov and opt.beta == 0.8
    assert type(optim.make_schedule(cfg.lr_schedule, **cfg.schedule_kwargs())) is Halving
    print("ok")
""")


def test_an_entry_added_to_a_registry_reaches_the_configuration():
    """A fresh interpreter registers one more activation, schedule and optimizer before the
    configuration is imported: the option lists and ``resolve`` take them up, and the values
    reach the built model and optimizer. (Also checks that importing gpunet, its layers and
    its optimizers does not import the configuration: the layering has no cycle.)"""
    proc = subprocess.run([sys.executable, "-c", _ADD_TO_REGISTRIES],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
