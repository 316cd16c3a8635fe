"""The command line (CliRunner): train / eval / predict / info, configuration precedence, and
every bad input giving a one-line error, a non-zero exit and untouched files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from gpunet.cli import app
from typer.testing import CliRunner

from gpunet import checkpoint as ck
from gpunet.backend.cpu import native

runner = CliRunner()
FAST = ["--device", "cpu", "--hidden", "16", "--epochs", "2", "--batch-size", "32"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def write_xy(path, X, y, **attrs):
    with h5py.File(path, "w") as f:
        f["X"], f["y"] = X, y
        for k, v in attrs.items():
            f.attrs[k] = v
    return path


def blobs(path, n=300, d=4, classes=3, seed=0, groups=True):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (classes, d))
    y = rng.integers(0, classes, n)
    X = (centers[y] + rng.standard_normal((n, d))).astype(np.float32)
    with h5py.File(path, "w") as f:
        if groups:
            k = n * 3 // 4
            f["train/X"], f["train/y"] = X[:k], y[:k]
            f["test/X"], f["test/y"] = X[k:], y[k:]
        else:
            f["X"], f["y"] = X, y
    return path


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small run made through the CLI: (data file, run folder)."""
    root = tmp_path_factory.mktemp("cli")
    data = blobs(root / "blobs.h5")
    out = root / "run"
    r = invoke("train", data, "--out", out, *FAST, "--quiet")
    assert r.exit_code == 0, r.output
    return data, out


# ---------------------------------------------------------------------- working commands
def test_train_json_prints_exactly_one_object(tmp_path):
    data = blobs(tmp_path / "b.h5")
    r = invoke("train", data, "--out", tmp_path / "run", *FAST, "--json")
    assert r.exit_code == 0, r.output
    assert len(r.stdout.strip().splitlines()) == 1
    s = json.loads(r.stdout)
    assert s["status"] == "finished" and s["epochs"] == 2 and s["test_n"] == 75
    assert {"train_loss", "val_acc", "best_value", "test_accuracy", "last"} <= set(s)


def test_plain_progress_off_a_terminal_and_quiet(tmp_path):
    data = blobs(tmp_path / "b.h5")
    r = invoke("train", data, "--out", tmp_path / "a", *FAST)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("training on cpu:")
    assert sum(line.startswith("epoch ") for line in lines) == 2
    assert "\x1b[" not in r.stdout  # no progress bar or colour in a log
    r = invoke("train", data, "--out", tmp_path / "b", *FAST, "--quiet")
    assert r.exit_code == 0 and r.stdout == ""


def test_eval_json_repeatable_and_batch_size_independent(trained):
    data, out = trained
    r1 = invoke("eval", out / "best.h5", "--json", "--device", "cpu")
    r2 = invoke("eval", out / "best.h5", "--json", "--device", "cpu")
    r3 = invoke("eval", out / "best.h5", "--json", "--device", "cpu", "--batch-size", "3")
    assert r1.exit_code == r2.exit_code == r3.exit_code == 0, r1.output + r3.output
    assert r1.stdout == r2.stdout
    a, c = json.loads(r1.stdout), json.loads(r3.stdout)
    assert {"accuracy", "loss", "n", "per_class", "confusion_matrix"} <= set(a)
    assert a["split"] == "test" and a["n"] == 75
    for k in ("accuracy", "n", "per_class", "confusion_matrix"):
        assert a[k] == c[k], k
    assert a["loss"] == pytest.approx(c["loss"], rel=1e-6)
    # with --data and --split
    r = invoke("eval", out / "best.h5", "--data", data, "--split", "all", "--json",
               "--device", "cpu")
    assert r.exit_code == 0 and json.loads(r.stdout)["n"] == 300
    r = invoke("eval", out / "best.h5", "--device", "cpu")
    assert r.exit_code == 0 and "confusion matrix" in r.stdout and "accuracy" in r.stdout


def test_eval_leaves_last_h5_unchanged(trained):
    _, out = trained
    before = snapshot(out)
    stats = ck.load(out / "last.h5").arrays
    for _ in range(2):
        assert invoke("eval", out / "last.h5", "--device", "cpu").exit_code == 0
    assert snapshot(out) == before
    for k, v in ck.load(out / "last.h5").arrays.items():
        assert np.array_equal(v, stats[k])


