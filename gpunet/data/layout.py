"""The layout of an HDF5 data file: which datasets hold X and y for each split.

Conventions (docs/architecture.md, "Data files"):

- Samples are axis 0; X is numeric ``(n, ...)`` with at least one feature.
- Keys are detected in the order of :data:`KEY_PAIRS` (``X/y``, ``x/y``, ``features/labels``,
  ``data/label``, ``data/labels``, ``train_set_x/train_set_y``, ``test_set_x/test_set_y``: the
  last two are the course's cat files); ``x_key`` / ``y_key`` override. Groups ``train``,
  ``val``, ``test`` are used when present, with the keys detected inside each group. In a flat
  file a ``test_set_x/test_set_y`` pair beside another pair is the test split; alone it is the
  data.
- Class names: an attribute ``classes`` on the y dataset, the X dataset, its group or the file,
  else a dataset ``list_classes`` in the group or at the root.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from ..errors import DataError
from .checks import _is_numeric, _name
from .labels import _decode_names, normalize_labels

#: (X key, y key) pairs, in detection order
KEY_PAIRS: tuple[tuple[str, str], ...] = (
    ("X", "y"), ("x", "y"), ("features", "labels"), ("data", "label"), ("data", "labels"),
    ("train_set_x", "train_set_y"), ("test_set_x", "test_set_y"),
)
#: the groups a file may split its data into, in this order
SPLITS = ("train", "val", "test")
_ONEHOT_CHUNK = 1_000_000       # rows of a large one-hot label matrix converted at once


def _dataset_paths(f: h5py.File, limit: int = 30) -> list[str]:
    out: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            out.append(name)

    f.visititems(visit)
    if len(out) > limit:
        return out[:limit] + [f"... ({len(out) - limit} more)"]
    return out


def _keys_msg(f: h5py.File) -> str:
    keys = _dataset_paths(f)
    return f"keys present: {', '.join(keys)}" if keys else "the file has no datasets"


def _has_ds(g: h5py.Group, key: str) -> bool:
    return key in g and isinstance(g[key], h5py.Dataset)


@dataclass
class _Part:
    """Where one split lives: the X and y dataset paths (y None when absent and optional)."""

    x: str
    y: str | None


def _join(group: str, key: str) -> str:
    return f"{group}/{key}" if group else key


def _where(f: h5py.File, group: str) -> str:
    return f"group {group!r} of {_name(f.filename)}" if group else _name(f.filename)


def _detect_overridden(f: h5py.File, group: str, x_key: str | None, y_key: str | None,
                       pairs: Sequence[tuple[str, str]], require_y: bool, twin: bool) -> _Part:
    """:func:`_detect` when ``x_key`` or ``y_key`` is given: those keys must exist."""
    g = f[group] if group else f
    where = _where(f, group)

    def need(key: str) -> str:
        if _has_ds(g, key):
            return key
        if twin and key.startswith("train_set_") and _has_ds(g, "test_" + key[6:]):
            return "test_" + key[6:]
        raise DataError(f"key {key!r} not found in {where}; {_keys_msg(f)}")

    xk = need(x_key) if x_key is not None else next(
        (a for a, _ in pairs if _has_ds(g, a)), None)
    yk = need(y_key) if y_key is not None else next(
        (b for _, b in pairs if _has_ds(g, b)), None)
    if xk is None:
        raise DataError(f"no X key found in {where} (tried {', '.join(a for a, _ in pairs)}); "
                        f"{_keys_msg(f)}")
    if yk is None and require_y:
        raise DataError(f"no labels key found in {where} (tried "
                        f"{', '.join(dict.fromkeys(b for _, b in pairs))}); {_keys_msg(f)}")
    return _Part(_join(group, xk), _join(group, yk) if yk else None)


def _detect(f: h5py.File, group: str, x_key: str | None, y_key: str | None,
            pairs: Sequence[tuple[str, str]] = KEY_PAIRS, require_y: bool = True,
            twin: bool = False) -> _Part | None:
    """The (X, y) datasets inside ``group`` (``""``: the root), or None when no pair is there.

    With overrides the keys must exist (DataError listing the keys present); ``twin`` lets an
    override ``train_set_*`` find ``test_set_*`` (the course's test file).
    """
    if x_key is not None or y_key is not None:
        return _detect_overridden(f, group, x_key, y_key, pairs, require_y, twin)
    g = f[group] if group else f
    for a, b in pairs:
        if _has_ds(g, a) and _has_ds(g, b):
            return _Part(_join(group, a), _join(group, b))
    if not require_y:
        for a, _ in pairs:
            if _has_ds(g, a):
                return _Part(_join(group, a), None)
    return None


def _no_keys(f: h5py.File, group: str) -> DataError:
    tried = ", ".join(f"{a}/{b}" for a, b in KEY_PAIRS)
    return DataError(f"no X/y keys found in {_where(f, group)} (tried {tried}); {_keys_msg(f)}; "
                     "use --x-key/--y-key")


def _flat_parts(f: h5py.File, x_key: str | None, y_key: str | None,
                require_y: bool) -> tuple[_Part, _Part | None, bool]:
    """A file without a ``train`` group: (the data, the course's test pair or None, whether the
    data *is* that test pair)."""
    main = _detect(f, "", x_key, y_key, KEY_PAIRS[:-1], require_y=require_y)
    course_test = None
    if x_key is None and y_key is None:
        course_test = _detect(f, "", None, None, KEY_PAIRS[-1:], require_y=require_y)
    elif x_key is not None and x_key.startswith("train_set_"):
        tw = "test_" + x_key[6:]
        ty = "test_" + y_key[6:] if y_key and y_key.startswith("train_set_") else None
        if _has_ds(f, tw) and (ty is None or _has_ds(f, ty)):
            course_test = _Part(tw, ty)
    if main is None and course_test is not None:
        return course_test, course_test, True
    if main is None:
        raise _no_keys(f, "")
    return main, course_test, False


def _find_parts(f: h5py.File, x_key: str | None, y_key: str | None,
                require_y: bool = True) -> tuple[dict[str, _Part], bool]:
    """``{"train": part, "val"?: part, "test"?: part}`` and whether test is the same as train."""
    parts: dict[str, _Part] = {}
    for s in SPLITS:
        if s in f and isinstance(f[s], h5py.Group):
            p = _detect(f, s, x_key, y_key, require_y=require_y, twin=(s == "test"))
            if p is None:
                raise _no_keys(f, s)
            parts[s] = p
    same = False
    if "train" not in parts:
        parts["train"], course_test, same = _flat_parts(f, x_key, y_key, require_y)
        if "test" not in parts and course_test is not None:
            parts["test"] = course_test
    return parts, same


def _class_names(f: h5py.File, part: _Part) -> list[str] | None:
    """Names from attribute ``classes`` (y, X, group, file) or a dataset ``list_classes``."""
    group = part.x.rsplit("/", 1)[0] if "/" in part.x else ""
    objs: list[Any] = [f[part.y]] if part.y else []
    objs += [f[part.x], f[group] if group else f, f]
    for o in objs:
        if "classes" in o.attrs:
            return _decode_names(o.attrs["classes"])
    for g in ([f[group]] if group else []) + [f]:
        if _has_ds(g, "list_classes"):
            return _decode_names(g["list_classes"][()])
    return None


@dataclass
class _PartData:
    """A part read and checked: labels (int64), one-hot width, feature shape, dtype, n."""

    part: _Part
    labels: np.ndarray
    onehot: int
    feature_shape: tuple[int, ...]
    dtype: np.dtype
    n: int
    has_labels: bool


def _read_labels(yds: h5py.Dataset, n: int, where: str) -> tuple[np.ndarray, int]:
    """Labels of ``yds`` normalized (a large one-hot matrix in row chunks)."""
    if yds.ndim == 2 and yds.shape[0] == n and yds.shape[1] > 1 and n > _ONEHOT_CHUNK:
        outs, width = [], 0
        for a in range(0, n, _ONEHOT_CHUNK):
            lab, width = normalize_labels(yds[a:a + _ONEHOT_CHUNK], min(n - a, _ONEHOT_CHUNK),
                                          where)
            outs.append(lab)
        return np.concatenate(outs), width
    try:
        y = yds[()]
    except (OSError, TypeError, ValueError) as e:
        raise DataError(f"cannot read labels {where}: {str(e).splitlines()[0]}") from None
    return normalize_labels(y, n, where)


def _check_part(f: h5py.File, part: _Part) -> _PartData:
    """Check X's dtype and shape, read and check the labels."""
    ds = f[part.x]
    fname = _name(f.filename)
    if not _is_numeric(ds.dtype):
        raise DataError(f"X {fname}:{part.x} must be numeric, got dtype {ds.dtype}")
    if ds.ndim == 0:
        raise DataError(f"X {fname}:{part.x} is a scalar; expected shape (n, ...)")
    n = int(ds.shape[0])
    fshape = tuple(int(s) for s in ds.shape[1:])
    if n == 0:
        raise DataError(f"empty dataset: {fname}:{part.x} has 0 samples")
    if int(np.prod(fshape)) == 0:
        raise DataError(f"X {fname}:{part.x} has no features (shape {ds.shape})")
    if part.y is None:
        return _PartData(part, np.full(n, -1, np.int64), 0, fshape, ds.dtype, n, False)
    labels, width = _read_labels(f[part.y], n, f"{fname}:{part.y}")
    return _PartData(part, labels, width, fshape, ds.dtype, n, True)
