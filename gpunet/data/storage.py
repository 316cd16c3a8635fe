"""Where a data file's datasets really live: in the file, or through a link, a virtual dataset
or external raw storage that reaches another file.

Rules (docs/architecture.md, "Data files"):

- By default a data file is read only from itself: a soft link, an external link, a
  user-defined link, a virtual dataset or a dataset with external raw storage anywhere in the
  file is refused with a one-line :class:`~gpunet.errors.DataError` naming the dataset and
  what it points to. Only metadata is read to find them; nothing outside the file is opened.
- ``allow_external=True`` (``--allow-external``) reads them, after checking each one
  without reading any data: a soft link must resolve (dangling and looping links are errors);
  an external link must reach a regular HDF5 file and a dataset stored in it; every source of
  a virtual dataset must be a regular HDF5 file holding the source dataset with enough
  elements, and the mappings must cover the whole virtual dataset (so no element is ever the
  fill value); external raw storage files must be regular files long enough for the data.
  Sources are themselves plain datasets (no second level of links or virtual datasets).
  User-defined links are always refused.
- Relative file names are looked up as HDF5 does: external links and virtual sources at the
  name if absolute, then under ``HDF5_EXT_PREFIX`` / ``HDF5_VDS_PREFIX``, then beside the
  data file, then relative to the working directory; external raw storage under
  ``HDF5_EXTFILE_PREFIX``, else relative to the working directory.
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from ..errors import DataError
from .checks import _name, _printable

#: the layouts of data stored in the file itself
PLAIN = ("contiguous", "chunked", "compact")
_LAYOUTS = {h5py.h5d.CONTIGUOUS: "contiguous", h5py.h5d.CHUNKED: "chunked",
            h5py.h5d.COMPACT: "compact"}
_HINT = "pass --allow-external (allow_external=True) to read it"
_MAX_LISTED = 8                     # sources / files named in one description
_MASK_LIMIT = 1 << 24               # elements: coverage of odd mappings checked with a mask


@dataclass
class Place:
    """Where one dataset or link lives: ``kind`` is one of :data:`PLAIN`, ``"external
    storage"``, ``"virtual"``, ``"soft link"``, ``"external link"`` or ``"user-defined link"``;
    ``target`` says what it points to (``""`` for plain storage). Both are the file's own
    strings: print them through :func:`~gpunet.data.checks._printable`."""

    key: str
    kind: str
    target: str = ""

    def what(self) -> str:
        """``"a virtual dataset reading a.h5:/X"``-style words for messages."""
        words = {"external storage": "stored in external file(s)",
                 "virtual": "a virtual dataset reading", "soft link": "a soft link to",
                 "external link": "an external link to",
                 "user-defined link": "a user-defined link"}
        target = f" {_q(self.target)}" if self.target else ""
        return f"{words.get(self.kind, self.kind)}{target}"


def _q(s: str | bytes) -> str:
    """``s`` quoted for a message, control characters escaped."""
    return "'" + _printable(s) + "'"


def _fn(f: h5py.File) -> str:
    return _printable(_name(f.filename))


def _listed(items: list[str]) -> str:
    more = len(items) - _MAX_LISTED
    return ", ".join(items[:_MAX_LISTED]) + (f", ... ({more} more)" if more > 0 else "")


def _dataset_place(key: str, ds: h5py.Dataset) -> Place:
    """The storage of a dataset reached through hard links (metadata only)."""
    dcpl = ds.id.get_create_plist()
    if dcpl.get_layout() == h5py.h5d.VIRTUAL:
        srcs = [f"{m.file_name}:{m.dset_name}" for m in ds.virtual_sources()]
        return Place(key, "virtual", _listed(list(dict.fromkeys(srcs))))
    n_ext = dcpl.get_external_count()
    if n_ext:
        files = []
        for i in range(n_ext):
            name, offset, size = dcpl.get_external(i)
            files.append(f"{name.decode('utf-8', 'replace')} from byte {offset}")
        return Place(key, "external storage", _listed(files))
    return Place(key, _LAYOUTS.get(dcpl.get_layout(), "contiguous"))


def describe(f: h5py.File) -> list[Place]:
    """Every link and dataset of ``f``, in name order, with where it lives. Nothing outside the
    file is opened (links are not followed)."""
    links: list[tuple[bytes, int]] = []

    def visit(name: bytes, info: Any) -> None:
        links.append((name, info.type))

    f.id.links.visit(visit, info=True)
    out: list[Place] = []
    for raw, kind in links:
        key = raw.decode("utf-8", "replace")
        if kind == h5py.h5l.TYPE_SOFT:
            out.append(Place(key, "soft link", f.id.links.get_val(raw).decode("utf-8", "replace")))
        elif kind == h5py.h5l.TYPE_EXTERNAL:
            fname, oname = (v.decode("utf-8", "replace") for v in f.id.links.get_val(raw))
            out.append(Place(key, "external link", f"{fname}:{oname}"))
        elif kind != h5py.h5l.TYPE_HARD:
            out.append(Place(key, "user-defined link"))
        else:
            obj = h5py.h5o.open(f.id, raw)
            if isinstance(obj, h5py.h5d.DatasetID):
                out.append(_dataset_place(key, h5py.Dataset(obj)))
    return out


# ---------------------------------------------------------------------- finding files
def _candidates(name: str, parent: str, env: str) -> list[str]:
    """Where HDF5 looks for the file ``name`` named by a link or virtual source in ``parent``."""
    origin = os.path.dirname(os.path.abspath(parent))
    base = name
    out = []
    if os.path.isabs(name):
        out.append(name)
        base = os.path.basename(name)
    for prefix in (os.environ.get(env) or "").split(os.pathsep):
        if prefix:
            out.append(os.path.join(prefix.replace("${ORIGIN}", origin), base))
    out += [os.path.join(origin, base), base]
    return out


def _regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _find_h5(name: str, parent: str, env: str, what: str) -> str:
    """The file HDF5 opens for ``name``; DataError if it is missing or not a regular file."""
    if name == ".":
        return os.path.abspath(parent)
    for cand in _candidates(name, parent, env):
        if os.path.lexists(cand):
            if not _regular(cand):
                raise DataError(f"{what}: {_q(cand)} is not a regular file")
            try:
                ok = h5py.is_hdf5(cand)
            except OSError:
                ok = False
            if ok:
                return os.path.abspath(cand)
    raise DataError(f"{what}: file {_q(name)} not found")


# ---------------------------------------------------------------------- checks (opt-in)
def _plain_dataset(obj: Any, what: str) -> h5py.Dataset:
    """``obj`` must be a dataset stored in its own file."""
    if not isinstance(obj, h5py.Dataset):
        raise DataError(f"{what} is not a dataset")
    kind = _dataset_place("", obj).kind
    if kind not in PLAIN:
        raise DataError(f"{what} is itself {kind}; only one level of indirection is read")
    return obj


def _check_soft(f: h5py.File, p: Place) -> None:
    try:
        f[p.key]
    except RuntimeError:
        raise DataError(f"{_fn(f)}: soft link {_q(p.key)} -> {_q(p.target)} loops "
                        "(too many links)") from None
    except (KeyError, OSError):
        raise DataError(f"{_fn(f)}: soft link {_q(p.key)} -> {_q(p.target)} is dangling "
                        "(nothing there)") from None


def _check_external_link(f: h5py.File, raw: bytes, p: Place) -> None:
    fname, oname = f.id.links.get_val(raw)
    what = f"{_fn(f)}: external link {_q(p.key)} -> {_q(p.target)}"
    path = _find_h5(fname.decode("utf-8", "replace"), f.filename, "HDF5_EXT_PREFIX", what)
    try:
        obj = f[p.key]
    except (KeyError, OSError, RuntimeError) as e:
        raise DataError(f"{what} cannot be followed ({_printable(str(e).strip(chr(34)))})"
                        ) from None
    if not os.path.samefile(obj.file.filename, path):
        raise DataError(f"{what} opened {_q(obj.file.filename)}, not {_q(path)}")
    _plain_dataset(obj, what)


def _covered(ds: h5py.Dataset, boxes: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> bool:
    """Whether the union of the inclusive boxes ``(lo, hi)`` is the whole of ``ds.shape``."""
    shape = ds.shape
    rest = shape[1:]
    if all(lo[1:] == (0,) * len(rest) and tuple(h + 1 for h in hi[1:]) == rest
           for lo, hi in boxes):
        reach = 0
        for lo, hi in sorted(boxes):
            if lo[0] > reach:
                return False
            reach = max(reach, hi[0] + 1)
        return reach >= (shape[0] if shape else 1)
    if math.prod(shape) > _MASK_LIMIT:
        raise DataError(f"virtual dataset {_q(ds.name)}: cannot check that its mappings cover it")
    mask = np.zeros(shape, dtype=bool)
    for lo, hi in boxes:
        mask[tuple(slice(a, b + 1) for a, b in zip(lo, hi, strict=True))] = True
    return bool(mask.all())


def _box(space: Any, what: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The bounds of a selection that must be a full box (every element in it selected)."""
    try:
        lo, hi = space.get_select_bounds()
    except ValueError:
        raise DataError(f"{what}: its selection is empty or unbounded") from None
    if space.get_select_npoints() != math.prod(b - a + 1 for a, b in zip(lo, hi, strict=True)):
        raise DataError(f"{what}: only mappings of whole blocks are read")
    return tuple(lo), tuple(hi)


