"""gpunet.fileio: the one atomic file replacement (temp file beside the target, created
exclusively, fsynced, renamed over the target) and the clean-up of stale temp files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gpunet import fileio


def _listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def test_the_target_is_replaced_not_rewritten(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    keep = tmp_path / "hardlink"
    os.link(target, keep)  # a reader holding the old file
    seen = []

    def write(tmp: Path) -> None:
        seen.append((target.read_text(), tmp.parent, tmp.name))  # target still whole
        tmp.write_text("new content")

    assert fileio.atomic_write(target, write) == target
    assert target.read_text() == "new content"
    assert keep.read_text() == "old"  # a new inode took the name; the old one is intact
    assert seen[0][0] == "old" and seen[0][1] == tmp_path
    assert seen[0][2].startswith(".a.txt.") and seen[0][2].endswith(fileio.TMP_SUFFIX)
    assert _listing(tmp_path) == ["a.txt", "hardlink"]  # no temp file left


def test_text_and_bytes_are_written_as_given(tmp_path):
    fileio.atomic_write_text(tmp_path / "t", "x\r\ny\n\u00e9")
    assert (tmp_path / "t").read_bytes() == b"x\r\ny\n\xc3\xa9"
    fileio.atomic_write_bytes(tmp_path / "b", b"\x00\xff")
    assert (tmp_path / "b").read_bytes() == b"\x00\xff"
    fileio.atomic_write_text(tmp_path / "t", "")  # replaces an existing file
    assert (tmp_path / "t").read_bytes() == b""
    assert _listing(tmp_path) == ["b", "t"]


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failing_writer_leaves_the_target_and_no_temp_file(tmp_path, exc):
    target = tmp_path / "last.h5"
    target.write_bytes(b"previous")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise exc

    with pytest.raises(type(exc)):
        fileio.atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"previous"
    assert _listing(tmp_path) == ["last.h5"]
    with pytest.raises(ValueError):  # a missing target stays missing
        fileio.atomic_write(tmp_path / "new", lambda tmp: (_ for _ in ()).throw(ValueError()))
    assert _listing(tmp_path) == ["last.h5"]


@pytest.mark.parametrize("dangling", [False, True])
def test_a_planted_symlink_at_a_temp_name_is_never_followed(tmp_path, monkeypatch, dangling):
    """Someone who can guess the next temp name plants a symlink there, to an existing file
    or to a file they want created: the write takes another name, and neither is touched."""
    target = tmp_path / "run" / "config.toml"
    target.parent.mkdir()
    victim = tmp_path / "victim"
    if not dangling:
        victim.write_text("precious")
    names = iter(["aaaaaaaaaaaa", "aaaaaaaaaaaa", "bbbbbbbbbbbb"])
    monkeypatch.setattr(fileio.secrets, "token_hex", lambda n: next(names))
    planted = target.parent / f".config.toml.aaaaaaaaaaaa{fileio.TMP_SUFFIX}"
    planted.symlink_to(victim)
    used = []
    fileio.atomic_write(target, lambda tmp: (used.append(tmp.name), tmp.write_text("mine")))
    assert used == [f".config.toml.bbbbbbbbbbbb{fileio.TMP_SUFFIX}"]
    assert target.read_text() == "mine" and not target.is_symlink()
    if dangling:
        assert not victim.exists()
    else:
        assert victim.read_text() == "precious"
    assert planted.is_symlink()  # left as it was
    assert _listing(target.parent) == sorted([planted.name, "config.toml"])


def test_remove_stale_temps_removes_only_its_own_temp_files(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    run = tmp_path / "run"
    run.mkdir()
    stale = [fileio._create_temp(run / "last.h5"), fileio._create_temp(run / "config.toml")]
    stale[0].write_bytes(b"partial checkpoint")
    keep = ["last.h5", ".last.h5.tmp", "x.gpunet-tmp", ".notes.gpunet-tmp.txt", "metrics.jsonl"]
    for name in keep:
        (run / name).write_text("user data")
    (run / ".dir.gpunet-tmp").mkdir()  # a folder: not a file it could have made
    (run / ".link.gpunet-tmp").symlink_to(victim)  # a symlink: not followed, not removed
    removed = fileio.remove_stale_temps(run)
    assert sorted(removed) == sorted(stale)
    assert _listing(run) == sorted(keep + [".dir.gpunet-tmp", ".link.gpunet-tmp"])
    assert victim.read_text() == "keep"
    assert fileio.remove_stale_temps(run) == []
    assert fileio.remove_stale_temps(tmp_path / "missing") == []


def test_fsync_dir_tolerates_a_missing_folder(tmp_path):
    fileio.fsync_dir(tmp_path)
    fileio.fsync_dir(tmp_path / "missing")  # no error
