"""``gpunet train`` never writes what isn't its own: a folder that is not a gpunet run folder,
the folder of a checkpoint someone handed over, a planted symlink, a folder another ``train``
holds; a rejected or no-op resume writes nothing; SIGTERM stops like Ctrl-C; the display fits
80 columns. Each bad case: exit 2, one ``error:`` line, no traceback, every file unchanged."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from gpunet.cli import app
from gpunet.cli.train import EpochTable, _epoch_line
from hostile import assert_one_line_error, run_cli, snapshot
from typer.testing import CliRunner

from gpunet import checkpoint as ck
from gpunet import fileio
from gpunet.errors import CheckpointError
from gpunet.lock import FolderLock
from gpunet.train.runfolder import MARKER

runner = CliRunner()
FAST = ["--device", "cpu", "--hidden", "8", "--epochs", "2", "--batch-size", "32", "--quiet"]


def invoke(*args: object, **kw):
    return runner.invoke(app, [str(a) for a in args], **kw)


def _blobs(path: Path, n: int = 240) -> Path:
    rng = np.random.default_rng(1)
    centers = rng.normal(0, 3, (3, 4))
    y = rng.integers(0, 3, n)
    with h5py.File(path, "w") as f:
        f["X"] = (centers[y] + rng.standard_normal((n, 4))).astype(np.float32)
        f["y"] = y
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return _blobs(tmp_path_factory.mktemp("data") / "b.h5")


@pytest.fixture
def run(data, tmp_path) -> Path:
    """A finished 2-epoch run folder of ours."""
    out = tmp_path / "run"
    r = invoke("train", data, "--out", out, *FAST)
    assert r.exit_code == 0, r.output
    return out


def _mine(folder: Path) -> Path:
    """A user's folder with files named like a run's."""
    folder.mkdir()
    (folder / "config.toml").write_text("# my own settings\nx = 1\n")
    (folder / "metrics.jsonl").write_text('{"mine": true}\n')
    (folder / "notes.txt").write_text("do not touch\n")
    return folder


# ---------------------------------------------------------------------- whose folder
@pytest.mark.parametrize("extra", [[], ["--resume", "auto"]])
def test_a_folder_that_is_not_a_run_folder_is_refused(data, tmp_path, extra):
    mine = _mine(tmp_path / "mine")
    before = snapshot(tmp_path)
    r = invoke("train", data, "--out", mine, *FAST, *extra)
    assert_one_line_error(r, r"is not a gpunet run folder .*no \.gpunet-run marker")
    assert snapshot(tmp_path) == before and not (mine / MARKER).exists()


def test_a_copied_checkpoint_in_a_foreign_folder_is_not_continued_there(data, run, tmp_path):
    mine = _mine(tmp_path / "mine")
    (mine / "last.h5").write_bytes((run / "last.h5").read_bytes())
    before = snapshot(tmp_path)
    r = invoke("train", "--out", mine, "--resume", "auto", "--epochs", "3", "--quiet")
    line = assert_one_line_error(r, r"not a gpunet run folder")
    assert "--out NEW_FOLDER" in line and snapshot(tmp_path) == before


def test_out_that_is_a_file_is_refused(data, tmp_path):
    (tmp_path / "f").write_text("x")
    before = snapshot(tmp_path)
    assert_one_line_error(invoke("train", data, "--out", tmp_path / "f", *FAST),
                          r"exists and is not a folder")
    assert snapshot(tmp_path) == before


def test_an_empty_folder_and_our_own_folder_are_used(data, run, tmp_path):
    (tmp_path / "empty").mkdir()
    assert invoke("train", data, "--out", tmp_path / "empty", *FAST).exit_code == 0
    assert (tmp_path / "empty" / MARKER).is_file()
    # a fresh run over a run: refused, nothing changed
    before = snapshot(tmp_path)
    assert_one_line_error(invoke("train", data, "--out", run, *FAST), "already holds a run")
    assert snapshot(tmp_path) == before


def test_resume_a_handed_checkpoint_writes_nothing_beside_it(data, run, tmp_path):
    """``--resume PATH`` outside a run folder of ours: the run continues in a new run folder
    (or ``--out``), never beside the checkpoint."""
    handed = _mine(tmp_path / "handed")
    (handed / "model.h5").write_bytes((run / "last.h5").read_bytes())
    (handed / "last.h5").write_bytes((run / "last.h5").read_bytes())
    before = snapshot(handed)
    r = run_cli("train", "--resume", handed / "model.h5", "--epochs", "3", "--quiet",
                cwd=tmp_path)
    assert r.code == 0, r.stderr
    assert snapshot(handed) == before and sorted(os.listdir(handed)) == [
        "config.toml", "last.h5", "metrics.jsonl", "model.h5", "notes.txt"]
    new = list((tmp_path / "runs").iterdir())
    assert len(new) == 1 and ck.load(new[0] / "last.h5").epoch == 3
    assert (new[0] / MARKER).is_file() and ck.load(new[0] / "best.h5").epoch >= 1
    # with --out: into that folder; into another run's folder: refused
    assert invoke("train", "--resume", handed / "last.h5", "--out", tmp_path / "o",
                  "--epochs", "3", "--quiet").exit_code == 0
    assert snapshot(handed) == before and ck.load(tmp_path / "o" / "last.h5").epoch == 3
    keep = snapshot(tmp_path)
    assert_one_line_error(invoke("train", "--resume", handed / "last.h5", "--out", run,
                                 "--epochs", "3", "--quiet"), r"already holds another run")
    assert snapshot(tmp_path) == keep


# ---------------------------------------------------------------------- planted symlinks
def test_planted_symlinks_are_replaced_never_followed(data, run, tmp_path):
    victims = {n: tmp_path / f"victim-{n}" for n in ("config", "tmp1", "tmp2", "best")}
    for v in victims.values():
        v.write_text("precious\n")
    (run / "config.toml").unlink()
    (run / "config.toml").symlink_to(victims["config"])
    (run / ".config.toml.tmp").symlink_to(victims["tmp1"])
    (run / ".metrics.jsonl.tmp").symlink_to(victims["tmp2"])
    (run / f".best.h5.aaaaaaaaaaaa{fileio.TMP_SUFFIX}").symlink_to(victims["best"])
    r = invoke("train", "--out", run, "--resume", "auto", "--epochs", "3", "--quiet")
    assert r.exit_code == 0, r.output
    assert all(v.read_text() == "precious\n" for v in victims.values())
    assert not (run / "config.toml").is_symlink() and "epochs = 3" in (
        run / "config.toml").read_text()


def test_a_symlinked_metrics_log_is_refused_before_anything_is_written(data, run, tmp_path):
    victim = tmp_path / "victim.jsonl"
    victim.write_text('{"epoch": 1}\n')
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").symlink_to(victim)
    before = snapshot(tmp_path)
    r = invoke("train", "--out", run, "--resume", "auto", "--epochs", "3", "--quiet")
    assert_one_line_error(r, r"metrics\.jsonl is not a regular file")
    assert snapshot(tmp_path) == before and (run / "metrics.jsonl").is_symlink()


def test_append_line_refuses_a_symlink_and_a_fifo(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("x\n")
    (tmp_path / "log").symlink_to(victim)
    with pytest.raises(OSError):
        fileio.append_line(tmp_path / "log", "appended")
    assert victim.read_text() == "x\n"
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError):  # ENXIO without a reader, "not a regular file" with one:
        fileio.append_line(tmp_path / "fifo", "appended")  # it never blocks
    fileio.append_line(tmp_path / "new", "a")
    fileio.append_line(tmp_path / "new", "b")
    assert (tmp_path / "new").read_text() == "a\nb\n"


# ---------------------------------------------------------------------- rejected resumes
def test_a_rejected_or_no_op_resume_writes_nothing(data, run, tmp_path, monkeypatch):
    before = snapshot(tmp_path)
    # an incompatible configuration
    r = invoke("train", "--out", run, "--resume", "auto", "--hidden", "4", "--quiet")
    assert_one_line_error(r, "cannot change hidden")
    # a smaller --epochs: nothing to do, nothing written
    r = invoke("train", "--out", run, "--resume", "auto", "--epochs", "1")
    assert r.exit_code == 0 and "already complete" in r.stdout
    assert snapshot(tmp_path) == before
    # out of memory while building the step (a GPU's buffers): after every check, before
    # any write
    import gpunet.train.fitting as fitting

    def oom(*a, **k):
        raise MemoryError

    monkeypatch.setattr(fitting, "TrainStep", oom)
    r = invoke("train", "--out", run, "--resume", "auto", "--epochs", "3", "--quiet")
    assert_one_line_error(r, "out of memory")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("progress, pattern", [
    ({"epoch": -1}, r"progress\.epoch: -1 is outside"),
    ({"status": "zombie"}, r"progress\.status: 'zombie' is not one of"),
])
def test_a_progress_record_outside_the_schema_cannot_be_saved(run, progress, pattern):
    """The checkpoint schema refuses these already at save (and, forged, at load:
    tests/test_checkpoint_hostile.py); the run's own consistency checks follow below."""
    c = ck.load(run / "last.h5")
    before = (run / "last.h5").read_bytes()
    c.progress.update(progress)
    with pytest.raises(CheckpointError, match=pattern):
        ck.save(run / "last.h5", c)
    assert (run / "last.h5").read_bytes() == before


