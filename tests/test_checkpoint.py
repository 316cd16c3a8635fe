"""Checkpoints: round trip, the digest's definition, the layout a model description implies,
atomic saves (also under SIGKILL), format 1 refused and upgraded, and every kind of bad file.
Hostile files (links, external storage, forged metadata) are in test_checkpoint_hostile.py."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

import gpunet as gn
from gpunet import checkpoint as ck
from gpunet.checkpoint import store, upgrade
from gpunet.data import Standardizer
from gpunet.errors import CheckpointError


def _trained_state(backend="cpu", steps=3, seed=0):
    """A small MLP with batch norm and dropout after a few Adam steps, its optimizer and a
    standardizer."""
    be = gn.get_backend(backend)
    model = gn.MLP(6, [8, 5], 3, batchnorm=True, dropout=0.2, backend=be, seed=seed)
    opt = gn.optim.make_optimizer("adam", model, lr=1e-2)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        x = rng.standard_normal((16, 6)).astype(np.float32)
        y = rng.integers(0, 3, 16)
        logits = model.forward(be.asarray(x), training=True)
        _, d = be.softmax_cross_entropy(logits, be.asarray(y))
        model.backward(d)
        opt.step()
    std = Standardizer(np.arange(6, dtype=np.float32), np.full(6, 2.0, np.float32))
    return model, opt, std


def _save(path, backend="cpu", **kw):
    model, opt, std = _trained_state(backend, **kw)
    c = ck.from_training_state(model, opt, std, config={"lr": 0.01, "hidden": [8, 5]},
                               data={"path": "x.h5", "heldout": "test"},
                               classes=["a", "b", "c"],
                               progress={"epoch": 2, "batch": 0, "step": 3})
    ck.save(path, c)
    return model, opt, std


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_round_trip_restores_everything_bit_for_bit(tmp_path):
    p = tmp_path / "a.h5"
    model, opt, std = _save(p)
    c = ck.load(p)
    assert c.format_version == ck.FORMAT_VERSION and c.gpunet_version == gn.__version__
    assert c.classes == ["a", "b", "c"] and c.epoch == 2 and c.step == 3
    assert c.config == {"lr": 0.01, "hidden": [8, 5]} and c.data["heldout"] == "test"
    m2 = ck.build_model(c, "cpu")
    for k, v in model.state_arrays().items():
        assert np.array_equal(v, m2.state_arrays()[k]), k
    assert m2.layout == model.layout
    sd = opt.state_dict()
    assert c.optimizer["name"] == "adam" and c.optimizer["t"] == sd["t"] == 3
    for k in ("m", "v"):
        assert np.array_equal(c.optimizer_state[k], sd[k])
    assert np.array_equal(c.standardizer["mean"], std.mean)
    assert np.array_equal(c.standardizer["std"], std.std)
    # the dropout generator continues where it was
    assert m2.dropout_rng.random() == model.dropout_rng.random()
    # only numbers inside, no object (pickled) data, no variable-length data anywhere (a
    # damaged global heap crashes HDF5): float32 arrays, one uint8 metadata text, and four
    # fixed-size root attributes
    with h5py.File(p, "r") as f:
        found = {}
        f.visititems(lambda name, obj: found.__setitem__(name, obj.dtype.str)
                     if isinstance(obj, h5py.Dataset) else None)
        assert set(f.attrs) == {"gpunet_format", "format_version", "gpunet_version", "digest"}
        for k in f.attrs:
            assert not h5py.check_string_dtype(f.attrs.get_id(k).dtype) or \
                h5py.check_string_dtype(f.attrs.get_id(k).dtype).length is not None, k
        meta = json.loads(f["metadata"][()].tobytes())
    assert found.pop("metadata") == "|u1"
    assert set(found.values()) == {"<f4"} and len(found) == 9  # params, 2 x 2 BN, m, v, mean, std
    assert set(meta) == {*store.JSON_ATTRS, "created"} and meta["classes"] == ["a", "b", "c"]


@pytest.mark.parametrize("direction", ["gpu_to_cpu", "cpu_to_gpu"])
def test_checkpoint_moves_between_backends(tmp_path, gpu_backend, direction):
    """Arrays are stored as host NumPy: a checkpoint written on the GPU loads on the CPU and
    the other way round, and the loaded model computes what the saved one does."""
    p = tmp_path / "x.h5"
    src, dst = (gpu_backend, "cpu") if direction == "gpu_to_cpu" else ("cpu", gpu_backend)
    model, _, _ = _save(p, backend=src)
    m2 = ck.build_model(ck.load(p), dst)
    x = np.random.default_rng(1).standard_normal((5, 6)).astype(np.float32)
    a = gn.get_backend(src).to_host(model.forward(gn.get_backend(src).asarray(x)))
    b = m2.backend.to_host(m2.forward(m2.backend.asarray(x)))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_failed_save_leaves_previous_file_intact(tmp_path, monkeypatch):
    p = tmp_path / "last.h5"
    _save(p)
    before = _sha(p)
    real = store._write_contents

    def half_then_fail(f, contents, attrs):
        f.create_dataset("junk", data=np.zeros(1000))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "_write_contents", half_then_fail)
    model, opt, std = _trained_state(steps=5)
    with pytest.raises(OSError):
        ck.save(p, ck.from_training_state(model, opt, std))
    monkeypatch.setattr(store, "_write_contents", real)
    assert _sha(p) == before
    assert ck.load(p).step == 3
    assert sorted(os.listdir(tmp_path)) == ["last.h5"]  # the temp file was removed


def test_sigkill_during_save_leaves_a_loadable_checkpoint(tmp_path):
    """A process killed (SIGKILL) in the middle of writing a checkpoint: the old file loads."""
    p = tmp_path / "last.h5"
    _save(p)
    before = _sha(p)
    script = textwrap.dedent(f"""
        import os, signal, sys
        import numpy as np
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_checkpoint import _trained_state
        from gpunet import checkpoint as ck
        from gpunet.checkpoint import store
        def write_then_die(f, contents, attrs):
            f.create_group("model").create_dataset("params", data=np.ones(200000, np.float32))
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        store._write_contents = write_then_die
        model, opt, std = _trained_state(steps=7)
        ck.save({str(p)!r}, ck.from_training_state(model, opt, std))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr.decode()
    assert _sha(p) == before
    c = ck.load(p)
    assert c.step == 3
    ck.build_model(c, "cpu")
    leftovers = [n for n in os.listdir(tmp_path) if n != "last.h5"]
    assert leftovers and all(n.startswith(".last.h5.") for n in leftovers)  # only a temp file
    for n in leftovers:  # and that partial temp file is recognised as not a checkpoint
        with pytest.raises(CheckpointError, match="not a gpunet checkpoint|truncated|corrupt"):
            ck.load(tmp_path / n)


