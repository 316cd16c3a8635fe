"""``fit_packed``: train K configurations as one pack, each member writing the run folder its
own ``gpunet.train.fit`` would write.

Each member is started as ``fit`` starts a run (``gpunet.train.fitting.start_run``: its
config checked, its data, its ``TrainState`` fresh or from its checkpoint, its run folder
begun), so member k gets ``fit``'s initial weights, standardizer, shuffle generator, dropout
generator, optimizer and schedule for its configuration. The pack then trains the members in
lock step, and every progress record of the epoch loop (``gpunet.train.loop``) is handed to
member k's own driver, which writes its files and tells the callback, exactly as in ``fit``.

Data order: members whose data split and seed agree read one batch (the first Dense takes it
as a shared input); otherwise each group of members reads its own batches, gathered into an
(n, K*in) input. Members stop alone: a NaN / inf loss (status ``diverged``: the metrics log
records it, ``last.h5`` stays the last good checkpoint), early stopping (``patience``), or a
callback that raises ``StopMember`` (status ``pruned``, logged as a ``pruned`` event); the
others' numbers do not change. A resumed pack leaves out the members with nothing left to train
(finished, early-stopped: told by their checkpoints) and those that stopped alone after their
last checkpoint (diverged, pruned: told by their logs, ``stopped_member``); their run folders
are read, never written, and their results are reported as they ended.

Files: every member's ``last.h5``, ``best.h5`` and metrics lines of one save point of the pack
are made durable and committed together (``members.PackCommit``, ``fileio.DurableBatch``).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import checkpoint as ckpt_mod
from ..backend import Backend, get_backend
from ..config import TrainConfig
from ..errors import CheckpointError, ConfigError, TrainingDiverged
from ..train.evaluation import EVAL_BATCH_SIZE, _input_batches, _nll_rows
from ..train.feeds import make_feed
from ..train.fitting import _class_weights, _Driver, _open_dataset, _prepare_config, start_run
from ..train.loop import BatchDone, CheckpointDue, Diverged, EpochDone, EpochStarted, Progress
from ..train.result import FitResult
from ..train.runfolder import RunFolder, default_out_dir, normalize_data_ref
from ..train.state import TrainState
from .members import PackCommit
from .model import PackedMLP
from .optim import PackedOptimizer
from .step import PackedTrainStep

#: ``callback(member, event, info)``: ``fit``'s events, for member index ``member``
PackCallback = Callable[[int, str, dict[str, Any]], None]

#: what the members of a pack must share (``TrainConfig`` keys)
PACK_KEYS = ("hidden", "batchnorm", "activation", "batch_size", "epochs", "drop_last",
             "device", "cuda_graph", "tf32", "save_every")


#: the metrics-log events of a member that stopped alone (``fit_packed`` leaves it out of a
#: resumed pack)
STOP_EVENTS = ("diverged", "pruned")


class StopMember(Exception):  # noqa: N818 - a signal, not an error
    """Raised by a pack callback while handling member k's event: member k stops (status
    ``pruned``, its files as last written), the other members go on."""


@dataclass
class PackedFitResult:
    """What ``fit_packed`` returns: one ``FitResult`` per member (``status``: ``finished``,
    ``early_stopped``, ``diverged`` or ``pruned``) and each member's error message (None
    unless it diverged or was pruned)."""

    results: list[FitResult]
    errors: list[str | None] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """Mean, std (population), min and max of the members' best validation accuracy
        (``val_acc``) and test accuracy (``test_acc``) over the members that have one, and
        each member's ``FitResult.summary()``."""
        members = [r.summary() for r in self.results]
        stats: dict[str, Any] = {}
        for key, src in (("val_acc", "best_value"), ("test_acc", "test_accuracy")):
            vals = [m[src] for m in members if m.get(src) is not None
                    and (key != "val_acc" or m["best_metric"] == "val_acc")]
            stats[key] = None if not vals else {
                "mean": float(np.mean(vals)), "std": float(np.std(vals)),
                "min": float(np.min(vals)), "max": float(np.max(vals)), "n": len(vals)}
        return {"members": len(members), **stats, "seconds": round(self.seconds, 3),
                "statuses": [m["status"] for m in members], "runs": members}