def _check_source(f: h5py.File, key: str, m: Any) -> None:
    """One virtual source: its file and dataset exist, with the elements the mapping reads."""
    fn, dn = m.file_name, m.dset_name
    what = f"{_fn(f)}: virtual dataset {_q(key)} source {_q(fn + ':' + dn)}"
    if "%" in fn or "%" in dn:
        raise DataError(f"{what}: printf-style source names are not read")
    path = _find_h5(fn, f.filename, "HDF5_VDS_PREFIX", what)
    try:
        with h5py.File(path, "r") as sf:
            if not sf.id.links.exists(dn.encode()):
                raise DataError(f"{what}: no such dataset in the file")
            src = _plain_dataset(sf[dn], what)
            if m.src_space.get_select_type() == h5py.h5s.SEL_ALL:
                need, have = m.vspace.get_select_npoints(), src.size
                if need != have:
                    raise DataError(f"{what}: the source has {have} elements, the mapping "
                                    f"needs {need}")
                return
            lo, hi = _box(m.src_space, what)
            if len(hi) != src.ndim or any(h >= s for h, s in zip(hi, src.shape, strict=True)):
                raise DataError(f"{what}: the mapping reads up to {tuple(h + 1 for h in hi)} "
                                f"but the source has shape {src.shape}")
    except (OSError, KeyError, RuntimeError) as e:
        raise DataError(f"{what} cannot be read ({_printable(str(e).strip(chr(34)))})"
                        ) from None


