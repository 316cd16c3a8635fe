"""The NumPy backend's threads: elementwise work split by rows or chunks, and scratch arrays.

NumPy releases the GIL inside ufuncs and BLAS calls, so ``n`` threads working on disjoint
slices of one array run side by side. ``WorkPool.map`` runs ``fn`` over a list of items on
the calling thread and ``n - 1`` daemon workers; ``parts`` cuts a row range into one slice
per thread; ``workspace`` keeps per-thread scratch arrays so that nothing is allocated per
step. ``bound_native_threads`` caps the thread pools of the native libraries (BLAS, OpenMP)
for ``GPUNET_THREADS``.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from typing import Any

import numpy as np


class Workers:
    """``n`` daemon threads that take jobs from one queue.

    A hand-off through ``queue.SimpleQueue`` costs ~10 us where a ``ThreadPoolExecutor``'s
    submit / result costs ~30 us (measured), and a training step hands off ~20 times. On a
    virtual machine waking the worker can cost much more (~60 us on this project's 2-core
    VM, 2026-12), which is why the ops split only work far larger than that (``gemm.py``'s
    ``MIN_SPLIT_FLOPS``, ``native_ops.py``'s ``MIN_SPLIT_*``)."""

    def __init__(self, n: int) -> None:
        self.pid = os.getpid()  # threads do not survive a fork: a child makes its own
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        for i in range(n):
            threading.Thread(target=self._serve, name=f"gpunet-{i}", daemon=True).start()

    def _serve(self) -> None:
        while True:
            fn, item, i, done = self._jobs.get()
            try:
                done.put((i, True, fn(item)))
            except BaseException as e:  # handed back to the caller, raised there
                done.put((i, False, e))

    def map_rest(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        """``[fn(i) for i in items]``: the calling thread runs ``items[0]``, the workers the
        rest; the first exception (in item order) is raised once all have finished."""
        done: queue.SimpleQueue = queue.SimpleQueue()
        for i, item in enumerate(items[1:], 1):
            self._jobs.put((fn, item, i, done))
        results: list[Any] = [None] * len(items)
        ok = [True] * len(items)
        try:
            results[0] = fn(items[0])
        except BaseException as e:
            ok[0], results[0] = False, e
        for _ in range(len(items) - 1):
            i, ok[i], results[i] = done.get()
        for good, r in zip(ok, results, strict=True):
            if not good:
                raise r
        return results


class WorkPool:
    """``threads`` threads (the caller's and ``threads - 1`` workers, started on first use)
    and a cache of scratch arrays."""

    def __init__(self, threads: int) -> None:
        self.threads = max(1, int(threads))
        self._workers: Workers | None = None
        self._ws: dict[tuple, np.ndarray] = {}

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        """``[fn(i) for i in items]``, on all the threads when there is more than one."""
        if self.threads > 1 and len(items) > 1:
            if self._workers is None or self._workers.pid != os.getpid():
                self._workers = Workers(self.threads - 1)
            return self._workers.map_rest(fn, items)
        return [fn(i) for i in items]

    def parts(self, n: int, min_size: int = 64) -> list[slice]:
        """``threads`` contiguous slices covering range(n), none smaller than ``min_size``."""
        k = max(1, min(self.threads, n // min_size))
        bounds = [n * i // k for i in range(k + 1)]
        return [slice(bounds[i], bounds[i + 1]) for i in range(k)]

    def workspace(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A scratch array cached by name, shape, dtype and calling thread (reused, never
        returned to users; threads working on parts of one op each get their own)."""
        key = (name, tuple(shape), np.dtype(dtype).str, threading.get_ident())
        buf = self._ws.get(key)
        if buf is None:
            buf = self._ws[key] = np.empty(shape, dtype=dtype)
        return buf


def column_ranges(n: int, k: int, align: int = 16) -> list[tuple[int, int]]:
    """``k`` contiguous ranges covering range(n), their inner bounds multiples of ``align``
    (whole cache lines of float32); empty ranges left out."""
    bounds = [0] + [(n * i // k) // align * align for i in range(1, k)] + [n]
    return [(bounds[i], bounds[i + 1]) for i in range(k) if bounds[i + 1] > bounds[i]]


def bound_native_threads(n: int) -> None:
    """Hold every BLAS and OpenMP library loaded in this process (OpenBLAS, MKL, OpenMP
    runtimes) at ``n`` threads or fewer, through threadpoolctl, for the rest of the process.

    Libraries loaded later are bounded by the next call (each backend makes one). Without
    threadpoolctl, or for a library it cannot drive, nothing happens."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return
    try:
        controllers = ThreadpoolController().lib_controllers
    except Exception:  # noqa: BLE001 - a broken or unknown library must never stop a backend
        return
    for lc in controllers:
        try:
            if lc.num_threads > n:
                lc.set_num_threads(n)
        except Exception:  # noqa: BLE001,S112 - as above
            continue
