"""Training, evaluation and prediction as plain importable functions.

Conventions: samples on axis 0; inputs are standardized with the training set's per-feature
mean and std (``data.Standardizer``), stored in every checkpoint and applied by ``evaluate`` and
``predict``; evaluation runs batch norm in inference mode (running statistics only, nothing is
updated, each row independent of the others, so results do not depend on the batch size).

Randomness: one ``seed`` feeds ``numpy.random.SeedSequence``. The model uses its children 0
(weight init) and 1 (dropout masks); the shuffle generator is child 2
(``SeedSequence(seed, spawn_key=(2,))``). All are host generators whose states are saved.

A run folder holds ``last.h5`` (every epoch, and every ``save_every`` steps), ``best.h5``
(best validation accuracy; training accuracy when there is no validation set; a tie goes to
the later epoch, while ``patience`` counts the epochs since the last strict improvement),
``metrics.jsonl`` (one JSON object per epoch; events such as a resume carry an ``event`` key)
and ``config.toml`` (the resolved configuration). Resuming from ``last.h5`` continues
exactly, also from the middle of an epoch: the checkpoint holds the shuffle generator's state
at the start of the epoch in progress and the number of batches already done, which are
replayed (read, not trained on) to reach the same point of the same permutation.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import checkpoint as ckpt_mod
from .backend import Backend, get_backend
from .config import IMMUTABLE_ON_RESUME, TrainConfig
from .errors import CheckpointError, ConfigError, DataError, TrainingDiverged
from .model import MLP
from .optim import make_optimizer, make_schedule
from .step import TrainStep

#: batch size used for validation and evaluation unless given
EVAL_BATCH_SIZE = 1024
#: the SeedSequence child that seeds the shuffle generator (MLP uses children 0 and 1)
SHUFFLE_STREAM = 2

Callback = Callable[[str, dict[str, Any]], None]


@dataclass
class FitResult:
    """What ``fit`` returns. ``model`` holds the final weights (the best ones after early
    stopping); ``test`` is the best checkpoint's evaluation on the test split, when the data
    has one."""

    model: MLP
    standardizer: Any
    config: TrainConfig
    out_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    status: str = "finished"
    epochs: int = 0
    step: int = 0
    best_metric: str = "val_acc"
    best_value: float | None = None
    best_epoch: int = 0
    test: dict[str, Any] | None = None
    resumed_from: str | None = None
    changed: dict[str, list[Any]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.h5"

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.h5"

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary (what ``gpunet train --json`` prints)."""
        last = self.history[-1] if self.history else {}
        out: dict[str, Any] = {
            "status": self.status, "out": str(self.out_dir), "epochs": self.epochs,
            "step": self.step, "train_loss": last.get("train_loss"),
            "train_acc": last.get("train_acc"), "val_loss": last.get("val_loss"),
            "val_acc": last.get("val_acc"), "best_metric": self.best_metric,
            "best_value": self.best_value, "best_epoch": self.best_epoch,
            "last": str(self.last_path), "best": str(self.best_path),
            "seconds": round(self.seconds, 3), "device": self.model.backend.name,
            "resumed_from": self.resumed_from,
        }
        if self.changed:
            out["changed"] = self.changed
        if self.test is not None:
            out["test_accuracy"] = self.test["accuracy"]
            out["test_loss"] = self.test["loss"]
            out["test_n"] = self.test["n"]
        return out


