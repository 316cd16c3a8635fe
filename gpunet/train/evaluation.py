"""Evaluation and prediction: a model (or a checkpoint) applied to data, batch norm in
inference mode.

Inputs are standardized with the training set's per-feature mean and std stored in the
checkpoint (``data.Standardizer``); batch norm uses its running statistics only, nothing is
updated and each row is independent of the others, so results do not depend on the batch
size (docs/architecture.md, "Conventions").
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .. import checkpoint as ckpt_mod
from ..backend import Backend, get_backend
from ..errors import CheckpointError, ConfigError, DataDriftWarning, DataError
from ..fileio import atomic_write
from ..model import MLP
from .feeds import fits_on_device

#: batch size used for validation and evaluation unless given
EVAL_BATCH_SIZE = 1024


# ---------------------------------------------------------------------- in memory
def _nll_rows(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row cross-entropy in float64 from float32 logits (row max subtracted)."""
    z = logits.astype(np.float64)
    m = z.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
    return lse - z[np.arange(z.shape[0]), y]


def _check_inputs(X: np.ndarray, d: int) -> np.ndarray:
    if X.shape[1] != d:
        raise DataError(f"the model expects {d} input features but the data has {X.shape[1]}")
    X = np.asarray(X, dtype=np.float32)
    if not np.isfinite(X).all():
        raise DataError("the input contains NaN or inf values")
    return X


def _input_batches(be: Backend, source: Any, standardizer: Any, batch_size: int, d: int,
                   observe: Observer | None = None) -> Iterable[tuple[Any, np.ndarray | None]]:
    """Each batch also goes to ``observe`` (``_Moments.add``) when given."""
    for xb, yb in _batches(be, source, standardizer, batch_size, d):
        if observe is not None:
            observe(be, xb)
        yield xb, yb


def _batches(be: Backend, source: Any, standardizer: Any, batch_size: int, d: int
             ) -> Iterable[tuple[Any, np.ndarray | None]]:
    """(standardized backend inputs, host labels or None) per batch, in order, from an
    ``ArraySource`` or a raw host array X (n, ...). On a device-memory backend, in-memory data
    that fits the device budget is standardized and copied once, and batches are device
    slices."""
    X, labels = None, None
    if isinstance(source, np.ndarray):
        X = source.reshape(source.shape[0], -1) if source.ndim != 2 else source
    else:
        if getattr(source, "n_features", d) != d:
            raise DataError(f"the model expects {d} input features but the data has "
                            f"{source.n_features}")
        if fits_on_device(be, source, d):
            X, labels = source.arrays()
            labels = labels if getattr(source, "has_labels", True) else None
    if X is None:
        for Xb, yb in source.batches(batch_size, shuffle=False):
            Xs = standardizer.apply(Xb) if standardizer is not None else Xb
            yield be.asarray(Xs), np.asarray(yb)
        return
    X = _check_inputs(X, d)
    Xs = standardizer.apply(X) if standardizer is not None else X
    if be.device_memory:
        Xs = be.asarray(Xs)  # one copy; batches are device slices
    for i in range(0, X.shape[0], batch_size):
        yield (be.asarray(Xs[i:i + batch_size]),
               None if labels is None else np.asarray(labels[i:i + batch_size]))


def _logits_batches(model: MLP, source: Any, standardizer: Any, batch_size: int,
                    observe: Observer | None = None) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """(host float32 logits, labels) per batch, inference mode."""
    be = model.backend
    d = int(model.config["in_features"])
    for xb, yb in _input_batches(be, source, standardizer, batch_size, d, observe):
        logits = be.to_host(model.forward(xb, training=False))
        yield np.array(logits, dtype=np.float32, copy=True), yb


