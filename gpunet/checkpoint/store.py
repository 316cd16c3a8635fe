"""Writing and reading a checkpoint file, format version 2 (docs/architecture.md, "Checkpoint
format").

``load`` reads in this order, so that nothing is allocated from a size the file does not hold
and nothing is used before the digest matches: the root attributes (small fixed-size scalars);
the tree of links (hard links only, only the names the format has); the ``metadata`` dataset
(checked from its HDF5 metadata, then read: at most ``MAX_METADATA`` bytes, and inside the
file); its JSON, validated against ``schema.metadata_spec``; the shapes of every array, computed
from the validated model description and checked against each dataset's metadata; only then
the arrays; then the digest over everything read.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import h5py
import numpy as np
from h5py import h5a, h5d, h5f, h5g, h5p, h5s, h5t

from ..errors import CheckpointError
from ..fileio import atomic_write
from . import h5safe, schema
from .core import Checkpoint
from .digest import PREFIX, canonical_json, digest

FORMAT_NAME = "gpunet-checkpoint"
FORMAT_VERSION = 2
#: the largest metadata (canonical JSON) a checkpoint may hold, in bytes
MAX_METADATA = 64 * 1024**2
#: the JSON attributes, each a key of the metadata object
JSON_ATTRS = ("model", "layout", "config", "data", "classes", "progress", "rng", "optimizer",
              "extra")
GROUPS = ("model", "optimizer", "standardizer")
_ROOT_ATTRS = {"gpunet_format", "format_version", "gpunet_version", "digest"}


def root_attrs(version: str) -> dict[str, Any]:
    """The root attributes the digest covers (all but ``digest``)."""
    return {"gpunet_format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "gpunet_version": version}


# ---------------------------------------------------------------------- save
def save(path: str | Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` to ``path`` atomically (``fileio.atomic_write``: a temporary file in the
    same folder, fsync, replace, folder fsync).

    Raises ``CheckpointError`` for content the format cannot hold (it is validated as a load
    would), ``OSError`` when the folder is not writable; the previous file is never harmed.
    """
    from .. import __version__

    path = Path(path)
    try:
        contents = _contents(ckpt)
    except CheckpointError as e:
        why = str(e).split(" is corrupt: ", 1)[-1].removeprefix("cannot save the checkpoint: ")
        raise CheckpointError(f"cannot save checkpoint {path}: {why}") from None
    atomic_write(path, partial(_write_file, contents=contents, attrs=root_attrs(__version__)))
    ckpt.path = str(path)
    return path


