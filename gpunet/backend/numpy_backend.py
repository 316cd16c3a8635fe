"""The CPU backend: the reference ``Backend`` on NumPy, unchanged."""

from __future__ import annotations

import os

import numpy as np

from .base import Backend


class NumpyBackend(Backend):
    """NumPy arrays on the host; every op is the reference one.

    Elementwise work is split over ``threads`` threads (``GPUNET_THREADS``, default: the
    number of cores), since NumPy releases the GIL inside ufuncs; BLAS threads are OpenBLAS's.
    """

    name = "cpu"
    xp = np

    def __init__(self, threads: int | None = None) -> None:
        env = os.environ.get("GPUNET_THREADS")
        self.threads = max(1, int(threads or (env and int(env)) or os.cpu_count() or 1))