@pytest.mark.parametrize("progress, pattern", [
    ({"batch": 10**6}, r"batch 1000000 of an epoch"),
    ({"step": 1}, r"inconsistent progress record"),
    ({"best_epoch": 99}, r"inconsistent progress record"),
    ({"epoch_loss_sum": float("nan")}, r"bad progress record"),
])
def test_a_checkpoint_with_a_bad_state_is_refused_before_writing(data, run, tmp_path, progress,
                                                                  pattern):
    c = ck.load(run / "last.h5")
    c.progress.update(progress)
    ck.save(run / "last.h5", c)
    before = snapshot(tmp_path)
    r = invoke("train", "--out", run, "--resume", "auto", "--epochs", "3", "--quiet")
    assert_one_line_error(r, pattern)
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------- the lock
def test_a_locked_run_folder_is_refused_naming_the_holder(data, run, tmp_path):
    starting = tmp_path / "starting"  # a run that has not saved a checkpoint yet
    starting.mkdir()
    locks = [FolderLock(run / MARKER), FolderLock(starting / MARKER)]
    for lock in locks:
        lock.acquire()
    try:
        before = snapshot(tmp_path)
        for argv in (["--out", run, "--resume", "auto", "--epochs", "3"],
                     ["--out", starting, "--epochs", "2"], ["--out", starting]):
            r = invoke("train", data, "--quiet", "--device", "cpu", *argv)
            line = assert_one_line_error(r, r"is in use by another gpunet process")
            assert f"pid {os.getpid()} on host {socket.gethostname()}" in line
        assert snapshot(tmp_path) == before
    finally:
        for lock in locks:
            lock.release()
    r = invoke("train", "--out", run, "--resume", "auto", "--epochs", "3", "--quiet")
    assert r.exit_code == 0, r.output
    r = invoke("train", data, "--out", starting, *FAST)
    assert r.exit_code == 0, r.output