def _contents(ckpt: Checkpoint) -> dict[str, np.ndarray]:
    """``{dataset path: array}`` of everything the file holds, validated."""
    meta = {k: getattr(ckpt, k) for k in JSON_ATTRS}
    meta["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    try:
        text = canonical_json(meta)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot save the checkpoint: {e}") from None
    meta = json.loads(text)  # what a load will see (tuples become lists, ...)
    shapes = schema.validate(meta, 1 << 62, "being saved")
    out: dict[str, np.ndarray] = {"metadata": np.frombuffer(text, dtype=np.uint8)}
    groups = {"model": ckpt.arrays, "optimizer": ckpt.optimizer_state,
              "standardizer": ckpt.standardizer}
    for gname, arrays in groups.items():
        for name, arr in arrays.items():
            a = np.asarray(arr)
            if a.dtype != np.float32:
                raise TypeError(f"checkpoint array {gname}/{name} has dtype {a.dtype}; "
                                "checkpoints hold float32")
            out[f"{gname}/{name}"] = np.ascontiguousarray(a, dtype="<f4").reshape(-1)
    _expect(out, shapes, int(meta["model"]["in_features"]), "being saved")
    return out


def _write_file(tmp: Path, *, contents: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
    """Write the checkpoint file ``tmp``: the HDF5 1.8 file format (checksummed metadata, links
    stored in the object headers), no timestamps. The file is created through h5py's
    low-level API with the property lists ``h5py.File(tmp, "w", libver=("v108", "v108"))``
    uses, so it is the file h5py's high-level writer makes, byte for byte, in about half the
    time (benchmarks/checkpoint_save.py)."""
    pl = _plists()
    name = str(tmp).encode("utf-8") if os.name == "nt" else os.fsencode(tmp)  # as h5py does
    fid = h5f.create(name, h5f.ACC_TRUNC, fapl=pl.fapl, fcpl=pl.fcpl)
    with h5py.File(fid) as f:  # its close closes every object of the file, also on an error
        _write_contents(f, contents, attrs)


def _write_contents(f: h5py.File, contents: dict[str, np.ndarray], attrs: dict[str, Any]
                    ) -> None:
    """The datasets first, the identifying attributes last, so a partly written file is
    foreign. Attributes are fixed-length strings and integers (nothing in the global heap).

    Each object is made as h5py's ``create_group``, ``create_dataset(name, data=a)`` and
    ``attrs[name] = value`` make it: ASCII link names, intermediate groups created, no
    timestamps, contiguous storage, the dataspace the array's shape."""
    pl, fid = _plists(), f.id
    for g in GROUPS:
        h5g.create(fid, g.encode("ascii"), lcpl=pl.lcpl, gcpl=pl.gcpl)
    for name, a in contents.items():
        tid = _h5type(a.dtype.str)
        ds = h5d.create(fid, name.encode("ascii"), tid, h5s.create_simple(a.shape), dcpl=pl.dcpl,
                        lcpl=pl.lcpl)
        ds.write(h5s.ALL, h5s.ALL, a, mtype=tid)
        ds.close()
    _write_attrs(fid, digest(attrs, contents), attrs)


def _write_attrs(fid: Any, dig: str, attrs: dict[str, Any]) -> None:
    """The root attributes, in the order the format's writer has always used."""
    _scalar_attr(fid, "digest", np.bytes_(dig.encode("ascii")))
    _scalar_attr(fid, "gpunet_version", np.bytes_(str(attrs["gpunet_version"]).encode("ascii")))
    _scalar_attr(fid, "format_version", np.int64(attrs["format_version"]))
    _scalar_attr(fid, "gpunet_format", np.bytes_(str(attrs["gpunet_format"]).encode("ascii")))


def _scalar_attr(fid: Any, name: str, value: np.generic) -> None:
    """``fid.attrs[name] = value`` for a NumPy scalar: a scalar dataspace, the type h5py
    makes for its dtype (``S<n>``: fixed-length, null-padded ASCII; ``int64``: 64-bit LE)."""
    a = np.asarray(value)
    tid = _h5type(a.dtype.str)
    attr = h5a.create(fid, name.encode("ascii"), tid, _plists().scalar)
    attr.write(a, mtype=tid)
    attr.close()


@functools.cache
def _h5type(dtype: str) -> Any:
    """The HDF5 type h5py gives a dataset or attribute of NumPy ``dtype`` (a few distinct
    ones: ``<f4``, ``|u1``, ``<i8`` and the lengths of the string attributes)."""
    return h5t.py_create(np.dtype(dtype), logical=True)


@functools.cache
def _plists() -> SimpleNamespace:
    """The property lists of a save and the scalar dataspace of its attributes (made once;
    never changed after)."""
    fapl = h5p.create(h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5f.LIBVER_V18, h5f.LIBVER_V18)
    fcpl = h5p.create(h5p.FILE_CREATE)
    fcpl.set_obj_track_times(False)
    lcpl = h5p.create(h5p.LINK_CREATE)
    lcpl.set_create_intermediate_group(True)
    lcpl.set_char_encoding(h5t.CSET_ASCII)
    gcpl = h5p.create(h5p.GROUP_CREATE)
    gcpl.set_obj_track_times(False)
    dcpl = h5p.create(h5p.DATASET_CREATE)
    dcpl.set_obj_track_times(False)
    return SimpleNamespace(fapl=fapl, fcpl=fcpl, lcpl=lcpl, gcpl=gcpl, dcpl=dcpl,
                           scalar=h5s.create(h5s.SCALAR))


# ---------------------------------------------------------------------- load
def load(path: str | Path) -> Checkpoint:
    """Read and verify a checkpoint; ``CheckpointError`` says what is wrong with a bad file
    (one line). See the module docstring for what is checked, in which order."""
    p = Path(path)
    f = _open(p)
    try:
        with f:
            return _read(f, str(p), p.stat().st_size)
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, OverflowError,
            RecursionError, MemoryError) as e:
        raise CheckpointError(f"checkpoint {p} is truncated or corrupt ({_first_line(e)})") \
            from None


def _open(p: Path) -> h5py.File:
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    if p.is_dir():
        raise CheckpointError(f"checkpoint {p} is a directory, not a file")
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} is not a regular file")
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {p} is empty (0 bytes)")
    try:
        is_h5 = h5py.is_hdf5(str(p))
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {p}: {e.strerror or e}") from None
    if not is_h5:
        raise CheckpointError(f"{p} is not a gpunet checkpoint (not an HDF5 file)")
    try:
        return h5py.File(p, "r")
    except OSError as e:
        raise CheckpointError(f"checkpoint {p} is truncated or corrupt "
                              f"(HDF5 cannot open it: {_first_line(e)})") from None


