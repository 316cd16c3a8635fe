"""The CUDA kernels' own code, run on the CPU under the emulation in tests/cuda_emu
(docs/architecture.md, "CUDA kernels and their CPU emulation"), through the same host code as
``CupyBackend`` (``gpunet/backend/cuda_host.py``: launch geometry, workspaces, launch
sequence), against the float64 references of ``reference64`` at small awkward sizes and on
hard values.

Launch geometry is shrunk (few threads per block, several row chunks) so the block merges,
chunk merges, tail columns and grid-stride loops are all exercised at these sizes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cuda_emu as emu  # noqa: E402
import reference64 as R  # noqa: E402

import gpunet  # noqa: E402
from gpunet.backend import NumpyBackend  # noqa: E402
from gpunet.backend import cuda_host as host  # noqa: E402
from gpunet.backend import cupy_backend as cb  # noqa: E402

pytestmark = pytest.mark.skipif(emu.compiler() is None,
                                reason="no C++ compiler (g++, c++, clang++) for the CUDA emulation")

CFG = cb.LaunchConfig(sm_count=2, bn_threads=32, bn_max_bdx=8, bn_rows_per_chunk=8,
                      col_threads=32, sm_warps_per_block=2, sm_block_threads=32,
                      reduce_threads=32, ew_threads=32, ew_blocks_per_sm=1)
CFG_BLOCK_SOFTMAX = CFG.with_(sm_max_warp_cols=0)  # force the block-per-row softmax
TOL = R.TOL
NS = (2, 3, 17)
CS = (1, 3, 33, 1000)


def _f32(rng, shape, loc=0.0, scale=1.0):
    return (rng.standard_normal(shape) * scale + loc).astype(np.float32)


def _bn_params(xp, rng, c):
    gamma = xp.array(_f32(rng, c, 1.0, 0.5))
    beta = xp.array(_f32(rng, c))
    rm = xp.array(_f32(rng, c))
    rv = xp.array((rng.random(c) + 0.5).astype(np.float32))
    return gamma, beta, rm, rv


def _misaligned(a):
    """A C-contiguous copy of ``a`` whose data starts 4 bytes past a 16-byte boundary."""
    flat = np.empty(a.size + 4, dtype=a.dtype)
    off = (-(flat.ctypes.data // 4) + 1) % 4
    view = flat[off:off + a.size].reshape(a.shape)
    view[...] = a
    assert view.ctypes.data % 16 != 0
    return view


# ------------------------------------------------------------------ batch norm
def _forward_train(xp, launch, x, gamma, beta, rm, rv, relu, out):
    """``host.batchnorm_forward_train`` with momentum 0.1 and eps 1e-5."""
    return host.batchnorm_forward_train(xp, launch, CFG, x, gamma, beta, rm, rv, 0.1, 1e-5,
                                        relu, out)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("c", CS)
@pytest.mark.parametrize("n", NS)
def test_batchnorm_forward_train(xp, launch, n, c, relu):
    rng = np.random.default_rng(1000 * n + c)
    x = xp.array(_f32(rng, (n, c), 0.5, 2.0))
    gamma, beta, rm, rv = _bn_params(xp, rng, c)
    want = R.bn_train(x, gamma, beta, rm, rv, 0.1, 1e-5, relu)
    out = xp.empty((n, c))
    y, mean, invstd = _forward_train(xp, launch, x, gamma, beta, rm, rv, relu, out)
    assert y is out
    for name, got, ref in zip(("y", "mean", "invstd", "running_mean", "running_var"),
                              (y, mean, invstd, rm, rv), want, strict=True):
        assert R.relerr(got, ref) < TOL, name


def test_batchnorm_uses_16_byte_loads_when_aligned(xp, launch):
    rng = np.random.default_rng(5)
    x = xp.array(_f32(rng, (17, 12)))
    gamma, beta, rm, rv = _bn_params(xp, rng, 12)
    mod = emu.build("batchnorm.cu")
    start = len(mod.launches)
    _forward_train(xp, launch, x, gamma, beta, rm, rv, False, xp.empty((17, 12)))
    names = [name for name, _, _ in mod.launches[start:]]
    assert names == ["batchnorm_forward_train_stats_v4", "batchnorm_forward_train_finish",
                     "batchnorm_forward_train_apply_v4"]


def test_batchnorm_misaligned_rows_take_the_scalar_path(xp, launch):
    rng = np.random.default_rng(6)
    x = _misaligned(_f32(rng, (17, 12), 3.0, 0.5))
    gamma, beta, rm, rv = _bn_params(xp, rng, 12)
    want = R.bn_train(x, gamma, beta, rm, rv, 0.1, 1e-5, False)
    mod = emu.build("batchnorm.cu")
    start = len(mod.launches)
    y, mean, invstd = _forward_train(xp, launch, x, gamma, beta, rm, rv, False, xp.empty((17, 12)))
    assert [nm for nm, _, _ in mod.launches[start:]][0] == "batchnorm_forward_train_stats_v1"
    assert R.relerr(y, want[0]) < TOL and R.relerr(invstd, want[2]) < TOL


@pytest.mark.parametrize("n,c", [(2, 3), (17, 33), (64, 12), (200, 5)])
def test_batchnorm_hard_values_mean_1e4_std_1e_2(xp, launch, n, c):
    """Against a float64 two-pass: float32 Welford without the shift would stall here."""
    rng = np.random.default_rng(n * c)
    x = xp.array(_f32(rng, (n, c), 1e4, 1e-2))
    gamma, beta, rm, rv = _bn_params(xp, rng, c)
    want = R.bn_train(x, gamma, beta, rm, rv, 0.1, 1e-5, False)
    y, mean, invstd = _forward_train(xp, launch, x, gamma, beta, rm, rv, False, xp.empty((n, c)))
    for name, got, ref in zip(("y", "mean", "invstd", "running_mean", "running_var"),
                              (y, mean, invstd, rm, rv), want, strict=True):
        assert R.relerr(got, ref) < TOL, name


def test_batchnorm_constant_columns(xp, launch):
    """Zero variance: invstd = 1/sqrt(eps), y = beta."""
    x = xp.array(np.full((17, 33), 3.25, dtype=np.float32))
    gamma, beta, rm, rv = _bn_params(xp, np.random.default_rng(0), 33)
    want = R.bn_train(x, gamma, beta, rm, rv, 0.1, 1e-5, False)
    y, mean, invstd = _forward_train(xp, launch, x, gamma, beta, rm, rv, False, xp.empty((17, 33)))
    assert R.relerr(y, want[0]) < TOL
    assert R.relerr(invstd, want[2]) < TOL


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("c", CS)
@pytest.mark.parametrize("n", (1, 3, 17))
def test_batchnorm_forward_infer(xp, launch, n, c, relu):
    rng = np.random.default_rng(7 * n + c)
    x = xp.array(_f32(rng, (n, c), 0.5, 2.0))
    gamma, beta, rm, rv = _bn_params(xp, rng, c)
    rm0, rv0 = rm.copy(), rv.copy()
    want = R.bn_infer(x, gamma, beta, rm, rv, 1e-5, relu)
    y = host.batchnorm_forward_infer(xp, launch, CFG, x, gamma, beta, rm, rv, 1e-5, relu,
                                     xp.empty((n, c)))
    assert R.relerr(y, want) < TOL
    assert np.array_equal(rm, rm0) and np.array_equal(rv, rv0)  # nothing updated


def _check_batchnorm_backward(dx, dgamma, dbeta, dy, x, gamma, mean, invstd, y):
    """Errors relative to the size of the summed terms (the backward cancels by design: for
    n = 2 dx is ~0), and relative to the result where it does not cancel much."""
    want = R.bn_backward(dy, x, gamma, mean, invstd, y)
    scales = R.bn_backward_scales(dy, x, gamma, mean, invstd, y)
    names = ("dx", "dgamma", "dbeta")
    for name, got, ref, sc in zip(names, (dx, dgamma, dbeta), want, scales, strict=True):
        assert R.scaled_err(got, ref, sc) < TOL, name
    if x.shape[0] > 2:
        assert R.relerr(dx, want[0]) < 1e-4


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("c", CS)
@pytest.mark.parametrize("n", NS)
def test_batchnorm_backward(xp, launch, n, c, relu):
    rng = np.random.default_rng(11 * n + c)
    x = xp.array(_f32(rng, (n, c), 0.5, 2.0))
    gamma, beta, rm, rv = _bn_params(xp, rng, c)
    y, mean, invstd = _forward_train(xp, launch, x, gamma, beta, rm, rv, relu, xp.empty((n, c)))
    dy = xp.array(_f32(rng, (n, c)))
    dgamma, dbeta = xp.empty(c), xp.empty(c)
    yy = y if relu else None
    dx = host.batchnorm_backward(xp, launch, CFG, dy, x, gamma, mean, invstd, dgamma, dbeta,
                                 yy, xp.empty((n, c)))
    _check_batchnorm_backward(dx, dgamma, dbeta, dy, x, gamma, mean, invstd, yy)


def test_batchnorm_backward_hard_values(xp, launch):
    rng = np.random.default_rng(3)
    n, c = 64, 12
    x = xp.array(_f32(rng, (n, c), 1e4, 1e-2))
    gamma, beta, rm, rv = _bn_params(xp, rng, c)
    y, mean, invstd = _forward_train(xp, launch, x, gamma, beta, rm, rv, True, xp.empty((n, c)))
    dy = xp.array(_f32(rng, (n, c)))
    dgamma, dbeta = xp.empty(c), xp.empty(c)
    dx = host.batchnorm_backward(xp, launch, CFG, dy, x, gamma, mean, invstd, dgamma, dbeta,
                                 y, xp.empty((n, c)))
    _check_batchnorm_backward(dx, dgamma, dbeta, dy, x, gamma, mean, invstd, y)


# ------------------------------------------------------------------ softmax
@pytest.mark.parametrize("cfg", [CFG, CFG_BLOCK_SOFTMAX], ids=["warp", "block"])
@pytest.mark.parametrize("c", CS + (1025,))
@pytest.mark.parametrize("n", (1, 2, 3, 17))
def test_softmax(xp, launch, cfg, n, c):
    rng = np.random.default_rng(13 * n + c)
    z = xp.array(_f32(rng, (n, c), 0.0, 3.0))
    out = host.softmax(xp, launch, cfg, z, xp.empty((n, c)))
    assert R.relerr(out, R.softmax(z)) < TOL


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("cfg", [CFG, CFG_BLOCK_SOFTMAX], ids=["warp", "block"])
@pytest.mark.parametrize("c", CS + (1025,))
@pytest.mark.parametrize("n", (1, 2, 3, 17))
def test_softmax_cross_entropy(xp, launch, cfg, n, c, weighted):
    rng = np.random.default_rng(17 * n + c)
    z = xp.array(_f32(rng, (n, c), 0.0, 3.0))
    labels = xp.array(rng.integers(0, c, n).astype(np.int64))
    w = xp.array((rng.random(c) + 0.25).astype(np.float32)) if weighted else None
    loss, dl = host.softmax_cross_entropy(xp, launch, cfg, z, labels, w, xp.empty((n, c)))
    want_loss, want_dl = R.softmax_ce(z, labels, w)
    assert loss.shape == () and loss.dtype == np.float32
    assert R.relerr(loss, want_loss) < TOL
    assert R.relerr(dl, want_dl) < TOL


@pytest.mark.parametrize("cfg", [CFG, CFG_BLOCK_SOFTMAX], ids=["warp", "block"])
@pytest.mark.parametrize("kind", ["pm1e4", "equal", "equal1e4"])
def test_softmax_hard_values(xp, launch, cfg, kind):
    rng = np.random.default_rng(23)
    n, c = 17, 33
    if kind == "pm1e4":
        z = np.where(rng.random((n, c)) < 0.5, -1e4, 1e4).astype(np.float32)
        z[:, 0] = 1e4  # at least one max per row
        z[3, :] = -1e4
    else:
        z = np.repeat(rng.standard_normal((n, 1)).astype(np.float32), c, axis=1)
        if kind == "equal1e4":
            z[:] = 1e4
    z = xp.array(z)
    labels = xp.array(rng.integers(0, c, n).astype(np.int64))
    p = host.softmax(xp, launch, cfg, z, xp.empty((n, c)))
    assert R.relerr(p, R.softmax(z)) < TOL
    loss, dl = host.softmax_cross_entropy(xp, launch, cfg, z, labels, None, xp.empty((n, c)))
    want_loss, want_dl = R.softmax_ce(z, labels)
    assert np.isfinite(loss) and R.relerr(loss, want_loss) < TOL
    assert R.relerr(dl, want_dl) < TOL


# ------------------------------------------------------------------ optimizers
def _update_err(got, want, w0) -> float:
    """Error of an updated parameter relative to the size of the update."""
    step = float(np.max(np.abs(np.float64(want) - np.float64(w0))))
    return float(np.max(np.abs(np.float64(got) - np.float64(want)))) / max(step, 1e-30)


DECAYS = [(0.0, False), (0.05, False), (0.05, True)]


@pytest.mark.parametrize("decay,masked", DECAYS)
@pytest.mark.parametrize("size", (1, 3, 33, 1000))
def test_optimizers(xp, launch, size, decay, masked):
    rng = np.random.default_rng(size)
    w0 = _f32(rng, size)
    g = xp.array(_f32(rng, size))
    mask = xp.array((rng.random(size) < 0.5).astype(np.float32)) if masked else None
    mk = mask if masked else None

    w = xp.array(w0)
    host.sgd_update(launch, CFG, w, g, 0.1, decay, mk)
    assert _update_err(w, R.sgd(w0, g, 0.1, decay, mk), w0) < TOL

    w, v = xp.array(w0), xp.array(_f32(rng, size))
    v0 = v.copy()
    host.momentum_update(launch, CFG, w, g, v, 0.5, 0.9, decay, mk)
    ww, vv = R.momentum(w0, g, v0, 0.5, 0.9, decay, mk)
    assert _update_err(w, ww, w0) < TOL and R.relerr(v, vv) < TOL

    w, s = xp.array(w0), xp.array(rng.random(size).astype(np.float32))
    s0 = s.copy()
    host.rmsprop_update(launch, CFG, w, g, s, 0.1, 0.99, 1e-8, decay, mk)
    ww, ss = R.rmsprop(w0, g, s0, 0.1, 0.99, 1e-8, decay, mk)
    assert _update_err(w, ww, w0) < TOL and R.relerr(s, ss) < TOL

    for step in (1, 7):
        w, m, v = xp.array(w0), xp.array(_f32(rng, size, 0, 0.1)), \
            xp.array(rng.random(size).astype(np.float32) * 0.01)
        m0, v0 = m.copy(), v.copy()
        host.adam_update(launch, CFG, w, g, m, v, 0.1, 0.9, 0.999, 1e-8, step, decay, mk)
        ww, mm, vv = R.adam(w0, g, m0, v0, 0.1, 0.9, 0.999, 1e-8, step, decay, mk)
        assert _update_err(w, ww, w0) < TOL
        assert R.relerr(m, mm) < TOL and R.relerr(v, vv) < TOL


@pytest.mark.parametrize("opt", ["sgd", "momentum", "rmsprop", "adam"])
def test_device_scalar_kernels_equal_host_scalar_ones(xp, launch, opt):
    """optimizer_scalars advances the device step count and derives the scalars as the host does,
    and each ``*_dev`` kernel then gives the host-scalar kernel's bits (CUDA-graph replay)."""
    rng = np.random.default_rng(7)
    size, lr, b1, b2 = 37, 0.01, 0.9, 0.999
    w0 = _f32(rng, size)
    g = xp.array(_f32(rng, size))
    mask = xp.array((rng.random(size) < 0.5).astype(np.float32))
    t = xp.array(np.array([4], dtype=np.int64))
    lr_dev = xp.array(np.array([lr], dtype=np.float64))
    sc = xp.array(np.zeros(2, dtype=np.float32))
    betas = (b1, b2) if opt == "adam" else (0.0, 0.0)
    for step in (5, 6):
        host.optimizer_scalars(launch, t, lr_dev, sc, *betas)
        assert int(t[0]) == step
        if opt == "adam":
            assert sc[0] == np.float32(lr / (1 - b1**step))
            assert sc[1] == np.float32(1 - b2**step)
        else:
            assert sc[0] == np.float32(lr) and sc[1] == 1.0
        states = [xp.array(_f32(rng, size, 0, 0.1)) for _ in range(2)]
        results = []
        for dev in (False, True):
            w = xp.array(w0)
            st = [xp.array(a) for a in states]
            st[1] = xp.array(np.abs(np.asarray(st[1])))  # a mean square: not negative
            if opt == "sgd" and dev:
                host.sgd_update_dev(launch, CFG, w, g, sc, 0.01, mask)
            elif opt == "sgd":
                host.sgd_update(launch, CFG, w, g, lr, 0.01, mask)
            elif opt == "momentum" and dev:
                host.momentum_update_dev(launch, CFG, w, g, st[0], sc, 0.9, 0.01, mask)
            elif opt == "momentum":
                host.momentum_update(launch, CFG, w, g, st[0], lr, 0.9, 0.01, mask)
            elif opt == "rmsprop" and dev:
                host.rmsprop_update_dev(launch, CFG, w, g, st[1], sc, 0.99, 1e-8, 0.01, mask)
            elif opt == "rmsprop":
                host.rmsprop_update(launch, CFG, w, g, st[1], lr, 0.99, 1e-8, 0.01, mask)
            elif dev:
                host.adam_update_dev(launch, CFG, w, g, st[0], st[1], sc, b1, b2, 1e-8, 0.01,
                                     mask)
            else:
                host.adam_update(launch, CFG, w, g, st[0], st[1], lr, b1, b2, 1e-8, step, 0.01,
                                 mask)
            results.append([np.asarray(w).copy()] + [np.asarray(a).copy() for a in st])
        for host_arr, dev_arr in zip(*results, strict=True):
            np.testing.assert_array_equal(host_arr, dev_arr)


