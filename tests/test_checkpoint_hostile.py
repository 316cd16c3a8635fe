"""Hostile checkpoints: files that reach outside themselves, forged structure and metadata,
and sizes the file does not hold. Each is refused with one line (``CheckpointError``) before
anything is used; through the CLI (``eval``, ``predict``, ``train --resume``) with exit code 2,
no traceback, and every file unchanged, the memory cases under ``MEMORY_LIMIT``.

Most files here are *re-signed*: written with a correct digest over what they hold, so the
refusal comes from the check under test, not from the digest.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from hostile import MEMORY_LIMIT, assert_one_line_error, run_cli, snapshot

import gpunet as gn
from gpunet import checkpoint as ck
from gpunet.checkpoint import store
from gpunet.data import Standardizer
from gpunet.errors import CheckpointError


def _good(path: Path) -> Path:
    be = gn.get_backend("cpu")
    model = gn.MLP(4, [5], 3, batchnorm=True, dropout=0.1, backend=be, seed=0)
    opt = gn.optim.make_optimizer("adam", model, lr=1e-2)
    std = Standardizer(np.zeros(4, np.float32), np.ones(4, np.float32))
    ck.save(path, ck.from_training_state(model, opt, std, classes=["a", "b", "c"],
                                         progress={"epoch": 1, "batch": 0, "step": 0}))
    return path


def _contents(p: Path) -> tuple[dict, dict[str, np.ndarray], dict]:
    """(root attributes, {dataset path: array}, parsed metadata) of a good file."""
    with h5py.File(p, "r") as f:
        attrs = {k: f.attrs[k] for k in ("gpunet_format", "format_version", "gpunet_version")}
        attrs = {k: v.decode() if isinstance(v, bytes) else int(v) for k, v in attrs.items()}
        arrays: dict[str, np.ndarray] = {}
        f.visititems(lambda n, o: arrays.__setitem__(n, o[()])
                     if isinstance(o, h5py.Dataset) else None)
    return attrs, arrays, json.loads(arrays["metadata"].tobytes())


def _forge(p: Path, meta: dict | None = None, arrays: dict | None = None, special=None,
           after=None, libver=("v108", "v108")) -> Path:
    """Rewrite ``p`` signed with a correct digest: ``meta`` replaces the metadata, ``arrays``
    replace / add arrays, ``special[path](f, path, array)`` creates that dataset its own way,
    ``after(f)`` adds anything unsigned."""
    attrs, old, old_meta = _contents(p)
    contents = dict(old)
    contents.update(arrays or {})
    if meta is not None:
        contents["metadata"] = np.frombuffer(ck.canonical_json(meta), np.uint8)
    p.unlink()
    with h5py.File(p, "w", libver=libver) as f:
        for g in store.GROUPS:
            f.create_group(g)
        for name, a in contents.items():
            if special and name in special:
                special[name](f, name, a)
            else:
                f.create_dataset(name, data=a)
        f.attrs["digest"] = np.bytes_(ck.digest(attrs, contents).encode())
        f.attrs["gpunet_version"] = np.bytes_(attrs["gpunet_version"].encode())
        f.attrs["format_version"] = np.int64(attrs["format_version"])
        f.attrs["gpunet_format"] = np.bytes_(attrs["gpunet_format"].encode())
        if after:
            after(f)
    return p


def _meta(p: Path) -> dict:
    return _contents(p)[2]


# ---------------------------------------------------------------------- reaching outside
def _external_params(tmp: Path):
    """model/params as external raw storage over a text file of the right size: its bytes
    would load as weights. Signed over those very bytes."""
    def make(p: Path) -> Path:
        n = _contents(p)[1]["model/params"].size
        secret = tmp / "secret.txt"
        secret.write_bytes((b"password=hunter2\n" * n)[: 4 * n])
        text = np.frombuffer(secret.read_bytes(), "<f4")

        def special(f, name, a):
            f.create_dataset(name, shape=a.shape, dtype="<f4", external=[(str(secret), 0,
                                                                           4 * n)])
        return _forge(p, arrays={"model/params": text}, special={"model/params": special})
    return make


def _virtual_mean(tmp: Path):
    def make(p: Path) -> Path:
        src = tmp / "src.h5"
        with h5py.File(src, "w") as f:
            f["x"] = np.arange(4, dtype="<f4")

        def special(f, name, a):
            layout = h5py.VirtualLayout(shape=a.shape, dtype="<f4")
            layout[:] = h5py.VirtualSource(str(src), "x", shape=a.shape)
            f.create_virtual_dataset(name, layout)
        return _forge(p, arrays={"standardizer/mean": np.arange(4, dtype="<f4")},
                      special={"standardizer/mean": special}, libver="latest")
    return make


def _link(kind: str):
    def make(p: Path) -> Path:
        def after(f):
            if kind == "soft":
                f["model/params_alias"] = h5py.SoftLink("/model/params")
            elif kind == "dangling":
                f["optimizer/w"] = h5py.SoftLink("/nowhere/at/all")
            elif kind == "loop":
                f["a"] = h5py.SoftLink("/b")
                f["b"] = h5py.SoftLink("/a")
            elif kind == "external":
                f["standardizer/extra"] = h5py.ExternalLink("/etc/passwd", "/x")
            elif kind == "replace":  # the declared name itself is a link elsewhere
                del f["standardizer/std"]
                f["standardizer/std"] = h5py.ExternalLink("other.h5", "/std")
        return _forge(p, after=after)
    return make


def _undeclared(what: str):
    def make(p: Path) -> Path:
        def after(f):
            if what == "10 GB dataset":
                f.create_dataset("model/junk", shape=(10 * 1024**3 // 4,), dtype="<f4")
            elif what == "group":
                f.create_group("model/sub")
            elif what == "root dataset":
                f["notes"] = np.zeros(3, "<f4")
            elif what == "renamed":  # a renamed standardizer/mean would skip standardizing
                f.move("standardizer/mean", "standardizer/maen")
            elif what == "attribute":
                f["model/params"].attrs["crc32"] = np.uint32(0)
            elif what == "root attribute":
                f.attrs["note"] = np.int64(1)
        return _forge(p, after=after)
    return make


def _stored(**kw):
    """Arrays stored in a form other than the format's (signed over what they hold)."""
    def make(p: Path) -> Path:
        a = _contents(p)[1]["model/params"]
        if "dtype" in kw:
            return _forge(p, arrays={"model/params": a.astype(kw["dtype"])})
        if kw.get("shape") == "2d":
            return _forge(p, arrays={"model/params": a.reshape(1, -1)})
        if kw.get("shape") == "short":
            return _forge(p, arrays={"model/params": a[:-1]})

        def chunked(f, name, arr):
            f.create_dataset(name, data=arr, chunks=True, compression="gzip")
        return _forge(p, special={"model/params": chunked})
    return make


