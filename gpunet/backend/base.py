"""The reference backend: every op written once against ``self.xp``.

Conventions (DESIGN section 3): samples are axis 0, arrays are float32, statistics and
optimizer state are float32. Ops that produce an array take an optional ``out=`` buffer and
return it, so a caller that preallocates never allocates in the hot path. Ops that update
state (running statistics, optimizer moments, parameters) do so in place.

``CupyBackend`` overrides some of these with fused CUDA kernels and falls back to these
methods whenever dtype or layout does not fit; ``NumpyBackend`` is this class unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import GpunetError

Array = Any  # numpy.ndarray or cupy.ndarray


class BatchTooSmallError(GpunetError, ValueError):
    """A batch-norm training batch with fewer than two samples (its variance is undefined)."""


class Backend:
    """Reference implementation of every op. Subclasses set ``xp`` and may override ops."""

    name = "cpu"
    xp: Any = np
    dtype = np.float32

    # ------------------------------------------------------------------ arrays
    def asarray(self, x: Any, dtype: Any = None) -> Array:
        """Array on this backend's device (no copy when it already is one of the right dtype)."""
        return self.xp.asarray(x, dtype=dtype)

    def to_host(self, x: Any) -> np.ndarray:
        """A NumPy copy-or-view of ``x`` on the host."""
        return np.asarray(x)

    def empty(self, shape: Any, dtype: Any = np.float32) -> Array:
        return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape: Any, dtype: Any = np.float32) -> Array:
        return self.xp.zeros(shape, dtype=dtype)

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on the CPU)."""

    def _out(self, out: Array | None, shape: Any, dtype: Any = np.float32) -> Array:
        if out is None:
            return self.xp.empty(shape, dtype=dtype)
        if tuple(out.shape) != tuple(shape):
            raise ValueError(f"out has shape {tuple(out.shape)}, expected {tuple(shape)}")
        return out

    # ------------------------------------------------------------------ dense
    def matmul(self, a: Array, b: Array, out: Array | None = None) -> Array:
        """``a @ b``; pass transposed views (``x.T``) for the backward products."""
        return self.xp.matmul(a, b, out=out)

    def add_bias(self, z: Array, b: Array) -> Array:
        """``z += b`` over rows, in place."""
        self.xp.add(z, b, out=z)
        return z

    def sum_rows(self, dy: Array, out: Array | None = None) -> Array:
        """Column sums of (n, C) ``dy``: the bias gradient."""
        return dy.sum(axis=0, out=out)

    # ------------------------------------------------------------------ activations
    def relu_forward(self, x: Array, out: Array | None = None) -> Array:
        return self.xp.maximum(x, 0, out=out)

    def relu_backward(self, dy: Array, y: Array, out: Array | None = None) -> Array:
        """``dx = dy * (y > 0)`` from the forward output ``y``."""
        out = self._out(out, dy.shape, dy.dtype)
        self.xp.multiply(dy, y > 0, out=out)
        return out

    def tanh_forward(self, x: Array, out: Array | None = None) -> Array:
        return self.xp.tanh(x, out=out)

    def tanh_backward(self, dy: Array, y: Array, out: Array | None = None) -> Array:
        """``dx = dy * (1 - y^2)``."""
        out = self._out(out, dy.shape, dy.dtype)
        self.xp.multiply(y, y, out=out)
        self.xp.subtract(1, out, out=out)
        self.xp.multiply(out, dy, out=out)
        return out

    def sigmoid_forward(self, x: Array, out: Array | None = None) -> Array:
        """``1 / (1 + exp(-x))``, computed without overflow for large ``|x|``."""
        xp = self.xp
        out = self._out(out, x.shape, x.dtype)
        # exp(-|x|) never overflows; sigmoid(x) = 1/(1+e) for x >= 0, e/(1+e) otherwise.
        e = xp.exp(-xp.abs(x))
        xp.divide(xp.where(x >= 0, 1, e), 1 + e, out=out)
        return out

    def sigmoid_backward(self, dy: Array, y: Array, out: Array | None = None) -> Array:
        """``dx = dy * y * (1 - y)``."""
        out = self._out(out, dy.shape, dy.dtype)
        self.xp.subtract(1, y, out=out)
        self.xp.multiply(out, y, out=out)
        self.xp.multiply(out, dy, out=out)
        return out

    # ------------------------------------------------------------------ batch norm
    def _centered(self, x: Array, mean: Array, out: Array) -> Array:
        """``out = x - mean`` in x's dtype, exact to its rounding even when |mean| >> std.

        ``mean`` is float64; it is split into ``hi + lo`` in x's dtype, and
        ``(x - hi) - lo`` is computed (``x - hi`` is exact when x is near the mean).
        """
        xp = self.xp
        hi = mean.astype(x.dtype)
        lo = (mean - hi).astype(x.dtype)
        xp.subtract(x, hi, out=out)
        xp.subtract(out, lo, out=out)
        return out

    def batchnorm_forward_train(
        self,
        x: Array,
        gamma: Array,
        beta: Array,
        running_mean: Array,
        running_var: Array,
        momentum: float,
        eps: float,
        relu: bool = False,
        out: Array | None = None,
    ) -> tuple[Array, Array, Array]:
        """Training-mode batch norm over (n, C) ``x``; returns ``(y, mean, invstd)``.

        ``mean`` and the biased ``var`` are column statistics of the batch, by two passes
        (``var = mean((x - mean)^2)``, never ``E[x^2] - E[x]^2``) with float64 accumulation;
        ``mean`` is returned as float64 so that backward can centre x exactly,
        ``invstd = 1 / sqrt(var + eps)`` in x's dtype,
        ``y = gamma * (x - mean) * invstd + beta`` (then ``max(y, 0)`` when ``relu``).
        In place: ``running_mean = (1 - momentum) * running_mean + momentum * mean`` and
        ``running_var = (1 - momentum) * running_var + momentum * var * n / (n - 1)``
        (PyTorch's momentum; Keras' 0.99 is 0.01 here).
        """
        xp = self.xp
        n = x.shape[0]
        if n < 2:
            raise BatchTooSmallError(
                f"batch norm needs at least 2 samples per training batch, got {n}"
            )
        out = self._out(out, x.shape, x.dtype)
        mean = x.mean(axis=0, dtype=np.float64)
        d = self._centered(x, mean, out)  # out holds x - mean
        var = xp.square(d).mean(axis=0, dtype=np.float64)
        invstd = (1.0 / xp.sqrt(var + eps)).astype(x.dtype)
        xp.multiply(d, (invstd * gamma).astype(x.dtype, copy=False), out=out)
        xp.add(out, beta, out=out)
        if relu:
            xp.maximum(out, 0, out=out)
        m = float(momentum)
        running_mean[...] = (1 - m) * running_mean + m * mean
        running_var[...] = (1 - m) * running_var + (m * n / (n - 1)) * var
        return out, mean, invstd

    def batchnorm_forward_infer(
        self,
        x: Array,
        gamma: Array,
        beta: Array,
        running_mean: Array,
        running_var: Array,
        eps: float,
        relu: bool = False,
        out: Array | None = None,
    ) -> Array:
        """Inference-mode batch norm: ``y = gamma * (x - running_mean) / sqrt(running_var + eps)
        + beta``, each row independent of the others; nothing is updated."""
        xp = self.xp
        out = self._out(out, x.shape, x.dtype)
        scale = gamma / xp.sqrt(running_var.astype(np.float64) + eps)
        self._centered(x, running_mean.astype(np.float64), out)
        xp.multiply(out, scale.astype(x.dtype), out=out)
        xp.add(out, beta, out=out)
        if relu:
            xp.maximum(out, 0, out=out)
        return out

    def batchnorm_backward(
        self,
        dy: Array,
        x: Array,
        gamma: Array,
        mean: Array,
        invstd: Array,
        dgamma: Array,
        dbeta: Array,
        y: Array | None = None,
        out: Array | None = None,
    ) -> Array:
        """Backward of training-mode batch norm; returns ``dx``, fills ``dgamma``/``dbeta``.

        ``mean`` and ``invstd`` are what the forward returned. With
        ``x_hat = (x - mean) * invstd`` and ``g = dy`` (masked by ``y > 0`` when ``y``, the
        fused-ReLU output, is given): ``dbeta = sum(g)``, ``dgamma = sum(g * x_hat)`` (float64
        accumulation), ``dx = gamma * invstd / n * (n * g - dbeta - x_hat * dgamma)``.
        """
        xp = self.xp
        n = x.shape[0]
        out = self._out(out, x.shape, x.dtype)
        g = dy * (y > 0) if y is not None else dy
        xhat = self._centered(x, mean, out)  # reuse the output buffer for x_hat
        xp.multiply(xhat, invstd, out=xhat)
        dbeta[...] = g.sum(axis=0, dtype=np.float64)
        dgamma[...] = (g * xhat).sum(axis=0, dtype=np.float64)
        # dx = (gamma * invstd / n) * (n * g - dbeta - xhat * dgamma)
        xp.multiply(xhat, dgamma, out=xhat)
        xp.subtract(n * g, xhat, out=xhat)
        xp.subtract(xhat, dbeta, out=xhat)
        xp.multiply(xhat, (gamma * invstd / np.float32(n)).astype(x.dtype, copy=False), out=xhat)
        return out

    # ------------------------------------------------------------------ softmax
    def softmax(self, logits: Array, out: Array | None = None) -> Array:
        """Row softmax of (n, C) logits, with the row max subtracted first."""
        xp = self.xp
        out = self._out(out, logits.shape, logits.dtype)
        xp.subtract(logits, logits.max(axis=1, keepdims=True), out=out)
        xp.exp(out, out=out)
        out /= out.sum(axis=1, keepdims=True)
        return out

    def softmax_cross_entropy(
        self,
        logits: Array,
        labels: Array,
        class_weights: Array | None = None,
        dlogits: Array | None = None,
    ) -> tuple[Array, Array]:
        """Fused log-softmax + negative log-likelihood over (n, C) logits and (n,) int labels.

        ``loss = sum_i w[y_i] * (logsumexp(z_i) - z_i[y_i]) / sum_i w[y_i]`` (``w = 1`` without
        class weights: the batch mean, as PyTorch's ``cross_entropy``), and
        ``dlogits_i = w[y_i] * (softmax(z_i) - onehot(y_i)) / sum_i w[y_i]``, which is
        ``(softmax - onehot) / n`` without weights. Returns ``(loss, dlogits)``; ``loss`` is a
        0-d float32 array on this backend's device.
        """
        xp = self.xp
        n = logits.shape[0]
        rows = xp.arange(n)
        dl = self._out(dlogits, logits.shape, logits.dtype)
        rowmax = logits.max(axis=1, keepdims=True)
        xp.subtract(logits, rowmax, out=dl)  # shifted logits
        target = dl[rows, labels].copy()
        xp.exp(dl, out=dl)
        sumexp = dl.sum(axis=1)
        nll = xp.log(sumexp) - target  # logsumexp(z) - z_y, with the max cancelling
        dl /= sumexp[:, None]
        dl[rows, labels] -= 1
        if class_weights is None:
            loss = nll.mean()
            dl *= np.float32(1.0 / n)
        else:
            w = class_weights[labels].astype(logits.dtype, copy=False)
            total = w.sum()
            loss = (w * nll).sum() / total
            dl *= (w / total)[:, None]
        return xp.asarray(loss, dtype=logits.dtype), dl

    # ------------------------------------------------------------------ dropout
    def dropout_mask(self, shape: tuple[int, ...], p: float, rng: np.random.Generator) -> Array:
        """Inverted-dropout mask: ``keep / (1 - p)`` with ``keep ~ Bernoulli(1 - p)``.

        Drawn from the host generator ``rng`` so runs repeat exactly on any device.
        """
        keep = rng.random(shape, dtype=np.float32) >= np.float32(p)
        mask = keep.astype(np.float32) * np.float32(1.0 / (1.0 - p))
        return self.asarray(mask)

    # ------------------------------------------------------------------ optimizers
    # All take flat float32 arrays updated in place. ``decay`` is the L2 weight-decay
    # coefficient; ``decay_mask`` (1 for Dense weights, 0 elsewhere, or None) selects where it
    # applies: the gradient used is ``g + decay * decay_mask * w``.
    def _decayed(self, w: Array, g: Array, decay: float, decay_mask: Array | None) -> Array:
        if not decay:
            return g
        if decay_mask is None:
            return g + np.float32(decay) * w
        return g + (np.float32(decay) * decay_mask) * w

    def sgd_update(
        self, w: Array, g: Array, lr: float, decay: float = 0.0, decay_mask: Array | None = None
    ) -> None:
        """``w -= lr * g``."""
        g = self._decayed(w, g, decay, decay_mask)
        w -= np.float32(lr) * g

    def momentum_update(
        self,
        w: Array,
        g: Array,
        v: Array,
        lr: float,
        beta: float,
        decay: float = 0.0,
        decay_mask: Array | None = None,
    ) -> None:
        """``v = beta * v + (1 - beta) * g``; ``w -= lr * v`` (the course's form)."""
        g = self._decayed(w, g, decay, decay_mask)
        v *= np.float32(beta)
        v += np.float32(1.0 - beta) * g
        w -= np.float32(lr) * v

    def rmsprop_update(
        self,
        w: Array,
        g: Array,
        s: Array,
        lr: float,
        beta2: float,
        eps: float,
        decay: float = 0.0,
        decay_mask: Array | None = None,
    ) -> None:
        """``s = beta2 * s + (1 - beta2) * g^2``; ``w -= lr * g / (sqrt(s) + eps)``."""
        xp = self.xp
        g = self._decayed(w, g, decay, decay_mask)
        s *= np.float32(beta2)
        s += np.float32(1.0 - beta2) * (g * g)
        w -= np.float32(lr) * g / (xp.sqrt(s) + np.float32(eps))

    def adam_update(
        self,
        w: Array,
        g: Array,
        m: Array,
        v: Array,
        lr: float,
        beta1: float,
        beta2: float,
        eps: float,
        step: int,
        decay: float = 0.0,
        decay_mask: Array | None = None,
    ) -> None:
        """Adam with bias correction at step ``t = step`` (1 for the first update).

        ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
        ``w -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``.
        """
        xp = self.xp
        g = self._decayed(w, g, decay, decay_mask)
        m *= np.float32(beta1)
        m += np.float32(1.0 - beta1) * g
        v *= np.float32(beta2)
        v += np.float32(1.0 - beta2) * (g * g)
        c1 = 1.0 - float(beta1) ** step
        c2 = 1.0 - float(beta2) ** step
        denom = xp.sqrt(v / np.float32(c2))
        denom += np.float32(eps)
        w -= np.float32(lr / c1) * m / denom

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
