"""The GPU backend: ``xp = cupy``; ops with a fused CUDA kernel are overridden here.

Each override keeps the reference's signature (``Backend`` in ``base.py``), checks dtype
(float32), C-contiguity, shapes and the device first, since RawKernels ignore strides, and
calls ``super()`` (the reference) when a check fails. Otherwise it calls the host launch
function of the same name in ``cuda_host.py``, which launches the kernels of the same name
(docs/architecture.md, "Op table"). Nothing in these ops waits for the device (the loss
stays a 0-d device array).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import cuda_host as host
from .base import Array, Backend
from .cuda_host import INT_MAX, LaunchConfig, overlaps

__all__ = ["CupyBackend", "LaunchConfig"]


class CupyBackend(Backend):
    """CuPy arrays on one CUDA device, with fused kernels for batch norm (ReLU fused in),
    softmax / softmax cross-entropy and the optimizer updates."""

    name = "gpu"
    #: the MLP fuses BatchNorm + ReLU into one op on this backend
    fuses_bn_relu = True
    #: the kernels read x and write y / dx in one pass each: no in-place centring to gain
    bn_centre_in_place = False
    device_memory = True
    asynchronous = True
    has_graphs = True

    def __init__(self, device: int = 0) -> None:
        import cupy

        self.xp = cupy
        self.device_id = int(device)
        self.device = cupy.cuda.Device(self.device_id)
        self.device.use()
        try:
            sms = int(self.device.attributes["MultiProcessorCount"])
        except Exception:  # noqa: BLE001 - geometry only; the default is a fine guess
            sms = LaunchConfig.sm_count
        self.launch_config = LaunchConfig(sm_count=max(1, sms))

    # ------------------------------------------------------------------ plumbing
    def asarray(self, x: Any, dtype: Any = None) -> Any:
        with self.device:
            return self.xp.asarray(x, dtype=dtype)

    def to_host(self, x: Any) -> np.ndarray:
        if isinstance(x, np.ndarray):
            return x
        return self.xp.asnumpy(x)

    def synchronize(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()

    def _launch(self, file: str, kernel: str, grid: tuple, block: tuple, args: tuple) -> None:
        from gpunet import kernels

        kernels.get_function(file, kernel, self.device_id)(grid, block, args)

    def _on_device(self, a: Any) -> bool:
        """``a`` is an array of this backend's device."""
        return isinstance(a, self.xp.ndarray) and a.device.id == self.device_id

    def _ok(self, a: Any, ndim: int, shape: tuple | None = None) -> bool:
        """float32, C-contiguous, this device, ``ndim`` dims (and ``shape`` when given)."""
        return (
            self._on_device(a)
            and a.dtype == np.float32
            and a.ndim == ndim
            and a.flags.c_contiguous
            and (shape is None or tuple(a.shape) == tuple(shape))
        )

    def _ok_2d(self, x: Any) -> bool:
        return (self._ok(x, 2) and 0 < x.shape[0] <= INT_MAX and 0 < x.shape[1] <= INT_MAX
                and x.size > 0)

    def _ok_out(self, out: Any, x: Any) -> bool:
        """``out`` is None or a usable output buffer not overlapping the input."""
        if out is None:
            return True
        return self._ok(out, x.ndim, x.shape) and not overlaps(out, x)

    # ------------------------------------------------------------------ batch norm
    def batchnorm_forward_train(self, x: Array, gamma: Array, beta: Array, running_mean: Array,
                                running_var: Array, momentum: float | Array, eps: float,
                                relu: bool = False,
                                out: Array | None = None) -> tuple[Array, Array, Array]:
        ok = self._ok_2d(x) and x.shape[0] >= 2
        if ok:
            c = (x.shape[1],)
            ok = (all(self._ok(a, 1, c) for a in (gamma, beta, running_mean, running_var))
                  and self._ok_out(out, x)
                  and (np.ndim(momentum) == 0 or self._ok(momentum, 1, c)))
        if not ok:
            return super().batchnorm_forward_train(x, gamma, beta, running_mean, running_var,
                                                   momentum, eps, relu=relu, out=out)
        out = self._out(out, x.shape, x.dtype)
        return host.batchnorm_forward_train(self.xp, self._launch, self.launch_config, x, gamma,
                                            beta, running_mean, running_var, momentum, eps, relu,
                                            out)

    def batchnorm_forward_infer(self, x: Array, gamma: Array, beta: Array, running_mean: Array,
                                running_var: Array, eps: float, relu: bool = False,
                                out: Array | None = None) -> Array:
        ok = self._ok_2d(x)
        if ok:
            c = (x.shape[1],)
            ok = (all(self._ok(a, 1, c) for a in (gamma, beta, running_mean, running_var))
                  and (out is None or self._ok(out, 2, x.shape)))
        if not ok:
            return super().batchnorm_forward_infer(x, gamma, beta, running_mean, running_var,
                                                   eps, relu=relu, out=out)
        out = self._out(out, x.shape, x.dtype)
        return host.batchnorm_forward_infer(self.xp, self._launch, self.launch_config, x, gamma,
                                            beta, running_mean, running_var, eps, relu, out)

    def batchnorm_backward(self, dy: Array, x: Array, gamma: Array, mean: Array, invstd: Array,
                           dgamma: Array, dbeta: Array, y: Array | None = None,
                           out: Array | None = None) -> Array:
        ok = self._ok_2d(x) and self._ok(dy, 2, x.shape)
        if ok:
            c = (x.shape[1],)
            ok = (all(self._ok(a, 1, c) for a in (gamma, mean, invstd, dgamma, dbeta))
                  and (y is None or self._ok(y, 2, x.shape))
                  and self._ok_out(out, x)
                  and (out is None or not overlaps(out, dy))
                  and (out is None or y is None or not overlaps(out, y)))
        if not ok:
            return super().batchnorm_backward(dy, x, gamma, mean, invstd, dgamma, dbeta, y=y,
                                              out=out)
        out = self._out(out, x.shape, x.dtype)
        return host.batchnorm_backward(self.xp, self._launch, self.launch_config, dy, x, gamma,
                                       mean, invstd, dgamma, dbeta, y, out)

    # ------------------------------------------------------------------ softmax
    def softmax(self, logits: Array, out: Array | None = None) -> Array:
        if not (self._ok_2d(logits) and self._ok_out(out, logits)):
            return super().softmax(logits, out=out)
        out = self._out(out, logits.shape, logits.dtype)
        return host.softmax(self.xp, self._launch, self.launch_config, logits, out)

    def softmax_cross_entropy(self, logits: Array, labels: Array,
                              class_weights: Array | None = None,
                              dlogits: Array | None = None) -> tuple[Array, Array]:
        xp = self.xp
        ok = (self._ok_2d(logits) and self._ok_out(dlogits, logits)
              and self._on_device(labels) and labels.shape == (logits.shape[0],)
              and labels.dtype.kind in "iu"
              and (class_weights is None or self._ok(class_weights, 1, (logits.shape[1],))))
        if not ok:
            return super().softmax_cross_entropy(logits, labels, class_weights, dlogits)
        labels64 = xp.ascontiguousarray(labels, dtype=xp.int64)
        dl = self._out(dlogits, logits.shape, logits.dtype)
        return host.softmax_cross_entropy(xp, self._launch, self.launch_config, logits, labels64,
                                          class_weights, dl)

    def softmax_cross_entropy_packed(self, logits: Array, labels: Array,
                                     class_weights: Array | None = None,
                                     dlogits: Array | None = None) -> tuple[Array, Array]:
        xp = self.xp
        ok = (self._ok_2d(logits) and self._ok_out(dlogits, logits)
              and self._on_device(labels) and labels.ndim == 2
              and labels.shape[0] == logits.shape[0] and labels.dtype.kind in "iu")
        if ok:
            k = labels.shape[1]
            ok = (0 < k and logits.shape[1] % k == 0 and logits.shape[0] * k <= INT_MAX
                  and (class_weights is None
                       or self._ok(class_weights, 2, (k, logits.shape[1] // k))))
        if not ok:
            return super().softmax_cross_entropy_packed(logits, labels, class_weights, dlogits)
        labels64 = xp.ascontiguousarray(labels, dtype=xp.int64)
        dl = self._out(dlogits, logits.shape, logits.dtype)
        return host.softmax_cross_entropy_packed(xp, self._launch, self.launch_config, logits,
                                                 labels64, class_weights, dl)

    # ------------------------------------------------------------------ optimizers
    def _ok_flat(self, w: Array, *others: Array | None) -> bool:
        if not (self._on_device(w) and self._ok(w, w.ndim)):
            return False
        return all(a is None or self._ok(a, w.ndim, w.shape) for a in others)

    def sgd_update(self, w: Array, g: Array, lr: float, decay: float = 0.0,
                   decay_mask: Array | None = None) -> None:
        if not self._ok_flat(w, g, decay_mask):
            return super().sgd_update(w, g, lr, decay, decay_mask)
        host.sgd_update(self._launch, self.launch_config, w, g, lr, decay, decay_mask)

    def momentum_update(self, w: Array, g: Array, v: Array, lr: float, beta: float,
                        decay: float = 0.0, decay_mask: Array | None = None) -> None:
        if not self._ok_flat(w, g, v, decay_mask):
            return super().momentum_update(w, g, v, lr, beta, decay, decay_mask)
        host.momentum_update(self._launch, self.launch_config, w, g, v, lr, beta, decay,
                             decay_mask)

    def rmsprop_update(self, w: Array, g: Array, s: Array, lr: float, beta2: float, eps: float,
                       decay: float = 0.0, decay_mask: Array | None = None) -> None:
        if not self._ok_flat(w, g, s, decay_mask):
            return super().rmsprop_update(w, g, s, lr, beta2, eps, decay, decay_mask)
        host.rmsprop_update(self._launch, self.launch_config, w, g, s, lr, beta2, eps, decay,
                            decay_mask)

    def adam_update(self, w: Array, g: Array, m: Array, v: Array, lr: float, beta1: float,
                    beta2: float, eps: float, step: int, decay: float = 0.0,
                    decay_mask: Array | None = None) -> None:
        if not self._ok_flat(w, g, m, v, decay_mask):
            return super().adam_update(w, g, m, v, lr, beta1, beta2, eps, step, decay,
                                       decay_mask)
        host.adam_update(self._launch, self.launch_config, w, g, m, v, lr, beta1, beta2, eps,
                         step, decay, decay_mask)

    # ------------------------------------------------------------------ optimizers, packed
    # Every per-member scalar stays in device memory (graph replay); the kernels read
    # (K, P) float32 rows, (K,) float32 scalars, int64 steps and a bool ``active``.
    def _ok_packed(self, w: Array, rows: tuple, scalars: tuple, decay_mask: Array | None,
                   active: Array | None, t: Array | None = None) -> bool:
        if not (self._ok(w, 2) and 0 < w.shape[0] <= 65535):
            return False
        k = (w.shape[0],)
        return (all(self._ok(a, 2, w.shape) for a in rows)
                and all(self._ok(a, 1, k) for a in scalars)
                and (decay_mask is None or self._ok(decay_mask, 1, (w.shape[1],)))
                and (active is None or (self._on_device(active) and active.dtype == np.bool_
                                        and active.shape == k and active.flags.c_contiguous))
                and (t is None or (self._on_device(t) and t.dtype == np.int64
                                   and t.shape == k and t.flags.c_contiguous)))

    def sgd_update_packed(self, w: Array, g: Array, lr: Array, decay: Array,
                          decay_mask: Array | None = None, active: Array | None = None) -> None:
        if not self._ok_packed(w, (g,), (lr, decay), decay_mask, active):
            return super().sgd_update_packed(w, g, lr, decay, decay_mask, active)
        host.sgd_update_packed(self.xp, self._launch, self.launch_config, w, g, lr, decay,
                               decay_mask, active)

    def momentum_update_packed(self, w: Array, g: Array, v: Array, lr: Array, beta: Array,
                               decay: Array, decay_mask: Array | None = None,
                               active: Array | None = None) -> None:
        if not self._ok_packed(w, (g, v), (lr, beta, decay), decay_mask, active):
            return super().momentum_update_packed(w, g, v, lr, beta, decay, decay_mask, active)
        host.momentum_update_packed(self.xp, self._launch, self.launch_config, w, g, v, lr, beta,
                                    decay, decay_mask, active)

    def rmsprop_update_packed(self, w: Array, g: Array, s: Array, lr: Array, beta2: Array,
                              eps: Array, decay: Array, decay_mask: Array | None = None,
                              active: Array | None = None) -> None:
        if not self._ok_packed(w, (g, s), (lr, beta2, eps, decay), decay_mask, active):
            return super().rmsprop_update_packed(w, g, s, lr, beta2, eps, decay, decay_mask,
                                                 active)
        host.rmsprop_update_packed(self.xp, self._launch, self.launch_config, w, g, s, lr,
                                   beta2, eps, decay, decay_mask, active)

    def adam_update_packed(self, w: Array, g: Array, m: Array, v: Array, lr: Array,
                           beta1: Array, beta2: Array, eps: Array, t: Array, decay: Array,
                           decay_mask: Array | None = None,
                           active: Array | None = None) -> None:
        if not self._ok_packed(w, (g, m, v), (lr, beta1, beta2, eps, decay), decay_mask,
                               active, t):
            return super().adam_update_packed(w, g, m, v, lr, beta1, beta2, eps, t, decay,
                                              decay_mask, active)
        host.adam_update_packed(self.xp, self._launch, self.launch_config, w, g, m, v, lr,
                                beta1, beta2, eps, t, decay, decay_mask, active)

    # ------------------------------------------------------------------ device scalars
    # For a step replayed as a CUDA graph: the step count and learning rate live in device
    # memory (see gpunet.optim.DeviceScalars); optimizer_scalars advances them inside the graph.
    def optimizer_scalars(self, t: Array, lr: Array, sc: Array, beta1: float,
                          beta2: float) -> None:
        """``t += 1``; ``sc = [lr / (1 - beta1^t), 1 - beta2^t]``, on the device."""
        host.optimizer_scalars(self._launch, t, lr, sc, beta1, beta2)

    def sgd_update_dev(self, w: Array, g: Array, sc: Array, decay: float = 0.0,
                       decay_mask: Array | None = None) -> None:
        host.sgd_update_dev(self._launch, self.launch_config, w, g, sc, decay, decay_mask)

    def momentum_update_dev(self, w: Array, g: Array, v: Array, sc: Array, beta: float,
                            decay: float = 0.0, decay_mask: Array | None = None) -> None:
        host.momentum_update_dev(self._launch, self.launch_config, w, g, v, sc, beta, decay,
                                 decay_mask)

    def rmsprop_update_dev(self, w: Array, g: Array, s: Array, sc: Array, beta2: float,
                           eps: float, decay: float = 0.0,
                           decay_mask: Array | None = None) -> None:
        host.rmsprop_update_dev(self._launch, self.launch_config, w, g, s, sc, beta2, eps,
                                decay, decay_mask)

    def adam_update_dev(self, w: Array, g: Array, m: Array, v: Array, sc: Array, beta1: float,
                        beta2: float, eps: float, decay: float = 0.0,
                        decay_mask: Array | None = None) -> None:
        host.adam_update_dev(self._launch, self.launch_config, w, g, m, v, sc, beta1, beta2,
                             eps, decay, decay_mask)

    def supports_device_scalars(self, *flat: Array | None) -> bool:
        """Whether the ``*_dev`` kernels take these flat arrays (float32, contiguous, here)."""
        return self._ok_flat(*flat)

    # ------------------------------------------------------------------ GEMM
    def matmul(self, a: Array, b: Array, out: Array | None = None) -> Array:
        """``a @ b``; through gpunet's own cuBLAS handle when ``use_own_gemm`` is on (the
        only GEMM a CUDA-graph capture can record), else ``cupy.matmul``."""
        gemm = self.gemm
        if gemm is not None and out is not None and gemm.accepts(a, b, out):
            gemm(a, b, out)
            return out
        return super().matmul(a, b, out=out)

    def matmul_batched(self, a: Array, b: Array, out: Array) -> Array:
        """``out[k] = a[k] @ b[k]`` as one strided-batched GEMM on gpunet's own cuBLAS
        handle when ``use_own_gemm`` is on and the layouts allow (member views of (n, K*C)
        activations and their transposes do, a shared 2-D ``a`` too), else the reference."""
        gemm = self.gemm
        if gemm is not None and gemm.accepts_batched(a, b, out):
            gemm.batched(a, b, out)
            return out
        return super().matmul_batched(a, b, out)

    gemm: Any = None

    def use_own_gemm(self, tf32: bool = False) -> bool:
        """Route matmuls through a cuBLAS handle gpunet owns (stream, workspace and math mode
        set by gpunet), so that they can be captured in a CUDA graph. ``tf32=True`` lets cuBLAS
        use TF32 tensor cores (faster, ~10-bit mantissa products). Returns False, leaving
        ``cupy.matmul`` in place, when libcublas cannot be loaded."""
        from .cublas import CublasGemm

        if self.gemm is None:
            try:
                with self.device:
                    self.gemm = CublasGemm(self.xp)
            except Exception as exc:  # noqa: BLE001 - any failure keeps cupy.matmul
                import warnings

                warnings.warn(f"gpunet: own cuBLAS handle unavailable ({exc}); CUDA graphs off",
                              RuntimeWarning, stacklevel=2)
                return False
        self.gemm.set_tf32(tf32)
        return True

    def __repr__(self) -> str:
        return f"CupyBackend(device={self.device_id})"
