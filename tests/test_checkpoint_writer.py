"""The checkpoint writer (h5py's low-level API, ``store._write_file``) against the h5py
high-level writer it replaced, kept below as the reference: the same file, object by object
and byte for byte, that ``checkpoint.load`` reads (and the reference's files still load); a
write failing midway leaves the previous file as it was, a partly written file is foreign, and
nothing stays open."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from h5py import h5f, h5t

import gpunet as gn
from gpunet import checkpoint as ck
from gpunet.checkpoint import store
from gpunet.checkpoint.digest import digest
from gpunet.data import Standardizer
from gpunet.errors import CheckpointError
from gpunet.packed import PackedOptimizer
from gpunet.packed.members import member_checkpoint


def reference_write_file(tmp: Path, *, contents: dict[str, np.ndarray],
                         attrs: dict[str, Any]) -> None:
    """The format-2 writer as it was before the low-level one (h5py's high-level API)."""
    with h5py.File(tmp, "w", libver=("v108", "v108")) as f:
        for g in store.GROUPS:
            f.create_group(g)
        for name, a in contents.items():
            f.create_dataset(name, data=a)
        f.attrs["digest"] = np.bytes_(digest(attrs, contents).encode("ascii"))
        f.attrs["gpunet_version"] = np.bytes_(str(attrs["gpunet_version"]).encode("ascii"))
        f.attrs["format_version"] = np.int64(attrs["format_version"])
        f.attrs["gpunet_format"] = np.bytes_(str(attrs["gpunet_format"]).encode("ascii"))
        f.flush()


def _single_checkpoint() -> ck.Checkpoint:
    """An MLP with batch norm and dropout after 3 momentum steps, with a standardizer."""
    be = gn.get_backend("cpu")
    model = gn.MLP(6, [8, 5], 3, batchnorm=True, dropout=0.2, backend=be, seed=1)
    opt = gn.optim.make_optimizer("momentum", model, lr=1e-2, beta=0.9)
    rng = np.random.default_rng(1)
    for _ in range(3):
        logits = model.forward(be.asarray(rng.standard_normal((16, 6)).astype(np.float32)),
                               training=True)
        _, d = be.softmax_cross_entropy(logits, be.asarray(rng.integers(0, 3, 16)))
        model.backward(d)
        opt.step()
    std = Standardizer(np.arange(6, dtype=np.float32), np.full(6, 2.0, np.float32))
    return ck.from_training_state(model, opt, std, config={"lr": 0.01}, data={"path": "x.h5"},
                                  classes=["a", "b", "c"],
                                  progress={"epoch": 1, "batch": 0, "step": 3})


def _member_checkpoint() -> ck.Checkpoint:
    """Member 1 of a pack of two with Adam, no standardizer (what a pack saves per member)."""
    pack = gn.PackedMLP(10, [12, 7], 4, seeds=[0, 1], backend="cpu")
    opt = PackedOptimizer.create(pack, "adam", lr=[1e-3, 2e-3])
    return member_checkpoint(pack, 1, opt, config={"lr": 2e-3}, data={"path": "d.h5"},
                             classes=list("wxyz"), progress={"epoch": 0, "batch": 0, "step": 0})


CHECKPOINTS = {"single": _single_checkpoint, "member": _member_checkpoint}


def _type(tid: Any) -> tuple:
    """An HDF5 datatype's identity: class, size, byte order or string padding and charset."""
    if isinstance(tid, h5t.TypeStringID):
        return ("string", tid.get_size(), tid.get_strpad(), tid.get_cset(), tid.is_variable_str())
    return (tid.get_class(), tid.get_size(), tid.get_order())


def _describe(path: Path) -> dict[str, Any]:
    """Everything about a file's structure and content: the superblock's version; every link
    (kind, charset); every group's and dataset's creation properties (timestamps, creation
    order, layout, filters, fill value) and attributes; every dataset's type, shape and bytes;
    the root attributes with their types, in the library's (name) order."""
    out: dict[str, Any] = {}
    with h5py.File(path, "r") as f:
        out["superblock"] = f.id.get_create_plist().get_version()
        out["root"] = _attrs(f)
        out["root crt"] = (f.id.get_create_plist().get_obj_track_times(),
                           f.id.get_create_plist().get_link_creation_order())

        def visit(name: str) -> None:
            link = f.get(name, getlink=True)
            info = f.id.links.get_info(name.encode())
            obj = f[name]
            rec: dict[str, Any] = {"link": (type(link).__name__, info.type, info.cset),
                                   "attrs": _attrs(obj)}
            plist = obj.id.get_create_plist()
            rec["track_times"] = plist.get_obj_track_times()
            if isinstance(obj, h5py.Dataset):
                rec.update(type=_type(obj.id.get_type()), shape=obj.shape, maxshape=obj.maxshape,
                           layout=plist.get_layout(), filters=plist.get_nfilters(),
                           fill_time=plist.get_fill_time(), fill=obj.fillvalue,
                           bytes=obj[()].tobytes())
            else:
                rec["link order"] = plist.get_link_creation_order()
            out[name] = rec
        f.visit(visit)
    return out


def _attrs(obj: Any) -> list[tuple]:
    out = []
    for name in obj.attrs:
        a = obj.attrs.get_id(name)
        value = obj.attrs[name]
        out.append((name, _type(a.get_type()), a.shape, type(value).__name__,
                    value.tolist() if hasattr(value, "tolist") else value))
    return out


@pytest.mark.parametrize("which", sorted(CHECKPOINTS))
def test_the_writer_makes_the_reference_writers_file(tmp_path, which):
    c = CHECKPOINTS[which]()
    attrs = store.root_attrs(gn.__version__)
    contents = store._contents(c)
    new, ref = tmp_path / "new.h5", tmp_path / "ref.h5"
    store._write_file(new, contents=contents, attrs=attrs)
    reference_write_file(ref, contents=contents, attrs=attrs)
    got, want = _describe(new), _describe(ref)
    assert got == want
    # the format's own terms, as the reference writes them: fixed-length ASCII byte strings
    # and one int64 at the root; datasets only in the three groups and "metadata"
    roots = {name: (t, v) for name, t, _, _, v in want["root"]}
    assert roots["format_version"] == ((h5t.INTEGER, 8, h5t.ORDER_LE), 2)
    assert roots["gpunet_format"][0] == ("string", 17, h5t.STR_NULLPAD, h5t.CSET_ASCII, False)
    assert roots["digest"][1] == digest(attrs, contents).encode()
    assert set(want) - {"superblock", "root", "root crt"} == {*store.GROUPS, *contents}
    assert new.read_bytes() == ref.read_bytes()
    # whatever a future object would need, the writer stays inside the HDF5 1.8 format
    assert store._plists().fapl.get_libver_bounds() == (h5f.LIBVER_V18, h5f.LIBVER_V18)
    # both load, to the same checkpoint as the one saved
    a, b = ck.load(new), ck.load(ref)
    for loaded in (a, b):
        assert loaded.model == c.model and loaded.optimizer == c.optimizer
        for group in ("arrays", "optimizer_state", "standardizer"):
            saved, read = getattr(c, group), getattr(loaded, group)
            assert sorted(saved) == sorted(read)
            for k in saved:
                assert np.array_equal(np.asarray(saved[k]).reshape(-1), read[k]), (group, k)
    assert a.created == b.created


def test_save_writes_the_reference_file_through_atomic_write(tmp_path):
    """``checkpoint.save`` (temporary file, rename) ends with the reference writer's bytes."""
    c = _member_checkpoint()
    p = ck.save(tmp_path / "last.h5", c)
    with h5py.File(p, "r") as f:  # what was saved, its "created" time included
        contents = {name: f[name][()] for name in store._contents(c)}
    ref = tmp_path / "ref.h5"
    reference_write_file(ref, contents=contents, attrs=store.root_attrs(gn.__version__))
    assert p.read_bytes() == ref.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["last.h5", "ref.h5"]


def _open_hdf5_objects() -> int:
    return h5f.get_obj_count(h5f.OBJ_ALL, h5f.OBJ_ALL)


@pytest.mark.parametrize("after", ["datasets", "digest attribute"])
def test_a_write_failing_midway_leaves_the_previous_file(tmp_path, monkeypatch, after):
    """Failing after the datasets (or after the first attribute): ``save`` raises, the target
    keeps its bytes and loads; no temporary file is left; no HDF5 object stays open; a file
    left at that point (``_write_file`` called directly) holds every dataset but no
    ``gpunet_format``, so ``load`` calls it foreign."""
    p = tmp_path / "last.h5"
    first = _single_checkpoint()
    ck.save(p, first)
    before = hashlib.sha256(p.read_bytes()).hexdigest()
    real = store._write_attrs

    def fail(fid: Any, dig: str, attrs: dict[str, Any]) -> None:
        if after == "digest attribute":
            store._scalar_attr(fid, "digest", np.bytes_(dig.encode("ascii")))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "_write_attrs", fail)
    n_open = _open_hdf5_objects()
    second = _member_checkpoint()
    with pytest.raises(OSError, match="No space left"):
        ck.save(p, second)
    assert _open_hdf5_objects() == n_open
    assert hashlib.sha256(p.read_bytes()).hexdigest() == before
    assert sorted(os.listdir(tmp_path)) == ["last.h5"]
    assert ck.load(p).step == 3

    partial = tmp_path / "partial.h5"
    contents = store._contents(second)
    with pytest.raises(OSError, match="No space left"):
        store._write_file(partial, contents=contents, attrs=store.root_attrs("x"))
    assert _open_hdf5_objects() == n_open
    with h5py.File(partial, "r") as f:
        for name, a in contents.items():
            assert np.array_equal(f[name][()], a), name
        assert set(f.attrs) == ({"digest"} if after == "digest attribute" else set())
    with pytest.raises(CheckpointError, match="not a gpunet checkpoint"):
        ck.load(partial)
    monkeypatch.setattr(store, "_write_attrs", real)
    ck.save(p, second)  # and the writer works again afterwards
    assert ck.load(p).model == second.model
