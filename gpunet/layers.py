"""Layers with explicit ``forward(x, training)`` and ``backward(dy)``.

Shapes: inputs are (n, features), samples on axis 0. Every layer has ``params`` and ``grads``
dicts (empty for parameter-free layers); ``backward`` overwrites ``grads`` (there is no
accumulation, so no ``zero_grad``). Inside an ``MLP`` these arrays are views into one flat
buffer, updated in place and never rebound.

Buffers: ``forward`` and ``backward`` write into arrays the layer owns and reuses while the
batch shape stays the same, so a training step allocates nothing. The array a call returns is
therefore overwritten by the layer's next call of the same kind: copy it to keep it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .backend import Array, Backend, get_backend


class Layer:
    """Base class: owns ``params``, ``grads``, reusable buffers, and a backend."""

    #: names of parameters that L2 weight decay applies to
    decayed: tuple[str, ...] = ()

    def __init__(self, backend: Backend | str | None = None, dtype: Any = np.float32) -> None:
        self.backend = get_backend(backend)
        self.dtype = np.dtype(dtype)
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}
        self._buffers: dict[str, Array] = {}

    def _buf(self, name: str, shape: tuple[int, ...]) -> Array:
        """A reusable buffer of this shape (allocated again only when the shape changes)."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape:
            buf = self.backend.empty(shape, dtype=self.dtype)
            self._buffers[name] = buf
        return buf

    def _input(self, x: Any) -> Array:
        x = self.backend.asarray(x, dtype=self.dtype)
        if x.ndim != 2:
            raise ValueError(f"{type(self).__name__} expects (n, features) input, got {x.shape}")
        return x

    def forward(self, x: Array, training: bool = False) -> Array:
        raise NotImplementedError

    def backward(self, dy: Array) -> Array:
        raise NotImplementedError

    def _bind(self, params: dict[str, Array], grads: dict[str, Array]) -> None:
        """Copy current parameter values into ``params`` views and adopt them (MLP use)."""
        for name, view in params.items():
            view[...] = self.params[name]
            self.params[name] = view
            grads[name][...] = 0
            self.grads[name] = grads[name]

    def buffers(self) -> dict[str, Array]:
        """Non-trainable state that a checkpoint stores (batch norm's running statistics)."""
        return {}


class Dense(Layer):
    """Fully connected: ``z = x @ W + b`` with W (in, out), b (out,).

    Init: ``"he"`` draws W ~ N(0, 2 / in) (for ReLU); ``"xavier"`` draws W ~ N(0, 1 / in)
    (the course's Xavier, for tanh / sigmoid); b starts at zero. Use ``bias=False`` before
    a BatchNorm, whose beta takes the bias's place.
    """

    decayed = ("W",)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        init: str = "he",
        backend: Backend | str | None = None,
        rng: np.random.Generator | int | None = None,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__(backend, dtype)
        if in_features < 1 or out_features < 1:
            raise ValueError("Dense needs in_features >= 1 and out_features >= 1")
        self.in_features, self.out_features, self.bias, self.init = (
            int(in_features), int(out_features), bool(bias), init,
        )
        if init == "he":
            std = math.sqrt(2.0 / in_features)
        elif init == "xavier":
            std = math.sqrt(1.0 / in_features)
        else:
            raise ValueError(f"unknown init {init!r}: use 'he' or 'xavier'")
        rng = np.random.default_rng(rng)
        w = rng.standard_normal((in_features, out_features)) * std
        self.params["W"] = self.backend.asarray(w.astype(self.dtype))
        self.grads["W"] = self.backend.zeros(w.shape, dtype=self.dtype)
        if bias:
            self.params["b"] = self.backend.zeros((out_features,), dtype=self.dtype)
            self.grads["b"] = self.backend.zeros((out_features,), dtype=self.dtype)
        self._x: Array | None = None

    def forward(self, x: Array, training: bool = False) -> Array:
        x = self._input(x)
        z = self._buf("z", (x.shape[0], self.out_features))
        self.backend.matmul(x, self.params["W"], out=z)
        if self.bias:
            self.backend.add_bias(z, self.params["b"])
        self._x = x
        return z

    def backward(self, dy: Array, need_dx: bool = True) -> Array | None:
        """``dW = x.T @ dy``, ``db = sum_rows(dy)``, returns ``dx = dy @ W.T`` (``None`` with
        ``need_dx=False``: a first layer skips that product)."""
        if self._x is None:
            raise RuntimeError("Dense.backward called before forward")
        be = self.backend
        dx = None
        if need_dx:  # dW and dx are independent: one call lets the backend run them together
            dx = self._buf("dx", (dy.shape[0], self.in_features))
            be.matmuls([(self._x.T, dy, self.grads["W"]), (dy, self.params["W"].T, dx)])
        else:
            be.matmul(self._x.T, dy, out=self.grads["W"])
        if self.bias:
            be.sum_rows(dy, out=self.grads["b"])
        return dx

    def __repr__(self) -> str:
        return (
            f"Dense({self.in_features}, {self.out_features}, bias={self.bias}, "
            f"init={self.init!r})"
        )


