"""TrainStep: the fixed training step; on the GPU, replayed as a CUDA graph.

On the CPU the step runs eagerly: these tests check it equals a hand-written loop, reuses its
buffers, and keeps its sums (exactly: the same float32 losses added in the same order in
float64). The GPU-only tests (``gpu_backend``: skipped without a GPU) check that graph replay
gives the eager step's bits, through schedule changes and partial batches, and allocates
nothing.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import host

import gpunet as gn
from gpunet.step import TrainStep


def _data(rng, n=96, d=12, c=5):
    return rng.standard_normal((n, d)).astype(np.float32), rng.integers(0, c, n)


def _model(be, d=12, c=5, **kw):
    return gn.MLP(d, hidden=[32, 16], classes=c, backend=be, seed=3, **kw)


def test_cpu_step_equals_a_hand_written_loop(rng):
    X, y = _data(rng)
    a, b = _model("cpu"), _model("cpu")
    oa, ob = gn.optim.Adam(a, lr=1e-2), gn.optim.Adam(b, lr=1e-2)
    step = TrainStep(b, ob, batch_size=32)
    assert not step.cuda_graph and "not on a GPU" in repr(step)
    losses = []
    for s in range(0, 96, 32):
        logits = a.forward(X[s:s + 32], training=True)
        loss, d = gn.losses.softmax_cross_entropy(logits, y[s:s + 32])
        losses.append(float(loss))
        a.backward(d)
        oa.step()
        step.run(X[s:s + 32], y[s:s + 32])
    np.testing.assert_array_equal(a.params, b.params)
    assert oa.t == ob.t == 3
    loss_sum, _ = step.sums()
    assert loss_sum == _float64_sum(0.0, [(loss, 32) for loss in losses])


def test_step_reuses_its_buffers_and_counts_correct_predictions(rng):
    X, y = _data(rng)
    model = _model("cpu")
    step = TrainStep(model, gn.optim.SGD(model, lr=0.1), batch_size=48)
    xid, yid = id(step.x), id(step.y)
    step.x[...] = X[:48]
    step.y[...] = y[:48]
    step.run()
    layer_ids = [{k: id(v) for k, v in layer._buffers.items()} for layer in model.layers]
    for s in (48, 0):
        step.run(X[s:s + 48], y[s:s + 48])
    assert (id(step.x), id(step.y)) == (xid, yid)
    assert layer_ids == [{k: id(v) for k, v in layer._buffers.items()}
                         for layer in model.layers]
    # correct counts the training-mode predictions made before each update
    step.reset_sums()
    logits = model.forward(X[:48], training=True).copy()  # training mode: batch statistics
    step.run(X[:48], y[:48])
    _, correct = step.sums()
    assert correct == int((logits.argmax(1) == y[:48]).sum())


def _float64_sum(start, terms):
    """``start + loss_1 * n_1 + loss_2 * n_2 + ...`` in float64, term by term in order: the
    step's own accumulation of float32 batch losses, so the result must equal it exactly."""
    total = np.float64(start)
    for loss, n in terms:
        total = total + np.float64(np.float32(loss)) * np.float64(n)
    return float(total)


def test_partial_batch_runs_eagerly_and_sums_continue(rng):
    """A partial batch after a full one (from sums started at 1.5 and 7, as on a resume): the
    sums are exactly the starting values plus what a hand-written loop on a twin model
    computes, batch by batch (the float32 losses times the batch sizes, added in float64)."""
    X, y = _data(rng, n=80)
    model, twin = _model("cpu"), _model("cpu")
    step = TrainStep(model, gn.optim.Adam(model), batch_size=32)
    twin_opt = gn.optim.Adam(twin)
    terms, correct_ref = [], 7
    for s, e in ((0, 32), (64, 80)):  # a full batch, then a partial one of 16
        logits = twin.forward(X[s:e], training=True)
        correct_ref += int((logits.argmax(1) == y[s:e]).sum())
        loss, d = gn.losses.softmax_cross_entropy(logits, y[s:e])
        terms.append((float(loss), e - s))
        twin.backward(d)
        twin_opt.step()
    step.reset_sums(1.5, 7)
    step.run(X[:32], y[:32])
    loss = step.run_eager(X[64:], y[64:])  # 16 samples
    assert step.steps == 2 and float(loss) == terms[-1][0]
    loss_sum, correct = step.sums()
    assert correct == correct_ref
    assert loss_sum == _float64_sum(1.5, terms)
    np.testing.assert_array_equal(model.params, twin.params)
    step.run(X[32:64], y[32:64])  # back to full batches after a partial one
    assert step.steps == 3
    assert step.sums()[0] > loss_sum