def _model_edit(relayout: bool = False, **changes):
    """The model description changed (and its layout recomputed to match, if ``relayout``)."""
    def make(p: Path) -> Path:
        meta = _meta(p)
        meta["model"].update(changes)
        if relayout:
            meta["layout"] = ck.expected_layout(meta["model"])
        return _forge(p, meta=meta)
    return make


def _meta_edit(path: str, value):
    """One metadata value replaced (``a.b.c``); ``...`` deletes it."""
    def make(p: Path) -> Path:
        meta = _meta(p)
        *parents, last = path.split(".")
        d = meta
        for k in parents:
            d = d[k]
        if value is ...:
            del d[last]
        else:
            d[last] = value
        return _forge(p, meta=meta)
    return make


def _raw_meta(text: bytes):
    def make(p: Path) -> Path:
        return _forge(p, arrays={"metadata": np.frombuffer(text, np.uint8)})
    return make


def _attr(name: str, value):
    def make(p: Path) -> Path:
        with h5py.File(p, "r+") as f:
            if value is ...:
                del f.attrs[name]
            else:
                f.attrs[name] = value
        return p
    return make


def _deep(n: int):
    d: dict = {}
    for _ in range(n):
        d = {"k": d}
    return d


def cases(tmp: Path) -> dict[str, tuple]:
    """name -> (make(path), pattern of the one error line)."""
    undeclared = r"undeclared (dataset|object) '{}'; refused without reading it"
    return {
        "external raw storage": (_external_params(tmp), r"model/params has external raw storage"),
        "virtual dataset": (_virtual_mean(tmp), r"standardizer/mean is a virtual dataset"),
        "soft link": (_link("soft"), r"soft link 'params_alias'.*refused"),
        "dangling link": (_link("dangling"), r"soft link 'w'"),
        "looping links": (_link("loop"), r"soft link '[ab]'"),
        "external link": (_link("external"), r"external link 'extra'"),
        "declared name is a link": (_link("replace"), r"external link 'std'"),
        "undeclared 10 GB dataset": (_undeclared("10 GB dataset"),
                                     undeclared.format("model/junk")),
        "undeclared group": (_undeclared("group"), undeclared.format("model/sub")),
        "undeclared root dataset": (_undeclared("root dataset"), undeclared.format("notes")),
        "renamed standardizer": (_undeclared("renamed"), undeclared.format("standardizer/maen")),
        "attribute on a dataset": (_undeclared("attribute"), r"model/params has attributes"),
        "unexpected root attribute": (_undeclared("root attribute"), r"unexpected attribute"),
        "big-endian params": (_stored(dtype=">f4"), r"model/params has type >f4, the format "
                                                    r"names float32 little-endian"),
        "float64 params": (_stored(dtype="<f8"), r"model/params has type <f8"),
        "2-D params": (_stored(shape="2d"), r"model/params is not one-dimensional"),
        "params one short": (_stored(shape="short"), r"model/params has 47 values, its model "
                                                     r"description needs 48"),
        "compressed params": (_stored(), r"model/params is not plain contiguous storage"),
        "huge widths": (_model_edit(True, hidden=[2**26, 2**26]),
                        r"declares [\d,]{20,} parameters \([\d,]+ bytes\) but the file is only"),
        "widths beyond any range": (_model_edit(True, hidden=[2**40, 2**40]),
                                    r"layout\[3\]\.size: \d+ is outside"),
        "widths not matching the layout": (_model_edit(hidden=[6]), r"layout does not match"),
        "widths not matching the arrays": (_model_edit(True, hidden=[6]),
                                           r"layers\.1\.running_mean has 5 values, its model "
                                           r"description needs 6"),
        "layout not matching the model": (_meta_edit("layout", [{"layer": 0, "name": "W",
                                          "shape": [4, 5], "offset": 0, "size": 20}]),
                                          r"layout does not match"),
        "in_features a string": (_meta_edit("model.in_features", "4"),
                                 r"metadata\.model\.in_features: expected an integer"),
        "one class": (_meta_edit("model.classes", 1), r"model\.classes: 1 is outside"),
        "activation unknown": (_meta_edit("model.activation", "evil"), r"not one of relu"),
        "dropout NaN": (_meta_edit("model.dropout", float("nan")), r"model\.dropout: nan"),
        "negative epoch": (_meta_edit("progress.epoch", -1), r"progress\.epoch: -1 is outside"),
        "status unknown": (_meta_edit("progress.status", "x\x1b[31m"),
                           r"progress\.status: 'x\\x1b\[31m' is not one of"),
        "rng state too large": (_meta_edit("rng.dropout.state.state", 2**200),
                                r"rng\.dropout\.state\.state: \d+ is outside"),
        "rng of another kind": (_meta_edit("rng.dropout.bit_generator", "MT19937"),
                                r"bit_generator: 'MT19937' is not one of PCG64"),
        "optimizer unknown": (_meta_edit("optimizer.name", "evil"),
                              r"optimizer\.name: 'evil' is not one of adam"),
        "optimizer t a list": (_meta_edit("optimizer.t", [1]), r"optimizer\.t: expected an "
                                                               r"integer, found a list"),
        "classes not a list": (_meta_edit("classes", "abc"), r"classes: expected a list"),
        "class count": (_meta_edit("classes", ["a", "b"]), r"names 2 classes but its model "
                                                           r"has 3"),
        "val_split a string": (_meta_edit("data.val_split", "x"), r"data\.val_split: expected "
                                                                  r"a number"),
        "sklearn classes dtype": (_meta_edit("extra", {"sklearn": {"classes_dtype":
                                                                   "V1000000000"}}),
                                  r"classes_dtype: 'V1000000000' is not of the form"),
        "deeply nested extra": (_meta_edit("extra", _deep(40)), r"nested more than 32 deep"),
        "missing rng": (_meta_edit("rng", ...), r"metadata: 'rng' is missing"),
        "unknown metadata key": (_meta_edit("evil", 1), r"unexpected key 'evil'"),
        "metadata a list": (_raw_meta(b"[1,2,3]"), r"metadata: expected an object"),
        "metadata not JSON": (_raw_meta(b"{not json"), r"metadata is not valid JSON"),
        "metadata not text": (_raw_meta(b"\xff\xfe{}"), r"metadata is not valid JSON"),
        "metadata nested 100000 deep": (_raw_meta(b"[" * 100000 + b"]" * 100000),
                                        r"metadata is not valid JSON|nested more than"),
        "huge integer": (_raw_meta(b'{"model":' + b"9" * 10000 + b"}"),
                         r"metadata is not valid JSON"),
        "missing digest": (_attr("digest", ...), r"integrity digest is missing"),
        "digest of another file": (_attr("digest", np.bytes_(b"sha256:" + b"0" * 64)),
                                   r"does not match its integrity digest"),
        "variable-length gpunet_format": (_attr("gpunet_format", "gpunet-checkpoint"),
                                          r"bad gpunet_format"),
        "format_version a string": (_attr("format_version", np.bytes_(b"2")),
                                    r"bad or missing format_version"),
        "format 1": (_attr("format_version", np.int64(1)), r"format version 1, which predates "
                                                           r"integrity digests"),
    }


