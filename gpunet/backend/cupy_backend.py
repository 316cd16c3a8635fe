"""The GPU backend: ``xp = cupy``; ops with a fused CUDA kernel are overridden here.

Each override checks dtype (float32), C-contiguity, shapes and the device first, since
RawKernels ignore strides, and falls back to the reference op in ``Backend`` otherwise.
Scalars go to the kernels as ``numpy.float32`` / ``numpy.int32`` / ``numpy.int64``; nothing in
these ops waits for the device (the loss stays a 0-d device array).

The host side of every fused op (launch geometry, workspaces, the sequence of launches) is
written as a module-level function over ``xp`` and a ``launch(file, kernel, grid, block,
args)`` callable, so the tests run exactly this code on NumPy arrays with the kernels
compiled for the CPU under the CUDA emulation in ``tests/cuda_emu``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .base import Array, Backend

f32, i32, i64 = np.float32, np.int32, np.int64
_INT_MAX = 2**31 - 1

#: ``launch(file, kernel_name, grid, block, args)``: run one kernel of ``kernels/<file>``
Launcher = Callable[[str, str, tuple, tuple, tuple], None]


@dataclass(frozen=True)
class LaunchConfig:
    """Launch geometry. The defaults suit an H100; the emulated tests shrink them."""

    sm_count: int = 132
    bn_threads: int = 256  # threads per BN tile block (<= BN_MAX_THREADS in batchnorm.cu)
    # bn_max_bdx 16 and bn_blocks_per_sm 2 were the fastest correct of 72 geometries swept on
    # an H100 (benchmarks/sweep_launch.py): training forward 0.297 ms vs 0.347 ms with 32 / 8
    bn_max_bdx: int = 16  # threads along C per BN block
    bn_blocks_per_sm: int = 2  # BN grid size target
    bn_min_rows_per_thread: int = 4
    bn_rows_per_chunk: int = 0  # 0: derived from the grid-size target
    col_threads: int = 256  # threads per block of the per-column finish kernels
    # 4 warps per block: softmax-CE 0.208 ms vs 0.225 ms with 8 (65536 x 1000, H100 sweep)
    sm_warps_per_block: int = 4  # softmax: warps (rows) per block of the warp-per-row kernel
    sm_max_warp_cols: int = 1024  # widest row for the warp-per-row kernel (<= 1024)
    sm_block_threads: int = 256  # softmax: threads of the block-per-row kernel (power of 2)
    reduce_threads: int = 1024  # single-block loss / weight reductions (power of 2)
    ew_threads: int = 256  # optimizer kernels
    ew_blocks_per_sm: int = 16

    def with_(self, **kw: Any) -> LaunchConfig:
        return replace(self, **kw)


# ------------------------------------------------------------------ helpers
def _addr(a: Any) -> int:
    iface = getattr(a, "__cuda_array_interface__", None)
    if iface is None:
        iface = a.__array_interface__
    return int(iface["data"][0])


def _overlap(a: Any, b: Any) -> bool:
    """Whether two C-contiguous arrays share any byte."""
    a0, b0 = _addr(a), _addr(b)
    return a0 < b0 + b.nbytes and b0 < a0 + a.nbytes


def _vec(c: int, *arrays: Any) -> int:
    """4 (16-byte loads) when every row starts 16-byte aligned, else 1."""
    if c % 4 == 0 and all(_addr(a) % 16 == 0 for a in arrays):
        return 4
    return 1


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2_at_least(v: int) -> int:
    p = 1
    while p < v:
        p *= 2
    return p


def bn_geometry(n: int, c: int, vec: int, cfg: LaunchConfig) -> tuple[tuple, tuple, int, int]:
    """``(grid, block, rows_per_chunk, nchunks)`` of the (n, C) tiling in batchnorm.cu."""
    cthreads = _cdiv(c, vec)
    bdx = min(cfg.bn_max_bdx, _pow2_at_least(cthreads), cfg.bn_threads)
    bdy = max(1, min(cfg.bn_threads // bdx, 64))
    grid_x = _cdiv(cthreads, bdx)
    if cfg.bn_rows_per_chunk > 0:
        rpc = cfg.bn_rows_per_chunk
    else:
        target_y = max(1, (cfg.sm_count * cfg.bn_blocks_per_sm) // grid_x)
        rpc = max(_cdiv(n, target_y), bdy * cfg.bn_min_rows_per_thread)
    rpc = _cdiv(rpc, bdy) * bdy
    nchunks = _cdiv(n, rpc)
    if nchunks > 65535:  # grid.y limit
        rpc = _cdiv(_cdiv(n, 65535), bdy) * bdy
        nchunks = _cdiv(n, rpc)
    return (grid_x, nchunks, 1), (bdx, bdy, 1), rpc, nchunks


def _col_grid(c: int, cfg: LaunchConfig) -> tuple[tuple, tuple]:
    return (_cdiv(c, cfg.col_threads), 1, 1), (cfg.col_threads, 1, 1)


# ------------------------------------------------------------------ batch norm
def bn_forward_train(xp: Any, launch: Launcher, cfg: LaunchConfig, x: Array, gamma: Array,
                     beta: Array, running_mean: Array, running_var: Array, momentum: float,
                     eps: float, relu: bool, out: Array) -> tuple[Array, Array, Array]:
    """Host side of the fused training forward (3 launches); see ``Backend``'s docstring."""
    n, c = x.shape
    vs = _vec(c, x)
    grid, block, rpc, nch = bn_geometry(n, c, vs, cfg)
    pmean = xp.empty((nch, c), dtype=f32)
    pm2 = xp.empty((nch, c), dtype=f32)
    launch("batchnorm.cu", f"bn_stats_partial_v{vs}", grid, block,
           (x, i32(n), i32(c), i32(rpc), pmean, pm2))
    mean = xp.empty((c,), dtype=f32)
    invstd = xp.empty((c,), dtype=f32)
    dmean = xp.empty((c,), dtype=f32)
    scale = xp.empty((c,), dtype=f32)
    # constants rounded to float32 from double (f32(1 - 0.999) is closer to 0.001 than
    # 1 - f32(0.999) is: 1e-8 instead of 1.3e-5 relative)
    m = f32(momentum)
    one_minus_m = f32(1.0 - float(momentum))
    unbias_m = f32(float(momentum) * n / (n - 1))
    g2, b2 = _col_grid(c, cfg)
    launch("batchnorm.cu", "bn_stats_finish", g2, b2,
           (x, pmean, pm2, i32(nch), i32(rpc), i32(n), i32(c), gamma, f32(eps), m,
            one_minus_m, unbias_m, mean, invstd, dmean, scale, running_mean, running_var))
    va = _vec(c, x, dmean, scale, beta, out)
    grid, block, rpc, _ = bn_geometry(n, c, va, cfg)
    launch("batchnorm.cu", f"bn_apply_v{va}", grid, block,
           (x, i32(n), i32(c), i32(rpc), dmean, scale, beta, i32(bool(relu)), out))
    return out, mean, invstd


