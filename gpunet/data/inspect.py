"""Inspecting a data file (``gpunet data inspect``): what it holds and what the readers see.

The report is a JSON-serializable dict: the file's attributes and datasets (key, shape, dtype),
the splits and keys the readers detect (:mod:`gpunet.data.layout`), the class names and the
class counts of each split. A detection problem is reported in ``"error"`` beside the inventory
(docs/architecture.md, "Data files").
"""

from __future__ import annotations

import json
import os
from typing import Any

import h5py
import numpy as np

from ..errors import DataError
from .files import _open_h5, resolve_data_path
from .labels import _n_classes
from .layout import _check_part, _class_names, _find_parts


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


def _datasets(f: h5py.File) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            out.append({"key": name, "shape": list(obj.shape), "dtype": str(obj.dtype)})

    f.visititems(visit)
    return out


def _detected(f: h5py.File, x_key: str | None, y_key: str | None, info: dict[str, Any]) -> None:
    """Fill ``classes``, ``n_classes``, ``val_source`` and ``splits`` of ``info``; DataError if
    the file's layout is not one the readers accept."""
    parts, same = _find_parts(f, x_key, y_key)
    names = _class_names(f, parts["train"])
    pds = {s: _check_part(f, p) for s, p in parts.items()}
    n_classes = _n_classes(names, [(pd, f"in {pd.part.y}") for pd in pds.values()])
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
                 y_key: str | None = None) -> dict[str, Any]:
    """Describe an .h5: attributes, datasets (key, shape, dtype), detected splits and keys, class
    counts. A file that cannot be opened raises DataError; a detection problem is reported in
    ``"error"`` (the inventory is still returned). JSON-serializable.
    """
    path = resolve_data_path(data)
    info: dict[str, Any] = {"path": str(path), "bytes": path.stat().st_size, "attrs": {},
                            "datasets": [], "splits": {}, "classes": None, "n_classes": None,
                            "val_source": None, "error": None}
    with _open_h5(path) as f:
        info["attrs"] = {k: _jsonable(v) for k, v in f.attrs.items()}
        info["datasets"] = _datasets(f)
        try:
            _detected(f, x_key, y_key, info)
        except DataError as e:
            info["error"] = str(e)
    json.dumps(info)  # guarantees the promise above
    return info
