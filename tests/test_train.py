"""fit / evaluate / predict: the run folder, inference statistics, early stopping, divergence,
resuming in-process, class weights, schedules, and the digits target."""

from __future__ import annotations

import hashlib
import json
import os
import time

import h5py
import numpy as np
import pytest

from gpunet import checkpoint as ck
from gpunet.config import TrainConfig
from gpunet.data import load_split
from gpunet.errors import CheckpointError, ConfigError, TrainingDiverged
from gpunet.train import (
    _class_weights,
    config_for_resume,
    evaluate,
    evaluate_checkpoint,
    fit,
    predict,
    predict_checkpoint,
)


def write_blobs(path, n=600, d=5, classes=3, seed=0, test=True, spread=2.5, weights=None):
    """Gaussian blobs in groups train (and test); labels int64."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, spread, (classes, d))
    p = None if weights is None else np.asarray(weights) / np.sum(weights)

    def make(m):
        y = rng.choice(classes, m, p=p)
        return (centers[y] + rng.standard_normal((m, d))).astype(np.float32), y.astype(np.int64)

    with h5py.File(path, "w") as f:
        X, y = make(n)
        f["train/X"], f["train/y"] = X, y
        if test:
            X, y = make(n // 4)
            f["test/X"], f["test/y"] = X, y
    return str(path)


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def small_cfg(data, out, **kw) -> TrainConfig:
    base = dict(data=data, out=str(out), hidden=[16, 8], epochs=3, batch_size=32, device="cpu",
                seed=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    return write_blobs(tmp_path_factory.mktemp("data") / "blobs.h5")


@pytest.fixture(scope="module")
def run(blobs, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return fit(small_cfg(blobs, out, epochs=4, dropout=0.1))


def test_fit_writes_the_run_folder(run):
    out = run.out_dir
    assert sorted(p.name for p in out.iterdir()) == [".gpunet-run", "best.h5", "config.toml",
                                                     "last.h5", "metrics.jsonl"]
    holder = json.loads((out / ".gpunet-run").read_text())  # the marker names the last holder
    assert holder["pid"] == os.getpid() and holder["host"]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4]
    keys = {"epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds",
            "samples_per_s"}
    assert all(keys <= set(r) for r in lines)
    assert lines[-1]["step"] == run.step == ck.load(out / "last.h5").step
    assert run.status == "finished" and run.test is not None and run.test["accuracy"] > 0.9
    best = ck.load(out / "best.h5")
    assert best.epoch == run.best_epoch and best.progress["best_value"] == run.best_value
    assert run.best_value == max(r["val_acc"] for r in lines)
    cfg = TrainConfig.from_dict(__import__("gpunet.config").config.load_toml(out / "config.toml"))
    assert cfg.hidden == [16, 8] and cfg.lr == 2e-3 and cfg.out == str(out)
    assert best.data["heldout"] == "test" and best.data["val_source"] == "split"


def test_cosine_schedule_in_metrics(run):
    lrs = [r["lr"] for r in run.history]
    assert lrs[0] == pytest.approx(2e-3) and lrs == sorted(lrs, reverse=True)


def test_evaluate_is_repeatable_batch_size_independent_and_changes_nothing(run, blobs):
    last = run.out_dir / "last.h5"
    before = _sha(last)
    stats_before = {k: v for k, v in ck.load(last).arrays.items()}
    a = evaluate_checkpoint(last, device="cpu")
    b = evaluate_checkpoint(last, device="cpu")
    c = evaluate_checkpoint(last, device="cpu", batch_size=7)
    d = evaluate_checkpoint(last, device="cpu", batch_size=1)
    assert a == b
    for other in (c, d):
        for key in ("accuracy", "n", "confusion_matrix", "per_class"):
            assert other[key] == a[key], key
        assert other["loss"] == pytest.approx(a["loss"], rel=1e-6)
    assert set(a) >= {"accuracy", "loss", "n", "per_class", "confusion_matrix"}
    assert a["split"] == "test" and a["n"] == 150 and sum(map(sum, a["confusion_matrix"])) == 150
    assert _sha(last) == before
    for k, v in ck.load(last).arrays.items():
        assert np.array_equal(v, stats_before[k]), k
    # and in memory: evaluating does not touch a model's running statistics
    src = load_split(blobs, "test")
    model = run.model
    snap = model.state_arrays()
    evaluate(model, src, run.standardizer)
    for k, v in model.state_arrays().items():
        assert np.array_equal(v, snap[k]), k


def test_per_class_metrics(run):
    r = evaluate_checkpoint(run.out_dir / "best.h5", device="cpu")
    cm = np.array(r["confusion_matrix"])
    for i, (name, m) in enumerate(r["per_class"].items()):
        assert name == str(i)
        assert m["support"] == cm[i].sum()
        assert m["recall"] == pytest.approx(cm[i, i] / cm[i].sum())
        assert m["precision"] == pytest.approx(cm[i, i] / cm[:, i].sum())
    assert r["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())


def test_predict_matches_evaluate_and_writes_files(run, blobs, tmp_path):
    src = load_split(blobs, "test")
    p = predict(run.model, src, run.standardizer)
    X, y = src.arrays()
    assert np.array_equal(p, predict(run.model, X, run.standardizer))
    proba = predict(run.model, X, run.standardizer, proba=True)
    assert proba.shape == (150, 3) and np.allclose(proba.sum(1), 1, atol=1e-5)
    best = run.out_dir / "best.h5"
    for ext in ("h5", "csv", "npy"):
        res = predict_checkpoint(best, blobs, tmp_path / f"p.{ext}", proba=True, split="test",
                                 device="cpu")
        assert res["n"] == 150
    with h5py.File(tmp_path / "p.h5") as f:
        assert f["pred"].shape == (150,) and f["proba"].shape == (150, 3)
    assert np.load(tmp_path / "p.npy", allow_pickle=False).shape == (150, 3)
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "pred,class,p_0,p_1,p_2" and len(lines) == 151
    before = _sha(best)
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        predict_checkpoint(best, blobs, best, device="cpu")
    assert _sha(best) == before


def test_interrupted_run_resumes_exactly_in_process(blobs, tmp_path):
    """Stop mid-epoch (after a --save-every checkpoint), resume: same parameters bit for bit,
    same metrics. Dropout is on, so the dropout generator's state matters too."""
    kw = dict(epochs=3, dropout=0.2, save_every=4, lr_schedule="step", lr_step_size=1)
    ref = fit(small_cfg(blobs, tmp_path / "ref", **kw))

    class Stop(Exception):
        pass

    def stop_at_step_23(event, info):
        if event == "batch" and info["epoch"] == 2 and info["batch"] == 6:
            raise Stop

    with pytest.raises(Stop):
        fit(small_cfg(blobs, tmp_path / "cut", **kw), callback=stop_at_step_23)
    last = tmp_path / "cut" / "last.h5"
    pr = ck.load(last).progress
    assert (pr["epoch"], pr["batch"]) == (1, 3)  # step 20 = epoch 2, batch 3 (17 a epoch)
    res = fit(config_for_resume(last), resume=last)
    assert np.array_equal(res.model.state_arrays()["params"], ref.model.state_arrays()["params"])
    for k, v in ref.model.state_arrays().items():
        assert np.array_equal(res.model.state_arrays()[k], v), k
    strip = [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")}
             for r in ref.history]
    assert [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")}
            for r in res.history] == strip
    a, b = ck.load(ref.last_path), ck.load(res.last_path)
    for k in a.optimizer_state:
        assert np.array_equal(a.optimizer_state[k], b.optimizer_state[k])
    assert a.rng == b.rng


