"""Worker processes on one study: ``tune(..., workers=N, devices=...)``.

**Planning** (``plan_workers``): ``workers`` processes; with ``devices`` (``"0,1"`` or
``"all"``) ``workers`` per GPU, each pinned to its GPU with ``CUDA_VISIBLE_DEVICES`` (it then
trains on ``gpu``, the one device it sees; the numbers are read through this process's own
``CUDA_VISIBLE_DEVICES``, as CUDA numbers them here). Each worker gets ``GPUNET_THREADS`` and
the BLAS / OpenMP thread variables set to the cores this process may use divided by the
number of workers (at least 1), unless they are set already.

**Running** (``Pool``): each worker is ``python -m gpunet.tune.worker``, reading its job as
JSON on stdin and writing its events as JSON lines on stdout (no pickle); the pool relays
them, with ``worker`` (its number) added, to the callback, so one display shows them all, and
returns once every worker has exited. A worker that exits on a signal or crashes is reported
(``worker-died``) and its RUNNING trials are marked FAIL at once; while the study is short of
its total, a new worker takes its place (as many replacements as workers, at most). A worker
that stops with an error says why (``worker-error``). Ctrl-C or SIGTERM (a
``KeyboardInterrupt`` here) sends SIGTERM to every worker, which marks its running trial FAIL
(``interrupted``) and exits; workers still running after ``STOP_GRACE`` seconds are killed and
their trials marked FAIL, so no trial is left RUNNING. Workers run in their own sessions (a
terminal's Ctrl-C reaches the pool alone) and are signalled when the pool dies
(``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..errors import ConfigError, GpunetError
from .job import Job
from .storage import is_url, release_dead_lock
from .study import FINISHED, TuneStudy

#: environment variables that bound a worker's CPU threads
THREAD_VARS = ("GPUNET_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
#: seconds the workers get to stop after Ctrl-C before they are killed
STOP_GRACE = 20.0


@dataclass
class WorkerPlan:
    """One worker to start: its ``device`` option, environment additions and GPU (if pinned)."""

    device: str | None
    env: dict[str, str]
    gpu: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"device": self.gpu and f"gpu {self.gpu}" or self.device or "auto",
                "threads": self.env.get("GPUNET_THREADS") or os.environ.get("GPUNET_THREADS")}


def gpu_count() -> int:
    """GPUs CuPy sees here (0 without CuPy or a driver)."""
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # noqa: BLE001 - no CuPy, no driver, no device
        return 0


def parse_devices(text: str, count: Callable[[], int] = gpu_count) -> list[int]:
    """``"all"`` (every GPU ``count()`` finds) or GPU numbers such as ``"0,1"``, each once."""
    t = str(text).strip().lower()
    if t == "all":
        n = count()
        if n < 1:
            raise ConfigError("--devices all: no GPU is visible here")
        return list(range(n))
    parts = [p.strip() for p in t.split(",")]
    if not t or not all(p.isdigit() and len(p) < 6 for p in parts):
        raise ConfigError(f"--devices takes GPU numbers such as 0,1 or all, got {text!r}")
    ids = [int(p) for p in parts]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"--devices {text}: name each GPU once (--workers sets how many "
                          "workers each runs)")
    n = count()
    if max(ids) >= n:
        raise ConfigError(f"--devices {text}: {n} GPU(s) visible here, numbered from 0")
    return ids


def _pinned(ids: list[int], environ: dict[str, str] | os._Environ[str]) -> list[str]:
    """``CUDA_VISIBLE_DEVICES`` values for GPUs ``ids`` as this process numbers them."""
    vis = environ.get("CUDA_VISIBLE_DEVICES")
    if vis is None or not vis.strip():
        return [str(i) for i in ids]
    seen = [v.strip() for v in vis.split(",") if v.strip()]
    for i in ids:
        if i >= len(seen):
            raise ConfigError(f"--devices {i}: CUDA_VISIBLE_DEVICES={vis} leaves "
                              f"{len(seen)} GPU(s), numbered from 0")
    return [seen[i] for i in ids]


def plan_workers(workers: int, devices: str | None, device: str | None, *,
                 environ: dict[str, str] | None = None, cores: int | None = None,
                 count: Callable[[], int] = gpu_count) -> list[WorkerPlan]:
    """The workers to start for ``--workers`` / ``--devices`` (see the module docstring)."""
    env_in = os.environ if environ is None else environ
    if devices is not None and device not in (None, "auto", "gpu"):
        raise ConfigError(f"--devices pins each worker to one GPU; leave out --device {device}")
    if devices is None:
        slots: list[tuple[str | None, str | None]] = [(device, None)] * workers
    else:
        slots = [("gpu", g) for g in _pinned(parse_devices(devices, count), env_in)
                 for _ in range(workers)]
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else (os.cpu_count() or 1)
    threads = str(max(1, int(cores) // len(slots)))
    plans = []
    for dev, gpu in slots:
        env = {v: threads for v in THREAD_VARS if not env_in.get(v, "").strip()}
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        plans.append(WorkerPlan(dev, env, gpu))
    return plans


# ====================================================================== running
@dataclass
class _Proc:
    """A started worker: its number, plan, process and what it said."""

    number: int
    plan: WorkerPlan
    proc: subprocess.Popen[str]
    eofs: int = 0
    ran: int = 0
    note: str | None = None
    error: str | None = None
    exit: int | None = None
    tail: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {"worker": self.number, "pid": self.proc.pid, "device": self.plan.describe()[
            "device"], "ran": self.ran, "exit": self.exit, "error": self.error}


def _pipe(p: _Proc, stream: IO[str], kind: str, q: queue.Queue[Any]) -> None:
    for line in stream:
        q.put((p, kind, line.rstrip("\n")))
    q.put((p, "eof", None))


def _why(rc: int) -> str:
    if rc < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-rc).name}"
        return f"killed by signal {-rc}"
    return f"exited with code {rc}"


class Pool:
    """Runs ``plans`` as worker processes of ``job`` on ``study`` (see the module docstring);
    ``ran``: trials the workers trained, ``note``: what the summary should say."""

    #: how a worker process is started (its job arrives on stdin)
    command: tuple[str, ...] = (sys.executable, "-m", "gpunet.tune.worker")

    def __init__(self, job: Job, plans: list[WorkerPlan], study: TuneStudy,
                 say: Callable[[str, dict[str, Any]], None]) -> None:
        self.job, self.plans, self.study, self.say = job, plans, study, say
        self.q: queue.Queue[Any] = queue.Queue()
        self.started: list[_Proc] = []
        self.live: list[_Proc] = []
        self.replacements = len(plans)
        self.stopping = False
        self.ran, self.note = 0, None
        self.finished = 0

    def run(self) -> None:
        """Start the workers, relay their events until all have exited; on
        ``KeyboardInterrupt`` stop them all first (then re-raise)."""
        self.finished = self._count_finished()
        try:
            for plan in self.plans:
                self._spawn(plan)
            while self.live:
                self._pump(0.5)
        except KeyboardInterrupt:
            self.stop()
            raise
        finally:
            self._kill_all()
        self._finish()

    def summary(self) -> list[dict[str, Any]]:
        return [p.record() for p in self.started]

    # ------------------------------------------------------------------ processes
    def _spawn(self, plan: WorkerPlan) -> _Proc:
        env = {**os.environ, **plan.env, "PYTHONUNBUFFERED": "1",
               "GPUNET_TUNE_PARENT": str(os.getpid())}
        proc = subprocess.Popen(list(self.command),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)
        p = _Proc(len(self.started) + 1, plan, proc)
        self.started.append(p)
        self.live.append(p)
        for stream, kind in ((proc.stdout, "out"), (proc.stderr, "err")):
            threading.Thread(target=_pipe, args=(p, stream, kind, self.q), daemon=True).start()
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(json.dumps(self.job.to_spec(plan.device)))
            proc.stdin.close()
        return p

    def _pump(self, timeout: float) -> None:
        """Relay what the workers said within ``timeout`` seconds; reap the ones done."""
        try:
            item = self.q.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            p, kind, line = item
            if kind == "eof":
                p.eofs += 1
                if p.eofs == 2:
                    self._reap(p)
            elif kind == "err":
                p.tail = (p.tail + [line])[-20:]
                self.say("worker-output", {"worker": p.number, "line": line})
            else:
                self._event(p, line)
            try:
                item = self.q.get_nowait()
            except queue.Empty:
                return

    def _event(self, p: _Proc, line: str) -> None:
        try:
            ev = json.loads(line)
            name = ev.pop("event")
        except (ValueError, AttributeError, KeyError):
            self.say("worker-output", {"worker": p.number, "line": line})
            return
        if name == "done":
            p.ran, p.note = int(ev.get("ran_here", 0)), ev.get("note")
        elif name == "error":
            p.error = str(ev.get("message"))
        elif name == "warning":
            self.say("worker-output", {"worker": p.number, "line": f"warning: {ev['message']}"})
        elif name not in ("start", "end"):
            if name == "trial" and ev.get("state") in FINISHED:
                self.finished += 1
                ev["progress"] = [self.finished, self.job.trials]
            self.say(name, {**ev, "worker": p.number})

    def _reap(self, p: _Proc) -> None:
        """A worker whose output ended: wait for it and deal with how it ended."""
        p.exit = p.proc.wait()
        self.live.remove(p)
        if self.stopping:
            self._fail_dead(p, "interrupted")   # a trial it could not close itself
            return
        if p.exit == 0:
            return
        if p.error is not None:
            self.say("worker-error", {"worker": p.number, "pid": p.proc.pid,
                                      "message": p.error})
            return
        why = _why(p.exit) + (f" ({p.tail[-1]})" if p.tail and p.exit > 0 else "")
        failed = self._fail_dead(p, why)
        again = not self.stopping and self.replacements > 0 and \
            self._count_finished() < self.job.trials
        self.say("worker-died", {"worker": p.number, "pid": p.proc.pid, "why": why,
                                 "trials": failed, "replaced": again})
        if again:
            self.replacements -= 1
            self._spawn(p.plan)

    def _fail_dead(self, p: _Proc, why: str) -> list[int]:
        if not is_url(self.job.storage) and release_dead_lock(Path(self.job.storage)):
            self.say("worker-output", {"worker": p.number, "line": "released the journal "
                                       "lock it held"})
        try:
            return self.study.fail_dead(p.proc.pid, f"its worker died ({why})")
        except GpunetError:
            return []

    def _count_finished(self) -> int:
        return sum(t.state.name in FINISHED for t in self.study.trials())

    # ------------------------------------------------------------------ stopping
    def stop(self) -> None:
        """SIGTERM to every worker (it stops as on Ctrl-C); after ``STOP_GRACE`` seconds,
        SIGKILL to the rest (their running trials marked FAIL here)."""
        self.stopping = True
        for p in self.live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        try:
            while self.live and time.monotonic() < deadline:
                self._pump(0.2)
        except KeyboardInterrupt:
            pass   # a second Ctrl-C: kill them now
        self._kill_all()

    def _kill_all(self) -> None:
        for p in list(self.live):
            with contextlib.suppress(ProcessLookupError):
                p.proc.kill()
            p.exit = p.proc.wait()
            self.live.remove(p)
            with contextlib.suppress(Exception):
                self.study.fail_dead(p.proc.pid, "interrupted")

    def _finish(self) -> None:
        """``ran`` and ``note``; a ``GpunetError`` when workers failed and the study is short
        of its total (every worker failing: without asking the storage again)."""
        self.ran = sum(p.ran for p in self.started)
        bad = [p for p in self.started if p.exit != 0]
        if bad and all(p.exit != 0 for p in self.started):
            first = next((p.error for p in bad if p.error), None) or _why(bad[0].exit or 0)
            raise GpunetError(f"all {len(self.started)} workers stopped: {first}")
        done = self._count_finished()
        what = "; ".join(f"worker {p.number}: {p.error or _why(p.exit or 0)}" for p in bad)
        if bad and done < self.job.trials:
            raise GpunetError(f"{what}; the study holds {done} of {self.job.trials} "
                              "finished trials: rerun the same command to finish it")
        # a worker's own note ("the rest run elsewhere") matters only while the study is short
        notes = [p.note for p in self.started if p.note] if done < self.job.trials else []
        if bad:
            notes.append(f"{what}; the other workers finished the study")
        self.note = "; ".join(dict.fromkeys(notes)) or None
