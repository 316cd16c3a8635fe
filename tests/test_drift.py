"""The drift warning: ``eval`` / ``predict`` compare the data with the training statistics a
checkpoint stores, warn in one line when they clearly disagree, put the measure in ``--json``
and never change the numbers.

The measure (``gpunet.train.evaluation.data_drift``): ``mean_shift``, the median over features
of ``|mean_data - mean_train| / std_train``, and ``std_ratio``, the median over the features
that vary in the data of ``std_data / std_train``; drifted when the shift is above 3 or the
ratio outside [1/10, 10]. Digits trained on 0-255 and evaluated as 0-1 floats warn (ratio
1/255); a held-out split, the training split itself and a single class never do.
"""

from __future__ import annotations

import json
import warnings

import h5py
import numpy as np
import pytest
from gpunet.cli import app
from typer.testing import CliRunner

from gpunet import checkpoint as ckpt_mod
from gpunet.backend import get_backend
from gpunet.data import resolve_data_path
from gpunet.errors import DataDriftWarning
from gpunet.train import evaluate, load_for_inference, predict
from gpunet.train.evaluation import (
    DRIFT_MAX_SHIFT,
    DRIFT_MAX_STD_RATIO,
    _Moments,
    data_drift,
)

runner = CliRunner()
FAST = ["--device", "cpu", "--hidden", "32", "--epochs", "3", "--quiet"]


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def digits_scales(tmp_path_factory):
    """Digits as 0-255 and as 0-1 floats (same images), and a run trained on the 0-255 copy."""
    root = tmp_path_factory.mktemp("drift")
    paths = {"255": root / "d255.h5", "01": root / "d01.h5"}
    with h5py.File(resolve_data_path("digits")) as f:
        for name, scale in (("255", 255 / 16), ("01", 1 / 16)):
            with h5py.File(paths[name], "w") as g:
                for split in ("train", "test"):
                    g[f"{split}/X"] = f[f"{split}/X"][:].astype(np.float32) * np.float32(scale)
                    g[f"{split}/y"] = f[f"{split}/y"][:]
    r = invoke("train", paths["255"], "--out", root / "run", *FAST)
    assert r.exit_code == 0, r.output
    return paths, root / "run" / "best.h5"


def _warnings(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("warning: ")]


# ---------------------------------------------------------------------- the measure
def test_measure_reference_values():
    n = 100
    same = data_drift(n, np.zeros(8), np.ones(8))
    assert same == {"mean_shift": 0.0, "std_ratio": 1.0, "drifted": False, "n": n,
                    "max_shift": DRIFT_MAX_SHIFT, "max_std_ratio": DRIFT_MAX_STD_RATIO}
    scaled = data_drift(n, np.full(8, -0.9), np.full(8, 1 / 255))
    assert scaled["drifted"] and scaled["std_ratio"] == pytest.approx(1 / 255)
    shifted = data_drift(n, np.array([5.0, -5, 5, 0.1]), np.ones(4))
    assert shifted["mean_shift"] == pytest.approx(5.0) and shifted["drifted"]
    wide = data_drift(n, np.zeros(3), np.array([20.0, 30, 0.5]))
    assert wide["std_ratio"] == 20.0 and wide["drifted"]
    # features constant in the data are left out of the ratio; one row has no ratio
    sparse = data_drift(n, np.zeros(5), np.array([0, 0, 0, 1.0, 1.2]))
    assert sparse["std_ratio"] == 1.1 and not sparse["drifted"]
    assert data_drift(1, np.zeros(4), np.zeros(4))["std_ratio"] is None
    # the thresholds are inclusive on the "similar" side
    assert not data_drift(n, np.full(3, DRIFT_MAX_SHIFT), np.full(3, DRIFT_MAX_STD_RATIO))[
        "drifted"]
    assert not data_drift(n, np.zeros(3), np.full(3, 1 / DRIFT_MAX_STD_RATIO))["drifted"]


def test_streamed_moments_match_numpy(rng):
    be = get_backend("cpu")
    X = (rng.standard_normal((1003, 7)) * rng.uniform(0.1, 1e3, 7) + 1e4).astype(np.float32)
    m = _Moments()
    for a, b in ((0, 1), (1, 65), (65, 600), (600, 600), (600, 1003)):
        m.add(be, X[a:b])
    n, mean, std = m.host(be)
    X64 = X.astype(np.float64)
    assert n == 1003
    np.testing.assert_allclose(mean, X64.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, X64.std(axis=0), rtol=1e-9)