def test_resume_with_a_new_learning_rate_is_recorded(blobs, tmp_path):
    out = tmp_path / "r"
    fit(small_cfg(blobs, out, epochs=2))
    cfg = config_for_resume(out / "last.h5", {"lr": 5e-4, "epochs": 3})
    res = fit(cfg, resume=out / "last.h5")
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    events = [x for x in lines if "event" in x]
    assert events == [{"event": "resume", "epoch": 2, "step": events[0]["step"],
                       "from": str(out / "last.h5"),
                       "changed": {"lr": [2e-3, 5e-4], "epochs": [2, 3]}}]
    assert [x["epoch"] for x in lines if "event" not in x] == [1, 2, 3]
    assert res.epochs == 3 and ck.load(out / "last.h5").optimizer["hyperparams"]["lr0"] == 5e-4


def test_resume_refuses_to_change_the_model(blobs, tmp_path):
    out = tmp_path / "r"
    fit(small_cfg(blobs, out, epochs=1))
    with pytest.raises(ConfigError, match="cannot change hidden"):
        fit(config_for_resume(out / "last.h5", {"hidden": [4]}), resume=out / "last.h5")


def test_fresh_run_does_not_overwrite_an_existing_run(blobs, tmp_path):
    out = tmp_path / "r"
    fit(small_cfg(blobs, out, epochs=1))
    before = _sha(out / "last.h5")
    with pytest.raises(ConfigError, match="already holds a run"):
        fit(small_cfg(blobs, out, epochs=1))
    assert _sha(out / "last.h5") == before


