"""The CuPy backend's fused kernels on a GPU, against the float64 references of
``reference64`` (docs/architecture.md, "Tests"): fresh random inputs at awkward and large
shapes, hard values, bit-identical repeats, the fallback to the reference op for inputs the
kernels do not take, compile errors naming the file and line, and an MLP trained with Adam
matching the CPU. GPU-only: the whole module skips, with one reason, where there is no usable
GPU backend (``conftest.GPU_SKIP_REASON``)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import GPU_SKIP_REASON

if GPU_SKIP_REASON is not None:
    pytest.skip(GPU_SKIP_REASON, allow_module_level=True)

import cupy  # noqa: E402
import reference64 as R  # noqa: E402

import gpunet  # noqa: E402
from gpunet import kernels  # noqa: E402
from gpunet.backend import NumpyBackend  # noqa: E402
from gpunet.backend.cupy_backend import CupyBackend  # noqa: E402

TOL = R.TOL
H = cupy.asnumpy


@pytest.fixture(scope="module")
def be():
    b = gpunet.get_backend("gpu")
    assert isinstance(b, CupyBackend)
    return b


@pytest.fixture
def no_kernels(monkeypatch):
    """Make any kernel launch fail: proves an op took the reference path."""

    def refuse(*a, **k):
        raise AssertionError("a fused kernel was launched")

    monkeypatch.setattr(kernels, "get_function", refuse)


def _f32(rng, shape, loc=0.0, scale=1.0):
    return (rng.standard_normal(shape) * scale + loc).astype(np.float32)


def _bn_inputs(rng, n, c, loc=0.5, scale=2.0):
    x = _f32(rng, (n, c), loc, scale)
    gamma = _f32(rng, c, 1.0, 0.5)
    beta = _f32(rng, c)
    rm = _f32(rng, c)
    rv = (rng.random(c) + 0.5).astype(np.float32)
    return x, gamma, beta, rm, rv


def _dev(*arrays):
    return [cupy.asarray(a) for a in arrays]


BN_SHAPES = [(2, 1), (3, 3), (17, 33), (17, 1000), (2, 1024), (513, 257), (4096, 1024),
             (1000, 12), (65, 4)]


# ------------------------------------------------------------------ batch norm
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("n,c", BN_SHAPES)
def test_batchnorm_forward_train(be, n, c, relu):
    rng = np.random.default_rng(n * 7 + c)
    host = _bn_inputs(rng, n, c)
    want = R.bn_train(*host, 0.1, 1e-5, relu)
    x, gamma, beta, rm, rv = _dev(*host)
    y, mean, invstd = be.batchnorm_forward_train(x, gamma, beta, rm, rv, 0.1, 1e-5, relu=relu)
    for name, got, ref in zip(("y", "mean", "invstd", "running_mean", "running_var"),
                              (y, mean, invstd, rm, rv), want, strict=True):
        assert R.relerr(H(got), ref) < TOL, name


@pytest.mark.parametrize("n,c", [(2, 3), (17, 33), (4096, 1024), (3001, 5)])
def test_batchnorm_forward_train_hard_values(be, n, c):
    rng = np.random.default_rng(n + c)
    host = _bn_inputs(rng, n, c, 1e4, 1e-2)
    want = R.bn_train(*host, 0.1, 1e-5, False)
    x, gamma, beta, rm, rv = _dev(*host)
    y, mean, invstd = be.batchnorm_forward_train(x, gamma, beta, rm, rv, 0.1, 1e-5)
    for name, got, ref in zip(("y", "mean", "invstd", "running_mean", "running_var"),
                              (y, mean, invstd, rm, rv), want, strict=True):
        assert R.relerr(H(got), ref) < TOL, name


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("n,c", [(1, 1), (3, 3), (17, 1000), (4096, 1024), (513, 257)])
def test_batchnorm_forward_infer(be, n, c, relu):
    rng = np.random.default_rng(n * 3 + c)
    host = _bn_inputs(rng, n, c)
    want = R.bn_infer(*host, 1e-5, relu)
    x, gamma, beta, rm, rv = _dev(*host)
    y = be.batchnorm_forward_infer(x, gamma, beta, rm, rv, 1e-5, relu=relu)
    assert R.relerr(H(y), want) < TOL
    assert np.array_equal(H(rm), host[3]) and np.array_equal(H(rv), host[4])


def _check_backward(dx, dgamma, dbeta, dy, x, gamma, mean, invstd, y):
    want = R.bn_backward(dy, x, gamma, mean, invstd, y)
    scales = R.bn_backward_scales(dy, x, gamma, mean, invstd, y)
    for name, got, ref, sc in zip(("dx", "dgamma", "dbeta"), (dx, dgamma, dbeta), want, scales,
                                  strict=True):
        assert R.scaled_err(H(got), ref, sc) < TOL, name
    if x.shape[0] > 2:
        assert R.relerr(H(dx), want[0]) < 1e-4


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("n,c", BN_SHAPES)
def test_batchnorm_backward(be, n, c, relu):
    rng = np.random.default_rng(n * 11 + c)
    x, gamma, beta, rm, rv = _dev(*_bn_inputs(rng, n, c))
    y, mean, invstd = be.batchnorm_forward_train(x, gamma, beta, rm, rv, 0.1, 1e-5, relu=relu)
    dy = cupy.asarray(_f32(rng, (n, c)))
    dgamma, dbeta = cupy.empty(c, np.float32), cupy.empty(c, np.float32)
    yy = y if relu else None
    dx = be.batchnorm_backward(dy, x, gamma, mean, invstd, dgamma, dbeta, y=yy)
    _check_backward(dx, dgamma, dbeta, H(dy), H(x), H(gamma), H(mean), H(invstd),
                    None if yy is None else H(yy))


def test_batchnorm_backward_hard_values(be):
    rng = np.random.default_rng(8)
    n, c = 4096, 33
    x, gamma, beta, rm, rv = _dev(*_bn_inputs(rng, n, c, 1e4, 1e-2))
    y, mean, invstd = be.batchnorm_forward_train(x, gamma, beta, rm, rv, 0.1, 1e-5, relu=True)
    dy = cupy.asarray(_f32(rng, (n, c)))
    dgamma, dbeta = cupy.empty(c, np.float32), cupy.empty(c, np.float32)
    dx = be.batchnorm_backward(dy, x, gamma, mean, invstd, dgamma, dbeta, y=y)
    _check_backward(dx, dgamma, dbeta, H(dy), H(x), H(gamma), H(mean), H(invstd), H(y))


def test_batchnorm_layer_and_one_sample_batch(be):
    bn = gpunet.layers.BatchNorm(5, backend=be)
    with pytest.raises(gpunet.backend.BatchTooSmallError):
        bn.forward(cupy.ones((1, 5), np.float32), training=True)


# ------------------------------------------------------------------ softmax
SM_SHAPES = [(1, 1), (2, 3), (17, 33), (3, 1000), (1000, 10), (4099, 1000), (5, 1024),
             (7, 1025), (3, 5000), (65, 100000)]


@pytest.mark.parametrize("n,c", SM_SHAPES)
def test_softmax(be, n, c):
    rng = np.random.default_rng(n + 5 * c)
    z = _f32(rng, (n, c), 0, 4)
    p = be.softmax(cupy.asarray(z))
    assert R.relerr(H(p), R.softmax(z)) < TOL


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("n,c", SM_SHAPES)
def test_softmax_cross_entropy(be, n, c, weighted):
    rng = np.random.default_rng(n + 3 * c)
    z = _f32(rng, (n, c), 0, 4)
    labels = rng.integers(0, c, n)
    w = (rng.random(c) + 0.25).astype(np.float32) if weighted else None
    loss, dl = be.softmax_cross_entropy(cupy.asarray(z), cupy.asarray(labels),
                                        None if w is None else cupy.asarray(w))
    want_loss, want_dl = R.softmax_ce(z, labels, w)
    assert isinstance(loss, cupy.ndarray) and loss.shape == () and loss.dtype == np.float32
    assert R.relerr(H(loss), want_loss) < TOL
    assert R.relerr(H(dl), want_dl) < TOL


@pytest.mark.parametrize("c", [33, 1000, 3000])
@pytest.mark.parametrize("kind", ["pm1e4", "equal", "equal1e4"])
def test_softmax_hard_values(be, kind, c):
    rng = np.random.default_rng(c)
    n = 257
    if kind == "pm1e4":
        z = np.where(rng.random((n, c)) < 0.5, -1e4, 1e4).astype(np.float32)
        z[:, 0] = 1e4
        z[3, :] = -1e4
    else:
        z = np.repeat(_f32(rng, (n, 1)), c, axis=1)
        if kind == "equal1e4":
            z[:] = 1e4
    labels = rng.integers(0, c, n)
    p = be.softmax(cupy.asarray(z))
    assert R.relerr(H(p), R.softmax(z)) < TOL
    loss, dl = be.softmax_cross_entropy(cupy.asarray(z), cupy.asarray(labels))
    want_loss, want_dl = R.softmax_ce(z, labels)
    assert np.isfinite(float(loss)) and R.relerr(H(loss), want_loss) < TOL
    assert R.relerr(H(dl), want_dl) < TOL


def test_losses_module_on_gpu(be):
    rng = np.random.default_rng(1)
    z = cupy.asarray(_f32(rng, (64, 10)))
    y = cupy.asarray(rng.integers(0, 10, 64).astype(np.int32))  # int32 labels too
    loss, dl = gpunet.losses.softmax_cross_entropy(z, y)
    want_loss, want_dl = R.softmax_ce(H(z), H(y))
    assert R.relerr(H(loss), want_loss) < TOL and R.relerr(H(dl), want_dl) < TOL


# ------------------------------------------------------------------ optimizers
def _update_err(got, want, w0) -> float:
    step = float(np.max(np.abs(np.float64(want) - np.float64(w0))))
    return float(np.max(np.abs(np.float64(got) - np.float64(want)))) / max(step, 1e-30)


@pytest.mark.parametrize("decay,masked", [(0.0, False), (0.05, False), (0.05, True)])
@pytest.mark.parametrize("size", [1, 33, 1000, 1_900_003])
def test_optimizers(be, size, decay, masked):
    rng = np.random.default_rng(size)
    w0 = _f32(rng, size)
    g = _f32(rng, size)
    mask = (rng.random(size) < 0.5).astype(np.float32) if masked else None
    dmask = None if mask is None else cupy.asarray(mask)
    dg = cupy.asarray(g)

    w = cupy.asarray(w0)
    be.sgd_update(w, dg, 0.1, decay, dmask)
    assert _update_err(H(w), R.sgd(w0, g, 0.1, decay, mask), w0) < TOL

    v0 = _f32(rng, size)
    w, v = cupy.asarray(w0), cupy.asarray(v0)
    be.momentum_update(w, dg, v, 0.5, 0.9, decay, dmask)
    ww, vv = R.momentum(w0, g, v0, 0.5, 0.9, decay, mask)
    assert _update_err(H(w), ww, w0) < TOL and R.relerr(H(v), vv) < TOL

    s0 = rng.random(size).astype(np.float32)
    w, s = cupy.asarray(w0), cupy.asarray(s0)
    be.rmsprop_update(w, dg, s, 0.1, 0.99, 1e-8, decay, dmask)
    ww, ss = R.rmsprop(w0, g, s0, 0.1, 0.99, 1e-8, decay, mask)
    assert _update_err(H(w), ww, w0) < TOL and R.relerr(H(s), ss) < TOL

    for step in (1, 7):
        m0 = _f32(rng, size, 0, 0.1)
        v0 = rng.random(size).astype(np.float32) * 0.01
        w, m, v = cupy.asarray(w0), cupy.asarray(m0), cupy.asarray(v0)
        be.adam_update(w, dg, m, v, 0.1, 0.9, 0.999, 1e-8, step, decay, dmask)
        ww, mm, vv = R.adam(w0, g, m0, v0, 0.1, 0.9, 0.999, 1e-8, step, decay, mask)
        assert _update_err(H(w), ww, w0) < TOL
        assert R.relerr(H(m), mm) < TOL and R.relerr(H(v), vv) < TOL


# ------------------------------------------------------------------ determinism
def test_repeat_runs_are_bit_identical(be):
    rng = np.random.default_rng(99)
    n, c = 8192, 1024
    x, gamma, beta, _, _ = _dev(*_bn_inputs(rng, n, c))
    dy = cupy.asarray(_f32(rng, (n, c)))
    z = cupy.asarray(_f32(rng, (8192, 1000), 0, 5))
    zw = cupy.asarray(_f32(rng, (300, 3000), 0, 5))
    labels = cupy.asarray(rng.integers(0, 1000, 8192))
    labels_w = cupy.asarray(rng.integers(0, 3000, 300))
    wts = cupy.asarray((rng.random(3000) + 0.5).astype(np.float32))
    p0 = cupy.asarray(_f32(rng, 1_900_000))
    g0 = cupy.asarray(_f32(rng, 1_900_000))

    def run():
        rm, rv = cupy.zeros(c, np.float32), cupy.ones(c, np.float32)
        y, mean, invstd = be.batchnorm_forward_train(x, gamma, beta, rm, rv, 0.1, 1e-5,
                                                     relu=True)
        dg, db = cupy.empty(c, np.float32), cupy.empty(c, np.float32)
        dx = be.batchnorm_backward(dy, x, gamma, mean, invstd, dg, db, y=y)
        loss, dl = be.softmax_cross_entropy(z, labels)
        loss2, dl2 = be.softmax_cross_entropy(zw, labels_w, wts)
        w, m, v = p0.copy(), cupy.zeros_like(p0), cupy.zeros_like(p0)
        be.adam_update(w, g0, m, v, 1e-3, 0.9, 0.999, 1e-8, 1)
        return [H(a) for a in (y, mean, invstd, rm, rv, dx, dg, db, loss, dl, loss2, dl2, w)]

    first, second = run(), run()
    for i, (a, b) in enumerate(zip(first, second, strict=True)):
        assert a.tobytes() == b.tobytes(), i


# ------------------------------------------------------------------ fallbacks
def test_float64_and_strided_inputs_take_the_reference_path(be, no_kernels):
    rng = np.random.default_rng(4)
    host = _bn_inputs(rng, 17, 12)
    x64, g64, b64, rm64, rv64 = (cupy.asarray(a, dtype=np.float64) for a in host)
    y, _, _ = be.batchnorm_forward_train(x64, g64, b64, rm64, rv64, 0.1, 1e-5)
    assert y.dtype == np.float64
    assert R.relerr(H(y), R.bn_train(*host, 0.1, 1e-5, False)[0]) < 1e-5

    wide = cupy.asarray(_f32(rng, (17, 24)))
    xs = wide[:, ::2]  # not contiguous
    g, b, rm, rv = _dev(*host[1:])
    y, mean, invstd = be.batchnorm_forward_train(xs, g, b, rm, rv, 0.1, 1e-5)
    ref = R.bn_train(H(xs), *host[1:], 0.1, 1e-5, False)
    assert R.relerr(H(y), ref[0]) < 1e-4
    yi = be.batchnorm_forward_infer(xs, g, b, rm, rv, 1e-5)
    assert yi.shape == xs.shape

    z = cupy.asarray(_f32(rng, (7, 5))).T  # F-ordered
    assert R.relerr(H(be.softmax(z)), R.softmax(H(z))) < 1e-5
    labels = cupy.asarray(rng.integers(0, 7, 5))
    loss, dl = be.softmax_cross_entropy(z, labels)
    want_loss, want_dl = R.softmax_ce(H(z), H(labels))
    assert R.relerr(H(loss), want_loss) < 1e-5 and R.relerr(H(dl), want_dl) < 1e-5

    w = cupy.asarray(_f32(rng, 20))[::2]
    gg = cupy.asarray(_f32(rng, 10))
    w0 = H(w).copy()
    be.sgd_update(w, gg, 0.1)
    assert np.allclose(H(w), w0 - 0.1 * H(gg), rtol=1e-6, atol=1e-7)


def test_strided_device_arrays_take_the_reference_path(be, no_kernels):
    rng = np.random.default_rng(5)
    z = _f32(rng, (4, 6))
    p = be.softmax(cupy.asarray(z)[:, ::2])  # a strided view: RawKernels would misread it
    e = np.exp(z[:, ::2].astype(np.float64) - z[:, ::2].max(1, keepdims=True))
    np.testing.assert_allclose(H(p), e / e.sum(1, keepdims=True), rtol=1e-5)


# ------------------------------------------------------------------ loader
def test_compile_error_names_file_and_line(monkeypatch):
    real = kernels.source

    def broken(name):
        text = real(name)
        lines = text.splitlines()
        lines.insert(9, "this is not CUDA;")  # becomes line 10
        return "\n".join(lines) + "\n// gpunet compile-error test\n"

    monkeypatch.setattr(kernels, "source", broken)
    monkeypatch.setattr(kernels, "_modules", {})
    monkeypatch.setattr(kernels, "_functions", {})
    with pytest.raises(kernels.KernelCompileError, match=r"kernels/optim\.cu:10: .*error"):
        kernels.get_module("optim.cu")


def test_modules_are_compiled_once_per_device():
    a = kernels.get_module("softmax.cu")
    assert kernels.get_module("softmax.cu") is a
    fn = kernels.get_function("softmax.cu", "softmax_cross_entropy_loss_reduce")
    assert kernels.get_function("softmax.cu", "softmax_cross_entropy_loss_reduce") is fn


def test_launch_config_reads_the_device(be):
    sms = cupy.cuda.Device(be.device_id).attributes["MultiProcessorCount"]
    assert be.launch_config.sm_count == sms
    assert be.fuses_bn_relu


# ------------------------------------------------------------------ end to end
@pytest.mark.parametrize("opt", ["adam", "rmsprop"])
def test_mlp_training_matches_cpu(be, opt):
    from gpunet.losses import softmax_cross_entropy
    from gpunet.optim import make_optimizer

    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 20)).astype(np.float32)
    y = rng.integers(0, 5, 256)
    results = []
    for b in (NumpyBackend(), be):
        model = gpunet.MLP(20, [64, 32], 5, batchnorm=True, backend=b, seed=3)
        optim = make_optimizer(opt, model, lr=1e-3, weight_decay=1e-4)
        losses = []
        for step in range(5):
            sl = slice(64 * (step % 4), 64 * (step % 4) + 64)
            logits = model.forward(x[sl], training=True)
            loss, dl = softmax_cross_entropy(logits, y[sl], backend=b)
            model.backward(dl)
            optim.step()
            losses.append(float(loss))
        out = b.to_host(model.forward(x, training=False)).copy()
        results.append((np.array(losses), b.to_host(model.params).copy(), out))
    (l0, p0, o0), (l1, p1, o1) = results
    assert np.max(np.abs(l1 - l0) / np.abs(l0)) < 1e-4
    assert R.relerr(p1, p0) < 1e-3
    assert R.relerr(o1, o0) < 1e-3
