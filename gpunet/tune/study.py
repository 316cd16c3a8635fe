"""The Optuna side of a search: storages, the study as one worker sees it, and stale trials.

A worker claims a trial with ``study.ask()``. A running trial records its worker (``Worker``:
host with the pid namespace, pid, process start time) and a heartbeat; a RUNNING trial whose
process is gone (same host) or whose heartbeat is older than ``stale_after`` seconds is marked
FAIL by the next worker that looks (``TuneStudy.fail_stale``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .space import Param

#: trial states that count towards ``trials`` (FAIL never does)
FINISHED = ("COMPLETE", "PRUNED")


def require_optuna() -> Any:
    """The ``optuna`` module, or a one-line ``ConfigError`` saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise ConfigError("gpunet tune needs optuna: pip install 'gpunet[tune]'") from None
    return optuna


def make_storage(url: str | Path) -> Any:
    """An Optuna storage: a journal file for a path (created with its folder), a
    ``JournalRedisBackend`` for ``redis://``, an ``RDBStorage`` for any other URL
    (``sqlite:///x.db``, ``postgresql://...``)."""
    optuna = require_optuna()
    s = str(url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if s.startswith("redis://") or s.startswith("rediss://"):
            from optuna.storages.journal import JournalRedisBackend

            return optuna.storages.JournalStorage(JournalRedisBackend(s))
        if "://" in s:
            try:
                return optuna.storages.RDBStorage(s)
            except Exception as e:  # noqa: BLE001 - driver / connection errors vary
                raise ConfigError(f"cannot open storage {s}: {str(e).splitlines()[0]}") from None
        return optuna.storages.JournalStorage(_journal_file(optuna, Path(s).expanduser()))


def _journal_file(optuna: Any, p: Path) -> Any:
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the folder of storage {p}: "
                          f"{e.strerror or type(e).__name__}") from None
    if p.is_dir():
        raise ConfigError(f"storage {p} is a folder; give a journal file path")
    try:
        from optuna.storages.journal import JournalFileBackend
    except ImportError:  # pragma: no cover - optuna < 4
        from optuna.storages import JournalFileStorage as JournalFileBackend
    return JournalFileBackend(str(p))