def test_early_stopping_restores_the_best_weights(tmp_path):
    data = write_blobs(tmp_path / "easy.h5", n=400, spread=6.0)
    res = fit(small_cfg(data, tmp_path / "r", epochs=30, patience=2, lr=0.02))
    assert res.status == "early_stopped" and res.epochs < 30
    improved = ck.load(tmp_path / "r" / "last.h5").progress["improved_epoch"]
    assert res.epochs - improved == 2 and improved <= res.best_epoch
    best = ck.load(tmp_path / "r" / "best.h5")
    assert best.epoch == res.best_epoch
    assert np.array_equal(res.model.state_arrays()["params"], best.arrays["params"])
    assert ck.load(tmp_path / "r" / "last.h5").progress["status"] == "early_stopped"


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(blobs, tmp_path):
    out = tmp_path / "r"
    fit(small_cfg(blobs, out, epochs=1, batchnorm=False, optimizer="sgd"))
    before = _sha(out / "last.h5")
    cfg = config_for_resume(out / "last.h5", {"lr": 1e30, "epochs": 3})
    with pytest.raises(TrainingDiverged, match="loss became (nan|inf).*last good checkpoint"):
        fit(cfg, resume=out / "last.h5")
    assert _sha(out / "last.h5") == before
    assert ck.load(out / "last.h5").epoch == 1
    last_line = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last_line["event"] == "diverged"


def test_balanced_class_weights(tmp_path):
    data = write_blobs(tmp_path / "imb.h5", n=500, weights=[0.8, 0.15, 0.05])
    from gpunet.data import open_dataset

    ds = open_dataset(data, val_split=0.0)
    counts = ds.train.class_counts(3)
    w = _class_weights(TrainConfig(class_weights="balanced"), ds)
    np.testing.assert_allclose(w, counts.sum() / (3 * counts), rtol=1e-6)
    assert _class_weights(TrainConfig(), ds) is None
    res = fit(small_cfg(data, tmp_path / "r", class_weights="balanced", epochs=2))
    assert res.history[-1]["train_loss"] > 0


def test_streamed_training_matches_in_memory_accuracy(blobs, tmp_path):
    """A memory budget far below the data size streams the file; accuracy stays the same."""
    from gpunet.data import open_dataset

    assert not open_dataset(blobs, memory_budget=9000).train.in_memory
    mem = fit(small_cfg(blobs, tmp_path / "mem", epochs=4))
    streamed = fit(small_cfg(blobs, tmp_path / "str", epochs=4, memory_budget=9000))
    assert abs(streamed.test["accuracy"] - mem.test["accuracy"]) <= 0.03


def test_batch_size_one_with_batchnorm_is_a_config_error(blobs, tmp_path):
    with pytest.raises(ConfigError, match="--batch-size 1 cannot train with batch norm"):
        fit(small_cfg(blobs, tmp_path / "r", batch_size=1))


def test_last_batch_of_one_is_dropped_with_batchnorm(tmp_path):
    data = write_blobs(tmp_path / "odd.h5", n=65, test=False)
    res = fit(small_cfg(data, tmp_path / "r", val_split=0.0, epochs=1))
    assert res.step == 2 and res.history[0]["val_acc"] is None and res.best_metric == "train_acc"