CASES = sorted(cases(Path("/nonexistent")))


@pytest.mark.parametrize("case", CASES)
def test_hostile_checkpoint_is_refused_in_one_line(tmp_path, case):
    make, pattern = cases(tmp_path)[case]
    p = make(_good(tmp_path / "c.h5"))
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError) as e:
        ck.load(p)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400, msg
    assert re.search(pattern, msg), msg
    assert snapshot(tmp_path) == before


def test_forged_files_load_when_nothing_is_wrong(tmp_path):
    """The forging helper itself writes loadable files: the refusals above are the checks'."""
    p = _good(tmp_path / "c.h5")
    ref = ck.load(p)
    c = ck.load(_forge(p))
    assert c.model == ref.model and c.classes == ref.classes
    assert np.array_equal(c.arrays["params"], ref.arrays["params"])
    c = ck.load(_model_edit(bn_eps=1e-3)(p))
    assert c.model["bn_eps"] == 1e-3


def test_undeclared_dataset_is_not_read(tmp_path, monkeypatch):
    """A 10 GB declared dataset is refused from its metadata: nothing is read from it (and
    the file stays small)."""
    from gpunet.checkpoint import h5safe

    p = _undeclared("10 GB dataset")(_good(tmp_path / "c.h5"))
    assert p.stat().st_size < 20_000
    reads = []
    real = h5safe.read_dataset
    monkeypatch.setattr(h5safe, "read_dataset", lambda d, n, t: reads.append(n) or real(d, n, t))
    with pytest.raises(CheckpointError, match="undeclared dataset 'model/junk'"):
        ck.load(p)
    assert reads == [_contents(p)[1]["metadata"].size]  # the metadata only


