"""Optimizers over the model's flat parameter buffer, and learning-rate schedules.

Formulas (the course's, named as there; ``g`` includes L2 decay ``decay * w`` on Dense
weights only, never on biases or batch norm's gamma / beta):

- SGD:       ``w -= lr * g``
- Momentum:  ``v = beta * v + (1 - beta) * g``; ``w -= lr * v``
- RMSprop:   ``s = beta2 * s + (1 - beta2) * g^2``; ``w -= lr * g / (sqrt(s) + eps)``
- Adam:      ``m = beta1 m + (1 - beta1) g``, ``v = beta2 v + (1 - beta2) g^2``,
             ``w -= lr * m_hat / (sqrt(v_hat) + eps)`` with ``m_hat = m / (1 - beta1^t)``,
             ``v_hat = v / (1 - beta2^t)``

Each ``step()`` is one backend call over the flat arrays. State is plain arrays in
``state`` plus the step count ``t``; ``state_dict`` / ``load_state_dict`` move it to and from
host NumPy arrays for checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

from .backend import Array, Backend


class HasFlatParams(Protocol):
    """What an optimizer needs: an MLP, or anything with these attributes."""

    backend: Backend
    params: Array
    grads: Array
    decay_mask: Array


# ---------------------------------------------------------------------- schedules
@dataclass(frozen=True)
class Schedule:
    """Learning rate as a function of the epoch (0-based): ``lr(lr0, epoch)``."""

    def __call__(self, lr0: float, epoch: int) -> float:
        return lr0


@dataclass(frozen=True)
class StepDecay(Schedule):
    """``lr0 * gamma ** (epoch // step_size)``."""

    step_size: int = 10
    gamma: float = 0.1

    def __call__(self, lr0: float, epoch: int) -> float:
        return lr0 * self.gamma ** (epoch // self.step_size)


@dataclass(frozen=True)
class ExponentialDecay(Schedule):
    """``lr0 * gamma ** epoch``."""

    gamma: float = 0.95

    def __call__(self, lr0: float, epoch: int) -> float:
        return lr0 * self.gamma**epoch


@dataclass(frozen=True)
class CosineDecay(Schedule):
    """``min_lr + (lr0 - min_lr) * (1 + cos(pi * epoch / total_epochs)) / 2``."""

    total_epochs: int = 100
    min_lr: float = 0.0

    def __call__(self, lr0: float, epoch: int) -> float:
        frac = min(epoch, self.total_epochs) / max(self.total_epochs, 1)
        return self.min_lr + (lr0 - self.min_lr) * (1 + math.cos(math.pi * frac)) / 2


@dataclass(frozen=True)
class InverseTimeDecay(Schedule):
    """The course's ``lr0 / (1 + decay_rate * epoch)``."""

    decay_rate: float = 1.0

    def __call__(self, lr0: float, epoch: int) -> float:
        return lr0 / (1 + self.decay_rate * epoch)


#: every learning-rate schedule by its ``--lr-schedule`` name (``none``: a constant ``lr0``);
#: ``make_schedule`` and the configuration's list of schedules both read this table
SCHEDULES: dict[str, type[Schedule]] = {
    "none": Schedule, "step": StepDecay, "exp": ExponentialDecay,
    "cosine": CosineDecay, "inverse": InverseTimeDecay,
}


def make_schedule(name: str | None, epochs: int = 100, **kw: Any) -> Schedule:
    """A schedule by its name in ``SCHEDULES`` (``none``, ``step``, ``exp``, ``cosine``,
    ``inverse``) with its keyword arguments; ``cosine`` spans ``epochs`` unless
    ``total_epochs`` is given."""
    name = (name or "none").lower()
    if name not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {name!r}: use {', '.join(SCHEDULES)}")
    if name == "cosine":
        kw.setdefault("total_epochs", epochs)
    return SCHEDULES[name](**kw)


# ---------------------------------------------------------------------- device scalars
class DeviceScalars:
    """The step count ``t`` (int64) and learning rate ``lr`` (float64) in device memory, and
    the per-step scalars ``sc`` (float32 ``[lr / (1 - beta1^t), 1 - beta2^t]``) derived from
    them on the device. A training step captured as a CUDA graph reads these, so Adam's bias
    correction and the learning-rate schedule stay right under replay."""

    def __init__(self, backend: Backend, t: int, lr: float) -> None:
        self.backend = backend
        self.t = backend.asarray(np.array([t], dtype=np.int64))
        self.lr = backend.asarray(np.array([lr], dtype=np.float64))
        self.sc = backend.zeros((2,), dtype=np.float32)

    def set_lr(self, lr: float) -> None:
        """Set the learning rate (stream-ordered: steps already queued keep the old one)."""
        self.lr.fill(float(lr))

    def set_t(self, t: int) -> None:
        self.t.fill(int(t))


# ---------------------------------------------------------------------- optimizers
class Optimizer:
    """Base: holds ``lr0``, the current ``lr``, the step count ``t`` and the state arrays."""

    #: names of the state arrays, each shaped like the flat parameters
    state_names: tuple[str, ...] = ()
    #: ``gpunet train``'s default for each hyperparameter this optimizer takes, by its
    #: ``TrainConfig`` key (``lr``, ``beta1``, ``beta2``, ``eps``); ``TrainConfig.resolve``
    #: fills unset options from here. (The keyword defaults of ``__init__`` are the library's
    #: own; their ``lr`` differs from these.)
    train_defaults: ClassVar[dict[str, float]] = {"lr": 0.1}
    #: ``TrainConfig`` key -> keyword of ``__init__``, where the two names differ
    config_keywords: ClassVar[dict[str, str]] = {}

    def __init__(
        self,
        model: HasFlatParams,
        lr: float = 0.01,
        weight_decay: float = 0.0,
        schedule: Schedule | None = None,
    ) -> None:
        if not lr > 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"weight decay must be >= 0, got {weight_decay}")
        self.model = model
        self.backend = model.backend
        self.lr0 = float(lr)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.schedule = schedule or Schedule()
        self.t = 0
        self.state: dict[str, Array] = {
            name: self.backend.zeros(model.params.shape, dtype=model.params.dtype)
            for name in self.state_names
        }

    def set_epoch(self, epoch: int) -> float:
        """Set ``lr`` from the schedule for this (0-based) epoch and return it."""
        self.lr = float(self.schedule(self.lr0, epoch))
        return self.lr

    def step(self) -> None:
        """Apply one update from ``model.grads`` to ``model.params``, in place."""
        self.t += 1
        self._update()

    def _device_betas(self) -> tuple[float, float]:
        """(beta1, beta2) of the bias-correction factors ``1 - beta^t`` (0: none)."""
        return 0.0, 0.0

    def step_device(self, scalars: DeviceScalars) -> None:
        """``step()`` with the step count and learning rate read from device memory: on the
        device ``t += 1`` and the scalars are derived, then the update kernel reads them.
        Only on a backend with device-scalar kernels (``supports_device_scalars``)."""
        self.t += 1
        be = self.backend
        be.optimizer_scalars(scalars.t, scalars.lr, scalars.sc, *self._device_betas())
        self._update_device(scalars.sc)

    def _update_device(self, sc: Array) -> None:
        raise NotImplementedError

    def _decay(self) -> tuple[float, Array | None]:
        return self.weight_decay, (self.model.decay_mask if self.weight_decay else None)

    def _update(self) -> None:
        raise NotImplementedError

    def hyperparams(self) -> dict[str, float]:
        return {"lr0": self.lr0, "lr": self.lr, "weight_decay": self.weight_decay}

    def state_dict(self) -> dict[str, Any]:
        """``{"t": int, "lr": float, <state name>: host array, ...}``."""
        out: dict[str, Any] = {"t": self.t, "lr": self.lr}
        for name, arr in self.state.items():
            out[name] = self.backend.to_host(arr).copy()
        return out

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.t = int(d["t"])
        self.lr = float(d.get("lr", self.lr))
        for name, arr in self.state.items():
            src = np.asarray(d[name])
            if src.shape != tuple(arr.shape):
                raise ValueError(f"optimizer state {name} has shape {src.shape}, "
                                 f"expected {tuple(arr.shape)}")
            arr[...] = self.backend.asarray(src, dtype=arr.dtype)

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v:g}" for k, v in self.hyperparams().items() if k != "lr0")
        return f"{type(self).__name__}({hp}, t={self.t})"


