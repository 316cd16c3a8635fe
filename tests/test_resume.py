"""Exact resume: a `python -m gpunet.cli train` killed with SIGKILL part-way and resumed with
`--resume auto` ends with bit-for-bit the parameters and metrics of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from gpunet import checkpoint as ck

EPOCHS = 12


def _write_data(path):
    rng = np.random.default_rng(3)
    centers = rng.normal(0, 2.0, (4, 12))
    y = rng.integers(0, 4, 3000)
    X = (centers[y] + rng.standard_normal((3000, 12))).astype(np.float32)
    with h5py.File(path, "w") as f:
        f["X"], f["y"] = X, y.astype(np.int64)


def _cmd(data, out, *extra):
    return [sys.executable, "-m", "gpunet.cli", "train", str(data), "--out", str(out),
            "--device", "cpu", "--hidden", "32,16", "--dropout", "0.1", "--batch-size", "16",
            "--epochs", str(EPOCHS), "--save-every", "7", "--seed", "5", "--quiet", *extra]


def _env():
    # one BLAS thread: the same arithmetic in every process, and fair to a shared machine
    return {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _epoch_lines(out):
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")}
            for r in recs if "event" not in r]


@pytest.mark.slow
def test_sigkill_then_resume_auto_is_bit_exact(tmp_path):
    data = tmp_path / "d.h5"
    _write_data(data)
    ref, cut = tmp_path / "ref", tmp_path / "cut"

    r = subprocess.run(_cmd(data, ref), env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr

    # start the same run, kill it once a few epochs are done (usually mid-epoch)
    proc = subprocess.Popen(_cmd(data, cut), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    metrics = cut / "metrics.jsonl"
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
    killed_at = ck.load(cut / "last.h5").progress
    assert killed_at["epoch"] < EPOCHS

    r = subprocess.run(_cmd(data, cut, "--resume", "auto"), env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr

    a, b = ck.load(ref / "last.h5"), ck.load(cut / "last.h5")
    assert a.step == b.step and a.epoch == b.epoch == EPOCHS
    for k in a.arrays:
        assert a.arrays[k].tobytes() == b.arrays[k].tobytes(), k
    for k in a.optimizer_state:
        assert a.optimizer_state[k].tobytes() == b.optimizer_state[k].tobytes(), k
    assert a.rng == b.rng
    ba, bb = ck.load(ref / "best.h5"), ck.load(cut / "best.h5")
    assert ba.epoch == bb.epoch and ba.arrays["params"].tobytes() == bb.arrays["params"].tobytes()
    assert _epoch_lines(ref) == _epoch_lines(cut)
    events = [json.loads(x) for x in (cut / "metrics.jsonl").read_text().splitlines()
              if '"event"' in x]
    assert len(events) == 1 and events[0]["event"] == "resume"
    assert (events[0]["epoch"], events[0]["step"]) == (killed_at["epoch"], killed_at["step"])
    print(f"killed at epoch {killed_at['epoch']} + batch {killed_at['batch']} "
          f"(step {killed_at['step']}), resumed to step {b.step}")
