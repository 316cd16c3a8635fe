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

``DurableBatch`` makes many replacements and appended lines durable together (a pack of runs
saving all its members at once): the new files are written beside their targets first, then
one ``sync_paths`` (a Linux ``syncfs`` per file system; an fsync per file and folder elsewhere)
makes all of them and the appended lines durable, then the renames run in the order staged,
then one more sync makes the renames durable. A kill at any point leaves each target its old
file or its whole new one, as ``atomic_write`` does for one file.

Test hook: with ``GPUNET_TEST_KILL_AT=<n>`` in the environment, the process sends itself
SIGKILL at its n-th save point (counted from 1). The save points are: inside ``atomic_write``
once the temporary file is written (before the replace), after each replace, and after each
``append_line``; in a ``DurableBatch``, once each staged file is written and after each of the
commit's renames. The kill-at-every-save-point test uses it; nothing else should set it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
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
    batch = getattr(_deferring, "batch", None)
    if batch is not None:  # inside DurableBatch.deferring(): staged, replaced at its commit
        return batch._stage_deferred(path, write)
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


def append_line(path: str | os.PathLike[str], line: str, sync: bool = True) -> None:
    """Append ``line`` plus a newline (UTF-8) to ``path`` (created if missing), then fsync
    (``sync=False``: the caller makes it durable, e.g. ``DurableBatch.append_line``).

    Opened with ``O_APPEND | O_NOFOLLOW``: a symlink planted at ``path`` raises ``OSError``
    instead of being followed, so the append never writes outside the folder."""
    fd = _open_regular(Path(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        data = (line + "\n").encode("utf-8")
        while data:
            data = data[os.write(fd, data):]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    save_point()


# ---------------------------------------------------------------------- durable batches
#: whether ``sync_paths`` may use Linux ``syncfs`` (benchmarks compare it with an fsync per
#: file and folder by setting this to False)
USE_SYNCFS = True
_syncfs_fn: list[Callable[[int], int] | None] = []
#: the batch ``atomic_write`` stages into, per thread (``DurableBatch.deferring``)
_deferring = threading.local()


def _syncfs() -> Callable[[int], int] | None:
    """libc's ``syncfs(fd)`` (Linux), or None where there is none."""
    if not _syncfs_fn:
        fn = None
        with contextlib.suppress(OSError, AttributeError, TypeError):
            f = ctypes.CDLL(None, use_errno=True).syncfs
            f.argtypes, f.restype = [ctypes.c_int], ctypes.c_int
            fn = f
        _syncfs_fn.append(fn)
    return _syncfs_fn[0]


def _fsync_own(path: Path) -> None:
    """fsync a file we wrote (never through a symlink)."""
    fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_paths(files: Iterable[str | os.PathLike[str]],
               folders: Iterable[str | os.PathLike[str]] = ()) -> None:
    """Make the data of ``files`` and the entries of their folders and of ``folders``
    durable: one ``syncfs`` per file system they live on (Linux), else (or if it fails) an
    fsync per file and per folder. Raises ``OSError`` if a file cannot be synced."""
    files = [Path(f) for f in files]
    dirs = list(dict.fromkeys([Path(d) for d in folders] + [f.parent for f in files]))
    fn = _syncfs() if USE_SYNCFS else None
    if fn is not None:
        by_dev: dict[int, Path] = {}
        for d in dirs:
            with contextlib.suppress(OSError):
                by_dev.setdefault(os.stat(d).st_dev, d)
        ok = len(by_dev) > 0 or not dirs
        for d in by_dev.values():
            try:
                fd = os.open(d, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            except OSError:
                ok = False
                continue
            try:
                ok = fn(fd) == 0 and ok
            finally:
                os.close(fd)
        if ok:
            return
    for f in files:
        _fsync_own(f)
    for d in dirs:
        fsync_dir(d)


class DurableBatch:
    """File replacements and appended log lines made durable together (see the module
    docstring): ``stage`` / ``stage_link`` / ``deferring`` write the new files beside their
    targets, ``append_line`` appends without an fsync, ``commit`` syncs everything once,
    then renames in the order staged and syncs the folders once.

    A staged file is created exclusively (``O_EXCL | O_NOFOLLOW``: never an existing file or a
    planted symlink), under a fresh temporary name (``remove_stale_temps`` clears one a kill
    left) or the name ``staged(target)`` gives (the caller then removes leftovers itself).
    Until ``commit`` renames it, each target is untouched."""

    def __init__(self, staged: Callable[[Path], Path] | None = None) -> None:
        self.staged_name = staged
        #: ``(staged file, target)`` in the order staged
        self.pending: list[tuple[Path, Path]] = []
        self.appended: list[Path] = []

    def _new_file(self, target: Path) -> Path:
        if self.staged_name is None:
            return _create_temp(target)
        staged = self.staged_name(target)
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
        os.close(fd)
        return staged

    def stage(self, path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
        """``write(staged)`` into a new file that ``commit`` renames over ``path``; returns
        the staged file. On an error the staged file is removed and nothing is pending."""
        path = Path(path)
        staged = self._new_file(path)
        try:
            write(staged)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(staged)
            raise
        self.pending.append((staged, path))
        save_point()
        return staged

    def _stage_deferred(self, path: Path, write: Callable[[Path], None]) -> Path:
        self.stage(path, write)
        return path

    def stage_link(self, source: Path, path: str | os.PathLike[str]) -> Path:
        """Stage ``path`` to get the content of the staged file ``source``: a hard link to
        it (no copy; every file is replaced by rename, never rewritten, so the two names
        never diverge by a write), or a copy where links are not supported."""
        path = Path(path)
        if self.staged_name is not None:
            staged = self.staged_name(path)
            try:
                os.link(source, staged, follow_symlinks=False)
            except OSError as e:
                if isinstance(e, FileExistsError):
                    raise
                return self.stage(path, lambda tmp: _copy_own(source, tmp))
            self.pending.append((staged, path))
            save_point()
            return staged
        return self.stage(path, lambda tmp: _copy_own(source, tmp))

    @contextlib.contextmanager
    def deferring(self) -> Iterator[DurableBatch]:
        """Inside the block, ``atomic_write`` in this thread stages into this batch instead
        of replacing its target (code that saves through ``atomic_write`` joins the batch)."""
        before = getattr(_deferring, "batch", None)
        _deferring.batch = self
        try:
            yield self
        finally:
            _deferring.batch = before

    def append_line(self, path: str | os.PathLike[str], line: str) -> None:
        """``append_line`` without its fsync: the line is made durable by the next ``sync``
        or ``commit``."""
        append_line(path, line, sync=False)
        self.appended.append(Path(path))

    def sync(self) -> None:
        """Make the staged files and the appended lines durable (no rename)."""
        sync_paths([s for s, _ in self.pending] + self.appended)
        self.appended = []

    def commit(self, before_replace: Callable[[list[tuple[Path, Path]]], None] | None = None
               ) -> list[tuple[Path, Path]]:
        """Sync everything staged and appended, call ``before_replace(pending)`` (e.g. to
        write a commit marker), rename each staged file over its target in order, sync the
        folders; returns what was renamed."""
        pending = self.pending
        if pending or self.appended:
            self.sync()
        if not pending:
            return []
        if before_replace is not None:
            before_replace(list(pending))
        self.pending = []
        replace_all(pending)
        return pending

    def discard(self) -> None:
        """Remove the staged files (their targets stay as they are); forget the batch."""
        for staged, _ in self.pending:
            with contextlib.suppress(OSError):
                os.unlink(staged)
        self.pending, self.appended = [], []


def replace_all(pairs: Iterable[tuple[Path, Path]]) -> None:
    """``os.replace(staged, target)`` for each pair whose staged file is still there, in
    order (a save point after each), then one ``sync_paths`` of the targets' folders."""
    folders = []
    for staged, target in pairs:
        if os.path.lexists(staged):
            os.replace(staged, target)
            folders.append(Path(target).parent)
            save_point()
    if folders:
        sync_paths([], folders)


def _copy_own(source: Path, dest: Path) -> None:
    """Copy the bytes of a file we wrote (never through a symlink) into ``dest``."""
    with open_own_file(source) as src, open(dest, "wb") as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)
