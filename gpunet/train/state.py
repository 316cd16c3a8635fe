"""The training state: everything a run needs to continue exactly, and its checkpoint form.

``TrainState`` holds the model, the optimizer, the standardizer, the shuffle generator and
the progress counters. ``to_checkpoint`` / ``from_checkpoint`` convert it to and from a
``checkpoint.Checkpoint`` (docs/architecture.md, "Checkpoint format"): the ``progress``
attribute holds the counters, ``rng`` the shuffle generator's state at the start of the
epoch in progress and the dropout generator's state.

Counting conventions: ``epoch`` is the number of completed epochs, ``batch`` the batches done
in the epoch in progress, ``step`` the optimizer steps taken. The ``epoch_*`` sums are the
partial sums of the epoch in progress (zero at an epoch boundary).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import checkpoint as ckpt_mod
from ..backend import Backend
from ..config import TrainConfig
from ..errors import CheckpointError, ConfigError
from ..model import MLP
from ..optim import Optimizer, make_optimizer, make_schedule
from .evaluation import standardizer_from_checkpoint

#: the SeedSequence child that seeds the shuffle generator (MLP uses children 0 and 1)
SHUFFLE_STREAM = 2


def drops_last(cfg: TrainConfig, n_train: int) -> bool:
    """Whether each epoch drops its last partial batch: ``--drop-last``, or batch norm with a
    last batch of one sample (whose batch variance is undefined)."""
    return bool(cfg.drop_last or (cfg.batchnorm and n_train % cfg.batch_size == 1))


def batches_per_epoch(n_train: int, batch_size: int, drop_last: bool) -> int:
    """Batches in one epoch: ``n // b`` when the last partial batch is dropped, else
    ``ceil(n / b)``."""
    return n_train // batch_size if drop_last else math.ceil(n_train / batch_size)


def shuffle_generator(seed: int) -> np.random.Generator:
    """The shuffle generator of a run: ``SeedSequence(seed, spawn_key=(2,))``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SHUFFLE_STREAM,)))


def make_run_optimizer(cfg: TrainConfig, model: MLP) -> Optimizer:
    """The optimizer and learning-rate schedule ``cfg`` asks for (a resolved config)."""
    schedule = make_schedule(cfg.lr_schedule, epochs=cfg.epochs, **cfg.schedule_kwargs())
    return make_optimizer(cfg.optimizer, model, schedule=schedule, **cfg.optimizer_kwargs())


#: the values of ``progress["status"]``
STATUSES = ("running", "finished", "early_stopped")


def _counters(ck: ckpt_mod.Checkpoint) -> tuple[int, int, int]:
    """``(epoch, batch, step)`` of a checkpoint's progress, checked (``CheckpointError``):
    counts are non-negative integers, every epoch took a step at least, the best epoch is
    done, sums are finite, status and metric are known."""
    pr = ck.progress
    try:
        epoch, batch, step = (_int(pr[k]) for k in ("epoch", "batch", "step"))
        best_epoch = _int(pr.get("best_epoch", 0))
        improved = _int(pr.get("improved_epoch", best_epoch))
        bv = pr.get("best_value")
        if bv is not None and not math.isfinite(float(bv)):
            raise ValueError("best_value is not finite")
        for k in ("epoch_loss_sum", "epoch_seconds"):
            if not math.isfinite(float(pr.get(k, 0.0))):
                raise ValueError(f"{k} is not finite")
        for k in ("epoch_correct", "epoch_count"):
            _int(pr.get(k, 0))
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise CheckpointError(f"checkpoint {ck.path}: bad progress record ({e})") from None
    if str(pr.get("status", "running")) not in STATUSES or \
            str(pr.get("best_metric", "val_acc")) not in ("val_acc", "train_acc"):
        raise CheckpointError(f"checkpoint {ck.path}: bad progress record (status "
                              f"{pr.get('status')!r}, metric {pr.get('best_metric')!r})")
    if best_epoch > epoch or improved > epoch or step < epoch + (1 if batch else 0):
        raise CheckpointError(f"checkpoint {ck.path}: inconsistent progress record (epoch "
                              f"{epoch}, batch {batch}, step {step}, best epoch {best_epoch})")
    return epoch, batch, step


