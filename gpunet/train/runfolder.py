"""The run folder and resuming: where a run's files live and how a run is picked up again.

A run folder holds ``last.h5`` (every epoch, and every ``save_every`` steps), ``best.h5``
(best monitored metric), ``metrics.jsonl`` (one JSON object per epoch; events such as a
resume carry an ``event`` key), ``config.toml`` (the resolved configuration) and
``.gpunet-run``, the folder's marker and lock file. Every file but the lock is replaced
through ``gpunet.fileio``; ``metrics.jsonl`` grows by appended, fsynced lines
(``fileio.append_line``, never through a symlink).

Whose folder it is: gpunet writes ``.gpunet-run`` before anything else, so a folder holding it
is a gpunet run folder. ``train`` writes only into a folder that does not exist yet, is empty,
or holds the marker; any other folder is refused and left as it is. While a run trains it
holds an exclusive ``flock`` on the marker (``gpunet.lock``), which names its pid and host, so
a second ``train`` on the same folder is refused instead of interleaving its files.

Save order at the end of an epoch: the metrics line, ``last.h5``, then ``best.h5``. A kill
between two of them leaves a folder that ``--resume auto`` continues exactly: a metrics line
past ``last.h5`` is dropped, and a ``best.h5`` older than ``last.h5``'s best epoch is rewritten
from ``last.h5`` (which then holds that very epoch).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

from .. import checkpoint as ckpt_mod
from ..config import IMMUTABLE_ON_RESUME, TrainConfig
from ..errors import CheckpointError, ConfigError
from ..fileio import append_line, atomic_write_text, open_own_file, remove_stale_temps
from ..lock import FolderLock

#: the marker and lock file of a run folder (see the module docstring)
MARKER = ".gpunet-run"
#: the longest metrics line kept on a resume (a longer one is treated as torn)
_MAX_LINE = 1 << 20


def default_out_dir(data: str, root: str | Path = "runs") -> Path:
    """``runs/<data stem>-<YYYYmmdd-HHMMSS>`` (with ``-2``, ``-3``... if it exists)."""
    stem = Path(str(data)).stem or "run"
    base = Path(root) / f"{stem}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    p, k = base, 2
    while p.exists():
        p = base.with_name(f"{base.name}-{k}")
        k += 1
    return p


def resolve_resume(resume: str | Path | None, out: str | Path | None) -> Path | None:
    """``"auto"``: ``<out>/last.h5`` when it exists, else ``<out>/best.h5`` when only it is
    there (an epoch-boundary state too; ``last.h5`` lost), else None (a fresh start); a path:
    that checkpoint, which must exist."""
    if resume is None or str(resume) == "":
        return None
    if str(resume).lower() == "auto":
        if out is None:
            return None
        for name in ("last.h5", "best.h5"):
            p = Path(out) / name
            if os.path.lexists(p):
                return p
        return None
    p = Path(resume)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    return p


def config_for_resume(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The configuration recorded in a checkpoint with ``overrides`` applied (for ``fit``)."""
    ck = ckpt_mod.load(path)
    base = TrainConfig.from_dict(ck.config, source=f"checkpoint {path}")
    base.out = None  # chosen by fit: beside the checkpoint in a gpunet run folder, else new
    return base.updated(overrides or {}, source="overrides")


def normalize_data_ref(data: str | None) -> str | None:
    """An existing file becomes an absolute path; a bundled dataset name stays a name."""
    if data is None:
        return None
    p = Path(data).expanduser()
    if p.exists():
        return str(p.resolve())
    return str(data)