class SGD(Optimizer):
    """``w -= lr * g``."""

    train_defaults = {"lr": 0.1}

    def _update(self) -> None:
        m = self.model
        self.backend.sgd_update(m.params, m.grads, self.lr, *self._decay())

    def _update_device(self, sc: Array) -> None:
        m = self.model
        self.backend.sgd_update_dev(m.params, m.grads, sc, *self._decay())


class Momentum(Optimizer):
    """``v = beta v + (1 - beta) g``; ``w -= lr v`` (default beta 0.9)."""

    state_names = ("v",)
    train_defaults = {"lr": 0.1, "beta1": 0.9}
    config_keywords = {"beta1": "beta"}

    def __init__(self, model: HasFlatParams, lr: float = 0.01, beta: float = 0.9,
                 **kw: Any) -> None:
        _check_beta("beta", beta)
        super().__init__(model, lr, **kw)
        self.beta = float(beta)

    def _update(self) -> None:
        m = self.model
        self.backend.momentum_update(m.params, m.grads, self.state["v"], self.lr, self.beta,
                                     *self._decay())

    def _update_device(self, sc: Array) -> None:
        m = self.model
        self.backend.momentum_update_dev(m.params, m.grads, self.state["v"], sc, self.beta,
                                         *self._decay())

    def hyperparams(self) -> dict[str, float]:
        return {**super().hyperparams(), "beta": self.beta}


