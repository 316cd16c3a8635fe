"""The Optuna side of a search: the study as one worker sees it, and stale trials.

A worker claims a trial with ``study.ask()``. A running trial records its worker (``Worker``:
host with the pid namespace, pid, process start time). Stale trials (their worker is gone) are
marked FAIL by the next worker that looks (``TuneStudy.fail_stale``), in one of two ways:

- **Journal files** (one host, or a file system several hosts share): a RUNNING trial whose
  process is gone (same host) or whose ``gpunet_heartbeat`` attribute (refreshed every
  ``heartbeat`` seconds during training) is older than ``stale_after`` seconds.
- **Relational databases** (shared beyond one host): Optuna's own heartbeat. A thread records
  the trial's heartbeat in the database every ``heartbeat`` seconds (rounded up to whole
  seconds) while the trial runs; a RUNNING trial whose last heartbeat is older than
  ``stale_after`` seconds by the *database server's* clock is failed
  (``optuna.storages.fail_stale_trials``). No process-id check: pids mean nothing on
  another host, and hosts' clocks need not agree.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import socket
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError, GpunetError
from .space import Param
from .storage import StorageError, is_shared_db, make_storage, redact, require_optuna

#: trial states that count towards ``trials`` (FAIL never does)
FINISHED = ("COMPLETE", "PRUNED")


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
    """Keeps running ``trials`` (one trial, or a worker's claimed batch) alive for the
    stale-trial check, every ``every`` seconds.

    Journal (``rdb`` None): calling it refreshes each trial's ``gpunet_heartbeat`` attribute
    once ``every`` seconds passed (training calls it from ``fit``'s callback). Database: a
    thread records Optuna's heartbeat of each trial from ``__enter__`` to ``__exit__``;
    calling it does nothing. ``drop`` stops beating a trial that ended. A failing beat is
    left for the search's own next storage call to report."""

    def __init__(self, trials: Any, every: float, rdb: Any = None) -> None:
        self.trials = list(trials) if isinstance(trials, (list, tuple)) else [trials]
        self.every, self.rdb = every, rdb
        self.last = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def drop(self, trial: Any) -> None:
        """Beat ``trial`` no more (it ended)."""
        self.trials = [t for t in self.trials if t.number != trial.number]

    def __call__(self) -> None:
        if self.rdb is None and time.monotonic() - self.last > self.every:
            now = time.time()
            for t in list(self.trials):
                with contextlib.suppress(Exception):   # marked failed meanwhile: told later
                    t.set_user_attr("gpunet_heartbeat", now)
            self.last = time.monotonic()

    def _beat(self) -> None:
        while not self._stop.wait(max(1, math.ceil(self.every))):
            for t in list(self.trials):
                with contextlib.suppress(Exception):
                    self.rdb.record_heartbeat(t._trial_id)

    def __enter__(self) -> Heartbeat:
        if self.rdb is not None:
            self._thread = threading.Thread(target=self._beat, name="gpunet-heartbeat",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def folder_slug(name: str) -> str:
    """The study's part of its trial folders' names: ``name`` itself when it is a plain file
    name (letters, digits, ``_ . -``, not starting with a dot, at most 64 characters), else
    those characters kept (others as ``_``) and 8 hex digits of its SHA-256 added, so a name
    such as ``../../x`` can never make a folder outside ``<out>/trials``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".")[:64]
    if safe == name and safe:
        return safe
    return f"{safe or 'study'}-{hashlib.sha256(name.encode('utf-8', 'replace')).hexdigest()[:8]}"


# ====================================================================== the study
class TuneStudy:
    """One gpunet study as this worker sees it: the Optuna study ``st``, the planned-value
    sampler, this ``worker``, the folder of trial runs and, on a database, its ``rdb``
    storage (Optuna's heartbeat); ``storage`` is the storage as shown (no password)."""

    def __init__(self, optuna: Any, st: Any, sampler: Any, name: str, storage: str,
                 trials_dir: Path, stale_after: float,
                 say: Callable[[str, dict[str, Any]], None], rdb: Any = None,
                 heartbeat: float = 10.0) -> None:
        self.optuna, self.st, self.sampler = optuna, st, sampler
        self.name, self.storage, self.trials_dir = name, redact(storage), trials_dir
        self.stale_after, self.say, self.rdb, self.heartbeat = stale_after, say, rdb, heartbeat
        self.slug = folder_slug(name)
        self.worker = Worker()

    @classmethod
    def open(cls, name: str, storage: str, trials_dir: Path, *, pruner: str, epochs: int,
             stale_after: float, say: Callable[[str, dict[str, Any]], None],
             heartbeat: float = 10.0, retry_for: float = 30.0) -> TuneStudy:
        """Create or load the study ``name`` in ``storage`` (maximizing; refused otherwise)."""
        optuna = require_optuna()
        db = is_shared_db(storage)
        store = make_storage(storage, heartbeat=heartbeat if db else None,
                             stale_after=stale_after, retry_for=retry_for, say=say)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = planned_sampler()
        prun = (optuna.pruners.MedianPruner(n_startup_trials=5,
                                            n_warmup_steps=max(1, int(epochs) // 3))
                if pruner == "median" else optuna.pruners.NopPruner())
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                st = optuna.create_study(study_name=name, storage=store, sampler=sampler,
                                         pruner=prun, direction="maximize", load_if_exists=True)
        except (GpunetError, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - whatever a damaged storage raises
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise StorageError(f"cannot open study {name!r} in {redact(storage)}: "
                               f"{type(e).__name__}: {msg}") from None
        if st.directions != [optuna.study.StudyDirection.MAXIMIZE]:
            raise ConfigError(f"study {name!r} in {redact(storage)} is not a gpunet tune study")
        return cls(optuna, st, sampler, name, storage, trials_dir, stale_after, say,
                   rdb=store if db else None, heartbeat=heartbeat)

    def beating(self, trials: Any) -> Heartbeat:
        """The heartbeat that keeps ``trials`` (one trial or a list) from being taken for
        stale (see the module)."""
        return Heartbeat(trials, self.heartbeat, self.rdb)

    def run_dir(self, number: int) -> Path:
        """Trial ``number``'s run folder, always directly inside ``trials_dir``."""
        return self.trials_dir / f"{self.slug}-{int(number)}"

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
        """Mark stale RUNNING trials FAIL (saying ``stale``; see the module for the two
        tests), then remove the run folders of this study's finished trials (a killed worker
        leaves its folder)."""
        if self.rdb is not None:
            stale: list[int] = []
            self.rdb.heartbeat_stale_trial_callback = lambda study, t: stale.append(t.number)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", self.optuna.exceptions.ExperimentalWarning)
                self.optuna.storages.fail_stale_trials(self.st)
            for n in stale:
                self.say("stale", {"number": n})
        else:
            now = time.time()
            fail = self.optuna.trial.TrialState.FAIL
            for t in self.trials():
                if t.state.name == "RUNNING" and self.worker.is_stale(t, now, self.stale_after):
                    with contextlib.suppress(Exception):  # another worker may beat us to it
                        self.st.tell(t.number, state=fail, skip_if_finished=True)
                        self.say("stale", {"number": t.number})
        self._remove_finished_folders()

    def fail_dead(self, pid: int, why: str) -> list[int]:
        """Mark FAIL (``gpunet_error`` = ``why``) the RUNNING trials of worker process ``pid``
        on this host, which the caller knows is gone; returns their numbers."""
        host = self.worker.identity["host"]
        done = []
        for t in self.trials():
            w = t.user_attrs.get("gpunet_worker")
            if t.state.name == "RUNNING" and isinstance(w, dict) and w.get("pid") == pid \
                    and w.get("host") == host:
                with contextlib.suppress(Exception):   # its heartbeat check may beat us
                    self.st._storage.set_trial_user_attr(t._trial_id, "gpunet_error", why)
                    self.st.tell(t.number, state=self.optuna.trial.TrialState.FAIL,
                                 skip_if_finished=True)
                    done.append(t.number)
        return done

    def _remove_finished_folders(self) -> None:
        """Remove ``<trials_dir>/<slug>-<number>`` folders (real folders, not links) of this
        study's trials that are no longer RUNNING, and the save-commit marker of a pack none
        of whose trials is (with its temporary files: a worker killed mid-commit leaves
        them); nothing else is touched."""
        if not self.trials_dir.is_dir() or self.trials_dir.is_symlink():
            return
        ts = self.trials()
        states = {t.number: t.state.name for t in ts}
        head = f"{self.slug}-"
        for d in self.trials_dir.iterdir():
            num = d.name[len(head):]
            if d.name.startswith(head) and num.isdigit() and d.is_dir() \
                    and not d.is_symlink() and states.get(int(num), "RUNNING") != "RUNNING":
                shutil.rmtree(d, ignore_errors=True)
        self._remove_pack_markers(ts, states)

    def _remove_pack_markers(self, ts: list[Any], states: dict[int, str]) -> None:
        """Remove ``gpunet.packed.PackCommit`` markers (``.pack-<key>.commit``, and
        ``..pack-<key>.commit.*.gpunet-tmp``) of this study's ended packs."""
        packs = {tuple(p) for t in ts for p in [t.user_attrs.get("gpunet_pack")]
                 if isinstance(p, list) and len(p) > 1}
        names = set()
        for p in packs:
            if all(states.get(int(n), "RUNNING") != "RUNNING" for n in p):
                from ..packed import PackCommit

                names.add(PackCommit([self.run_dir(int(n)) for n in p]).marker.name)
        if not names:
            return
        for e in os.scandir(self.trials_dir):
            base = e.name[1:].rsplit(".", 2)[0] if e.name.endswith(".gpunet-tmp") else e.name
            if base in names and e.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.unlink(e.path)

    # ------------------------------------------------------------------ writing
    def claim(self, total: int, n: int = 1) -> list[tuple[Any, int]]:
        """Ask for up to ``n`` trials, one at a time, recording this worker and a heartbeat on
        each; returns them with their ranks (finished or running trials before each). A claim
        beyond ``total`` (another worker took the last place) is closed at once as FAIL with
        ``gpunet_surplus`` and ends the claiming."""
        out: list[tuple[Any, int]] = []
        for i in range(max(1, int(n))):
            if i and len(self.active(self.trials())) >= total:
                break   # other workers took the rest meanwhile
            one = self._claim_one(total)
            if one is None:
                break
            out.append(one)
        return out

    def _claim_one(self, total: int) -> tuple[Any, int] | None:
        with warnings.catch_warnings():
            # Optuna's heartbeat is meant for Study.optimize; ask/tell keeps it by hand here
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = self.st.ask()
        trial.set_user_attr("gpunet_worker", self.worker.identity)
        if self.rdb is not None:
            self.rdb.record_heartbeat(trial._trial_id)
        else:
            trial.set_user_attr("gpunet_heartbeat", time.time())
        rank = sum(1 for t in self.active(self.trials()) if t.number < trial.number)
        if rank >= total:
            trial.set_user_attr("gpunet_surplus", True)
            self.st.tell(trial, state=self.optuna.trial.TrialState.FAIL, skip_if_finished=True)
            return None
        return trial, rank

    def other_workers(self, ts: list[Any]) -> int:
        """How many other workers hold RUNNING trials in ``ts``."""
        me = self.worker.identity
        ids = {json.dumps(w, sort_keys=True) for t in ts if t.state.name == "RUNNING"
               for w in [t.user_attrs.get("gpunet_worker")] if isinstance(w, dict) and w != me}
        return len(ids)

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

    def fail_running(self, trial: Any, why: str) -> None:
        """Mark ``trial`` FAIL (``gpunet_error`` = ``why``) unless it already ended."""
        with contextlib.suppress(Exception):
            if self.st._storage.get_trial(trial._trial_id).state.name == "RUNNING":
                trial.set_user_attr("gpunet_error", why)
                self.st.tell(trial, state=self.optuna.trial.TrialState.FAIL,
                             skip_if_finished=True)

    def tell(self, trial: Any, value: float | None, state: str) -> bool:
        """Tell the study how ``trial`` ended (``state``: a ``TrialState`` name); False if
        another worker already marked it (stale heartbeat)."""
        try:
            self.st.tell(trial, value, state=getattr(self.optuna.trial.TrialState, state))
            return True
        except (ValueError, RuntimeError):
            return False