# ------------------------------------------------------------------ determinism
def test_repeat_runs_are_bit_identical(launch):
    rng = np.random.default_rng(99)
    n, c = 40, 33
    x = _f32(rng, (n, c), 2.0, 3.0)
    dy = _f32(rng, (n, c))
    gamma, beta = _f32(rng, c, 1, 0.5), _f32(rng, c)
    z = _f32(rng, (n, 1000), 0, 5)
    labels = rng.integers(0, 1000, n).astype(np.int64)
    wts = (rng.random(1000) + 0.5).astype(np.float32)

    def run():
        rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
        y, mean, invstd = host.batchnorm_forward_train(np, launch, CFG, x, gamma, beta, rm, rv,
                                                       0.1, 1e-5, True,
                                                       np.empty((n, c), np.float32))
        dg, db = np.empty(c, np.float32), np.empty(c, np.float32)
        dx = host.batchnorm_backward(np, launch, CFG, dy, x, gamma, mean, invstd, dg, db, y,
                                     np.empty((n, c), np.float32))
        loss, dl = host.softmax_cross_entropy(np, launch, CFG, z, labels, wts,
                                              np.empty(z.shape, np.float32))
        return [a.copy() for a in (y, mean, invstd, rm, rv, dx, dg, db, loss, dl)]

    first, second = run(), run()
    for a, b in zip(first, second, strict=True):
        assert a.tobytes() == b.tobytes()