def test_eval_rejects_a_checkpoint_of_other_width(run, tmp_path):
    other = write_blobs(tmp_path / "wide.h5", d=7)
    with pytest.raises(Exception, match="expects 5 input features but .* has 7"):
        evaluate_checkpoint(run.out_dir / "best.h5", other, device="cpu")
    with pytest.raises(CheckpointError, match="not found"):
        evaluate_checkpoint(tmp_path / "none.h5", device="cpu")


def test_digits_defaults_reach_97_percent(tmp_path):
    """The Must-show target: default settings on the bundled digits, >= 97% test accuracy."""
    t0 = time.perf_counter()
    res = fit(TrainConfig(data="digits", out=str(tmp_path / "digits"), device="cpu"))
    seconds = time.perf_counter() - t0
    print(f"digits: test accuracy {res.test['accuracy']:.4f} in {seconds:.1f}s")
    assert res.test["accuracy"] >= 0.97
    ev = evaluate_checkpoint(tmp_path / "digits" / "best.h5", device="cpu")
    assert ev["accuracy"] == res.test["accuracy"] and ev["split"] == "test"


def test_eval_without_test_group_uses_the_recorded_validation_split(tmp_path):
    """No test group: eval without --data re-creates the held-out validation rows, so it
    reproduces the last epoch's val_acc / val_loss exactly."""
    data = write_blobs(tmp_path / "flat.h5", n=300, test=False)
    res = fit(small_cfg(data, tmp_path / "r", epochs=2))
    ev = evaluate_checkpoint(tmp_path / "r" / "last.h5", device="cpu")
    assert ev["split"] == "val" and ev["n"] == 30
    assert ev["accuracy"] == res.history[-1]["val_acc"]
    assert ev["loss"] == res.history[-1]["val_loss"]
    assert res.test is None


def test_config_parsing_and_toml_round_trip(tmp_path):
    from gpunet.config import load_toml, parse_hidden, parse_size

    assert parse_hidden("512,256") == [512, 256] and parse_hidden("none") == []
    assert parse_size("512MB") == 512 << 20 and parse_size("2g") == 2 << 30
    assert parse_size("1000") == 1000
    for bad in ("12 parsecs", "-5", "0"):
        with pytest.raises(ConfigError):
            parse_size(bad)
    with pytest.raises(ConfigError, match="comma-separated integers"):
        parse_hidden("a,b")
    cfg = TrainConfig(data="x.h5", optimizer="rmsprop", hidden=[7], memory_budget=1 << 20)
    r = cfg.resolve()
    assert (r.lr, r.beta2, r.eps, r.beta1) == (1e-3, 0.99, 1e-8, None)
    assert r.optimizer_kwargs() == {"lr": 1e-3, "weight_decay": 0.0, "beta2": 0.99, "eps": 1e-8}
    (tmp_path / "c.toml").write_text(r.to_toml())
    assert TrainConfig.from_dict(load_toml(tmp_path / "c.toml")) == r
    with pytest.raises(ConfigError, match="must be an integer"):
        TrainConfig.from_dict({"epochs": 2.5})
    with pytest.raises(ConfigError, match="not valid TOML"):
        (tmp_path / "bad.toml").write_text("epochs = = 3")
        load_toml(tmp_path / "bad.toml")


def test_drop_last_counts_only_the_full_batches(tmp_path):
    """100 samples, batch 32, --drop-last: 3 batches per epoch, reported and run (the count
    used to be taken before drop_last applied: 4 reported, 3 run)."""
    data = write_blobs(tmp_path / "h.h5", n=100, test=False)
    events = []
    res = fit(small_cfg(data, tmp_path / "r", val_split=0.0, epochs=2, drop_last=True,
                        save_every=3),
              callback=lambda e, i: events.append((e, dict(i))))
    start = next(i for e, i in events if e == "start")
    batches = [(i["epoch"], i["batch"], i["batches"]) for e, i in events if e == "batch"]
    assert start["batches"] == 3 and start["n_train"] == 100
    assert batches == [(ep, b, 3) for ep in (1, 2) for b in (1, 2, 3)]
    assert res.step == 6 and res.history[-1]["step"] == 6
    assert ck.load(res.last_path).progress["n_batches"] == 3
    # and the same count without --drop-last: the partial batch of 4 runs
    res = fit(small_cfg(data, tmp_path / "k", val_split=0.0, epochs=1))
    assert res.step == 4 and ck.load(res.last_path).progress["n_batches"] == 4