def bn_forward_infer(xp: Any, launch: Launcher, cfg: LaunchConfig, x: Array, gamma: Array,
                     beta: Array, running_mean: Array, running_var: Array, eps: float,
                     relu: bool, out: Array) -> Array:
    """Host side of the inference forward (1 launch)."""
    n, c = x.shape
    v = _vec(c, x, gamma, beta, running_mean, running_var, out)
    grid, block, rpc, _ = bn_geometry(n, c, v, cfg)
    launch("batchnorm.cu", f"bn_infer_v{v}", grid, block,
           (x, i32(n), i32(c), i32(rpc), gamma, beta, running_mean, running_var, f32(eps),
            i32(bool(relu)), out))
    return out


def bn_backward(xp: Any, launch: Launcher, cfg: LaunchConfig, dy: Array, x: Array, gamma: Array,
                mean: Array, invstd: Array, dgamma: Array, dbeta: Array, y: Array | None,
                out: Array) -> Array:
    """Host side of the backward (3 launches); fills ``dgamma`` / ``dbeta``, returns ``out``."""
    n, c = x.shape
    has_y = y is not None
    yy = y if has_y else dy  # a valid pointer that the kernels do not read
    vr = _vec(c, dy, x, yy, mean)
    grid, block, rpc, nch = bn_geometry(n, c, vr, cfg)
    psum_g = xp.empty((nch, c), dtype=f32)
    psum_gx = xp.empty((nch, c), dtype=f32)
    launch("batchnorm.cu", f"bn_bwd_reduce_v{vr}", grid, block,
           (dy, x, yy, i32(has_y), i32(n), i32(c), i32(rpc), mean, psum_g, psum_gx))
    coef = xp.empty((c,), dtype=f32)
    fn = f32(n)
    g2, b2 = _col_grid(c, cfg)
    launch("batchnorm.cu", "bn_bwd_finish", g2, b2,
           (psum_g, psum_gx, i32(nch), i32(c), gamma, invstd, fn, dgamma, dbeta, coef))
    va = _vec(c, dy, x, yy, mean, invstd, dgamma, dbeta, coef, out)
    grid, block, rpc, _ = bn_geometry(n, c, va, cfg)
    launch("batchnorm.cu", f"bn_bwd_apply_v{va}", grid, block,
           (dy, x, yy, i32(has_y), i32(n), i32(c), i32(rpc), mean, invstd, dgamma, dbeta, coef,
            fn, out))
    return out


