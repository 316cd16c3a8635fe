"""Data files: resolving a data argument to a path (bundled names included) and opening HDF5.

A data argument is a bundled dataset name (``"digits"``: ``gpunet/datasets/digits.h5``, shipped
as package data) or a path. Files are opened read-only (``'r'``), by each process for itself
(docs/architecture.md, "Data files"). Every problem raises :class:`gpunet.errors.DataError` with
a one-line message.
"""

from __future__ import annotations

import importlib.resources
import os
import pathlib

import h5py

from ..errors import DataError

#: bundled dataset names -> file name under gpunet/datasets/
BUNDLED_DATASETS: dict[str, str] = {"digits": "digits.h5"}


def _bundled_path(name: str) -> pathlib.Path:
    """Where the bundled dataset ``name`` lives in the installed package (it may be missing)."""
    return pathlib.Path(str(importlib.resources.files("gpunet") / "datasets"
                            / BUNDLED_DATASETS[name]))


def resolve_data_path(data: str | os.PathLike[str]) -> pathlib.Path:
    """``"digits"`` (a bundled name) -> the packaged file; else the path, absolute. DataError if
    there is no such file."""
    s = str(data)
    if s in BUNDLED_DATASETS:
        p = _bundled_path(s)
        if not p.is_file():
            raise DataError(f"bundled dataset {s!r} is missing from the installation ({p})")
        return p
    p = pathlib.Path(s).expanduser().resolve()
    if not p.exists():
        hint = f" (bundled datasets: {', '.join(BUNDLED_DATASETS)})" if not p.suffix else ""
        raise DataError(f"data file not found: {s}{hint}")
    if not p.is_file():
        raise DataError(f"data path is not a file: {s}")
    return p


def _open_h5(path: str | os.PathLike[str]) -> h5py.File:
    """Open read-only; DataError for a file that is missing, not HDF5 or unreadable."""
    p = str(path)
    if not os.path.isfile(p):
        raise DataError(f"data file not found: {p}")
    try:
        ok = h5py.is_hdf5(p)
    except OSError:
        ok = False
    if not ok:
        raise DataError(f"not an HDF5 file: {p}")
    try:
        return h5py.File(p, "r")
    except OSError as e:
        raise DataError(f"cannot open {p}: {str(e).splitlines()[0]}") from None
