"""The host side of the CUDA kernels: launch geometry, workspaces and the launch sequence of
each fused op, one function per backend op, named as the op (docs/architecture.md, "Op
table"): ``CupyBackend.batchnorm_forward_train`` calls ``batchnorm_forward_train`` here,
which launches ``batchnorm_forward_train_stats_v4`` / ``..._finish`` / ``..._apply_v4`` from
``kernels/batchnorm.cu``. Every kernel name is written out in full (variants in a table keyed
by vector width or row width), so searching for a kernel's name finds its caller.

Each function works over ``xp`` and a ``launch(file, kernel, grid, block, args)`` callable,
so the tests run exactly this code on NumPy arrays with the kernels compiled for the CPU under
the CUDA emulation in ``tests/cuda_emu``. Scalars go to the kernels as ``numpy.float32`` /
``numpy.int32`` / ``numpy.int64``; nothing here waits for the device. Callers check dtype
(float32), C-contiguity, shapes and the device first (RawKernels ignore strides).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .base import Array

f32, i32, i64 = np.float32, np.int32, np.int64
INT_MAX = 2**31 - 1

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


def overlaps(a: Any, b: Any) -> bool:
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


def batchnorm_geometry(n: int, c: int, vec: int,
                       cfg: LaunchConfig) -> tuple[tuple, tuple, int, int]:
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
#: the variants of each tiled kernel by vector width (``_vec``)
BATCHNORM_FORWARD_TRAIN_STATS = {1: "batchnorm_forward_train_stats_v1",
                                 4: "batchnorm_forward_train_stats_v4"}
BATCHNORM_FORWARD_TRAIN_APPLY = {1: "batchnorm_forward_train_apply_v1",
                                 4: "batchnorm_forward_train_apply_v4"}
BATCHNORM_FORWARD_INFER = {1: "batchnorm_forward_infer_v1", 4: "batchnorm_forward_infer_v4"}
BATCHNORM_BACKWARD_REDUCE = {1: "batchnorm_backward_reduce_v1", 4: "batchnorm_backward_reduce_v4"}
BATCHNORM_BACKWARD_APPLY = {1: "batchnorm_backward_apply_v1", 4: "batchnorm_backward_apply_v4"}


def batchnorm_forward_train(xp: Any, launch: Launcher, cfg: LaunchConfig, x: Array,
                            gamma: Array, beta: Array, running_mean: Array, running_var: Array,
                            momentum: float | Array, eps: float, relu: bool,
                            out: Array) -> tuple[Array, Array, Array]:
    """Host side of the fused training forward (3 launches); the formulas are
    ``Backend.batchnorm_forward_train``'s. Returns ``(out, mean, invstd)``, all float32.
    ``momentum``: a float, or a float32 (C,) device array read by the finish kernel (the
    per-column variant, ``batchnorm_forward_train_finish_colmomentum``)."""
    n, c = x.shape
    vs = _vec(c, x)
    grid, block, rpc, nch = batchnorm_geometry(n, c, vs, cfg)
    pmean = xp.empty((nch, c), dtype=f32)
    pm2 = xp.empty((nch, c), dtype=f32)
    launch("batchnorm.cu", BATCHNORM_FORWARD_TRAIN_STATS[vs], grid, block,
           (x, i32(n), i32(c), i32(rpc), pmean, pm2))
    mean = xp.empty((c,), dtype=f32)
    invstd = xp.empty((c,), dtype=f32)
    dmean = xp.empty((c,), dtype=f32)
    scale = xp.empty((c,), dtype=f32)
    g2, b2 = _col_grid(c, cfg)
    if np.ndim(momentum):
        launch("batchnorm.cu", "batchnorm_forward_train_finish_colmomentum", g2, b2,
               (x, pmean, pm2, i32(nch), i32(rpc), i32(n), i32(c), gamma, f32(eps), momentum,
                mean, invstd, dmean, scale, running_mean, running_var))
    else:
        # constants rounded to float32 from double (f32(1 - 0.999) is closer to 0.001 than
        # 1 - f32(0.999) is: 1e-8 instead of 1.3e-5 relative)
        m = f32(momentum)
        one_minus_m = f32(1.0 - float(momentum))
        unbias_m = f32(float(momentum) * n / (n - 1))
        launch("batchnorm.cu", "batchnorm_forward_train_finish", g2, b2,
               (x, pmean, pm2, i32(nch), i32(rpc), i32(n), i32(c), gamma, f32(eps), m,
                one_minus_m, unbias_m, mean, invstd, dmean, scale, running_mean, running_var))
    va = _vec(c, x, dmean, scale, beta, out)
    grid, block, rpc, _ = batchnorm_geometry(n, c, va, cfg)
    launch("batchnorm.cu", BATCHNORM_FORWARD_TRAIN_APPLY[va], grid, block,
           (x, i32(n), i32(c), i32(rpc), dmean, scale, beta, i32(bool(relu)), out))
    return out, mean, invstd


def batchnorm_forward_infer(xp: Any, launch: Launcher, cfg: LaunchConfig, x: Array,
                            gamma: Array, beta: Array, running_mean: Array, running_var: Array,
                            eps: float, relu: bool, out: Array) -> Array:
    """Host side of the inference forward (1 launch)."""
    n, c = x.shape
    v = _vec(c, x, gamma, beta, running_mean, running_var, out)
    grid, block, rpc, _ = batchnorm_geometry(n, c, v, cfg)
    launch("batchnorm.cu", BATCHNORM_FORWARD_INFER[v], grid, block,
           (x, i32(n), i32(c), i32(rpc), gamma, beta, running_mean, running_var, f32(eps),
            i32(bool(relu)), out))
    return out


def batchnorm_backward(xp: Any, launch: Launcher, cfg: LaunchConfig, dy: Array, x: Array,
                       gamma: Array, mean: Array, invstd: Array, dgamma: Array, dbeta: Array,
                       y: Array | None, out: Array) -> Array:
    """Host side of the backward (3 launches); fills ``dgamma`` / ``dbeta``, returns ``out``."""
    n, c = x.shape
    has_y = y is not None
    yy = y if has_y else dy  # a valid pointer that the kernels do not read
    vr = _vec(c, dy, x, yy, mean)
    grid, block, rpc, nch = batchnorm_geometry(n, c, vr, cfg)
    psum_g = xp.empty((nch, c), dtype=f32)
    psum_gx = xp.empty((nch, c), dtype=f32)
    launch("batchnorm.cu", BATCHNORM_BACKWARD_REDUCE[vr], grid, block,
           (dy, x, yy, i32(has_y), i32(n), i32(c), i32(rpc), mean, psum_g, psum_gx))
    coef = xp.empty((c,), dtype=f32)
    fn = f32(n)
    g2, b2 = _col_grid(c, cfg)
    launch("batchnorm.cu", "batchnorm_backward_finish", g2, b2,
           (psum_g, psum_gx, i32(nch), i32(c), gamma, invstd, fn, dgamma, dbeta, coef))
    va = _vec(c, dy, x, yy, mean, invstd, dgamma, dbeta, coef, out)
    grid, block, rpc, _ = batchnorm_geometry(n, c, va, cfg)
    launch("batchnorm.cu", BATCHNORM_BACKWARD_APPLY[va], grid, block,
           (dy, x, yy, i32(has_y), i32(n), i32(c), i32(rpc), mean, invstd, dgamma, dbeta, coef,
            fn, out))
    return out


# ------------------------------------------------------------------ softmax
#: one warp per row, the row in registers: the kernel by items per lane (C <= 32 * items)
SOFTMAX_WARP = {1: "softmax_warp_1", 2: "softmax_warp_2", 4: "softmax_warp_4",
                8: "softmax_warp_8", 16: "softmax_warp_16", 32: "softmax_warp_32"}


def _softmax_kernel(n: int, c: int, cfg: LaunchConfig) -> tuple[str, tuple, tuple]:
    """The row kernel for (n, c) logits (``softmax_warp_*`` or ``softmax_block``, both
    serving ``softmax`` and ``softmax_cross_entropy``) and its grid and block."""
    if c <= min(cfg.sm_max_warp_cols, 1024):
        items = _pow2_at_least(_cdiv(c, 32))
        wpb = cfg.sm_warps_per_block
        return SOFTMAX_WARP[items], (_cdiv(n, wpb), 1, 1), (32 * wpb, 1, 1)
    return "softmax_block", (n, 1, 1), (cfg.sm_block_threads, 1, 1)


def softmax(xp: Any, launch: Launcher, cfg: LaunchConfig, logits: Array, out: Array) -> Array:
    """Host side of the row softmax (1 launch, the row kernel in mode 0)."""
    n, c = logits.shape
    name, grid, block = _softmax_kernel(n, c, cfg)
    dummy_labels = xp.zeros((1,), dtype=i64)
    launch("softmax.cu", name, grid, block,
           (logits, dummy_labels, logits, logits, i32(n), i32(c), i32(0), i32(0), f32(1.0 / n),
            out, out))
    return out


def softmax_cross_entropy(xp: Any, launch: Launcher, cfg: LaunchConfig, logits: Array,
                          labels: Array, class_weights: Array | None,
                          dlogits: Array) -> tuple[Array, Array]:
    """Host side of the fused softmax cross-entropy (2 launches, 3 with class weights): the
    weight total, the row kernel in mode 1, the loss reduction. ``labels`` must be a
    contiguous int64 array."""
    n, c = logits.shape
    name, grid, block = _softmax_kernel(n, c, cfg)
    rowloss = xp.empty((n,), dtype=f32)
    loss = xp.empty((), dtype=f32)
    has_w = class_weights is not None
    rblock = (cfg.reduce_threads, 1, 1)
    if has_w:
        total = xp.empty((1,), dtype=f32)
        launch("softmax.cu", "softmax_cross_entropy_weight_total", (1, 1, 1), rblock,
               (labels, class_weights, i32(n), i32(c), total))
        weights = class_weights
    else:
        total = rowloss  # not read
        weights = logits  # not read
    launch("softmax.cu", name, grid, block,
           (logits, labels, weights, total, i32(n), i32(c), i32(1), i32(has_w), f32(1.0 / n),
            dlogits, rowloss))
    launch("softmax.cu", "softmax_cross_entropy_loss_reduce", (1, 1, 1), rblock,
           (rowloss, i32(n), total, i32(has_w), f32(n), loss))
    return loss, dlogits


def softmax_cross_entropy_packed(xp: Any, launch: Launcher, cfg: LaunchConfig, logits: Array,
                                 labels: Array, class_weights: Array | None,
                                 dlogits: Array) -> tuple[Array, Array]:
    """Host side of the packed cross-entropy: (n, K*c) logits as n*K rows of width c, the
    row kernel over them in mode 1 (``softmax_warp_*`` / ``softmax_block``), then the member
    axis: per-member weight totals and weights (with class weights, float32 (K, c)), one
    loss per member. 2 launches, 4 with class weights. ``labels``: contiguous int64 (n, K).
    Returns ``(losses (K,), dlogits)``."""
    n, kc = logits.shape
    k = labels.shape[1]
    c, rows = kc // k, n * k
    name, grid, block = _softmax_kernel(rows, c, cfg)
    rowloss = xp.empty((rows,), dtype=f32)
    losses = xp.empty((k,), dtype=f32)
    has_w = class_weights is not None
    rblock = (cfg.reduce_threads, 1, 1)
    total = xp.empty((k,), dtype=f32) if has_w else rowloss  # not read without weights
    if has_w:
        launch("softmax.cu", "softmax_cross_entropy_packed_weight_total", (k, 1, 1), rblock,
               (labels, class_weights, i32(n), i32(k), i32(c), total))
    # the row kernel without weights: s_i = 1 / n, or 1 for the weights to scale next
    launch("softmax.cu", name, grid, block,
           (logits, labels, logits, total, i32(rows), i32(c), i32(1), i32(0),
            f32(1.0 if has_w else 1.0 / n), dlogits, rowloss))
    if has_w:
        launch("softmax.cu", "softmax_cross_entropy_packed_weight_apply",
               *_ew_grid(rows * c, cfg),
               (labels, class_weights, total, i32(rows), i32(k), i32(c), dlogits, rowloss))
    launch("softmax.cu", "softmax_cross_entropy_packed_loss_reduce", (k, 1, 1), rblock,
           (rowloss, i32(n), i32(k), total, i32(has_w), f32(n), losses))
    return losses, dlogits


# ------------------------------------------------------------------ optimizers
# ``*_update`` take the learning rate (and Adam's step) from the host; ``*_update_dev`` read
# them from the device scalars ``sc`` that ``optimizer_scalars`` writes (CUDA-graph replay).
def _ew_grid(n: int, cfg: LaunchConfig) -> tuple[tuple, tuple]:
    blocks = max(1, min(_cdiv(n, cfg.ew_threads), cfg.sm_count * cfg.ew_blocks_per_sm))
    return (blocks, 1, 1), (cfg.ew_threads, 1, 1)


def _decay_args(g: Array, decay: float, decay_mask: Array | None) -> tuple[Array, Any, Any]:
    if not decay:
        return g, f32(0.0), i32(0)
    if decay_mask is None:
        return g, f32(decay), i32(1)
    return decay_mask, f32(decay), i32(2)


def optimizer_scalars(launch: Launcher, t: Array, lr: Array, sc: Array, beta1: float,
                      beta2: float) -> None:
    """On the device: ``t += 1``; ``sc = [lr / (1 - beta1^t), 1 - beta2^t]`` (a beta of 0 gives
    a factor of 1). ``t`` is int64 (1,), ``lr`` float64 (1,), ``sc`` float32 (2,)."""
    launch("optim.cu", "optimizer_scalars", (1, 1, 1), (1, 1, 1),
           (t, lr, sc, np.float64(beta1), np.float64(beta2)))


def sgd_update(launch: Launcher, cfg: LaunchConfig, w: Array, g: Array, lr: float,
               decay: float, decay_mask: Array | None) -> None:
    if w.size:
        mask, d, mode = _decay_args(g, decay, decay_mask)
        launch("optim.cu", "sgd_update", *_ew_grid(w.size, cfg),
               (w, g, mask, i64(w.size), f32(lr), d, mode))


def sgd_update_dev(launch: Launcher, cfg: LaunchConfig, w: Array, g: Array, sc: Array,
                   decay: float, decay_mask: Array | None) -> None:
    if w.size:
        mask, d, mode = _decay_args(g, decay, decay_mask)
        launch("optim.cu", "sgd_update_dev", *_ew_grid(w.size, cfg),
               (w, g, mask, i64(w.size), sc, d, mode))


def momentum_update(launch: Launcher, cfg: LaunchConfig, w: Array, g: Array, v: Array,
                    lr: float, beta: float, decay: float, decay_mask: Array | None) -> None:
    if w.size:
        mask, d, mode = _decay_args(g, decay, decay_mask)
        launch("optim.cu", "momentum_update", *_ew_grid(w.size, cfg),
               (w, g, v, mask, i64(w.size), f32(lr), f32(beta), f32(1.0 - float(beta)), d,
                mode))


def momentum_update_dev(launch: Launcher, cfg: LaunchConfig, w: Array, g: Array, v: Array,
                        sc: Array, beta: float, decay: float,
                        decay_mask: Array | None) -> None:
    if w.size:
        mask, d, mode = _decay_args(g, decay, decay_mask)
        launch("optim.cu", "momentum_update_dev", *_ew_grid(w.size, cfg),
               (w, g, v, mask, i64(w.size), sc, f32(beta), f32(1.0 - float(beta)), d, mode))


def rmsprop_update(launch: Launcher, cfg: LaunchConfig, w: Array, g: Array, s: Array,
                   lr: float, beta2: float, eps: float, decay: float,
                   decay_mask: Array | None) -> None:
    if w.size:
        mask, d, mode = _decay_args(g, decay, decay_mask)
        launch("optim.cu", "rmsprop_update", *_ew_grid(w.size, cfg),
               (w, g, s, mask, i64(w.size), f32(lr), f32(beta2), f32(1.0 - float(beta2)),
                f32(eps), d, mode))


def rmsprop_update_dev(launch: Launcher, cfg: LaunchConfig, w: Array, g: Array, s: Array,
                       sc: Array, beta2: float, eps: float, decay: float,
                       decay_mask: Array | None) -> None:
    if w.size:
        mask, d, mode = _decay_args(g, decay, decay_mask)
        launch("optim.cu", "rmsprop_update_dev", *_ew_grid(w.size, cfg),
               (w, g, s, mask, i64(w.size), sc, f32(beta2), f32(1.0 - float(beta2)),
                f32(eps), d, mode))


def adam_update(launch: Launcher, cfg: LaunchConfig, w: Array, g: Array, m: Array, v: Array,
                lr: float, beta1: float, beta2: float, eps: float, step: int, decay: float,
                decay_mask: Array | None) -> None:
    """``lr / c1`` and ``c2`` (``c1 = 1 - beta1^step``, ``c2 = 1 - beta2^step``) from the host,
    in double, passed as float32."""
    if w.size:
        mask, d, mode = _decay_args(g, decay, decay_mask)
        b1, b2 = float(beta1), float(beta2)
        c1, c2 = 1.0 - b1**step, 1.0 - b2**step
        launch("optim.cu", "adam_update", *_ew_grid(w.size, cfg),
               (w, g, m, v, mask, i64(w.size), f32(lr / c1), f32(b1), f32(1.0 - b1), f32(b2),
                f32(1.0 - b2), f32(c2), f32(eps), d, mode))


def adam_update_dev(launch: Launcher, cfg: LaunchConfig, w: Array, g: Array, m: Array,
                    v: Array, sc: Array, beta1: float, beta2: float, eps: float, decay: float,
                    decay_mask: Array | None) -> None:
    if w.size:
        mask, d, mode = _decay_args(g, decay, decay_mask)
        b1, b2 = float(beta1), float(beta2)
        launch("optim.cu", "adam_update_dev", *_ew_grid(w.size, cfg),
               (w, g, m, v, mask, i64(w.size), sc, f32(b1), f32(1.0 - b1), f32(b2),
                f32(1.0 - b2), f32(eps), d, mode))


# ------------------------------------------------------------------ optimizers, packed
# (K, P) rows, one member per grid row (blockIdx.y); every per-member scalar read from a
# device array (float32 (K,); Adam's steps int64 (K,)), so a recorded graph replays with the
# values written there. ``active``: bool (K,) or None (every member).
def _packed_grid(k: int, p: int, cfg: LaunchConfig) -> tuple[tuple, tuple]:
    target = max(1, _cdiv(cfg.sm_count * cfg.ew_blocks_per_sm, k))
    blocks = max(1, min(_cdiv(p, cfg.ew_threads), target))
    return (blocks, k, 1), (cfg.ew_threads, 1, 1)


def _packed_args(xp: Any, g: Array, decay_mask: Array | None,
                 active: Array | None) -> tuple[Array, Any, Array, Any]:
    """``(mask, has_mask, active, has_active)`` with valid pointers for the absent ones."""
    mask = g if decay_mask is None else decay_mask
    act = active if active is not None else xp.zeros((1,), dtype=np.bool_)  # not read
    return mask, i32(decay_mask is not None), act, i32(active is not None)


def sgd_update_packed(xp: Any, launch: Launcher, cfg: LaunchConfig, w: Array, g: Array,
                      lr: Array, decay: Array, decay_mask: Array | None,
                      active: Array | None) -> None:
    k, p = w.shape
    if w.size:
        mask, hm, act, ha = _packed_args(xp, g, decay_mask, active)
        launch("optim.cu", "sgd_update_packed", *_packed_grid(k, p, cfg),
               (w, g, mask, i64(p), lr, decay, hm, act, ha))


def momentum_update_packed(xp: Any, launch: Launcher, cfg: LaunchConfig, w: Array, g: Array,
                           v: Array, lr: Array, beta: Array, decay: Array,
                           decay_mask: Array | None, active: Array | None) -> None:
    k, p = w.shape
    if w.size:
        mask, hm, act, ha = _packed_args(xp, g, decay_mask, active)
        launch("optim.cu", "momentum_update_packed", *_packed_grid(k, p, cfg),
               (w, g, v, mask, i64(p), lr, beta, decay, hm, act, ha))


def rmsprop_update_packed(xp: Any, launch: Launcher, cfg: LaunchConfig, w: Array, g: Array,
                          s: Array, lr: Array, beta2: Array, eps: Array, decay: Array,
                          decay_mask: Array | None, active: Array | None) -> None:
    k, p = w.shape
    if w.size:
        mask, hm, act, ha = _packed_args(xp, g, decay_mask, active)
        launch("optim.cu", "rmsprop_update_packed", *_packed_grid(k, p, cfg),
               (w, g, s, mask, i64(p), lr, beta2, eps, decay, hm, act, ha))


def adam_update_packed(xp: Any, launch: Launcher, cfg: LaunchConfig, w: Array, g: Array,
                       m: Array, v: Array, lr: Array, beta1: Array, beta2: Array, eps: Array,
                       t: Array, decay: Array, decay_mask: Array | None,
                       active: Array | None) -> None:
    """Two launches: each member's ``lr / c1`` and ``c2`` on the device (as ``adam_update``'s
    host code computes them), then the update."""
    k, p = w.shape
    if w.size:
        mask, hm, act, ha = _packed_args(xp, g, decay_mask, active)
        sc = xp.empty((k, 2), dtype=f32)
        launch("optim.cu", "adam_update_packed_scalars", *_ew_grid(k, cfg),
               (lr, beta1, beta2, t, i32(k), sc))
        launch("optim.cu", "adam_update_packed", *_packed_grid(k, p, cfg),
               (w, g, m, v, mask, i64(p), sc, beta1, beta2, eps, decay, hm, act, ha))