def test_set_lr_reaches_the_optimizer():
    model = _model("cpu")
    opt = gn.optim.Momentum(model, lr=0.1)
    step = TrainStep(model, opt, batch_size=8)
    step.set_lr(0.025)
    assert opt.lr == 0.025


# ---------------------------------------------------------------- GPU: graph replay
def _train(be, X, y, graph, opt_name="adam", steps_per_epoch=3, epochs=2, partial=True,
           tf32=False):
    model = _model(be)
    opt = gn.optim.make_optimizer(opt_name, model, lr=1e-2, weight_decay=1e-3)
    step = TrainStep(model, opt, batch_size=32, cuda_graph=graph, tf32=tf32)
    Xd, yd = be.asarray(X), be.asarray(y.astype(np.int64))
    for epoch in range(epochs):
        step.set_lr(1e-2 / (1 + epoch))
        step.reset_sums()
        for s in range(steps_per_epoch):
            step.run(Xd[32 * s:32 * s + 32], yd[32 * s:32 * s + 32])
        if partial:
            step.run_eager(Xd[96:], yd[96:])
    sums = step.sums()
    return step, host(be, model.params), sums, opt.t


@pytest.mark.parametrize("opt_name", list(gn.optim.OPTIMIZERS))
def test_graph_replay_equals_the_eager_step_bit_for_bit(gpu_backend, rng, opt_name):
    be = gpu_backend
    X, y = _data(rng, n=110)
    eager = _train(be, X, y, graph=False, opt_name=opt_name)
    graph = _train(be, X, y, graph=True, opt_name=opt_name)
    assert graph[0].cuda_graph and graph[0].graph is not None, graph[0].graph_off_reason
    assert not eager[0].cuda_graph
    np.testing.assert_array_equal(graph[1], eager[1])
    assert graph[2] == eager[2] and graph[3] == eager[3] == 8


def test_graph_replay_allocates_nothing_and_matches_the_cpu(gpu_backend, rng):
    be = gpu_backend
    X, y = _data(rng, n=110)
    step, params, _, _ = _train(be, X, y, graph=True)
    pool = be.xp.get_default_memory_pool()
    Xd, yd = be.asarray(X[:32]), be.asarray(y[:32].astype(np.int64))
    step.x[...] = Xd
    step.y[...] = yd
    step.run()
    be.synchronize()
    used = pool.used_bytes()
    for _ in range(5):
        step.run()
    be.synchronize()
    assert pool.used_bytes() == used
    cpu = _train(gn.get_backend("cpu"), X, y, graph=False)
    np.testing.assert_allclose(params, cpu[1], rtol=1e-3, atol=1e-4)


def test_own_gemm_matches_cupy_matmul_for_every_layout(gpu_backend, rng):
    be = gpu_backend
    cp = be.xp
    assert be.use_own_gemm()
    for m, k, n in [(1, 1, 1), (3, 5, 7), (64, 33, 17), (512, 784, 1024)]:
        a = cp.asarray(rng.standard_normal((m, k)).astype(np.float32))
        b = cp.asarray(rng.standard_normal((k, n)).astype(np.float32))
        at = cp.ascontiguousarray(a.T).T  # F-contiguous (m, k)
        bt = cp.ascontiguousarray(b.T).T
        ref = a.get().astype(np.float64) @ b.get().astype(np.float64)
        for x, w in [(a, b), (at, b), (a, bt), (at, bt)]:
            out = cp.empty((m, n), np.float32)
            be.matmul(x, w, out=out)
            np.testing.assert_allclose(out.get(), ref, rtol=1e-4, atol=1e-4 * np.sqrt(k))


def test_device_feed_gives_the_host_feeds_batches(rng, seed, tmp_path):
    """The device-resident feed draws the same permutation from the same generator as the
    data layer, so GPU training sees the CPU path's batches (checked here on NumPy)."""
    import h5py

    from gpunet import data as data_mod
    from gpunet.train import DeviceFeed, HostFeed

    X, y = _data(rng, n=100)
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f["X"], f["y"] = X, y
    ds = data_mod.open_dataset(str(path), val_split=0.0)
    std = data_mod.Standardizer.fit(ds.train)
    be = gn.get_backend("cpu")
    model = _model(be)
    step = TrainStep(model, gn.optim.SGD(model), batch_size=32)
    feeds = [HostFeed(be, ds.train, std, 32), DeviceFeed(be, ds.train, std, 32, step)]
    for drop_last in (False, True):
        got = []
        for feed in feeds:
            r = np.random.default_rng(seed)  # the same draws for both feeds
            got.append([(np.array(xb), np.array(yb)) for xb, yb in feed.epoch(r, drop_last)])
        assert len(got[0]) == len(got[1]) == (3 if drop_last else 4)
        for (xa, ya), (xb, yb) in zip(*got, strict=True):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