def _check_identity(f: h5py.File, where: str) -> tuple[str, dict[str, Any]]:
    """The root attributes: a gpunet checkpoint of this format version. Returns the stored
    digest and the attributes it covers."""
    names = set(h5safe.attribute_names(where, f.id))
    if "gpunet_format" not in names:
        keys = ", ".join(h5safe.show(k)[1:-1] for k in sorted(h5safe.link_names(f.id))[:8])
        keys = keys or "none"
        raise CheckpointError(f"{where} is an HDF5 file but not a gpunet checkpoint (no "
                              f"'gpunet_format' attribute; top-level keys: {keys})")
    _check_version(f, where, names)
    if h5safe.read_str_attr(f.id, "gpunet_format", 64) != FORMAT_NAME:
        raise CheckpointError(f"checkpoint {where} is corrupt: bad gpunet_format attribute")
    extra = sorted(names - _ROOT_ATTRS)
    if extra:
        raise CheckpointError(f"checkpoint {where} is corrupt: unexpected attribute "
                              f"{h5safe.show(extra[0])} (the format names "
                              f"{', '.join(sorted(_ROOT_ATTRS))})")
    stored = h5safe.read_str_attr(f.id, "digest", 128) if "digest" in names else None
    if stored is None or not stored.startswith(PREFIX) or len(stored) != len(PREFIX) + 64:
        raise CheckpointError(f"checkpoint {where} is corrupt: its integrity digest is missing "
                              "or malformed")
    writer = h5safe.read_str_attr(f.id, "gpunet_version", 64) \
        if "gpunet_version" in names else None
    if writer is None:
        raise CheckpointError(f"checkpoint {where} is corrupt: bad or missing gpunet_version")
    return stored, root_attrs(writer)


def _check_version(f: h5py.File, where: str, names: set[str]) -> None:
    """``format_version``: this one, or a one-line error (newer: upgrade gpunet; 1: refused,
    it cannot be verified; variable-length strings of format 1 are never read)."""
    version = h5safe.read_int_attr(f.id, "format_version") if "format_version" in names else None
    if version is None or version < 1:
        raise CheckpointError(f"checkpoint {where} is corrupt: bad or missing format_version")
    if version > FORMAT_VERSION:
        writer = h5safe.read_str_attr(f.id, "gpunet_version", 64) \
            if "gpunet_version" in names else None
        writer = h5safe.show(writer or "a newer version")[1:-1]
        raise CheckpointError(f"checkpoint {where} has format version {version}, written by "
                              f"gpunet {writer}; this gpunet reads versions up to "
                              f"{FORMAT_VERSION}: upgrade gpunet")
    if version == 1:
        raise CheckpointError(
            f"checkpoint {where} has format version 1, which predates integrity digests, so it "
            "cannot be verified and is refused; if you trust the file, convert it once with "
            f"'python -m gpunet.checkpoint.upgrade {where} NEW.h5', or train again")


def _read(f: h5py.File, where: str, file_size: int) -> Checkpoint:
    stored, attrs = _check_identity(f, where)
    tree = _tree(f, where)
    meta_id = tree.pop("metadata")
    meta_len = h5safe.check_dataset(where, "metadata", meta_id, "|u1", file_size)
    if meta_len > MAX_METADATA:
        raise CheckpointError(f"checkpoint {where} is corrupt: {meta_len:,} bytes of metadata "
                              f"(at most {MAX_METADATA:,})")
    raw = h5safe.read_dataset(meta_id, meta_len, "|u1")
    try:
        meta = json.loads(raw.tobytes().decode("ascii"))
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"checkpoint {where} is corrupt: its metadata is not valid JSON "
                              f"({_first_line(e)[:80]})") from None
    shapes = schema.validate(meta, file_size, where)
    d = int(meta["model"]["in_features"])
    if "standardizer/mean" in tree or "standardizer/std" in tree:
        shapes.update({"standardizer/mean": (d,), "standardizer/std": (d,)})
    lengths = _check_arrays(tree, shapes, where, file_size)
    arrays = {"metadata": raw}
    for name, n in lengths.items():
        arrays[name] = h5safe.read_dataset(tree[name], n, "<f4")
    if digest(attrs, arrays) != stored:
        raise CheckpointError(f"checkpoint {where} is corrupt: its content does not match its "
                              "integrity digest (a changed byte, name, type or attribute)")
    return _checkpoint(meta, arrays, attrs["gpunet_version"], where)