def test_predict_writes_by_extension(trained, tmp_path):
    data, out = trained
    r = invoke("predict", out / "best.h5", "--data", data, "--out", tmp_path / "p.csv",
               "--proba", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "wrote 300 predictions" in r.stdout
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == "pred,class,p_0,p_1,p_2"
    # an unlabelled file (X only) predicts too
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["X"] = np.zeros((5, 4), np.float32)
    r = invoke("predict", out / "best.h5", "--data", tmp_path / "x.h5", "--out",
               tmp_path / "p.npy", "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n"] == 5 and np.load(tmp_path / "p.npy").shape == (5,)


def test_config_file_with_command_line_overrides(tmp_path):
    data = blobs(tmp_path / "b.h5")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[train]\nepochs = 1\nlr = 0.01\nhidden = [8, 4]\noptimizer = "momentum"\n'
                   'device = "cpu"\nbatch-size = 16\n')
    out = tmp_path / "run"
    r = invoke("train", data, "--config", cfg, "--lr", "0.005", "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    from gpunet.config import load_toml

    resolved = load_toml(out / "config.toml")
    assert resolved["lr"] == 0.005 and resolved["epochs"] == 1 and resolved["hidden"] == [8, 4]
    assert resolved["optimizer"] == "momentum" and resolved["batch_size"] == 16
    assert resolved["beta1"] == 0.9  # the optimizer's default, resolved
    assert ck.load(out / "last.h5").optimizer["name"] == "momentum"


def test_resume_auto_with_a_changed_lr(tmp_path):
    data = blobs(tmp_path / "b.h5")
    out = tmp_path / "run"
    assert invoke("train", data, "--out", out, *FAST, "--quiet").exit_code == 0
    r = invoke("train", "--out", out, "--resume", "auto", "--epochs", "3", "--lr", "1e-4",
               "--json", "--device", "cpu")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["epochs"] == 3 and s["changed"]["lr"] == [0.002, 0.0001]
    ev = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()
          if '"event"' in x]
    assert ev[0]["changed"]["lr"] == [0.002, 0.0001]
    # resuming a finished run does nothing and says so
    r = invoke("train", "--out", out, "--resume", "auto", "--epochs", "3", "--device", "cpu")
    assert r.exit_code == 0 and "already complete" in r.stdout
    # --resume auto in an empty folder starts fresh
    r = invoke("train", data, "--out", tmp_path / "new", *FAST, "--resume", "auto", "--quiet")
    assert r.exit_code == 0 and (tmp_path / "new" / "last.h5").exists()


def test_resume_a_moved_run_folder_continues_beside_the_checkpoint(tmp_path):
    data = blobs(tmp_path / "b.h5")
    assert invoke("train", data, "--out", tmp_path / "a", *FAST, "--quiet").exit_code == 0
    shutil.move(tmp_path / "a", tmp_path / "b")
    r = invoke("train", "--resume", tmp_path / "b" / "last.h5", "--epochs", "3", "--quiet")
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "a").exists() and ck.load(tmp_path / "b" / "last.h5").epoch == 3


def test_info_never_crashes(monkeypatch, tmp_path):
    monkeypatch.setenv("CUPY_CACHE_DIR", str(tmp_path / "kc"))
    r = invoke("info", "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["backend"] in ("cpu", "gpu") and info["kernel_cache_dir"] == str(tmp_path / "kc")
    assert {"gpunet", "numpy", "h5py", "typer", "cupy", "device"} <= set(info)
    assert info["cpu_blas"].startswith(("MKL (CPU vendor: ", "NumPy's OpenBLAS (CPU vendor: "))
    kernels = native.load_native()
    want = f"native ({kernels.path})" if kernels is not None else "NumPy paths (the native"
    assert info["cpu_kernels"].startswith(want)
    r = invoke("info")
    assert r.exit_code == 0 and "kernel_cache_dir" in r.stdout
    monkeypatch.setenv("GPUNET_NATIVE", "off")
    info = json.loads(invoke("info", "--json").stdout)
    assert info["cpu_kernels"] == "NumPy paths (GPUNET_NATIVE=off)"
    assert info["GPUNET_NATIVE"] == "off"


def test_data_group_is_mounted():
    r = invoke("data", "--help")
    assert r.exit_code == 0 and "inspect" in r.stdout


def test_digits_default_target_and_eval_reports_it(tmp_path):
    """`gpunet train digits` (defaults) reaches >= 97% test accuracy; `eval --json` says so."""
    out = tmp_path / "digits"
    t0 = time.perf_counter()
    r = invoke("train", "digits", "--out", out, "--json", "--device", "cpu")
    seconds = time.perf_counter() - t0
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    print(f"gpunet train digits: test accuracy {s['test_accuracy']:.4f} in {seconds:.1f}s")
    r = invoke("eval", out / "best.h5", "--json", "--device", "cpu")
    assert r.exit_code == 0, r.output
    ev = json.loads(r.stdout)
    assert ev["accuracy"] >= 0.97 and ev["accuracy"] == s["test_accuracy"]
    assert ev["split"] == "test" and ev["n"] == s["test_n"]


# ---------------------------------------------------------------------- bad input
def _flip_params(p):
    with h5py.File(p, "r") as f:
        off = f["model/params"].id.get_offset()
    with open(p, "r+b") as fh:
        fh.seek(off + 4)
        fh.write(b"\xde\xad\xbe\xef")


def _truncate(p):
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])


