"""Gradient checking by central differences in float64.

Build the layer or model with ``dtype=numpy.float64`` on the CPU backend, then compare its
analytic gradients with ``(f(x + h) - f(x - h)) / 2h``. The scalar objective is
``sum(forward(x) * r)`` for a fixed random ``r`` (or the cross-entropy for a model), so
``backward(r)`` gives its gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def numerical_gradient(f: Callable[[], float], x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """d f / d x by central differences, perturbing ``x`` in place (restored afterwards)."""
    grad = np.zeros(x.shape, dtype=np.float64)
    flat = x.reshape(-1)
    gflat = grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        fp = f()
        flat[i] = old - h
        fm = f()
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * h)
    return grad


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """``max |a - b| / max(max |a|, max |b|, 1e-12)``."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0), 1e-12)
    return float(np.abs(a - b).max(initial=0.0) / scale)


def check_layer(layer: Any, x: np.ndarray, training: bool = True, seed: int = 0,
                h: float = 1e-6) -> dict[str, float]:
    """Relative errors of ``layer``'s input and parameter gradients (keys ``x`` and each
    parameter name). ``layer`` and ``x`` must be float64 on the CPU backend.

    For layers with state that changes in training (batch norm's running statistics) the
    objective does not depend on it, so repeated forwards are harmless.
    """
    x = np.array(x, dtype=np.float64)
    r = np.random.default_rng(seed).standard_normal(layer.forward(x, training).shape)

    def f() -> float:
        return float(np.sum(layer.forward(x, training) * r))

    f()
    dx = np.array(layer.backward(r))
    analytic = {"x": dx, **{k: np.array(v) for k, v in layer.grads.items()}}
    errors = {"x": relative_error(dx, numerical_gradient(f, x, h))}
    for name, p in layer.params.items():
        errors[name] = relative_error(analytic[name], numerical_gradient(f, p, h))
    return errors


def check_model(model: Any, x: np.ndarray, labels: np.ndarray, h: float = 1e-6,
                training: bool = True) -> float:
    """Relative error of an MLP's flat gradient of the mean cross-entropy loss, float64."""
    from .losses import softmax_cross_entropy

    x = np.array(x, dtype=np.float64)

    def f() -> float:
        loss, _ = softmax_cross_entropy(model.forward(x, training), labels)
        return float(loss)

    _, dlogits = softmax_cross_entropy(model.forward(x, training), labels)
    model.backward(dlogits)
    analytic = np.array(model.grads)
    return relative_error(analytic, numerical_gradient(f, model.params, h))