def test_batches_per_epoch_and_drop_rule():
    from gpunet.train import batches_per_epoch, drops_last

    assert [batches_per_epoch(n, 32, False) for n in (1, 31, 32, 33, 100)] == [1, 1, 1, 2, 4]
    assert [batches_per_epoch(n, 32, True) for n in (1, 31, 32, 33, 100)] == [0, 0, 1, 1, 3]
    assert drops_last(TrainConfig(batch_size=32), 65)  # a last batch of one with batch norm
    assert not drops_last(TrainConfig(batch_size=32, batchnorm=False), 65)
    assert not drops_last(TrainConfig(batch_size=32), 66)
    assert drops_last(TrainConfig(batch_size=32, drop_last=True), 66)


def test_drop_last_with_fewer_samples_than_a_batch_is_a_data_error(tmp_path):
    data = write_blobs(tmp_path / "s.h5", n=20, test=False)
    from gpunet.errors import DataError

    with pytest.raises(DataError, match="20 samples, fewer than one batch of 32"):
        fit(small_cfg(data, tmp_path / "r", val_split=0.0, drop_last=True))
    assert not (tmp_path / "r").exists()


def _loop_parts(cfg, ds, state):
    from gpunet import get_backend
    from gpunet.step import TrainStep
    from gpunet.train import LoopOptions, make_feed

    be = get_backend("cpu")
    stepper = TrainStep(state.model, state.optimizer, cfg.batch_size)
    feed = make_feed(be, ds.train, state.standardizer, cfg.batch_size, stepper)
    opts = LoopOptions(epochs=cfg.epochs, patience=0, save_every=cfg.save_every,
                       validate=lambda: (None, None))
    return stepper, feed, opts