class RMSprop(Optimizer):
    """``s = beta2 s + (1 - beta2) g^2``; ``w -= lr g / (sqrt(s) + eps)``.

    Defaults beta2 0.99 and eps 1e-8 (PyTorch's ``alpha`` and ``eps``)."""

    state_names = ("s",)
    train_defaults = {"lr": 1e-3, "beta2": 0.99, "eps": 1e-8}

    def __init__(self, model: HasFlatParams, lr: float = 0.001, beta2: float = 0.99,
                 eps: float = 1e-8, **kw: Any) -> None:
        _check_beta("beta2", beta2)
        super().__init__(model, lr, **kw)
        self.beta2, self.eps = float(beta2), float(eps)

    def _update(self) -> None:
        m = self.model
        self.backend.rmsprop_update(m.params, m.grads, self.state["s"], self.lr, self.beta2,
                                    self.eps, *self._decay())

    def _update_device(self, sc: Array) -> None:
        m = self.model
        self.backend.rmsprop_update_dev(m.params, m.grads, self.state["s"], sc, self.beta2,
                                        self.eps, *self._decay())

    def hyperparams(self) -> dict[str, float]:
        return {**super().hyperparams(), "beta2": self.beta2, "eps": self.eps}


class Adam(Optimizer):
    """Adam with bias correction; defaults beta1 0.9, beta2 0.999, eps 1e-8."""

    state_names = ("m", "v")
    train_defaults = {"lr": 2e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}

    def __init__(self, model: HasFlatParams, lr: float = 0.001, beta1: float = 0.9,
                 beta2: float = 0.999, eps: float = 1e-8, **kw: Any) -> None:
        _check_beta("beta1", beta1)
        _check_beta("beta2", beta2)
        super().__init__(model, lr, **kw)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)

    def _update(self) -> None:
        m = self.model
        self.backend.adam_update(m.params, m.grads, self.state["m"], self.state["v"], self.lr,
                                 self.beta1, self.beta2, self.eps, self.t, *self._decay())

    def _device_betas(self) -> tuple[float, float]:
        return self.beta1, self.beta2

    def _update_device(self, sc: Array) -> None:
        m = self.model
        self.backend.adam_update_dev(m.params, m.grads, self.state["m"], self.state["v"], sc,
                                     self.beta1, self.beta2, self.eps, *self._decay())

    def hyperparams(self) -> dict[str, float]:
        return {**super().hyperparams(), "beta1": self.beta1, "beta2": self.beta2,
                "eps": self.eps}


def _check_beta(name: str, beta: float) -> None:
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {beta}")


#: every optimizer by its ``--optimizer`` name, the default (``adam``) first; the
#: configuration's option list and per-optimizer defaults are read from this table
OPTIMIZERS: dict[str, type[Optimizer]] = {
    "adam": Adam, "sgd": SGD, "momentum": Momentum, "rmsprop": RMSprop,
}


def make_optimizer(name: str, model: HasFlatParams, **kw: Any) -> Optimizer:
    """An optimizer by its name in ``OPTIMIZERS`` (``adam``, ``sgd``, ``momentum``,
    ``rmsprop``)."""
    name = name.lower()
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}: use {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](model, **kw)
