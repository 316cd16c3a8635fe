"""The GPU backend: ``xp = cupy``; ops with a fused CUDA kernel are overridden here.

Each override checks dtype (float32) and C-contiguity first, since RawKernels ignore strides,
and falls back to the reference op in ``Backend`` otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Backend


class CupyBackend(Backend):
    """CuPy arrays on one CUDA device."""

    name = "gpu"

    def __init__(self, device: int = 0) -> None:
        import cupy

        self.xp = cupy
        self.device_id = int(device)
        self.device = cupy.cuda.Device(self.device_id)
        self.device.use()

    def asarray(self, x: Any, dtype: Any = None) -> Any:
        with self.device:
            return self.xp.asarray(x, dtype=dtype)

    def to_host(self, x: Any) -> np.ndarray:
        if isinstance(x, np.ndarray):
            return x
        return self.xp.asnumpy(x)

    def synchronize(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()

    def __repr__(self) -> str:
        return f"CupyBackend(device={self.device_id})"
