"""The run folder and resuming: where a run's files live and how a run is picked up again.

A run folder holds ``last.h5`` (every epoch, and every ``save_every`` steps), ``best.h5``
(best monitored metric), ``metrics.jsonl`` (one JSON object per epoch; events such as a
resume carry an ``event`` key) and ``config.toml`` (the resolved configuration). Every file
is replaced through ``gpunet.fileio``; ``metrics.jsonl`` grows by appended, fsynced lines.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .. import checkpoint as ckpt_mod
from ..config import IMMUTABLE_ON_RESUME, TrainConfig
from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_write_text, remove_stale_temps


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
    """``"auto"``: ``<out>/last.h5`` when it exists, else None (a fresh start); a path: that
    checkpoint, which must exist."""
    if resume is None or str(resume) == "":
        return None
    if str(resume).lower() == "auto":
        if out is None:
            return None
        p = Path(out) / "last.h5"
        return p if p.exists() else None
    p = Path(resume)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    return p


def config_for_resume(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The configuration recorded in a checkpoint with ``overrides`` applied (for ``fit``)."""
    ck = ckpt_mod.load(path)
    base = TrainConfig.from_dict(ck.config, source=f"checkpoint {path}")
    base.out = None  # continue beside the checkpoint unless overridden
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

    def truncate_after(self, epoch: int, step: int) -> None:
        """Keep epoch lines up to ``epoch`` and events up to ``step`` (drop what a killed run
        wrote after its last checkpoint)."""
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                break  # a torn last line
            if "event" in rec:
                if int(rec.get("step", 0)) > step:
                    break
            elif int(rec.get("epoch", 0)) > epoch:
                break
            keep.append(line)
        atomic_write_text(self.path, "".join(k + "\n" for k in keep))

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(x) for x in self.path.read_text(encoding="utf-8").splitlines() if x]

    def append(self, rec: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())


class RunFolder:
    """The files of one run folder (see the module docstring)."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.last = self.out / "last.h5"
        self.best = self.out / "best.h5"
        self.metrics = MetricsLog(self.out / "metrics.jsonl")

    def holds_run(self) -> bool:
        """Whether a run already wrote a checkpoint here."""
        return self.last.exists() or self.best.exists()

    def create(self) -> None:
        """Make the folder and check that it is writable (``ConfigError`` if not)."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=self.out)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise ConfigError(f"cannot write to output folder {self.out}: "
                              f"{e.strerror or type(e).__name__}") from None

    def begin(self, cfg: TrainConfig, resume_event: dict[str, Any] | None) -> list[dict[str, Any]]:
        """Start (``resume_event`` None) or continue the metrics log, write ``config.toml``;
        returns the epoch records of the log. A resume first removes the temporary files an
        interrupted save left and what a killed run logged after its checkpoint
        (``resume_event``'s epoch and step)."""
        if resume_event is None:
            self.metrics.reset()
        else:
            remove_stale_temps(self.out)
            self.metrics.truncate_after(int(resume_event["epoch"]), int(resume_event["step"]))
            self.metrics.append(resume_event)
        atomic_write_text(self.out / "config.toml", cfg.to_toml())
        return [r for r in self.metrics.read() if "event" not in r]

    def save(self, path: Path, ck: ckpt_mod.Checkpoint) -> None:
        """Write a checkpoint (``last`` or ``best``) atomically."""
        ckpt_mod.save(path, ck)

    def best_arrays(self, best_epoch: int, also: Path | None = None
                    ) -> dict[str, np.ndarray] | None:
        """The parameters of ``best.h5`` (here, else ``also``) if it holds ``best_epoch``."""
        if best_epoch <= 0:
            return None
        for p in [self.best] + ([also] if also is not None else []):
            if p.exists():
                try:
                    b = ckpt_mod.load(p)
                except CheckpointError:
                    continue
                if int(b.progress.get("epoch", -1)) == best_epoch:
                    return b.arrays
        return None