# ------------------------------------------------------------------ the backend class
class EmuBackend(cb.CupyBackend):
    """``CupyBackend``'s overrides and guards on NumPy arrays, kernels under emulation."""

    name = "gpu-emulated"

    def __init__(self) -> None:  # no cupy
        self.xp = np
        self.device_id = 0
        self.launch_config = CFG
        self._emu_launch = emu.launcher()
        self.calls: list[str] = []

    def asarray(self, x, dtype=None):
        return np.asarray(x, dtype=dtype)

    def to_host(self, x):
        return np.asarray(x)

    def synchronize(self) -> None:
        pass

    def _on_device(self, a) -> bool:
        return isinstance(a, np.ndarray)

    def _launch(self, file, kernel, grid, block, args) -> None:
        self.calls.append(kernel)
        self._emu_launch(file, kernel, grid, block, args)


def test_backend_falls_back_for_float64_and_strided_input():
    be = EmuBackend()
    rng = np.random.default_rng(4)
    x64 = rng.standard_normal((17, 12))
    gamma, beta = np.ones(12), np.zeros(12)
    rm, rv = np.zeros(12), np.ones(12)
    be.batchnorm_forward_train(x64, gamma, beta, rm, rv, 0.1, 1e-5)
    xs = rng.standard_normal((17, 24)).astype(np.float32)[:, ::2]
    g32, b32 = np.ones(12, np.float32), np.zeros(12, np.float32)
    y, _, _ = be.batchnorm_forward_train(xs, g32, b32, np.zeros(12, np.float32),
                                         np.ones(12, np.float32), 0.1, 1e-5)
    z = rng.standard_normal((5, 7)).astype(np.float32).T  # F-ordered
    be.softmax(z)
    assert be.calls == []  # every one of these took the reference op
    want = R.bn_train(xs, g32, b32, np.zeros(12), np.ones(12), 0.1, 1e-5, False)[0]
    assert R.relerr(y, want) < 1e-4


