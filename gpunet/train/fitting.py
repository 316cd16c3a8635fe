"""``fit``: the training driver. It builds the run (configuration, data, ``TrainState``),
runs the epoch loop (``loop.train_epochs``) and turns the loop's progress records into files
(checkpoints, the metrics log) and callback events; it prints nothing itself.

Randomness: one ``seed`` feeds ``numpy.random.SeedSequence``. The model uses its children 0
(weight init) and 1 (dropout masks); the shuffle generator is child 2
(``SeedSequence(seed, spawn_key=(2,))``). All are host generators whose states are saved.

``best.h5`` holds the best validation accuracy (training accuracy when there is no
validation set; a tie goes to the later epoch, while ``patience`` counts the epochs since the
last strict improvement). Resuming from ``last.h5`` continues exactly, also from the middle
of an epoch (see ``loop``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .. import checkpoint as ckpt_mod
from ..backend import Backend, get_backend
from ..config import TrainConfig
from ..errors import ConfigError, DataError, TrainingDiverged
from ..fileio import remove_stale_temps
from ..model import MLP
from ..step import TrainStep
from .evaluation import evaluate
from .feeds import make_feed
from .loop import (
    BatchDone,
    CheckpointDue,
    Diverged,
    EpochDone,
    EpochStarted,
    LoopOptions,
    Progress,
    train_epochs,
)
from .result import FitResult
from .runfolder import (
    RunFolder,
    _same_folder,
    check_resume_config,
    default_out_dir,
    describe_stamp,
    normalize_data_ref,
)
from .state import TrainState, batches_per_epoch, drops_last

Callback = Callable[[str, dict[str, Any]], None]


def fit(
    config: TrainConfig | dict[str, Any],
    backend: Backend | str | None = None,
    *,
    resume: str | Path | None = None,
    dataset: Any = None,
    callback: Callback | None = None,
) -> FitResult:
    """Train an MLP as ``config`` says and write the run folder (see ``runfolder``).

    ``resume``: a checkpoint to continue from (``resolve_resume`` turns ``"auto"`` into a
    path); ``config`` must then keep the architecture, data and seed of the checkpoint's
    run (``config_for_resume`` builds such a config) and may change the learning rate, the
    optimizer's hyperparameters, the schedule, epochs, patience, class weights, batch size
    (at an epoch boundary) and the device. ``callback(event, info)`` is told ``start``,
    ``epoch_start``, ``batch``, ``epoch`` and ``end``; an exception it raises stops training
    (the files stay as last written). Raises ``TrainingDiverged`` on a NaN / inf loss,
    leaving the last good checkpoint as it was.

    The run folder (``config.out``; without it, beside a resumed checkpoint that is in a
    gpunet run folder, else a new ``runs/<data>-<time>``) must be new, empty or a gpunet run
    folder (``runfolder``); everything is checked before the first write, and the folder is
    locked while the run writes to it (``ConfigError`` when another process holds it).
    """
    t_start = time.perf_counter()
    with start_run(config, backend, resume=resume, dataset=dataset,
                   callback=callback) as (driver, finished):
        if not finished:
            driver.train()
        return driver.finish(t_start, resume, driver.changed)


@contextlib.contextmanager
def start_run(
    config: TrainConfig | dict[str, Any],
    backend: Backend | str | None = None,
    *,
    resume: str | Path | None = None,
    dataset: Any = None,
    callback: Callback | None = None,
    prepare: bool = True,
) -> Iterator[tuple[_Driver, bool]]:
    """``fit`` up to its epoch loop (the arguments are ``fit``'s), as a context: the checked
    config and data, the ``TrainState`` (fresh or from ``resume``), then the run folder made,
    locked (for the ``with`` block) and begun, and ``start`` announced. Yields the run's driver
    and whether a resumed run has nothing left to train (then nothing is written or locked,
    unless a kill interrupted a save). ``prepare=False`` leaves out this run's own training
    step and feed: ``gpunet.packed`` starts each member of a pack this way."""
    cfg, ck, changed = _prepare_config(config, resume)
    resume_path = Path(resume) if resume is not None else None
    stamp = describe_stamp(resume_path) if resume_path is not None else None
    run = RunFolder(str(cfg.out))
    run.check_target(resume_path)
    be = get_backend(backend if backend is not None else cfg.device)
    ds = dataset if dataset is not None else _open_dataset(cfg)
    _check_training_set(cfg, ds)
    state = (TrainState.fresh(cfg, ds, be) if ck is None
             else TrainState.from_checkpoint(ck, cfg, ds, be))
    driver = _Driver(cfg, run, state, ds, callback)
    driver.changed = changed
    if resume_path is not None and state.nothing_left(cfg.epochs, cfg.patience):
        # a no-op resume writes nothing, but completes a save a kill interrupted
        if driver.best_is_behind(resume_path) and _same_folder(resume_path.parent, run.out):
            with _locked(run, resume_path, stamp):
                remove_stale_temps(run.out)
                driver.restore_best(resume_path)
        driver.announce(resume, finished=True)
        yield driver, True
        return
    if prepare:
        driver.prepare()  # allocates the step's buffers and the feed: may run out of memory
    # every input is checked: only now the folder is made, locked and written
    with _locked(run, resume_path, stamp):
        driver.begin(resume, changed)
        driver.announce(resume, finished=False)
        yield driver, False


@contextlib.contextmanager
def _locked(run: RunFolder, resume: Path | None, stamp: Any) -> Iterator[None]:
    """Make and lock the run folder, check it is still as it was checked, release at the
    end."""
    run.acquire()
    try:
        _recheck(run, resume, stamp)
        yield
    finally:
        run.release()


def _recheck(run: RunFolder, resume: Path | None, stamp: Any) -> None:
    """With the lock held: the folder is as it was checked (no run appeared in it, the
    checkpoint to resume was not replaced meanwhile); ``ConfigError`` otherwise."""
    if resume is None:
        if run.holds_run():
            raise ConfigError(f"{run.out} already holds a run (last.h5 / best.h5): continue "
                              "it with --resume auto, or choose another --out")
        return
    if describe_stamp(resume) != stamp:
        raise ConfigError(f"{resume} changed while this run was starting (another process "
                          "saved it); start again")


def _prepare_config(config: TrainConfig | dict[str, Any], resume: str | Path | None
                    ) -> tuple[TrainConfig, ckpt_mod.Checkpoint | None, dict[str, list[Any]]]:
    """The resolved config (data paths made absolute, ``out`` chosen), the checkpoint to
    resume and what the config changes from it. Without ``out``, a resume continues beside
    its checkpoint when that is in a gpunet run folder, and in a new run folder otherwise."""
    cfg = (config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config))
    cfg = cfg.resolve()
    ck = ckpt_mod.load(resume) if resume is not None else None
    if cfg.data is None:
        if ck is None:
            raise ConfigError("no training data: give DATA (a .h5 file or 'digits')")
        cfg.data = ck.config.get("data")
    cfg.data = normalize_data_ref(cfg.data)
    cfg.val = normalize_data_ref(cfg.val)
    changed = check_resume_config(ck, cfg) if ck is not None else {}
    if cfg.out:
        out = Path(cfg.out)
    elif resume is not None and RunFolder(Path(resume).parent).is_ours():
        out = Path(resume).parent
    else:
        out = default_out_dir(str(cfg.data))
    cfg.out = str(out)
    return cfg, ck, changed


def _open_dataset(cfg: TrainConfig) -> Any:
    from .. import data as data_mod

    kw: dict[str, Any] = {}
    if cfg.memory_budget is not None:
        kw["memory_budget"] = cfg.memory_budget
    return data_mod.open_dataset(cfg.data, x_key=cfg.x_key, y_key=cfg.y_key, val=cfg.val,
                                 val_split=cfg.val_split, seed=cfg.seed,
                                 allow_external=cfg.allow_external_data, **kw)


def _check_training_set(cfg: TrainConfig, ds: Any) -> None:
    """``DataError`` when an epoch would have no batch to train on."""
    n_train = int(ds.train.n)
    if n_train < 1:
        raise DataError(f"{cfg.data}: the training set is empty")
    if batches_per_epoch(n_train, cfg.batch_size, drops_last(cfg, n_train)) > 0:
        return
    if cfg.batchnorm and n_train == 1:
        raise DataError(f"{cfg.data}: the training set has {n_train} sample; batch norm needs "
                        "at least 2 per batch (use --no-batchnorm)")
    raise DataError(f"{cfg.data}: the training set has {n_train} samples, fewer than one "
                    f"batch of {cfg.batch_size}, and --drop-last drops it")


def _data_ref(cfg: TrainConfig, ds: Any) -> dict[str, Any]:
    """The checkpoint's ``data`` attribute: how to find the run's data and held-out split."""
    heldout = "test" if ds.test is not None else ("val" if ds.val is not None else None)
    return {"path": cfg.data, "x_key": cfg.x_key, "y_key": cfg.y_key,
            "detected_x_key": ds.x_key, "detected_y_key": ds.y_key, "val": cfg.val,
            "val_split": cfg.val_split, "seed": cfg.seed, "val_source": ds.val_source,
            "heldout": heldout, "n_features": int(ds.n_features),
            "n_classes": int(ds.n_classes)}


def _class_weights(cfg: TrainConfig, dataset: Any) -> np.ndarray | None:
    """``balanced``: ``w_c = n / (C * count_c)`` (0 for a class absent from training)."""
    if cfg.class_weights != "balanced":
        return None
    counts = np.asarray(dataset.train.class_counts(dataset.n_classes), dtype=np.float64)
    n, c = counts.sum(), len(counts)
    w = np.where(counts > 0, n / (c * np.maximum(counts, 1)), 0.0)
    return w.astype(np.float32)


def _clone_with(model: MLP, arrays: dict[str, np.ndarray]) -> MLP:
    """A copy of ``model``'s architecture holding ``arrays``."""
    m = MLP.from_config(model.config, backend=model.backend, seed=0)
    m.load_state_arrays(arrays)
    return m


def _silent(event: str, info: dict[str, Any]) -> None:
    """The default callback."""


class _Driver:
    """One ``fit`` call after its inputs are checked: starts the run folder, runs the epoch
    loop, and turns each progress record into files and callback events."""

    def __init__(self, cfg: TrainConfig, run: RunFolder, state: TrainState, ds: Any,
                 callback: Callback | None) -> None:
        self.cfg, self.run, self.state, self.ds = cfg, run, state, ds
        self.say = callback or _silent
        self.data_ref = _data_ref(cfg, ds)
        self.classes = [str(c) for c in ds.classes] or [str(i) for i in range(ds.n_classes)]
        self.best_arrays: dict[str, np.ndarray] | None = None  # best.h5's weights
        self.history: list[dict[str, Any]] = []
        self.stepper: Any = None
        self.feed: Any = None
        #: what the config changes from a resumed checkpoint's
        self.changed: dict[str, list[Any]] = {}

    def prepare(self) -> None:
        """Build the training step and the batch feed (before any file is written: this is
        where a device runs out of memory)."""
        cfg, st = self.cfg, self.state
        be = st.model.backend
        cw = _class_weights(cfg, self.ds)
        # a batch never holds more than the training set: buffers sized by that, not by a
        # --batch-size far beyond it (the batches themselves are the same either way)
        batch = min(cfg.batch_size, st.n_train)
        self.stepper = TrainStep(st.model, st.optimizer, batch,
                                 class_weights=None if cw is None else be.asarray(cw),
                                 cuda_graph=cfg.cuda_graph, tf32=cfg.tf32)
        self.feed = make_feed(be, self.ds.train, st.standardizer, batch, self.stepper)

    def begin(self, resume: str | Path | None, changed: dict[str, list[Any]]) -> None:
        """Start or continue the run folder (the lock held): the metrics log, config.toml,
        and a ``best.h5`` that holds the resumed state's best epoch."""
        st = self.state
        event = None
        if resume is not None:
            event = {"event": "resume", "epoch": st.epoch, "step": st.step,
                     "from": str(resume), "changed": changed}
        self.history = self.run.begin(self.cfg, event)
        if resume is not None:
            self.restore_best(Path(resume))

    def best_is_behind(self, resume: Path) -> bool:
        """Whether ``best.h5`` lacks the state's best epoch while the state is that epoch's
        end: a kill came between ``last.h5`` and ``best.h5`` (see ``runfolder``)."""
        st = self.state
        return (st.best_epoch > 0 and st.epoch == st.best_epoch and st.batch == 0
                and self.run.find_best(st.best_epoch)[0] is None
                and _same_folder(resume.parent, self.run.out))

    def restore_best(self, resume: Path) -> None:
        """Make ``best.h5`` hold the state's best epoch: found here or beside the resumed
        checkpoint (copied here), else the resumed state itself when it is that epoch's end
        (a kill between ``last.h5`` and ``best.h5``)."""
        st = self.state
        found, where = self.run.find_best(st.best_epoch, resume.parent / "best.h5")
        if found is not None:
            self.best_arrays = found.arrays
            if where != self.run.best:
                self.run.copy_best(found)
        elif st.best_epoch > 0 and st.epoch == st.best_epoch and st.batch == 0:
            self.run.save(self.run.best, self.checkpoint())
            self.best_arrays = st.model.state_arrays()

    def announce(self, resume: str | Path | None, finished: bool) -> None:
        """The ``start`` event."""
        st, cfg = self.state, self.cfg
        be = st.model.backend
        self.say("start", {"epochs": cfg.epochs, "start_epoch": st.epoch,
                           "batches": st.n_batches, "n_train": st.n_train,
                           "resumed": resume is not None, "out": str(self.run.out),
                           "device": be.name, "params": st.model.num_params,
                           "finished": finished, "validation": self.ds.val is not None})
        if finished:  # read only: the log's epochs and the best weights
            with contextlib.suppress(OSError):
                self.history = [r for r in self.run.metrics.read() if "event" not in r]
            self.best_arrays = self.run.best_arrays(
                st.best_epoch, None if resume is None else Path(resume).parent / "best.h5")

    def train(self) -> None:
        """Run the epoch loop to its end, handling each progress record."""
        cfg, st = self.cfg, self.state
        be = st.model.backend
        opts = LoopOptions(epochs=cfg.epochs, patience=cfg.patience, save_every=cfg.save_every,
                           validate=self.validate, check_each_step=not be.asynchronous,
                           asynchronous=be.asynchronous)
        # overflow to inf / NaN is detected and reported as TrainingDiverged, not warned about
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for rec in train_epochs(st, self.stepper, self.feed, opts):
                self.handle(rec)

    def validate(self) -> tuple[float | None, float | None]:
        """``(val_loss, val_acc)`` of the current model, or Nones without a validation set."""
        if self.ds.val is None:
            return None, None
        v = evaluate(self.state.model, self.ds.val, self.state.standardizer,
                     classes=self.classes)
        return v["loss"], v["accuracy"]

    def checkpoint(self) -> ckpt_mod.Checkpoint:
        return self.state.to_checkpoint(config=self.cfg.to_dict(), data=self.data_ref,
                                        classes=self.classes)

    def handle(self, rec: Progress) -> None:
        """Files and callback events for one progress record."""
        if isinstance(rec, EpochStarted):
            self.say("epoch_start", {"epoch": rec.epoch, "lr": rec.lr, "skip": rec.skip})
        elif isinstance(rec, BatchDone):
            self.say("batch", {"epoch": rec.epoch, "batch": rec.batch, "batches": rec.batches})
        elif isinstance(rec, CheckpointDue):
            self.run.save(self.run.last, self.checkpoint())
        elif isinstance(rec, EpochDone):
            self.run.metrics.append(rec.record)
            self.history.append(rec.record)
            ck = self.checkpoint()
            self.run.save(self.run.last, ck)  # last.h5 first: see runfolder, "Save order"
            if rec.improved:
                self.run.save(self.run.best, ck)
                self.best_arrays = self.state.model.state_arrays()
            self.say("epoch", {**rec.record, "best": rec.improved, "epochs": self.cfg.epochs})
        elif isinstance(rec, Diverged):
            raise self.diverged(rec)

    def diverged(self, rec: Diverged) -> TrainingDiverged:
        """Log the divergence; the error to raise (it names the last good checkpoint)."""
        self.run.metrics.append({"event": "diverged", "epoch": rec.epoch, "step": rec.step,
                                 "loss": str(rec.value)})
        good = (f"the last good checkpoint is {self.run.last}" if self.run.last.exists()
                else "no checkpoint was written yet")
        return TrainingDiverged(f"training diverged: the loss became {rec.value} {rec.where} "
                                f"(lr {self.state.optimizer.lr:g}); {good}; try a lower --lr")

    def test(self) -> dict[str, Any] | None:
        """The best weights' evaluation on the test split (None without one)."""
        arrays = self.best_arrays
        if self.ds.test is None or (arrays is None and not self.run.best.exists()):
            return None
        if arrays is None:
            arrays = ckpt_mod.load(self.run.best).arrays
        return evaluate(_clone_with(self.state.model, arrays), self.ds.test,
                        self.state.standardizer, classes=self.classes)

    def finish(self, t_start: float, resume: str | Path | None,
               changed: dict[str, list[Any]]) -> FitResult:
        """Restore the best weights after an early stop, test them, announce ``end``."""
        st = self.state
        if st.status == "early_stopped" and self.best_arrays is not None:
            st.model.load_state_arrays(self.best_arrays)
        result = FitResult(
            model=st.model, standardizer=st.standardizer, config=self.cfg, out_dir=self.run.out,
            history=self.history, status=st.status, epochs=st.epoch, step=st.step,
            best_metric=st.monitor, best_value=st.best, best_epoch=st.best_epoch,
            test=self.test(), resumed_from=str(resume) if resume is not None else None,
            changed=changed, seconds=time.perf_counter() - t_start)
        self.say("end", result.summary())
        return result
