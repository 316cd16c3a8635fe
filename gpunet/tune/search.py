"""The search: plan rounds, claim trials, sample them, train them, tell the study.

``tune`` checks its options, opens the data and the study, then runs ``Search.run``: an
explicit loop that, until the study holds ``trials`` finished trials, marks stale trials
failed, claims up to ``--pack`` trials, plans them round by round (the baseline, or a sample
of its round's space) and trains them: alone (``TrialRun``, ``gpunet.train.fit``) or in packs
of trials sharing an architecture (``gpunet.tune.packs.PackRun``, ``fit_packed``). A round's
space is read from the study, or made from the previous round once that round has no running
trial (``Search.space_for``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import TrainConfig
from ..errors import ConfigError, GpunetError, TrainingDiverged
from .job import Job, check_outputs, make_folder, make_job, open_data
from .packs import PackRun, finish_trial, group_packs, resolve_pack
from .report import (
    TuneResult,
    rank_key,
    require_matplotlib,
    trial_rows,
    write_best_config,
    write_plot,
)
from .space import SearchSpace
from .storage import StorageError, require_optuna
from .study import FINISHED, Heartbeat, TuneStudy

#: the SeedSequence child that seeds trial sampling (model: 0 and 1, shuffling: 2)
TUNE_STREAM = 3
#: share of a round's trials whose span defines the next round's range (at least 2 trials)
TOP_FRACTION = 0.25
#: seconds between polls while a round waits for the previous one
WAIT_POLL = 0.5

Callback = Callable[[str, dict[str, Any]], None]


def round_sizes(trials: int, rounds: int) -> list[int]:
    """Trials per round: ``trials`` split as evenly as possible, earlier rounds larger."""
    return [trials // rounds + (1 if r < trials % rounds else 0) for r in range(rounds)]


def round_of(rank: int, trials: int, rounds: int) -> int:
    """The round of the trial with ``rank`` finished-or-running trials before it."""
    acc = 0
    for r, size in enumerate(round_sizes(trials, rounds)):
        acc += size
        if rank < acc:
            return r
    return rounds - 1


# ====================================================================== one trial
@dataclass
class TrialPlan:
    """What a claimed trial trains: its round, whether it is the baseline, the values it
    records and the configuration built from them."""

    round: int
    baseline: bool
    values: dict[str, Any]
    cfg: TrainConfig


class TrialRun:
    """One trial's training. As ``fit``'s callback it keeps the heartbeat, reports each
    epoch's validation accuracy and, with ``prune``, stops a trial the pruner gives up on;
    ``run`` tells the study how the trial ended and returns the row the ``trial`` event shows."""

    def __init__(self, study: TuneStudy, trial: Any, prune: bool, beat: Heartbeat) -> None:
        self.study, self.trial, self.prune = study, trial, prune
        self.beat = beat
        self.t0 = time.perf_counter()

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        self.beat()
        if event == "epoch" and info.get("val_acc") is not None:
            self.trial.report(float(info["val_acc"]), int(info["epoch"]))
            if self.prune and self.trial.should_prune():
                raise self.study.optuna.TrialPruned(f"pruned at epoch {info['epoch']}")

    def seconds(self) -> float:
        return round(time.perf_counter() - self.t0, 3)

    def run(self, fit: Callable[..., Any], cfg: TrainConfig, ds: Any) -> dict[str, Any]:
        optuna, trial = self.study.optuna, self.trial
        self.t0 = time.perf_counter()
        out: dict[str, Any] = {"state": "FAIL", "value": None, "val_loss": None, "error": None}
        try:
            res = fit(cfg, dataset=ds, callback=self)
        except optuna.TrialPruned as e:
            trial.set_user_attr("gpunet_seconds", self.seconds())
            self.study.tell(trial, None, "PRUNED")
            out.update(state="PRUNED", error=str(e))
            return out
        except StorageError:
            raise   # the storage is gone: the trial stays RUNNING until its heartbeat is stale
        except (TrainingDiverged, GpunetError, FloatingPointError, MemoryError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            trial.set_user_attr("gpunet_error", msg)
            trial.set_user_attr("gpunet_seconds", self.seconds())
            self.study.tell(trial, None, "FAIL")
            out.update(error=msg)
            return out
        except BaseException:
            with contextlib.suppress(Exception):
                trial.set_user_attr("gpunet_error", "interrupted")
                self.study.tell(trial, None, "FAIL")
            raise
        return finish_trial(self.study, self.trial, res, self.seconds(), out)


def _base_value(base: TrainConfig, name: str) -> Any:
    """What the baseline trains with for ``name`` (None where it does not apply)."""
    if name == "width":
        if len(set(base.hidden)) > 1:
            return ",".join(map(str, base.hidden))
        return base.hidden[0] if base.hidden else None
    if name == "depth":
        return len(base.hidden)
    r = base.resolve()
    if name == "lr_decay_rate" and r.lr_schedule != "inverse":
        return None
    if name in ("lr_gamma", "lr_step_size") and r.lr_schedule not in ("step", "exp"):
        return None
    return getattr(r, name, None)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in d.items()}


# ====================================================================== the loop
class Search:
    """The search loop of one worker over ``study`` (see the module docstring). ``pack``:
    ``--pack`` (an integer or ``"auto"``; ``gpunet.tune.packs``), ``workers``: how many
    workers the pool started (a worker claims at most its share of a round). ``ran_here``
    counts the trials this worker trained; ``note`` says why it stopped early, if it did."""

    def __init__(self, study: TuneStudy, base: TrainConfig, space: SearchSpace, ds: Any, *,
                 trials: int, rounds: int, baseline: bool, prune: bool, heartbeat: float,
                 max_failures: int, say: Callback, fit: Callable[..., Any],
                 fit_packed: Callable[..., Any] | None = None, pack: int | str = 1,
                 workers: int = 1) -> None:
        self.study, self.base, self.space, self.ds = study, base, space, ds
        self.trials, self.rounds, self.baseline = int(trials), int(rounds), baseline
        self.prune, self.heartbeat, self.max_failures = prune, heartbeat, max_failures
        self.say, self.fit, self.fit_packed = say, fit, fit_packed
        self.pack, self.workers = pack, max(1, int(workers))
        self.pack_size = 1
        self.ran_here, self.failures = 0, 0
        self.note: str | None = None
        self._beat: Heartbeat | None = None

    def run(self) -> None:
        """Claim and train trials, up to ``pack_size`` at a time, until the study holds
        ``trials`` finished ones (or the rest are running elsewhere)."""
        self.pack_size = resolve_pack(self.pack, self.base, self.space, self.ds)
        if self.fit_packed is None:
            self.pack_size = 1
        if self.pack_size > 1:
            self.say("pack", {"pack": self.pack_size, "auto": self.pack == "auto"})
        while True:
            self.study.fail_stale()
            if self._enough():
                return
            claimed = self.study.claim(self.trials, self._claim_count())
            if claimed:
                self._train_batch(claimed)

    def _claim_count(self) -> int:
        """How many trials to claim: at most ``pack_size``, what the study and the current
        round still need, and this worker's share of the round (the pool's workers, or the
        workers seen running trials, counted with this one)."""
        ts = self.study.trials()
        active = len(self.study.active(ts))
        sizes = round_sizes(self.trials, self.rounds)
        r = round_of(active, self.trials, self.rounds)
        round_left = sum(sizes[:r + 1]) - active
        share = math.ceil(sizes[r] / max(self.workers, 1 + self.study.other_workers(ts)))
        return max(1, min(self.pack_size, self.trials - active, round_left, share))

    def _enough(self) -> bool:
        """True when no trial is left for this worker; raises after ``max_failures`` failed
        trials in a row."""
        ts = self.study.trials()
        if sum(t.state.name in FINISHED for t in ts) >= self.trials:
            return True
        if len(self.study.active(ts)) >= self.trials:
            self.note = "the remaining trials are running in other workers"
            return True
        if self.failures >= self.max_failures:
            raise GpunetError(f"the last {self.failures} trials of this worker all failed; "
                              "stopping (see the errors in the study)")
        return False

    def _plan(self, trial: Any, rank: int) -> TrialPlan:
        """Trial ``rank`` 0 is the baseline (with ``baseline``); any other samples its round's
        space from ``SeedSequence(seed, spawn_key=(TUNE_STREAM, trial.number))``."""
        rnd = round_of(rank, self.trials, self.rounds)
        trial.set_user_attr("gpunet_round", rnd)
        if self.baseline and rank == 0:
            values = {n: _base_value(self.base, n) for n in self.space.params}
            trial.set_user_attr("gpunet_baseline", True)
            return TrialPlan(rnd, True, values, TrainConfig(**dataclasses.asdict(self.base)))
        sp = self.space if rnd == 0 else self.space_for(rnd, trial)
        rng = np.random.default_rng(np.random.SeedSequence(self.base.seed, spawn_key=(
            TUNE_STREAM, trial.number)))
        values = sp.sample(rng)
        self.study.record_planned(trial, sp.params, values)
        return TrialPlan(rnd, False, values, sp.config_for(self.base, values))

    def _train_batch(self, claimed: list[tuple[Any, int]]) -> None:
        """Plan and train claimed ``(trial, rank)`` pairs round by round (a round's trials are
        planned once the earlier rounds' have ended), in packs (``gpunet.tune.packs``)."""
        trials = [t for t, _ in claimed]
        with self.study.beating(trials) as beat:
            self._beat = beat
            try:
                by_round: dict[int, list[tuple[Any, int]]] = {}
                for trial, rank in claimed:
                    by_round.setdefault(round_of(rank, self.trials, self.rounds), []).append(
                        (trial, rank))
                for r in sorted(by_round):
                    planned = [(t, self._planned(t, rank)) for t, rank in by_round[r]]
                    for pack in group_packs(planned, lambda tp: tp[1].cfg, self.pack_size):
                        self._train_pack(pack, beat)
            except StorageError:
                raise   # nothing can be recorded; the heartbeat check fails the trials later
            except BaseException:
                # stopped outside training (Ctrl-C, SIGTERM, a planning error)
                for t in trials:
                    self.study.fail_running(t, "interrupted")
                raise
            finally:
                for t in trials:
                    shutil.rmtree(self.study.run_dir(t.number), ignore_errors=True)

    def _planned(self, trial: Any, rank: int) -> TrialPlan:
        """``_plan``, with the values recorded on the trial and its run folder set."""
        plan = self._plan(trial, rank)
        trial.set_user_attr("gpunet_values", _jsonable(plan.values))
        plan.cfg.out = str(self.study.run_dir(trial.number))
        return plan

    def _train_pack(self, pack: list[tuple[Any, TrialPlan]], beat: Heartbeat) -> None:
        """Train one pack (alone with ``fit`` for one member) and say how each trial ended."""
        self.ran_here += len(pack)
        try:
            if len(pack) == 1:
                trial, plan = pack[0]
                rows = [TrialRun(self.study, trial, self.prune, beat).run(self.fit, plan.cfg,
                                                                         self.ds)]
            else:
                rows = PackRun(self.study, [t for t, _ in pack], self.prune, beat).run(
                    self.fit_packed, [p.cfg for _, p in pack], self.ds)
        finally:
            for trial, _ in pack:
                beat.drop(trial)
                shutil.rmtree(self.study.run_dir(trial.number), ignore_errors=True)
        for (trial, plan), row in zip(pack, rows, strict=True):
            self.failures = self.failures + 1 if row["state"] == "FAIL" else 0
            self.say("trial", {**row, "number": trial.number, "round": plan.round + 1,
                               "rounds": self.rounds, "values": plan.values,
                               "baseline": plan.baseline, "pack": len(pack)})

    # ------------------------------------------------------------------ rounds
    def space_for(self, r: int, trial: Any) -> SearchSpace:
        """Round ``r``'s space: stored in the study, or made from round ``r - 1`` once it has
        no running trial. Rounds below ``r`` that nobody made yet are made first, lowest first
        (each waits for its own previous round)."""
        to_make: list[int] = []   # rounds whose space this call makes, highest first
        k = r
        stored = self._await_round(k, trial)
        while stored is None:
            to_make.append(k)
            k -= 1
            stored = self.study.space_attr(k)
            if stored is None:
                # round 0's space is stored when the study opens; ours if it went missing
                stored = self._await_round(k, trial) if k > 0 else self.space.to_dict()
        space = SearchSpace.from_json(stored)
        for k in reversed(to_make):
            space = self._make_round_space(k, space)
        return space

    def _await_round(self, r: int, trial: Any) -> dict[str, Any] | None:
        """Round ``r``'s stored space, as soon as a worker stored it; None once round ``r - 1``
        has no running trial (other than ``trial``). Polls every ``WAIT_POLL`` seconds,
        keeping ``trial``'s heartbeat and failing stale trials (saying ``wait`` once)."""
        beat = self._beat or self.study.beating(trial)
        waited = False
        while True:
            stored = self.study.space_attr(r)
            if stored is not None:
                return stored
            running = [t.number for t in self.study.trials() if t.state.name == "RUNNING"
                       and t.number != trial.number and t.user_attrs.get("gpunet_round") == r - 1]
            if not running:
                return None
            if not waited:
                self.say("wait", {"round": r + 1, "running": running})
                waited = True
            time.sleep(WAIT_POLL)
            beat()
            self.study.fail_stale()

    def _make_round_space(self, r: int, prev: SearchSpace) -> SearchSpace:
        """Round ``r``'s space: ``prev`` shrunk around the best ``TOP_FRACTION`` (at least 2)
        of round ``r - 1``'s complete sampled trials (kept with fewer than 2), stored in the
        study (the first writer wins) and announced with a ``round`` event."""
        rows = sorted((x for x in trial_rows(self.study.trials()) if x.round == r - 1
                       and x.state == "COMPLETE" and not x.baseline), key=rank_key)
        k = max(2, math.ceil(TOP_FRACTION * len(rows)))
        if len(rows) < 2:
            new, note = prev, f"only {len(rows)} finished trial(s) in round {r}: range kept"
        else:
            new = prev.shrink([x.values for x in rows[:k]])
            note = f"around the best {min(k, len(rows))} of {len(rows)} round-{r} trials"
        chosen = SearchSpace.from_json(self.study.store_space(r, new.to_dict()))
        self.say("round", {"round": r + 1, "rounds": self.rounds, "note": note,
                           "changes": [(n, prev.params[n].describe(), p.describe())
                                       for n, p in chosen.params.items() if n in prev.params]})
        return chosen


# ====================================================================== tune
def _result(job: Job, study: TuneStudy, ran_here: int, note: str | None,
            t_start: float) -> TuneResult:
    spaces = []
    for r in range(job.rounds):
        s = study.space_attr(r)
        if s is not None:
            spaces.append({"round": r + 1, **s})
    return TuneResult(study=study.name, storage=study.storage, trials=job.trials,
                      rounds=job.rounds, epochs=job.epochs, rows=trial_rows(study.trials()),
                      spaces=spaces, best_config=None, best_toml=None, plot=None,
                      seconds=time.perf_counter() - t_start, ran_here=ran_here, note=note)


def tune(
    data: str,
    trials: int,
    *,
    rounds: int = 1,
    epochs: int = 10,
    space: SearchSpace | str | Path | None = None,
    config: TrainConfig | dict[str, Any] | None = None,
    storage: str | Path | None = None,
    study: str | None = None,
    out: str | Path | None = None,
    seed: int | None = None,
    device: str | None = None,
    pruner: str = "none",
    baseline: bool = True,
    plot: str | Path | None = None,
    callback: Callback | None = None,
    heartbeat: float = 10.0,
    stale_after: float = 120.0,
    max_failures: int = 20,
    workers: int = 1,
    devices: str | None = None,
    storage_retry: float = 30.0,
    pack: int | str = "auto",
) -> TuneResult:
    """Random search (``rounds`` > 1: coarse to fine) in a shared Optuna study until it holds
    ``trials`` finished trials; see ``gpunet.tune``'s docstring for every convention.

    ``config``: the base training configuration (defaults otherwise; ``seed``, ``device``,
    ``data`` given here win). ``storage``: a journal file path or an Optuna URL (default
    ``<out>/study.journal``); ``study``: its name (default: the data's stem); ``out``: the
    folder for trial runs (deleted as each ends) and ``best.toml`` (default
    ``runs/tune-<study>``). ``workers`` > 1 or ``devices`` (``"0,1"`` or ``"all"``: that many
    workers per GPU) trains in that many worker processes (``gpunet.tune.pool``).
    ``heartbeat`` / ``stale_after``: seconds between a running trial's heartbeats, and
    without one before it counts as stale; ``storage_retry``: seconds a lost database
    connection is retried. ``pack``: up to this many trials sharing an architecture, batch
    size and epochs train as one pack (``gpunet.packed.fit_packed``), each still its own
    trial; ``"auto"`` chooses from the device and the space's largest net, 1 where packing
    does not pay (``gpunet.tune.packs``). ``callback(event, info)`` hears ``start``,
    ``pack`` (the pack size, when above 1), ``round``, ``trial``, ``wait``, ``stale`` and
    ``end`` (and, with workers, ``worker-died``, ``worker-error`` and ``worker-output``;
    their events carry ``worker``). Writes ``best.toml`` (a
    ``gpunet train --config`` file) and, with ``plot``, a PNG; never replaces a file gpunet
    did not write.
    """
    t_start = time.perf_counter()
    say = callback or (lambda event, info: None)
    if plot is not None:
        require_matplotlib()
    require_optuna()
    job = make_job(data, trials, rounds=rounds, epochs=epochs, space=space, config=config,
                   storage=storage, study=study, out=out, seed=seed, device=device,
                   pruner=pruner, baseline=baseline, heartbeat=heartbeat,
                   stale_after=stale_after, retry_for=storage_retry, max_failures=max_failures,
                   pack=pack)
    plans = _worker_plans(workers, devices, device)
    job.workers = max(1, len(plans))
    check_outputs(job.out_dir, plot)
    ds = open_data(job.base, data)   # a bad file fails before any folder or study exists
    make_folder(job.out_dir)
    st = job.open_study(say)
    say("start", {"study": job.name, "storage": st.storage, "trials": job.trials,
                  "rounds": job.rounds, "epochs": job.epochs, "space": job.space.describe(),
                  "device": job.base.device, "n_train": ds.train.n, "n_val": ds.val.n,
                  **({"workers": [p.describe() for p in plans]} if plans else {})})
    if plans:
        ds = None   # the workers open the data themselves
    result = _search(job, st, ds, plans, say, t_start)
    write_best_config(result, dataclasses.replace(job.base, device=job.toml_device), job.space,
                      job.out_dir)
    if plot is not None:
        check_outputs(job.out_dir, plot)
        result.plot = write_plot(result, plot)
    result.seconds = time.perf_counter() - t_start
    say("end", result.summary())
    return result


def _search(job: Job, st: TuneStudy, ds: Any, plans: list[Any], say: Callback,
            t_start: float) -> TuneResult:
    """Search in this process, or in the worker processes ``plans`` (which open the data
    themselves); the result as the study holds it."""
    if not plans:
        search = job.search(st, ds, say)
        search.run()
        return _result(job, st, search.ran_here, search.note, t_start)
    from .pool import Pool

    pool = Pool(job, plans, st, say)
    pool.run()
    result = _result(job, st, pool.ran, pool.note, t_start)
    result.workers = pool.summary()
    return result


def _worker_plans(workers: int, devices: str | None, device: str | None) -> list[Any]:
    """The worker processes to start (none: this process searches alone)."""
    if isinstance(workers, bool) or int(workers) < 1 or int(workers) > 1024:
        raise ConfigError(f"--workers must be between 1 and 1024, got {workers}")
    if int(workers) == 1 and devices is None:
        return []
    from .pool import plan_workers

    return plan_workers(int(workers), devices, device)