def _newer(p):
    with h5py.File(p, "r+") as f:
        f.attrs["format_version"] = 99


def _setup(case, d: Path, trained):
    """Create the files of one case in ``d``; return the argv."""
    data, run = trained
    ckpt = d / "model.h5"
    shutil.copy(run / "best.h5", ckpt)
    good = blobs(d / "good.h5")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 4)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    train = ["train", None, "--out", d / "out", *FAST]
    if case == "missing file":
        train[1] = d / "missing.h5"
    elif case == "not hdf5":
        (d / "notes.h5").write_text("hello\n" * 50)
        train[1] = d / "notes.h5"
    elif case == "missing keys":
        with h5py.File(d / "k.h5", "w") as f:
            f["inputs"], f["targets"] = X, y
        train[1] = d / "k.h5"
    elif case == "length mismatch":
        train[1] = write_xy(d / "m.h5", X, y[:30])
    elif case == "empty":
        train[1] = write_xy(d / "e.h5", X[:0], y[:0])
    elif case == "nan in X":
        X[3, 1] = np.nan
        train[1] = write_xy(d / "n.h5", X, y)
    elif case == "inf in X":
        X[5, 0] = np.inf
        train[1] = write_xy(d / "i.h5", X, y)
    elif case == "negative label":
        y[2] = -1
        train[1] = write_xy(d / "l.h5", X, y)
    elif case == "non-integer labels":
        train[1] = write_xy(d / "f.h5", X, y + 0.5)
    elif case == "label beyond the checkpoint's classes":
        y[0] = 7
        write_xy(d / "l7.h5", X, y)
        return ["eval", ckpt, "--data", d / "l7.h5", "--device", "cpu"]
    elif case == "corrupt checkpoint":
        _flip_params(ckpt)
        return ["eval", ckpt, "--device", "cpu"]
    elif case == "truncated checkpoint":
        _truncate(ckpt)
        return ["eval", ckpt, "--device", "cpu"]
    elif case == "foreign checkpoint":
        return ["eval", good, "--data", good, "--device", "cpu"]
    elif case == "newer checkpoint":
        _newer(ckpt)
        return ["eval", ckpt, "--device", "cpu"]
    elif case == "not-hdf5 checkpoint":
        (d / "c.h5").write_bytes(os.urandom(3000))
        return ["eval", d / "c.h5", "--device", "cpu"]
    elif case == "input width mismatch":
        blobs(d / "wide.h5", d=6)
        return ["eval", ckpt, "--data", d / "wide.h5", "--device", "cpu"]
    elif case == "batch size 1 with batch norm":
        train[1] = good
        train += ["--batch-size", "1"]
    elif case == "unwritable output folder":
        (d / "afile").write_text("x")
        train[1] = good
        train[3] = d / "afile" / "run"
    elif case == "predict over the checkpoint":
        return ["predict", ckpt, "--data", good, "--out", ckpt, "--device", "cpu"]
    elif case == "existing run without --resume":
        (d / "out").mkdir()
        shutil.copy(run / "last.h5", d / "out" / "last.h5")
        train[1] = good
    elif case == "corrupt last.h5 on resume":
        (d / "out").mkdir()
        shutil.copy(run / "last.h5", d / "out" / "last.h5")
        _truncate(d / "out" / "last.h5")
        train[1] = good
        train += ["--resume", "auto"]
    elif case == "unknown config key":
        (d / "c.toml").write_text("learning_rate = 0.1\n")
        train[1] = good
        train += ["--config", d / "c.toml"]
    elif case == "bad option value":
        train[1] = good
        train += ["--optimizer", "adamw"]
    elif case == "resume changes the architecture":
        (d / "out").mkdir()
        shutil.copy(run / "last.h5", d / "out" / "last.h5")
        train = ["train", "--out", d / "out", "--resume", "auto", "--hidden", "7",
                 "--device", "cpu"]
    return train


