"""Data files: resolving a data argument to a path (bundled names included) and opening HDF5.

A data argument is a bundled dataset name (``"digits"``: ``gpunet/datasets/digits.h5``, shipped
as package data) or a path. Files are opened read-only (``'r'``), by each process for itself,
and refused when anything in them reaches outside the file (links, virtual datasets, external
raw storage) unless external data is allowed (:mod:`gpunet.data.storage`;
docs/architecture.md, "Data files"). Every problem raises :class:`gpunet.errors.DataError` with
a one-line message.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import pathlib
from collections.abc import Iterator
from contextvars import ContextVar

import h5py

from ..errors import DataError
from .checks import _printable
from .storage import check_file

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
        raise DataError(f"data file not found: {_printable(s)}{hint}")
    if not p.is_file():
        raise DataError(f"data path is not a file: {_printable(s)}")
    return p


_ALLOWED: ContextVar[bool] = ContextVar("gpunet_allow_external_data", default=False)


@contextlib.contextmanager
def allow_external_data(allowed: bool = True) -> Iterator[None]:
    """Within the block, every data file is read as if ``allow_external=True`` were passed
    (when ``allowed``): links, virtual datasets and external raw storage are followed after
    the checks of :mod:`gpunet.data.storage`. A source captures the setting when it is made."""
    token = _ALLOWED.set(bool(allowed) or _ALLOWED.get())
    try:
        yield
    finally:
        _ALLOWED.reset(token)


def _allowed(allow_external: bool) -> bool:
    """``allow_external``, or True inside :func:`allow_external_data`."""
    return bool(allow_external) or _ALLOWED.get()


def _open_h5(path: str | os.PathLike[str], allow_external: bool = False) -> h5py.File:
    """Open read-only and check where its data lives (:func:`gpunet.data.storage.check_file`);
    DataError for a file that is missing, not HDF5, unreadable or reaching outside itself."""
    f = _open_h5_unchecked(path)
    try:
        check_file(f, _allowed(allow_external))
    except BaseException:
        f.close()
        raise
    return f


def _open_h5_unchecked(path: str | os.PathLike[str]) -> h5py.File:
    """Open read-only; DataError for a file that is missing, not HDF5 or unreadable."""
    p = str(path)
    if not os.path.isfile(p):  # a FIFO or a device is not a data file (opening one can block)
        raise DataError(f"data file not found: {_printable(p)}")
    try:
        ok = h5py.is_hdf5(p)
    except OSError:
        ok = False
    if not ok:
        raise DataError(f"not an HDF5 file: {_printable(p)}")
    try:
        return h5py.File(p, "r")
    except OSError as e:
        raise DataError(f"cannot open {_printable(p)}: {_printable(str(e).splitlines()[0])}"
                        ) from None