def test_backend_rejects_one_sample_batch_like_the_reference():
    be = EmuBackend()
    with pytest.raises(gpunet.backend.BatchTooSmallError):
        be.batchnorm_forward_train(np.ones((1, 4), np.float32), np.ones(4, np.float32),
                                   np.zeros(4, np.float32), np.zeros(4, np.float32),
                                   np.ones(4, np.float32), 0.1, 1e-5)


@pytest.mark.parametrize("opt", ["adam", "momentum"])
def test_mlp_training_matches_numpy_backend(opt):
    """A few training steps of a BN MLP with fused BN+ReLU and the fused optimizer under
    emulation, against the NumPy backend: same losses and parameters within tolerance."""
    from gpunet.losses import softmax_cross_entropy
    from gpunet.optim import make_optimizer

    rng = np.random.default_rng(0)
    x = rng.standard_normal((33, 10)).astype(np.float32)
    y = rng.integers(0, 3, 33)
    results = []
    for be in (NumpyBackend(), EmuBackend()):
        model = gpunet.MLP(10, [12, 7], 3, batchnorm=True, backend=be, seed=1)
        assert model.fuse_bn_relu or not isinstance(be, EmuBackend)
        optim = make_optimizer(opt, model, lr=0.01, weight_decay=0.01)
        losses = []
        for _ in range(3):
            logits = model.forward(x, training=True)
            loss, dl = softmax_cross_entropy(logits, y, backend=be)
            model.backward(dl)
            optim.step()
            losses.append(float(loss))
        p = model.forward(x, training=False).copy()
        results.append((np.array(losses), np.asarray(model.params).copy(), p))
    (l0, p0, o0), (l1, p1, o1) = results
    assert np.max(np.abs(l1 - l0) / np.abs(l0)) < 1e-4
    assert R.relerr(p1, p0) < 1e-4
    assert R.relerr(o1, o0) < 1e-4


