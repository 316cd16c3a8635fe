"""Splits: the train / val / test sources of a training run, and one split for eval or predict.

Conventions (docs/architecture.md, "Data files"):

- A split is a :class:`~gpunet.data.sources.ArraySource`: in memory when its float32 X fits the
  memory budget (:data:`~gpunet.data.sources.DEFAULT_MEMORY_BUDGET` unless given), streamed from
  the file otherwise; the budget applies to each split on its own.
- Validation comes from a file (``val=``), else a ``val`` group, else ``val_split`` of the
  training part (:func:`~gpunet.data.holdout.holdout_ranges`), else none. The test split is the
  ``test`` group, or the course's ``test_set_x/test_set_y`` beside a training pair.
- Every split has the training split's number of features; every label is a class id below
  ``n_classes`` (:mod:`gpunet.data.labels`), and a classifier needs at least 2 classes.
- Every problem with the data raises :class:`gpunet.errors.DataError` with a one-line message.
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass

import h5py
import numpy as np

from ..errors import ConfigError, DataError
from .checks import _name, _printable
from .files import _allowed, _open_h5, resolve_data_path
from .holdout import holdout_ranges
from .labels import _check_named, _check_unnamed, _n_classes
from .layout import _check_part, _class_names, _find_parts, _Part, _PartData
from .sources import DEFAULT_MEMORY_BUDGET, ArraySource, Segment, _source

Rows = list[tuple[int, int]]


def _make_multi(f: h5py.File, path: pathlib.Path, items: list[tuple[_PartData, Rows | None]],
                memory_budget: int, name: str, classes: list[str] | None,
                allow_external: bool = False) -> ArraySource:
    """One source over the rows ``ranges`` (None: all) of each part in ``items``, in order."""
    segs: list[Segment] = []
    labs: list[np.ndarray] = []
    fshape = items[0][0].feature_shape
    d = int(np.prod(fshape))
    for pd, ranges in items:
        if int(np.prod(pd.feature_shape)) != d:
            raise DataError(f"{pd.part.x} has {int(np.prod(pd.feature_shape))} features but "
                            f"{items[0][0].part.x} has {d}")
        for a, b in (ranges if ranges is not None else [(0, pd.n)]):
            segs.append((pd.part.x, a, b))
            labs.append(pd.labels[a:b])
    labels = np.concatenate(labs) if labs else np.zeros(0, np.int64)
    if len(labels) == 0:
        raise DataError(f"empty dataset: {name} has 0 samples")
    has_labels = all(pd.has_labels for pd, _ in items)
    dtype = items[0][0].dtype if len({pd.dtype for pd, _ in items}) == 1 else np.dtype("f8")
    return _source(f, path, segs, labels, fshape, dtype, memory_budget, name, classes,
                   has_labels, allow_external)


def _make_source(f: h5py.File, path: pathlib.Path, pd: _PartData, ranges: Rows | None,
                 memory_budget: int, name: str, classes: list[str] | None,
                 allow_external: bool = False) -> ArraySource:
    """A source over ``ranges`` of one part (None: all rows)."""
    return _make_multi(f, path, [(pd, ranges)], memory_budget, name, classes, allow_external)


@dataclass
class Dataset:
    """The splits of one training run and what describes them.

    ``val_source``: ``"group"`` (a ``val`` group in the file), ``"file"`` (``val=FILE``),
    ``"split"`` (held out by ``val_split``), ``"none"``. ``classes`` are names, or
    ``["0", "1", ...]``; ``x_key`` / ``y_key`` are the keys used for the training split.
    """

    train: ArraySource
    val: ArraySource | None
    test: ArraySource | None
    n_features: int
    n_classes: int
    classes: list[str]
    path: str
    x_key: str
    y_key: str
    val_source: str
    val_split: float = 0.0
    seed: int = 0
    feature_shape: tuple[int, ...] = ()


def _load_val_file(val: str | os.PathLike[str], x_key: str | None, y_key: str | None,
                   memory_budget: int, allow_external: bool) -> ArraySource:
    """``val=FILE``: its ``val`` group if it has one, else all of it."""
    with _open_h5(resolve_data_path(val), allow_external) as vf:
        has_val = "val" in vf and isinstance(vf["val"], h5py.Group)
    return load_split(val, "val" if has_val else "all", x_key, y_key, val_split=0.0,
                      memory_budget=memory_budget, allow_external=allow_external)


def _count_classes(path: pathlib.Path, names: list[str] | None, pds: dict[str, _PartData],
                   val_src: ArraySource | None) -> int:
    """``n_classes`` over the file's parts and a validation file; DataError below 2."""
    extra = val_src.n if val_src is not None and val_src.has_labels else 0
    n_classes = _n_classes(names, [(pd, f"in {_printable(_name(path))}:{_printable(pd.part.y)}")
                                   for pd in pds.values()], extra)
    if extra:
        assert val_src is not None
        if names is not None:
            _check_named(val_src.labels, names, f"in {val_src.name}")
        else:
            _check_unnamed(val_src.labels, sum(pd.n for pd in pds.values()) + extra,
                           f"in {val_src.name}")
        n_classes = max(n_classes, int(val_src.labels.max()) + 1)
    if n_classes < 2:
        raise DataError(f"{_name(path)} has a single class (label 0); a classifier needs "
                        "at least 2")
    return n_classes


