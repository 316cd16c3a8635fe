"""Resume from any kill: ``gpunet train`` killed with SIGKILL at each of its save points in
turn (the ``GPUNET_TEST_KILL_AT=<n>`` test hook of ``gpunet.fileio``: inside every atomic write
before its rename, after every rename, after every metrics line), then continued with
``--resume auto``, ends with ``last.h5``, ``best.h5`` and the metrics of an uninterrupted run,
bit for bit.

The killed runs are forks of the test process running the command line in-process (no Python
start-up per kill point); one case runs the real ``python -m gpunet.cli`` in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from gpunet.cli import app
from typer.testing import CliRunner

from gpunet import checkpoint as ck
from gpunet import fileio

# 270 training rows in batches of 32: 9 steps an epoch, a mid-epoch last.h5 every 4 steps
ARGS = ["--device", "cpu", "--hidden", "8", "--dropout", "0.1", "--batch-size", "32",
        "--epochs", "3", "--save-every", "4", "--seed", "3", "--quiet"]


def _data(path: Path) -> Path:
    rng = np.random.default_rng(7)
    centers = rng.normal(0, 1.0, (3, 5))
    y = rng.integers(0, 3, 300)
    with h5py.File(path, "w") as f:
        f["X"] = (centers[y] + rng.standard_normal((300, 5))).astype(np.float32)
        f["y"] = y
    return path


def _train(data: Path, out: Path, *extra: str) -> None:
    r = CliRunner().invoke(app, ["train", str(data), "--out", str(out), *ARGS, *extra])
    assert r.exit_code == 0, (r.output, r.exception)


def _killed_at(n: int, data: Path, out: Path) -> bool:
    """Run the training in a fork that SIGKILLs itself at save point ``n``; whether it was
    killed (False: the run has fewer save points and finished)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 3
        try:
            os.environ[fileio.KILL_AT_ENV] = str(n)
            fileio._save_points = 0
            r = CliRunner().invoke(app, ["train", str(data), "--out", str(out), *ARGS])
            code = 0 if r.exit_code == 0 else 4
        finally:
            os._exit(code)
    deadline = time.monotonic() + 120
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the run killed at save point {n} hung")
        time.sleep(0.01)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status) == 0, f"the run to kill at {n} failed"
    return False


def _epoch_lines(out: Path) -> list[dict]:
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")}
            for r in recs if "event" not in r]


def assert_same_run(ref: Path, out: Path, where: str) -> None:
    """``out`` ended exactly as ``ref``: checkpoints' arrays, optimizer and generator states,
    progress, the best checkpoint and the metrics' epoch lines."""
    for name in ("last.h5", "best.h5"):
        a, b = ck.load(ref / name), ck.load(out / name)
        assert (a.epoch, a.step) == (b.epoch, b.step), (where, name)
        for group in ("arrays", "optimizer_state", "standardizer"):
            ga, gb = getattr(a, group), getattr(b, group)
            assert sorted(ga) == sorted(gb), (where, name, group)
            for k in ga:
                assert ga[k].tobytes() == gb[k].tobytes(), (where, name, group, k)
        assert a.rng == b.rng, (where, name)
    assert _epoch_lines(ref) == _epoch_lines(out), where
    assert not [p for p in os.listdir(out) if p.endswith(fileio.TMP_SUFFIX)], where


@pytest.mark.slow
def test_a_kill_at_every_save_point_resumes_bit_for_bit(tmp_path):
    data = _data(tmp_path / "d.h5")
    ref = tmp_path / "ref"
    _train(data, ref)
    killed = 0
    for n in range(1, 200):
        out = tmp_path / f"k{n}"
        if not _killed_at(n, data, out):
            break
        killed += 1
        _train(data, out, "--resume", "auto")
        assert_same_run(ref, out, f"killed at save point {n}")
    # 4 at the start (metrics log, config), per epoch: 2 mid-epoch last.h5, a metrics line,
    # last.h5 and (when it improved) best.h5 at the end: 2 points a file
    assert killed >= 4 + 3 * 7, killed


def test_a_run_killed_between_last_and_best_repairs_best(tmp_path):
    """The one state a kill leaves between the two checkpoints of an epoch end: last.h5 says
    epoch 1 is the best, best.h5 does not exist yet; --resume auto writes it from last.h5."""
    data = _data(tmp_path / "d.h5")
    out = tmp_path / "k"
    n = 0
    while True:
        n += 1
        assert _killed_at(n, data, out), "never reached the state"
        if (out / "last.h5").exists() and ck.load(out / "last.h5").progress["batch"] == 0:
            break
        import shutil

        shutil.rmtree(out)
    assert not (out / "best.h5").exists() and ck.load(out / "last.h5").progress["best_epoch"] == 1
    config = (out / "config.toml").read_bytes()
    metrics = (out / "metrics.jsonl").read_bytes()
    # a no-op resume completes the interrupted save, and writes nothing else
    _train(data, out, "--resume", "auto", "--epochs", "1")
    assert ck.load(out / "best.h5").epoch == 1
    assert ck.load(out / "best.h5").arrays["params"].tobytes() == ck.load(
        out / "last.h5").arrays["params"].tobytes()
    assert (out / "config.toml").read_bytes() == config
    assert (out / "metrics.jsonl").read_bytes() == metrics
    _train(data, out, "--resume", "auto")
    ref = tmp_path / "ref"
    _train(data, ref)
    assert_same_run(ref, out, f"killed at {n}")


@pytest.mark.slow
def test_the_kill_hook_in_a_real_process(tmp_path):
    """``GPUNET_TEST_KILL_AT`` in the real command: killed, then resumed to the same end."""
    data = _data(tmp_path / "d.h5")
    ref, out = tmp_path / "ref", tmp_path / "k"
    _train(data, ref)
    env = dict(os.environ, GPUNET_DEVICE="cpu", **{fileio.KILL_AT_ENV: "13"})
    cmd = [sys.executable, "-m", "gpunet.cli", "train", str(data), "--out", str(out), *ARGS]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr
    env.pop(fileio.KILL_AT_ENV)
    r = subprocess.run(cmd + ["--resume", "auto"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert_same_run(ref, out, "killed at 13")