def _tree(f: h5py.File, where: str) -> dict[str, Any]:
    """``{path: dataset id}`` of every dataset, the tree checked against the format: the root
    holds ``metadata`` and the groups ``model``, ``optimizer``, ``standardizer``; each group
    holds datasets only. Nothing undeclared is opened beyond its object header."""
    dataset, group = h5safe.h5o.TYPE_DATASET, h5safe.h5o.TYPE_GROUP
    root = h5safe.links(where, f.id)
    expected = {"metadata": dataset, **{g: group for g in GROUPS}}
    for name, (kind, _) in root.items():
        if expected.get(name) != kind:
            raise CheckpointError(f"checkpoint {where} holds an undeclared object "
                                  f"{h5safe.show(name)}; refused without reading it")
    missing = sorted(set(expected) - set(root))
    if missing:
        raise CheckpointError(f"checkpoint {where} is corrupt: {missing[0]} is missing")
    out: dict[str, Any] = {"metadata": root["metadata"][1]}
    for g in GROUPS:
        gid = root[g][1]
        if h5safe.attribute_names(where, gid):
            raise CheckpointError(f"checkpoint {where} is corrupt: group {g!r} has attributes")
        for name, (kind, oid) in h5safe.links(where, gid).items():
            if kind != dataset:
                raise CheckpointError(f"checkpoint {where} holds an undeclared object "
                                      f"{h5safe.show(g + '/' + name)}; refused without reading "
                                      "it")
            out[f"{g}/{name}"] = oid
    return out


def _check_arrays(tree: dict[str, Any], shapes: dict[str, tuple[int, ...]], where: str,
                  file_size: int) -> dict[str, int]:
    """Each array dataset against its expected shape, from metadata only; undeclared ones
    are refused unread. Returns ``{path: length}``."""
    for name in sorted(tree):
        if name not in shapes:
            raise CheckpointError(
                f"checkpoint {where} holds an undeclared dataset {h5safe.show(name)}; refused "
                "without reading it (a checkpoint holds only the arrays its model names)")
    _expect(tree, shapes, None, where)
    lengths = {}
    for name in sorted(tree):
        n = h5safe.check_dataset(where, name, tree[name], "<f4", file_size)
        if (n,) != shapes[name]:
            raise CheckpointError(f"checkpoint {where} is corrupt: {name} has {n:,} values, its "
                                  f"model description needs {shapes[name][0]:,}")
        lengths[name] = n
    if sum(4 * n for n in lengths.values()) > file_size:
        raise CheckpointError(f"checkpoint {where} is corrupt: its arrays declare more bytes "
                              "than the file holds")
    return lengths


def _expect(arrays: dict[str, Any], shapes: dict[str, tuple[int, ...]], d: int | None,
            where: str) -> None:
    """Every expected array is present (and the standardizer, if any, is complete)."""
    if d is not None and ("standardizer/mean" in arrays or "standardizer/std" in arrays):
        shapes = {**shapes, "standardizer/mean": (d,), "standardizer/std": (d,)}
    for name in sorted(shapes):
        if name not in arrays:
            raise CheckpointError(f"checkpoint {where} is corrupt: {name} is missing")
    if d is not None:
        for name in sorted(arrays):
            if name != "metadata" and (name not in shapes
                                       or tuple(arrays[name].shape) != shapes[name]):
                raise CheckpointError(f"cannot save the checkpoint: {name} has shape "
                                      f"{arrays[name].shape}, expected {shapes.get(name)}")


def _checkpoint(meta: dict[str, Any], arrays: dict[str, np.ndarray], writer: str,
                where: str) -> Checkpoint:
    groups: dict[str, dict[str, np.ndarray]] = {g: {} for g in GROUPS}
    for path, a in arrays.items():
        if path != "metadata":
            g, name = path.split("/", 1)
            groups[g][name] = a
    return Checkpoint(
        model=meta["model"], layout=meta["layout"], arrays=groups["model"],
        optimizer=meta["optimizer"], optimizer_state=groups["optimizer"],
        standardizer=groups["standardizer"], config=meta["config"], data=meta["data"],
        classes=list(meta["classes"]), progress=meta["progress"], rng=meta["rng"],
        extra=meta["extra"], format_version=FORMAT_VERSION,
        gpunet_version=writer, created=meta["created"], path=where)


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__
