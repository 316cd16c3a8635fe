"""The reference backend: every op written once against ``self.xp``.

Conventions (DESIGN section 3): samples are axis 0, arrays are float32, statistics and
optimizer state are float32. Ops that produce an array take an optional ``out=`` buffer and
return it, so a caller that preallocates never allocates in the hot path. Ops that update
state (running statistics, optimizer moments, parameters) do so in place.

``CupyBackend`` overrides some of these with fused CUDA kernels and falls back to these
methods whenever dtype or layout does not fit; ``NumpyBackend`` is this class with a few
CPU-only fast paths (the products split over its threads, batch norm in fewer passes), each
tested against the op here.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import GpunetError

Array = Any  # numpy.ndarray or cupy.ndarray


class BatchTooSmallError(GpunetError, ValueError):
    """A batch-norm training batch with fewer than two samples (its variance is undefined)."""


class _Workers:
    """``n`` daemon threads that take jobs from one queue (the backend's work splitting).

    A hand-off through ``queue.SimpleQueue`` costs ~10 us where a ``ThreadPoolExecutor``'s
    submit / result costs ~30 us (measured), and a training step hands off ~20 times."""

    def __init__(self, n: int) -> None:
        self.pid = os.getpid()  # threads do not survive a fork: a child makes its own
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        for i in range(n):
            threading.Thread(target=self._serve, name=f"gpunet-{i}", daemon=True).start()

    def _serve(self) -> None:
        while True:
            fn, item, i, done = self._jobs.get()
            try:
                done.put((i, True, fn(item)))
            except BaseException as e:  # handed back to the caller, raised there
                done.put((i, False, e))

    def map_rest(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        """``[fn(i) for i in items]``: the calling thread runs ``items[0]``, the workers the
        rest; the first exception (in item order) is raised once all have finished."""
        done: queue.SimpleQueue = queue.SimpleQueue()
        for i, item in enumerate(items[1:], 1):
            self._jobs.put((fn, item, i, done))
        results: list[Any] = [None] * len(items)
        ok = [True] * len(items)
        try:
            results[0] = fn(items[0])
        except BaseException as e:
            ok[0], results[0] = False, e
        for _ in range(len(items) - 1):
            i, ok[i], results[i] = done.get()
        for good, r in zip(ok, results, strict=True):
            if not good:
                raise r
        return results


class Backend:
    """Reference implementation of every op. Subclasses set ``xp`` and may override ops."""

    name = "cpu"
    xp: Any = np
    dtype = np.float32
    #: the MLP runs BatchNorm + ReLU as one op (``relu=True``) when this is set
    fuses_bn_relu = True
    #: batch norm takes ``centre=`` / ``centred=`` / ``overwrite_dy=`` / ``relu_mask=`` (the
    #: MLP then centres its Dense outputs in place and reuses gradient buffers)
    bn_centre_in_place = True

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

    # ------------------------------------------------------------------ work splitting
    #: threads for elementwise work split by rows or chunks (NumPy releases the GIL in ufuncs);
    #: 1 runs everything in the calling thread
    threads = 1
    #: rows per float32 partial column sum, merged in float64 (None: one reduction per part)
    REDUCE_ROWS: int | None = 256
    _pool: _Workers | None = None

    def _parallel(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        """``[fn(i) for i in items]``, on ``threads`` threads (the calling thread and
        ``threads - 1`` workers) when there is more than one."""
        if self.threads > 1 and len(items) > 1:
            if self._pool is None or self._pool.pid != os.getpid():
                self._pool = _Workers(self.threads - 1)
            return self._pool.map_rest(fn, items)
        return [fn(i) for i in items]

    def _parts(self, n: int, min_size: int = 64) -> list[slice]:
        """``threads`` contiguous slices covering range(n), none smaller than ``min_size``."""
        k = max(1, min(self.threads, n // min_size))
        bounds = [n * i // k for i in range(k + 1)]
        return [slice(bounds[i], bounds[i + 1]) for i in range(k)]

    def _colsum(self, a: Array, b: Array | None = None) -> Array:
        """float64 column sums of ``a`` (or of ``a * b``): float32 partials over blocks of
        ``REDUCE_ROWS`` rows, added in float64 (error ~ REDUCE_ROWS * eps, not n * eps)."""
        xp = self.xp
        step = self.REDUCE_ROWS or a.shape[0] or 1
        total = xp.zeros(a.shape[1], dtype=np.float64)
        for s in range(0, a.shape[0], step):
            blk = a[s:s + step]
            part = blk.sum(axis=0) if b is None else xp.einsum("ij,ij->j", blk, b[s:s + step])
            total += part
        return total

    #: rows per float32 partial sum in batch norm's first (centring) pass, merged in float64
    MEAN_BLOCK = 32

    def _blocksum(self, a: Array) -> Array:
        """float64 column sums of ``a``: float32 sums of ``MEAN_BLOCK`` rows, merged in
        float64 (error ~ MEAN_BLOCK * eps relative, without a float64 copy of ``a``)."""
        xp = self.xp
        r, c = a.shape
        k = r // self.MEAN_BLOCK
        total = xp.zeros(c, dtype=np.float64)
        if k:
            blocks = a[: k * self.MEAN_BLOCK].reshape(k, self.MEAN_BLOCK, c).sum(axis=1)
            total += blocks.sum(axis=0, dtype=np.float64)
        if r > k * self.MEAN_BLOCK:
            total += a[k * self.MEAN_BLOCK:].sum(axis=0, dtype=np.float64)
        return total

    def _workspace(self, name: str, shape: tuple[int, ...], dtype: Any) -> Array:
        """A scratch array cached by name, shape, dtype and calling thread (reused, never
        returned to users; threads working on parts of one op each get their own)."""
        key = (name, tuple(shape), np.dtype(dtype).str, threading.get_ident())
        ws = self.__dict__.setdefault("_ws", {})
        buf = ws.get(key)
        if buf is None:
            buf = ws[key] = self.xp.empty(shape, dtype=dtype)
        return buf

    # ------------------------------------------------------------------ dense
    def matmul(self, a: Array, b: Array, out: Array | None = None) -> Array:
        """``a @ b``; pass transposed views (``x.T``) for the backward products."""
        return self.xp.matmul(a, b, out=out)

    def matmuls(self, products: list[tuple[Array, Array, Array]]) -> None:
        """``out = a @ b`` for every ``(a, b, out)``; the products are independent (none
        writes what another reads), so a backend may run them side by side."""
        for a, b, out in products:
            self.matmul(a, b, out=out)

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
    def _split(self, mean: Array, dtype: Any) -> tuple[Array, Array]:
        """float64 ``mean`` as ``hi + lo`` in ``dtype``: ``(x - hi) - lo`` centres x exactly
        to its rounding even when |mean| >> std (``x - hi`` is exact for x near the mean)."""
        hi = mean.astype(dtype)
        return hi, (mean - hi).astype(dtype)

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
        centre: Array | None = None,
        relu_mask: Array | None = None,
    ) -> tuple[Array, Array, Array]:
        """Training-mode batch norm over (n, C) ``x``; returns ``(y, mean, invstd)``.

        Never ``E[x^2] - E[x]^2``. A centring shift ``hi`` first: the column mean of every
        k-th row (at least a 16th of the rows and ``MEAN_BLOCK`` of them), rounded to x's
        dtype. The mean of any b of the n rows lies within ``sqrt(n / b - 1) * std`` of the
        batch mean, so ``d = x - hi`` is centred to within 4 std whatever the data, and
        ``x - hi`` is exact near the mean. Then one pass sums ``d`` and ``d^2`` (float32
        blocks, float64 merge): ``mean = hi + mean(d)``, the biased
        ``var = mean(d^2) - mean(d)^2``. ``mean(d)^2`` is typically ~0.1 ``var``; where it
        exceeds ``var`` (a sample far from the batch's mean), ``d`` is centred once more by
        ``mean(d)`` and summed again, so the cancellation never costs more than a bit.
        ``invstd = 1 / sqrt(var + eps)``; ``y = gamma * (x - mean) * invstd + beta``
        (then ``max(y, 0)`` when ``relu``). ``mean`` is returned in float64 so that backward
        centres x exactly; ``invstd`` in x's dtype.
        In place: ``running_mean = (1 - momentum) * running_mean + momentum * mean`` and
        ``running_var = (1 - momentum) * running_var + momentum * var * n / (n - 1)``
        (PyTorch's momentum; Keras' 0.99 is 0.01 here).

        ``centre`` (an (n, C) array, ``x`` itself allowed, not ``out``) keeps ``d = x - hi``:
        the returned ``mean`` is then ``mean(d)``, the mean of what ``centre`` holds, and
        ``batchnorm_backward(..., x=centre, mean=that, centred=True)`` skips re-centring.
        (The MLP centres its private Dense outputs in place this way on the CPU: one pass
        over memory fewer in the backward.) ``relu_mask`` (bool (n, C), with ``relu``)
        receives ``y > 0``, which the backward then reads instead of ``y`` (a quarter of the
        bytes).
        """
        xp = self.xp
        n = x.shape[0]
        if n < 2:
            raise BatchTooSmallError(
                f"batch norm needs at least 2 samples per training batch, got {n}"
            )
        out = self._out(out, x.shape, x.dtype)
        keep = centre is not None
        if keep and (tuple(centre.shape) != tuple(x.shape) or centre is out):
            raise ValueError("centre must be an array of x's shape other than out")
        dbuf = centre if keep else out
        parts = self._parts(n)
        sample = x[:: max(1, n // max(self.MEAN_BLOCK, -(-n // 16)))]  # >= n / 16 rows
        hi = (self._blocksum(sample) / sample.shape[0]).astype(x.dtype)

        def centre_part(p: slice, src: Array = x, by: Array = hi) -> tuple[Array, Array]:
            d = dbuf[p]
            xp.subtract(src[p], by, out=d)
            return self._colsum(d), self._colsum(d, d)

        s1, s2 = zip(*self._parallel(centre_part, parts), strict=True)
        resid = sum(s1) / n
        var = xp.maximum(sum(s2) / n - resid * resid, 0.0)
        centred_at = hi.astype(np.float64)
        if bool(xp.any(resid * resid > var)):  # an unrepresentative sample: centre again
            again = resid.astype(x.dtype)
            s1, s2 = zip(*self._parallel(lambda p: centre_part(p, dbuf, again), parts),
                         strict=True)
            centred_at = centred_at + again.astype(np.float64)
            resid = sum(s1) / n
            var = xp.maximum(sum(s2) / n - resid * resid, 0.0)
        mean = centred_at + resid
        invstd = (1.0 / xp.sqrt(var + eps)).astype(x.dtype)
        scale = (invstd * gamma).astype(x.dtype)
        shift = (beta - resid * scale).astype(x.dtype)
        zero = x.dtype.type(0)

        def apply(p: slice) -> None:
            y = out[p]
            xp.multiply(dbuf[p], scale, out=y)
            xp.add(y, shift, out=y)
            if relu:
                xp.maximum(y, zero, out=y)
                if relu_mask is not None:
                    xp.greater(y, zero, out=relu_mask[p])

        self._parallel(apply, parts)
        m = float(momentum)
        running_mean[...] = (1 - m) * running_mean + m * mean
        running_var[...] = (1 - m) * running_var + (m * n / (n - 1)) * var
        return out, (resid if keep else mean), invstd

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
        scale = (gamma / xp.sqrt(running_var.astype(np.float64) + eps)).astype(x.dtype)
        mean = running_mean.astype(x.dtype)  # float32 statistics: x - mean is exact near it

        def apply(p: slice) -> None:
            y = out[p]
            xp.subtract(x[p], mean, out=y)
            xp.multiply(y, scale, out=y)
            xp.add(y, beta, out=y)
            if relu:
                xp.maximum(y, 0, out=y)

        self._parallel(apply, self._parts(x.shape[0]))
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
        centred: bool = False,
        overwrite_dy: bool = False,
        relu_mask: Array | None = None,
    ) -> Array:
        """Backward of training-mode batch norm; returns ``dx``, fills ``dgamma``/``dbeta``.

        ``mean`` and ``invstd`` are what the forward returned. With ``d = x - mean``,
        ``x_hat = d * invstd`` and ``g = dy`` (masked by ``y > 0`` when ``y``, the fused-ReLU
        output, is given): ``dbeta = sum(g)``, ``dgamma = sum(g * x_hat)`` (float64 merge),
        ``dx = gamma * invstd * (g - dbeta / n - x_hat * dgamma / n)``. ``d`` is used as
        ``(x - hi) - lo`` (``mean = hi + lo``) with the ``lo`` terms folded into per-column
        constants: ``sum(g * d) = sum(g * (x - hi)) - lo * sum(g)``.

        ``centred``: ``x`` is the forward's ``centre`` (its mean is ``mean``, small next to
        its spread), used as it is, the whole mean folded (``hi = 0``): no centring pass;
        ``out`` may then be ``x`` itself. ``relu_mask``: the forward's bool ``y > 0``, used
        in place of ``y``; with ``overwrite_dy`` the masked gradient is formed in ``dy``
        rather than in a scratch array.
        """
        xp = self.xp
        n = x.shape[0]
        out = self._out(out, x.shape, x.dtype)
        if out is x and not centred:
            raise ValueError("out may be x only with centred=True")
        masked = y is not None or relu_mask is not None
        if not masked or (overwrite_dy and relu_mask is not None):
            g = dy
        else:
            g = self._workspace("bn_g", x.shape, x.dtype)
        if centred:
            hi, lo = None, mean
        else:
            hi, lo = self._split(mean, x.dtype)
        parts = self._parts(n)

        def sums(p: slice) -> tuple[Array, Array]:
            if relu_mask is not None:
                xp.multiply(dy[p], relu_mask[p], out=g[p])
            elif y is not None:  # the ReLU mask as 0.0 / 1.0 straight from the comparison
                xp.greater(y[p], 0, out=g[p])
                xp.multiply(g[p], dy[p], out=g[p])
            if centred:
                d = x[p]
            else:
                d = out[p]
                xp.subtract(x[p], hi, out=d)
            return self._colsum(g[p]), self._colsum(g[p], d)

        s1, s2 = zip(*self._parallel(sums, parts), strict=True)
        db = sum(s1)
        dg = (sum(s2) - lo * db) * invstd
        dbeta[...] = db
        dgamma[...] = dg
        kd = -invstd * dg / n  # coefficient of x - hi (float64)
        k_d = kd.astype(x.dtype)
        k_0 = (-db / n - kd * lo).astype(x.dtype)
        k_1 = (gamma * invstd).astype(x.dtype)

        def apply(p: slice) -> None:
            dx = out[p]
            xp.multiply(x[p] if centred else dx, k_d, out=dx)
            xp.add(dx, k_0, out=dx)
            xp.add(dx, g[p], out=dx)
            xp.multiply(dx, k_1, out=dx)

        self._parallel(apply, parts)
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
    # All take flat arrays updated in place. ``decay`` is the L2 weight-decay coefficient;
    # ``decay_mask`` (1 for Dense weights, 0 elsewhere, or None for everywhere) selects where
    # it applies: the gradient used is ``g + decay * decay_mask * w``. The work runs over
    # chunks of ``CHUNK`` elements with two scratch buffers, so every pass stays in cache and
    # nothing is allocated per step. (Chunks of 2^17 floats, 512 KiB, measured fastest on the
    # CPU: smaller ones cost more in per-call overhead, larger ones fall out of L2.)
    CHUNK = 1 << 17

    def _for_chunks(
        self,
        w: Array,
        g: Array,
        decay: float,
        decay_mask: Array | None,
        body: Callable[[slice, Array, Array], None],
    ) -> None:
        """Call ``body(sl, gd, t)`` per chunk ``sl`` of the flat arrays: ``gd`` holds the
        (decayed) gradient and must not be written (it is ``g[sl]`` itself without decay),
        ``t`` is scratch; the chunks are shared among ``threads``."""
        parts = self._parts(w.shape[0], min_size=self.CHUNK)

        def run(i: int) -> None:
            a = self._workspace("opt_g", (self.CHUNK,), w.dtype)
            b = self._workspace("opt_t", (self.CHUNK,), w.dtype)
            part = parts[i]
            for start in range(part.start, part.stop, self.CHUNK):
                sl = slice(start, min(start + self.CHUNK, part.stop))
                k = sl.stop - start
                body(sl, self._decayed(w, g, sl, decay, decay_mask, a[:k]), b[:k])

        self._parallel(run, list(range(len(parts))))

    def _decayed(self, w: Array, g: Array, sl: slice, decay: float,
                 decay_mask: Array | None, buf: Array) -> Array:
        """The gradient of chunk ``sl`` with L2 decay, ``g + decay * decay_mask * w``, in
        ``buf``; without decay ``g[sl]`` itself (read only: no copy)."""
        if not decay:
            return g[sl]
        xp = self.xp
        xp.multiply(w[sl], w.dtype.type(decay), out=buf)
        if decay_mask is not None:
            xp.multiply(buf, decay_mask[sl], out=buf)
        xp.add(buf, g[sl], out=buf)
        return buf

    @staticmethod
    def _adam_factors(lr: float, beta1: float, beta2: float, eps: float,
                      step: int) -> tuple[float, float]:
        """``(lr * sqrt(c2) / c1, eps * sqrt(c2))`` with ``c1 = 1 - beta1^step`` and
        ``c2 = 1 - beta2^step``: Adam's bias correction folded into two scalars."""
        c1 = 1.0 - float(beta1) ** step
        root_c2 = (1.0 - float(beta2) ** step) ** 0.5
        return lr * root_c2 / c1, eps * root_c2

    def sgd_update(
        self, w: Array, g: Array, lr: float, decay: float = 0.0, decay_mask: Array | None = None
    ) -> None:
        """``w -= lr * g``."""
        xp, f = self.xp, w.dtype.type

        def body(sl: slice, gd: Array, t: Array) -> None:
            xp.multiply(gd, f(lr), out=t)
            xp.subtract(w[sl], t, out=w[sl])

        self._for_chunks(w, g, decay, decay_mask, body)

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
        xp, f = self.xp, w.dtype.type

        def body(sl: slice, gd: Array, t: Array) -> None:
            vs = v[sl]
            xp.multiply(vs, f(beta), out=vs)
            xp.multiply(gd, f(1.0 - beta), out=t)
            xp.add(vs, t, out=vs)
            xp.multiply(vs, f(lr), out=t)
            xp.subtract(w[sl], t, out=w[sl])

        self._for_chunks(w, g, decay, decay_mask, body)

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
        xp, f = self.xp, w.dtype.type

        def body(sl: slice, gd: Array, t: Array) -> None:
            ss = s[sl]
            xp.multiply(gd, gd, out=t)
            xp.multiply(t, f(1.0 - beta2), out=t)
            xp.multiply(ss, f(beta2), out=ss)
            xp.add(ss, t, out=ss)
            xp.sqrt(ss, out=t)
            xp.add(t, f(eps), out=t)
            xp.divide(gd, t, out=t)
            xp.multiply(t, f(lr), out=t)
            xp.subtract(w[sl], t, out=w[sl])

        self._for_chunks(w, g, decay, decay_mask, body)

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
        ``w -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``, computed as
        ``w -= (lr * sqrt(c2) / c1) * m / (sqrt(v) + eps * sqrt(c2))`` with ``c1 = 1 - b1^t``,
        ``c2 = 1 - b2^t`` (the same value, one pass fewer).
        """
        xp, f = self.xp, w.dtype.type
        step_size, eps_hat = self._adam_factors(lr, beta1, beta2, eps, step)

        def body(sl: slice, gd: Array, t: Array) -> None:
            ms, vs = m[sl], v[sl]
            xp.multiply(ms, f(beta1), out=ms)
            xp.multiply(gd, f(1.0 - beta1), out=t)
            xp.add(ms, t, out=ms)
            xp.multiply(gd, gd, out=t)
            xp.multiply(t, f(1.0 - beta2), out=t)
            xp.multiply(vs, f(beta2), out=vs)
            xp.add(vs, t, out=vs)
            xp.sqrt(vs, out=t)
            xp.add(t, f(eps_hat), out=t)
            xp.divide(ms, t, out=t)  # m / (sqrt(v) + eps sqrt(c2))
            xp.multiply(t, f(step_size), out=t)
            xp.subtract(w[sl], t, out=w[sl])

        self._for_chunks(w, g, decay, decay_mask, body)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