def _per_class(cm: np.ndarray, names: list[str]) -> dict[str, dict[str, float | int]]:
    """Precision, recall, f1 and support per class from a confusion matrix (rows: true)."""
    out: dict[str, dict[str, float | int]] = {}
    for c in range(cm.shape[0]):
        tp = int(cm[c, c])
        support = int(cm[c].sum())
        predicted = int(cm[:, c].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[names[c] if c < len(names) else str(c)] = {
            "precision": precision, "recall": recall, "f1": f1, "support": support,
        }
    return out


def evaluate(
    model: MLP,
    source: Any,
    standardizer: Any = None,
    *,
    batch_size: int = EVAL_BATCH_SIZE,
    classes: list[str] | None = None,
) -> dict[str, Any]:
    """Accuracy, mean cross-entropy, ``n``, ``per_class`` (precision / recall / f1 / support
    by class name), ``confusion_matrix`` (rows: true class, columns: predicted) of ``model``
    on an ``ArraySource``, batch norm in inference mode.

    The loss is summed in float64 over per-sample values in sample order, so the result does
    not depend on ``batch_size``. Nothing in the model changes.
    """
    return _evaluate(model, source, standardizer, batch_size, classes)


def _evaluate(model: MLP, source: Any, standardizer: Any, batch_size: int,
              classes: list[str] | None, observe: Observer | None = None) -> dict[str, Any]:
    """``evaluate``; each standardized batch also goes to ``observe``."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    n_classes = int(model.config["classes"])
    names = [str(c) for c in (classes or [])] or [str(i) for i in range(n_classes)]
    preds, nlls, labels = [], [], []
    for logits, y in _logits_batches(model, source, standardizer, batch_size, observe):
        if y.size and (y.min() < 0 or y.max() >= n_classes):
            raise DataError(f"labels go from {int(y.min())} to {int(y.max())} but the model "
                            f"has {n_classes} classes (0..{n_classes - 1})")
        preds.append(logits.argmax(axis=1))
        nlls.append(_nll_rows(logits, y))
        labels.append(y.astype(np.int64))
    if not labels:
        raise DataError("nothing to evaluate: the split is empty")
    y_all = np.concatenate(labels)
    n = int(y_all.shape[0])
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_all, np.concatenate(preds)), 1)
    per_class = _per_class(cm, names)
    f1s = [v["f1"] for v in per_class.values() if v["support"]]
    return {
        "accuracy": float(np.trace(cm) / n),
        "loss": float(np.concatenate(nlls).sum() / n),
        "n": n,
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "classes": names,
    }


def predict(
    model: MLP,
    source: Any,
    standardizer: Any = None,
    *,
    batch_size: int = EVAL_BATCH_SIZE,
    proba: bool = False,
) -> np.ndarray:
    """Predicted class ids (n,) int64, or probabilities (n, classes) float32 with ``proba``,
    for an ``ArraySource`` or a host array X (n, ...) of raw (unstandardized) inputs."""
    return _predict(model, source, standardizer, batch_size, proba)


def _predict(model: MLP, source: Any, standardizer: Any, batch_size: int, proba: bool,
             observe: Observer | None = None) -> np.ndarray:
    """``predict``; each standardized batch also goes to ``observe``."""
    be = model.backend
    d = int(model.config["in_features"])
    out: list[np.ndarray] = []
    for xb, _ in _input_batches(be, source, standardizer, batch_size, d, observe):
        logits = model.forward(xb, training=False)
        if proba:
            out.append(np.array(be.to_host(be.softmax(logits)), dtype=np.float32))
        else:
            out.append(np.asarray(be.to_host(logits.argmax(axis=1)), dtype=np.int64))
    if not out:
        n_c = int(model.config["classes"])
        return np.zeros((0, n_c), np.float32) if proba else np.zeros((0,), np.int64)
    return np.concatenate(out)


# ---------------------------------------------------------------------- data drift
#: ``data_drift`` flags data whose median feature sits more than this many training stds
#: from the training mean ...
DRIFT_MAX_SHIFT = 3.0
#: ... or whose median feature's std is more than this factor away from the training std
DRIFT_MAX_STD_RATIO = 10.0

Observer = Callable[[Backend, Any], None]


class _Moments:
    """Per-feature count, mean and sum of squared deviations of standardized batches
    (``(X - mean_train) / std_train``), merged batch by batch in float64 (Chan, Golub and
    LeVeque's pairwise update) on the backend's array module."""

    def __init__(self) -> None:
        self.be: Backend | None = None
        self.n = 0
        self.mean: Any = None
        self.m2: Any = None

    def add(self, be: Backend, xb: Any) -> None:
        b = int(xb.shape[0])
        if b == 0:
            return
        self.be = be
        x = xb.astype(be.xp.float64)
        bmean = x.mean(axis=0)
        bm2 = ((x - bmean) ** 2).sum(axis=0)
        if self.n == 0:
            self.n, self.mean, self.m2 = b, bmean, bm2
            return
        total = self.n + b
        delta = bmean - self.mean
        self.mean = self.mean + delta * (b / total)
        self.m2 = self.m2 + bm2 + delta**2 * (self.n * b / total)
        self.n = total

    def host(self, be: Backend) -> tuple[int, np.ndarray, np.ndarray]:
        """``(n, mean, population std)`` of the standardized features, on the host."""
        mean = np.asarray(be.to_host(self.mean), dtype=np.float64)
        var = np.asarray(be.to_host(self.m2), dtype=np.float64) / self.n
        return self.n, mean, np.sqrt(np.maximum(var, 0.0))


def data_drift(n: int, z_mean: np.ndarray, z_std: np.ndarray) -> dict[str, Any]:
    """How far data lies from the training statistics, from the per-feature mean and std of
    the data standardized with the training mean and std (``z = (x - mean_train) /
    std_train``; a feature constant in training has std_train 1, in its own units).

    ``mean_shift``: the median over features of ``|mean_data - mean_train| / std_train``
    (about 0 for data like the training data); ``std_ratio``: the median, over the features
    that vary in the data, of ``std_data / std_train`` (about 1; None with fewer than 2 rows
    or no varying feature). ``drifted`` when ``mean_shift > DRIFT_MAX_SHIFT`` or
    ``std_ratio`` is outside ``[1 / DRIFT_MAX_STD_RATIO, DRIFT_MAX_STD_RATIO]``: data on
    another scale (0-1 against 0-255: a ratio of 1/255), not a held-out split or one class
    of the training distribution.
    """
    shift = float(np.median(np.abs(z_mean))) if z_mean.size else 0.0
    varying = z_std[z_std > 0]
    ratio = float(np.median(varying)) if n >= 2 and varying.size else None
    drifted = shift > DRIFT_MAX_SHIFT or (
        ratio is not None and not 1 / DRIFT_MAX_STD_RATIO <= ratio <= DRIFT_MAX_STD_RATIO)
    return {"mean_shift": shift, "std_ratio": ratio, "drifted": bool(drifted), "n": int(n),
            "max_shift": DRIFT_MAX_SHIFT, "max_std_ratio": DRIFT_MAX_STD_RATIO}


def _drift(moments: _Moments | None, data_desc: str) -> dict[str, Any] | None:
    """``data_drift`` of what ``moments`` saw (None without a standardizer or rows); warns
    (``DataDriftWarning``, one line) when the data drifted."""
    if moments is None or moments.n == 0 or moments.be is None:
        return None
    d = data_drift(*moments.host(moments.be))
    if d["drifted"]:
        ratio = "-" if d["std_ratio"] is None else f"{d['std_ratio']:.3g}"
        warnings.warn(
            f"{data_desc} does not look like the training data: on the median feature its mean "
            f"is {d['mean_shift']:.3g} training stds from the training mean and its std "
            f"{ratio} times the training std (similar data: about 0 and 1); is it scaled "
            f"differently (0-1 against 0-255?)", DataDriftWarning, stacklevel=3)
    return d


# ---------------------------------------------------------------------- from a checkpoint
def standardizer_from_checkpoint(ck: ckpt_mod.Checkpoint) -> Any:
    """The ``data.Standardizer`` stored in a checkpoint (None if it has none)."""
    from ..data import Standardizer

    s = ck.standardizer
    if "mean" not in s or "std" not in s:
        return None
    mean = np.asarray(s["mean"], dtype=np.float32)
    std = np.asarray(s["std"], dtype=np.float32)
    if mean.shape != (ck.in_features,) or std.shape != (ck.in_features,):
        raise CheckpointError(f"checkpoint {ck.path} is corrupt: its standardizer has shape "
                              f"{mean.shape}, the model takes {ck.in_features} features")
    return Standardizer(mean=mean, std=std)


def load_for_inference(path: str | Path, device: str | Backend = "cpu"
                       ) -> tuple[ckpt_mod.Checkpoint, MLP, Any]:
    """``(checkpoint, model, standardizer)`` ready for ``evaluate`` / ``predict``."""
    ck = ckpt_mod.load(path)
    model = ckpt_mod.build_model(ck, get_backend(device))
    return ck, model, standardizer_from_checkpoint(ck)


def _budget(memory_budget: int | None) -> dict[str, Any]:
    return {} if memory_budget is None else {"memory_budget": memory_budget}


def _rows(ck: ckpt_mod.Checkpoint) -> dict[str, Any]:
    """``load_split`` keywords that re-create the run's validation rows."""
    ref = ck.data or {}
    return {"val_split": float(ref.get("val_split", 0.1)), "seed": int(ref.get("seed", 0))}


def heldout_source(ck: ckpt_mod.Checkpoint, data: str | None = None, split: str | None = None,
                   x_key: str | None = None, y_key: str | None = None,
                   memory_budget: int | None = None) -> tuple[Any, str, str]:
    """The ``ArraySource`` to evaluate and a description ``(source, data, split)``.

    Without ``data``: the file and held-out split recorded in the checkpoint (its test group
    if it has one, else the validation split or file). With ``data``: that file's ``split``
    (default: its test group if present, else the whole file).
    """
    from .. import data as data_mod

    ref = ck.data or {}
    kw = {**_rows(ck), **_budget(memory_budget)}
    if data is not None:
        if split is None:
            split = "test" if (_has_group(data, "test") or _has_group(data, "test_set_x")) \
                else "all"
        return data_mod.load_split(data, split, x_key=x_key, y_key=y_key, **kw), str(data), split
    path = ref.get("path")
    if not path:
        raise CheckpointError(f"checkpoint {ck.path} records no data file: pass --data")
    x_key = x_key or ref.get("x_key")
    y_key = y_key or ref.get("y_key")
    split = split or ref.get("heldout")
    if split is None:
        raise ConfigError(f"the run in {ck.path} had no held-out split (no test group and "
                          "no validation set): pass --data and --split")
    if split == "val" and ref.get("val"):
        vsplit = "val" if _has_group(ref["val"], "val") else "all"
        src = data_mod.load_split(ref["val"], vsplit, x_key=x_key, y_key=y_key,
                                  **_budget(memory_budget))
        return src, str(ref["val"]), "val"
    return data_mod.load_split(path, split, x_key=x_key, y_key=y_key, **kw), str(path), split


def _has_group(data: str, name: str) -> bool:
    import h5py

    from .. import data as data_mod

    path = data_mod.resolve_data_path(data)
    try:
        with h5py.File(path, "r") as f:
            return name in f
    except OSError:
        return False  # let load_split name the problem


def _check_width(ck: ckpt_mod.Checkpoint, src: Any, data_desc: str) -> None:
    if int(src.n_features) != ck.in_features:
        raise DataError(f"checkpoint {ck.path} expects {ck.in_features} input features but "
                        f"{data_desc} has {src.n_features}")


def evaluate_checkpoint(
    path: str | Path,
    data: str | None = None,
    split: str | None = None,
    *,
    batch_size: int = EVAL_BATCH_SIZE,
    device: str | Backend = "cpu",
    x_key: str | None = None,
    y_key: str | None = None,
    memory_budget: int | None = None,
) -> dict[str, Any]:
    """``evaluate`` a checkpoint file on its held-out split or on ``data`` (see
    ``heldout_source``); adds ``checkpoint``, ``data``, ``split``, ``epoch`` and ``drift``
    (``data_drift``: the data against the training statistics; a ``DataDriftWarning`` when
    they clearly disagree) keys."""
    ck, model, std = load_for_inference(path, device)
    src, data_desc, split_name = heldout_source(ck, data, split, x_key, y_key, memory_budget)
    _check_width(ck, src, data_desc)
    moments = _Moments() if std is not None else None
    res = _evaluate(model, src, std, batch_size, ck.classes or None,
                    moments.add if moments is not None else None)
    return {**res, "checkpoint": str(path), "data": data_desc, "split": split_name,
            "epoch": ck.epoch, "step": ck.step, "drift": _drift(moments, data_desc)}


# ---------------------------------------------------------------------- prediction files
def predict_checkpoint(
    path: str | Path,
    data: str,
    out: str | Path,
    *,
    proba: bool = False,
    split: str = "all",
    batch_size: int = EVAL_BATCH_SIZE,
    device: str | Backend = "cpu",
    x_key: str | None = None,
    y_key: str | None = None,
    memory_budget: int | None = None,
) -> dict[str, Any]:
    """Predict ``data`` with a checkpoint and write ``out`` atomically: ``.h5`` (datasets
    ``pred`` and, with ``proba``, ``proba``; attribute ``classes``), ``.csv`` (a ``pred``
    column, the class name, and ``p_<class>`` columns with ``proba``) or ``.npy`` (the ids, or
    the probabilities with ``proba``). Never overwrites the checkpoint or the data file."""
    from .. import data as data_mod

    out = Path(out)
    if out.suffix.lower() not in (".h5", ".hdf5", ".csv", ".npy"):
        raise ConfigError(f"--out must end in .h5, .csv or .npy, got {out.name!r}")
    for other, what in ((Path(path), "checkpoint"),
                        (data_mod.resolve_data_path(data), "data file")):
        if _same_file(out, other):
            raise ConfigError(f"--out {out} is the {what} {other}; refusing to overwrite it")
    ck, model, std = load_for_inference(path, device)
    # labels are optional here: a file of X only is accepted
    src = data_mod.load_split(data, split, x_key=x_key, y_key=y_key, labels=False,
                              **_rows(ck), **_budget(memory_budget))
    _check_width(ck, src, str(data))
    moments = _Moments() if std is not None else None
    P = _predict(model, src, std, batch_size, True, moments.add if moments else None)
    pred = P.argmax(axis=1).astype(np.int64)
    names = ck.classes or [str(i) for i in range(ck.n_classes)]
    drift = _drift(moments, str(data))
    write_predictions(out, pred, P if proba else None, names)
    return {"out": str(out), "n": int(pred.shape[0]), "proba": proba,
            "counts": {names[c]: int((pred == c).sum()) for c in range(len(names))},
            "drift": drift}


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file: the same resolved path, or the same inode
    (``os.path.samefile``: hard links, symbolic links, other spellings of one path)."""
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
        return False


def write_predictions(out: Path, pred: np.ndarray, proba: np.ndarray | None,
                      names: list[str]) -> None:
    """Write ``pred`` (n,) class ids and optional ``proba`` (n, classes) to ``out`` (format by
    extension, see ``predict_checkpoint``) through ``fileio.atomic_write``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    writer = (_write_h5 if suffix in (".h5", ".hdf5") else
              _write_npy if suffix == ".npy" else _write_csv)
    atomic_write(out, partial(writer, pred=pred, proba=proba, names=names))


def _write_h5(tmp: Path, *, pred: np.ndarray, proba: np.ndarray | None,
              names: list[str]) -> None:
    import h5py

    with h5py.File(tmp, "w") as f:
        f.create_dataset("pred", data=pred)
        if proba is not None:
            f.create_dataset("proba", data=proba)
        f.attrs["classes"] = json.dumps(names)


def _write_npy(tmp: Path, *, pred: np.ndarray, proba: np.ndarray | None,
               names: list[str]) -> None:
    with open(tmp, "wb") as fh:
        np.save(fh, proba if proba is not None else pred, allow_pickle=False)


def _write_csv(tmp: Path, *, pred: np.ndarray, proba: np.ndarray | None,
               names: list[str]) -> None:
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        header = ["pred", "class"]
        if proba is not None:
            header += [f"p_{c}" for c in names]
        w.writerow(header)
        for i in range(pred.shape[0]):
            row: list[Any] = [int(pred[i]), names[int(pred[i])]]
            if proba is not None:
                row += [f"{v:.6g}" for v in proba[i]]
            w.writerow(row)