# ------------------------------------------------------------------ softmax
def _softmax_kernel(n: int, c: int, cfg: LaunchConfig) -> tuple[str, tuple, tuple]:
    if c <= min(cfg.sm_max_warp_cols, 1024):
        items = _pow2_at_least(_cdiv(c, 32))
        wpb = cfg.sm_warps_per_block
        return f"softmax_warp_{items}", (_cdiv(n, wpb), 1, 1), (32 * wpb, 1, 1)
    return "softmax_block", (n, 1, 1), (cfg.sm_block_threads, 1, 1)


def softmax_rows(xp: Any, launch: Launcher, cfg: LaunchConfig, logits: Array,
                 out: Array) -> Array:
    """Host side of the row softmax (1 launch)."""
    n, c = logits.shape
    name, grid, block = _softmax_kernel(n, c, cfg)
    dummy_labels = xp.zeros((1,), dtype=i64)
    launch("softmax.cu", name, grid, block,
           (logits, dummy_labels, logits, logits, i32(n), i32(c), i32(0), i32(0), f32(1.0 / n),
            out, out))
    return out


def softmax_xent(xp: Any, launch: Launcher, cfg: LaunchConfig, logits: Array, labels: Array,
                 class_weights: Array | None, dlogits: Array) -> tuple[Array, Array]:
    """Host side of the fused softmax cross-entropy (2 launches, 3 with class weights).

    ``labels`` must be a contiguous int64 array.
    """
    n, c = logits.shape
    name, grid, block = _softmax_kernel(n, c, cfg)
    rowloss = xp.empty((n,), dtype=f32)
    loss = xp.empty((), dtype=f32)
    has_w = class_weights is not None
    rblock = (cfg.reduce_threads, 1, 1)
    if has_w:
        total = xp.empty((1,), dtype=f32)
        launch("softmax.cu", "ce_weight_total", (1, 1, 1), rblock,
               (labels, class_weights, i32(n), i32(c), total))
        weights = class_weights
    else:
        total = rowloss  # not read
        weights = logits  # not read
    launch("softmax.cu", name, grid, block,
           (logits, labels, weights, total, i32(n), i32(c), i32(1), i32(has_w), f32(1.0 / n),
            dlogits, rowloss))
    launch("softmax.cu", "ce_loss_reduce", (1, 1, 1), rblock,
           (rowloss, i32(n), total, i32(has_w), f32(n), loss))
    return loss, dlogits


