"""Atomic file writes: the one way gpunet replaces a file.

``atomic_write(path, write)`` creates a temporary file with a unique name, exclusively
(``O_CREAT | O_EXCL``, never following a planted symlink), in the target's own folder; calls
``write(tmp_path)``; fsyncs the file; ``os.replace``s it over the target; fsyncs the folder.
On any failure the temporary file is removed and the target is untouched. Temporary names are
``.<target name>.<random>.gpunet-tmp``, so ``remove_stale_temps(folder)`` can clear the ones a
killed process left behind without touching anything else.

``append_line`` adds one line to a log file that is ours (``O_APPEND | O_NOFOLLOW``: a planted
symlink is refused, never followed) and fsyncs it; ``open_own_file`` opens one for reading the
same way.

Test hook: with ``GPUNET_TEST_KILL_AT=<n>`` in the environment, the process sends itself
SIGKILL at its n-th save point (counted from 1). The save points are: inside ``atomic_write``
once the temporary file is written (before the replace), after each replace, and after each
``append_line``. The kill-at-every-save-point test uses it; nothing else should set it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TMP_SUFFIX = ".gpunet-tmp"
#: the environment variable of the kill-at-a-save-point test hook (see the module docstring)
KILL_AT_ENV = "GPUNET_TEST_KILL_AT"
_save_points = 0


def save_point() -> None:
    """Count a save point; SIGKILL this process at the one ``GPUNET_TEST_KILL_AT`` names."""
    global _save_points
    want = os.environ.get(KILL_AT_ENV)
    if not want:
        return
    _save_points += 1
    if want.strip() == str(_save_points):
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename) to disk; a no-op where folders can't be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_temp(path: Path) -> Path:
    """A new empty file beside ``path``, created exclusively (never an existing name)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{TMP_SUFFIX}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                         0o644)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"cannot create a temporary file beside {path}")


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Replace ``path`` with what ``write(tmp)`` writes to a fresh temporary file beside it.

    ``write`` may reopen ``tmp`` by name (h5py, ``numpy.save``) and must close it before it
    returns. Raises what ``write`` or the file system raise; the target is then unchanged.
    """
    path = Path(path)
    tmp = _create_temp(path)
    try:
        write(tmp)
        _fsync_file(tmp)
        save_point()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    save_point()
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """``atomic_write`` of a bytes payload."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """``atomic_write`` of UTF-8 text (newlines written as given)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files an interrupted ``atomic_write`` left in ``folder``
    (regular files named ``.*.gpunet-tmp`` only); returns what was removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        if e.name.startswith(".") and e.name.endswith(TMP_SUFFIX) and \
                e.is_file(follow_symlinks=False):
            with contextlib.suppress(OSError):
                os.unlink(e.path)
                removed.append(Path(e.path))
    return removed


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _open_regular(path: Path, flags: int) -> int:
    """``os.open`` without following a symlink as the last component (``OSError`` ELOOP), and
    refusing anything but a regular file (``OSError`` EINVAL): a FIFO never blocks the open."""
    fd = os.open(path, flags | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0), 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(22, "not a regular file", str(path))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_own_file(path: str | os.PathLike[str]) -> BinaryIO:
    """Open a file gpunet wrote for reading in binary mode, refusing a symlink or a special
    file (``OSError``)."""
    return os.fdopen(_open_regular(Path(path), os.O_RDONLY), "rb")


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append ``line`` plus a newline (UTF-8) to ``path`` (created if missing), then fsync.

    Opened with ``O_APPEND | O_NOFOLLOW``: a symlink planted at ``path`` raises ``OSError``
    instead of being followed, so the append never writes outside the folder."""
    fd = _open_regular(Path(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        data = (line + "\n").encode("utf-8")
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)
    save_point()
