"""Members as ordinary models: slicing member k out of a pack (an ``MLP``, a checkpoint), and
the pack's commit of its members' ``last.h5`` files.

A member's checkpoint is the one its single run writes (docs/architecture.md, "Checkpoint
format"): ``params`` is row k of the pack's (K, P) parameters, the batch-norm statistics are
member k's columns, the optimizer state is row k of the packed state, and the dropout
generator is member k's own. ``gpunet eval`` and ``gpunet train --resume`` take it as they
take any run's.

Commit. A pack saves all its members' ``last.h5`` at the same moments. So that a pack killed
in the middle of those saves resumes with every member at the same point, the saves are staged
(``.last.h5.pack-next`` beside each ``last.h5``, ``.best.h5.pack-next`` beside ``best.h5``: a
hard link to the staged ``last.h5`` when it is the same checkpoint), the members' metrics lines
are appended without an fsync each, and then, once per save point of the pack
(``fileio.DurableBatch``): one sync makes all of them durable (a Linux ``syncfs``), a marker
file listing the staged files is written atomically (the commit point), the staged files are
renamed into place (each member's ``last.h5`` before its ``best.h5``), one sync makes the
renames durable, and the marker is removed. ``PackCommit.recover`` finishes the renames of a
committed set and drops the staged files of one that never committed. Durability is the
single run's (everything is on disk before the commit point, the renames before the marker
goes); the fsyncs per member become a fixed few per save point.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import checkpoint as ckpt_mod
from ..fileio import DurableBatch, atomic_write_text, fsync_dir, replace_all
from ..model import MLP
from ..optim import Optimizer, make_optimizer
from .model import PackedMLP
from .optim import PackedOptimizer

STAGED_NAME = ".last.h5.pack-next"
#: the staged name of each file a pack commits (``last.h5``, ``best.h5``)
STAGED_NAMES = {"last.h5": STAGED_NAME, "best.h5": ".best.h5.pack-next"}


def member_model(pack: PackedMLP, k: int) -> MLP:
    """Member k as an ordinary ``MLP`` (a copy on the pack's backend)."""
    return pack.member(k)


def store_member(pack: PackedMLP, opt: PackedOptimizer | None, k: int, model: MLP,
                 optimizer: Optimizer | None = None) -> None:
    """Write member k's parameters, batch-norm statistics (and, with ``opt``, its step
    count, learning rate and optimizer state) into ``model`` (and ``optimizer``, default:
    ``opt.members[k]``)."""
    pack.store_member(k, model)
    if opt is not None:
        opt.store_member(k, optimizer)


def member_checkpoint(pack: PackedMLP, k: int, opt: PackedOptimizer | None = None,
                      standardizer: Any = None, **meta: Any) -> ckpt_mod.Checkpoint:
    """Member k as a ``Checkpoint`` (``meta``: ``checkpoint.from_training_state``'s keyword
    arguments: ``config``, ``data``, ``classes``, ``progress``, ``rng``)."""
    model = pack.member(k)
    optimizer = opt.store_member(k, _copy_optimizer(opt, k, model)) if opt is not None else None
    return ckpt_mod.from_training_state(model, optimizer, standardizer, **meta)


def save_member(path: str | Path, pack: PackedMLP, k: int, opt: PackedOptimizer | None = None,
                standardizer: Any = None, **meta: Any) -> Path:
    """Save member k as an ordinary checkpoint file (see ``member_checkpoint``)."""
    return ckpt_mod.save(path, member_checkpoint(pack, k, opt, standardizer, **meta))


def _copy_optimizer(opt: PackedOptimizer, k: int, model: MLP) -> Optimizer:
    """A single optimizer of member k's kind and hyperparameters over ``model``."""
    src = opt.members[k]
    kw = {a: getattr(src, a) for a in ("beta", "beta1", "beta2", "eps") if hasattr(src, a)}
    return make_optimizer(opt.kinds[k], model, lr=src.lr0, weight_decay=src.weight_decay,
                          schedule=src.schedule, **kw)

class PackCommit:
    """The staged saves of a pack's ``last.h5`` / ``best.h5`` files and metrics lines (see
    the module docstring). The marker is ``.pack-<hash of the member folders>.commit`` in the
    folders' common parent."""

    def __init__(self, outs: list[str | Path]) -> None:
        self.outs = [Path(o).resolve() for o in outs]
        key = hashlib.sha1("\n".join(map(str, self.outs)).encode()).hexdigest()[:12]
        parent = Path(os.path.commonpath([str(o) for o in self.outs])) if len(self.outs) > 1 \
            else self.outs[0].parent
        self.marker = parent / f".pack-{key}.commit"
        self.batch = DurableBatch(staged=_staged_path)
        #: per run folder, the checkpoint staged as its ``last.h5`` and the staged file
        self._last: dict[Path, tuple[ckpt_mod.Checkpoint, Path]] = {}

    @property
    def pending(self) -> list[tuple[Path, Path]]:
        """``(staged file, target)`` of the saves not committed yet."""
        return self.batch.pending

    def saver(self, run: Any) -> Callable[[Path, ckpt_mod.Checkpoint], None]:
        """A ``RunFolder.save`` for ``run`` that stages ``last.h5`` and ``best.h5`` (other
        files: saved at once). ``best.h5`` of the checkpoint just staged as ``last.h5`` is a
        hard link to it."""
        out = Path(run.out)

        def save(path: Path, ck: ckpt_mod.Checkpoint) -> None:
            path = Path(path)
            if path not in (Path(run.last), Path(run.best)):
                ckpt_mod.save(path, ck)
                return
            last = self._last.get(out)
            if path == Path(run.best) and last is not None and last[0] is ck:
                self.batch.stage_link(last[1], path)
                ck.path = str(path)
                return
            with self.batch.deferring():
                ckpt_mod.save(path, ck)
            if path == Path(run.last):
                self._last[out] = (ck, self.batch.pending[-1][0])
        return save

    def appender(self, log: Any) -> Callable[[dict[str, Any]], None]:
        """A ``MetricsLog.append`` for ``log`` whose line is made durable by the next
        ``commit`` (or ``sync``)."""
        def append(rec: dict[str, Any]) -> None:
            self.batch.append_line(log.path, json.dumps(rec))
        return append

    def sync(self) -> None:
        """Make the lines appended so far durable (and the staged files; no rename)."""
        self.batch.sync()

    def commit(self) -> None:
        """Make the staged saves the members' files, all of them or (killed before the
        marker is written) none; make the appended lines durable."""
        self._last.clear()
        written = self.batch.commit(before_replace=self._mark)
        if written:
            self.marker.unlink()
            fsync_dir(self.marker.parent)

    def _mark(self, pairs: list[tuple[Path, Path]]) -> None:
        """The commit point: the marker listing the staged files, written atomically."""
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.marker, json.dumps([[str(a), str(b)] for a, b in pairs]))

    def recover(self) -> None:
        """Finish a committed set of renames; remove staged files that never committed."""
        if self.marker.exists():
            try:
                pairs = [(Path(a), Path(b)) for a, b in json.loads(self.marker.read_text())]
            except ValueError:
                pairs = []  # cannot happen (the marker is written atomically): roll back
            replace_all(pairs)
            self.marker.unlink()
            fsync_dir(self.marker.parent)
        for out in self.outs:
            for name in STAGED_NAMES.values():
                with contextlib.suppress(FileNotFoundError):
                    (out / name).unlink()


def _staged_path(target: Path) -> Path:
    """Where a pack stages ``target`` (``last.h5`` / ``best.h5``) until its commit."""
    return target.with_name(STAGED_NAMES[target.name])