class BatchNorm(Layer):
    """Batch normalization over (n, C) with PyTorch's conventions.

    Training: ``x_hat = (x - mu_B) / sqrt(var_B + eps)`` with the batch mean and *biased*
    batch variance, ``y = gamma * x_hat + beta``; then
    ``running = (1 - momentum) * running + momentum * batch_stat``, where the running variance
    takes the *unbiased* batch variance (times n / (n - 1)). ``momentum=0.1`` is PyTorch's
    default; Keras' ``momentum=0.99`` is ``momentum=0.01`` here. A training batch of one sample
    raises ``BatchTooSmallError``. Inference uses only the running statistics, treats each row
    independently, and changes nothing.
    """

    def __init__(
        self,
        num_features: int,
        momentum: float = 0.1,
        eps: float = 1e-5,
        backend: Backend | str | None = None,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__(backend, dtype)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if eps <= 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.num_features, self.momentum, self.eps = int(num_features), float(momentum), float(eps)
        be = self.backend
        c = self.num_features
        self.params["gamma"] = be.asarray(np.ones(c, dtype=self.dtype))
        self.params["beta"] = be.zeros((c,), dtype=self.dtype)
        self.grads["gamma"] = be.zeros((c,), dtype=self.dtype)
        self.grads["beta"] = be.zeros((c,), dtype=self.dtype)
        # statistics stay float32 (float64 only for a float64 layer, e.g. in gradient checks)
        stat_dtype = np.float64 if self.dtype == np.float64 else np.float32
        self.running_mean = be.zeros((c,), dtype=stat_dtype)
        self.running_var = be.asarray(np.ones(c, dtype=stat_dtype))
        self._saved: tuple[Any, ...] | None = None

    def forward(self, x: Array, training: bool = False, relu: bool = False,
                inplace: bool = False) -> Array:
        """``relu=True`` fuses a following ReLU: ``max(y, 0)``. ``inplace=True`` lets a
        training forward overwrite ``x`` with ``x - shift`` (kept for the backward, which then
        skips its centring pass and returns its dx in ``x``'s memory); the MLP passes it for
        its own Dense outputs where the backend supports it (``bn_centre_in_place``)."""
        x = self._input(x)
        if x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm({self.num_features}) got input of width {x.shape[1]}")
        y = self._buf("y", x.shape)
        be, p = self.backend, self.params
        if training:
            centred = bool(inplace and be.bn_centre_in_place)
            mask = None
            if centred:  # x is overwritten; y > 0 kept as bool (the backward reads 1 byte)
                mask = self._mask_buf(x.shape) if relu else None
                y, mean, invstd = be.batchnorm_forward_train_inplace(
                    x, p["gamma"], p["beta"], self.running_mean, self.running_var,
                    self.momentum, self.eps, relu=relu, out=y, relu_mask=mask,
                )
            else:
                y, mean, invstd = be.batchnorm_forward_train(
                    x, p["gamma"], p["beta"], self.running_mean, self.running_var,
                    self.momentum, self.eps, relu=relu, out=y,
                )
            self._saved = (x, mean, invstd, y if relu else None, centred, mask)
        else:
            be.batchnorm_forward_infer(
                x, p["gamma"], p["beta"], self.running_mean, self.running_var,
                self.eps, relu=relu, out=y,
            )
        return y

    def backward(self, dy: Array, overwrite_dy: bool = False) -> Array:
        """Backward of the training forward (fills ``grads["gamma"]``, ``grads["beta"]``).
        ``overwrite_dy=True`` lets the op use ``dy``'s memory for the masked gradient."""
        if self._saved is None:
            raise RuntimeError("BatchNorm.backward needs a forward with training=True first "
                               "(one per backward when the forward ran in place)")
        x, mean, invstd, y, centred, mask = self._saved
        be, gamma, grads = self.backend, self.params["gamma"], self.grads
        if not centred:
            return be.batchnorm_backward(dy, x, gamma, mean, invstd, grads["gamma"],
                                         grads["beta"], y=y, out=self._buf("dx", x.shape))
        self._saved = None  # dx goes over the saved batch: the next backward needs a forward
        return be.batchnorm_backward_inplace(
            dy, x, gamma, mean, invstd, grads["gamma"], grads["beta"],
            relu_mask=mask, overwrite_dy=overwrite_dy,  # the mask stands in for y
        )

    def _mask_buf(self, shape: tuple[int, ...]) -> Array:
        buf = self._buffers.get("relu_mask")
        if buf is None or buf.shape != shape:
            buf = self._buffers["relu_mask"] = self.backend.empty(shape, dtype=np.bool_)
        return buf

    def buffers(self) -> dict[str, Array]:
        return {"running_mean": self.running_mean, "running_var": self.running_var}

    def __repr__(self) -> str:
        return f"BatchNorm({self.num_features}, momentum={self.momentum}, eps={self.eps})"


class _Activation(Layer):
    """An elementwise activation whose backward needs only its output ``y``."""

    _fwd = ""
    _bwd = ""

    def __init__(self, backend: Backend | str | None = None, dtype: Any = np.float32) -> None:
        super().__init__(backend, dtype)
        self._y: Array | None = None

    def forward(self, x: Array, training: bool = False) -> Array:
        x = self._input(x)
        y = getattr(self.backend, self._fwd)(x, out=self._buf("y", x.shape))
        self._y = y
        return y

    def backward(self, dy: Array) -> Array:
        if self._y is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return getattr(self.backend, self._bwd)(dy, self._y, out=self._buf("dx", dy.shape))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ReLU(_Activation):
    """``y = max(x, 0)``; ``dx = dy * (y > 0)``."""

    _fwd, _bwd = "relu_forward", "relu_backward"


class Tanh(_Activation):
    """``y = tanh(x)``; ``dx = dy * (1 - y^2)``."""

    _fwd, _bwd = "tanh_forward", "tanh_backward"


class Sigmoid(_Activation):
    """``y = 1 / (1 + exp(-x))``; ``dx = dy * y * (1 - y)``."""

    _fwd, _bwd = "sigmoid_forward", "sigmoid_backward"


class Dropout(Layer):
    """Inverted dropout: in training ``y = x * keep / (1 - p)``, keep ~ Bernoulli(1 - p);
    at inference the identity. Masks come from the host generator ``rng``."""

    def __init__(
        self,
        p: float,
        rng: np.random.Generator | int | None = None,
        backend: Backend | str | None = None,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__(backend, dtype)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self._mask: Array | None = None

    def forward(self, x: Array, training: bool = False) -> Array:
        x = self._input(x)
        if not training or self.p == 0.0:
            self._mask = None
            return x
        self._mask = self.backend.dropout_mask(x.shape, self.p, self.rng).astype(
            self.dtype, copy=False
        )
        y = self._buf("y", x.shape)
        self.backend.xp.multiply(x, self._mask, out=y)
        return y

    def backward(self, dy: Array) -> Array:
        if self._mask is None:
            return dy
        dx = self._buf("dx", dy.shape)
        self.backend.xp.multiply(dy, self._mask, out=dx)
        return dx

    def __repr__(self) -> str:
        return f"Dropout(p={self.p})"


ACTIVATIONS: dict[str, type[_Activation]] = {"relu": ReLU, "tanh": Tanh, "sigmoid": Sigmoid}