def _val_plan(has_val_file: bool, pds: dict[str, _PartData], val_split: float,
              seed: int) -> tuple[str, Rows | None, Rows | None]:
    """``(val_source, training rows or None for all, held-out rows)``."""
    if has_val_file:
        return "file", None, None
    if "val" in pds:
        return "group", None, None
    if val_split > 0:
        train_rows, val_rows = holdout_ranges(pds["train"].n, val_split, seed)
        return "split", train_rows, val_rows
    holdout_ranges(pds["train"].n, val_split, seed)   # checks the range
    return "none", None, None


def _training_sources(f: h5py.File, path: pathlib.Path, pds: dict[str, _PartData], same: bool,
                      plan: tuple[str, Rows | None, Rows | None],
                      val_file_src: ArraySource | None, memory_budget: int,
                      names: list[str] | None, allow_external: bool
                      ) -> tuple[ArraySource, ArraySource | None, ArraySource | None]:
    """(train, val, test) sources of :func:`open_dataset`, features checked against train's."""
    val_source, train_rows, val_rows = plan
    fname, tr = _printable(_name(path)), pds["train"]

    def make(pd: _PartData, rows: Rows | None, split: str) -> ArraySource:
        return _make_source(f, path, pd, rows, memory_budget, f"{fname}:{split}", names,
                            allow_external)

    train = make(tr, train_rows, "train")
    val_src: ArraySource | None = None
    if val_source == "file":
        val_src = val_file_src
    elif val_source == "group":
        val_src = make(pds["val"], None, "val")
    elif val_source == "split":
        val_src = make(tr, val_rows, "val")
    test = make(pds["test"], None, "test") if "test" in pds and not same else None
    return train, val_src, test


def open_dataset(data: str | os.PathLike[str], x_key: str | None = None,
                 y_key: str | None = None, val: str | os.PathLike[str] | None = None,
                 val_split: float = 0.1, seed: int = 0,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET,
                 allow_external: bool = False) -> Dataset:
    """Open a training dataset: train, validation and test splits, checked.

    Validation comes from ``val`` (a file: its ``val`` group if present, else its data), else a
    ``val`` group, else ``val_split`` of the training part (see :func:`holdout_ranges`), else
    none. The test split is the ``test`` group (or the course's ``test_set_x/test_set_y`` beside
    a training pair), else None. Links, virtual datasets and external storage in a file are
    refused unless ``allow_external`` (or :func:`~gpunet.data.allow_external_data`).
    """
    path = resolve_data_path(data)
    allow = _allowed(allow_external)
    with _open_h5(path, allow) as f:
        parts, same = _find_parts(f, x_key, y_key)
        pds = {s: _check_part(f, p, memory_budget) for s, p in parts.items()}
        names = _class_names(f, parts["train"])
        val_file_src = (_load_val_file(val, x_key, y_key, memory_budget, allow)
                        if val is not None else None)
        n_classes = _count_classes(path, names, pds, val_file_src)
        classes = names if names is not None else [str(i) for i in range(n_classes)]
        plan = _val_plan(val is not None, pds, val_split, seed)
        train, val_src, test = _training_sources(f, path, pds, same, plan, val_file_src,
                                                 memory_budget, names, allow)
    for s in (val_src, test):
        if s is not None and s.n_features != train.n_features:
            raise DataError(f"{s.name} has {s.n_features} features but {train.name} has "
                            f"{train.n_features}")
    return Dataset(train=train, val=val_src, test=test, n_features=train.n_features,
                   n_classes=n_classes, classes=classes, path=str(path),
                   x_key=parts["train"].x.rsplit("/", 1)[-1],
                   y_key=(parts["train"].y or "").rsplit("/", 1)[-1], val_source=plan[0],
                   val_split=float(val_split) if plan[0] == "split" else 0.0, seed=int(seed),
                   feature_shape=pds["train"].feature_shape)


