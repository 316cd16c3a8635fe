"""gpunet tune: sampling scales, bound errors, coarse-to-fine shrinking, workers sharing one
journal storage (together, and one killed with SIGKILL), a diverging trial failing alone, the
best configuration's round trip through ``gpunet train --config``, the plot, a journal lock a
killed writer left behind, and babysitting (``gpunet train --resume PATH --lr X``)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from gpunet.cli import app
from typer.testing import CliRunner

from gpunet.errors import ConfigError
from gpunet.tune import (
    DEFAULT_SCALES,
    SCALE_TABLE,
    SCALES,
    Param,
    SearchSpace,
    default_space,
    fmt_value,
    round_of,
    round_sizes,
    tune,
)

optuna = pytest.importorskip("optuna")
runner = CliRunner()
N_SAMPLES = 40_000


def make_blobs(path: Path, n: int = 300, d: int = 6, classes: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2.5, (classes, d))
    y = rng.integers(0, classes, n)
    X = (centers[y] + rng.standard_normal((n, d))).astype(np.float32)
    k = n * 4 // 5
    with h5py.File(path, "w") as f:
        f["train/X"], f["train/y"] = X[:k], y[:k]
        f["test/X"], f["test/y"] = X[k:], y[k:]
    return path


@pytest.fixture(scope="module")
def blobs(tmp_path_factory) -> Path:
    return make_blobs(tmp_path_factory.mktemp("tune") / "blobs.h5")


#: a tiny, fast space and base config for the study tests
TINY_SPACE = {"lr": {"low": 1e-3, "high": 1e-1}, "width": {"low": 4, "high": 16},
              "batch_size": {"low": 16, "high": 64}}
TINY_SPACE_TOML = """lr = {low = 1e-3, high = 1e-1}
width = {low = 4, high = 16}
batch_size = {low = 16, high = 64}
"""
TINY_BASE = {"hidden": [8], "val_split": 0.25}


def write_space(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def load_study(storage: Path, name: str):
    from gpunet.tune import make_storage

    return optuna.load_study(study_name=name, storage=make_storage(storage))


def states(study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


# ====================================================================== scales
def shares(values: np.ndarray, edges: list[float]) -> np.ndarray:
    counts, _ = np.histogram(values, bins=edges)
    return counts / len(values)


def test_log_uniform_gives_each_decade_its_share():
    v = Param("lr", "log", 1e-5, 1e-1).sample(np.random.default_rng(1), N_SAMPLES)
    assert v.min() >= 1e-5 and v.max() <= 1e-1
    s = shares(v, [1e-5, 1e-4, 1e-3, 1e-2, 1e-1])
    # binomial sd of a share: sqrt(0.25 * 0.75 / 40000) ~ 0.002; 0.012 is 5.5 sd
    assert np.all(np.abs(s - 0.25) < 0.012), s
    # a uniform draw on the value would put ~90% in the top decade
    assert s[-1] < 0.3


def test_one_minus_beta_is_log_uniform():
    v = Param("beta1", "log1m", 0.9, 0.999).sample(np.random.default_rng(2), N_SAMPLES)
    assert v.min() >= 0.9 and v.max() <= 0.999
    # 0.9..0.99 and 0.99..0.999 are one decade of 1 - beta each: half the samples each
    s = shares(v, [0.9, 0.99, 0.999])
    assert np.all(np.abs(s - 0.5) < 0.012), s
    w = Param("beta2", "log1m", 0.9, 0.9999).sample(np.random.default_rng(3), N_SAMPLES)
    s = shares(1 - w, [1e-4, 1e-3, 1e-2, 1e-1])
    assert np.all(np.abs(s - 1 / 3) < 0.012), s


def test_integer_scales():
    rng = np.random.default_rng(4)
    w = Param("width", "log2", 32, 512).sample(rng, N_SAMPLES)
    assert w.dtype.kind == "i" and w.min() == 32 and w.max() == 512
    s = shares(w, [32, 64, 128, 256, 512.5])
    assert np.all(np.abs(s - 0.25) < 0.02), s   # each octave about a quarter
    b = Param("batch_size", "pow2", 32, 256).sample(rng, N_SAMPLES)
    assert set(np.unique(b)) == {32, 64, 128, 256}
    assert np.all(np.abs(np.bincount(np.log2(b).astype(int))[5:] / N_SAMPLES - 0.25) < 0.012)
    d = Param("depth", "int", 1, 3).sample(rng, N_SAMPLES)
    assert np.all(np.abs(np.bincount(d)[1:] / N_SAMPLES - 1 / 3) < 0.012)
    p = Param("dropout", "linear", 0.0, 0.5).sample(rng, N_SAMPLES)
    assert abs(float(np.mean(p < 0.25)) - 0.5) < 0.012
    one = Param("width", "log2", 32, 512).sample(rng)
    assert isinstance(one, int)


#: one hyperparameter per scale of the table, with bounds in its domain
SCALE_CASES = {"log": ("lr", 1e-5, 1e-1), "log1m": ("beta1", 0.9, 0.999),
               "linear": ("dropout", 0.0, 0.5), "log2": ("width", 3, 700),
               "int": ("depth", 1, 6), "pow2": ("batch_size", 8, 512)}


def test_the_scale_table_covers_every_scale():
    assert set(SCALE_CASES) == set(SCALE_TABLE) and SCALES == (*SCALE_TABLE, "choice")
    assert set(DEFAULT_SCALES.values()) <= set(SCALE_TABLE)
    assert [n for n, s in SCALE_TABLE.items() if s.integer] == ["log2", "int", "pow2"]


@pytest.mark.parametrize("scale", list(SCALE_CASES))
def test_each_scale_round_trips_sample_value_formatted(scale):
    name, lo, hi = SCALE_CASES[scale]
    p = Param.make(name, {"low": lo, "high": hi, "scale": scale})
    sc = SCALE_TABLE[scale]
    v = p.sample(np.random.default_rng(11), 2000)
    assert v.min() >= lo and v.max() <= hi
    # value -> sampling scale -> value
    u = p.to_u(v)
    ua, ub = p.u_bounds()
    assert u.min() >= ua - 1e-12 and u.max() <= ub + 1e-12
    np.testing.assert_allclose(sc.from_u(u), v, rtol=1e-12, atol=1e-15)
    one = p.sample(np.random.default_rng(12))
    assert type(one) is (int if sc.integer else float)
    if sc.integer:
        assert v.dtype.kind == "i"
        text = fmt_value(one)
        assert text == str(one) and int(text) == one
    else:
        # 4 significant digits (3 below 1e-3): parses back within half a unit of the last
        for x in v[:200]:
            tol = 5e-4 if abs(x) >= 1e-3 or x == 0 else 5e-3
            assert abs(float(fmt_value(float(x))) - x) <= tol * abs(x), x
    # the bounds as shown, and as stored (to_dict -> make gives the same Param)
    low, high = p.describe().split(" ")[0].split("..")
    assert p.describe().endswith(f"({scale})")
    assert math.isclose(float(low), lo, rel_tol=5e-3) and math.isclose(float(high), hi,
                                                                       rel_tol=5e-3)
    assert Param.make(name, p.to_dict()) == p
    # a shrunk range stays on the scale's grid and passes its checks
    s = p.shrink(list(v[:3]))
    assert lo <= s.low <= s.high <= hi
    assert Param.make(name, s.to_dict()) == s


def test_worker_liveness_and_stale_trials():
    from datetime import datetime
    from types import SimpleNamespace

    from gpunet.tune.study import Worker

    me = Worker()
    ident = me.identity
    assert Worker.process_alive(ident["pid"], ident["start"])
    assert Worker.process_start(ident["pid"]) == ident["start"] is not None
    assert not Worker.process_alive(ident["pid"], "not-my-start")   # a reused pid
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not Worker.process_alive(child.pid, None)

    now = time.time()

    def trial(worker: dict | None, beat: float | None) -> SimpleNamespace:
        attrs = {"gpunet_worker": worker, "gpunet_heartbeat": beat}
        return SimpleNamespace(user_attrs={k: v for k, v in attrs.items() if v is not None},
                               datetime_start=datetime.fromtimestamp(now - 5))

    gone = {**ident, "pid": child.pid}
    assert not me.is_stale(trial(ident, now - 10), now, 60)       # alive, recent beat
    assert me.is_stale(trial(ident, now - 61), now, 60)           # heartbeat too old
    assert me.is_stale(trial(gone, now), now, 60)                 # process gone, same host
    assert not me.is_stale(trial({**gone, "host": "elsewhere"}, now), now, 60)
    assert not me.is_stale(trial(None, None), now, 60)            # start time as heartbeat
    assert me.is_stale(trial(None, None), now, 4)


def test_default_space_follows_the_course():
    sp = default_space("adam")
    assert list(sp.params) == ["lr", "batch_size", "width", "depth", "lr_decay_rate"]
    assert sp.params["lr"].scale == "log" and sp.params["batch_size"].scale == "pow2"
    assert sp.params["width"].scale == "log2" and sp.params["depth"].scale == "int"
    # Adam's betas stay put; the momentum optimizer's beta is second in importance
    m = default_space("momentum")
    assert list(m.params)[:2] == ["lr", "beta1"]
    assert m.params["beta1"].scale == "log1m" and (m.params["beta1"].low,
                                                   m.params["beta1"].high) == (0.9, 0.999)


def test_space_file_forms(tmp_path):
    sp = SearchSpace.load(write_space(tmp_path / "s.toml", """