def fit_packed(configs: Sequence[TrainConfig | dict[str, Any]],
               backend: Backend | str | None = None, *,
               resume: Sequence[str | Path | None] | None = None, dataset: Any = None,
               callback: PackCallback | None = None) -> PackedFitResult:
    """Train each configuration as ``gpunet.train.fit(configs[k], resume=resume[k])`` would,
    all of them as one pack (see the module docstring).

    The configurations must share the architecture, batch size, epochs and the other
    ``PACK_KEYS``; each needs its own ``out`` (default: ``runs/<data>-<time>/member-<k>``).
    ``dataset`` (optional) serves every member, as ``fit``'s. ``callback(k, event, info)``
    receives member k's ``fit`` events; raising ``StopMember`` there stops member k alone.
    """
    t0 = time.perf_counter()
    cfgs = _member_configs(configs)
    resumes = list(resume) if resume is not None else [None] * len(cfgs)
    if len(resumes) != len(cfgs):
        raise ConfigError(f"{len(resumes)} resume paths for {len(cfgs)} members")
    commit = PackCommit([c.out for c in cfgs])
    commit.recover()
    be = get_backend(backend if backend is not None else cfgs[0].device)
    datasets = _datasets(cfgs, dataset)
    stopped = [stopped_member(r) for r in resumes]
    errors = [s[1] if s is not None else None for s in stopped]
    with contextlib.ExitStack() as members:  # each member's run folder locked till the end
        drivers, train = [], []
        for k, cfg in enumerate(cfgs):
            say = _member_callback(callback, k)
            if stopped[k] is not None:  # diverged or pruned before the pack was killed
                drivers.append(_stopped_driver(cfg, be, resumes[k], datasets[k], say,
                                               stopped[k][0]))
                continue
            d, finished = members.enter_context(
                start_run(cfg, be, resume=resumes[k], dataset=datasets[k], callback=say,
                          prepare=False))
            drivers.append(d)
            if not finished:
                train.append(k)
        if train:  # the members with epochs left, as one pack
            run = _PackRun([drivers[k] for k in train], commit)
            run.train()
            for i, k in enumerate(train):
                errors[k] = run.errors[i]
        results = [d.finish(t0, resumes[k], d.changed) for k, d in enumerate(drivers)]
    return PackedFitResult(results, errors, time.perf_counter() - t0)


def stopped_member(resume: str | Path | None) -> tuple[str, str] | None:
    """``(status, message)`` when the run of checkpoint ``resume`` stopped alone in its pack
    after that checkpoint (its metrics log ends with a ``diverged`` or ``pruned`` event at or
    past the checkpoint's step: ``last.h5`` stayed the last good one), else None. Such a
    member is left out of a resumed pack (early-stopped and finished members are told by
    their checkpoint)."""
    if resume is None:
        return None
    path = Path(resume)
    try:
        recs = RunFolder(path.parent).metrics.read()
        last = recs[-1] if recs else {}
        if last.get("event") not in STOP_EVENTS or \
                int(last.get("step", -1)) < ckpt_mod.load(path).step:
            return None
    except (OSError, ValueError, TypeError, CheckpointError):
        return None  # start_run reports what is wrong with the files
    status = str(last["event"])
    if status == "diverged":
        msg = (f"training diverged: the loss became {last.get('loss')} in epoch "
               f"{last.get('epoch')} (its run folder's metrics.jsonl); the last good "
               f"checkpoint is {path}")
    else:
        msg = str(last.get("reason") or "pruned")
    return status, msg


def _stopped_driver(cfg: TrainConfig, be: Backend, resume: str | Path | None, dataset: Any,
                    say: Callable[[str, dict], None], status: str) -> _Driver:
    """A member that stopped alone before: its state read from its checkpoint, its history
    from its log, nothing written (``start_run`` for a run with nothing left to train)."""
    cfg, ck, changed = _prepare_config(cfg, resume)
    ds = dataset if dataset is not None else _open_dataset(cfg)
    assert ck is not None
    state = TrainState.from_checkpoint(ck, cfg, ds, be)
    state.status = status
    driver = _Driver(cfg, RunFolder(str(cfg.out)), state, ds, say)
    driver.changed = changed
    driver.announce(resume, finished=True)
    return driver


def _member_callback(callback: PackCallback | None, k: int) -> Callable[[str, dict], None]:
    def say(event: str, info: dict[str, Any]) -> None:
        if callback is not None:
            callback(k, event, info)
    return say


