"""Atomic file writes: the one way gpunet replaces a file.

``atomic_write(path, write)`` creates a temporary file with a unique name, exclusively
(``O_CREAT | O_EXCL``, never following a planted symlink), in the target's own folder; calls
``write(tmp_path)``; fsyncs the file; ``os.replace``s it over the target; fsyncs the folder.
On any failure the temporary file is removed and the target is untouched. Temporary names are
``.<target name>.<random>.gpunet-tmp``, so ``remove_stale_temps(folder)`` can clear the ones a
killed process left behind without touching anything else.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

TMP_SUFFIX = ".gpunet-tmp"


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
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
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
