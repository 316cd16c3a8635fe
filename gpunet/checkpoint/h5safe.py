"""Reading an untrusted HDF5 file from its metadata first, with every read bounded.

Only hard links are followed (a soft or external link is refused without being resolved, so
dangling and looping links cannot hang a load); a group's links are listed up to a cap; a
dataset is read only when it is contiguous raw storage inside the file (no virtual dataset, no
external raw storage, no filter pipeline), of the exact HDF5 type and 1-D shape expected;
attributes are read only when they are small fixed-size scalars. Variable-length data (stored in
HDF5's global heap) is never read: a corrupted heap makes HDF5 2.0 crash or spin.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from h5py import h5a, h5d, h5l, h5o, h5s, h5t

from ..errors import CheckpointError

#: the most links listed in one group / attributes on one object before giving up
MAX_LINKS = 64

#: the dataset types a checkpoint holds: NumPy dtype -> (HDF5 type, description)
TYPES = {"<f4": (h5t.IEEE_F32LE, "float32 little-endian (<f4)"), "|u1": (h5t.STD_U8LE, "uint8")}
_LINK_KIND = {h5l.TYPE_SOFT: "a soft link", h5l.TYPE_EXTERNAL: "an external link"}
_OBJ_KIND = {h5o.TYPE_GROUP: "group", h5o.TYPE_DATASET: "dataset",
             h5o.TYPE_NAMED_DATATYPE: "named datatype"}


def show(name: bytes | str) -> str:
    """A name from the file, quoted with control characters escaped, cut at 60 characters."""
    s = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
    return repr(s[:60] + ("..." if len(s) > 60 else ""))


def links(where: str, gid: Any) -> dict[str, tuple[int, Any]]:
    """``{name: (object type, object id)}`` of the hard links in group ``gid``;
    ``CheckpointError`` for a soft or external link (never resolved), or more than
    ``MAX_LINKS`` links."""
    found: list[tuple[bytes, int]] = []

    def visit(name: bytes, info: Any) -> int | None:
        found.append((name, info.type))
        return 1 if len(found) > MAX_LINKS else None

    gid.links.iterate(visit, info=True)
    if len(found) > MAX_LINKS:
        raise CheckpointError(f"checkpoint {where} is corrupt: more than {MAX_LINKS} entries "
                              "in one group")
    out: dict[str, tuple[int, Any]] = {}
    for name, kind in found:
        if kind != h5l.TYPE_HARD:
            what = _LINK_KIND.get(kind, "a user-defined link")
            raise CheckpointError(f"checkpoint {where} holds {what} {show(name)}: a checkpoint "
                                  "has no links (they can point outside it, dangle or loop); "
                                  "refused")
        obj = h5o.open(gid, name)
        out[name.decode("utf-8", "replace")] = (h5o.get_info(obj).type, obj)
    return out


def link_names(gid: Any) -> list[str]:
    """The names of the links in a group (at most ``MAX_LINKS``), none resolved."""
    names: list[bytes] = []

    def visit(name: bytes) -> int | None:
        names.append(name)
        return 1 if len(names) >= MAX_LINKS else None

    gid.links.iterate(visit)
    return [n.decode("utf-8", "replace") for n in names]


def attribute_names(where: str, oid: Any) -> list[str]:
    """The attribute names of an object (at most ``MAX_LINKS``); values are not read."""
    names: list[bytes] = []

    def visit(name: bytes) -> int | None:
        names.append(name)
        return 1 if len(names) > MAX_LINKS else None

    if h5o.get_info(oid).num_attrs:
        h5a.iterate(oid, visit)
    if len(names) > MAX_LINKS:
        raise CheckpointError(f"checkpoint {where} is corrupt: more than {MAX_LINKS} attributes")
    return [n.decode("utf-8", "replace") for n in names]


def read_int_attr(oid: Any, name: str) -> int | None:
    """A scalar integer attribute (at most 8 bytes), or None when it is something else."""
    a = h5a.open(oid, name.encode())
    t = a.get_type()
    if (t.get_class() != h5t.INTEGER or t.get_size() > 8
            or a.get_space().get_simple_extent_type() != h5s.SCALAR):
        return None
    out = np.zeros((), dtype=np.int64)
    a.read(out)
    return int(out)


def read_str_attr(oid: Any, name: str, max_len: int = 128) -> str | None:
    """A scalar fixed-length ASCII string attribute of at most ``max_len`` bytes, or None when
    it is anything else (a variable-length string lives in the global heap: not read)."""
    a = h5a.open(oid, name.encode())
    t = a.get_type()
    if (t.get_class() != h5t.STRING or t.is_variable_str() or t.get_size() > max_len
            or a.get_space().get_simple_extent_type() != h5s.SCALAR):
        return None
    out = np.zeros((), dtype=f"S{t.get_size()}")
    a.read(out)
    return out.item().decode("ascii", "replace")


def check_dataset(where: str, path: str, did: Any, dtype: str, file_size: int) -> int:
    """Check a dataset from its metadata only: contiguous storage allocated inside the file,
    no filters, external storage or virtual mapping, exactly the HDF5 type of ``dtype``
    (``TYPES``), 1-D, no attributes. Returns its length."""
    pl = did.get_create_plist()
    if pl.get_layout() == h5d.VIRTUAL:
        raise _refuse(where, path, "is a virtual dataset (it maps other files)")
    if pl.get_external_count():
        raise _refuse(where, path, "has external raw storage (its bytes live in another file)")
    if pl.get_layout() != h5d.CONTIGUOUS or pl.get_nfilters():
        raise CheckpointError(f"checkpoint {where}: {path} is not plain contiguous storage (the "
                              "format stores arrays unchunked and unfiltered); refused")
    htype, tname = TYPES[dtype]
    if not did.get_type().equal(htype):
        try:
            found = did.dtype.str
        except (TypeError, ValueError):
            found = "an unsupported type"
        raise CheckpointError(f"checkpoint {where} is corrupt: {path} has type {found}, the "
                              f"format names {tname}")
    space = did.get_space()
    if space.get_simple_extent_type() != h5s.SIMPLE or space.get_simple_extent_ndims() != 1:
        raise CheckpointError(f"checkpoint {where} is corrupt: {path} is not one-dimensional")
    if h5o.get_info(did).num_attrs:
        raise CheckpointError(f"checkpoint {where} is corrupt: {path} has attributes (the "
                              "format gives it none)")
    n = int(space.get_simple_extent_dims()[0])
    nbytes = n * htype.get_size()
    offset = did.get_offset()
    if did.get_storage_size() != nbytes or offset is None or offset + nbytes > file_size:
        raise CheckpointError(f"checkpoint {where} is corrupt: {path} declares {nbytes:,} bytes "
                              "that are not stored in the file")
    return n


def read_dataset(did: Any, n: int, dtype: str) -> np.ndarray:
    """Read a dataset ``check_dataset`` accepted (no conversion: the types match)."""
    out = np.empty((n,), dtype=dtype)
    if n:
        did.read(h5s.ALL, h5s.ALL, out)
    return out


def _refuse(where: str, path: str, why: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {where}: {path} {why}; a checkpoint never refers outside "
                           "itself; refused")
