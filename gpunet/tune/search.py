"""The search: plan rounds, claim trials, sample them, train them, tell the study.

``tune`` checks its options, opens the data and the study, then runs ``Search.run``: an
explicit loop that, until the study holds ``trials`` finished trials, marks stale trials
failed, claims a trial, plans it (the baseline, or a sample of its round's space) and trains it
(``TrialRun``). A round's space is read from the study, or made from the previous round once
that round has no running trial (``Search.space_for``).
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
from .report import (
    TuneResult,
    rank_key,
    require_matplotlib,
    trial_rows,
    write_best_config,
    write_plot,
)
from .space import SearchSpace, default_space
from .study import FINISHED, Heartbeat, TuneStudy, require_optuna

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

    def __init__(self, study: TuneStudy, trial: Any, prune: bool, heartbeat: float) -> None:
        self.study, self.trial, self.prune = study, trial, prune
        self.beat = Heartbeat(trial, heartbeat)
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
        return self._finished(res, out)

    def _finished(self, res: Any, out: dict[str, Any]) -> dict[str, Any]:
        """Record a trained trial's best epoch; COMPLETE with a finite accuracy, else FAIL."""
        trial = self.trial
        best_rec = next((h for h in res.history if h.get("epoch") == res.best_epoch), {})
        value = float(res.best_value) if res.best_value is not None else float("nan")
        val_loss = best_rec.get("val_loss")
        trial.set_user_attr("gpunet_val_loss", val_loss)
        trial.set_user_attr("gpunet_best_epoch", int(res.best_epoch))
        trial.set_user_attr("gpunet_seconds", self.seconds())
        if not math.isfinite(value):
            self.study.tell(trial, None, "FAIL")
            out.update(error="no finite validation accuracy")
            return out
        told = self.study.tell(trial, value, "COMPLETE")
        out.update(state="COMPLETE" if told else "FAIL", value=value, val_loss=val_loss,
                   seconds=self.seconds(),
                   error=None if told else "marked failed by another worker (no heartbeat)")
        return out


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
    """The search loop of one worker over ``study`` (see the module docstring). ``ran_here``
    counts the trials this worker trained; ``note`` says why it stopped early, if it did."""

    def __init__(self, study: TuneStudy, base: TrainConfig, space: SearchSpace, ds: Any, *,
                 trials: int, rounds: int, baseline: bool, prune: bool, heartbeat: float,
                 max_failures: int, say: Callback, fit: Callable[..., Any]) -> None:
        self.study, self.base, self.space, self.ds = study, base, space, ds
        self.trials, self.rounds, self.baseline = int(trials), int(rounds), baseline
        self.prune, self.heartbeat, self.max_failures = prune, heartbeat, max_failures
        self.say, self.fit = say, fit
        self.ran_here, self.failures = 0, 0
        self.note: str | None = None

    def run(self) -> None:
        """Claim and train trials until the study holds ``trials`` finished ones (or the rest
        are running elsewhere)."""
        while True:
            self.study.fail_stale()
            if self._enough():
                return
            claimed = self.study.claim(self.trials)
            if claimed is not None:
                self._train(*claimed)

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

    def _train(self, trial: Any, rank: int) -> None:
        plan = self._plan(trial, rank)
        trial.set_user_attr("gpunet_values", _jsonable(plan.values))
        cfg = plan.cfg
        cfg.out = str(self.study.trials_dir / f"{self.study.name}-{trial.number}")
        self.ran_here += 1
        row = TrialRun(self.study, trial, self.prune, self.heartbeat).run(self.fit, cfg, self.ds)
        shutil.rmtree(cfg.out, ignore_errors=True)
        self.failures = self.failures + 1 if row["state"] == "FAIL" else 0
        self.say("trial", {**row, "number": trial.number, "round": plan.round + 1,
                           "rounds": self.rounds, "values": plan.values,
                           "baseline": plan.baseline})

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
        beat = Heartbeat(trial, self.heartbeat)
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
def _check_options(trials: int, rounds: int, epochs: int, pruner: str, heartbeat: float,
                   stale_after: float) -> None:
    if isinstance(trials, bool) or int(trials) < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    if int(rounds) < 1 or int(rounds) > int(trials):
        raise ConfigError(f"--rounds must be between 1 and --trials ({trials}), got {rounds}")
    if int(epochs) < 1:
        raise ConfigError(f"--epochs must be >= 1, got {epochs}")
    if pruner not in ("none", "median"):
        raise ConfigError(f"unknown --pruner {pruner!r}: use median or none")
    if heartbeat <= 0 or stale_after <= heartbeat:
        raise ConfigError("stale_after must exceed the heartbeat interval, both positive")


def _base_config(config: TrainConfig | dict[str, Any] | None, data: str, epochs: int,
                 seed: int | None, device: str | None) -> tuple[TrainConfig, str]:
    """The checked base configuration (the tune options win) and the configured device,
    which ``best.toml`` keeps (not this worker's)."""
    base = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config or {})
    over: dict[str, Any] = {"data": data, "epochs": int(epochs), "out": None, "patience": 0}
    if seed is not None:
        over["seed"] = int(seed)
    if device is not None:
        over["device"] = device
    toml_device = base.device
    base = base.updated(over, source="the tune options")
    base.resolve()  # a bad base configuration fails here, before any trial
    return base, toml_device


