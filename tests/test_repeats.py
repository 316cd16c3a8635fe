"""``gpunet train DATA --repeats K``: K seeds as one pack, K ordinary run folders, summary.json;
a SIGKILL part-way and ``--resume auto`` end bit for bit as an uninterrupted repeated run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
from gpunet.cli import app
from typer.testing import CliRunner

from gpunet import checkpoint as ck

EPOCHS = 8


def _write_data(path):
    rng = np.random.default_rng(3)
    centers = rng.normal(0, 2.0, (4, 12))
    y = rng.integers(0, 4, 2000)
    X = (centers[y] + rng.standard_normal((2000, 12)) * 1.5).astype(np.float32)
    with h5py.File(path, "w") as f:
        f["train/X"], f["train/y"] = X[:1600], y[:1600].astype(np.int64)
        f["test/X"], f["test/y"] = X[1600:], y[1600:].astype(np.int64)


def _args(data, out, *extra):
    return ["train", str(data), "--out", str(out), "--device", "cpu", "--hidden", "32,16",
            "--dropout", "0.1", "--batch-size", "16", "--epochs", str(EPOCHS),
            "--save-every", "7", "--seed", "5", "--repeats", "3", "--quiet", *extra]


def test_repeats_writes_member_run_folders_and_summary(tmp_path):
    data = tmp_path / "d.h5"
    _write_data(data)
    out = tmp_path / "rep"
    r = CliRunner().invoke(app, _args(data, out, "--epochs", "2", "--json"))
    assert r.exit_code == 0, r.output
    printed = json.loads(next(x for x in r.output.splitlines() if x.startswith("{")))
    summary = json.loads((out / "summary.json").read_text())
    assert printed == summary and summary["seeds"] == [5, 6, 7]
    vals, tests = [], []
    for i in range(3):
        m = out / f"member-{i}"
        assert {"last.h5", "best.h5", "metrics.jsonl", "config.toml"} <= {
            p.name for p in m.iterdir()}
        c = ck.load(m / "best.h5")
        assert c.config["seed"] == 5 + i and c.epoch >= 1
        e = CliRunner().invoke(app, ["eval", str(m / "best.h5"), "--json", "--device", "cpu"])
        assert e.exit_code == 0, e.output
        res = json.loads(next(x for x in e.output.splitlines() if x.startswith("{")))
        tests.append(res["accuracy"])
        vals.append(c.progress["best_value"])
    assert summary["test_acc"]["mean"] == np.mean(tests)
    assert summary["test_acc"]["min"] == min(tests) and summary["val_acc"]["max"] == max(vals)
    assert np.isclose(summary["val_acc"]["std"], np.std(vals))
    # a member folder is an ordinary run: resumed alone with more epochs
    r = CliRunner().invoke(app, ["train", "--resume", "auto", "--out", str(out / "member-1"),
                                 "--epochs", "3", "--quiet", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert ck.load(out / "member-1" / "last.h5").epoch == 3


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _cmd(data, out, *extra):
    return [sys.executable, "-m", "gpunet.cli", *_args(data, out, *extra)]


def _epoch_lines(path):
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")}
            for r in recs if "event" not in r]


def test_repeats_sigkill_then_resume_auto_is_bit_exact(tmp_path):
    data = tmp_path / "d.h5"
    _write_data(data)
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    r = subprocess.run(_cmd(data, ref), env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr

    proc = subprocess.Popen(_cmd(data, cut), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    metrics = cut / "member-2" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= EPOCHS // 3:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed: " + (
        proc.stderr.read() if proc.stderr else "")
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    r = subprocess.run(_cmd(data, cut, "--resume", "auto"), env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for i in range(3):
        a = ck.load(ref / f"member-{i}" / "last.h5")
        b = ck.load(cut / f"member-{i}" / "last.h5")
        assert a.step == b.step and a.epoch == b.epoch == EPOCHS
        for k in a.arrays:
            np.testing.assert_array_equal(a.arrays[k], b.arrays[k])
        for k in a.optimizer_state:
            np.testing.assert_array_equal(a.optimizer_state[k], b.optimizer_state[k])
        assert a.rng == b.rng
        ma, mb = ref / f"member-{i}" / "metrics.jsonl", cut / f"member-{i}" / "metrics.jsonl"
        assert _epoch_lines(ma) == _epoch_lines(mb)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (ref, cut))
    assert sa["val_acc"] == sb["val_acc"] and sa["test_acc"] == sb["test_acc"]


#: run as ``python SCRIPT ARGS...``: ``gpunet ARGS`` with member 1 of a 3-member pack made to
#: diverge (a NaN planted in its parameters before step NAN_AT of the pack) and, with
#: KILL_AT_COMMIT=m, a SIGKILL at the pack's m-th save right after its commit marker is
#: written (before the renames)
_INJECT = """
import os, runpy, signal, sys
import numpy as np
from gpunet.packed import members, step