def load_split(data: str | os.PathLike[str], split: str = "test", x_key: str | None = None,
               y_key: str | None = None, val_split: float = 0.1, seed: int = 0,
               memory_budget: int = DEFAULT_MEMORY_BUDGET, labels: bool = True,
               allow_external: bool = False) -> ArraySource:
    """One split for eval / predict: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.

    ``"train"`` / ``"val"`` without a ``val`` group are the rows :func:`open_dataset` uses for
    the same ``val_split`` and ``seed``; ``"all"`` is every part of the file (train, val, test
    groups, in that order). With ``labels=False`` a file of X only is accepted (labels -1).
    ``allow_external`` as in :func:`open_dataset`.
    """
    if split not in ("train", "val", "test", "all"):
        raise ConfigError(f"unknown split {split!r}: use train, val, test or all")
    path = resolve_data_path(data)
    fname = _printable(_name(path))
    allow = _allowed(allow_external)
    with _open_h5(path, allow) as f:
        parts, same = _find_parts(f, x_key, y_key, require_y=labels)
        names = _class_names(f, parts["train"])
        items = _split_items(f, parts, same, split, fname, val_split, seed, memory_budget)
        src = _make_multi(f, path, items, memory_budget, f"{fname}:{split}", names, allow)
    if names is not None and src.has_labels:
        _check_named(src.labels, names, f"in {src.name}")
    return src


def _split_items(f: h5py.File, parts: dict[str, _Part], same: bool, split: str, fname: str,
                 val_split: float, seed: int, memory_budget: int
                 ) -> list[tuple[_PartData, Rows | None]]:
    """The checked parts, and their rows, that make up ``split`` (see :func:`load_split`)."""
    if split == "all":
        order = ["train"] + [s for s in ("val", "test") if s in parts and not
                             (s == "test" and same)]
        return [(_check_part(f, parts[s], memory_budget), None) for s in order]
    if split == "test":
        if "test" not in parts:
            raise DataError(f"{fname} has no test split (no 'test' group or "
                            "test_set_x/test_set_y); use split 'all' for the whole file")
        return [(_check_part(f, parts["test"], memory_budget), None)]
    if split == "val" and "val" in parts:
        return [(_check_part(f, parts["val"], memory_budget), None)]
    pd = _check_part(f, parts["train"], memory_budget)
    if "val" in parts or val_split == 0:
        if split == "val":
            raise DataError(f"{fname} has no val split (no 'val' group and val_split is 0)")
        return [(pd, None)]
    tr_rows, va_rows = holdout_ranges(pd.n, val_split, seed)
    return [(pd, tr_rows if split == "train" else va_rows)]


def validate(data: str | os.PathLike[str], x_key: str | None = None, y_key: str | None = None,
             memory_budget: int = DEFAULT_MEMORY_BUDGET,
             allow_external: bool = False) -> Dataset:
    """Open with ``val_split=0`` and read every split once (NaN / inf checked); DataError if bad."""
    ds = open_dataset(data, x_key, y_key, val_split=0.0, memory_budget=memory_budget,
                      allow_external=allow_external)
    for s in (ds.train, ds.val, ds.test):
        if s is not None:
            s.feature_stats()
    return ds