def test_metadata_over_the_cap_is_not_read(tmp_path, monkeypatch):
    p = _good(tmp_path / "c.h5")
    monkeypatch.setattr(store, "MAX_METADATA", 100)
    with pytest.raises(CheckpointError, match=r"bytes of metadata \(at most 100\)"):
        ck.load(p)


def test_declared_but_unstored_metadata(tmp_path):
    """A metadata dataset declaring 8 GB the file does not hold is refused before reading."""
    p = _good(tmp_path / "c.h5")

    def special(f, name, a):
        f.create_dataset(name, shape=(8 * 1024**3,), dtype="u1")
    _forge(p, special={"metadata": special})
    with pytest.raises(CheckpointError, match="metadata declares 8,589,934,592 bytes that are "
                                              "not stored in the file"):
        ck.load(p)


def test_in_memory_description_is_checked_before_allocating(tmp_path):
    """``build_model`` on a Checkpoint whose description claims huge widths: refused from
    the layout and the params it holds, before the model is built."""
    c = ck.load(_good(tmp_path / "c.h5"))
    c.model["hidden"] = [2**40]
    c.layout = ck.expected_layout(c.model)
    with pytest.raises(CheckpointError, match="params has 48 values"):
        ck.build_model(c, "cpu")


# ---------------------------------------------------------------------- through the CLI
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A data file and a real training run (``best.h5``) made with the CLI."""
    d = tmp_path_factory.mktemp("hostile_run")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0)
    with h5py.File(d / "data.h5", "w") as f:
        f["X"], f["y"] = X, y
    r = run_cli("train", d / "data.h5", "--out", d / "run", "--hidden", "5", "--epochs", "1",
                "--batch-size", "32", "--device", "cpu", "--quiet", timeout=300)
    assert r.code == 0, r.stderr
    return d


CLI_CASES = ["external raw storage", "virtual dataset", "looping links",
             "undeclared 10 GB dataset", "huge widths", "renamed standardizer",
             "rng state too large", "metadata nested 100000 deep", "format 1"]


def _argv(cmd: str, ckpt: Path, d: Path, run: Path) -> list:
    if cmd == "eval":
        return ["eval", ckpt, "--data", run / "data.h5", "--device", "cpu"]
    if cmd == "predict":
        return ["predict", ckpt, "--data", run / "data.h5", "--out", d / "pred.csv",
                "--device", "cpu"]
    return ["train", "--resume", ckpt, "--epochs", "3", "--device", "cpu"]


#: every case through ``eval``; three representative ones through the other two commands
CLI_RUNS = [(c, "eval") for c in CLI_CASES] + [
    (c, cmd) for c in ("external raw storage", "huge widths", "format 1")
    for cmd in ("predict", "train --resume")]


@pytest.mark.slow
@pytest.mark.parametrize(("case", "cmd"), CLI_RUNS)
def test_cli_refuses_hostile_checkpoint(tmp_path, run, case, cmd):
    make, pattern = cases(tmp_path)[case]
    ckpt = tmp_path / "model.h5"
    shutil.copy(run / "run" / "best.h5", ckpt)
    make(ckpt)
    before = snapshot(tmp_path, run)
    r = run_cli(*_argv(cmd, ckpt, tmp_path, run), memory=MEMORY_LIMIT, timeout=120)
    assert_one_line_error(r, pattern)
    assert snapshot(tmp_path, run) == before
    assert not (tmp_path / "pred.csv").exists()