# ---------------------------------------------------------------------- the commands
def test_eval_on_another_scale_warns_once_and_keeps_the_numbers(digits_scales):
    paths, ck = digits_scales
    r = invoke("eval", ck, "--data", paths["01"], "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    warns = _warnings(r.stderr)
    assert len(warns) == 1 and "does not look like the training data" in warns[0], r.stderr
    assert r.stderr.splitlines() == warns
    res = json.loads(r.stdout)
    d = res["drift"]
    assert d["drifted"] and d["std_ratio"] == pytest.approx(1 / 255, rel=0.02)
    # the numbers are those of evaluate() itself
    _, model, std = load_for_inference(ck, "cpu")
    import gpunet.data as D

    ref = evaluate(model, D.load_split(paths["01"], "test"), std,
                   classes=ckpt_mod.load(ck).classes)
    assert res["accuracy"] == ref["accuracy"] and res["loss"] == ref["loss"]
    assert res["confusion_matrix"] == ref["confusion_matrix"]
    # plain output: the same single warning line, the report on stdout
    r = invoke("eval", ck, "--data", paths["01"], "--device", "cpu")
    assert r.exit_code == 0 and len(_warnings(r.stderr)) == 1
    assert r.stdout.splitlines()[1].startswith(f"accuracy {ref['accuracy']:.4f}")


def test_eval_on_held_out_and_training_data_never_warns(digits_scales):
    paths, ck = digits_scales
    for extra in ([], ["--data", paths["255"], "--split", "train"],
                  ["--data", paths["255"], "--split", "all"]):
        r = invoke("eval", ck, *extra, "--device", "cpu", "--json")
        assert r.exit_code == 0, r.output
        assert _warnings(r.stderr) == [], (extra, r.stderr)
        d = json.loads(r.stdout)["drift"]
        assert not d["drifted"] and d["mean_shift"] < 0.2 and 0.8 < d["std_ratio"] < 1.25


def test_predict_warns_and_writes_the_same_predictions(digits_scales, tmp_path):
    paths, ck = digits_scales
    r = invoke("predict", ck, "--data", paths["01"], "--out", tmp_path / "p.npy", "--device",
               "cpu", "--json")
    assert r.exit_code == 0, r.output
    assert len(_warnings(r.stderr)) == 1
    assert json.loads(r.stdout)["drift"]["drifted"]
    _, model, std = load_for_inference(ck, "cpu")
    import gpunet.data as D

    X, _ = D.load_split(paths["01"], "all", labels=False).arrays()
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), predict(model, X, std))
    r = invoke("predict", ck, "--data", paths["255"], "--split", "test", "--out",
               tmp_path / "q.npy", "--device", "cpu", "--json")
    assert r.exit_code == 0 and _warnings(r.stderr) == []
    assert json.loads(r.stdout)["drift"]["drifted"] is False


def test_one_class_of_the_training_distribution_does_not_warn(tmp_path):
    """A subset (one class of well-separated blobs) is narrower and off-centre, but not on
    another scale: no warning."""
    rng = np.random.default_rng(3)
    centers = rng.normal(0, 3, (3, 6))
    y = np.arange(600) % 3
    X = (centers[y] + rng.standard_normal((600, 6))).astype(np.float32)
    with h5py.File(tmp_path / "b.h5", "w") as f:
        f["train/X"], f["train/y"] = X[:450], y[:450]
        f["test/X"], f["test/y"] = X[450:], y[450:]
    for c in range(3):
        with h5py.File(tmp_path / f"c{c}.h5", "w") as f:
            f["X"], f["y"] = X[450:][y[450:] == c], y[450:][y[450:] == c]
    r = invoke("train", tmp_path / "b.h5", "--out", tmp_path / "run", *FAST)
    assert r.exit_code == 0, r.output
    for c in range(3):
        r = invoke("eval", tmp_path / "run" / "best.h5", "--data", tmp_path / f"c{c}.h5",
                   "--device", "cpu", "--json")
        assert r.exit_code == 0 and _warnings(r.stderr) == [], r.stderr
        d = json.loads(r.stdout)["drift"]
        assert d["mean_shift"] < DRIFT_MAX_SHIFT and d["std_ratio"] > 1 / DRIFT_MAX_STD_RATIO


def test_library_call_raises_a_drift_warning_class(digits_scales):
    from gpunet.train import evaluate_checkpoint

    paths, ck = digits_scales
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = evaluate_checkpoint(ck, str(paths["01"]), device="cpu")
    assert [w.category for w in caught] == [DataDriftWarning]
    assert res["drift"]["drifted"]
