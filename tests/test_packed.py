"""Packed trials: every member of a pack follows the run it would make alone.

Step level: ``PackedTrainStep`` on a ``PackedMLP`` against K single ``TrainStep`` runs
(per-member losses each step, parameters and optimizer state after the steps). Fit level:
``fit_packed`` against ``gpunet.train.fit`` per member after 3 epochs (metrics, checkpoints).
Members stopping alone: divergence, early stopping, pruning from the callback.
"""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

from gpunet import MLP, PackedMLP, TrainStep, checkpoint
from gpunet.config import TrainConfig
from gpunet.optim import make_optimizer
from gpunet.packed import (
    PackCommit,
    PackedOptimizer,
    PackedTrainStep,
    StopMember,
    fit_packed,
    save_member,
)
from gpunet.train import evaluate, fit

D, C = 12, 4
# member hyperparameters: every optimizer, different lr, betas, eps, decay, BN momentum,
# dropout, seed
MEMBERS = [
    dict(optimizer="adam", lr=3e-3, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=1e-3,
         bn_momentum=0.1, dropout=0.0, seed=0),
    dict(optimizer="sgd", lr=0.05, weight_decay=0.0, bn_momentum=0.3, dropout=0.2, seed=1),
    dict(optimizer="momentum", lr=0.05, beta1=0.7, weight_decay=1e-2, bn_momentum=0.05,
         dropout=0.1, seed=2),
    dict(optimizer="rmsprop", lr=2e-3, beta2=0.9, eps=1e-7, weight_decay=0.0,
         bn_momentum=0.2, dropout=0.0, seed=3),
    dict(optimizer="adam", lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
         bn_momentum=0.5, dropout=0.3, seed=4),
]
OPT_KEYS = {"adam": ("lr", "beta1", "beta2", "eps", "weight_decay"),
            "sgd": ("lr", "weight_decay"), "momentum": ("lr", "beta1", "weight_decay"),
            "rmsprop": ("lr", "beta2", "eps", "weight_decay")}


def _opt_kwargs(m):
    kw = {k: m[k] for k in OPT_KEYS[m["optimizer"]]}
    if m["optimizer"] == "momentum":
        kw["beta"] = kw.pop("beta1")
    return kw


def _solo(m, batchnorm):
    model = MLP(D, [16, 8], C, batchnorm=batchnorm, dropout=m["dropout"], backend="cpu",
                seed=m["seed"], bn_momentum=m["bn_momentum"])
    opt = make_optimizer(m["optimizer"], model, **_opt_kwargs(m))
    return model, opt


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2.0, (C, D))
    y = rng.integers(0, C, n)
    return (centers[y] + rng.standard_normal((n, D))).astype(np.float32), y.astype(np.int64)


