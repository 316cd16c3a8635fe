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

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from ..errors import DataError
from .checks import _is_numeric, _name, _printable
from .labels import MAX_CLASSES, _check_dtype, _class_ids, _decode_names
from .sources import DEFAULT_MEMORY_BUDGET

#: (X key, y key) pairs, in detection order
KEY_PAIRS: tuple[tuple[str, str], ...] = (
    ("X", "y"), ("x", "y"), ("features", "labels"), ("data", "label"), ("data", "labels"),
    ("train_set_x", "train_set_y"), ("test_set_x", "test_set_y"),
)
#: the groups a file may split its data into, in this order
SPLITS = ("train", "val", "test")
_LABEL_SLAB_BYTES = 16 * 1024**2    # raw label bytes read at once



def _dataset_paths(f: h5py.File, limit: int = 30) -> list[str]:
    """The keys of the file's datasets (links to datasets included), escaped, at most ``limit``
    named. Called once the file's links passed :func:`gpunet.data.storage.check_file`."""
    out: list[str] = []

    def visit(name: str) -> None:
        if isinstance(f.get(name), h5py.Dataset):
            out.append(_printable(name))

    f.visit_links(visit)
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


def _check_stored(ds: h5py.Dataset, what: str) -> None:
    """DataError when part of ``ds`` was never written (its values would be the fill value):
    a chunked dataset missing chunks, a contiguous one with no storage. Metadata only."""
    if ds.size == 0 or ds.is_virtual or ds.external:
        return
    if ds.chunks is not None:
        need = math.prod(-(-s // c) for s, c in zip(ds.shape, ds.chunks, strict=True))
        have = ds.id.get_num_chunks()
        if have < need:
            raise DataError(f"{what} has {need - have:,} of {need:,} chunks never written; "
                            "they would read as the fill value")
    elif ds.id.get_storage_size() == 0:
        raise DataError(f"{what} has no stored data; it would read as the fill value")


def _read_names(obj: Any, where: str) -> list[str]:
    """Class names in an attribute (``obj`` an AttributeManager) or a dataset, after checking
    their number from the metadata."""
    if isinstance(obj, h5py.Dataset):
        size, what = obj.size, f"dataset {_printable(obj.name)}"
    else:
        size, what = obj.get_id("classes").shape, f"attribute 'classes' of {where}"
        size = math.prod(size) if size else 1
    if size > MAX_CLASSES:
        raise DataError(f"{what} names {size:,} classes; at most {MAX_CLASSES:,} are read")
    if isinstance(obj, h5py.Dataset):
        _check_stored(obj, f"class names {what}")
    try:
        return _decode_names(obj[()] if isinstance(obj, h5py.Dataset) else obj["classes"])
    except (OSError, TypeError, ValueError) as e:
        raise DataError(f"cannot read the class names in {what}: "
                        f"{_printable(str(e).splitlines()[0] if str(e) else type(e).__name__)}"
                        ) from None


def _class_names(f: h5py.File, part: _Part) -> list[str] | None:
    """Names from attribute ``classes`` (y, X, group, file) or a dataset ``list_classes``."""
    group = part.x.rsplit("/", 1)[0] if "/" in part.x else ""
    objs: list[Any] = [f[part.y]] if part.y else []
    objs += [f[part.x], f[group] if group else f, f]
    for o in objs:
        if "classes" in o.attrs:
            return _read_names(o.attrs, _printable(o.name))
    for g in ([f[group]] if group else []) + [f]:
        if _has_ds(g, "list_classes"):
            return _read_names(g["list_classes"], "")
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


def _label_form(yds: h5py.Dataset, n: int, where: str) -> str:
    """How labels ``yds`` are laid out for ``n`` samples, from its metadata: ``"rows"``
    (``(n,)``, ``(n, 1)``), ``"row"`` (``(1, n)``) or ``"onehot"`` (``(n, C)``)."""
    _check_dtype(yds.dtype, where)
    shape = yds.shape
    if len(shape) == 0:
        raise DataError(f"labels {where} are a single value; expected shape (n,)")
    if len(shape) == 1 or (len(shape) == 2 and shape[0] == n and shape[1] == 1):
        form, m = "rows", shape[0]
    elif len(shape) == 2 and shape[0] == 1 and shape[1] == n:
        form, m = "row", shape[1]
    elif len(shape) == 2 and shape[0] == n:
        form, m = "onehot", n
        if shape[1] > MAX_CLASSES:
            raise DataError(f"labels {where} are one-hot with {shape[1]:,} classes; at most "
                            f"{MAX_CLASSES:,} are read")
    elif len(shape) == 2 and 1 in shape:
        form, m = "rows", math.prod(shape)
    else:
        raise DataError(f"labels {where} have shape {shape}; expected (n,), (n, 1), (1, n) "
                        "or one-hot (n, C)")
    if m != n:
        raise DataError(f"X has {n} samples but labels {where} have {m}")
    return form


def _read_labels(yds: h5py.Dataset, n: int, where: str,
                 memory_budget: int) -> tuple[np.ndarray, int]:
    """Labels of ``yds`` as int64 class ids and the one-hot width (0 if not one-hot), read in
    slabs of at most ``_LABEL_SLAB_BYTES``; the ids (8 bytes a sample) must fit the budget.
    Shape, dtype and size are checked from the metadata before anything is read."""
    form = _label_form(yds, n, where)
    if 8 * n > memory_budget:
        raise DataError(f"labels {where}: {n:,} class ids take {8 * n:,} bytes, more than the "
                        f"memory budget ({memory_budget:,} bytes)")
    _check_stored(yds, f"labels {where}")
    width = int(yds.shape[1]) if form == "onehot" else 0
    rows = max(1, _LABEL_SLAB_BYTES // (max(width, 1) * yds.dtype.itemsize))
    out = np.empty(n, dtype=np.int64)
    for a in range(0, n, rows):
        z = min(n, a + rows)
        try:
            raw = (yds[0, a:z] if form == "row" else yds[a:z] if len(yds.shape) == 1 or
                   form == "onehot" else yds[a:z].reshape(-1))
        except (OSError, TypeError, ValueError) as e:
            raise DataError(f"cannot read labels {where}: "
                            f"{_printable(str(e).splitlines()[0] if str(e) else '')}") from None
        if form == "onehot":
            raw = _from_onehot(raw, f"labels {where} shaped {yds.shape}")
        out[a:z] = _class_ids(np.asarray(raw).reshape(-1), where, a)
    return out, width


def _from_onehot(y: np.ndarray, what: str) -> np.ndarray:
    """Rows of a one-hot matrix -> the column of each row's single 1."""
    if not (np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all()):
        raise DataError(f"{what} are not one-hot (each row one 1)")
    return np.argmax(y, axis=1)


def _check_x(f: h5py.File, part: _Part) -> h5py.Dataset:
    """X's dtype, shape and storage, from the metadata."""
    ds = f[part.x]
    what = f"X {_printable(_name(f.filename))}:{_printable(part.x)}"
    if not isinstance(ds, h5py.Dataset):
        raise DataError(f"{what} is not a dataset")
    if not _is_numeric(ds.dtype) or ds.dtype.fields is not None or ds.dtype.shape:
        raise DataError(f"{what} must be numeric, got dtype {_printable(str(ds.dtype))}")
    if ds.ndim == 0:
        raise DataError(f"{what} is a scalar; expected shape (n, ...)")
    if ds.shape[0] == 0:
        raise DataError(f"empty dataset: {what[2:]} has 0 samples")
    if math.prod(ds.shape[1:]) == 0:
        raise DataError(f"{what} has no features (shape {ds.shape})")
    _check_stored(ds, what)
    return ds


def _check_part(f: h5py.File, part: _Part,
                memory_budget: int = DEFAULT_MEMORY_BUDGET) -> _PartData:
    """Check X's dtype, shape and storage, read and check the labels (within the budget)."""
    ds = _check_x(f, part)
    n = int(ds.shape[0])
    fshape = tuple(int(s) for s in ds.shape[1:])
    if part.y is None:
        return _PartData(part, np.full(n, -1, np.int64), 0, fshape, ds.dtype, n, False)
    yds = f[part.y]
    where = f"{_printable(_name(f.filename))}:{_printable(part.y)}"
    if not isinstance(yds, h5py.Dataset):
        raise DataError(f"labels {where} are not a dataset")
    labels, width = _read_labels(yds, n, where, memory_budget)
    return _PartData(part, labels, width, fshape, ds.dtype, n, True)