def _check_virtual(f: h5py.File, ds: h5py.Dataset, key: str) -> None:
    if ds.maxshape != ds.shape:
        raise DataError(f"{_fn(f)}: virtual dataset {_q(key)} is resizable; only "
                        "fixed-size virtual datasets are read")
    boxes = []
    for m in ds.virtual_sources():
        boxes.append(_box(m.vspace, f"{_fn(f)}: virtual dataset {_q(key)}"))
        _check_source(f, key, m)
    if ds.size and not _covered(ds, boxes):
        raise DataError(f"{_fn(f)}: virtual dataset {_q(key)} has elements no "
                        "source maps; they would read as the fill value")


def _efile_path(name: str, parent: str) -> str:
    if os.path.isabs(name):
        return name
    prefix = os.environ.get("HDF5_EXTFILE_PREFIX")
    if prefix:
        origin = os.path.dirname(os.path.abspath(parent))
        return os.path.join(prefix.replace("${ORIGIN}", origin), name)
    return name


def _check_efiles(f: h5py.File, ds: h5py.Dataset, key: str) -> None:
    """External raw storage: every file regular and long enough for the dataset's bytes."""
    dcpl = ds.id.get_create_plist()
    left = ds.size * ds.dtype.itemsize
    for i in range(dcpl.get_external_count()):
        name, offset, size = dcpl.get_external(i)
        path = _efile_path(name.decode("utf-8", "replace"), f.filename)
        what = f"{_fn(f)}: dataset {_q(key)} external file {_q(path)}"
        if not _regular(path):
            raise DataError(f"{what} is missing or not a regular file")
        take = min(left, size) if size != h5py.h5f.UNLIMITED else left
        if os.path.getsize(path) < offset + take:
            raise DataError(f"{what} is shorter than the {offset + take} bytes the dataset "
                            "reads; the rest would read as zeros")
        left -= take
        if left <= 0:
            break


def check_file(f: h5py.File, allow_external: bool = False) -> list[Place]:
    """Refuse (or, with ``allow_external``, check) everything in ``f`` that reaches outside
    plain storage in the file; returns :func:`describe`'s places. DataError, one line."""
    try:
        places = describe(f)
    except (KeyError, OSError, RuntimeError, ValueError) as e:
        raise DataError(f"{_fn(f)}: cannot list its datasets ({_printable(str(e))})") from None
    for p in places:
        if p.kind in PLAIN:
            continue
        if not allow_external or p.kind == "user-defined link":
            hint = "; refused" if p.kind == "user-defined link" else f"; {_HINT}"
            raise DataError(f"{_fn(f)}: {_q(p.key)} is {p.what()}{hint}")
    if allow_external:
        for p in places:
            try:
                _check_place(f, p)
            except DataError:
                raise
            except (KeyError, OSError, RuntimeError, ValueError, TypeError) as e:
                raise DataError(f"{_fn(f)}: cannot check {_q(p.key)} ({_printable(str(e))})"
                                ) from None
    return places


def _check_place(f: h5py.File, p: Place) -> None:
    raw = p.key.encode("utf-8")
    if p.kind == "soft link":
        _check_soft(f, p)
    elif p.kind == "external link":
        _check_external_link(f, raw, p)
    elif p.kind == "virtual":
        _check_virtual(f, h5py.Dataset(h5py.h5o.open(f.id, raw)), p.key)
    elif p.kind == "external storage":
        _check_efiles(f, h5py.Dataset(h5py.h5o.open(f.id, raw)), p.key)