def check_resume_config(ck: ckpt_mod.Checkpoint, cfg: TrainConfig) -> dict[str, list[Any]]:
    """Raise ``ConfigError`` if ``cfg`` changes what a resume cannot; return the changes
    (``{key: [old, new]}``)."""
    old = TrainConfig.from_dict(ck.config, source=f"checkpoint {ck.path}")
    old_data = normalize_data_ref(old.data)
    changed: dict[str, list[Any]] = {}
    if old_data != cfg.data:
        moved = old_data is not None and Path(old_data).is_absolute() \
            and not Path(old_data).exists()
        if not moved:
            raise ConfigError(f"cannot resume {ck.path} on different data: it was trained on "
                              f"{old_data}, not {cfg.data}")
        changed["data"] = [old_data, cfg.data]  # the file moved
    for key in TrainConfig.keys():
        a, b = getattr(old, key), getattr(cfg, key)
        if key in ("data", "out"):
            continue
        if key == "val":
            a = normalize_data_ref(a)
        if a != b:
            if key in IMMUTABLE_ON_RESUME:
                raise ConfigError(f"cannot change {key} when resuming (checkpoint: {a!r}, "
                                  f"now: {b!r}); start a new run instead")
            changed[key] = [a, b]
    return changed


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line, flushed and fsynced after each."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def reset(self) -> None:
        atomic_write_text(self.path, "")

    def _records(self) -> list[tuple[str, dict[str, Any]]]:
        """The log's lines with their records, up to the first line that is not a whole
        record (a torn last line); never through a symlink (``OSError``)."""
        if not os.path.lexists(self.path):
            return []
        out = []
        with open_own_file(self.path) as f:
            for raw in iter(lambda: f.readline(_MAX_LINE + 1), b""):
                try:
                    if len(raw) > _MAX_LINE or not raw.endswith(b"\n"):
                        raise ValueError("torn")
                    line = raw.decode("utf-8").rstrip("\n")
                    rec = json.loads(line)
                    if not isinstance(rec, dict):
                        raise ValueError("not a record")
                    int(rec.get("step", 0) if "event" in rec else rec.get("epoch", 0))
                except (ValueError, TypeError):
                    break
                out.append((line, rec))
        return out

    def check(self) -> None:
        """``ConfigError`` when ``metrics.jsonl`` is there but is not a regular file (a
        symlink, a folder), before anything is written."""
        if os.path.lexists(self.path) and not (self.path.is_file()
                                               and not self.path.is_symlink()):
            raise ConfigError(f"{self.path} is not a regular file (a symlink or a special "
                              "file); refusing to use it as the run's metrics log")

    def truncate_after(self, epoch: int, step: int) -> None:
        """Keep epoch lines up to ``epoch`` and events up to ``step`` (drop what a killed run
        wrote after its last checkpoint)."""
        if not os.path.lexists(self.path):
            return
        keep = []
        for line, rec in self._records():
            if "event" in rec:
                if int(rec.get("step", 0)) > step:
                    break
            elif int(rec.get("epoch", 0)) > epoch:
                break
            keep.append(line)
        atomic_write_text(self.path, "".join(k + "\n" for k in keep))

    def read(self) -> list[dict[str, Any]]:
        """The log's records (up to a torn line)."""
        return [rec for _, rec in self._records()]

    def append(self, rec: dict[str, Any]) -> None:
        """Append one record (``fileio.append_line``: a planted symlink is refused)."""
        append_line(self.path, json.dumps(rec))