NAN_AT, KILL_AT = int(os.environ["NAN_AT"]), int(os.environ.get("KILL_AT_COMMIT", "0"))
run, mark, marks = step.PackedTrainStep.run, members.PackCommit._mark, [0]

def planted(self, x=None, y=None):
    if self.pack.k == 3 and self.steps == NAN_AT:
        self.pack.params[1, 0] = np.nan
    return run(self, x, y)

def marked(self, pairs):
    mark(self, pairs)
    marks[0] += 1
    if marks[0] == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)

step.PackedTrainStep.run, members.PackCommit._mark = planted, marked
sys.argv = ["gpunet", *sys.argv[1:]]
runpy.run_module("cli", run_name="__main__")
"""


def test_repeats_resume_leaves_out_a_diverged_member_bit_exact(tmp_path):
    """Member 1 diverges in epoch 2; the pack is killed at a commit point in epoch 4 (marker
    written, renames not done), when member 1's last.h5 is behind the others'. ``--resume
    auto`` leaves member 1 out (its folder untouched) and ends the others bit for bit as the
    uninterrupted run, with the same summary."""
    data = tmp_path / "d.h5"
    _write_data(data)
    script = tmp_path / "inject.py"
    script.write_text(_INJECT)
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    env = {**_env(), "NAN_AT": "100", "PYTHONPATH": os.getcwd()}

    def gpunet(out, *extra, kill=0, inject=True):
        cmd = [sys.executable, str(script)] if inject else [sys.executable, "-m", "gpunet.cli"]
        return subprocess.run(cmd + _args(data, out, "--json", *extra), capture_output=True,
                              text=True, timeout=300, env={**env, "KILL_AT_COMMIT": str(kill)})

    r = gpunet(ref)
    assert r.returncode == 0, r.stderr
    summary_ref = json.loads((ref / "summary.json").read_text())
    assert summary_ref["statuses"] == ["finished", "diverged", "finished"]
    r = gpunet(cut, kill=45)  # 13 saves per epoch (save_every 7, 90 batches): epoch 4
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert list(cut.glob(".pack-*.commit")), "killed before the commit point"
    assert _events(cut / "member-1" / "metrics.jsonl") == ["diverged"]
    before = {p.name: p.read_bytes() for p in (cut / "member-1").iterdir()}
    behind = ck.load(cut / "member-1" / "last.h5")
    assert behind.step < ck.load(cut / "member-0" / "last.h5").step

    r = gpunet(cut, "--resume", "auto", inject=False)
    assert r.returncode == 0, r.stderr
    assert {p.name: p.read_bytes() for p in (cut / "member-1").iterdir()} == before
    for i in range(3):
        a = ck.load(ref / f"member-{i}" / "last.h5")
        b = ck.load(cut / f"member-{i}" / "last.h5")
        assert a.step == b.step and a.epoch == b.epoch == (EPOCHS if i != 1 else behind.epoch)
        for k in a.arrays:
            np.testing.assert_array_equal(a.arrays[k], b.arrays[k])
        for k in a.optimizer_state:
            np.testing.assert_array_equal(a.optimizer_state[k], b.optimizer_state[k])
        assert a.rng == b.rng
        ma, mb = ref / f"member-{i}" / "metrics.jsonl", cut / f"member-{i}" / "metrics.jsonl"
        assert _epoch_lines(ma) == _epoch_lines(mb)
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["statuses"] == summary_ref["statuses"]
    assert summary["val_acc"] == summary_ref["val_acc"]
    assert summary["test_acc"] == summary_ref["test_acc"]
    assert not list(cut.glob(".pack-*.commit")) and not list(cut.glob("member-*/.*pack-next"))


def _events(path):
    return [r["event"] for r in map(json.loads, path.read_text().splitlines()) if "event" in r]
