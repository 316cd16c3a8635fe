"""An exclusive, advisory lock on a folder, held through a lock file inside it.

``FolderLock(path).acquire()`` opens (creating it if missing) the file ``path`` without
following a symlink, takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on it and writes who holds it
(``{"pid": ..., "host": ...}`` as JSON) into it. The lock lasts until ``release()`` or until
the process ends: the operating system drops a ``flock`` when its file is closed, a SIGKILL
included, so a crashed holder never leaves a stale lock. The file itself stays (deleting a lock
file races with a process that just opened it). A second ``acquire`` while the lock is held
raises ``FolderBusy`` naming the holder's pid and host.

The lock file is written in place, not through ``fileio.atomic_write``: replacing it would give
the name a new inode that the holder's lock does not cover.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .fileio import _open_regular
from .text import escape

try:  # POSIX; without it (Windows) the lock is a no-op
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

#: the most of a lock file that is read to name its holder
_HOLDER_BYTES = 4096


class FolderBusy(ConfigError):
    """Another process holds the lock."""


def _printable(text: str, limit: int = 64) -> str:
    """``text`` cut to ``limit`` characters, escaped by ``gpunet.text.escape``."""
    return escape(text[:limit])


def describe_holder(raw: bytes) -> str:
    """'pid N on host H' from a lock file's contents ('another process' when unreadable)."""
    try:
        rec: Any = json.loads(raw.decode("utf-8"))
        pid = int(rec["pid"])
        host = _printable(str(rec.get("host", "")))
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError):
        return "another process"
    return f"pid {pid} on host {host}" if host else f"pid {pid}"


class FolderLock:
    """The lock held through the file ``path`` (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self, what: str = "") -> None:
        """Take the lock or raise ``FolderBusy`` ("<what> is in use by pid N on host H");
        ``OSError`` when the file cannot be opened (a symlink, not a regular file, read-only
        folder)."""
        if self.fd is not None:
            return
        fd = _open_regular(self.path, os.O_RDWR | os.O_CREAT)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = describe_holder(os.pread(fd, _HOLDER_BYTES, 0))
                os.close(fd)
                raise FolderBusy(f"{what or self.path.parent} is in use by another gpunet "
                                 f"process ({holder}); wait for it to end or choose another "
                                 "folder") from None
        try:
            me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": _dt.datetime.now(_dt.timezone.utc)
                             .isoformat(timespec="seconds")}).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, me + b"\n", 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def release(self) -> None:
        """Drop the lock (closing the file); a no-op when it is not held."""
        if self.fd is not None:
            fd, self.fd = self.fd, None
            with contextlib.suppress(OSError):
                os.close(fd)
