"""Writing .h5 data files: checked arrays, one group per split, replaced atomically.

What gpunet writes (``data make``, ``data import``): X keeps its dtype and shape (make writes
float32), labels are int64 ``(n,)``, under ``X`` / ``y`` at the root (one split) or in groups
``train`` / ``val`` / ``test``; gzip compression above 64 KiB of X; file attributes (``classes``,
``generator``, ...) as given. The file is written to a temporary file beside the target and
renamed over it (:func:`gpunet.fileio.atomic_write`): an existing file is replaced only with
``force``, and a failed write leaves it untouched (docs/architecture.md, "Data files").
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable
from typing import Any

import h5py
import numpy as np

from ..errors import DataError
from ..fileio import atomic_write
from .checks import _finite_rows, _is_numeric
from .labels import _check_label_range, normalize_labels

SplitArrays = dict[str, tuple[np.ndarray, np.ndarray]]     # split name -> (X, labels int64)


def _write_atomic(out: str | os.PathLike[str], write: Callable[[h5py.File], None],
                  force: bool) -> pathlib.Path:
    """Write an .h5 with ``write(file)`` through :func:`gpunet.fileio.atomic_write`; returns the
    absolute path. DataError if ``out`` exists (without ``force``) or cannot be written."""
    p = pathlib.Path(out).expanduser().resolve()
    if p.exists() and not force:
        raise DataError(f"{out} already exists (use --force to overwrite)")

    def write_h5(tmp: pathlib.Path) -> None:
        with h5py.File(tmp, "w") as f:
            write(f)

    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(p, write_h5)
    except OSError as e:
        raise DataError(f"cannot write {out}: {e.strerror or str(e).splitlines()[0]}") from None
    return p


def _check_xy(X: np.ndarray, y: np.ndarray, where: str,
              classes: list[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """Check arrays about to be written: numeric finite X, labels normalized to int64 (n,)."""
    X = np.asarray(X)
    if not _is_numeric(X.dtype):
        raise DataError(f"X {where} must be numeric, got dtype {X.dtype}")
    if X.ndim == 0 or X.shape[0] == 0:
        raise DataError(f"empty dataset: X {where} has no samples")
    if X.ndim == 1:
        X = X[:, None]
    if X.dtype.kind == "f":
        bad = _finite_rows(X.reshape(X.shape[0], -1))
        if bad >= 0:
            raise DataError(f"X {where} has NaN or inf (row {bad})")
    labels, width = normalize_labels(y, X.shape[0], where)
    if classes is not None:
        _check_label_range(labels, len(classes), where, f" ({len(classes)} class names)")
    return X, labels


def _write_splits(splits: SplitArrays, attrs: dict[str, Any],
                  grouped: bool) -> Callable[[h5py.File], None]:
    """A writer of ``attrs`` and of each split's ``X`` / ``y`` (in a group when ``grouped``)."""
    def write(f: h5py.File) -> None:
        for k, v in attrs.items():
            f.attrs[k] = v
        for s, (X, y) in splits.items():
            g = f.create_group(s) if grouped else f
            kw: dict[str, Any] = {"compression": "gzip"} if X.nbytes > 1 << 16 else {}
            g.create_dataset("X", data=X, **kw)
            g.create_dataset("y", data=y.astype(np.int64))
    return write


def _summary(path: pathlib.Path, splits: SplitArrays,
             classes: list[str] | None) -> dict[str, Any]:
    """What ``data make`` / ``data import`` report: the path, each split's n / shape / dtype,
    the class names."""
    return {"path": str(path),
            "splits": {s: {"n": int(X.shape[0]), "x_shape": list(X.shape), "x_dtype": str(X.dtype)}
                       for s, (X, y) in splits.items()},
            "classes": classes}


def _write_file(out: str | os.PathLike[str], splits: SplitArrays, attrs: dict[str, Any],
                 grouped: bool, force: bool, classes: list[str] | None) -> dict[str, Any]:
    """Write ``splits`` (checked) and ``attrs`` to ``out`` atomically; returns the summary."""
    p = _write_atomic(out, _write_splits(splits, attrs, grouped), force)
    return _summary(p, splits, classes)
