"""The epoch loop: trains a ``TrainState`` and yields what happened, doing no I/O.

``train_epochs`` runs epochs until ``epochs`` are done or early stopping says stop, and
yields progress records in order: ``EpochStarted``, then per batch ``BatchDone`` (followed by
``CheckpointDue`` every ``save_every`` steps inside an epoch, the state then holding the
epoch's partial sums), then ``EpochDone`` with the epoch's metrics record. A NaN / inf loss
yields ``Diverged`` and ends the loop. The caller (``fit``) writes files and reports; the
loop only advances the state, so a consumer that stops iterating leaves the state at the last
record it saw.

A run resumed in the middle of an epoch replays the epoch's permutation from the shuffle
generator's epoch-start state and skips (reads, does not train on) the batches already done,
so it continues at the same point of the same permutation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..step import TrainStep
from .feeds import Feed
from .state import TrainState


@dataclass(frozen=True)
class EpochStarted:
    """An epoch begins (``epoch`` counts from 1); ``skip`` batches were done before a
    resume."""

    epoch: int
    lr: float
    skip: int


@dataclass(frozen=True)
class BatchDone:
    """A training step finished: batch ``batch`` of ``batches`` in epoch ``epoch``."""

    epoch: int
    batch: int
    batches: int


@dataclass(frozen=True)
class CheckpointDue:
    """``save_every`` steps: the state (with the epoch's partial sums) is ready to save."""

    step: int


@dataclass(frozen=True)
class EpochDone:
    """An epoch ended: ``record`` is its ``metrics.jsonl`` line; ``improved`` whether it is
    the new best; ``stop`` whether early stopping ends the run here."""

    record: dict[str, Any]
    improved: bool
    stop: bool


@dataclass(frozen=True)
class Diverged:
    """The loss became ``value`` (NaN / inf) ``where``; the loop ends."""

    epoch: int
    step: int
    where: str
    value: float


Progress = EpochStarted | BatchDone | CheckpointDue | EpochDone | Diverged


@dataclass(frozen=True)
class LoopOptions:
    """How the loop runs. ``validate()`` returns ``(val_loss, val_acc)`` (both None without a
    validation set); ``check_each_step`` reads each step's loss on the host to stop at the
    first NaN (free on a synchronous backend); ``asynchronous``: the steps are queued, so an
    epoch's training time is only known once its sums are read."""

    epochs: int
    patience: int
    save_every: int
    validate: Callable[[], tuple[float | None, float | None]]
    check_each_step: bool = True
    asynchronous: bool = False


def train_epochs(state: TrainState, stepper: TrainStep, feed: Feed,
                 opts: LoopOptions) -> Iterator[Progress]:
    """Train from ``state`` until ``opts.epochs`` epochs are done, early stopping ends the run,
    or the loss diverges; yields progress records (see the module docstring)."""
    while state.epoch < opts.epochs:
        stop = yield from _epoch(state, stepper, feed, opts)
        if stop:
            return


@dataclass
class _EpochClock:
    """An epoch's timing: ``seconds0`` and ``count0`` were done before a resume."""

    t0: float
    seconds0: float
    count0: int
    train_time: float = 0.0

    def seconds(self) -> float:
        return self.seconds0 + (time.perf_counter() - self.t0)


def _epoch(state: TrainState, stepper: TrainStep, feed: Feed,
           opts: LoopOptions) -> Iterator[Progress]:
    """One epoch (or the rest of one); returns whether the loop ends."""
    epoch = state.epoch + 1
    lr = state.optimizer.set_epoch(state.epoch)
    stepper.set_lr(lr)
    clock = _EpochClock(time.perf_counter(), state.epoch_seconds, state.epoch_count)
    skip = state.batch
    stepper.reset_sums(state.epoch_loss_sum, state.epoch_correct)
    count = state.epoch_count
    state.status = "running"
    yield EpochStarted(epoch, lr, skip)
    for bi, (xb, yb) in enumerate(feed.epoch(state.shuffle_rng, state.drop_last)):
        if bi < skip:
            continue
        tb = time.perf_counter()
        nb = int(xb.shape[0])
        loss = stepper.run(xb, yb) if nb == state.batch_size else stepper.run_eager(xb, yb)
        if opts.check_each_step and not math.isfinite(float(loss)):
            yield Diverged(epoch, state.step, f"at epoch {epoch}, step {state.step + 1}",
                           float(loss))
            return True
        state.step += 1
        count += nb
        state.batch = bi + 1
        clock.train_time += time.perf_counter() - tb
        yield BatchDone(epoch, state.batch, state.n_batches)
        if opts.save_every and state.step % opts.save_every == 0 \
                and state.batch < state.n_batches:
            loss_sum, correct = stepper.sums()
            if not math.isfinite(loss_sum):
                yield Diverged(epoch, state.step, f"in epoch {epoch}", loss_sum)
                return True
            state.epoch_loss_sum, state.epoch_correct, state.epoch_count = loss_sum, correct, \
                count
            state.epoch_seconds = clock.seconds()
            yield CheckpointDue(state.step)
    return (yield from _end_epoch(state, stepper, opts, clock, count, lr))


def _end_epoch(state: TrainState, stepper: TrainStep, opts: LoopOptions, clock: _EpochClock,
               count: int, lr: float) -> Iterator[Progress]:
    """Read the epoch's sums, validate, close the epoch in ``state``, yield its record."""
    loss_sum, correct = stepper.sums()
    if opts.asynchronous:  # the steps were queued: count until they finished
        clock.train_time = time.perf_counter() - clock.t0
    if not math.isfinite(loss_sum):
        yield Diverged(state.epoch + 1, state.step, f"in epoch {state.epoch + 1}", loss_sum)
        return True
    train_loss = loss_sum / max(count, 1)
    train_acc = correct / max(count, 1)
    val_loss, val_acc = opts.validate()
    seconds = clock.seconds()
    current = val_acc if state.monitor == "val_acc" else train_acc
    improved, stop = state.end_epoch(current, opts.epochs, opts.patience)
    rec = {"epoch": state.epoch, "step": state.step, "train_loss": train_loss,
           "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc, "lr": lr,
           "seconds": round(seconds, 4),
           "samples_per_s": round((count - clock.count0) / clock.train_time, 1)
           if clock.train_time > 0 else None}
    yield EpochDone(rec, improved, stop)
    return stop
