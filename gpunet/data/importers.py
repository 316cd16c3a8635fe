"""Importing other formats (``gpunet data import``): ``.npz`` archives and CSV / TSV tables.

Both write an .h5 the readers accept (:mod:`gpunet.data.writing`): X keeps its dtype and shape
(CSV: float32 ``(n, d)``), labels int64 ``(n,)``, class names in the attribute ``classes``, the
source file's name in ``source``. Nothing is unpickled: an ``.npz`` is loaded with
``allow_pickle=False`` (docs/architecture.md, "Data files").
"""

from __future__ import annotations

import csv
import os
import pathlib
import zipfile
from typing import Any

import numpy as np

from ..errors import DataError
from .checks import _name
from .labels import _decode_names
from .layout import KEY_PAIRS, SPLITS
from .writing import _check_xy, _write_file

_NPZ_SPLIT_KEYS = {s: ([f"x_{s}", f"X_{s}"], [f"y_{s}"]) for s in SPLITS}
_LABEL_NAMES = ("label", "labels", "y", "target", "class")


# ---------------------------------------------------------------------------- .npz
def _load_npz(src: str | os.PathLike[str]) -> tuple[pathlib.Path, np.lib.npyio.NpzFile]:
    sp = pathlib.Path(src).expanduser()
    if not sp.is_file():
        raise DataError(f"file not found: {src}")
    try:
        npz = np.load(sp, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"cannot read {src} as .npz: {str(e).splitlines()[0]}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"{src} is a single .npy array, not an .npz archive of named arrays")
    return sp, npz


def _npz_array(npz: np.lib.npyio.NpzFile, src: str | os.PathLike[str], k: str) -> np.ndarray:
    """Array ``k``; DataError for a pickled object array or an unreadable one."""
    try:
        return npz[k]
    except ValueError as e:
        if "pickle" in str(e):
            raise DataError(f"{src}: array {k!r} is a pickled object array; refusing "
                            "it (allow_pickle=False)") from None
        raise DataError(f"{src}: cannot read array {k!r}: {e}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{src}: cannot read array {k!r}: {e}") from None


def _npz_pairs(keys: list[str], src: str | os.PathLike[str], x_key: str | None,
               y_key: str | None) -> dict[str, tuple[str, str]]:
    """Split (``""``: one flat pair) -> (X key, y key) in the archive."""
    def missing() -> DataError:
        return DataError(f"no X/y arrays found in {src} (tried x_train/y_train, "
                         f"{', '.join(f'{a}/{b}' for a, b in KEY_PAIRS)}); "
                         f"keys present: {', '.join(keys) or 'none'}")

    if x_key is not None or y_key is not None:
        for k in (x_key, y_key):
            if k is not None and k not in keys:
                raise DataError(f"key {k!r} not found in {src}; keys present: "
                                f"{', '.join(keys) or 'none'}")
        xk = x_key or next((a for a, _ in KEY_PAIRS if a in keys), None)
        yk = y_key or next((b for _, b in KEY_PAIRS if b in keys), None)
        if xk is None or yk is None:
            raise missing()
        return {"": (xk, yk)}
    pairs: dict[str, tuple[str, str]] = {}
    for s, (xs, ys) in _NPZ_SPLIT_KEYS.items():
        xk = next((k for k in xs if k in keys), None)
        yk = next((k for k in ys if k in keys), None)
        if xk and yk:
            pairs[s] = (xk, yk)
    if pairs and "train" not in pairs:
        raise DataError(f"{src} has {', '.join(pairs)} arrays but no x_train/y_train")
    if not pairs:
        found = next(((a, b) for a, b in KEY_PAIRS if a in keys and b in keys), None)
        if found is None:
            raise missing()
        pairs[""] = found
    return pairs


def import_npz(src: str | os.PathLike[str], out: str | os.PathLike[str],
               x_key: str | None = None, y_key: str | None = None,
               classes: list[str] | None = None, force: bool = False) -> dict[str, Any]:
    """Convert an ``.npz`` (loaded with ``allow_pickle=False``) to an .h5 at ``out``.

    Layout: ``x_train``/``y_train`` (also ``X_train``; and ``_val``, ``_test``) become groups
    ``train`` / ``val`` / ``test``; otherwise one pair found by the usual key order (or
    ``x_key`` / ``y_key``) becomes root ``X`` / ``y``. X keeps its dtype and shape; labels are
    written int64 ``(n,)``. Class names: ``classes``, else an array ``classes`` or
    ``list_classes`` in the file.
    """
    sp, npz = _load_npz(src)
    with npz:
        keys = list(npz.files)
        pairs = _npz_pairs(keys, src, x_key, y_key)
        if classes is None:
            for k in ("classes", "list_classes"):
                if k in keys:
                    classes = _decode_names(_npz_array(npz, src, k))
                    break
        splits = {}
        for s, (xk, yk) in pairs.items():
            X, y = _check_xy(_npz_array(npz, src, xk), _npz_array(npz, src, yk),
                             f"{_name(sp)}:{xk}/{yk}", classes)
            splits[s or "all"] = (X, y)
    attrs: dict[str, Any] = {"source": _name(sp), "generator": "gpunet data import"}
    if classes is not None:
        attrs["classes"] = list(classes)
    return _write_file(out, splits, attrs, grouped="" not in pairs, force=force, classes=classes)


# ---------------------------------------------------------------------------- CSV
def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _read_rows(sp: pathlib.Path, src: str | os.PathLike[str],
               delimiter: str | None) -> list[list[str]]:
    """The non-blank rows; DataError if unreadable or empty."""
    delim = delimiter or ("\t" if sp.suffix.lower() == ".tsv" else ",")
    try:
        with open(sp, newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.reader(fh, delimiter=delim) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read {src} as CSV: {str(e).splitlines()[0]}") from None
    if not rows:
        raise DataError(f"empty dataset: {src} has no rows")
    return rows


def _label_index(label_column: str | int | None, names: list[str] | None, ncol: int,
                 src: str | os.PathLike[str]) -> int:
    """The label column's index (see :func:`import_csv`)."""
    if label_column is None:
        return next((names.index(c) for c in _LABEL_NAMES if names and c in names), ncol - 1)
    if isinstance(label_column, int) or str(label_column).lstrip("-").isdigit():
        lc = int(label_column)
        if not -ncol <= lc < ncol:
            raise DataError(f"label column {lc} is out of range for {ncol} columns")
        return lc % ncol
    if names is None or label_column not in names:
        raise DataError(f"label column {label_column!r} not found in {src}; columns: "
                        f"{', '.join(names) if names else '(no header)'}")
    return names.index(str(label_column))


def _features(body: list[list[str]], cols: list[int], names: list[str] | None, first_line: int,
              src: str | os.PathLike[str]) -> np.ndarray:
    """float32 ``(rows, len(cols))``; DataError naming the line and column of a non-number."""
    X = np.empty((len(body), len(cols)), dtype=np.float32)
    for i, r in enumerate(body):
        for jj, j in enumerate(cols):
            try:
                X[i, jj] = float(r[j])
            except ValueError:
                col = names[j] if names else str(j)
                raise DataError(f"{src} line {i + first_line}, column {col!r}: "
                                f"{r[j]!r} is not a number") from None
    return X


def _labels(raw: list[str], classes: list[str] | None,
            src: str | os.PathLike[str]) -> tuple[np.ndarray, list[str] | None]:
    """Numeric labels as floats (checked later), else class names numbered in sorted order (or
    the order of ``classes``); returns them and the class names."""
    if all(_is_number(v) for v in raw):
        return np.array([float(v) for v in raw]), classes
    if classes is None:
        classes = sorted(set(raw))
    index = {c: k for k, c in enumerate(classes)}
    unknown = next((v for v in raw if v not in index), None)
    if unknown is not None:
        raise DataError(f"label {unknown!r} in {src} is not one of the classes "
                        f"{', '.join(classes)}")
    return np.array([index[v] for v in raw], dtype=np.int64), classes


def import_csv(src: str | os.PathLike[str], out: str | os.PathLike[str],
               label_column: str | int | None = None, delimiter: str | None = None,
               header: bool | None = None, classes: list[str] | None = None,
               force: bool = False) -> dict[str, Any]:
    """Convert a CSV (one sample a row) to an .h5 with root ``X`` float32 ``(n, d)`` and ``y``.

    ``label_column``: a column name or index (negative counts from the end); default the column
    named label / labels / y / target / class, else the last one. ``header``: None detects it
    (a first row with text where the second row has numbers). ``delimiter``: default ``,``
    (tab for ``.tsv``). Non-numeric labels are class names, numbered in sorted order (or in the
    order of ``classes``). The whole file is parsed in memory.
    """
    sp = pathlib.Path(src).expanduser()
    if not sp.is_file():
        raise DataError(f"file not found: {src}")
    rows = _read_rows(sp, src, delimiter)
    if header is None:
        header = len(rows) > 1 and any(
            not _is_number(a) and _is_number(b) for a, b in zip(rows[0], rows[1], strict=False))
    names = [c.strip() for c in rows[0]] if header else None
    body = rows[1:] if header else rows
    if not body:
        raise DataError(f"empty dataset: {src} has a header but no rows")
    ncol = len(rows[0])
    if ncol < 2:
        raise DataError(f"{src} has {ncol} column; need features and a label column")
    for i, r in enumerate(body):
        if len(r) != ncol:
            raise DataError(f"{src} line {i + 1 + bool(header)} has {len(r)} columns, "
                            f"expected {ncol}")
    lc = _label_index(label_column, names, ncol, src)
    feat_cols = [j for j in range(ncol) if j != lc]
    try:
        X = _features(body, feat_cols, names, 1 + bool(header), src)
        y, classes = _labels([r[lc].strip() for r in body], classes, src)
        X, labels = _check_xy(X, y, _name(sp), classes)
    except DataError as e:
        if label_column is not None or (names and any(c in names for c in _LABEL_NAMES)):
            raise
        col = repr(names[lc]) if names else "the last column"
        raise DataError(f"{e} (labels were read from {col}; if they are in another column, "
                        "pass --label-column NAME or INDEX)") from None
    attrs: dict[str, Any] = {"source": _name(sp), "generator": "gpunet data import"}
    if classes is not None:
        attrs["classes"] = list(classes)
    if names is not None:
        attrs["feature_names"] = [names[j] for j in feat_cols]
    return _write_file(out, {"all": (X, labels)}, attrs, grouped=False, force=force,
                       classes=classes)
