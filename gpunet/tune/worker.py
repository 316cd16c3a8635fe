"""One worker process of a ``gpunet.tune.pool.Pool``: ``python -m gpunet.tune.worker``.

Reads its job (``Job.to_spec``) as one JSON document on stdin, searches (``Search.run``) and
writes every event as one JSON line ``{"event": NAME, ...}`` on stdout, ending with ``done``
(``ran_here``, ``note``), or ``error`` (``message``, one line) and exit code 2. SIGTERM stops
it as Ctrl-C does (its running trial marked FAIL, exit code 130); it asks Linux for SIGTERM
when the pool that started it dies.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import warnings
from typing import Any

import numpy as np


def _jsonable(x: Any) -> Any:
    """NumPy scalars as Python numbers; anything else JSON lacks as its text."""
    return x.item() if isinstance(x, np.generic) else str(x)


def emit(event: str, info: dict[str, Any]) -> None:
    """Write one event as a JSON line on stdout."""
    sys.stdout.write(json.dumps({"event": event, **info}, default=_jsonable) + "\n")
    sys.stdout.flush()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _die_with_parent() -> None:
    """SIGTERM this process when its parent (the pool) dies (Linux); exit now if it has."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    parent = os.environ.get("GPUNET_TUNE_PARENT")
    if parent and parent.isdigit() and os.getppid() != int(parent):
        raise SystemExit(130)


def _one_line(msg: str) -> str:
    parts = [p.strip() for p in str(msg).splitlines() if p.strip()]
    return "; ".join(parts) if parts else "unknown error"


def run(spec: dict[str, Any]) -> None:
    """Search as the job ``spec`` says, emitting events."""
    from .job import Job, open_data

    job = Job.from_spec(spec)
    ds = open_data(job.base, job.data)
    st = job.open_study(emit)
    search = job.search(st, ds, emit)
    search.run()
    emit("done", {"ran_here": search.ran_here, "note": search.note})


def main() -> int:
    """The worker's entry point; returns its exit code."""
    _die_with_parent()
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)   # even if started ignoring it
    warnings.showwarning = lambda message, *a, **k: emit("warning",
                                                         {"message": _one_line(str(message))})
    from ..errors import GpunetError

    try:
        run(json.loads(sys.stdin.read()))
    except KeyboardInterrupt:
        return 130
    except GpunetError as e:
        emit("error", {"message": _one_line(str(e))})
        return 2
    except OSError as e:
        emit("error", {"message": _one_line(f"{e.strerror or e}: {e.filename or ''}")})
        return 2
    except MemoryError:
        emit("error", {"message": "out of memory; try a smaller --batch-size"})
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