def _int(v: Any) -> int:
    """A non-negative integer (bools and floats with a fraction refused)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v < 0:
        raise ValueError(f"{v!r} is not a count")
    return int(v)


@dataclass
class TrainState:
    """A run's mutable state between two steps (see the module docstring for the counters).

    ``best_value`` is ``-inf`` before the first epoch ends; ``improved_epoch`` is the last
    epoch that strictly improved the monitored metric (``patience`` counts from it)."""

    model: MLP
    optimizer: Optimizer
    standardizer: Any
    shuffle_rng: np.random.Generator
    n_train: int
    batch_size: int
    drop_last: bool
    monitor: str = "val_acc"
    epoch: int = 0
    batch: int = 0
    step: int = 0
    status: str = "running"
    best_value: float = -math.inf
    best_epoch: int = 0
    improved_epoch: int = 0
    shuffle_epoch_start: dict[str, Any] | None = None
    epoch_loss_sum: float = 0.0
    epoch_correct: int = 0
    epoch_count: int = 0
    epoch_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.shuffle_epoch_start is None:
            self.shuffle_epoch_start = self.shuffle_rng.bit_generator.state

    @property
    def n_batches(self) -> int:
        """Batches per epoch, ``drop_last`` applied."""
        return batches_per_epoch(self.n_train, self.batch_size, self.drop_last)

    @property
    def best(self) -> float | None:
        """The best monitored value so far (None before the first epoch ends)."""
        return None if self.best_value == -math.inf else self.best_value

    # ------------------------------------------------------------------ construction
    @classmethod
    def fresh(cls, cfg: TrainConfig, dataset: Any, backend: Backend) -> TrainState:
        """A new run: the standardizer fitted on ``dataset.train``, a new model from
        ``cfg.seed``, a fresh optimizer (``cfg`` is resolved)."""
        from ..data import Standardizer

        standardizer = Standardizer.fit(dataset.train)
        model = MLP(dataset.n_features, cfg.hidden, dataset.n_classes, batchnorm=cfg.batchnorm,
                    dropout=cfg.dropout, activation=cfg.activation, backend=backend,
                    seed=cfg.seed, bn_momentum=cfg.bn_momentum)
        n_train = int(dataset.train.n)
        return cls(model=model, optimizer=make_run_optimizer(cfg, model),
                   standardizer=standardizer, shuffle_rng=shuffle_generator(cfg.seed),
                   n_train=n_train, batch_size=cfg.batch_size,
                   drop_last=drops_last(cfg, n_train),
                   monitor="val_acc" if dataset.val is not None else "train_acc")

    @classmethod
    def from_checkpoint(cls, ck: ckpt_mod.Checkpoint, cfg: TrainConfig, dataset: Any,
                        backend: Backend) -> TrainState:
        """The state saved in ``ck``, to continue on ``dataset`` with ``cfg`` (which may
        change the optimizer's hyperparameters, and the batch size at an epoch boundary)."""
        if ck.in_features != dataset.n_features or ck.n_classes != dataset.n_classes:
            raise CheckpointError(
                f"checkpoint {ck.path} is for {ck.in_features} features and {ck.n_classes} "
                f"classes but {cfg.data} has {dataset.n_features} and {dataset.n_classes}")
        pr = ck.progress
        epoch, batch, step = _counters(ck)
        if batch and int(pr.get("batch_size", cfg.batch_size)) != cfg.batch_size:
            raise ConfigError("the checkpoint was saved in the middle of an epoch; the batch "
                              "size can only change at an epoch boundary")
        n_batches = batches_per_epoch(int(dataset.train.n), cfg.batch_size,
                                      drops_last(cfg, int(dataset.train.n)))
        if batch >= n_batches:
            raise CheckpointError(f"checkpoint {ck.path} was saved at batch {batch} of an "
                                  f"epoch, but {cfg.data} makes {n_batches} batches per epoch")
        standardizer = standardizer_from_checkpoint(ck)
        model = ckpt_mod.build_model(ck, backend)
        opt = make_run_optimizer(cfg, model)
        try:
            opt.load_state_dict({"t": ck.optimizer.get("t", step), "lr": opt.lr,
                                 **ck.optimizer_state})
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"checkpoint {ck.path}: bad optimizer state ({e})") from None
        rng = shuffle_generator(cfg.seed)
        ckpt_mod.set_rng_state(rng, ck.rng["shuffle_epoch_start"])
        bv = pr.get("best_value")
        best_epoch = int(pr.get("best_epoch", 0))
        n_train = int(dataset.train.n)
        return cls(
            model=model, optimizer=opt, standardizer=standardizer, shuffle_rng=rng,
            n_train=n_train, batch_size=cfg.batch_size, drop_last=drops_last(cfg, n_train),
            monitor=str(pr.get("best_metric",
                               "val_acc" if dataset.val is not None else "train_acc")),
            epoch=epoch, batch=batch, step=step, status=str(pr.get("status", "running")),
            best_value=-math.inf if bv is None else float(bv), best_epoch=best_epoch,
            improved_epoch=int(pr.get("improved_epoch", best_epoch)),
            shuffle_epoch_start=ck.rng["shuffle_epoch_start"],
            epoch_loss_sum=float(pr.get("epoch_loss_sum", 0.0)),
            epoch_correct=int(pr.get("epoch_correct", 0)),
            epoch_count=int(pr.get("epoch_count", 0)),
            epoch_seconds=float(pr.get("epoch_seconds", 0.0)))

    def to_checkpoint(self, *, config: dict[str, Any], data: dict[str, Any],
                      classes: list[str]) -> ckpt_mod.Checkpoint:
        """This state as a ``Checkpoint`` (host copies), with the run's description."""
        return ckpt_mod.from_training_state(
            self.model, self.optimizer, self.standardizer, config=config, data=data,
            classes=classes,
            progress={"epoch": self.epoch, "batch": self.batch, "step": self.step,
                      "status": self.status, "batch_size": self.batch_size,
                      "best_metric": self.monitor, "best_value": self.best,
                      "best_epoch": self.best_epoch, "improved_epoch": self.improved_epoch,
                      "epoch_loss_sum": self.epoch_loss_sum,
                      "epoch_correct": self.epoch_correct, "epoch_count": self.epoch_count,
                      "epoch_seconds": self.epoch_seconds, "n_batches": self.n_batches},
            rng={"shuffle_epoch_start": self.shuffle_epoch_start,
                 "dropout": self.model.dropout_rng.bit_generator.state})

    # ------------------------------------------------------------------ progress
    def should_stop(self, patience: int) -> bool:
        """Early stopping: ``patience`` epochs (> 0) since the last strict improvement."""
        return patience > 0 and self.epoch - self.improved_epoch >= patience

    def nothing_left(self, epochs: int, patience: int) -> bool:
        """Whether a run resumed at an epoch boundary has nothing left to train (all
        ``epochs`` done, or stopped early and still out of patience); a run complete by its
        epochs is then marked ``finished`` unless it had stopped early."""
        if self.batch:
            return False
        if self.epoch >= epochs:
            if self.status != "early_stopped":
                self.status = "finished"
            return True
        return self.status == "early_stopped" and self.should_stop(patience)

    def end_epoch(self, current: float | None, epochs: int, patience: int) -> tuple[bool, bool]:
        """Close the epoch in progress; ``current`` is its monitored metric. Returns
        ``(improved, stop)``: the best value takes ties (the later, longer-trained epoch),
        while patience counts the epochs since the metric last strictly improved."""
        self.epoch += 1
        self.batch = 0
        self.shuffle_epoch_start = self.shuffle_rng.bit_generator.state
        improved = current is not None and current >= self.best_value
        if improved:
            if current > self.best_value:
                self.improved_epoch = self.epoch
            self.best_value, self.best_epoch = float(current), self.epoch
        stop = self.should_stop(patience)
        self.status = "early_stopped" if stop else (
            "finished" if self.epoch >= epochs else "running")
        self.epoch_loss_sum, self.epoch_correct, self.epoch_count = 0.0, 0, 0
        self.epoch_seconds = 0.0
        return improved, stop
