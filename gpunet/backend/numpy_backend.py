"""The CPU backend: the reference ``Backend`` on NumPy, unchanged."""

from __future__ import annotations

import numpy as np

from .base import Backend


class NumpyBackend(Backend):
    """NumPy arrays on the host; every op is the reference one."""

    name = "cpu"
    xp = np