class RunFolder:
    """The files of one run folder (see the module docstring)."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.last = self.out / "last.h5"
        self.best = self.out / "best.h5"
        self.config = self.out / "config.toml"
        self.marker = self.out / MARKER
        self.metrics = MetricsLog(self.out / "metrics.jsonl")
        self.lock = FolderLock(self.marker)

    def holds_run(self) -> bool:
        """Whether a run already wrote a checkpoint here."""
        return os.path.lexists(self.last) or os.path.lexists(self.best)

    def is_ours(self) -> bool:
        """Whether gpunet made this folder (it holds the marker, a regular file)."""
        return self.marker.is_file() and not self.marker.is_symlink()

    def _entries(self) -> list[str]:
        """The folder's entries ([] when it does not exist); ``ConfigError`` when it is not a
        folder or cannot be listed."""
        if not os.path.lexists(self.out):
            return []
        if not self.out.is_dir():
            raise ConfigError(f"--out {self.out} exists and is not a folder")
        try:
            return os.listdir(self.out)
        except OSError as e:
            raise ConfigError(f"cannot read output folder {self.out}: "
                              f"{e.strerror or type(e).__name__}") from None

    def check_target(self, resume: Path | None) -> None:
        """Refuse (``ConfigError``) a folder this run must not write: one with files but no
        marker (not a gpunet run folder), a fresh run where a run's checkpoints are, a resume
        from elsewhere into a folder holding another run. Writes nothing."""
        if not self._entries():
            return
        if not self.is_ours():
            if self.holds_run():
                ck = self.last if os.path.lexists(self.last) else self.best
                raise ConfigError(
                    f"{self.out} already holds a run's checkpoint but is not a gpunet run "
                    f"folder (no {MARKER} marker: a copied checkpoint, or an older gpunet's "
                    f"folder); continue it in a new folder: --resume {ck} --out NEW_FOLDER")
            raise ConfigError(
                f"{self.out} is not a gpunet run folder (it has files and no {MARKER} "
                "marker); gpunet writes only into a new or empty folder or its own run "
                "folder: choose another --out")
        self.metrics.check()
        if not self.holds_run():
            return
        if resume is None:
            raise ConfigError(f"{self.out} already holds a run (last.h5 / best.h5): continue "
                              "it with --resume auto, or choose another --out")
        if not _same_folder(resume.parent, self.out):
            raise ConfigError(f"{self.out} already holds another run; resume {resume} into a "
                              "new or empty --out")

    def acquire(self) -> None:
        """Make the folder, write the marker and take the run's lock (``ConfigError``: the
        folder cannot be written, or ``FolderBusy``: another process trains in it)."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self.lock.acquire(str(self.out))
        except OSError as e:
            raise ConfigError(f"cannot write to output folder {self.out}: "
                              f"{e.strerror or type(e).__name__}") from None

    def release(self) -> None:
        """Drop the run's lock (the marker stays)."""
        self.lock.release()

    def begin(self, cfg: TrainConfig, resume_event: dict[str, Any] | None) -> list[dict[str, Any]]:
        """Start (``resume_event`` None) or continue the metrics log, write ``config.toml``;
        returns the epoch records of the log. Removes the temporary files an interrupted save
        left; a resume also drops what a killed run logged after its checkpoint
        (``resume_event``'s epoch and step). Call with the lock held, after every check."""
        remove_stale_temps(self.out)
        if resume_event is None:
            self.metrics.reset()
        else:
            self.metrics.truncate_after(int(resume_event["epoch"]), int(resume_event["step"]))
            self.metrics.append(resume_event)
        atomic_write_text(self.config, cfg.to_toml())
        return [r for r in self.metrics.read() if "event" not in r]

    def save(self, path: Path, ck: ckpt_mod.Checkpoint) -> None:
        """Write a checkpoint (``last`` or ``best``) atomically."""
        ckpt_mod.save(path, ck)

    def find_best(self, best_epoch: int, also: Path | None = None
                  ) -> tuple[ckpt_mod.Checkpoint | None, Path | None]:
        """The ``best.h5`` (here, else ``also``) that holds ``best_epoch``, and where it is;
        ``(None, None)`` when neither does."""
        if best_epoch <= 0:
            return None, None
        for p in [self.best] + ([also] if also is not None else []):
            if p.is_file():
                try:
                    b = ckpt_mod.load(p)
                except CheckpointError:
                    continue
                if int(b.progress.get("epoch", -1)) == best_epoch:
                    return b, p
        return None, None

    def best_arrays(self, best_epoch: int, also: Path | None = None
                    ) -> dict[str, Any] | None:
        """The parameters of ``best.h5`` (here, else ``also``) if it holds ``best_epoch``."""
        b, _ = self.find_best(best_epoch, also)
        return None if b is None else b.arrays

    def copy_best(self, ck: ckpt_mod.Checkpoint) -> None:
        """Write ``ck`` (a best checkpoint found elsewhere) as this folder's ``best.h5``."""
        src = ck.path
        ckpt_mod.save(self.best, ck)  # what was loaded and checked, not the file's bytes now
        ck.path = src


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def describe_stamp(path: Path) -> tuple[int, int, int, int] | None:
    """A file's identity and version (device, inode, size, mtime ns), None if it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