# ------------------------------------------------------------------ optimizers
def _ew_grid(n: int, cfg: LaunchConfig) -> tuple[tuple, tuple]:
    blocks = max(1, min(_cdiv(n, cfg.ew_threads), cfg.sm_count * cfg.ew_blocks_per_sm))
    return (blocks, 1, 1), (cfg.ew_threads, 1, 1)


def _decay_args(g: Array, decay: float, decay_mask: Array | None) -> tuple[Array, Any, Any]:
    if not decay:
        return g, f32(0.0), i32(0)
    if decay_mask is None:
        return g, f32(decay), i32(1)
    return decay_mask, f32(decay), i32(2)


def opt_scalars(launch: Launcher, t: Array, lr: Array, sc: Array, beta1: float,
                beta2: float) -> None:
    """On the device: ``t += 1``; ``sc = [lr / (1 - beta1^t), 1 - beta2^t]`` (a beta of 0 gives
    a factor of 1). ``t`` is int64 (1,), ``lr`` float64 (1,), ``sc`` float32 (2,)."""
    launch("optim.cu", "opt_scalars", (1, 1, 1), (1, 1, 1),
           (t, lr, sc, np.float64(beta1), np.float64(beta2)))


def _lr_args(name: str, lr: float, sc: Array | None) -> tuple[str, tuple]:
    """The kernel name and its learning-rate argument: a host float32, or with ``sc`` the
    device scalars of ``opt_scalars`` (the ``_dev`` kernel)."""
    return (name, (f32(lr),)) if sc is None else (name + "_dev", (sc,))


def opt_sgd(launch: Launcher, cfg: LaunchConfig, w: Array, g: Array, lr: float, decay: float,
            decay_mask: Array | None, sc: Array | None = None) -> None:
    n = w.size
    if n == 0:
        return
    mask, d, mode = _decay_args(g, decay, decay_mask)
    grid, block = _ew_grid(n, cfg)
    name, lr_arg = _lr_args("sgd_update", lr, sc)
    launch("optim.cu", name, grid, block, (w, g, mask, i64(n), *lr_arg, d, mode))


def opt_momentum(launch: Launcher, cfg: LaunchConfig, w: Array, g: Array, v: Array, lr: float,
                 beta: float, decay: float, decay_mask: Array | None,
                 sc: Array | None = None) -> None:
    n = w.size
    if n == 0:
        return
    mask, d, mode = _decay_args(g, decay, decay_mask)
    grid, block = _ew_grid(n, cfg)
    name, lr_arg = _lr_args("momentum_update", lr, sc)
    launch("optim.cu", name, grid, block,
           (w, g, v, mask, i64(n), *lr_arg, f32(beta), f32(1.0 - float(beta)), d, mode))


def opt_rmsprop(launch: Launcher, cfg: LaunchConfig, w: Array, g: Array, s: Array, lr: float,
                beta2: float, eps: float, decay: float, decay_mask: Array | None,
                sc: Array | None = None) -> None:
    n = w.size
    if n == 0:
        return
    mask, d, mode = _decay_args(g, decay, decay_mask)
    grid, block = _ew_grid(n, cfg)
    name, lr_arg = _lr_args("rmsprop_update", lr, sc)
    launch("optim.cu", name, grid, block,
           (w, g, s, mask, i64(n), *lr_arg, f32(beta2), f32(1.0 - float(beta2)), f32(eps), d,
            mode))


