"""Inspecting a data file (``gpunet data inspect``): what it holds and what the readers see.

The report is a JSON-serializable dict: the file's attributes and datasets (key, shape, dtype,
and where the data really lives: ``storage`` is contiguous / chunked / compact in the file,
external storage, virtual, or a soft / external / user-defined link, with its ``target``), the
splits and keys the readers detect (:mod:`gpunet.data.layout`), the class names and the class
counts of each split. A detection problem, or data outside the file that is refused or fails
its checks (:mod:`gpunet.data.storage`), is reported in ``"error"`` beside the inventory
(docs/architecture.md, "Data files"). Strings are the file's own: print them escaped.
"""

from __future__ import annotations

import json
import os
from typing import Any

import h5py
import numpy as np

from ..errors import DataError
from .checks import _printable
from .files import _allowed, _open_h5_unchecked, resolve_data_path
from .labels import _n_classes
from .layout import _check_part, _class_names, _find_parts
from .sources import DEFAULT_MEMORY_BUDGET
from .storage import PLAIN, Place, check_file, describe


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()] if value.ndim else _jsonable(value.item())
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


_ATTR_VALUES = 1000                  # attribute values shown; a longer one is summarized


def _attrs(f: h5py.File) -> dict[str, Any]:
    """The file's attributes as JSON values (a long or unreadable one summarized in words)."""
    out: dict[str, Any] = {}
    for name in f.attrs:
        try:
            aid = f.attrs.get_id(name)
            n = int(np.prod(aid.shape)) if aid.shape else 1
            if n > _ATTR_VALUES:
                out[name] = f"<{n} values of {aid.dtype}>"
                continue
            value = _jsonable(f.attrs[name])
            json.dumps(value)
        except (OSError, TypeError, ValueError, KeyError) as e:
            value = f"<unreadable: {str(e).splitlines()[0] if str(e) else type(e).__name__}>"
        out[name] = value
    return out


def _datasets(f: h5py.File, places: list[Place], follow: bool) -> list[dict[str, Any]]:
    """One entry per dataset or link; links are followed for the shape only when ``follow``
    (they passed their checks)."""
    out: list[dict[str, Any]] = []
    for p in places:
        entry: dict[str, Any] = {"key": p.key, "shape": None, "dtype": None,
                                 "storage": p.kind, "target": p.target or None}
        if p.kind in PLAIN or p.kind in ("virtual", "external storage") or follow:
            obj = f[p.key]
            if not isinstance(obj, h5py.Dataset):
                continue
            entry["shape"], entry["dtype"] = list(obj.shape), str(obj.dtype)
        out.append(entry)
    return out


def _detected(f: h5py.File, x_key: str | None, y_key: str | None, info: dict[str, Any],
              memory_budget: int) -> None:
    """Fill ``classes``, ``n_classes``, ``val_source`` and ``splits`` of ``info``; DataError if
    the file's layout is not one the readers accept."""
    parts, same = _find_parts(f, x_key, y_key)
    names = _class_names(f, parts["train"])
    pds = {s: _check_part(f, p, memory_budget) for s, p in parts.items()}
    fname = _printable(os.path.basename(f.filename))
    n_classes = _n_classes(names, [(pd, f"in {fname}:{_printable(pd.part.y)}")
                                   for pd in pds.values()])
    info["classes"] = names if names is not None else [str(i) for i in range(n_classes)]
    info["n_classes"] = n_classes
    info["val_source"] = "group" if "val" in pds else "split"
    for s, pd in pds.items():
        info["splits"][s] = {
            "x_key": pd.part.x, "y_key": pd.part.y, "n": pd.n,
            "n_features": int(np.prod(pd.feature_shape)),
            "x_shape": list(f[pd.part.x].shape), "x_dtype": str(pd.dtype),
            "y_shape": list(f[pd.part.y].shape) if pd.part.y else None,
            "labels": ("one-hot" if pd.onehot else "class ids"),
            "class_counts": np.bincount(pd.labels, minlength=n_classes).tolist(),
            "same_as_train": bool(same and s == "test"),
        }


def inspect_file(data: str | os.PathLike[str], x_key: str | None = None,
                 y_key: str | None = None, allow_external: bool = False,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET) -> dict[str, Any]:
    """Describe an .h5: attributes, datasets (key, shape, dtype, storage, target), detected
    splits and keys, class counts. A file that cannot be opened raises DataError; a detection
    problem or refused external data is reported in ``"error"`` (the inventory is still
    returned). ``allow_external`` as in :func:`~gpunet.data.open_dataset`. JSON-serializable.
    """
    path = resolve_data_path(data)
    info: dict[str, Any] = {"path": str(path), "bytes": path.stat().st_size, "attrs": {},
                            "datasets": [], "splits": {}, "classes": None, "n_classes": None,
                            "val_source": None, "error": None}
    with _open_h5_unchecked(path) as f:
        info["attrs"] = _attrs(f)
        follow = False
        try:
            info["datasets"] = _datasets(f, describe(f), follow)
            check_file(f, _allowed(allow_external))
            follow = True
            info["datasets"] = _datasets(f, describe(f), follow)
            _detected(f, x_key, y_key, info, memory_budget)
        except DataError as e:
            info["error"] = str(e)
    json.dumps(info)  # guarantees the promise above
    return info