# ====================================================================== evaluation
def _nll_rows(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row cross-entropy in float64 from float32 logits (row max subtracted)."""
    z = logits.astype(np.float64)
    m = z.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
    return lse - z[np.arange(z.shape[0]), y]


def _input_batches(be: Backend, source: Any, standardizer: Any, batch_size: int, d: int
                   ) -> Iterable[tuple[Any, np.ndarray | None]]:
    """(standardized backend inputs, host labels or None) per batch, in order, from an
    ``ArraySource`` or a raw host array X (n, ...). On the GPU, in-memory data that fits the
    device budget is standardized and copied once, and batches are sliced on the device."""
    if isinstance(source, np.ndarray):
        X = source.reshape(source.shape[0], -1) if source.ndim != 2 else source
        labels = None
    else:
        X, labels = None, None
        if getattr(source, "n_features", d) != d:
            raise DataError(f"the model expects {d} input features but the data has "
                            f"{source.n_features}")
        if be.name == "gpu" and getattr(source, "in_memory", False) and \
                int(source.n) * d * 4 <= _device_budget(be):
            X, labels = source.arrays()
            labels = labels if getattr(source, "has_labels", True) else None
    if X is not None:
        if X.shape[1] != d:
            raise DataError(f"the model expects {d} input features but the data has "
                            f"{X.shape[1]}")
        X = np.asarray(X, dtype=np.float32)
        if not np.isfinite(X).all():
            raise DataError("the input contains NaN or inf values")
        Xs = standardizer.apply(X) if standardizer is not None else X
        if be.name == "gpu":
            Xs = be.asarray(Xs)  # one copy; batches are device slices
        for i in range(0, X.shape[0], batch_size):
            yield (be.asarray(Xs[i:i + batch_size]),
                   None if labels is None else np.asarray(labels[i:i + batch_size]))
        return
    for Xb, yb in source.batches(batch_size, shuffle=False):
        Xs = standardizer.apply(Xb) if standardizer is not None else Xb
        yield be.asarray(Xs), np.asarray(yb)


def _logits_batches(model: MLP, source: Any, standardizer: Any, batch_size: int
                    ) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """(host float32 logits, labels) per batch, inference mode."""
    be = model.backend
    d = int(model.config["in_features"])
    for xb, yb in _input_batches(be, source, standardizer, batch_size, d):
        logits = be.to_host(model.forward(xb, training=False))
        yield np.array(logits, dtype=np.float32, copy=True), yb


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
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    n_classes = int(model.config["classes"])
    names = [str(c) for c in (classes or [])] or [str(i) for i in range(n_classes)]
    preds, nlls, labels = [], [], []
    for logits, y in _logits_batches(model, source, standardizer, batch_size):
        if y.size and (y.min() < 0 or y.max() >= n_classes):
            raise DataError(f"labels go from {int(y.min())} to {int(y.max())} but the model "
                            f"has {n_classes} classes (0..{n_classes - 1})")
        preds.append(logits.argmax(axis=1))
        nlls.append(_nll_rows(logits, y))
        labels.append(y.astype(np.int64))
    if not labels:
        raise DataError("nothing to evaluate: the split is empty")
    y_all = np.concatenate(labels)
    p_all = np.concatenate(preds)
    nll = np.concatenate(nlls)
    n = int(y_all.shape[0])
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_all, p_all), 1)
    per_class: dict[str, dict[str, float | int]] = {}
    for c in range(n_classes):
        tp = int(cm[c, c])
        support = int(cm[c].sum())
        predicted = int(cm[:, c].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[names[c] if c < len(names) else str(c)] = {
            "precision": precision, "recall": recall, "f1": f1, "support": support,
        }
    f1s = [v["f1"] for v in per_class.values() if v["support"]]
    return {
        "accuracy": float(np.trace(cm) / n),
        "loss": float(nll.sum() / n),
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
    be = model.backend
    d = int(model.config["in_features"])
    out: list[np.ndarray] = []
    for xb, _ in _input_batches(be, source, standardizer, batch_size, d):
        logits = model.forward(xb, training=False)
        if proba:
            out.append(np.array(be.to_host(be.softmax(logits)), dtype=np.float32))
        else:
            out.append(np.asarray(be.to_host(logits.argmax(axis=1)), dtype=np.int64))
    if not out:
        n_c = int(model.config["classes"])
        return np.zeros((0, n_c), np.float32) if proba else np.zeros((0,), np.int64)
    return np.concatenate(out)


# ====================================================================== checkpoint helpers
def standardizer_from_checkpoint(ck: ckpt_mod.Checkpoint) -> Any:
    """The ``data.Standardizer`` stored in a checkpoint (None if it has none)."""
    from .data import Standardizer

    s = ck.standardizer
    if "mean" not in s or "std" not in s:
        return None
    mean = np.asarray(s["mean"], dtype=np.float32)
    std = np.asarray(s["std"], dtype=np.float32)
    if mean.shape != (ck.in_features,) or std.shape != (ck.in_features,):
        raise CheckpointError(f"checkpoint {ck.path} is corrupt: its standardizer has shape "
                              f"{mean.shape}, the model takes {ck.in_features} features")
    return _make_standardizer(Standardizer, mean, std)


def _make_standardizer(cls: Any, mean: np.ndarray, std: np.ndarray) -> Any:
    try:
        return cls(mean=mean, std=std)
    except TypeError:
        obj = cls.__new__(cls)
        obj.mean, obj.std = mean, std
        return obj


def load_for_inference(path: str | Path, device: str | Backend = "cpu"
                       ) -> tuple[ckpt_mod.Checkpoint, MLP, Any]:
    """``(checkpoint, model, standardizer)`` ready for ``evaluate`` / ``predict``."""
    ck = ckpt_mod.load(path)
    model = ckpt_mod.build_model(ck, get_backend(device))
    return ck, model, standardizer_from_checkpoint(ck)


def heldout_source(ck: ckpt_mod.Checkpoint, data: str | None = None, split: str | None = None,
                   x_key: str | None = None, y_key: str | None = None,
                   memory_budget: int | None = None) -> tuple[Any, str, str]:
    """The ``ArraySource`` to evaluate and a description ``(source, data, split)``.

    Without ``data``: the file and held-out split recorded in the checkpoint (its test group
    if it has one, else the validation split or file). With ``data``: that file's ``split``
    (default: its test group if present, else the whole file).
    """
    from . import data as data_mod

    ref = ck.data or {}
    kw: dict[str, Any] = {}
    if memory_budget is not None:
        kw["memory_budget"] = memory_budget
    if data is None:
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
            src = data_mod.load_split(ref["val"], vsplit, x_key=x_key, y_key=y_key, **kw)
            return src, str(ref["val"]), "val"
        src = data_mod.load_split(path, split, x_key=x_key, y_key=y_key,
                                  val_split=float(ref.get("val_split", 0.1)),
                                  seed=int(ref.get("seed", 0)), **kw)
        return src, str(path), split
    if split is None:
        split = "test" if (_has_group(data, "test") or _has_group(data, "test_set_x")) \
            else "all"
    src = data_mod.load_split(data, split, x_key=x_key, y_key=y_key,
                              val_split=float(ref.get("val_split", 0.1)),
                              seed=int(ref.get("seed", 0)), **kw)
    return src, str(data), split


def _has_group(data: str, name: str) -> bool:
    import h5py

    from . import data as data_mod

    path = data_mod.resolve_data_path(data)
    try:
        with h5py.File(path, "r") as f:
            return name in f
    except OSError:
        return False  # let load_split name the problem


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
    ``heldout_source``); adds ``checkpoint``, ``data``, ``split`` and ``epoch`` keys."""
    ck, model, std = load_for_inference(path, device)
    src, data_desc, split_name = heldout_source(ck, data, split, x_key, y_key, memory_budget)
    _check_width(ck, src, data_desc)
    res = evaluate(model, src, std, batch_size=batch_size, classes=ck.classes or None)
    return {**res, "checkpoint": str(path), "data": data_desc, "split": split_name,
            "epoch": ck.epoch, "step": ck.step}


def _check_width(ck: ckpt_mod.Checkpoint, src: Any, data_desc: str) -> None:
    if int(src.n_features) != ck.in_features:
        raise DataError(f"checkpoint {ck.path} expects {ck.in_features} input features but "
                        f"{data_desc} has {src.n_features}")


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
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".h5", ".hdf5", ".csv", ".npy"):
        raise ConfigError(f"--out must end in .h5, .csv or .npy, got {out.name!r}")
    for other, what in ((Path(path), "checkpoint"), (Path(data), "data file")):
        if _same_file(out, other):
            raise ConfigError(f"--out {out} is the {what}; refusing to overwrite it")
    ck, model, std = load_for_inference(path, device)
    src = _predict_source(ck, data, split, x_key, y_key, memory_budget)
    _check_width(ck, src, str(data))
    P = predict(model, src, std, batch_size=batch_size, proba=True)
    pred = P.argmax(axis=1).astype(np.int64)
    names = ck.classes or [str(i) for i in range(ck.n_classes)]
    _write_predictions(out, pred, P if proba else None, names)
    return {"out": str(out), "n": int(pred.shape[0]), "proba": proba,
            "counts": {names[c]: int((pred == c).sum()) for c in range(len(names))}}