def _search_space(space: SearchSpace | str | Path | None, base: TrainConfig) -> SearchSpace:
    if isinstance(space, (str, Path)):
        space = SearchSpace.load(space)
    space = space if space is not None else default_space(base.optimizer)
    space.check_against(base)
    return space


def _open_data(base: TrainConfig, data: str) -> Any:
    """The training and validation splits; the test split is dropped (never read)."""
    from ..data import open_dataset

    ds = open_dataset(base.data, x_key=base.x_key, y_key=base.y_key, val=base.val,
                      val_split=base.val_split, seed=base.seed,
                      allow_external=base.allow_external_data,
                      **({"memory_budget": base.memory_budget}
                         if base.memory_budget is not None else {}))
    if ds.val is None:
        raise ConfigError(f"{data} has no validation set (no val group and --val-split 0); "
                          "tuning needs one (the test split is never used)")
    return dataclasses.replace(ds, test=None)


def _make_folder(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create output folder {out_dir}: "
                          f"{e.strerror or type(e).__name__}") from None


def _settings_key(base: TrainConfig, space: SearchSpace, epochs: int,
                  baseline: bool) -> dict[str, Any]:
    """What every worker of a study must agree on: the data, epochs, base configuration
    (less the per-worker settings), space and baseline."""
    data = str(Path(base.data).resolve()) if Path(base.data).exists() else str(base.data)
    b = base.to_dict()
    for k in ("device", "out", "data", "memory_budget"):
        b.pop(k, None)
    return {"version": 1, "data": data, "epochs": int(epochs), "base": b,
            "space": space.to_dict(), "baseline": bool(baseline)}


def _result(study: TuneStudy, search: Search, epochs: int, t_start: float) -> TuneResult:
    rounds = search.rounds
    spaces = []
    for r in range(rounds):
        s = study.space_attr(r)
        if s is not None:
            spaces.append({"round": r + 1, **s})
    return TuneResult(study=study.name, storage=study.storage, trials=search.trials,
                      rounds=rounds, epochs=int(epochs), rows=trial_rows(study.trials()),
                      spaces=spaces, best_config=None, best_toml=None, plot=None,
                      seconds=time.perf_counter() - t_start, ran_here=search.ran_here,
                      note=search.note)


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
) -> TuneResult:
    """Random search (``rounds`` > 1: coarse to fine) in a shared Optuna study until it holds
    ``trials`` finished trials; see ``gpunet.tune``'s docstring for every convention.

    ``config``: the base training configuration (defaults otherwise; ``seed``, ``device``,
    ``data`` given here win). ``storage``: a journal file path or an Optuna URL (default
    ``<out>/study.journal``); ``study``: its name (default: the data's stem); ``out``: the
    folder for trial runs (deleted as each ends) and ``best.toml`` (default
    ``runs/tune-<study>``). ``callback(event, info)`` hears ``start``, ``round``, ``trial``,
    ``wait``, ``stale`` and ``end``. Writes ``best.toml`` (a ``gpunet train --config`` file)
    and, with ``plot``, a PNG.
    """
    from ..train import fit

    t_start = time.perf_counter()
    say = callback or (lambda event, info: None)
    _check_options(trials, rounds, epochs, pruner, heartbeat, stale_after)
    if plot is not None:
        require_matplotlib()
    require_optuna()
    base, toml_device = _base_config(config, data, epochs, seed, device)
    space = _search_space(space, base)
    name = study or Path(str(data)).stem or "study"
    out_dir = Path(out) if out is not None else Path("runs") / f"tune-{name}"
    storage_desc = str(storage) if storage is not None else str(out_dir / "study.journal")
    ds = _open_data(base, data)   # a bad file fails before any folder or study exists
    _make_folder(out_dir)
    st = TuneStudy.open(name, storage_desc, out_dir / "trials", pruner=pruner, epochs=epochs,
                        stale_after=stale_after, say=say)
    st.check_settings(_settings_key(base, space, epochs, baseline))
    if st.space_attr(0) is None:
        st.store_space(0, space.to_dict())
    say("start", {"study": name, "storage": storage_desc, "trials": int(trials),
                  "rounds": int(rounds), "epochs": int(epochs), "space": space.describe(),
                  "device": base.device, "n_train": ds.train.n, "n_val": ds.val.n})
    search = Search(st, base, space, ds, trials=trials, rounds=rounds, baseline=baseline,
                    prune=pruner != "none", heartbeat=heartbeat, max_failures=max_failures,
                    say=say, fit=fit)
    search.run()
    result = _result(st, search, epochs, t_start)
    write_best_config(result, dataclasses.replace(base, device=toml_device), space, out_dir)
    if plot is not None:
        result.plot = write_plot(result, plot)
    result.seconds = time.perf_counter() - t_start
    say("end", result.summary())
    return result