def planned_sampler() -> Any:
    """A sampler that returns the values gpunet chose (``sampler.planned``) so that Optuna
    records them as the trial's parameters."""
    optuna = require_optuna()

    class PlannedSampler(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self.planned: dict[str, Any] = {}

        def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
            return {}

        def sample_relative(self, study: Any, trial: Any, search_space: Any) -> dict[str, Any]:
            return {}

        def sample_independent(self, study: Any, trial: Any, param_name: str,
                               param_distribution: Any) -> Any:
            return self.planned[param_name]

    return PlannedSampler()


# ====================================================================== workers
class Worker:
    """This process as trials record it (``identity``: host with the pid namespace, pid,
    process start time), and the test of whether another worker's trial is stale."""

    def __init__(self) -> None:
        host = socket.gethostname()
        with contextlib.suppress(OSError):
            host += "/" + os.readlink("/proc/self/ns/pid")
        self.identity: dict[str, Any] = {"host": host, "pid": os.getpid(),
                                         "start": self.process_start(os.getpid())}

    @staticmethod
    def process_start(pid: int) -> str | None:
        """Field 22 of ``/proc/<pid>/stat`` (start time in clock ticks), ``"zombie"`` for a
        zombie, None where it cannot be read."""
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        if fields and fields[0] == "Z":
            return "zombie"
        return fields[19] if len(fields) > 19 else None

    @classmethod
    def process_alive(cls, pid: Any, start: str | None) -> bool:
        """Whether process ``pid`` exists, is no zombie and (where both are known) started at
        ``start`` (a reused pid is another process)."""
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        except (OverflowError, ValueError):
            return False
        now = cls.process_start(int(pid))
        if now == "zombie":
            return False
        return start is None or now is None or now == start

    def is_stale(self, t: Any, now: float, stale_after: float) -> bool:
        """A RUNNING trial ``t`` whose worker on this host is gone, or whose heartbeat (its
        start, without one) is older than ``stale_after`` seconds."""
        me = self.identity
        w = t.user_attrs.get("gpunet_worker")
        if isinstance(w, dict) and w.get("host") == me["host"] and w.get("pid") != me["pid"]:
            if not self.process_alive(w.get("pid", -1), w.get("start")):
                return True
        hb = t.user_attrs.get("gpunet_heartbeat")
        if hb is None:
            hb = t.datetime_start.timestamp() if t.datetime_start is not None else now
        return now - float(hb) > stale_after


class Heartbeat:
    """Calling it refreshes ``trial``'s ``gpunet_heartbeat`` once ``every`` seconds passed."""

    def __init__(self, trial: Any, every: float) -> None:
        self.trial, self.every, self.last = trial, every, time.monotonic()

    def __call__(self) -> None:
        if time.monotonic() - self.last > self.every:
            self.trial.set_user_attr("gpunet_heartbeat", time.time())
            self.last = time.monotonic()


# ====================================================================== the study
class TuneStudy:
    """One gpunet study as this worker sees it: the Optuna study ``st``, the planned-value
    sampler, this ``worker`` and the folder of trial runs."""

    def __init__(self, optuna: Any, st: Any, sampler: Any, name: str, storage: str,
                 trials_dir: Path, stale_after: float,
                 say: Callable[[str, dict[str, Any]], None]) -> None:
        self.optuna, self.st, self.sampler = optuna, st, sampler
        self.name, self.storage, self.trials_dir = name, storage, trials_dir
        self.stale_after, self.say = stale_after, say
        self.worker = Worker()

    @classmethod
    def open(cls, name: str, storage: str, trials_dir: Path, *, pruner: str, epochs: int,
             stale_after: float, say: Callable[[str, dict[str, Any]], None]) -> TuneStudy:
        """Create or load the study ``name`` in ``storage`` (maximizing; refused otherwise)."""
        optuna = require_optuna()
        store = make_storage(storage)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = planned_sampler()
        prun = (optuna.pruners.MedianPruner(n_startup_trials=5,
                                            n_warmup_steps=max(1, int(epochs) // 3))
                if pruner == "median" else optuna.pruners.NopPruner())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            st = optuna.create_study(study_name=name, storage=store, sampler=sampler,
                                     pruner=prun, direction="maximize", load_if_exists=True)
        if st.directions != [optuna.study.StudyDirection.MAXIMIZE]:
            raise ConfigError(f"study {name!r} in {storage} is not a gpunet tune study")
        return cls(optuna, st, sampler, name, storage, trials_dir, stale_after, say)

    # ------------------------------------------------------------------ reading
    def trials(self) -> list[Any]:
        return self.st.get_trials(deepcopy=False)

    @staticmethod
    def active(ts: list[Any]) -> list[Any]:
        """Trials that hold a place in the total: finished or running, not surplus claims."""
        return [t for t in ts if t.state.name in (*FINISHED, "RUNNING")
                and not t.user_attrs.get("gpunet_surplus")]

    def space_attr(self, r: int) -> dict[str, Any] | None:
        """Round ``r``'s stored space (``gpunet_space_<r>``), if any worker stored it."""
        return self.st.user_attrs.get(f"gpunet_space_{r}")

    def store_space(self, r: int, space: dict[str, Any]) -> dict[str, Any]:
        """Store round ``r``'s space; returns what the study holds (the first writer wins)."""
        self.st.set_user_attr(f"gpunet_space_{r}", space)
        return self.space_attr(r) or space

    def check_settings(self, mine: dict[str, Any]) -> None:
        """Record ``mine`` as the study's settings, or refuse to join a study run with other
        settings (one-line ``ConfigError`` naming the keys that differ)."""
        stored = self.st.user_attrs.get("gpunet_settings")
        if stored is None:
            self.st.set_user_attr("gpunet_settings", mine)
            stored = self.st.user_attrs.get("gpunet_settings")
        if stored == mine:
            return
        diff = [k for k in mine if json.dumps(mine.get(k), sort_keys=True)
                != json.dumps(stored.get(k), sort_keys=True)]
        what = ", ".join(diff) or "settings"
        raise ConfigError(f"study {self.name!r} in {self.storage} was run with different "
                          f"{what}; give the same options to join it, or a new --study")

    # ------------------------------------------------------------------ stale trials
    def fail_stale(self) -> None:
        """Mark stale RUNNING trials FAIL (saying ``stale``), then remove the run folders of
        this study's finished trials (a killed worker leaves its folder)."""
        now = time.time()
        fail = self.optuna.trial.TrialState.FAIL
        for t in self.trials():
            if t.state.name == "RUNNING" and self.worker.is_stale(t, now, self.stale_after):
                with contextlib.suppress(Exception):  # another worker may beat us to it
                    self.st.tell(t.number, state=fail, skip_if_finished=True)
                    self.say("stale", {"number": t.number})
        self._remove_finished_folders()

    def _remove_finished_folders(self) -> None:
        if not self.trials_dir.exists():
            return
        states = {t.number: t.state.name for t in self.trials()}
        for d in self.trials_dir.iterdir():
            num = d.name.rsplit("-", 1)[-1]
            if d.name.startswith(f"{self.name}-") and num.isdigit() \
                    and states.get(int(num), "RUNNING") != "RUNNING":
                shutil.rmtree(d, ignore_errors=True)

    # ------------------------------------------------------------------ writing
    def claim(self, total: int) -> tuple[Any, int] | None:
        """Ask for a trial, record this worker and a heartbeat on it; returns it with its rank
        (finished or running trials before it), or None for a claim beyond ``total`` (closed
        at once as FAIL with ``gpunet_surplus``: another worker took the last place)."""
        trial = self.st.ask()
        trial.set_user_attr("gpunet_worker", self.worker.identity)
        trial.set_user_attr("gpunet_heartbeat", time.time())
        rank = sum(1 for t in self.active(self.trials()) if t.number < trial.number)
        if rank >= total:
            trial.set_user_attr("gpunet_surplus", True)
            self.st.tell(trial, state=self.optuna.trial.TrialState.FAIL, skip_if_finished=True)
            return None
        return trial, rank

    def record_planned(self, trial: Any, params: dict[str, Param], values: dict[str, Any]) -> None:
        """Record ``values`` as the trial's Optuna parameters (the sampler returns them)."""
        self.sampler.planned = {n: values[n] for n in params}
        for p in params.values():
            if p.scale == "choice":
                trial.suggest_categorical(p.name, list(p.values))
            elif p.is_integer:
                trial.suggest_int(p.name, int(p.low), int(p.high), log=p.scale_spec.optuna_log)
            else:
                trial.suggest_float(p.name, p.low, p.high, log=p.scale_spec.optuna_log)

    def tell(self, trial: Any, value: float | None, state: str) -> bool:
        """Tell the study how ``trial`` ended (``state``: a ``TrialState`` name); False if
        another worker already marked it (stale heartbeat)."""
        try:
            self.st.tell(trial, value, state=getattr(self.optuna.trial.TrialState, state))
            return True
        except (ValueError, RuntimeError):
            return False