def _member_configs(configs: Sequence[TrainConfig | dict[str, Any]]) -> list[TrainConfig]:
    """The configurations, checked to fit one pack; ``out`` filled in where missing."""
    cfgs = [c if isinstance(c, TrainConfig) else TrainConfig.from_dict(c) for c in configs]
    if not cfgs:
        raise ConfigError("a pack needs at least one configuration")
    base = cfgs[0]
    for c in cfgs[1:]:
        diff = [key for key in PACK_KEYS if getattr(c, key) != getattr(base, key)]
        if diff:
            raise ConfigError(f"pack members must share {', '.join(diff)}")
    if any(c.out is None for c in cfgs):
        root = default_out_dir(str(base.data or "run"))
        cfgs = [c if c.out is not None else c.updated({"out": str(root / f"member-{k}")})
                for k, c in enumerate(cfgs)]
    outs = [str(Path(c.out).resolve()) for c in cfgs]
    if len(set(outs)) != len(outs):
        raise ConfigError("pack members need distinct run folders (out)")
    return cfgs


def _datasets(cfgs: list[TrainConfig], dataset: Any) -> list[Any]:
    """One dataset per member, opened once per distinct data split: members that differ only
    in seed share one unless the validation split is drawn by the seed."""
    if dataset is not None:
        return [dataset] * len(cfgs)
    cache: dict[tuple[Any, ...], Any] = {}
    out = []
    for cfg in cfgs:
        if cfg.data is None:
            out.append(None)  # a resumed member: start_run takes the data from its checkpoint
            continue
        c = cfg.resolve()
        c.data, c.val = normalize_data_ref(c.data), normalize_data_ref(c.val)
        key = (c.data, c.x_key, c.y_key, c.val, c.val_split, c.memory_budget)
        ds = cache.get(key) or cache.get(key + (c.seed,))
        if ds is None:
            ds = cache[key + (c.seed,)] = _open_dataset(c)
            if getattr(ds, "val_source", "split") != "split":
                cache[key] = ds
        out.append(ds)
    return out


class _Target:
    """Batch buffers a device feed gathers into (a member group's, when not shared)."""

    def __init__(self, be: Backend, b: int, d: int) -> None:
        self.x = be.zeros((b, d), dtype=np.float32)
        self.y = be.zeros((b,), dtype=np.int64)


@dataclass
class _Clock:
    t0: float
    seconds0: float
    count0: int
    train_time: float = 0.0

    def seconds(self) -> float:
        return self.seconds0 + (time.perf_counter() - self.t0)


