"""The reference backend: every op written once against ``self.xp``, as its formula.

Conventions (docs/architecture.md, "Conventions"): samples are axis 0, arrays are float32,
statistics and optimizer state are float32. Ops that produce an array take an optional
``out=`` buffer and return it. Ops that update state (running statistics, optimizer
moments, parameters) do so in place.

This class is the reference each faster implementation is tested against
(docs/architecture.md, "Op table"): ``NumpyBackend`` overrides ops with the CPU machinery in
``gpunet/backend/cpu`` (work split over threads, blocked sums, in-place batch norm, BLAS
level-1 optimizer updates), ``CupyBackend`` with fused CUDA kernels; both keep these
signatures, and ``CupyBackend`` falls back to the op here when a guard fails.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import GpunetError

Array = Any  # numpy.ndarray or cupy.ndarray


class BatchTooSmallError(GpunetError, ValueError):
    """A batch-norm training batch with fewer than two samples (its variance is undefined)."""


def check_training_batch(n: int) -> None:
    """Raise ``BatchTooSmallError`` unless a batch-norm training batch has ``n >= 2`` rows."""
    if n < 2:
        raise BatchTooSmallError(
            f"batch norm needs at least 2 samples per training batch, got {n}")


class Backend:
    """Reference implementation of every op. Subclasses set ``xp`` and may override ops."""

    name = "cpu"
    xp: Any = np
    dtype = np.float32
    #: the MLP runs BatchNorm + ReLU as one op (``relu=True``) when this is set
    fuses_bn_relu = True
    #: the MLP calls ``batchnorm_forward_train_inplace`` / ``batchnorm_backward_inplace`` on
    #: its own Dense outputs (centred in place, gradient buffers reused) when this is set;
    #: both are defined here for every backend, but only pay off where overridden (the CPU)
    bn_centre_in_place = False

    # ------------------------------------------------------------------ capabilities
    # What callers may rely on, declared here so that no caller tests ``name``.
    #: arrays live in device memory apart from the host: data feeds copy batches over
    device_memory = False
    #: ops are queued and return before they finish: read results after ``synchronize()``
    asynchronous = False
    #: a training step can be recorded once as a graph and replayed (``gpunet.step``)
    has_graphs = False

    def supports_device_scalars(self, *flat: Array | None) -> bool:
        """Whether the ``*_update_dev`` ops (learning rate and step count read from device
        memory, so that a recorded step replays with new values) take these flat arrays."""
        return False

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

    def matmuls(self, products: list[tuple[Array, Array, Array]]) -> None:
        """``out = a @ b`` for every ``(a, b, out)``; the products are independent (none
        writes what another reads), so a backend may run them side by side."""
        for a, b, out in products:
            self.matmul(a, b, out=out)

    def matmul_batched(self, a: Array, b: Array, out: Array) -> Array:
        """``out[k] = a[k] @ b[k]`` for each of K members: ``a`` (K, m, p) or a shared
        (m, p), ``b`` (K, p, q), ``out`` (K, m, q). Strided views are allowed (e.g.
        ``z.reshape(n, K, C).transpose(1, 0, 2)`` of an (n, K*C) activation) when one of the
        last two axes of each has unit stride (docs/architecture.md, "Conventions")."""
        for k in range(b.shape[0]):
            self.xp.matmul(a if a.ndim == 2 else a[k], b[k], out=out[k])
        return out

    def matmuls_batched(self, products: list[tuple[Array, Array, Array]]) -> None:
        """``matmul_batched(a, b, out)`` for every independent ``(a, b, out)``."""
        for a, b, out in products:
            self.matmul_batched(a, b, out)

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
        """``dx = dy * (1 - y^2)``, computed as ``dy * (1 - y) * (1 + y)``: no cancellation
        near ``|y| = 1``."""
        xp = self.xp
        out = self._out(out, dy.shape, dy.dtype)
        xp.subtract(1, y, out=out)
        xp.multiply(out, 1 + y, out=out)
        xp.multiply(out, dy, out=out)
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
    def batchnorm_forward_train(
        self,
        x: Array,
        gamma: Array,
        beta: Array,
        running_mean: Array,
        running_var: Array,
        momentum: float | Array,
        eps: float,
        relu: bool = False,
        out: Array | None = None,
    ) -> tuple[Array, Array, Array]:
        """Training-mode batch norm over (n, C) ``x``; returns ``(y, mean, invstd)``.

        ``mean = sum(x) / n``, the biased ``var = sum((x - mean)^2) / n`` (two passes, in
        float64), ``invstd = 1 / sqrt(var + eps)``, ``x_hat = (x - mean) * invstd``,
        ``y = gamma * x_hat + beta`` (then ``max(y, 0)`` when ``relu``). ``mean`` is returned
        in float64 (the backward centres x with it), ``invstd`` in x's dtype. In place:
        ``running_mean = (1 - momentum) * running_mean + momentum * mean`` and
        ``running_var = (1 - momentum) * running_var + momentum * var * n / (n - 1)``
        (PyTorch's momentum; Keras' 0.99 is 0.01 here). ``momentum`` is a float or a float32
        (C,) array, one value per column (a packed model's per-member momenta, each repeated
        over its member's columns).
        """
        xp, n = self.xp, x.shape[0]
        check_training_batch(n)
        mean = x.mean(axis=0, dtype=np.float64)
        var = ((x - mean) ** 2).mean(axis=0)
        invstd = 1.0 / xp.sqrt(var + eps)
        x_hat = (x - mean) * invstd
        y = gamma * x_hat + beta
        if relu:
            y = xp.maximum(y, 0.0)
        out = self._out(out, x.shape, x.dtype)
        out[...] = y
        running_mean[...] = (1 - momentum) * running_mean + momentum * mean
        running_var[...] = (1 - momentum) * running_var + momentum * var * n / (n - 1)
        return out, mean, invstd.astype(x.dtype)

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
        + beta`` (then ``max(y, 0)`` when ``relu``), each row independent of the others;
        nothing is updated."""
        xp = self.xp
        scale = gamma / xp.sqrt(running_var.astype(np.float64) + eps)
        y = (x - running_mean.astype(np.float64)) * scale + beta
        if relu:
            y = xp.maximum(y, 0.0)
        out = self._out(out, x.shape, x.dtype)
        out[...] = y
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
        """Backward of training-mode batch norm; returns ``dx``, fills ``dgamma`` / ``dbeta``.

        ``mean`` and ``invstd`` are what the forward returned; ``y``, the forward's output
        when it fused a ReLU, masks the gradient: ``g = dy * (y > 0)`` (else ``g = dy``).
        With ``x_hat = (x - mean) * invstd``: ``dbeta = sum(g)``, ``dgamma = sum(g * x_hat)``
        (summed in float64), ``dx = gamma * invstd * (g - dbeta / n - x_hat * dgamma / n)``.
        """
        n = x.shape[0]
        g = dy if y is None else dy * (y > 0)
        x_hat = (x - mean) * invstd.astype(np.float64)
        db = g.sum(axis=0, dtype=np.float64)
        dg = (g * x_hat).sum(axis=0)
        dx = gamma * invstd * (g - db / n - x_hat * dg / n)
        dbeta[...] = db
        dgamma[...] = dg
        out = self._out(out, x.shape, x.dtype)
        out[...] = dx
        return out

    # -------------------------------------------------- batch norm, centred in place
    # The capability behind ``bn_centre_in_place``: the same op with a different contract on
    # memory. The forward overwrites ``x`` (the MLP's private Dense output) with a centred
    # copy and returns the mean of what ``x`` then holds; the backward reads that centred
    # batch and writes ``dx`` over it. Here: the ops above, plus the copies.
    def batchnorm_forward_train_inplace(
        self,
        x: Array,
        gamma: Array,
        beta: Array,
        running_mean: Array,
        running_var: Array,
        momentum: float | Array,
        eps: float,
        relu: bool = False,
        out: Array | None = None,
        relu_mask: Array | None = None,
    ) -> tuple[Array, Array, Array]:
        """``batchnorm_forward_train`` that leaves ``x - shift`` in ``x`` (``shift`` per
        column, near the mean) and returns ``(y, mean of the new x, invstd)``, for
        ``batchnorm_backward_inplace``. ``relu_mask`` (bool, with ``relu``) receives ``y > 0``.
        ``out`` must not be ``x``."""
        if out is x:
            raise ValueError("out must not be x: x keeps the centred batch")
        y, mean, invstd = self.batchnorm_forward_train(x, gamma, beta, running_mean,
                                                       running_var, momentum, eps, relu, out)
        x -= mean.astype(x.dtype)
        if relu_mask is not None:
            relu_mask[...] = y > 0
        return y, x.mean(axis=0, dtype=np.float64), invstd

    def batchnorm_backward_inplace(
        self,
        dy: Array,
        x: Array,
        gamma: Array,
        mean: Array,
        invstd: Array,
        dgamma: Array,
        dbeta: Array,
        y: Array | None = None,
        relu_mask: Array | None = None,
        overwrite_dy: bool = False,
    ) -> Array:
        """``batchnorm_backward`` from the batch ``x`` and ``mean`` that
        ``batchnorm_forward_train_inplace`` left, writing ``dx`` over ``x`` (returned).
        ``relu_mask`` (the forward's ``y > 0``) stands in for ``y``; ``overwrite_dy`` allows
        (does not require) the masked gradient to be formed in ``dy``."""
        if relu_mask is not None:
            dy, y = dy * relu_mask, None
        dx = self.batchnorm_backward(dy, x, gamma, mean, invstd, dgamma, dbeta, y=y)
        x[...] = dx
        return x

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

    def softmax_cross_entropy_packed(
        self,
        logits: Array,
        labels: Array,
        class_weights: Array | None = None,
        dlogits: Array | None = None,
    ) -> tuple[Array, Array]:
        """``softmax_cross_entropy`` for K members at once: ``logits`` (n, K*c) contiguous
        (member k's logits in columns ``k*c:(k+1)*c``), int ``labels`` (n, K) (member k's
        label of row i), ``class_weights`` None or float32 (K, c). Returns ``(losses,
        dlogits)``: float32 (K,) losses, member k's as the single op gives it for member k
        alone, and (n, K*c) ``dlogits`` with member k's gradient in its columns."""
        xp = self.xp
        n, kc = logits.shape
        k = labels.shape[1]
        z = logits.reshape(n, k, kc // k)
        out = self._out(dlogits, logits.shape, logits.dtype)
        dl = out.reshape(z.shape)
        at_label = (xp.arange(n)[:, None], xp.arange(k)[None, :], labels)
        xp.subtract(z, z.max(axis=2, keepdims=True), out=dl)  # shifted logits
        target = dl[at_label]
        xp.exp(dl, out=dl)
        sumexp = dl.sum(axis=2)
        nll = xp.ascontiguousarray((xp.log(sumexp) - target).T)  # (K, n): member rows
        dl /= sumexp[:, :, None]
        dl[at_label] -= 1
        if class_weights is None:
            losses = nll.mean(axis=1)
            dl *= np.float32(1.0 / n)
        else:
            w = xp.ascontiguousarray(class_weights[xp.arange(k)[:, None], labels.T],
                                     dtype=logits.dtype)  # (K, n)
            total = w.sum(axis=1)
            losses = (w * nll).sum(axis=1) / total
            dl *= (w / total[:, None]).T[:, :, None]
        return losses.astype(logits.dtype, copy=False), out

    # ------------------------------------------------------------------ dropout
    def dropout_mask(self, shape: tuple[int, ...], p: float, rng: np.random.Generator) -> Array:
        """Inverted-dropout mask: ``keep / (1 - p)`` with ``keep ~ Bernoulli(1 - p)``.

        Drawn from the host generator ``rng`` so runs repeat exactly on any device.
        """
        keep = rng.random(shape, dtype=np.float32) >= np.float32(p)
        mask = keep.astype(np.float32) * np.float32(1.0 / (1.0 - p))
        return self.asarray(mask)

    # ------------------------------------------------------------------ optimizers
    # All take flat arrays updated in place. ``decay`` is the L2 weight-decay coefficient;
    # ``decay_mask`` (1 for Dense weights, 0 elsewhere, or None for everywhere) selects where
    # it applies: the gradient used is ``g + decay * decay_mask * w``.
    def _decayed(self, w: Array, g: Array, decay: float, decay_mask: Array | None) -> Array:
        """``g + decay * decay_mask * w`` (``g`` itself without decay)."""
        if not decay:
            return g
        return g + decay * (w if decay_mask is None else decay_mask * w)

    def sgd_update(
        self, w: Array, g: Array, lr: float, decay: float = 0.0, decay_mask: Array | None = None
    ) -> None:
        """``w -= lr * g``."""
        g = self._decayed(w, g, decay, decay_mask)
        w -= lr * g

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
        v[...] = beta * v + (1 - beta) * g
        w -= lr * v

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
        g = self._decayed(w, g, decay, decay_mask)
        s[...] = beta2 * s + (1 - beta2) * g * g
        w -= lr * g / (self.xp.sqrt(s) + eps)

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
        """Adam with bias correction at step ``t = step`` (1 for the first update):
        ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
        ``w -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``."""
        g = self._decayed(w, g, decay, decay_mask)
        m[...] = beta1 * m + (1 - beta1) * g
        v[...] = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - beta1**step)
        v_hat = v / (1 - beta2**step)
        w -= lr * m_hat / (self.xp.sqrt(v_hat) + eps)

    # ------------------------------------------------------------ optimizers, packed
    # K members' flat vectors as the rows of (K, P) arrays; per-member scalars are (K,)
    # arrays (float32; Adam's step counts int64), ``active`` a bool (K,) array or None (all).
    # Row k is what the single op above gives for member k's scalars; rows with
    # ``active[k] == False`` (w and state) are left as they are, bit for bit.
    def _commit(self, active: Array | None, *pairs: tuple[Array, Array]) -> None:
        """``dst[...] = new`` for each ``(dst, new)``, in the active rows only."""
        for dst, new in pairs:
            if active is None:
                dst[...] = new
            else:
                self.xp.copyto(dst, new, where=active.reshape(-1, 1))

    def _decayed_packed(self, w: Array, g: Array, decay: Array,
                        decay_mask: Array | None) -> Array:
        """``g + decay[k] * decay_mask * w`` by rows; ``g``'s row itself where
        ``decay[k] == 0`` (as ``_decayed``)."""
        d = decay.reshape(-1, 1)
        return self.xp.where(d != 0, g + d * (w if decay_mask is None else decay_mask * w), g)

    def sgd_update_packed(self, w: Array, g: Array, lr: Array, decay: Array,
                          decay_mask: Array | None = None, active: Array | None = None) -> None:
        """``sgd_update`` by rows: ``w[k] -= lr[k] * g[k]``."""
        g = self._decayed_packed(w, g, decay, decay_mask)
        self._commit(active, (w, w - lr.reshape(-1, 1) * g))

    def momentum_update_packed(self, w: Array, g: Array, v: Array, lr: Array, beta: Array,
                               decay: Array, decay_mask: Array | None = None,
                               active: Array | None = None) -> None:
        """``momentum_update`` by rows: ``v[k] = beta[k] v[k] + (1 - beta[k]) g[k]``,
        ``w[k] -= lr[k] v[k]``."""
        beta = beta.reshape(-1, 1)
        g = self._decayed_packed(w, g, decay, decay_mask)
        v_new = beta * v + (1 - beta) * g
        self._commit(active, (v, v_new), (w, w - lr.reshape(-1, 1) * v_new))

    def rmsprop_update_packed(self, w: Array, g: Array, s: Array, lr: Array, beta2: Array,
                              eps: Array, decay: Array, decay_mask: Array | None = None,
                              active: Array | None = None) -> None:
        """``rmsprop_update`` by rows: ``s[k] = beta2[k] s[k] + (1 - beta2[k]) g[k]^2``,
        ``w[k] -= lr[k] g[k] / (sqrt(s[k]) + eps[k])``."""
        beta2 = beta2.reshape(-1, 1)
        g = self._decayed_packed(w, g, decay, decay_mask)
        s_new = beta2 * s + (1 - beta2) * g * g
        w_new = w - lr.reshape(-1, 1) * g / (self.xp.sqrt(s_new) + eps.reshape(-1, 1))
        self._commit(active, (s, s_new), (w, w_new))

    def adam_update_packed(self, w: Array, g: Array, m: Array, v: Array, lr: Array,
                           beta1: Array, beta2: Array, eps: Array, t: Array, decay: Array,
                           decay_mask: Array | None = None,
                           active: Array | None = None) -> None:
        """``adam_update`` by rows, member k at its own step ``t[k]`` (1 for its first
        update): ``m[k] = b1 m[k] + (1 - b1) g[k]``, ``v[k] = b2 v[k] + (1 - b2) g[k]^2``,
        ``w[k] -= lr (m[k] / (1 - b1^t)) / (sqrt(v[k] / (1 - b2^t)) + eps)`` with member k's
        ``b1, b2, lr, eps, t``; the bias corrections in float64, as the single op's."""
        b1, b2 = beta1.reshape(-1, 1), beta2.reshape(-1, 1)
        step = t.reshape(-1, 1)
        c1 = (1 - b1.astype(np.float64) ** step).astype(w.dtype)
        c2 = (1 - b2.astype(np.float64) ** step).astype(w.dtype)
        g = self._decayed_packed(w, g, decay, decay_mask)
        m_new = b1 * m + (1 - b1) * g
        v_new = b2 * v + (1 - b2) * g * g
        w_new = w - lr.reshape(-1, 1) * (m_new / c1) / (self.xp.sqrt(v_new / c2)
                                                          + eps.reshape(-1, 1))
        self._commit(active, (m, m_new), (v, v_new), (w, w_new))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
