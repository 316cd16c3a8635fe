"""``gpunet data make|import|inspect`` through typer's CliRunner."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from gpunet.cli.data import data_app
from typer.testing import CliRunner

try:
    runner = CliRunner(mix_stderr=False)   # click < 8.2
except TypeError:
    runner = CliRunner()                   # click >= 8.2 keeps stderr apart


def invoke(*args: str):
    return runner.invoke(data_app, list(args))


def check_error(res, text: str) -> None:
    """Exit code 2, one line ``error: ...`` on stderr, no traceback."""
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    assert text in res.stderr
    assert "Traceback" not in res.output + res.stderr


def test_make_then_inspect(tmp_path):
    out = tmp_path / "blobs.h5"
    res = invoke("make", "--kind", "blobs", "--n", "200", "--classes", "4", "--features", "3",
                 "--seed", "1", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith(f"wrote {out}: train 160 x [3] float32, test 40")
    res = invoke("inspect", str(out), "--json")
    assert res.exit_code == 0
    info = json.loads(res.stdout)
    assert info["splits"]["train"]["n"] == 160 and info["n_classes"] == 4
    assert info["splits"]["test"]["class_counts"] == [10, 10, 10, 10]
    res = invoke("inspect", str(out))
    assert "train: train/X / train/y: n=160, features=3" in res.stdout
    check_error(invoke("make", "--out", str(out)), "already exists (use --force to overwrite)")
    assert invoke("make", "--kind", "spirals", "--out", str(out), "--force").exit_code == 0
    with h5py.File(out) as f:
        assert f.attrs["kind"] == "spirals"
    check_error(invoke("make", "--kind", "moons", "--out", str(tmp_path / "m.h5")),
                "unknown kind 'moons'")


def test_inspect_digits():
    res = invoke("inspect", "digits")
    assert res.exit_code == 0
    assert "train: train/X / train/y: n=1,438, features=64" in res.stdout
    assert "@license: CC BY 4.0" in res.stdout
    assert "classes (10): 0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in res.stdout


def test_inspect_errors(tmp_path):
    check_error(invoke("inspect", str(tmp_path / "nope.h5")), "data file not found")
    bad = tmp_path / "bad.h5"
    bad.write_text("not hdf5")
    check_error(invoke("inspect", str(bad)), "not an HDF5 file")
    p = tmp_path / "k.h5"
    with h5py.File(p, "w") as f:
        f["images"] = np.zeros((4, 2))
        f["target"] = np.arange(4) % 2
    res = invoke("inspect", str(p))
    assert "images" in res.stdout                          # the inventory is still shown
    check_error(res, "keys present: images, target")
    res = invoke("inspect", str(p), "--json")
    assert res.exit_code == 2 and json.loads(res.stdout)["error"].startswith("no X/y keys")
    assert invoke("inspect", str(p), "--x-key", "images", "--y-key", "target").exit_code == 0


def test_import_npz_and_csv(tmp_path):
    X = np.arange(24, dtype=np.uint8).reshape(6, 2, 2)
    y = np.array([0, 1, 2, 0, 1, 2])
    src = tmp_path / "a.npz"
    np.savez(src, X=X, y=y)
    out = tmp_path / "a.h5"
    res = invoke("import", str(src), "--out", str(out), "--classes", "r,g,b")
    assert res.exit_code == 0, res.output
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["X"][()], X)
        assert list(f.attrs["classes"]) == ["r", "g", "b"]
    check_error(invoke("import", str(src), "--out", str(out)), "already exists")
    pk = tmp_path / "p.npz"
    np.savez(pk, X=np.array([None, 1], dtype=object), y=np.zeros(2))
    check_error(invoke("import", str(pk), "--out", str(tmp_path / "p.h5")), "pickled")
    csvf = tmp_path / "t.csv"
    csvf.write_text("f1,f2,kind\n1,2,cat\n3,4,dog\n")
    res = invoke("import", str(csvf), "--out", str(tmp_path / "t.h5"), "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["classes"] == ["cat", "dog"]
    res = invoke("import", str(csvf), "--out", str(tmp_path / "u.h5"), "--label-column", "f1")
    assert res.exit_code == 2 and "not a number" in res.stderr
    check_error(invoke("import", str(tmp_path / "x.parquet"), "--out", str(tmp_path / "x.h5")),
                "use a .npz, .csv or .tsv file")


@pytest.mark.parametrize("cmd", ["make", "import", "inspect"])
def test_help(cmd):
    assert invoke(cmd, "--help").exit_code == 0


def test_unwritable_output_is_a_one_line_error(tmp_path):
    src = tmp_path / "t.csv"
    src.write_text("a,label\n1,0\n2,1\n")
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    check_error(invoke("import", str(src), "--out", str(blocker / "t.h5")),
                f"cannot write {blocker / 't.h5'}")
    check_error(invoke("make", "--out", str(blocker / "m.h5")), "cannot write")
    assert blocker.read_text() == "a file, not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "t.csv"]