# ---------------------------------------------------------------------- bad files
def test_missing_empty_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        ck.load(tmp_path / "nope.h5")
    (tmp_path / "empty.h5").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        ck.load(tmp_path / "empty.h5")
    with pytest.raises(CheckpointError, match="directory"):
        ck.load(tmp_path)


def test_not_hdf5(tmp_path):
    p = tmp_path / "notes.h5"
    p.write_text("this is not a checkpoint\n" * 100)
    with pytest.raises(CheckpointError, match="not an HDF5 file"):
        ck.load(p)


def test_foreign_hdf5(tmp_path):
    p = tmp_path / "data.h5"
    with h5py.File(p, "w") as f:
        f["X"] = np.zeros((4, 3))
        f["y"] = np.zeros(4)
    with pytest.raises(CheckpointError, match="not a gpunet checkpoint.*X, y"):
        ck.load(p)


def test_truncated(tmp_path):
    p = tmp_path / "t.h5"
    _save(p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        ck.load(p)


def test_newer_version(tmp_path):
    p = tmp_path / "n.h5"
    _save(p)
    with h5py.File(p, "r+") as f:
        f.attrs["format_version"] = ck.FORMAT_VERSION + 1
        f.attrs["gpunet_version"] = np.bytes_(b"9.0.0")
    with pytest.raises(CheckpointError, match=r"format version 3, written by gpunet 9\.0\.0.*"
                                              "upgrade gpunet"):
        ck.load(p)


def test_corrupt_array_fails_the_digest(tmp_path):
    p = tmp_path / "c.h5"
    _save(p)
    with h5py.File(p, "r") as f:
        off = f["model/params"].id.get_offset()
    with open(p, "r+b") as fh:
        fh.seek(off + 8)
        b = fh.read(4)
        fh.seek(off + 8)
        fh.write(bytes(x ^ 0xFF for x in b))
    with pytest.raises(CheckpointError, match="does not match its integrity digest"):
        ck.load(p)


def test_edited_metadata_fails_the_digest(tmp_path):
    """An edit that keeps the metadata valid (a class renamed, same length) is caught by the
    digest; a deleted array by the tree check."""
    p = tmp_path / "m.h5"
    _save(p)
    with h5py.File(p, "r+") as f:
        raw = f["metadata"][()].tobytes().replace(b'"a","b","c"', b'"x","b","c"')
        assert len(raw) == f["metadata"].shape[0]
        f["metadata"][...] = np.frombuffer(raw, np.uint8)
    with pytest.raises(CheckpointError, match="does not match its integrity digest"):
        ck.load(p)
    _save(p)
    with h5py.File(p, "r+") as f:
        del f["model/params"]
    with pytest.raises(CheckpointError, match="model/params is missing"):
        ck.load(p)


def test_layout_mismatch_is_reported(tmp_path):
    p = tmp_path / "l.h5"
    _save(p)
    c = ck.load(p)
    c.model["hidden"] = [9, 5]
    with pytest.raises(CheckpointError, match="layout does not match"):
        ck.build_model(c, "cpu")


# ---------------------------------------------------------------------- the digest
def _reference_digest(p) -> str:
    """The digest as docs/architecture.md ("Checkpoint format") defines it, computed here
    from the file with h5py and hashlib only."""
    with h5py.File(p, "r") as f:
        attrs = {k: f.attrs[k] for k in ("gpunet_format", "format_version", "gpunet_version")}
        attrs = {k: v.decode() if isinstance(v, bytes) else int(v) for k, v in attrs.items()}
        h = hashlib.sha256(json.dumps(attrs, sort_keys=True, separators=(",", ":")).encode()
                           + b"\n")
        paths = []
        f.visititems(lambda n, o: paths.append(n) if isinstance(o, h5py.Dataset) else None)
        for path in sorted(paths):
            a = f[path][()]
            h.update(f"{len(path)}:{path} {a.dtype.str} {a.shape[0]} {a.nbytes}\n".encode())
            h.update(a.tobytes())
        return "sha256:" + h.hexdigest(), f.attrs["digest"].decode()


def test_digest_follows_its_definition(tmp_path):
    p = tmp_path / "d.h5"
    _save(p)
    ref, stored = _reference_digest(p)
    assert ref == stored
    # and it is not a constant: another training state gives another digest
    model, opt, std = _trained_state(steps=4)
    ck.save(tmp_path / "e.h5", ck.from_training_state(model, opt, std))
    assert _reference_digest(tmp_path / "e.h5")[1] != stored


@pytest.mark.parametrize("cfg", [
    {"in_features": 6, "hidden": [8, 5], "classes": 3, "batchnorm": True, "dropout": 0.2},
    {"in_features": 6, "hidden": [8, 5], "classes": 3, "batchnorm": False, "dropout": 0.0},
    {"in_features": 3, "hidden": [], "classes": 2, "batchnorm": True},
    {"in_features": 4, "hidden": [7], "classes": 4, "batchnorm": False, "dropout": 0.5,
     "activation": "tanh"},
    {"in_features": 1, "hidden": [2, 3, 4], "classes": 9, "batchnorm": True, "dropout": 0.1,
     "activation": "sigmoid"},
])
def test_expected_layout_is_the_models_layout(cfg):
    """The layout computed from a description (without allocating) is the one the model
    builds, and the batch-norm layers the format expects statistics for are its own."""
    from gpunet.checkpoint.schema import batchnorm_layers

    m = gn.MLP.from_config(cfg, backend="cpu")
    assert ck.expected_layout(cfg) == m.layout
    expected = [f"layers.{i}.{s}" for i, _ in batchnorm_layers(cfg)
                for s in ("running_mean", "running_var")]
    assert sorted(m.state_arrays_keys()) == sorted(["params", *expected])


def test_save_refuses_what_the_format_cannot_hold(tmp_path):
    model, opt, std = _trained_state()
    bad = ck.from_training_state(model, opt, std, classes=["a", "b"])  # the model has 3
    with pytest.raises(CheckpointError, match="cannot save checkpoint .*2 classes"):
        ck.save(tmp_path / "x.h5", bad)
    deep: dict = {}
    d = deep
    for _ in range(40):
        d["k"] = {}
        d = d["k"]
    with pytest.raises(CheckpointError, match="nested more than 32 deep"):
        ck.save(tmp_path / "x.h5", ck.from_training_state(model, opt, std, extra=deep))
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------- format 1
def _write_v1(path, model, opt, std):
    """A format-1 file as gpunet 0.1.0 wrote it (JSON in variable-length string attributes,
    a crc32 on every dataset)."""
    import zlib

    c = ck.from_training_state(model, opt, std, config={"lr": 0.01}, classes=["a", "b", "c"],
                               progress={"epoch": 2, "batch": 0, "step": 3})
    with h5py.File(path, "w") as f:
        for g, arrays in (("model", c.arrays), ("optimizer", c.optimizer_state),
                          ("standardizer", c.standardizer)):
            grp = f.create_group(g)
            for name, a in arrays.items():
                grp.create_dataset(name, data=a).attrs["crc32"] = np.uint32(
                    zlib.crc32(a.tobytes()))
        for k in store.JSON_ATTRS:
            f.attrs[k] = json.dumps(getattr(c, k))
        f.attrs["gpunet_version"] = "0.1.0"
        f.attrs["created"] = "2026-01-01T00:00:00+00:00"
        f.attrs["format_version"] = np.int64(1)
        f.attrs["gpunet_format"] = "gpunet-checkpoint"


def test_format_1_is_refused_and_can_be_upgraded_once(tmp_path):
    model, opt, std = _trained_state()
    old = tmp_path / "old.h5"
    _write_v1(old, model, opt, std)
    before = _sha(old)
    with pytest.raises(CheckpointError, match=r"format version 1, which predates integrity "
                                              r"digests.*gpunet\.checkpoint\.upgrade"):
        ck.load(old)
    new = tmp_path / "new.h5"
    r = subprocess.run([sys.executable, "-m", "gpunet.checkpoint.upgrade", str(old), str(new)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    c = ck.load(new)
    assert c.format_version == 2 and c.classes == ["a", "b", "c"] and c.step == 3
    m2 = ck.build_model(c, "cpu")
    for k, v in model.state_arrays().items():
        assert np.array_equal(v, m2.state_arrays()[k]), k
    assert np.array_equal(c.optimizer_state["m"], opt.state_dict()["m"])
    assert _sha(old) == before
    # never over an existing file; a damaged old file is one line, nothing written
    with pytest.raises(CheckpointError, match="exists"):
        upgrade.upgrade(old, new)
    data = bytearray(old.read_bytes())
    with h5py.File(old, "r") as f:
        off = f["model/params"].id.get_offset()
    data[off] ^= 0xFF
    old.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="cannot upgrade .*crc32"):
        upgrade.upgrade(old, tmp_path / "new2.h5")
    assert not (tmp_path / "new2.h5").exists()