def _predict_source(ck: ckpt_mod.Checkpoint, data: str, split: str, x_key: str | None,
                    y_key: str | None, memory_budget: int | None) -> Any:
    """The split to predict; labels are optional (a file of X only is accepted)."""
    from . import data as data_mod

    ref = ck.data or {}
    kw: dict[str, Any] = {} if memory_budget is None else {"memory_budget": memory_budget}
    return data_mod.load_split(data, split, x_key=x_key, y_key=y_key,
                               val_split=float(ref.get("val_split", 0.1)),
                               seed=int(ref.get("seed", 0)), labels=False, **kw)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _write_predictions(out: Path, pred: np.ndarray, proba: np.ndarray | None,
                       names: list[str]) -> None:
    import tempfile

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        suffix = out.suffix.lower()
        if suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(tmp, "w") as f:
                f.create_dataset("pred", data=pred)
                if proba is not None:
                    f.create_dataset("proba", data=proba)
                f.attrs["classes"] = json.dumps(names)
        elif suffix == ".npy":
            with open(tmp, "wb") as fh:
                np.save(fh, proba if proba is not None else pred, allow_pickle=False)
        else:
            with open(tmp, "w", encoding="utf-8", newline="") as fh:
                import csv

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
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ====================================================================== training
def default_out_dir(data: str, root: str | Path = "runs") -> Path:
    """``runs/<data stem>-<YYYYmmdd-HHMMSS>`` (with ``-2``, ``-3``... if it exists)."""
    stem = Path(str(data)).stem or "run"
    base = Path(root) / f"{stem}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    p, k = base, 2
    while p.exists():
        p = base.with_name(f"{base.name}-{k}")
        k += 1
    return p