# ------------------------------------------------------------------ the harness itself
def test_launch_arguments_are_checked_strictly(launch):
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(TypeError, match="numpy.int32"):
        launch("batchnorm.cu", "batchnorm_forward_train_stats_v1", (1, 1, 1), (4, 1, 1),
               (x, 3, np.int32(4), np.int32(3), x, x))
    with pytest.raises(TypeError, match="float32"):
        launch("batchnorm.cu", "batchnorm_forward_train_stats_v1", (1, 1, 1), (4, 1, 1),
               (x.astype(np.float64), np.int32(3), np.int32(4), np.int32(3), x, x))
    with pytest.raises(ValueError, match="block"):
        launch("batchnorm.cu", "batchnorm_forward_train_stats_v1", (1, 1, 1), (2048, 1, 1),
               (x, np.int32(3), np.int32(4), np.int32(3), x, x))


def test_every_kernel_is_wrapped():
    for file in gpunet_kernel_files():
        mod = emu.build(file)
        assert mod.kernels, file
    assert {f"softmax_warp_{i}" for i in (1, 2, 4, 8, 16, 32)} <= set(
        emu.build("softmax.cu").kernels)


#: backend op -> the prefix its kernels' names start with (docs/architecture.md, "Op table")
OPS = {"batchnorm_forward_train": "batchnorm_forward_train_",
       "batchnorm_forward_infer": "batchnorm_forward_infer_",
       "batchnorm_backward": "batchnorm_backward_", "softmax": "softmax_",
       "softmax_cross_entropy": "softmax_cross_entropy_", "sgd_update": "sgd_update",
       "momentum_update": "momentum_update", "rmsprop_update": "rmsprop_update",
       "adam_update": "adam_update", "optimizer_scalars": "optimizer_scalars",
       "softmax_cross_entropy_packed": "softmax_cross_entropy_packed_",
       "sgd_update_packed": "sgd_update_packed",
       "momentum_update_packed": "momentum_update_packed",
       "rmsprop_update_packed": "rmsprop_update_packed",
       "adam_update_packed": "adam_update_packed"}


def test_one_name_per_op_from_backend_method_to_kernel():
    """Every kernel's name starts with the name of a ``CupyBackend`` method that calls the
    host function of the same name, and appears in full in the host code (no name is built
    at run time, so searching for a kernel's name finds its caller)."""
    host_src = Path(host.__file__).read_text()
    for file in gpunet_kernel_files():
        for kernel in emu.parse_kernels((emu.KERNELS / file).read_text()):
            assert f'"{kernel}"' in host_src, kernel
            op = max((op for op, prefix in OPS.items() if kernel.startswith(prefix)),
                     key=len, default=None)
            assert op is not None, kernel
            assert callable(getattr(host, op)) and callable(getattr(cb.CupyBackend, op)), op
    assert 'f"' not in "".join(line for line in host_src.splitlines() if "launch(" in line)


def gpunet_kernel_files():
    from gpunet import kernels

    return kernels.FILES
