"""Hostile and odd data files (issue 12): files that reach outside themselves, small files that
declare huge data, labels of every dtype and value, and the CSV label column.

Every refusal is one ``error:`` line, exit code 2, no traceback, and leaves every file that
existed before byte-for-byte unchanged. The memory cases run the real command line in a
subprocess under ``hostile.MEMORY_LIMIT``.
"""

from __future__ import annotations

import json
import os
import pathlib
import re

import h5py
import numpy as np
import pytest
from gpunet.cli import app
from hostile import MEMORY_LIMIT, assert_one_line_error, run_cli, snapshot
from typer.testing import CliRunner

from gpunet import data as D
from gpunet.errors import DataError

try:
    runner = CliRunner(mix_stderr=False)   # click < 8.2
except TypeError:
    runner = CliRunner()                   # click >= 8.2 keeps stderr apart

N, D_FEAT = 60, 4


def cli(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def _xy(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    r = np.random.default_rng(seed)
    y = np.arange(N) % 3
    X = (r.normal(size=(N, D_FEAT)) + y[:, None]).astype(np.float32)
    return X, y


def write(path: pathlib.Path, **items) -> pathlib.Path:
    with h5py.File(path, "w") as f:
        for k, v in items.items():
            f[k] = v
    return path


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """A folder holding a plain source file ``src.h5`` (X, y); the working directory."""
    monkeypatch.chdir(tmp_path)
    X, y = _xy()
    write(tmp_path / "src.h5", X=X, y=y)
    return tmp_path


def _virtual(path: pathlib.Path, sources: list[tuple[str, str, int, int]],
             n: int = N, fill: float = -7.0, sliced: bool = False) -> pathlib.Path:
    """A file whose X is virtual: rows ``a:b`` from ``(file, key)`` (the whole source, or with
    ``sliced`` its first ``b - a`` rows of ``N``); y stored."""
    lay = h5py.VirtualLayout((n, D_FEAT), np.float32)
    for fn, key, a, b in sources:
        if sliced:
            lay[a:b] = h5py.VirtualSource(fn, key, (N, D_FEAT))[0:b - a]
        else:
            lay[a:b] = h5py.VirtualSource(fn, key, (b - a, D_FEAT))
    with h5py.File(path, "w") as f:
        f.create_virtual_dataset("X", lay, fillvalue=fill)
        f["y"] = _xy()[1][:n]
    return path


def _hostile_files(folder: pathlib.Path) -> dict[str, tuple[pathlib.Path, str]]:
    """kind -> (file, what the refusal names)."""
    X, y = _xy()
    (folder / "secret.txt").write_bytes(b"not yours " * 200)
    out = {}
    p = folder / "extlink.h5"
    with h5py.File(p, "w") as f:
        f["X"] = h5py.ExternalLink("src.h5", "/X")
        f["y"] = y
    out["external link"] = (p, "'X' is an external link to 'src.h5:/X'")
    p = folder / "softlink.h5"
    with h5py.File(p, "w") as f:
        f["X"], f["labels_real"] = X, y
        f["y"] = h5py.SoftLink("/labels_real")
    out["soft link"] = (p, "'y' is a soft link to '/labels_real'")
    out["virtual"] = (_virtual(folder / "virtual.h5", [("src.h5", "X", 0, N)]),
                      "'X' is a virtual dataset reading 'src.h5:X'")
    p = folder / "extstore.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("X", (N, D_FEAT), np.float32, external=[("secret.txt", 0, N * 16)])
        f["y"] = y
    out["external storage"] = (p, "'X' is stored in external file\\(s\\) 'secret.txt")
    return out


@pytest.fixture
def checkpoint(folder):
    """A tiny model trained on ``src.h5`` (same features as every file here)."""
    res = cli("train", folder / "src.h5", "--hidden", "4", "--epochs", "1", "--out",
              folder / "run", "--device", "cpu", "--quiet", "--val-split", "0")
    assert res.exit_code == 0, res.stderr
    return folder / "run" / "best.h5"


# ---------------------------------------------------------------------- outside the file
KINDS = ["external link", "soft link", "virtual", "external storage"]


@pytest.mark.parametrize("kind", KINDS)
def test_data_outside_the_file_is_refused_by_default(folder, checkpoint, kind):
    path, names = _hostile_files(folder)[kind]
    before = snapshot(folder)
    pattern = names + ".*--allow-external"
    for args in (["train", path, "--epochs", "1", "--out", folder / "r2", "--device", "cpu"],
                 ["eval", checkpoint, "--data", path, "--split", "all", "--device", "cpu"],
                 ["predict", checkpoint, "--data", path, "--out", folder / "p.csv"],
                 ["tune", path, "--trials", "1", "--out", folder / "t", "--device", "cpu"]):
        assert_one_line_error(cli(*args), pattern)
    for fn in (D.open_dataset, D.load_split, D.validate):
        with pytest.raises(DataError, match=pattern):
            fn(path)
    assert snapshot(folder) == before
    assert not (folder / "r2").exists() and not (folder / "p.csv").exists()
    # inspect shows where the data lives and refuses in one error line
    res = cli("data", "inspect", path)
    assert res.exit_code == 2 and "Traceback" not in res.stderr + res.stdout
    assert res.stderr.count("\n") == 1 and "--allow-external" in res.stderr
    assert kind in res.stdout
    info = json.loads(cli("data", "inspect", path, "--json").stdout)
    assert kind in {d["storage"] for d in info["datasets"]} and info["splits"] == {}


@pytest.mark.parametrize("kind", ["external link", "soft link", "virtual"])
def test_opt_in_reads_the_same_data_as_the_source(folder, checkpoint, kind):
    path, _ = _hostile_files(folder)[kind]
    ref = D.load_split(folder / "src.h5", "all")
    got = D.load_split(path, "all", allow_external=True)
    np.testing.assert_array_equal(got.arrays()[0], ref.arrays()[0])
    np.testing.assert_array_equal(got.arrays()[1], ref.arrays()[1])
    with D.allow_external_data():
        np.testing.assert_array_equal(D.load_split(path, "all").arrays()[0], ref.arrays()[0])
    with pytest.raises(DataError):          # the context ended
        D.load_split(path, "all")
    # streamed: every pass reopens and re-checks with the permission it was made with
    src = D.load_split(path, "all", allow_external=True, memory_budget=900)
    assert not src.in_memory
    Xs = np.concatenate([xb for xb, _ in src.batches(2)])
    np.testing.assert_array_equal(Xs, ref.arrays()[0])
    res = cli("train", path, "--hidden", "4", "--epochs", "1", "--out", folder / "ok",
              "--device", "cpu", "--quiet", "--allow-external")
    assert res.exit_code == 0, res.stderr
    res = cli("eval", checkpoint, "--data", path, "--split", "all", "--device", "cpu",
              "--json", "--allow-external")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["n"] == N
    res = cli("predict", checkpoint, "--data", path, "--out", folder / "p.csv",
              "--allow-external")
    assert res.exit_code == 0, res.stderr
    info = json.loads(cli("data", "inspect", path, "--json", "--allow-external").stdout)
    assert info["error"] is None and info["splits"]["train"]["n"] == N


def test_a_resumed_run_does_not_inherit_the_permission(folder):
    path, _ = _hostile_files(folder)["virtual"]
    res = cli("train", path, "--hidden", "4", "--epochs", "1", "--out", folder / "r",
              "--device", "cpu", "--quiet", "--allow-external", "--val-split", "0")
    assert res.exit_code == 0, res.stderr
    before = snapshot(folder)
    res = cli("train", "--resume", folder / "r" / "last.h5", "--epochs", "2", "--device", "cpu",
              "--quiet")
    assert_one_line_error(res, "virtual dataset.*--allow-external")
    assert snapshot(folder) == before


def _opt_in_error(path: pathlib.Path, pattern: str) -> None:
    before = snapshot(path.parent)
    with pytest.raises(DataError, match=pattern):
        D.load_split(path, "all", allow_external=True)
    res = cli("train", path, "--epochs", "1", "--out", path.parent / "never", "--device", "cpu",
              "--allow-external")
    assert_one_line_error(res, pattern)
    assert snapshot(path.parent) == before


def test_virtual_dataset_with_a_missing_source_never_reads_the_fill_value(folder):
    _opt_in_error(_virtual(folder / "v.h5", [("gone.h5", "X", 0, N)]),
                  "source 'gone.h5:X': file 'gone.h5' not found")
    _opt_in_error(_virtual(folder / "v.h5", [("src.h5", "nope", 0, N)]),
                  "source 'src.h5:nope': no such dataset")
    write(folder / "short.h5", X=np.ones((N - 5, D_FEAT), np.float32))
    _opt_in_error(_virtual(folder / "v.h5", [("short.h5", "X", 0, N)]),
                  "the source has .* elements, the mapping needs")
    _opt_in_error(_virtual(folder / "v.h5", [("src.h5", "X", 0, N - 10)], sliced=True),
                  "elements no source maps; they would read as the fill value")
    _opt_in_error(_virtual(folder / "v.h5", [("short.h5", "X", 0, N)], sliced=True),
                  "the mapping reads up to \\(60, 4\\) but the source has shape \\(55, 4\\)")
    _opt_in_error(_virtual(folder / "v.h5", [("src.h5", "X", 0, N - 10)]),
                  "the source has 240 elements, the mapping needs 200")
    (folder / "notes.h5").write_text("not hdf5")
    _opt_in_error(_virtual(folder / "v.h5", [("notes.h5", "X", 0, N)]), "not found")
    _virtual(folder / "inner.h5", [("src.h5", "X", 0, N)])
    _opt_in_error(_virtual(folder / "v.h5", [("inner.h5", "X", 0, N)]),
                  "is itself virtual; only one level")
    os.mkfifo(folder / "pipe.h5")
    _opt_in_error(_virtual(folder / "v.h5", [("pipe.h5", "X", 0, N)]), "not a regular file")


def test_virtual_source_is_found_beside_the_file_from_any_directory(folder, tmp_path_factory):
    v = _virtual(folder / "v.h5", [("src.h5", "X", 0, N)])
    os.chdir(tmp_path_factory.mktemp("elsewhere"))
    np.testing.assert_array_equal(D.load_split(v, "all", allow_external=True).arrays()[0],
                                  _xy()[0])


def test_dangling_and_looping_links_are_one_line_errors(folder):
    X, y = _xy()
    cases = {
        "soft link 'y' -> '/nowhere' is dangling": {"y": h5py.SoftLink("/nowhere")},
        "soft link 'y' -> '/y' loops": {"y": h5py.SoftLink("/y")},
        "external link 'X' -> 'gone.h5:/X': file 'gone.h5' not found":
            {"X": h5py.ExternalLink("gone.h5", "/X")},
        "external link 'X' -> 'src.h5:/nope' cannot be followed":
            {"X": h5py.ExternalLink("src.h5", "/nope")},
    }
    for pattern, items in cases.items():
        base = {"X": X, "y": y}
        base.update(items)
        p = write(folder / "links.h5", **base)
        _opt_in_error(p, pattern)
        assert_one_line_error(cli("train", p, "--device", "cpu"), "--allow-external")


def test_external_storage_must_be_a_regular_file_long_enough(folder):
    def ext(name: str) -> pathlib.Path:
        p = folder / "e.h5"
        with h5py.File(p, "w") as f:
            f.create_dataset("X", (N, D_FEAT), np.float32, external=[(name, 0, N * 16)])
            f["y"] = _xy()[1]
        return p

    (folder / "short.bin").write_bytes(b"\0" * 100)
    _opt_in_error(ext("short.bin"), "shorter than the 960 bytes .* would read as zeros")
    _opt_in_error(ext("missing.bin"), "missing or not a regular file")
    os.mkfifo(folder / "pipe.bin")
    _opt_in_error(ext("pipe.bin"), "missing or not a regular file")
    (folder / "ok.bin").write_bytes(_xy()[0].tobytes())
    got = D.load_split(ext("ok.bin"), "all", allow_external=True).arrays()[0]
    np.testing.assert_array_equal(got, _xy()[0])


def test_an_external_link_to_a_fifo_does_not_block(folder):
    os.mkfifo(folder / "pipe.h5")
    X, y = _xy()
    p = write(folder / "f.h5", X=h5py.ExternalLink("pipe.h5", "/X"), y=y)
    before = snapshot(folder)
    for extra in ([], ["--allow-external"]):
        r = run_cli("train", p, "--device", "cpu", "--out", folder / "r", *extra, timeout=60,
                    cwd=folder)
        assert_one_line_error(r, "pipe.h5")
    assert snapshot(folder) == before


def test_inspect_shows_where_each_dataset_lives_escaped(folder):
    X, y = _xy()
    (folder / "ok.bin").write_bytes(X.tobytes())
    p = folder / "all.h5"
    _virtual(folder / "v.h5", [("src.h5", "X", 0, N)])
    with h5py.File(p, "w") as f:
        f["X"], f["y"] = X, y
        f.create_dataset("chunky", data=X, chunks=(8, D_FEAT))
        f.create_dataset("E", (N, D_FEAT), np.float32, external=[("ok.bin", 0, N * 16)])
        f["L"] = h5py.ExternalLink("src.h5", "/X")
        f["evil\x1b[2J"] = h5py.SoftLink("/X\n\rerror: forged")
    res = cli("data", "inspect", p)
    assert res.exit_code == 2 and "\x1b" not in res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert any(ln.split()[:1] == ["X"] and ln.endswith("contiguous") for ln in lines)
    assert any(ln.split()[:1] == ["chunky"] and ln.endswith("chunked") for ln in lines)
    assert any(ln.startswith("  E ") and ln.endswith("external storage: ok.bin from byte 0")
               for ln in lines)
    assert any(ln.startswith("  L ") and ln.endswith("external link: src.h5:/X")
               for ln in lines)
    assert "  evil\\x1b[2J" in res.stdout and "soft link: /X\\n\\rerror: forged" in res.stdout
    assert not any(ln.startswith("error") for ln in lines)
    assert res.stderr.count("\n") == 1
    info = json.loads(cli("data", "inspect", folder / "v.h5", "--json").stdout)
    assert info["datasets"][0] == {"key": "X", "shape": [N, D_FEAT], "dtype": "float32",
                                   "storage": "virtual", "target": "src.h5:X"}


# ---------------------------------------------------------------------- bounded memory
def _chunked_unwritten(path: pathlib.Path, n: int, x: bool = True, y: bool = True) -> None:
    with h5py.File(path, "w") as f:
        if x:
            f.create_dataset("X", (n, 8), np.float32, chunks=(1024, 8))
        else:
            f["X"] = np.ones((N, 8), np.float32)
        if y:
            f.create_dataset("y", (n,), np.int64, chunks=(4096,))


def test_issue_reproducer_huge_label_in_a_small_file(folder):
    X, y = _xy()
    y = y.astype(np.int64)
    y[5] = 2**40
    p = write(folder / "huge.h5", X=X, y=y)
    assert p.stat().st_size < 8000
    before = snapshot(folder)
    msg = (r"label 1099511627776 in huge.h5:y \(row 5\): class ids must be below the number "
           r"of samples \(60\) or the number of classes the file names")
    for args in (["train", p, "--epochs", "1", "--out", folder / "r", "--device", "cpu"],
                 ["data", "inspect", p, "--json"]):
        r = run_cli(*args, memory=MEMORY_LIMIT, timeout=60)
        if args[0] == "train":
            assert_one_line_error(r, msg)
        else:
            assert r.code == 2 and "Traceback" not in r.stderr
            assert re.match(msg, json.loads(r.stdout)["error"])
    assert snapshot(folder) == before


def test_issue_reproducer_small_file_declaring_a_billion_labels(folder):
    p = folder / "billion.h5"
    _chunked_unwritten(p, 10**9)
    q = folder / "billion_y.h5"
    _chunked_unwritten(q, 10**9, x=False)
    assert p.stat().st_size < 20000
    before = snapshot(folder)
    for path, pattern in ((p, "X billion.h5:X has .* chunks never written"),
                          (q, "X has 60 samples but labels billion_y.h5:y have 1000000000")):
        r = run_cli("train", path, "--device", "cpu", "--out", folder / "r",
                    memory=MEMORY_LIMIT, timeout=60)
        assert_one_line_error(r, pattern)
        r = run_cli("data", "inspect", path, "--json", memory=MEMORY_LIMIT, timeout=60)
        assert r.code == 2 and "Traceback" not in r.stderr
        assert json.loads(r.stdout)["error"]
    assert snapshot(folder) == before


def test_labels_must_fit_the_memory_budget_checked_before_reading(folder, monkeypatch):
    n = 20000
    p = write(folder / "big.h5", X=np.ones((n, 2), np.float32), y=np.arange(n) % 2)
    reads = []
    orig = h5py.Dataset.__getitem__
    monkeypatch.setattr(h5py.Dataset, "__getitem__",
                        lambda self, k: reads.append(self.name) or orig(self, k))
    with pytest.raises(DataError, match=r"labels big.h5:y: 20,000 class ids take 160,000 bytes, "
                                        r"more than the memory budget \(100,000 bytes\)"):
        D.open_dataset(p, memory_budget=100_000)
    assert "/y" not in reads
    monkeypatch.undo()
    r = run_cli("train", p, "--memory-budget", "100KB", "--device", "cpu", "--out",
                folder / "r", memory=MEMORY_LIMIT, timeout=60)
    assert_one_line_error(r, "more than the memory budget")


def test_labels_are_read_in_slabs(folder, monkeypatch):
    import gpunet.data.layout as L

    monkeypatch.setattr(L, "_LABEL_SLAB_BYTES", 64)
    X, y = _xy()
    onehot = np.eye(3, dtype=np.uint8)[y]
    for labels in (y, y[:, None], y[None, :], onehot, y.astype(np.float64)):
        p = write(folder / "s.h5", X=X, y=labels)
        got = D.load_split(p, "all").labels
        np.testing.assert_array_equal(got, y)


def test_huge_declared_class_lists_are_refused_from_metadata(folder):
    X, y = _xy()
    p = folder / "names.h5"
    with h5py.File(p, "w") as f:
        f["X"], f["y"] = X, y
        f.create_dataset("list_classes", (10**9,), h5py.string_dtype(), chunks=(1024,))
    p2 = folder / "wide.h5"
    with h5py.File(p2, "w") as f:
        f["X"] = X
        f.create_dataset("y", (N, 2 * 10**6), np.uint8, chunks=(1, 2**20))
    before = snapshot(folder)
    for path, pattern in ((p, "names 1,000,000,000 classes; at most 1,000,000"),
                          (p2, "one-hot with 2,000,000 classes; at most 1,000,000")):
        r = run_cli("train", path, "--device", "cpu", "--out", folder / "r",
                    memory=MEMORY_LIMIT, timeout=60)
        assert_one_line_error(r, pattern)
    assert snapshot(folder) == before


# ---------------------------------------------------------------------- label dtypes and values
def _compound(y: np.ndarray) -> np.ndarray:
    out = np.zeros(len(y), dtype=[("a", "<i4"), ("b", "<f4")])
    out["a"] = y
    return out


BAD_LABELS = {
    "fraction": (lambda y: y + 0.5, "must be integers: found 0.5 at row 0"),
    "nan": (lambda y: np.where(y == 1, np.nan, y), "must be integers: found nan at row 1"),
    "inf": (lambda y: np.where(y == 2, np.inf, y), "must be integers: found inf at row 2"),
    "negative": (lambda y: y - 1, "must be >= 0: found -1 at row 0"),
    "bytes": (lambda y: y.astype("S3"), "must be numeric class ids, got dtype \\|S3"),
    "vlen str": (lambda y: np.array([str(v) for v in y], dtype=h5py.string_dtype()),
                 "must be numeric class ids, got dtype object"),
    "compound": (_compound, "must be numeric class ids, got dtype"),
    "complex": (lambda y: y.astype(np.complex64), "must be numeric class ids, got dtype"),
    "uint64 max": (lambda y: np.where(y == 1, 2**64 - 1, y).astype(np.uint64),
                   "label 18446744073709551615 .* is too large for a class id"),
    "float 1e300": (lambda y: np.where(y == 1, 1e300, y), "label 1e\\+300 .* too large"),
    "int 2**62": (lambda y: np.where(y == 1, 2**62, y), "class ids must be below the number"),
    "scalar": (lambda y: np.int64(3), "are a single value; expected shape \\(n,\\)"),
    "empty": (lambda y: np.zeros(0, np.int64), "X has 60 samples but labels .* have 0"),
    "3-d": (lambda y: y.reshape(N, 1, 1), "have shape \\(60, 1, 1\\)"),
    "not one-hot": (lambda y: np.ones((N, 3), np.uint8), "are not one-hot"),
    "too long": (lambda y: np.arange(N + 1) % 3, "X has 60 samples but labels .* have 61"),
}


@pytest.mark.parametrize("case", list(BAD_LABELS))
def test_bad_labels_are_one_line_errors(folder, case):
    make, pattern = BAD_LABELS[case]
    X, y = _xy()
    p = write(folder / "bad.h5", X=X, y=make(y.astype(np.float64) if case in (
        "fraction", "nan", "inf", "float 1e300") else y.astype(np.int64)))
    before = snapshot(folder)
    assert_one_line_error(cli("train", p, "--epochs", "1", "--out", folder / "r",
                              "--device", "cpu"), pattern)
    info = json.loads(cli("data", "inspect", p, "--json").stdout)
    assert info["error"] and info["splits"] == {}
    assert snapshot(folder) == before


def test_bool_enum_and_integral_float_labels_are_accepted(folder):
    X, y = _xy()
    yb = y == 1
    cases = {"bool": (yb, yb.astype(np.int64)),
             "enum": (y.astype(np.int8), y),
             "float": (y.astype(np.float32), y)}
    for name, (stored, want) in cases.items():
        p = folder / f"{name}.h5"
        with h5py.File(p, "w") as f:
            f["X"] = X
            if name == "enum":
                f.create_dataset("y", data=stored, dtype=h5py.enum_dtype(
                    {"a": 0, "b": 1, "c": 2}, basetype="i1"))
            else:
                f["y"] = stored
        np.testing.assert_array_equal(D.load_split(p, "all").labels, want)
        res = cli("train", p, "--hidden", "4", "--epochs", "1", "--out", folder / name,
                  "--device", "cpu", "--quiet")
        assert res.exit_code == 0, res.stderr


def test_unwritten_chunks_are_refused(folder):
    X, y = _xy()
    p = folder / "partial.h5"
    with h5py.File(p, "w") as f:
        ds = f.create_dataset("X", (N, D_FEAT), np.float32, chunks=(10, D_FEAT))
        ds[:30] = X[:30]
        f["y"] = y
    with pytest.raises(DataError, match="3 of 6 chunks never written; they would read as the "
                                        "fill value"):
        D.open_dataset(p)


# ---------------------------------------------------------------------- CSV label column
def test_csv_labels_not_in_the_last_column_mention_label_column(tmp_path):
    cases = {"names.csv": "species,a,b\nsetosa,1.0,2.0\nvirginica,3.5,4.25\n",
             "ids.csv": "0,1.5,2.25\n1,3.5,4.75\n"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        before = snapshot(tmp_path)
        res = cli("data", "import", tmp_path / name, "--out", tmp_path / "o.h5")
        assert_one_line_error(res, "pass --label-column NAME or INDEX")
        assert snapshot(tmp_path) == before
    res = cli("data", "import", tmp_path / "names.csv", "--out", tmp_path / "o.h5",
              "--label-column", "species")
    assert res.exit_code == 0, res.stderr
    res = cli("data", "import", tmp_path / "ids.csv", "--out", tmp_path / "o2.h5",
              "--label-column", "0", "--no-header")
    assert res.exit_code == 0, res.stderr