def resolve_resume(resume: str | Path | None, out: str | Path | None) -> Path | None:
    """``"auto"``: ``<out>/last.h5`` when it exists, else None (a fresh start); a path: that
    checkpoint, which must exist."""
    if resume is None or str(resume) == "":
        return None
    if str(resume).lower() == "auto":
        if out is None:
            return None
        p = Path(out) / "last.h5"
        return p if p.exists() else None
    p = Path(resume)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    return p


def config_for_resume(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The configuration recorded in a checkpoint with ``overrides`` applied (for ``fit``)."""
    ck = ckpt_mod.load(path)
    base = TrainConfig.from_dict(ck.config, source=f"checkpoint {path}")
    base.out = None  # continue beside the checkpoint unless overridden
    return base.updated(overrides or {}, source="overrides")


def _normalize_data_ref(data: str | None) -> str | None:
    """An existing file becomes an absolute path; a bundled dataset name stays a name."""
    if data is None:
        return None
    p = Path(data).expanduser()
    if p.exists():
        return str(p.resolve())
    return str(data)


def _check_output_folder(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        import tempfile

        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"cannot write to output folder {out}: "
                          f"{e.strerror or type(e).__name__}") from None


class _MetricsLog:
    """``metrics.jsonl``: one JSON object per line, flushed and fsynced after each."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def reset(self) -> None:
        _atomic_write_text(self.path, "")

    def truncate_after(self, epoch: int, step: int) -> None:
        """Keep epoch lines up to ``epoch`` and events up to ``step`` (drop what a killed run
        wrote after its last checkpoint)."""
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                break  # a torn last line
            if "event" in rec:
                if int(rec.get("step", 0)) > step:
                    break
            elif int(rec.get("epoch", 0)) > epoch:
                break
            keep.append(line)
        _atomic_write_text(self.path, "".join(k + "\n" for k in keep))

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(x) for x in self.path.read_text(encoding="utf-8").splitlines() if x]

    def append(self, rec: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _class_weights(cfg: TrainConfig, dataset: Any) -> np.ndarray | None:
    """``balanced``: ``w_c = n / (C * count_c)`` (0 for a class absent from training)."""
    if cfg.class_weights != "balanced":
        return None
    counts = np.asarray(dataset.train.class_counts(dataset.n_classes), dtype=np.float64)
    n, c = counts.sum(), len(counts)
    w = np.where(counts > 0, n / (c * np.maximum(counts, 1)), 0.0)
    return w.astype(np.float32)


# ====================================================================== training data feed
class _HostFeed:
    """Batches read (and shuffled) by the data layer, standardized on the host, copied to the
    backend per batch: the CPU path, and the GPU path for data that is not device-resident."""

    def __init__(self, be: Backend, source: Any, standardizer: Any, batch_size: int) -> None:
        self.be, self.source, self.std, self.b = be, source, standardizer, batch_size
        self.buf: dict[tuple[int, ...], np.ndarray] = {}

    def _standardized(self, X: np.ndarray) -> np.ndarray:
        buf = self.buf.get(X.shape)
        if buf is None:
            buf = self.buf[X.shape] = np.empty(X.shape, dtype=np.float32)
        return self.std.apply(X, out=buf)

    def epoch(self, rng: np.random.Generator, drop_last: bool) -> Iterable[tuple[Any, Any]]:
        for X, y in self.source.batches(self.b, shuffle=True, rng=rng, drop_last=drop_last):
            yield self.be.asarray(self._standardized(X)), self.be.asarray(y)


class _PinnedFeed(_HostFeed):
    """GPU, data not device-resident: each batch is standardized into one of two pinned host
    buffers and copied on a second stream while the GPU trains on the previous one; events
    order the copy before its use and the next overwrite after it (double buffering)."""

    def __init__(self, be: Backend, source: Any, standardizer: Any, batch_size: int) -> None:
        super().__init__(be, source, standardizer, batch_size)
        import cupyx

        cp = be.xp
        d = int(source.n_features)
        self.copy_stream = cp.cuda.Stream(non_blocking=True)
        self.px = [cupyx.empty_pinned((batch_size, d), np.float32) for _ in range(2)]
        self.py = [cupyx.empty_pinned((batch_size,), np.int64) for _ in range(2)]
        self.dx = [cp.empty((batch_size, d), np.float32) for _ in range(2)]
        self.dy = [cp.empty((batch_size,), np.int64) for _ in range(2)]
        self.copied: list[Any] = [None, None]  # copy into slot k done
        self.used: list[Any] = [None, None]  # compute done with slot k

    def epoch(self, rng: np.random.Generator, drop_last: bool) -> Iterable[tuple[Any, Any]]:
        cp = self.be.xp
        for i, (X, y) in enumerate(self.source.batches(self.b, shuffle=True, rng=rng,
                                                       drop_last=drop_last)):
            k, n = i % 2, X.shape[0]
            if self.copied[k] is not None:
                self.copied[k].synchronize()  # the pinned slot's last copy has left
            self.std.apply(X, out=self.px[k][:n])
            self.py[k][:n] = y
            cs = self.copy_stream
            if self.used[k] is not None:
                cs.wait_event(self.used[k])  # the GPU is done with the device slot
            self.dx[k][:n].set(self.px[k][:n], stream=cs)
            self.dy[k][:n].set(self.py[k][:n], stream=cs)
            self.copied[k] = cs.record()
            compute = cp.cuda.get_current_stream()
            compute.wait_event(self.copied[k])
            yield self.dx[k][:n], self.dy[k][:n]
            self.used[k] = compute.record()


class _DeviceFeed:
    """GPU, data that fits the device budget: standardized once and copied to the device;
    each epoch's shuffle is a permutation drawn from the same host generator as the data
    layer's (so the batches equal the CPU path's), and batches are gathered on the device
    straight into the step's buffers."""

    def __init__(self, be: Backend, source: Any, standardizer: Any, batch_size: int,
                 step: TrainStep) -> None:
        X, y = source.arrays()
        self.be, self.b, self.step, self.n = be, batch_size, step, int(source.n)
        self.X = be.asarray(standardizer.apply(np.asarray(X, dtype=np.float32)))
        self.y = be.asarray(np.asarray(y, dtype=np.int64))

    def epoch(self, rng: np.random.Generator, drop_last: bool) -> Iterable[tuple[Any, Any]]:
        cp = self.be.xp
        order = self.be.asarray(rng.permutation(self.n))  # as InMemorySource.batches draws it
        stop = self.n - self.n % self.b if drop_last else self.n
        for i in range(0, stop, self.b):
            idx = order[i:i + self.b]
            if idx.shape[0] == self.b:
                cp.take(self.X, idx, axis=0, out=self.step.x)
                cp.take(self.y, idx, axis=0, out=self.step.y)
                yield self.step.x, self.step.y
            else:
                yield self.X[idx], self.y[idx]


def _device_budget(be: Backend) -> int:
    """Bytes of training data to keep on the device: half of its free memory."""
    try:
        free, _total = be.xp.cuda.runtime.memGetInfo()
        return int(free) // 2
    except Exception:  # noqa: BLE001
        return 0


def _make_feed(be: Backend, source: Any, standardizer: Any, batch_size: int,
               step: TrainStep) -> Any:
    if be.name != "gpu":
        return _HostFeed(be, source, standardizer, batch_size)
    nbytes = int(source.n) * int(source.n_features) * 4
    if getattr(source, "in_memory", False) and nbytes <= _device_budget(be):
        return _DeviceFeed(be, source, standardizer, batch_size, step)
    return _PinnedFeed(be, source, standardizer, batch_size)


def fit(
    config: TrainConfig | dict[str, Any],
    backend: Backend | str | None = None,
    *,
    resume: str | Path | None = None,
    dataset: Any = None,
    callback: Callback | None = None,
) -> FitResult:
    """Train an MLP as ``config`` says and write the run folder; see the module docstring.

    ``resume``: a checkpoint to continue from (``resolve_resume`` turns ``"auto"`` into a
    path); ``config`` must then keep the architecture, data and seed of the checkpoint's
    run (``config_for_resume`` builds such a config) and may change the learning rate, the
    optimizer's hyperparameters, the schedule, epochs, patience, class weights, batch size
    (at an epoch boundary) and the device. ``callback(event, info)`` is told ``start``,
    ``batch``, ``epoch`` and ``end``. Raises ``TrainingDiverged`` on a NaN / inf loss,
    leaving the last good checkpoint as it was.
    """
    from . import data as data_mod

    t_start = time.perf_counter()
    cfg = (config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config))
    cfg = cfg.resolve()
    ck = ckpt_mod.load(resume) if resume is not None else None
    if cfg.data is None:
        if ck is None:
            raise ConfigError("no training data: give DATA (a .h5 file or 'digits')")
        cfg.data = ck.config.get("data")
    cfg.data = _normalize_data_ref(cfg.data)
    cfg.val = _normalize_data_ref(cfg.val)
    changed: dict[str, list[Any]] = {}
    if ck is not None:
        changed = _check_resume_config(ck, cfg)
    out = Path(cfg.out) if cfg.out else (
        Path(resume).parent if resume is not None else default_out_dir(str(cfg.data)))
    cfg.out = str(out)
    last_path, best_path = out / "last.h5", out / "best.h5"
    if ck is None and (last_path.exists() or best_path.exists()):
        raise ConfigError(f"{out} already holds a run (last.h5 / best.h5): continue it with "
                          "--resume auto, or choose another --out")
    be = get_backend(backend if backend is not None else cfg.device)
    say = callback or (lambda event, info: None)

    # ---------------------------------------------------------------- data
    kw: dict[str, Any] = {}
    if cfg.memory_budget is not None:
        kw["memory_budget"] = cfg.memory_budget
    ds = dataset if dataset is not None else data_mod.open_dataset(
        cfg.data, x_key=cfg.x_key, y_key=cfg.y_key, val=cfg.val, val_split=cfg.val_split,
        seed=cfg.seed, **kw)
    n_train = int(ds.train.n)
    if n_train < 1:
        raise DataError(f"{cfg.data}: the training set is empty")
    drop_last = cfg.batchnorm and n_train % cfg.batch_size == 1
    n_batches = n_train // cfg.batch_size if drop_last else math.ceil(n_train / cfg.batch_size)
    if n_batches == 0:
        raise DataError(f"{cfg.data}: the training set has {n_train} sample; batch norm needs "
                        "at least 2 per batch (use --no-batchnorm)")
    heldout = "test" if ds.test is not None else ("val" if ds.val is not None else None)
    data_ref = {"path": cfg.data, "x_key": cfg.x_key, "y_key": cfg.y_key,
                "detected_x_key": ds.x_key, "detected_y_key": ds.y_key, "val": cfg.val,
                "val_split": cfg.val_split, "seed": cfg.seed, "val_source": ds.val_source,
                "heldout": heldout, "n_features": int(ds.n_features),
                "n_classes": int(ds.n_classes)}
    classes = [str(c) for c in ds.classes] or [str(i) for i in range(ds.n_classes)]

    # ---------------------------------------------------------------- model, optimizer, rng
    schedule = make_schedule(cfg.lr_schedule, epochs=cfg.epochs, **cfg.schedule_kwargs())
    if ck is None:
        standardizer = data_mod.Standardizer.fit(ds.train)
        model = MLP(ds.n_features, cfg.hidden, ds.n_classes, batchnorm=cfg.batchnorm,
                    dropout=cfg.dropout, activation=cfg.activation, backend=be, seed=cfg.seed,
                    bn_momentum=cfg.bn_momentum)
    else:
        if ck.in_features != ds.n_features or ck.n_classes != ds.n_classes:
            raise CheckpointError(
                f"checkpoint {resume} is for {ck.in_features} features and {ck.n_classes} "
                f"classes but {cfg.data} has {ds.n_features} and {ds.n_classes}")
        standardizer = standardizer_from_checkpoint(ck)
        model = ckpt_mod.build_model(ck, be)
    opt = make_optimizer(cfg.optimizer, model, schedule=schedule, **cfg.optimizer_kwargs())
    shuffle_rng = np.random.default_rng(np.random.SeedSequence(cfg.seed,
                                                               spawn_key=(SHUFFLE_STREAM,)))
    cw_host = _class_weights(cfg, ds)
    cw = be.asarray(cw_host) if cw_host is not None else None
    _check_output_folder(out)  # after every input check: bad input leaves no empty folder
    metrics = _MetricsLog(out / "metrics.jsonl")

    # ---------------------------------------------------------------- progress state
    monitor = "val_acc" if ds.val is not None else "train_acc"
    epoch, batch_done, step = 0, 0, 0
    best_value, best_epoch, improved_epoch = -math.inf, 0, 0
    status = "running"
    epoch_start_state: dict[str, Any] = shuffle_rng.bit_generator.state
    acc_loss0, acc_correct0, acc_count0, acc_seconds0 = 0.0, 0, 0, 0.0
    best_arrays: dict[str, np.ndarray] | None = None
    if ck is not None:
        pr = ck.progress
        epoch, batch_done, step = int(pr["epoch"]), int(pr["batch"]), int(pr["step"])
        status = str(pr.get("status", "running"))
        bv = pr.get("best_value")
        best_value = -math.inf if bv is None else float(bv)
        best_epoch = int(pr.get("best_epoch", 0))
        improved_epoch = int(pr.get("improved_epoch", best_epoch))
        monitor = str(pr.get("best_metric", monitor))
        if batch_done and int(pr.get("batch_size", cfg.batch_size)) != cfg.batch_size:
            raise ConfigError("the checkpoint was saved in the middle of an epoch; the batch "
                              "size can only change at an epoch boundary")
        try:
            opt.load_state_dict({"t": ck.optimizer.get("t", step), "lr": opt.lr,
                                 **ck.optimizer_state})
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"checkpoint {resume}: bad optimizer state ({e})") from None
        epoch_start_state = ck.rng["shuffle_epoch_start"]
        ckpt_mod.set_rng_state(shuffle_rng, epoch_start_state)
        acc_loss0 = float(pr.get("epoch_loss_sum", 0.0))
        acc_correct0 = int(pr.get("epoch_correct", 0))
        acc_count0 = int(pr.get("epoch_count", 0))
        acc_seconds0 = float(pr.get("epoch_seconds", 0.0))
        best_arrays = _load_best_arrays(best_epoch, [best_path, Path(resume).parent / "best.h5"])
        metrics.truncate_after(epoch, step)
        metrics.append({"event": "resume", "epoch": epoch, "step": step,
                        "from": str(resume), "changed": changed})
    else:
        metrics.reset()
    _atomic_write_text(out / "config.toml", cfg.to_toml())
    history = [r for r in metrics.read() if "event" not in r]

    def snapshot(state: str) -> ckpt_mod.Checkpoint:
        return ckpt_mod.from_training_state(
            model, opt, standardizer, config=cfg.to_dict(), data=data_ref, classes=classes,
            progress={"epoch": epoch, "batch": batch_done, "step": step, "status": state,
                      "batch_size": cfg.batch_size, "best_metric": monitor,
                      "best_value": None if best_value == -math.inf else best_value,
                      "best_epoch": best_epoch, "improved_epoch": improved_epoch,
                      "epoch_loss_sum": acc_loss,
                      "epoch_correct": acc_correct, "epoch_count": acc_count,
                      "epoch_seconds": acc_seconds, "n_batches": n_batches},
            rng={"shuffle_epoch_start": epoch_start_state,
                 "dropout": model.dropout_rng.bit_generator.state})

    def diverged(where: str, value: float) -> TrainingDiverged:
        metrics.append({"event": "diverged", "epoch": epoch + 1, "step": step,
                        "loss": str(value)})
        good = (f"the last good checkpoint is {last_path}" if last_path.exists()
                else "no checkpoint was written yet")
        return TrainingDiverged(f"training diverged: the loss became {value} {where} "
                                f"(lr {opt.lr:g}); {good}; try a lower --lr")

    finished = False
    if ck is not None and batch_done == 0:
        if epoch >= cfg.epochs:
            finished = True
            status = status if status == "early_stopped" else "finished"
        elif status == "early_stopped" and _should_stop(cfg, epoch, improved_epoch):
            finished = True
    say("start", {"epochs": cfg.epochs, "start_epoch": epoch, "batches": n_batches,
                  "n_train": n_train, "resumed": ck is not None, "out": str(out),
                  "device": be.name, "params": model.num_params, "finished": finished})
    acc_loss, acc_correct, acc_count, acc_seconds = acc_loss0, acc_correct0, acc_count0, \
        acc_seconds0
    check_each_step = be.name == "cpu"
    stepper = TrainStep(model, opt, cfg.batch_size, class_weights=cw,
                        cuda_graph=cfg.cuda_graph, tf32=cfg.tf32)
    feed = _make_feed(be, ds.train, standardizer, cfg.batch_size, stepper)
    drop_last = drop_last or cfg.drop_last

    # overflow to inf / NaN is detected and reported as TrainingDiverged, not warned about
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        while not finished and epoch < cfg.epochs:
            lr = opt.set_epoch(epoch)
            stepper.set_lr(lr)
            t0 = time.perf_counter()
            skip = batch_done
            stepper.reset_sums(acc_loss, acc_correct)
            count = acc_count
            train_time = 0.0
            say("epoch_start", {"epoch": epoch + 1, "lr": lr, "skip": skip})
            for bi, (xb, yb) in enumerate(feed.epoch(shuffle_rng, drop_last)):
                if bi < skip:
                    continue
                tb = time.perf_counter()
                nb = int(xb.shape[0])
                if nb == cfg.batch_size:
                    loss = stepper.run(xb, yb)
                else:
                    loss = stepper.run_eager(xb, yb)
                if check_each_step and not math.isfinite(float(loss)):
                    raise diverged(f"at epoch {epoch + 1}, step {step + 1}", float(loss))
                step += 1
                count += nb
                batch_done = bi + 1
                train_time += time.perf_counter() - tb
                say("batch", {"epoch": epoch + 1, "batch": batch_done, "batches": n_batches})
                if cfg.save_every and step % cfg.save_every == 0 and batch_done < n_batches:
                    acc_loss, acc_correct = stepper.sums()
                    acc_count = count
                    if not math.isfinite(acc_loss):
                        raise diverged(f"in epoch {epoch + 1}", acc_loss)
                    acc_seconds = acc_seconds0 + (time.perf_counter() - t0)
                    ckpt_mod.save(last_path, snapshot("running"))
            loss_sum, correct = stepper.sums()
            if be.name == "gpu":  # steps run asynchronously: count until they finished
                train_time = time.perf_counter() - t0
            # ------------------------------------------------------------ epoch end
            acc_loss, acc_correct, acc_count = loss_sum, correct, count
            if not math.isfinite(acc_loss):
                raise diverged(f"in epoch {epoch + 1}", acc_loss)
            train_loss = acc_loss / max(count, 1)
            train_acc = acc_correct / max(count, 1)
            val_loss = val_acc = None
            if ds.val is not None:
                v = evaluate(model, ds.val, standardizer, classes=classes)
                val_loss, val_acc = v["loss"], v["accuracy"]
            seconds = acc_seconds0 + (time.perf_counter() - t0)
            epoch += 1
            batch_done = 0
            epoch_start_state = shuffle_rng.bit_generator.state
            current = val_acc if monitor == "val_acc" else train_acc
            # best.h5 takes ties (the later, longer-trained epoch); patience counts the epochs
            # since the metric last strictly improved
            improved = current is not None and current >= best_value
            if improved:
                if current > best_value:
                    improved_epoch = epoch
                best_value, best_epoch = float(current), epoch
            stop = _should_stop(cfg, epoch, improved_epoch)
            status = "early_stopped" if stop else ("finished" if epoch >= cfg.epochs else "running")
            rec = {"epoch": epoch, "step": step, "train_loss": train_loss, "train_acc": train_acc,
                   "val_loss": val_loss, "val_acc": val_acc, "lr": lr,
                   "seconds": round(seconds, 4),
                   "samples_per_s": round((count - acc_count0) / train_time, 1)
                   if train_time > 0 else None}
            acc_loss, acc_correct, acc_count, acc_seconds = 0.0, 0, 0, 0.0
            acc_loss0, acc_correct0, acc_count0, acc_seconds0 = 0.0, 0, 0, 0.0
            metrics.append(rec)
            history.append(rec)
            if improved:
                ckpt_mod.save(best_path, snapshot(status))
                best_arrays = model.state_arrays()
            ckpt_mod.save(last_path, snapshot(status))
            say("epoch", {**rec, "best": improved, "epochs": cfg.epochs})
            if stop:
                break

    if status == "early_stopped" and best_arrays is not None:
        model.load_state_arrays(best_arrays)
    test = None
    if ds.test is not None and (best_arrays is not None or best_path.exists()):
        if best_arrays is None:
            best_arrays = ckpt_mod.load(best_path).arrays
        best_model = _clone_with(model, best_arrays)
        test = evaluate(best_model, ds.test, standardizer, classes=classes)
    result = FitResult(
        model=model, standardizer=standardizer, config=cfg, out_dir=out, history=history,
        status=status, epochs=epoch, step=step, best_metric=monitor,
        best_value=None if best_value == -math.inf else best_value, best_epoch=best_epoch,
        test=test, resumed_from=str(resume) if resume is not None else None, changed=changed,
        seconds=time.perf_counter() - t_start)
    say("end", result.summary())
    return result