class _PackRun:
    """The members' drivers, the pack built from their states, and the lock-step epoch
    loop that hands each member's progress records to its driver."""

    def __init__(self, drivers: list[_Driver], commit: PackCommit) -> None:
        self.drivers, self.commit = drivers, commit
        self.k = len(drivers)
        self.states = [d.state for d in drivers]
        self.cfg = drivers[0].cfg
        self.errors: list[str | None] = [None] * self.k
        self.running = np.ones(self.k, dtype=bool)
        self._check_aligned()
        self.pack = PackedMLP.from_members([s.model for s in self.states])
        self.opt = PackedOptimizer(self.pack, [s.optimizer for s in self.states])
        self.be = be = self.pack.backend
        self._groups()
        self.step = PackedTrainStep(self.pack, self.opt, self.cfg.batch_size,
                                    class_weights=self._class_weights(),
                                    shared_input=len(self.groups) == 1,
                                    cuda_graph=self.cfg.cuda_graph, tf32=self.cfg.tf32)
        b, d = self.cfg.batch_size, self.pack.config["in_features"]
        shared = len(self.groups) == 1
        self.feeds = [make_feed(be, self.drivers[g[0]].ds.train, self.states[g[0]].standardizer,
                                b, self.step if shared else _Target(be, b, d))
                      for g in self.groups]
        self.step.set_active(self.running)
        for d in drivers:  # last.h5 / best.h5 saves and metrics lines: the pack's commit
            d.run.save = commit.saver(d.run)  # type: ignore[method-assign]
            d.run.metrics.append = commit.appender(d.run.metrics)  # type: ignore[method-assign]

    def _check_aligned(self) -> None:
        points = {(s.epoch, s.batch, s.step) for s in self.states}
        if len(points) > 1:
            raise ConfigError("the pack's members were saved at different points "
                              f"(epoch, batch, step: {sorted(points)}); resume them alone")

    def _groups(self) -> None:
        """Members reading the same batches (same data split, same seed) share one shuffle
        generator; ``groups`` lists them."""
        by_key: dict[tuple[int, int], list[int]] = {}
        for k, d in enumerate(self.drivers):
            by_key.setdefault((id(d.ds), d.cfg.seed), []).append(k)
        self.groups = list(by_key.values())
        for g in self.groups:
            for k in g[1:]:
                self.states[k].shuffle_rng = self.states[g[0]].shuffle_rng
        self.shared_val = all(d.ds is self.drivers[0].ds for d in self.drivers)

    def _class_weights(self) -> Any:
        ws = [_class_weights(d.cfg, d.ds) for d in self.drivers]
        if all(w is None for w in ws):
            return None
        c = self.pack.config["classes"]
        rows = [np.ones(c, np.float32) if w is None else w for w in ws]
        return self.be.asarray(np.stack(rows).astype(np.float32))

    # ------------------------------------------------------------------ the loop
    def train(self) -> None:
        epochs = self.cfg.epochs
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            while self.running.any() and self._lead().epoch < epochs:
                self._epoch()
        self.commit.commit()  # what the last members to stop logged (pruned mid-epoch)

    def _lead(self) -> Any:
        return self.states[int(np.flatnonzero(self.running)[0])]

    def _members(self) -> list[int]:
        return [int(k) for k in np.flatnonzero(self.running)]

    def _batches(self, lead: Any) -> Iterator[tuple[Any, Any]]:
        """The epoch's batches: the shared one, or each group's gathered into (n, K*in)."""
        drop = lead.drop_last
        if len(self.groups) == 1:
            yield from self.feeds[0].epoch(self.states[0].shuffle_rng, drop)
            return
        xp, d, k = self.be.xp, self.pack.config["in_features"], self.k
        its = [f.epoch(self.states[g[0]].shuffle_rng, drop)
               for f, g in zip(self.feeds, self.groups, strict=True)]
        for parts in zip(*its, strict=True):
            n = parts[0][0].shape[0]
            full = n == self.cfg.batch_size
            x = self.step.x if full else self.be.empty((n, k * d), dtype=np.float32)
            y = self.step.y if full else self.be.empty((n, k), dtype=np.int64)
            for (xb, yb), g in zip(parts, self.groups, strict=True):
                for m in g:
                    xp.copyto(x[:, m * d:(m + 1) * d], xb)
                    xp.copyto(y[:, m], yb)
            yield x, y

    def _epoch(self) -> None:
        lead, step, members = self._lead(), self.step, self._members()
        epoch = lead.epoch + 1
        lrs = [s.optimizer.set_epoch(s.epoch) for s in self.states]
        step.set_lr(lrs)
        clock = _Clock(time.perf_counter(), lead.epoch_seconds, lead.epoch_count)
        skip, count = lead.batch, lead.epoch_count
        step.reset_sums([s.epoch_loss_sum for s in self.states],
                        [s.epoch_correct for s in self.states])
        for k in members:
            self.states[k].status = "running"
            self._handle(k, EpochStarted(epoch, lrs[k], skip))
        check = not self.be.asynchronous
        for bi, (xb, yb) in enumerate(self._batches(lead)):
            if bi < skip or not self.running.any():
                continue
            tb = time.perf_counter()
            nb = int(xb.shape[0])
            step.run(xb, yb) if nb == self.cfg.batch_size else step.run_eager(xb, yb)
            if check:
                self._check_step(epoch)
            count += nb
            for k in self._members():
                self.states[k].step += 1
                self.states[k].batch = bi + 1
            clock.train_time += time.perf_counter() - tb
            for k in self._members():
                self._handle(k, BatchDone(epoch, bi + 1, self.states[k].n_batches))
            self._maybe_save(epoch, count, clock)
        if self.running.any():
            self._end_epoch(epoch, count, clock, lrs)

    def _check_step(self, epoch: int) -> None:
        """Members the step switched off (a NaN / inf loss) diverged at this step."""
        active = self.step.active_members()
        if active[self.running].all():
            return
        losses = self.be.to_host(self.step.losses)
        for k in self._members():
            if not active[k]:
                s = self.states[k]
                self._diverge(k, Diverged(epoch, s.step, f"at epoch {epoch}, step {s.step + 1}",
                                          float(losses[k])))
        self.commit.sync()  # the divergence events on disk now, not at the next save

    def _maybe_save(self, epoch: int, count: int, clock: _Clock) -> None:
        lead, every = self._lead() if self.running.any() else None, self.cfg.save_every
        if lead is None or not every or lead.step % every or lead.batch >= lead.n_batches:
            return
        loss_sum, correct = self.step.sums()
        for k in self._members():
            if not math.isfinite(loss_sum[k]):
                self._diverge(k, Diverged(epoch, lead.step, f"in epoch {epoch}", loss_sum[k]))
                continue
            s = self.states[k]
            s.epoch_loss_sum, s.epoch_correct, s.epoch_count = float(loss_sum[k]), \
                int(correct[k]), count
            s.epoch_seconds = clock.seconds()
            self._sync(k)
            self._handle(k, CheckpointDue(s.step))
        self.commit.commit()

    def _end_epoch(self, epoch: int, count: int, clock: _Clock, lrs: list[float]) -> None:
        """Read the sums, validate, close the epoch of every running member, save."""
        loss_sum, correct = self.step.sums()
        if self.be.asynchronous:
            clock.train_time = time.perf_counter() - clock.t0
        active = self.step.active_members()
        for k in self._members():
            if not active[k] or not math.isfinite(loss_sum[k]):
                self._diverge(k, Diverged(epoch, self.states[k].step, f"in epoch {epoch}",
                                          float(loss_sum[k]) if active[k] else math.nan))
        vals = self._validate()
        seconds = clock.seconds()
        for k in self._members():
            s, cfg = self.states[k], self.drivers[k].cfg
            train_loss, train_acc = loss_sum[k] / max(count, 1), correct[k] / max(count, 1)
            val_loss, val_acc = vals[k]
            current = val_acc if s.monitor == "val_acc" else float(train_acc)
            improved, stop = s.end_epoch(current, cfg.epochs, cfg.patience)
            rec = {"epoch": s.epoch, "step": s.step, "train_loss": float(train_loss),
                   "train_acc": float(train_acc), "val_loss": val_loss, "val_acc": val_acc,
                   "lr": lrs[k], "seconds": round(seconds, 4),
                   "samples_per_s": round((count - clock.count0) / clock.train_time, 1)
                   if clock.train_time > 0 else None}
            self._sync(k)
            self._handle(k, EpochDone(rec, improved, stop))
            if s.status != "running":
                self.running[k] = False
        self.commit.commit()
        self.step.set_active(self.running)

    # ------------------------------------------------------------------ members
    def _sync(self, k: int) -> None:
        """Member k's pack rows into its ``TrainState``'s model and optimizer."""
        s = self.states[k]
        self.pack.store_member(k, s.model)
        self.opt.store_member(k, s.optimizer)

    def _handle(self, k: int, rec: Progress) -> None:
        """Member k's driver takes the record (files, callback events); a ``StopMember``
        from the callback stops member k."""
        try:
            self.drivers[k].handle(rec)
        except StopMember as e:
            self._stop(k, "pruned", str(e) or "pruned")

    def _diverge(self, k: int, rec: Diverged) -> None:
        try:
            self.drivers[k].handle(rec)
        except TrainingDiverged as e:
            self._stop(k, "diverged", str(e))

    def _stop(self, k: int, status: str, message: str) -> None:
        s = self.states[k]
        if status == "pruned":  # logged, as a divergence is: a resumed pack leaves k out
            self.drivers[k].run.metrics.append({"event": "pruned", "epoch": s.epoch,
                                                "step": s.step, "reason": message})
        self.states[k].status = status
        self.errors[k] = message
        self.running[k] = False
        self.step.set_active(self.running)

    def _validate(self) -> dict[int, tuple[float | None, float | None]]:
        """``(val_loss, val_acc)`` of each running member, as ``evaluate`` computes them:
        one packed inference pass when the members share the validation data."""
        members = self._members()
        if not self.shared_val:
            out = {}
            for k in members:
                self.pack.store_member(k, self.states[k].model)
                out[k] = self.drivers[k].validate()
            return out
        ds, std = self.drivers[0].ds, self.states[0].standardizer
        if ds.val is None:
            return {k: (None, None) for k in members}
        c, d = self.pack.config["classes"], self.pack.config["in_features"]
        nlls: dict[int, list[np.ndarray]] = {k: [] for k in members}
        hits = dict.fromkeys(members, 0)
        n = 0
        for xb, yb in _input_batches(self.be, ds.val, std, EVAL_BATCH_SIZE, d):
            logits = np.asarray(self.be.to_host(self.pack.forward(xb, training=False)))
            z = logits.reshape(logits.shape[0], self.k, c)
            for k in members:
                nlls[k].append(_nll_rows(z[:, k], yb))
                hits[k] += int((z[:, k].argmax(axis=1) == yb).sum())
            n += int(yb.shape[0])
        return {k: (float(np.concatenate(nlls[k]).sum() / n), hits[k] / n) for k in members}
