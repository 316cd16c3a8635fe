"""Labels: accepted shapes, class ids, class names and the number of classes.

Labels may be ``(n,)``, ``(n, 1)``, ``(1, n)`` or one-hot ``(n, C)``; their dtype is an
integer, a float or bool (``False``/``True`` are classes 0 and 1); they are integer-valued
(floats that are integral are accepted), ``>= 0`` and below 2**63, and come out as int64
``(n,)`` class ids. Strings, compound, variable-length and complex dtypes are refused.
Class names come from the file (an attribute ``classes`` or a dataset ``list_classes``); then
``n_classes = len(classes)`` and every label must be below it; otherwise ``n_classes`` is the
largest label over the splits + 1 (at least the one-hot width), and every label must be below
the number of labelled samples in the file: with n samples at most n distinct classes can be
present, so a larger id is an error, not a reason to allocate. A file names, and a one-hot
matrix is, at most :data:`MAX_CLASSES` classes (docs/architecture.md, "Data files").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError
from .checks import _is_numeric, _printable

if TYPE_CHECKING:
    from .layout import _PartData

#: the most classes a file may name (attribute ``classes``, dataset ``list_classes``) or a
#: one-hot label matrix may have
MAX_CLASSES = 1_000_000
_ID_LIMIT = 2**63                   # class ids must fit int64


def _decode_names(value: Any) -> list[str]:
    """Class names stored as bytes or str, any shape -> a list of str."""
    arr = np.asarray(value).reshape(-1)
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            for v in arr.tolist()]


def _flatten_labels(y: np.ndarray, n: int, where: str) -> tuple[np.ndarray, int]:
    """Any accepted label shape -> (a 1-D view or array, one-hot width or 0)."""
    if y.ndim == 1:
        return y, 0
    if y.ndim == 2 and y.shape[0] == n and y.shape[1] == 1:
        return y[:, 0], 0
    if y.ndim == 2 and y.shape[0] == 1 and y.shape[1] == n:
        return y[0], 0
    if y.ndim == 2 and y.shape[0] == n:
        ok = np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all()
        if not ok:
            raise DataError(f"labels {where} shaped {y.shape} are not one-hot (each row one 1)")
        return np.argmax(y, axis=1), int(y.shape[1])
    if y.ndim == 2 and (y.shape[0] == 1 or y.shape[1] == 1):
        return y.reshape(-1), 0
    raise DataError(f"labels {where} have shape {y.shape}; expected (n,), (n, 1), (1, n) "
                    "or one-hot (n, C)")


def _check_dtype(dtype: np.dtype, where: str) -> None:
    """DataError unless ``dtype`` can hold class ids (bool, integer or float, plain)."""
    if not _is_numeric(dtype) or dtype.fields is not None or dtype.shape:
        raise DataError(f"labels {where} must be numeric class ids, got dtype "
                        f"{_printable(str(dtype))}")


def _class_ids(flat: np.ndarray, where: str, offset: int = 0) -> np.ndarray:
    """1-D labels -> int64 class ids; DataError naming the first bad value and its row
    (``offset`` is the row of ``flat[0]``)."""
    if flat.dtype.kind == "b":
        return flat.astype(np.int64)
    if flat.dtype.kind == "f":
        bad = ~np.isfinite(flat) | (flat != np.round(flat))
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"labels {where} must be integers: found {flat[i].item()!r} at "
                            f"row {offset + i}")
    if flat.size and flat.min() < 0:
        i = int(np.argmin(flat))
        raise DataError(f"labels {where} must be >= 0: found {flat[i].item()!r} at row "
                        f"{offset + i}")
    if flat.size and flat.max() >= _ID_LIMIT:
        i = int(np.argmax(flat))
        raise DataError(f"label {flat[i].item()!r} {where} (row {offset + i}) is too large "
                        "for a class id")
    return flat.astype(np.int64)


def normalize_labels(y: np.ndarray, n: int, where: str) -> tuple[np.ndarray, int]:
    """Labels of any accepted shape -> (int64 ``(n,)``, one-hot width or 0); DataError if bad.

    ``n`` is the number of samples in X (it tells ``(1, n)`` from ``(n, 1)``).
    """
    y = np.asarray(y)
    _check_dtype(y.dtype, where)
    if y.ndim == 0:
        raise DataError(f"labels {where} are a single value; expected shape (n,)")
    flat, width = _flatten_labels(y, n, where)
    if flat.shape[0] != n:
        raise DataError(f"X has {n} samples but labels {where} have {flat.shape[0]}")
    if width > MAX_CLASSES:
        raise DataError(f"labels {where} are one-hot with {width} classes; at most "
                        f"{MAX_CLASSES} are read")
    return _class_ids(flat, where), width


def _check_label_range(labels: np.ndarray, n_classes: int, where: str, why: str = "") -> None:
    """DataError naming the first label ``>= n_classes`` (``why`` is appended to the message)."""
    if labels.size and int(labels.max()) >= n_classes:
        i = int(np.argmax(labels >= n_classes))
        raise DataError(f"label {int(labels[i])} {where} (row {i}) is out of range for "
                        f"{n_classes} classes{why}")


def _check_named(labels: np.ndarray, names: list[str], where: str) -> None:
    """Every label below ``len(names)``, the number of classes the file names."""
    _check_label_range(labels, len(names), where, f" (the file names {len(names)} classes)")


def _check_unnamed(labels: np.ndarray, n_samples: int, where: str) -> None:
    """Without class names every label must be below ``n_samples``, the labelled samples."""
    if labels.size and int(labels.max()) >= n_samples:
        i = int(np.argmax(labels >= n_samples))
        raise DataError(f"label {int(labels[i])} {where} (row {i}): class ids must be below "
                        f"the number of samples ({n_samples}) or the number of classes the "
                        "file names (attribute 'classes' or dataset 'list_classes')")


def _n_classes(names: list[str] | None, pds: list[tuple[_PartData, str]],
               extra_samples: int = 0) -> int:
    """``len(names)`` (every labelled part checked against it), else max label + 1 over the
    parts, at least the widest one-hot width; without names every label is checked to be
    below the labelled samples of the parts (+ ``extra_samples``, a validation file's)."""
    if names is not None:
        for pd, where in pds:
            if pd.has_labels:
                _check_named(pd.labels, names, where)
        return len(names)
    n_samples = sum(pd.n for pd, _ in pds if pd.has_labels) + int(extra_samples)
    for pd, where in pds:
        if pd.has_labels and not pd.onehot:
            _check_unnamed(pd.labels, n_samples, where)
    top = max((int(pd.labels.max()) + 1 if pd.has_labels else 0) for pd, _ in pds)
    return max([top] + [pd.onehot for pd, _ in pds])