def opt_adam(launch: Launcher, cfg: LaunchConfig, w: Array, g: Array, m: Array, v: Array,
             lr: float, beta1: float, beta2: float, eps: float, step: int, decay: float,
             decay_mask: Array | None, sc: Array | None = None) -> None:
    """With ``sc`` (device scalars from ``opt_scalars``) ``lr`` and ``step`` are unused."""
    n = w.size
    if n == 0:
        return
    mask, d, mode = _decay_args(g, decay, decay_mask)
    b1, b2 = float(beta1), float(beta2)
    grid, block = _ew_grid(n, cfg)
    tail = (f32(eps), d, mode)
    if sc is None:
        c1 = 1.0 - b1**step
        c2 = 1.0 - b2**step
        launch("optim.cu", "adam_update", grid, block,
               (w, g, m, v, mask, i64(n), f32(lr / c1), f32(b1), f32(1.0 - b1), f32(b2),
                f32(1.0 - b2), f32(c2), *tail))
    else:
        launch("optim.cu", "adam_update_dev", grid, block,
               (w, g, m, v, mask, i64(n), sc, f32(b1), f32(1.0 - b1), f32(b2), f32(1.0 - b2),
                *tail))


# ------------------------------------------------------------------ backend
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
        return (self._ok(x, 2) and 0 < x.shape[0] <= _INT_MAX and 0 < x.shape[1] <= _INT_MAX
                and x.size > 0)

    def _ok_out(self, out: Any, x: Any) -> bool:
        """``out`` is None or a usable output buffer not overlapping the input."""
        if out is None:
            return True
        return self._ok(out, x.ndim, x.shape) and not _overlap(out, x)

    # ------------------------------------------------------------------ batch norm
    def batchnorm_forward_train(self, x: Array, gamma: Array, beta: Array, running_mean: Array,
                                running_var: Array, momentum: float, eps: float,
                                relu: bool = False,
                                out: Array | None = None) -> tuple[Array, Array, Array]:
        ok = self._ok_2d(x) and x.shape[0] >= 2
        if ok:
            c = (x.shape[1],)
            ok = (all(self._ok(a, 1, c) for a in (gamma, beta, running_mean, running_var))
                  and self._ok_out(out, x))
        if not ok:
            return super().batchnorm_forward_train(x, gamma, beta, running_mean, running_var,
                                                   momentum, eps, relu=relu, out=out)
        out = self._out(out, x.shape, x.dtype)
        return bn_forward_train(self.xp, self._launch, self.launch_config, x, gamma, beta,
                                running_mean, running_var, momentum, eps, relu, out)

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
        return bn_forward_infer(self.xp, self._launch, self.launch_config, x, gamma, beta,
                                running_mean, running_var, eps, relu, out)

    def batchnorm_backward(self, dy: Array, x: Array, gamma: Array, mean: Array, invstd: Array,
                           dgamma: Array, dbeta: Array, y: Array | None = None,
                           out: Array | None = None) -> Array:
        ok = self._ok_2d(x) and self._ok(dy, 2, x.shape)
        if ok:
            c = (x.shape[1],)
            ok = (all(self._ok(a, 1, c) for a in (gamma, mean, invstd, dgamma, dbeta))
                  and (y is None or self._ok(y, 2, x.shape))
                  and self._ok_out(out, x)
                  and (out is None or not _overlap(out, dy))
                  and (out is None or y is None or not _overlap(out, y)))
        if not ok:
            return super().batchnorm_backward(dy, x, gamma, mean, invstd, dgamma, dbeta, y=y,
                                              out=out)
        out = self._out(out, x.shape, x.dtype)
        return bn_backward(self.xp, self._launch, self.launch_config, dy, x, gamma, mean,
                           invstd, dgamma, dbeta, y, out)

    # ------------------------------------------------------------------ softmax
    def softmax(self, logits: Array, out: Array | None = None) -> Array:
        if not (self._ok_2d(logits) and self._ok_out(out, logits)):
            return super().softmax(logits, out=out)
        out = self._out(out, logits.shape, logits.dtype)
        return softmax_rows(self.xp, self._launch, self.launch_config, logits, out)

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
        return softmax_xent(xp, self._launch, self.launch_config, logits, labels64,
                            class_weights, dl)

    # ------------------------------------------------------------------ optimizers
    def _ok_flat(self, w: Array, *others: Array | None) -> bool:
        if not (self._on_device(w) and self._ok(w, w.ndim)):
            return False
        return all(a is None or self._ok(a, w.ndim, w.shape) for a in others)

    def sgd_update(self, w: Array, g: Array, lr: float, decay: float = 0.0,
                   decay_mask: Array | None = None) -> None:
        if not self._ok_flat(w, g, decay_mask):
            return super().sgd_update(w, g, lr, decay, decay_mask)
        opt_sgd(self._launch, self.launch_config, w, g, lr, decay, decay_mask)

    def momentum_update(self, w: Array, g: Array, v: Array, lr: float, beta: float,
                        decay: float = 0.0, decay_mask: Array | None = None) -> None:
        if not self._ok_flat(w, g, v, decay_mask):
            return super().momentum_update(w, g, v, lr, beta, decay, decay_mask)
        opt_momentum(self._launch, self.launch_config, w, g, v, lr, beta, decay, decay_mask)

    def rmsprop_update(self, w: Array, g: Array, s: Array, lr: float, beta2: float, eps: float,
                       decay: float = 0.0, decay_mask: Array | None = None) -> None:
        if not self._ok_flat(w, g, s, decay_mask):
            return super().rmsprop_update(w, g, s, lr, beta2, eps, decay, decay_mask)
        opt_rmsprop(self._launch, self.launch_config, w, g, s, lr, beta2, eps, decay,
                    decay_mask)

    def adam_update(self, w: Array, g: Array, m: Array, v: Array, lr: float, beta1: float,
                    beta2: float, eps: float, step: int, decay: float = 0.0,
                    decay_mask: Array | None = None) -> None:
        if not self._ok_flat(w, g, m, v, decay_mask):
            return super().adam_update(w, g, m, v, lr, beta1, beta2, eps, step, decay,
                                       decay_mask)
        opt_adam(self._launch, self.launch_config, w, g, m, v, lr, beta1, beta2, eps, step,
                 decay, decay_mask)

    # ------------------------------------------------------------------ device scalars
    # For a step replayed as a CUDA graph: the step count and learning rate live in device
    # memory (see gpunet.optim.DeviceScalars); opt_scalars advances them inside the graph.
    def optimizer_scalars(self, t: Array, lr: Array, sc: Array, beta1: float,
                          beta2: float) -> None:
        """``t += 1``; ``sc = [lr / (1 - beta1^t), 1 - beta2^t]``, on the device."""
        opt_scalars(self._launch, t, lr, sc, beta1, beta2)

    def sgd_update_dev(self, w: Array, g: Array, sc: Array, decay: float = 0.0,
                       decay_mask: Array | None = None) -> None:
        opt_sgd(self._launch, self.launch_config, w, g, 0.0, decay, decay_mask, sc=sc)

    def momentum_update_dev(self, w: Array, g: Array, v: Array, sc: Array, beta: float,
                            decay: float = 0.0, decay_mask: Array | None = None) -> None:
        opt_momentum(self._launch, self.launch_config, w, g, v, 0.0, beta, decay, decay_mask,
                     sc=sc)

    def rmsprop_update_dev(self, w: Array, g: Array, s: Array, sc: Array, beta2: float,
                           eps: float, decay: float = 0.0,
                           decay_mask: Array | None = None) -> None:
        opt_rmsprop(self._launch, self.launch_config, w, g, s, 0.0, beta2, eps, decay,
                    decay_mask, sc=sc)

    def adam_update_dev(self, w: Array, g: Array, m: Array, v: Array, sc: Array, beta1: float,
                        beta2: float, eps: float, decay: float = 0.0,
                        decay_mask: Array | None = None) -> None:
        opt_adam(self._launch, self.launch_config, w, g, m, v, 0.0, beta1, beta2, eps, 0, decay,
                 decay_mask, sc=sc)

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
