"""The journal file's lock: Optuna's symlink protocol, never waited on forever.

A writer holds ``<journal>.lock``, a symbolic link to the journal's absolute path made with
``os.symlink`` (exactly what ``optuna.storages.journal.JournalFileSymlinkLock`` makes, so
gpunet workers and plain Optuna processes exclude each other), for one append. A process
killed during an append (SIGKILL, a ``timeout``) leaves the link behind. Optuna's own lock
then waits its grace period only while the link's target exists: it times the target's
modification time, so a link that dangles (the folder moved or renamed after the kill, or a
relative link made elsewhere) makes every later writer spin forever. ``JournalLock`` times
the link itself instead (its inode and modification time, ``lstat``): a lock that stands
unchanged for ``grace`` seconds, or that was made more than ``OLD_LOCK`` seconds ago by the
clock (a lock a killed run left behind, found by the next run), is taken for a dead writer's
and removed with a warning, whatever it points to.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
import warnings

try:
    from optuna.storages.journal import BaseJournalFileLock as _LockBase
except ImportError:  # pragma: no cover - optuna < 4, or not installed (tune then refuses)
    _LockBase = object  # type: ignore[assignment,misc]

#: the longest sleep between two attempts to take a busy lock (seconds)
MAX_POLL = 0.05
#: a lock made this many seconds ago is a dead writer's at once (a live one is held for one
#: append; the margin covers clocks of hosts sharing the file system that disagree)
OLD_LOCK = 60.0


def lock_identity(path: str) -> tuple[int, int] | None:
    """The link's (inode, modification time in ns), without following it (a rename keeps
    both; a new link has a new time); None if it is gone."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns)


def break_lock(path: str, seen: tuple[int, int]) -> bool:
    """Remove the lock ``path`` if it is still the one seen as ``seen`` (``lock_identity``);
    True if this call removed it. A lock taken meanwhile by someone else is put back."""
    aside = f"{path}.{uuid.uuid4().hex}.dead"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    if lock_identity(aside) == seen:
        os.unlink(aside)
        return True
    with contextlib.suppress(OSError):   # not the dead lock: give it back to its holder
        os.link(aside, path, follow_symlinks=False)
    with contextlib.suppress(OSError):
        os.unlink(aside)
    return False


class JournalLock(_LockBase):  # type: ignore[misc,valid-type]
    """The lock on journal ``journal`` (see the module): ``acquire`` polls (1 ms doubling to
    ``MAX_POLL``) and breaks a lock unchanged for ``grace`` seconds or older than
    ``OLD_LOCK``; ``release`` removes it."""

    def __init__(self, journal: str | os.PathLike[str], grace: float) -> None:
        self.target = os.path.abspath(journal)
        self.path = self.target + ".lock"
        self.grace = float(grace)

    def acquire(self) -> bool:
        """Take the lock (blocking); True."""
        sleep, seen, since = 0.001, None, time.monotonic()
        while True:
            try:
                os.symlink(self.target, self.path)
                return True
            except FileExistsError:
                pass
            now = lock_identity(self.path)
            if now is None:
                continue
            if now != seen:
                seen, since = now, time.monotonic()
            if time.monotonic() - since > self.grace or time.time() - now[1] / 1e9 > OLD_LOCK:
                if break_lock(self.path, now):
                    warnings.warn(f"study journal {self.target}: removed a lock left by a "
                                  "process killed while writing to it", stacklevel=2)
                seen = None
                continue
            time.sleep(sleep)
            sleep = min(2 * sleep, MAX_POLL)

    def release(self) -> None:
        """Remove the lock (``RuntimeError`` if it was not there, as Optuna's)."""
        aside = f"{self.path}.{uuid.uuid4().hex}.rename"
        try:
            os.rename(self.path, aside)
        except OSError:
            raise RuntimeError(f"the journal lock {self.path} was not held") from None
        os.unlink(aside)

    def __repr__(self) -> str:
        return f"JournalLock({self.target!r}, grace={self.grace:g})"
