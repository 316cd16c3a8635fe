"""gpunet.fileio.DurableBatch: many replacements and appended lines made durable together (one
sync before the renames, one after), each target old or new whatever the kill point, planted
symlinks never followed; ``sync_paths``: syncfs once per file system, else fsync per file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gpunet import fileio

OLD, NEW = b"old contents", b"new contents, longer than the old"


def _staged(p: Path) -> Path:
    return p.with_name(f".{p.name}.next")


@pytest.fixture
def syncs(monkeypatch):
    """Count syncfs calls (a stand-in that succeeds) and fsync calls."""
    seen = {"syncfs": 0, "fsync": 0}

    def fake_syncfs(fd):
        seen["syncfs"] += 1
        return 0

    real_fsync = os.fsync

    def counted_fsync(fd):
        seen["fsync"] += 1
        real_fsync(fd)

    monkeypatch.setattr(fileio, "_syncfs", lambda: fake_syncfs)
    monkeypatch.setattr(fileio.os, "fsync", counted_fsync)
    return seen


def test_commit_syncs_once_then_renames_in_order_then_syncs_once(tmp_path, syncs):
    a, b, c, log = tmp_path / "a", tmp_path / "sub" / "b", tmp_path / "c", tmp_path / "log"
    b.parent.mkdir()
    a.write_bytes(OLD)
    b.write_bytes(OLD)
    batch = fileio.DurableBatch(staged=_staged)
    sa = batch.stage(a, lambda tmp: tmp.write_bytes(NEW))
    with batch.deferring():  # what saves through atomic_write joins the batch
        assert fileio.atomic_write_bytes(b, NEW + b"b") == b
    batch.stage_link(sa, c)
    batch.append_line(log, "line 1")
    assert a.read_bytes() == b.read_bytes() == OLD and not c.exists()  # nothing replaced yet
    assert log.read_text() == "line 1\n" and syncs == {"syncfs": 0, "fsync": 0}
    seen = []

    def before(pairs):
        seen.append((list(pairs), syncs["syncfs"], a.read_bytes()))

    done = batch.commit(before_replace=before)
    assert [t for _, t in done] == [a, b, c]
    assert seen == [(done, 1, OLD)]  # after the first sync, before any rename
    assert syncs == {"syncfs": 2, "fsync": 0}  # one per commit phase, not one per file
    assert a.read_bytes() == c.read_bytes() == NEW and b.read_bytes() == NEW + b"b"
    assert os.path.samefile(a, c)  # a hard link: no copy written
    assert not any(p.name.endswith(".next") for p in tmp_path.rglob("*"))
    assert batch.pending == [] and batch.commit() == []
    fileio.atomic_write_bytes(a, b"direct")  # outside deferring(): replaced at once
    assert a.read_bytes() == b"direct" and c.read_bytes() == NEW  # c keeps its own inode


def test_sync_paths_falls_back_to_an_fsync_per_file_and_folder(tmp_path, syncs, monkeypatch):
    files = [tmp_path / "x", tmp_path / "y"]
    for f in files:
        f.write_bytes(OLD)
    fileio.sync_paths(files, [tmp_path])
    assert syncs == {"syncfs": 1, "fsync": 0}  # one file system: one syncfs
    monkeypatch.setattr(fileio, "USE_SYNCFS", False)
    fileio.sync_paths(files, [tmp_path])
    assert syncs == {"syncfs": 1, "fsync": 3}  # 2 files + their folder
    monkeypatch.setattr(fileio, "USE_SYNCFS", True)
    monkeypatch.setattr(fileio, "_syncfs", lambda: lambda fd: -1)  # syncfs failing
    fileio.sync_paths(files)
    assert syncs["fsync"] == 6
    with pytest.raises(OSError):
        fileio.sync_paths([tmp_path / "missing"])


def test_the_real_syncfs_is_found_on_linux():
    if sys.platform.startswith("linux"):
        assert fileio._syncfs() is not None
    fileio.sync_paths([], [Path.cwd()])


def test_a_failed_write_or_discard_leaves_the_targets(tmp_path):
    a = tmp_path / "a"
    a.write_bytes(OLD)
    batch = fileio.DurableBatch(staged=_staged)
    with pytest.raises(ValueError):
        batch.stage(a, lambda tmp: (tmp.write_bytes(b"half"), int("x")))
    assert sorted(os.listdir(tmp_path)) == ["a"] and batch.pending == []
    batch.stage(a, lambda tmp: tmp.write_bytes(NEW))
    b = tmp_path / "b"
    plain = fileio.DurableBatch()  # temp names: remove_stale_temps clears leftovers
    plain.stage(b, lambda tmp: tmp.write_bytes(NEW))
    assert fileio.remove_stale_temps(tmp_path) and not plain.pending[0][0].exists()
    batch.discard()
    assert sorted(os.listdir(tmp_path)) == ["a"] and a.read_bytes() == OLD


def test_stage_link_copies_where_links_fail(tmp_path, monkeypatch):
    a, c = tmp_path / "a", tmp_path / "c"
    batch = fileio.DurableBatch(staged=_staged)
    src = batch.stage(a, lambda tmp: tmp.write_bytes(NEW))

    def no_links(*args, **kw):
        raise PermissionError(1, "no hard links here")

    monkeypatch.setattr(fileio.os, "link", no_links)
    batch.stage_link(src, c)
    batch.commit()
    assert c.read_bytes() == NEW and not os.path.samefile(a, c)


def test_planted_symlinks_are_never_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    run = tmp_path / "run"
    run.mkdir()
    a, log = run / "a", run / "log"
    _staged(a).symlink_to(victim)  # at the staged name: the stage refuses it
    batch = fileio.DurableBatch(staged=_staged)
    with pytest.raises(FileExistsError):
        batch.stage(a, lambda tmp: tmp.write_bytes(NEW))
    src = run / "src"
    src.write_bytes(NEW)
    with pytest.raises(FileExistsError):
        batch.stage_link(src, a)
    log.symlink_to(victim)  # a log that is a symlink: the append is refused
    with pytest.raises(OSError):
        batch.append_line(log, "x")
    _staged(a).unlink()
    a.symlink_to(victim)  # at the target: replaced as a name, the victim untouched
    batch.stage(a, lambda tmp: tmp.write_bytes(NEW))
    batch.commit()
    assert a.read_bytes() == NEW and not a.is_symlink() and victim.read_bytes() == b"precious"
    assert batch.pending == [] and sorted(os.listdir(run)) == ["a", "log", "src"]


_KILLED = """
import sys
from pathlib import Path
from gpunet import fileio
folder = Path(sys.argv[1])
batch = fileio.DurableBatch(staged=lambda p: p.with_name("." + p.name + ".next"))
first = batch.stage(folder / "t0", lambda tmp: tmp.write_bytes(b"new 0"))
with batch.deferring():
    fileio.atomic_write_bytes(folder / "t1", b"new 1")