lr = [1e-4, 1e-1]
beta2 = {low = 0.99, high = 0.9999}
dropout = {low = 0.0, high = 0.5}
optimizer = ["adam", "rmsprop"]
[fixed]
weight_decay = 1e-4
"""))
    assert sp.params["lr"].scale == "log" and sp.params["beta2"].scale == "log1m"
    assert sp.params["dropout"].scale == "linear"
    assert sp.params["optimizer"].values == ("adam", "rmsprop")
    assert sp.fixed == {"weight_decay": 1e-4}
    from gpunet.config import TrainConfig

    cfg = sp.config_for(TrainConfig(), {"lr": 0.01, "beta2": 0.995, "dropout": 0.1,
                                        "optimizer": "rmsprop"})
    assert (cfg.lr, cfg.beta2, cfg.dropout, cfg.optimizer, cfg.weight_decay) == (
        0.01, 0.995, 0.1, "rmsprop", 1e-4)


@pytest.mark.parametrize("entry, message", [
    ("lr = {low = 0.0, high = 0.1}", "log scale needs low > 0"),
    ("weight_decay = {low = -1e-3, high = 1e-2}", "log scale needs low > 0"),
    ("lr = {low = 0.1, high = 0.001}", "low 0.1 is above high 0.001"),
    ("beta1 = {low = 0.9, high = 1.0}", "a beta in (0, 1)"),
    ("beta1 = {low = 0.0, high = 0.99}", "a beta in (0, 1)"),
    ("beta2 = {low = 0.5, high = 1.5, scale = \"linear\"}", "beta must stay in [0, 1)"),
    ("batch_size = {low = 48, high = 256}", "powers of two"),
    ("width = {low = 0, high = 64}", "needs low > 0"),
    ("width = {low = 8.5, high = 64}", "must be integers"),
    ("depth = {low = 3, high = 1}", "above high"),
    ("dropout = {low = 0.0, high = 1.0}", "dropout must stay in [0, 1)"),
    ("lr = {low = 1e-4, high = 1e-1, scale = \"cubic\"}", "unknown scale"),
    ("lr = {low = 1e-4}", "needs both low and high"),
    ("lr = {low = 1e-4, high = \"big\"}", "must be a number"),
    ("seed = [0, 9]", "not a tunable hyperparameter"),
    ("lr = {low = 1e-4, high = 1e-1, step = 2}", "unknown keys"),
])
def test_bad_bounds_are_rejected(tmp_path, entry, message):
    path = write_space(tmp_path / "s.toml", entry + "\n")
    with pytest.raises(ConfigError, match=None) as e:
        SearchSpace.load(path)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_space_on_the_command_line_is_one_line(tmp_path, blobs):
    space = write_space(tmp_path / "s.toml", "lr = {low = 0.0, high = 0.1}\n")
    r = runner.invoke(app, ["tune", str(blobs), "--trials", "2", "--space", str(space),
                            "--out", str(tmp_path / "o")])
    assert r.exit_code == 2
    assert r.output.strip().startswith("error: space file") and "low > 0" in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    assert runner.invoke(app, ["tune", str(blobs), "--trials", "2", "--rounds", "3",
                               "--out", str(tmp_path / "o")]).exit_code == 2


# ====================================================================== coarse to fine
def test_shrink_in_the_sampling_scale():
    lr = Param("lr", "log", 1e-4, 1e-1)
    s = lr.shrink([1e-3, 1e-2])
    # span 1 decade, margin max(0.25 * 1, 0.1 * 3) = 0.3 decade each side
    assert math.isclose(math.log10(s.low), -3.3) and math.isclose(math.log10(s.high), -1.7)
    edge = lr.shrink([2e-4, 1.5e-4])   # never beyond the previous range
    assert edge.low == 1e-4 and edge.high < 1e-3
    b = Param("beta1", "log1m", 0.9, 0.999).shrink([0.99, 0.995])
    # in 1 - beta: 1e-2..5e-3, margin 0.2 decade
    assert math.isclose(math.log10(1 - b.high), math.log10(0.005) - 0.2)
    assert math.isclose(math.log10(1 - b.low), -2 + 0.2)
    w = Param("width", "log2", 32, 512).shrink([100, 128])
    assert w.low == math.floor(2 ** (math.log2(100) - 0.4)) and w.high == 169
    assert Param("batch_size", "pow2", 16, 256).shrink([64, 64]) == \
        Param("batch_size", "pow2", 32, 128)
    assert Param("depth", "int", 1, 5).shrink([2, 3]) == Param("depth", "int", 1, 4)
    c = Param("optimizer", "choice", values=("adam", "sgd"))
    assert c.shrink(["adam"]) == c


def test_round_sizes():
    assert round_sizes(30, 2) == [15, 15] and round_sizes(7, 3) == [3, 2, 2]
    assert [round_of(i, 7, 3) for i in range(7)] == [0, 0, 0, 1, 1, 2, 2]


def test_rounds_shrink_and_say_so(tmp_path, blobs):
    events: list[tuple[str, dict]] = []
    res = tune(str(blobs), 8, rounds=2, epochs=2, space=SearchSpace.from_dict(TINY_SPACE),
               config=TINY_BASE, out=tmp_path / "o", device="cpu", seed=1,
               callback=lambda e, i: events.append((e, i)))
    assert res.count("COMPLETE") == 8
    said = [i for e, i in events if e == "round"]
    assert len(said) == 1 and "best 2 of 3 round-1 trials" in said[0]["note"]
    assert said[0]["changes"][0][0] == "lr"
    r2 = SearchSpace.from_json(res.spaces[1])
    r1 = SearchSpace.from_json(res.spaces[0])
    assert r2.params["lr"].u_bounds()[1] - r2.params["lr"].u_bounds()[0] < \
        r1.params["lr"].u_bounds()[1] - r1.params["lr"].u_bounds()[0]
    second = [r for r in res.rows if r.round == 1]
    assert len(second) == 4
    for r in second:
        for name, p in r2.params.items():
            assert p.contains(r.values[name]), (name, r.values[name], p)
    assert sum(r.baseline for r in res.rows) == 1


def test_more_rounds_on_resume_make_the_missing_spaces_in_order(tmp_path, blobs):
    kw = dict(epochs=1, space=SearchSpace.from_dict(TINY_SPACE), config=TINY_BASE,
              out=tmp_path / "o", device="cpu", seed=6)
    first = tune(str(blobs), 6, **kw)
    assert [s["round"] for s in first.spaces] == [1]
    events: list[tuple[str, dict]] = []
    res = tune(str(blobs), 9, rounds=3, callback=lambda e, i: events.append((e, i)), **kw)
    # trial 6 is the first of round 3: round 2's space is made first (from round 1's five
    # sampled trials), then round 3's (no trial ran in round 2: range kept)
    said = [i for e, i in events if e == "round"]
    assert [i["round"] for i in said] == [2, 3]
    assert "best 2 of 5 round-1 trials" in said[0]["note"]
    assert said[1]["note"] == "only 0 finished trial(s) in round 2: range kept"
    r1, r2, r3 = (SearchSpace.from_json(s) for s in res.spaces)
    assert r2.params["lr"] != r1.params["lr"] and r3.to_dict() == r2.to_dict()
    assert [r.round for r in res.rows] == [0] * 6 + [2] * 3
    assert all(r3.params["lr"].contains(r.values["lr"]) for r in res.rows[6:])


# ====================================================================== outputs
@pytest.fixture(scope="module")
def small_study(tmp_path_factory, blobs):
    out = tmp_path_factory.mktemp("study")
    r = runner.invoke(app, ["tune", str(blobs), "--trials", "4", "--epochs", "3",
                            "--device", "cpu", "--out", str(out), "--plot",
                            str(out / "plot.png"), "--json",
                            "--space", str(write_space(out / "s.toml", TINY_SPACE_TOML))])
    assert r.exit_code == 0, r.output
    return out, json.loads(r.stdout)


def test_json_is_one_object(small_study):
    _, s = small_study
    assert s["complete"] == 4 and s["failed"] == 0 and s["trials"] == 4
    assert s["best"]["value"] == max(t["value"] for t in s["top"])
    assert s["baseline"]["baseline"] is True and s["baseline"]["number"] == 0


def test_best_config_round_trips_through_train(small_study, tmp_path):
    out, s = small_study
    toml = Path(s["best_config"])
    assert toml == out / "best.toml"
    r = runner.invoke(app, ["train", "--config", str(toml), "--out", str(tmp_path / "run"),
                            "--json", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    t = json.loads(r.stdout)
    # same data, split, seed and settings on the same device: the same validation accuracy
    assert t["best_value"] == s["best"]["value"] and t["epochs"] == 3
    from gpunet.config import load_toml

    cfg = load_toml(toml)
    for name, v in s["best"]["values"].items():
        if name == "width":
            assert cfg["hidden"] == [v, v]   # the default depth, 2
        elif v is not None:
            assert cfg[name] == v


def test_plot_is_written(small_study):
    out, s = small_study
    png = Path(s["plot"])
    assert png == out / "plot.png"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_table_and_rerun_adds_nothing(small_study, blobs):
    out, _ = small_study
    r = runner.invoke(app, ["tune", str(blobs), "--trials", "4", "--epochs", "3",
                            "--device", "cpu", "--out", str(out), "--space",
                            str(out / "s.toml")])
    assert r.exit_code == 0, r.output
    assert "best trials of study 'blobs'" in r.output and "val acc" in r.output
    assert "trial " not in r.output.split("best trials")[0]   # nothing was trained
    # joining with other settings is refused
    r = runner.invoke(app, ["tune", str(blobs), "--trials", "5", "--epochs", "4",
                            "--device", "cpu", "--out", str(out), "--space",
                            str(out / "s.toml")])
    assert r.exit_code == 2 and "different epochs" in r.output


# ====================================================================== failures
def test_a_diverging_trial_fails_alone(tmp_path, blobs):
    space = SearchSpace.from_dict({"lr": {"values": [0.05, 1e30]},
                                   "fixed": {"optimizer": "sgd", "batchnorm": False}})
    res = tune(str(blobs), 4, epochs=2, space=space, config=TINY_BASE, out=tmp_path / "o",
               device="cpu", seed=3, baseline=False)
    failed = [r for r in res.rows if r.state == "FAIL"]
    assert failed and all("diverged" in r.error and r.values["lr"] == 1e30 for r in failed)
    done = [r for r in res.rows if r.state == "COMPLETE"]
    assert len(done) == 4 and all(r.values["lr"] == 0.05 for r in done)


def test_median_pruner_stops_hopeless_trials(tmp_path, blobs):
    space = SearchSpace.from_dict({"lr": {"values": [0.05, 1e-7]}})
    res = tune(str(blobs), 10, epochs=6, space=space, config=TINY_BASE, out=tmp_path / "o",
               device="cpu", seed=0, pruner="median", baseline=False, pack=1)
    pruned = [r for r in res.rows if r.state == "PRUNED"]
    assert pruned and all(r.values["lr"] == 1e-7 for r in pruned)
    # --trials counts finished trials: COMPLETE plus PRUNED
    assert res.count("COMPLETE") + len(pruned) == 10 and res.count("FAIL") == 0
    assert all(r.values["lr"] == 0.05 for r in res.finished[:1])


def _worker(blobs: Path, out: Path, trials: int, epochs: int, space: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "gpunet.cli", "tune", str(blobs), "--trials", str(trials),
           "--epochs", str(epochs), "--device", "cpu", "--out", str(out), "--study", "shared",
           "--space", str(space), "--json", "--no-baseline", "--pack", "1"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def slow_data(tmp_path_factory) -> Path:
    return make_blobs(tmp_path_factory.mktemp("slow") / "slow.h5", n=2500, d=16)


@pytest.fixture(scope="module")
def fixed_space(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("space") / "space.toml"
    return write_space(p, 'lr = [1e-3, 1e-2]\nbatch_size = {values = [32]}\n'
                          'width = {values = [16]}\ndepth = {values = [1]}\n')


def test_two_workers_share_one_study(tmp_path, slow_data, fixed_space):
    out = tmp_path / "o"
    ws = [_worker(slow_data, out, 10, 4, fixed_space) for _ in range(2)]
    res = [w.communicate(timeout=120) for w in ws]
    for w, (_, e) in zip(ws, res, strict=True):
        assert w.returncode == 0, e
    summaries = [json.loads(o) for o, _ in res]
    study = load_study(out / "study.journal", "shared")
    assert states(study) == {"COMPLETE": 10}
    assert sum(s["ran_here"] for s in summaries) == 10
    pids = {t.user_attrs["gpunet_worker"]["pid"] for t in study.get_trials()}
    assert pids == {w.pid for w in ws}, "both workers ran trials"
    assert len({t.number for t in study.get_trials()}) == 10


@pytest.mark.slow
def test_a_killed_worker_leaves_the_study_usable(tmp_path, slow_data, fixed_space):
    out = tmp_path / "o"
    a = _worker(slow_data, out, 4, 40, fixed_space)
    b = _worker(slow_data, out, 4, 40, fixed_space)
    deadline = time.monotonic() + 60
    victim = None
    while victim is None and time.monotonic() < deadline:
        time.sleep(0.1)
        if not (out / "study.journal").exists():
            continue
        try:
            study = load_study(out / "study.journal", "shared")
        except KeyError:
            continue
        for t in study.get_trials(deepcopy=False):
            w = t.user_attrs.get("gpunet_worker") or {}
            if t.state.name == "RUNNING" and w.get("pid") == a.pid:
                victim = t.number
    assert victim is not None, "worker A never ran a trial"
    a.send_signal(signal.SIGKILL)
    a.wait()
    o, e = b.communicate(timeout=120)
    assert b.returncode == 0, e          # the other worker went on and completed the total
    study = load_study(out / "study.journal", "shared")
    assert states(study).get("COMPLETE") == 4
    assert study.trials[victim].state.name == "FAIL"
    # a rerun with a larger total completes it; nothing is left RUNNING
    res = tune(str(slow_data), 5, epochs=40, space=fixed_space, out=out, study="shared",
               device="cpu", baseline=False)
    assert res.count("COMPLETE") == 5 and res.count("RUNNING") == 0
    assert not any((out / "trials").iterdir())


# ====================================================================== the journal lock
def test_a_lock_left_by_a_killed_writer_never_blocks_the_next_tune(tmp_path, blobs,
                                                                   monkeypatch):
    """A lock a killed writer left (here dangling: its folder was moved) is removed after
    ``LOCK_GRACE`` seconds unchanged, and at once when it is older than ``OLD_LOCK``."""
    from gpunet.tune import storage

    out = tmp_path / "o"
    sp = write_space(tmp_path / "s.toml", TINY_SPACE_TOML)
    args = ["tune", str(blobs), "--epochs", "1", "--device", "cpu", "--out", str(out),
            "--space", str(sp), "--no-baseline", "--quiet", "--pack", "1"]
    assert runner.invoke(app, [*args, "--trials", "1"]).exit_code == 0
    lock = out / "study.journal.lock"
    os.symlink(tmp_path / "moved" / "study.journal", lock)   # dangles
    monkeypatch.setattr(storage, "LOCK_GRACE", 1.0)
    t0 = time.monotonic()
    r = runner.invoke(app, [*args, "--trials", "2"])
    assert r.exit_code == 0, r.output
    assert 1.0 <= time.monotonic() - t0 < 20
    assert "removed a lock left by a process killed while writing" in r.output
    assert not lock.is_symlink()
    # an old lock goes at once, whatever the grace
    os.symlink(out / "study.journal", lock)
    os.utime(lock, (time.time() - 7200,) * 2, follow_symlinks=False)
    monkeypatch.setattr(storage, "LOCK_GRACE", 1000.0)
    t0 = time.monotonic()
    r = runner.invoke(app, [*args, "--trials", "3"])
    assert r.exit_code == 0 and time.monotonic() - t0 < 30, r.output
    assert not lock.is_symlink()
    assert states(load_study(out / "study.journal", "blobs")) == {"COMPLETE": 3}


def test_a_lock_taken_anew_is_never_broken(tmp_path):
    from gpunet.tune.lock import JournalLock, break_lock, lock_identity

    journal = tmp_path / "j"
    journal.write_text("")
    a = JournalLock(journal, grace=60)
    assert a.acquire()
    seen = lock_identity(a.path)
    a.release()
    time.sleep(0.01)
    assert a.acquire()            # a live writer's new lock: not the one seen
    assert not break_lock(a.path, seen)
    assert lock_identity(a.path) is not None and lock_identity(a.path) != seen
    a.release()
    assert lock_identity(a.path) is None and list(tmp_path.iterdir()) == [journal]
    with pytest.raises(RuntimeError, match="was not held"):
        a.release()


# ====================================================================== babysitting
def test_resume_path_with_a_new_lr_is_recorded(tmp_path, blobs):
    out = tmp_path / "run"
    args = ["--device", "cpu", "--hidden", "8", "--epochs", "2", "--quiet"]
    assert runner.invoke(app, ["train", str(blobs), "--out", str(out), *args]).exit_code == 0
    r = runner.invoke(app, ["train", "--resume", str(out / "last.h5"), "--lr", "3e-4",
                            "--epochs", "3", "--json", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["changed"]["lr"] == [0.002, 0.0003]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    ev = [x for x in lines if x.get("event") == "resume"]
    assert ev[0]["changed"]["lr"] == [0.002, 0.0003] and ev[0]["epoch"] == 2
    assert [x["epoch"] for x in lines if "event" not in x] == [1, 2, 3]