# ---------------------------------------------------------------------- step level
@pytest.mark.parametrize("batchnorm", [True, False])
@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("shared", [True, False])
def test_packed_steps_equal_single_steps(k, batchnorm, shared):
    members = MEMBERS[:k]
    solos = [_solo(m, batchnorm) for m in members]
    pack = PackedMLP.from_members([s[0] for s in solos])
    # the pack copied the members: from here on they train apart
    solo = [_solo(m, batchnorm) for m in members]
    opt = PackedOptimizer(pack, [s[1] for s in solos])
    step = PackedTrainStep(pack, opt, batch_size=32, shared_input=shared)
    singles = [TrainStep(mo, op, batch_size=32) for mo, op in solo]
    X, y = _data(96 + 20)
    rngs = [np.random.default_rng(100 + i) for i in range(k)]
    for it in range(8):
        epoch_lr = [o.set_epoch(it // 4) for _, o in solo]
        step.set_lr([o.set_epoch(it // 4) for o in opt.members])
        for t, lr in zip(singles, epoch_lr, strict=True):
            t.set_lr(lr)
        n = 32 if it < 7 else 20  # the last one: a partial batch, outside the fixed buffers
        if shared:
            idx = [rngs[0].permutation(len(y))[:n]] * k
            xb = X[idx[0]]
            yb = y[idx[0]]
        else:
            idx = [r.permutation(len(y))[:n] for r in rngs]
            xb = np.concatenate([X[i] for i in idx], axis=1)
            yb = np.stack([y[i] for i in idx], axis=1)
        got = np.array(step.run(xb, yb) if n == 32 else step.run_eager(xb, yb))
        want = [float(t.run(X[i], y[i]) if n == 32 else t.run_eager(X[i], y[i]))
                for t, i in zip(singles, idx, strict=True)]
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
    for j, (mo, op) in enumerate(solo):
        np.testing.assert_allclose(pack.params[j], mo.params, rtol=1e-4, atol=2e-5)
        for name, arr in op.state.items():
            np.testing.assert_allclose(opt.state[name][j], arr, rtol=1e-3, atol=1e-6)
        assert int(opt.t[j]) == op.t == 8
        member = pack.member(j)
        for (_, a), (_, b) in zip(member.batchnorm_layers(), mo.batchnorm_layers(),
                                  strict=True):
            np.testing.assert_allclose(a.running_mean, b.running_mean, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(a.running_var, b.running_var, rtol=1e-5, atol=1e-6)
        # inference of the member sliced out equals the single model's
        np.testing.assert_allclose(member.forward(X[:10]), mo.forward(X[:10]), rtol=1e-4,
                                   atol=1e-5)


def test_inactive_member_is_left_bit_for_bit():
    members = MEMBERS[:3]
    solos = [_solo(m, True) for m in members]
    pack = PackedMLP.from_members([s[0] for s in solos])
    opt = PackedOptimizer(pack, [s[1] for s in solos])
    step = PackedTrainStep(pack, opt, batch_size=32)
    X, y = _data(32)
    step.run(X, y)
    before = np.array(pack.params[1]), {n: np.array(a[1]) for n, a in opt.state.items()}
    step.set_active(np.array([True, False, True]))
    for _ in range(3):
        step.run(X, y)
    np.testing.assert_array_equal(pack.params[1], before[0])
    for name, arr in opt.state.items():
        np.testing.assert_array_equal(arr[1], before[1][name])
    assert list(np.asarray(opt.t)) == [4, 1, 4]
    assert not np.array_equal(pack.params[0], solos[0][0].params)


def test_pack_rejects_different_architectures():
    with pytest.raises(ValueError, match="hidden"):
        PackedMLP.from_members([MLP(4, [8], 3, backend="cpu"), MLP(4, [9], 3, backend="cpu")])
    with pytest.raises(ValueError, match="3 values for 2 members"):
        PackedMLP(4, [8], 3, seeds=[0, 1], dropout=[0.1, 0.2, 0.3], backend="cpu")


def test_packed_constructor_matches_mlp_init():
    pack = PackedMLP(D, [16, 8], C, seeds=[7, 8], dropout=[0.0, 0.5], bn_momentum=[0.1, 0.2],
                     backend="cpu")
    for j, seed in enumerate([7, 8]):
        np.testing.assert_array_equal(pack.params[j], MLP(D, [16, 8], C, seed=seed,
                                                         backend="cpu").params)
    assert pack.member(1).config["dropout"] == 0.5 and pack.member(0).config["dropout"] == 0


# ---------------------------------------------------------------------- fit level
def _write(path, n=400, seed=3, val=False):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1.5, (C, D))
    y = rng.integers(0, C, n)
    X = (centers[y] + rng.standard_normal((n, D)) * 1.5).astype(np.float32)
    with h5py.File(path, "w") as f:
        if val:
            f["train/X"], f["train/y"] = X[:300], y[:300]
            f["val/X"], f["val/y"] = X[300:], y[300:]
        else:
            f["X"], f["y"] = X, y.astype(np.int64)
    return path


def _cfg(data, out, m, **extra):
    keys = {"optimizer", "lr", "beta1", "beta2", "eps", "weight_decay", "bn_momentum",
            "dropout", "seed"}
    return TrainConfig.from_dict({"data": str(data), "out": str(out), "hidden": [16, 8],
                                  "epochs": 3, "batch_size": 32, "device": "cpu",
                                  **{k: v for k, v in m.items() if k in keys}, **extra})


def _close_runs(a, b, tol=2e-3):
    """Two runs' metrics and last.h5 within float32 tolerance (accuracies: one sample)."""
    assert len(a.history) == len(b.history) and a.status == b.status
    for ra, rb in zip(a.history, b.history, strict=True):
        assert ra["epoch"] == rb["epoch"] and ra["step"] == rb["step"]
        assert ra["lr"] == pytest.approx(rb["lr"], rel=1e-12)
        for key in ("train_loss", "val_loss"):
            if ra[key] is not None:
                assert ra[key] == pytest.approx(rb[key], rel=tol, abs=tol)
        for key in ("train_acc", "val_acc"):
            if ra[key] is not None:
                assert abs(ra[key] - rb[key]) <= 1 / 40 + 1e-9
    ca, cb = checkpoint.load(a.last_path), checkpoint.load(b.last_path)
    assert ca.progress["step"] == cb.progress["step"] and ca.optimizer["t"] == cb.optimizer["t"]
    assert ca.rng == cb.rng  # same shuffle and dropout generator states
    for name in cb.arrays:
        np.testing.assert_allclose(ca.arrays[name], cb.arrays[name], rtol=tol, atol=tol)
    np.testing.assert_array_equal(ca.standardizer["mean"], cb.standardizer["mean"])


@pytest.mark.parametrize("batchnorm", [True, False])
def test_fit_packed_members_equal_solo_fits(tmp_path, batchnorm):
    data = _write(tmp_path / "d.h5")
    # members 0..4 differ in everything; member 4 shares seed 0 with member 0 only in part
    # of the run (different seed from the rest: the pack gathers per-group batches)
    extra = [dict(lr_schedule="cosine"), dict(lr_schedule="step", lr_step_size=1),
             dict(lr_schedule="exp", lr_gamma=0.7), dict(class_weights="balanced"),
             dict(lr_schedule="inverse", lr_decay_rate=0.5)]
    cfgs = [_cfg(data, tmp_path / f"p{k}", m, batchnorm=batchnorm, **e)
            for k, (m, e) in enumerate(zip(MEMBERS, extra, strict=True))]
    events = []
    res = fit_packed(cfgs, callback=lambda k, ev, info: events.append((k, ev)))
    assert res.errors == [None] * 5
    for k, cfg in enumerate(cfgs):
        solo = fit(cfg.updated({"out": str(tmp_path / f"s{k}")}))
        _close_runs(res.results[k], solo)
        assert res.results[k].test is None and solo.test is None
        assert (k, "end") in events and sum(1 for e in events if e == (k, "epoch")) == 3


def test_fit_packed_shared_data_order_and_validation_file(tmp_path):
    """Members with one seed read one batch (the shared-input path), on a file with a val
    group (validated in one packed pass)."""
    data = _write(tmp_path / "v.h5", val=True)
    ms = [{**m, "seed": 5} for m in MEMBERS[:3]]
    cfgs = [_cfg(data, tmp_path / f"p{k}", m) for k, m in enumerate(ms)]
    res = fit_packed(cfgs)
    for k, cfg in enumerate(cfgs):
        _close_runs(res.results[k], fit(cfg.updated({"out": str(tmp_path / f"s{k}")})))


def test_diverging_member_leaves_the_others_unchanged(tmp_path):
    data = _write(tmp_path / "d.h5")
    ms = [MEMBERS[0], MEMBERS[1], MEMBERS[3]]
    tame = [_cfg(data, tmp_path / f"a{k}", m) for k, m in enumerate(ms)]
    # SGD at lr 1e38 overflows float32 in the first products (inf, then NaN): a divergence
    # whatever batch norm's sums are computed in (float64 sums alone would stay finite at 1e30)
    wild = [_cfg(data, tmp_path / f"b{k}", {**m, "lr": 1e38} if k == 1 else m, batchnorm=True)
            for k, m in enumerate(ms)]
    a, b = fit_packed(tame), fit_packed(wild)
    assert b.results[1].status == "diverged" and "diverged" in b.errors[1]
    assert a.results[1].status == "finished"
    log = [json.loads(x) for x in (tmp_path / "b1" / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["event"] == "diverged"
    for k in (0, 2):  # bit for bit what they are beside a tame member
        assert b.errors[k] is None and b.results[k].history == _no_time(a.results[k].history,
                                                                         b.results[k].history)
        ca, cb = checkpoint.load(a.results[k].last_path), checkpoint.load(b.results[k].last_path)
        for name in ca.arrays:
            np.testing.assert_array_equal(ca.arrays[name], cb.arrays[name])


def _no_time(ha, hb):
    """``ha`` with ``hb``'s timing fields (the only ones that may differ)."""
    return [{**ra, "seconds": rb["seconds"], "samples_per_s": rb["samples_per_s"]}
            for ra, rb in zip(ha, hb, strict=True)]


def test_patience_and_pruning_stop_members_alone(tmp_path):
    data = _write(tmp_path / "d.h5", seed=9)
    ms = MEMBERS[:3]
    plain = [_cfg(data, tmp_path / f"a{k}", m, epochs=8) for k, m in enumerate(ms)]
    odd = [_cfg(data, tmp_path / f"b{k}", m, epochs=8, patience=1 if k == 0 else 0)
           for k, m in enumerate(ms)]

    def prune(k, event, info):
        if k == 2 and event == "epoch" and info["epoch"] == 2:
            raise StopMember("pruned at epoch 2")

    a, b = fit_packed(plain), fit_packed(odd, callback=prune)
    solo0 = fit(odd[0].updated({"out": str(tmp_path / "s0")}))
    assert solo0.status == "early_stopped" and solo0.epochs < 8  # the data makes it stop
    _close_runs(b.results[0], solo0)
    assert b.results[2].status == "pruned" and b.results[2].epochs == 2
    assert b.errors[2] == "pruned at epoch 2"
    assert b.results[1].history == _no_time(a.results[1].history, b.results[1].history)


def test_pack_saves_sync_a_fixed_few_times_whatever_the_members(tmp_path, monkeypatch):
    """Each epoch's saves of a pack (metrics lines, last.h5, best.h5 of every member) are made
    durable by the same number of syncs for 1 member as for 4; best.h5 of an improved epoch
    is last.h5's file (a hard link, not a second write)."""
    from gpunet import fileio

    data = _write(tmp_path / "d.h5")
    calls = []
    real = fileio._syncfs()
    monkeypatch.setattr(fileio, "_syncfs", lambda: lambda fd: calls.append("syncfs") or real(fd))
    fsync = os.fsync
    monkeypatch.setattr(fileio.os, "fsync", lambda fd: calls.append("fsync") or fsync(fd))

    def syncs(k, epochs):
        calls.clear()
        fit_packed([_cfg(data, tmp_path / f"k{k}e{epochs}-{i}", MEMBERS[i], epochs=epochs)
                    for i in range(k)])
        return {what: calls.count(what) for what in ("syncfs", "fsync")}

    per_epoch = {}
    for k in (1, 4):
        one, three = syncs(k, 1), syncs(k, 3)
        per_epoch[k] = {w: (three[w] - one[w]) / 2 for w in one}
    assert per_epoch[1] == per_epoch[4] and per_epoch[4]["syncfs"] == 2
    assert per_epoch[4]["fsync"] <= 3  # the commit marker's write and its removal
    out = tmp_path / "k4e3-0"
    hist = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    best = checkpoint.load(out / "best.h5")
    assert os.path.samefile(out / "best.h5", out / "last.h5") == (best.epoch == 3)
    assert best.epoch == max(r["epoch"] for r in hist if r["val_acc"] == max(
        h["val_acc"] for h in hist))


class _Killed(Exception):
    """Stands for a kill: raised from the callback, it ends ``fit_packed`` there."""


def test_resumed_pack_leaves_out_members_that_stopped_alone(tmp_path):
    """A pack interrupted in epoch 5 and resumed: the early-stopped member (told by its
    checkpoint) and the pruned one (told by its log's ``pruned`` event; its last.h5 is behind
    the others') stay as they are, the third trains on, bit for bit as uninterrupted."""
    data = _write(tmp_path / "d.h5", seed=9)
    cfgs = {tag: [_cfg(data, tmp_path / f"{tag}{k}", m, epochs=8, patience=1 if k == 0 else 0)
                  for k, m in enumerate(MEMBERS[:3])] for tag in "bc"}

    def prune(k, event, info, kill=False):
        if k == 2 and event == "epoch" and info["epoch"] == 2:
            raise StopMember("pruned at epoch 2")
        if kill and k == 1 and event == "epoch" and info["epoch"] == 5:
            raise _Killed  # member 1's epoch-5 files staged, never committed

    with pytest.raises(_Killed):
        fit_packed(cfgs["b"], callback=lambda *a: prune(*a, kill=True))
    log = [json.loads(x) for x in (tmp_path / "b2" / "metrics.jsonl").read_text().splitlines()]
    assert log[-1] == {"event": "pruned", "epoch": 2, "step": log[-2]["step"],
                       "reason": "pruned at epoch 2"}
    assert checkpoint.load(tmp_path / "b0" / "last.h5").progress["status"] == "early_stopped"
    frozen = {k: {p.name: p.read_bytes() for p in (tmp_path / f"b{k}").iterdir()}
              for k in (0, 2)}
    again = fit_packed(cfgs["b"], resume=[tmp_path / f"b{k}" / "last.h5" for k in range(3)])
    whole = fit_packed(cfgs["c"], callback=prune)
    for res in (again, whole):
        assert [r.status for r in res.results] == ["early_stopped", "finished", "pruned"]
        assert res.errors == [None, None, "pruned at epoch 2"] and res.results[2].epochs == 2
    for k in (0, 2):
        assert {p.name: p.read_bytes() for p in (tmp_path / f"b{k}").iterdir()} == frozen[k]
    assert again.results[1].history == _no_time(whole.results[1].history,
                                                again.results[1].history)
    ca, cb = (checkpoint.load(r.results[1].last_path) for r in (whole, again))
    assert ca.step == cb.step and ca.rng == cb.rng
    for name in ca.arrays:
        np.testing.assert_array_equal(ca.arrays[name], cb.arrays[name])


def test_member_checkpoint_is_an_ordinary_checkpoint(tmp_path):
    solos = [_solo(m, True) for m in MEMBERS[:2]]
    pack = PackedMLP.from_members([s[0] for s in solos])
    opt = PackedOptimizer(pack, [s[1] for s in solos])
    X, y = _data(64)
    PackedTrainStep(pack, opt, batch_size=64).run(X, y)
    path = save_member(tmp_path / "m1.h5", pack, 1, opt)
    ck = checkpoint.load(path)
    model = checkpoint.build_model(ck, "cpu")
    np.testing.assert_array_equal(model.params, pack.params[1])
    assert ck.optimizer["name"] == "sgd" and ck.optimizer["t"] == 1
    res = evaluate(model, _Src(X, y))
    assert res["n"] == 64 and 0 <= res["accuracy"] <= 1


class _Src:
    """A minimal in-memory ``ArraySource`` for ``evaluate``."""

    n_features, in_memory, has_labels = D, True, True

    def __init__(self, X, y):
        self.X, self.y, self.n = X, y, len(y)

    def arrays(self):
        return self.X, self.y

    def batches(self, b, shuffle=False):
        for i in range(0, self.n, b):
            yield self.X[i:i + b], self.y[i:i + b]


def test_pack_commit_rolls_forward_or_back(tmp_path):
    outs = [tmp_path / "m0", tmp_path / "m1"]
    for o in outs:
        o.mkdir()
        (o / "last.h5").write_text("old")
    c = PackCommit(outs)
    for o in outs:
        (o / ".last.h5.pack-next").write_text("new")
    c.marker.write_text(json.dumps([[str(o / ".last.h5.pack-next"), str(o / "last.h5")]
                                    for o in outs]))
    (outs[0] / ".last.h5.pack-next").replace(outs[0] / "last.h5")  # killed mid-renames
    PackCommit(outs).recover()
    assert [(o / "last.h5").read_text() for o in outs] == ["new", "new"]
    assert not c.marker.exists()
    (outs[1] / ".last.h5.pack-next").write_text("newer")  # staged, never committed
    PackCommit(outs).recover()
    assert (outs[1] / "last.h5").read_text() == "new"
    assert not (outs[1] / ".last.h5.pack-next").exists()