batch.stage_link(first, folder / "t2")
batch.append_line(folder / "log", "line")
batch.commit(before_replace=lambda pairs: fileio.atomic_write_text(folder / "marker", "m"))
"""


def test_a_kill_at_any_point_leaves_each_target_old_or_new(tmp_path):
    """SIGKILL at every save point of a batch (each staged file written, the marker's
    write, each rename): every target is whole, old or new; before the marker all are old;
    a rerun after the kill commits them all."""
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    outcomes = []
    for n in range(1, 20):
        folder = tmp_path / f"k{n}"
        folder.mkdir()
        for i in (0, 1):  # t2 does not exist before
            (folder / f"t{i}").write_bytes(b"old %d" % i)
        env[fileio.KILL_AT_ENV] = str(n)
        r = subprocess.run([sys.executable, "-c", _KILLED, str(folder)], env=env,
                           capture_output=True, text=True, timeout=60)
        state = [(folder / f"t{i}").read_bytes() if (folder / f"t{i}").exists() else None
                 for i in range(3)]
        for i, got in enumerate(state):
            assert got in ({0: b"old 0", 1: b"old 1", 2: None}[i], b"new %d" % (i % 2)), (n, i)
        if not (folder / "marker").exists():  # not committed: nothing replaced
            assert state == [b"old 0", b"old 1", None]
        log = (folder / "log").read_bytes() if (folder / "log").exists() else b""
        assert log in (b"", b"line\n")
        outcomes.append(state)
        if r.returncode == 0:
            break
        assert r.returncode == -signal.SIGKILL, r.stderr
        for leftover in folder.glob(".t*.next"):  # what a recovery without a marker does
            leftover.unlink()
        env.pop(fileio.KILL_AT_ENV)
        r = subprocess.run([sys.executable, "-c", _KILLED, str(folder)], env=env,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert [(folder / f"t{i}").read_bytes() for i in range(3)] == [b"new 0", b"new 1",
                                                                       b"new 0"]
    assert r.returncode == 0 and n > 6  # every save point was reached and killed once
    assert outcomes[-1] == [b"new 0", b"new 1", b"new 0"]
    mixed = [s for s in outcomes if b"new 0" in s and b"old 1" in s]
    assert mixed, "no kill landed between two renames"