BAD = {
    "missing file": r"not found",
    "not hdf5": r"not an HDF5 file|HDF5",
    "missing keys": r"inputs.*targets|targets.*inputs",
    "length mismatch": r"40.*30|30.*40",
    "empty": r"empty|no samples|0 samples",
    "nan in X": r"NaN",
    "inf in X": r"inf",
    "negative label": r"label",
    "non-integer labels": r"integer",
    "label beyond the checkpoint's classes": r"label.*7|7.*label|class",
    "corrupt checkpoint": r"corrupt|checksum",
    "truncated checkpoint": r"truncated",
    "foreign checkpoint": r"not a gpunet checkpoint",
    "newer checkpoint": r"format version 99.*upgrade",
    "not-hdf5 checkpoint": r"not an HDF5 file",
    "input width mismatch": r"4 input features.*6|6.*4",
    "batch size 1 with batch norm": r"--batch-size 1 cannot train with batch norm",
    "unwritable output folder": r"cannot write to output folder|Not a directory",
    "predict over the checkpoint": r"refusing to overwrite",
    "existing run without --resume": r"already holds a run",
    "corrupt last.h5 on resume": r"truncated or corrupt",
    "unknown config key": r"unknown key 'learning_rate'",
    "bad option value": r"unknown optimizer 'adamw'",
    "resume changes the architecture": r"cannot change hidden",
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gives_one_line_error(case, trained, tmp_path):
    import re

    argv = _setup(case, tmp_path, trained)
    before = snapshot(tmp_path)
    r = invoke(*argv)
    assert r.exit_code == 2, (case, r.exit_code, r.output, r.exception)
    assert "Traceback" not in r.output
    assert r.stdout == ""
    err = [line for line in r.stderr.splitlines() if not line.startswith("warning: ")]
    assert len(err) == 1 and err[0].startswith("error: "), r.stderr
    print(f"{case}: {err[0]}")
    assert re.search(BAD[case], err[0]), err[0]
    assert snapshot(tmp_path) == before, "files changed"


@pytest.mark.parametrize("var,value,msg", [
    ("GPUNET_THREADS", "two", "GPUNET_THREADS='two': expected a positive integer"),
    ("GPUNET_THREADS", "0", "GPUNET_THREADS='0': expected a positive integer"),
    ("GPUNET_BLAS", "fast", "GPUNET_BLAS='fast': use mkl, openblas or auto"),
])
def test_bad_environment_variable_gives_one_line_error(monkeypatch, tmp_path, var, value, msg):
    import gpunet.backend as backend_module

    monkeypatch.setattr(backend_module, "_cache", {})  # the CPU backend is built afresh
    monkeypatch.setenv(var, value)
    r = invoke("train", "digits", "--out", tmp_path / "run", *FAST)
    assert r.exit_code == 2, (r.output, r.exception)
    err = [line for line in r.stderr.splitlines() if not line.startswith("warning: ")]
    assert err == [f"error: {msg}"], r.stderr
    assert not (tmp_path / "run").exists()


def test_config_params_are_the_train_config_keys():
    """Every TrainConfig key is a `gpunet train` option (``data``: the DATA argument), every
    other parameter is the command's own, and each option's default is the config's."""
    import inspect

    import typer
    from gpunet.cli.train import CONFIG_PARAMS, train_command

    from gpunet.config import TrainConfig

    assert set(CONFIG_PARAMS) == set(TrainConfig.keys()) - {"data"}
    params = set(inspect.signature(train_command).parameters)
    assert params - set(CONFIG_PARAMS) == {"ctx", "data", "config", "resume", "json_out",
                                           "quiet", "repeats"}
    assert set(CONFIG_PARAMS) <= params
    cmd = typer.main.get_command(app).commands["train"]
    defaults = TrainConfig()
    for p in cmd.params:
        if p.name in CONFIG_PARAMS and p.default is not None:
            got = getattr(TrainConfig.from_dict({p.name: p.default}), p.name)
            assert got == getattr(defaults, p.name), p.name