def test_a_symlinked_marker_is_not_followed(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (out / MARKER).symlink_to(victim)
    before = snapshot(tmp_path)
    r = invoke("train", data, "--out", out, *FAST)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_two_trains_on_one_folder_and_sigterm(tmp_path):
    """A second ``train`` on a folder another one trains in is refused naming its pid; SIGTERM
    stops the first like Ctrl-C (``interrupted``, exit 130, no traceback), releasing the lock,
    and ``--resume auto`` continues the run."""
    data = _blobs(tmp_path / "b.h5", n=4000)
    out = tmp_path / "run"
    args = ["train", data, "--out", out, "--device", "cpu", "--hidden", "64,64",
            "--batch-size", "8", "--epochs", "400"]
    env = dict(os.environ, GPUNET_DEVICE="cpu")
    first = subprocess.Popen([sys.executable, "-m", "gpunet.cli", *map(str, args)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None and not (
                (out / "last.h5").exists() and (out / "metrics.jsonl").exists()):
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read() if first.stderr else ""
        before = {p: p.read_bytes() for p in (out / "config.toml", tmp_path / "b.h5")}
        r = run_cli(*args, "--resume", "auto", "--quiet")
        line = assert_one_line_error(r, r"is in use by another gpunet process")
        assert f"pid {first.pid} on host " in line
        assert all(p.read_bytes() == b for p, b in before.items())
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, err
    assert err.strip().splitlines() == ["interrupted"], err
    assert not [p for p in os.listdir(out) if p.endswith(fileio.TMP_SUFFIX)]
    done = ck.load(out / "last.h5").epoch
    r = run_cli("train", "--out", out, "--resume", "auto", "--epochs", str(done + 1), "--quiet")
    assert r.code == 0, r.stderr
    assert ck.load(out / "last.h5").epoch == done + 1


# ---------------------------------------------------------------------- the display
def test_epoch_lines_fit_80_columns_also_in_a_long_case():
    long = {"epoch": 999, "epochs": 999, "train_loss": 12345.6789, "train_acc": 1.0,
            "val_loss": 98765.4321, "val_acc": 0.0001, "lr": 3.0833e-06,
            "seconds": 12345.678, "samples_per_s": 12345678.9, "best": True}
    for epochs in (9, 40, 999, 12345, 10**7):
        info = dict(long, epoch=epochs, epochs=epochs)
        table = EpochTable(epochs, True, 80)
        for line in (table.header(), table.row(info), _epoch_line(info)):
            assert len(line) <= 80, (epochs, line)
        assert table.row(info).startswith(f"epoch {epochs}/{epochs}")
    full = EpochTable(999, True, 80)
    assert [c[0] for c in full.cols][-1] == "samples/s"  # everything fits up to 999 epochs
    assert "samples/s" not in EpochTable(12345, True, 80).header()
    row = full.row(dict(long, epoch=7))
    assert row.split() == ["epoch", "7/999", "1.2e+04", "1.0000", "9.88e+04", "0.0001",
                           "3.08e-06", "12346s", "12.3M", "*"]
    assert "val" not in EpochTable(40, False, 80).header()


def test_the_plain_display_and_train_help_fit_80_columns(data, tmp_path):
    env = {"COLUMNS": "80"}
    r = run_cli("train", data, "--out", tmp_path / "r", "--device", "cpu", "--hidden", "8",
                "--epochs", "3", "--batch-size", "16", env=env)
    assert r.code == 0, r.stderr
    lines = r.stdout.splitlines()
    table = [ln for ln in lines if ln.startswith(("epoch ", " "))]
    assert len(table) == 4 and all(len(ln) <= 80 for ln in table), table
    assert table[0].split() == ["loss", "acc", "val_loss", "val_acc", "lr", "time",
                                "samples/s"]
    r = run_cli("train", "--help", env=env)
    assert r.code == 0 and "…" not in r.stdout
    assert all(len(ln) <= 80 for ln in r.stdout.splitlines())
    text = " ".join(ln.strip("│ ") for ln in r.stdout.splitlines())
    assert "Dropout probability after each hidden activation" in " ".join(text.split())
    assert "(default: a new folder in runs/ named after the data, the date and the time)" \
        in " ".join(text.split())


def test_the_quickstart_runs_twice(tmp_path, monkeypatch):
    """README's quickstart, ``gpunet train digits``, twice in one folder (one epoch here):
    each run gets its own run folder."""
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        r = invoke("train", "digits", "--epochs", "1", "--device", "cpu", "--quiet")
        assert r.exit_code == 0, r.output
    runs = sorted((Path.cwd() / "runs").iterdir())
    assert len(runs) == 2 and all((p / "last.h5").is_file() for p in runs)
    assert all(p.name.startswith("digits-") for p in runs)