def _should_stop(cfg: TrainConfig, epoch: int, improved_epoch: int) -> bool:
    return cfg.patience > 0 and epoch - improved_epoch >= cfg.patience


def _clone_with(model: MLP, arrays: dict[str, np.ndarray]) -> MLP:
    m = MLP.from_config(model.config, backend=model.backend, seed=0)
    m.load_state_arrays(arrays)
    return m


def _load_best_arrays(best_epoch: int, candidates: list[Path]) -> dict[str, np.ndarray] | None:
    if best_epoch <= 0:
        return None
    for p in candidates:
        if p.exists():
            try:
                b = ckpt_mod.load(p)
            except CheckpointError:
                continue
            if int(b.progress.get("epoch", -1)) == best_epoch:
                return b.arrays
    return None


def _check_resume_config(ck: ckpt_mod.Checkpoint, cfg: TrainConfig) -> dict[str, list[Any]]:
    """Raise ``ConfigError`` if ``cfg`` changes what a resume cannot; return the changes."""
    old = TrainConfig.from_dict(ck.config, source=f"checkpoint {ck.path}")
    old_data = _normalize_data_ref(old.data)
    changed: dict[str, list[Any]] = {}
    if old_data != cfg.data:
        moved = old_data is not None and Path(old_data).is_absolute() \
            and not Path(old_data).exists()
        if not moved:
            raise ConfigError(f"cannot resume {ck.path} on different data: it was trained on "
                              f"{old_data}, not {cfg.data}")
        changed["data"] = [old_data, cfg.data]  # the file moved
    for key in TrainConfig.keys():
        a, b = getattr(old, key), getattr(cfg, key)
        if key in ("data", "out"):
            continue
        if key == "val":
            a = _normalize_data_ref(a)
        if a != b:
            if key in IMMUTABLE_ON_RESUME:
                raise ConfigError(f"cannot change {key} when resuming (checkpoint: {a!r}, "
                                  f"now: {b!r}); start a new run instead")
            changed[key] = [a, b]
    return changed