def test_epoch_loop_state_round_trips_through_a_checkpoint(blobs, tmp_path):
    """The loop yields records and touches only the state: stop consuming it after a
    checkpoint record, save the state, build a new one from the file, continue: the same
    parameters and epoch records bit for bit as an uninterrupted loop."""
    from gpunet import get_backend
    from gpunet.data import open_dataset
    from gpunet.train import TrainState, train_epochs
    from gpunet.train.loop import BatchDone, CheckpointDue, EpochDone, EpochStarted

    cfg = small_cfg(blobs, tmp_path, epochs=2, dropout=0.2, save_every=5).resolve()
    ds = open_dataset(blobs, val_split=cfg.val_split, seed=cfg.seed)
    be = get_backend("cpu")
    meta = dict(config=cfg.to_dict(), data={}, classes=["0", "1", "2"])

    ref = TrainState.fresh(cfg, ds, be)
    recs = list(train_epochs(ref, *_loop_parts(cfg, ds, ref)))
    n = ref.n_batches
    assert n == 17 and ref.epoch == 2 and ref.step == 2 * n and ref.status == "finished"
    kinds = [type(r) for r in recs]
    assert kinds[0] is EpochStarted and kinds[n + n // 5 + 1] is EpochDone
    assert kinds.count(BatchDone) == 2 * n and kinds.count(EpochDone) == 2
    assert [r.step for r in recs if isinstance(r, CheckpointDue)] == [5, 10, 15, 20, 25, 30]
    assert list(tmp_path.iterdir()) == []  # the loop wrote nothing

    cut = TrainState.fresh(cfg, ds, be)
    head = []
    for r in train_epochs(cut, *_loop_parts(cfg, ds, cut)):
        head.append(r)
        if isinstance(r, CheckpointDue) and r.step == 25:
            break
    assert (cut.epoch, cut.batch, cut.step) == (1, 8, 25) and cut.epoch_count == 8 * 32
    ck.save(tmp_path / "s.h5", cut.to_checkpoint(**meta))
    again = TrainState.from_checkpoint(ck.load(tmp_path / "s.h5"), cfg, ds, be)
    assert (again.epoch, again.batch, again.step) == (1, 8, 25)
    assert again.epoch_loss_sum == cut.epoch_loss_sum and again.monitor == "val_acc"
    tail = list(train_epochs(again, *_loop_parts(cfg, ds, again)))
    assert again.to_checkpoint(**meta).progress == ref.to_checkpoint(**meta).progress
    for k, v in ref.model.state_arrays().items():
        assert np.array_equal(again.model.state_arrays()[k], v), k
    done = [r.record for r in head + tail if isinstance(r, EpochDone)]
    strip = [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")}
             for r in done]
    assert strip == [{k: v for k, v in r.record.items() if k not in ("seconds", "samples_per_s")}
                     for r in recs if isinstance(r, EpochDone)]


def test_an_asynchronous_backend_reads_the_loss_only_at_epoch_ends(blobs, tmp_path):
    """A backend that queues its steps (``Backend.asynchronous``) is not synchronized after
    each step: the same training, and a NaN / inf loss is reported at its epoch's end."""
    from gpunet.backend.numpy_backend import NumpyBackend

    class Queued(NumpyBackend):
        asynchronous = True

    kw = dict(epochs=1, batchnorm=False, optimizer="sgd")
    sync = fit(small_cfg(blobs, tmp_path / "s", **kw), backend="cpu")
    queued = fit(small_cfg(blobs, tmp_path / "q", **kw), backend=Queued())
    for k, v in sync.model.state_arrays().items():
        assert np.array_equal(queued.model.state_arrays()[k], v), k
    with pytest.raises(TrainingDiverged, match=r"became (nan|inf) at epoch 1, step \d+ "):
        fit(small_cfg(blobs, tmp_path / "s2", lr=1e30, **kw), backend="cpu")
    with pytest.raises(TrainingDiverged, match=r"became (nan|inf) in epoch 1 "):
        fit(small_cfg(blobs, tmp_path / "q2", lr=1e30, **kw), backend=Queued())


def test_resume_clears_the_temp_files_of_an_interrupted_save(blobs, tmp_path):
    from gpunet import fileio

    out = tmp_path / "r"
    fit(small_cfg(blobs, out, epochs=1))
    stale = fileio._create_temp(out / "last.h5")  # what a save killed half-way leaves
    stale.write_bytes(b"half a checkpoint")
    (out / ".mine.tmp").write_text("not gpunet's")
    fit(config_for_resume(out / "last.h5", {"epochs": 2}), resume=out / "last.h5")
    assert sorted(p.name for p in out.iterdir()) == [".gpunet-run", ".mine.tmp", "best.h5",
                                                     "config.toml", "last.h5", "metrics.jsonl"]


def test_a_batch_size_beyond_the_training_set_allocates_for_the_set_only(tmp_path):
    """--batch-size 2**31-1 on 300 samples trains as --batch-size 300 does (one batch an
    epoch), within a 2 GB address space (buffers for 2**31-1 rows would need ~40 GB)."""
    import h5py
    from hostile import MEMORY_LIMIT, run_cli

    from gpunet import checkpoint as ck

    rng = np.random.default_rng(0)
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f["X"] = rng.normal(size=(300, 5)).astype(np.float32)
        f["y"] = rng.integers(0, 3, 300)
    runs = {}
    for b in (300, 2**31 - 1):
        r = run_cli("train", path, "--hidden", "8", "--epochs", "2", "--batch-size", b,
                    "--val-split", "0", "--out", tmp_path / f"r{b}", "--device", "cpu",
                    "--quiet", memory=MEMORY_LIMIT, timeout=120)
        assert r.code == 0, r.stderr
        runs[b] = ck.load(tmp_path / f"r{b}" / "last.h5")
    assert runs[300].progress["step"] == runs[2**31 - 1].progress["step"] == 2
    np.testing.assert_array_equal(runs[300].arrays["params"], runs[2**31 - 1].arrays["params"])
