"""``gpunet.sklearn.MLPClassifier``: scikit-learn's own estimator checks, and the estimator
inside Pipeline, cross_val_score, GridSearchCV and RandomizedSearchCV (loguniform, n_jobs=2);
a worker-process fit equals a main-process fit; partial_fit, pickling and save / load
continue or reproduce training exactly; string labels, DataFrames, class weights and early
stopping."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from functools import partial

import numpy as np
import pandas as pd
import pytest
from gpunet.cli import app
from joblib import Parallel, delayed
from scipy.stats import loguniform
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.model_selection import (
    GridSearchCV,
    RandomizedSearchCV,
    StratifiedKFold,
    cross_val_score,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from typer.testing import CliRunner

from gpunet.sklearn import EXPECTED_FAILED_CHECKS, MLPClassifier, expected_failed_checks

#: small, fast instances for scikit-learn's checks, covering batch norm + ReLU + Adam,
#: softmax regression with momentum, and sigmoid + dropout + RMSprop + early stopping
CHECKED = [
    MLPClassifier(hidden=(16,), epochs=10, batch_size=32, lr=1e-2),
    MLPClassifier(hidden=(), batchnorm=False, optimizer="momentum", lr=0.5,
                  lr_schedule="none", epochs=10, batch_size=32),
    MLPClassifier(hidden=(16, 16), activation="sigmoid", dropout=0.1, optimizer="rmsprop",
                  lr=1e-2, early_stopping=True, patience=5, epochs=10, batch_size=32),
]
SMALL = {"hidden": (32,), "epochs": 6, "batch_size": 32, "lr": 1e-2, "random_state": 0}


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:900], y[:900]


def _unwrap(check):
    """(function, keyword arguments) of a check that may be nested ``partial``s."""
    kw = {}
    while isinstance(check, partial):
        kw = {**check.keywords, **kw}
        check = check.func
    return check, kw


@parametrize_with_checks(CHECKED, expected_failed_checks=expected_failed_checks,
                         xfail_strict=True)
def test_sklearn_estimator_checks(estimator, check):
    fn, kw = _unwrap(check)
    if fn.__name__ == "check_array_api_input" and os.environ.get("SCIPY_ARRAY_API") != "1":
        # scikit-learn runs this one only with SciPy's array API switched on, which SciPy reads
        # once at import: run it in a fresh interpreter that has it on
        code = ("from numpy import nan, inf\n"
                "from sklearn.utils.estimator_checks import check_array_api_input\n"
                "from gpunet.sklearn import MLPClassifier\n"
                f"est = {estimator!r}\n"
                f"check_array_api_input('MLPClassifier', est, **{kw!r})\n"
                "print('ok')\n")
        env = {**os.environ, "SCIPY_ARRAY_API": "1"}
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]
        return
    check(estimator)


def test_expected_failures_are_declared_with_reasons():
    assert expected_failed_checks(CHECKED[0]) == EXPECTED_FAILED_CHECKS
    assert all(isinstance(v, str) and v for v in EXPECTED_FAILED_CHECKS.values())


def test_pipeline_cross_val_score_and_grid_search(digits):
    X, y = digits
    pipe = make_pipeline(StandardScaler(), MLPClassifier(**SMALL))
    pipe.fit(X[:600], y[:600])
    assert pipe.score(X[600:], y[600:]) > 0.85
    scores = cross_val_score(MLPClassifier(**SMALL), X, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.8
    grid = GridSearchCV(make_pipeline(StandardScaler(), MLPClassifier(**SMALL)),
                        {"mlpclassifier__hidden": [(8,), (32,)],
                         "mlpclassifier__lr": [1e-4, 1e-2]}, cv=2)
    grid.fit(X, y)
    assert len(grid.cv_results_["params"]) == 4
    # a 100x larger learning rate and 4x wider layer win this short training
    assert grid.best_params_ == {"mlpclassifier__hidden": (32,), "mlpclassifier__lr": 1e-2}
    assert grid.best_estimator_[-1].model_.config["hidden"] == [32]


def test_randomized_search_loguniform_two_workers(digits):
    X, y = digits
    space = {"lr": loguniform(1e-4, 1e-1), "momentum_gap": loguniform(1e-3, 0.3)}
    cv = StratifiedKFold(2, shuffle=True, random_state=0)
    kw = {"param_distributions": space, "n_iter": 4, "cv": cv, "random_state": 0}
    est = MLPClassifier(**SMALL)
    par = RandomizedSearchCV(est, n_jobs=2, **kw).fit(X, y)
    seq = RandomizedSearchCV(est, n_jobs=1, **kw).fit(X, y)
    lrs = np.array(par.cv_results_["param_lr"], dtype=float)
    gaps = np.array(par.cv_results_["param_momentum_gap"], dtype=float)
    assert np.all((1e-4 <= lrs) & (lrs <= 1e-1)) and np.all((1e-3 <= gaps) & (gaps <= 0.3))
    # the same sampled settings, and worker scores equal to main-process scores
    assert np.array_equal(lrs, np.array(seq.cv_results_["param_lr"], dtype=float))
    np.testing.assert_array_equal(par.cv_results_["mean_test_score"],
                                  seq.cv_results_["mean_test_score"])
    best = par.best_estimator_
    assert best.optimizer_.beta1 == pytest.approx(1 - best.momentum_gap)
    assert best.optimizer_.lr0 == pytest.approx(best.lr)


def _fit(est, X, y):
    return est.fit(X, y)


def test_worker_process_fit_equals_main_process_fit(digits):
    X, y = digits
    est = MLPClassifier(hidden=(32, 16), dropout=0.1, epochs=3, random_state=7)
    main = clone(est).fit(X, y)
    workers = Parallel(n_jobs=2)(delayed(_fit)(clone(est), X, y) for _ in range(2))
    for w in workers:
        np.testing.assert_array_equal(w.predict_proba(X), main.predict_proba(X))
        np.testing.assert_array_equal(w.predict(X), main.predict(X))
        assert w.loss_curve_ == main.loss_curve_


def test_string_labels_dataframe_and_probabilities(digits):
    X, y = digits
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven",
                      "eight", "nine"])
    cols = [f"px{i}" for i in range(X.shape[1])]
    df = pd.DataFrame(X, columns=cols)
    clf = MLPClassifier(**SMALL).fit(df, names[y])
    assert list(clf.classes_) == sorted(names)
    assert list(clf.feature_names_in_) == cols and clf.n_features_in_ == 64
    pred = clf.predict(df)
    assert pred.dtype == clf.classes_.dtype and set(pred) <= set(names)
    assert clf.score(df, names[y]) == np.mean(pred == names[y]) > 0.9
    P = clf.predict_proba(df)
    np.testing.assert_allclose(P.sum(axis=1), 1, atol=1e-12)
    np.testing.assert_allclose(np.log(P), clf.predict_log_proba(df), rtol=1e-12)
    assert np.array_equal(clf.classes_[P.argmax(1)], pred)
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        clf.predict(X)
    with pytest.raises(ValueError, match="feature names should match"):
        clf.predict(df.rename(columns={"px0": "other"}))


def test_partial_fit_epochs_equal_fit(digits):
    X, y = digits
    full = MLPClassifier(**SMALL).fit(X, y)
    inc = MLPClassifier(**SMALL)
    with pytest.raises(ValueError, match="classes must be passed"):
        inc.partial_fit(X, y)
    for i in range(SMALL["epochs"]):
        inc.partial_fit(X, y, classes=np.unique(y) if i == 0 else None)
        assert inc.n_iter_ == i + 1
    np.testing.assert_array_equal(inc.predict_proba(X), full.predict_proba(X))
    assert inc.loss_curve_ == full.loss_curve_
    with pytest.raises(ValueError, match="not in classes_"):
        inc.partial_fit(X[:10], np.full(10, 42))


def test_pickle_and_save_load_continue_exactly(digits, tmp_path):
    X, y = digits
    a = MLPClassifier(**SMALL)
    a.partial_fit(X, y, classes=np.unique(y))
    b = pickle.loads(pickle.dumps(a))
    a.save(tmp_path / "est.h5")
    c = MLPClassifier.load(tmp_path / "est.h5")
    assert c.get_params() == a.get_params()
    for est in (a, b, c):  # optimizer moments, step count and shuffle state travel along
        est.partial_fit(X, y)
    np.testing.assert_array_equal(b.predict_proba(X), a.predict_proba(X))
    np.testing.assert_array_equal(c.predict_proba(X), a.predict_proba(X))


def test_saved_estimator_is_a_gpunet_checkpoint(digits, tmp_path):
    X, y = digits
    clf = MLPClassifier(**SMALL).fit(X, np.array(list("abcdefghij"))[y])
    clf.save(tmp_path / "est.h5")
    import h5py

    with h5py.File(tmp_path / "data.h5", "w") as f:
        f["X"] = X.astype(np.float32)
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "est.h5"), "--data",
                                 str(tmp_path / "data.h5"), "--out", str(tmp_path / "p.npy"),
                                 "--proba", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), clf.predict_proba(X), atol=1e-6)


def test_export_a_fitted_estimator(digits, tmp_path):
    import json

    import onnxruntime as ort

    from gpunet.export import to_onnx, to_safetensors

    X, y = digits
    labels = np.array(list("abcdefghij"))[y]
    clf = MLPClassifier(**{**SMALL, "hidden": (16, 8)}).fit(X, labels)
    model = to_onnx(clf)
    assert json.loads({p.key: p.value for p in model.metadata_props}["classes"]) == \
        list("abcdefghij")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(["probabilities"], {"input": X.astype(np.float32)})[0]
    assert np.abs(got - clf.predict_proba(X)).max() <= 1e-5
    assert to_safetensors(clf, tmp_path / "m.safetensors").stat().st_size > 0


def test_load_a_cli_checkpoint(tmp_path):
    from gpunet.data import load_split
    from gpunet.train import fit, load_for_inference, predict

    res = fit({"data": "digits", "hidden": [16], "epochs": 2, "device": "cpu",
               "out": str(tmp_path / "run")})
    clf = MLPClassifier.load(res.best_path)
    assert list(clf.classes_) == [str(i) for i in range(10)]
    assert clf.hidden == (16,) and clf.epochs == 2
    Xt = load_split("digits", "test").X
    _, model, std = load_for_inference(res.best_path)
    np.testing.assert_allclose(clf.predict_proba(Xt), predict(model, Xt, std, proba=True),
                               atol=1e-6)


def test_class_weight_and_early_stopping(digits):
    X, y = digits
    skew = MLPClassifier(**{**SMALL, "class_weight": {0: 50.0}}).fit(X, y)
    plain = MLPClassifier(**SMALL).fit(X, y)
    assert (skew.predict(X) == 0).sum() > (plain.predict(X) == 0).sum()
    with pytest.raises(ValueError, match="not in the data's classes"):
        MLPClassifier(**{**SMALL, "class_weight": {11: 2.0}}).fit(X, y)
    es = MLPClassifier(**{**SMALL, "epochs": 40, "lr_schedule": "none", "lr": 3e-2,
                          "early_stopping": True, "patience": 2}).fit(X, y)
    v = es.validation_scores_
    assert es.n_iter_ == len(v) < 40  # stopped early
    best = max(v)
    assert es.best_epoch_ == max(i + 1 for i, s in enumerate(v) if s == best)  # ties: later
    improved = max(i + 1 for i, s in enumerate(v) if i == 0 or s > max(v[:i]))
    assert es.n_iter_ - improved == 2  # patience: epochs since the last strict improvement


@pytest.mark.parametrize("params,msg", [
    ({"activation": "swish"}, "unknown activation"),
    ({"optimizer": "lbfgs"}, "unknown optimizer"),
    ({"beta1": 0.9, "momentum_gap": 0.1}, "not both"),
    ({"momentum_gap": 1.5}, "momentum_gap must be in"),
    ({"early_stopping": True, "validation_fraction": 1.0}, "validation_fraction"),
    ({"class_weight": "skewed"}, "class_weight must be"),
    ({"batch_size": 0}, "batch-size must be >= 1"),
])
def test_bad_parameters_raise_value_error_at_fit(digits, params, msg):
    X, y = digits
    clf = MLPClassifier(**{**SMALL, **params})  # __init__ stores, never checks
    with pytest.raises(ValueError, match=msg):
        clf.fit(X[:50], y[:50])


def test_missing_sklearn_names_the_extra(monkeypatch):
    import importlib

    monkeypatch.delitem(sys.modules, "gpunet.sklearn")
    monkeypatch.setitem(sys.modules, "sklearn.base", None)
    with pytest.raises(ImportError, match=r"pip install 'gpunet\[sklearn\]'"):
        importlib.import_module("gpunet.sklearn")
