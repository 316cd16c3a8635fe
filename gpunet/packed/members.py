"""Members as ordinary models: slicing member k out of a pack (an ``MLP``, a checkpoint), and
the pack's commit of its members' ``last.h5`` files.

A member's checkpoint is the one its single run writes (docs/architecture.md, "Checkpoint
format"): ``params`` is row k of the pack's (K, P) parameters, the batch-norm statistics are
member k's columns, the optimizer state is row k of the packed state, and the dropout
generator is member k's own. ``gpunet eval`` and ``gpunet train --resume`` take it as they
take any run's.

Commit. A pack saves all its members' ``last.h5`` at the same moments. So that a pack killed
in the middle of those saves resumes with every member at the same point, the saves are staged
(``.last.h5.pack-next`` beside each ``last.h5``), then a marker file listing them is written
atomically (the commit point), the staged files are renamed into place, and the marker is
removed. ``PackCommit.recover`` finishes the renames of a committed set and drops the staged
files of one that never committed.
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
from ..fileio import atomic_write_text, fsync_dir
from ..model import MLP
from ..optim import Optimizer, make_optimizer
from .model import PackedMLP
from .optim import PackedOptimizer

STAGED_NAME = ".last.h5.pack-next"


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
    """The staged saves of a pack's ``last.h5`` files (see the module docstring). The marker
    is ``.pack-<hash of the member folders>.commit`` in the folders' common parent."""

    def __init__(self, outs: list[str | Path]) -> None:
        self.outs = [Path(o).resolve() for o in outs]
        key = hashlib.sha1("\n".join(map(str, self.outs)).encode()).hexdigest()[:12]
        parent = Path(os.path.commonpath([str(o) for o in self.outs])) if len(self.outs) > 1 \
            else self.outs[0].parent
        self.marker = parent / f".pack-{key}.commit"
        self.pending: list[tuple[Path, Path]] = []

    def saver(self, run: Any) -> Callable[[Path, ckpt_mod.Checkpoint], None]:
        """A ``RunFolder.save`` for ``run`` that stages ``last.h5`` (other files: saved)."""
        def save(path: Path, ck: ckpt_mod.Checkpoint) -> None:
            if Path(path) != Path(run.last):
                ckpt_mod.save(path, ck)
                return
            staged = Path(run.out) / STAGED_NAME
            ckpt_mod.save(staged, ck)
            ck.path = str(path)
            self.pending.append((staged, Path(path)))
        return save

    def commit(self) -> None:
        """Make the staged saves the members' ``last.h5``, all of them or (killed before the
        marker is written) none."""
        if not self.pending:
            return
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.marker, json.dumps([[str(a), str(b)] for a, b in self.pending]))
        _apply(self.pending)
        self.pending = []
        self.marker.unlink()
        fsync_dir(self.marker.parent)

    def recover(self) -> None:
        """Finish a committed set of renames; remove staged files that never committed."""
        if self.marker.exists():
            try:
                pairs = [(Path(a), Path(b)) for a, b in json.loads(self.marker.read_text())]
            except ValueError:
                pairs = []  # cannot happen (the marker is written atomically): roll back
            _apply(pairs)
            self.marker.unlink()
        for out in self.outs:
            with contextlib.suppress(FileNotFoundError):
                (out / STAGED_NAME).unlink()


def _apply(pairs: list[tuple[Path, Path]]) -> None:
    """Rename each staged file that is still there over its target; one folder fsync per
    folder afterwards."""
    folders = []
    for staged, final in pairs:
        if staged.exists():
            os.replace(staged, final)
            folders.append(final.parent)
    for folder in dict.fromkeys(folders):
        fsync_dir(folder)
