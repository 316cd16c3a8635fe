"""Training data feeds: where each epoch's (standardized, shuffled) batches come from.

Every feed's ``epoch(rng, drop_last)`` yields ``(x, y)`` backend arrays, shuffled with the
host generator ``rng`` exactly as the data layer's ``source.batches`` shuffles, so that all
feeds give the same batches in the same order:

- ``HostFeed``: batches read by the data layer, standardized on the host, copied to the
  backend per batch (the CPU path, and any backend whose data is not device-resident);
- ``PinnedFeed``: device-memory backends, data not device-resident: pinned host buffers and
  a copy stream overlap the next batch's copy with the current step;
- ``DeviceFeed``: device-memory backends, data that fits the device budget: standardized and
  copied once, batches gathered on the device.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np

from ..backend import Backend
from ..step import TrainStep


class Feed(Protocol):
    """What the epoch loop reads batches from."""

    def epoch(self, rng: np.random.Generator, drop_last: bool
              ) -> Iterable[tuple[Any, Any]]: ...


class HostFeed:
    """Batches read (and shuffled) by the data layer, standardized on the host, copied to the
    backend per batch."""

    def __init__(self, be: Backend, source: Any, standardizer: Any, batch_size: int) -> None:
        self.be, self.source, self.std, self.b = be, source, standardizer, batch_size
        self.buf: dict[tuple[int, ...], np.ndarray] = {}

    def _standardized(self, X: np.ndarray) -> np.ndarray:
        buf = self.buf.get(X.shape)
        if buf is None:
            buf = self.buf[X.shape] = np.empty(X.shape, dtype=np.float32)
        return self.std.apply(X, out=buf)

    def epoch(self, rng: np.random.Generator, drop_last: bool) -> Iterable[tuple[Any, Any]]:
        for X, y in self.source.batches(self.b, shuffle=True, rng=rng, drop_last=drop_last):
            yield self.be.asarray(self._standardized(X)), self.be.asarray(y)


class PinnedFeed(HostFeed):
    """Data not device-resident on a CuPy backend: each batch is standardized into one of two
    pinned host buffers and copied on a second stream while the device trains on the previous
    one; events order the copy before its use and the next overwrite after it (double
    buffering)."""

    def __init__(self, be: Backend, source: Any, standardizer: Any, batch_size: int) -> None:
        super().__init__(be, source, standardizer, batch_size)
        import cupyx

        cp = be.xp
        d = int(source.n_features)
        self.copy_stream = cp.cuda.Stream(non_blocking=True)
        self.px = [cupyx.empty_pinned((batch_size, d), np.float32) for _ in range(2)]
        self.py = [cupyx.empty_pinned((batch_size,), np.int64) for _ in range(2)]
        self.dx = [cp.empty((batch_size, d), np.float32) for _ in range(2)]
        self.dy = [cp.empty((batch_size,), np.int64) for _ in range(2)]
        self.copied: list[Any] = [None, None]  # copy into slot k done
        self.used: list[Any] = [None, None]  # compute done with slot k

    def epoch(self, rng: np.random.Generator, drop_last: bool) -> Iterable[tuple[Any, Any]]:
        cp = self.be.xp
        for i, (X, y) in enumerate(self.source.batches(self.b, shuffle=True, rng=rng,
                                                       drop_last=drop_last)):
            k, n = i % 2, X.shape[0]
            if self.copied[k] is not None:
                self.copied[k].synchronize()  # the pinned slot's last copy has left
            self.std.apply(X, out=self.px[k][:n])
            self.py[k][:n] = y
            cs = self.copy_stream
            if self.used[k] is not None:
                cs.wait_event(self.used[k])  # the device is done with the device slot
            self.dx[k][:n].set(self.px[k][:n], stream=cs)
            self.dy[k][:n].set(self.py[k][:n], stream=cs)
            self.copied[k] = cs.record()
            compute = cp.cuda.get_current_stream()
            compute.wait_event(self.copied[k])
            yield self.dx[k][:n], self.dy[k][:n]
            self.used[k] = compute.record()


class DeviceFeed:
    """Data that fits the device budget: standardized once and copied to the device; each
    epoch's shuffle is a permutation drawn from the same host generator as the data layer's
    (so the batches equal the host feed's), and full batches are gathered on the device
    straight into the step's buffers."""

    def __init__(self, be: Backend, source: Any, standardizer: Any, batch_size: int,
                 step: TrainStep) -> None:
        X, y = source.arrays()
        self.be, self.b, self.step, self.n = be, batch_size, step, int(source.n)
        self.X = be.asarray(standardizer.apply(np.asarray(X, dtype=np.float32)))
        self.y = be.asarray(np.asarray(y, dtype=np.int64))

    def epoch(self, rng: np.random.Generator, drop_last: bool) -> Iterable[tuple[Any, Any]]:
        xp = self.be.xp
        order = self.be.asarray(rng.permutation(self.n))  # as InMemorySource.batches draws it
        stop = self.n - self.n % self.b if drop_last else self.n
        for i in range(0, stop, self.b):
            idx = order[i:i + self.b]
            if idx.shape[0] == self.b:
                xp.take(self.X, idx, axis=0, out=self.step.x)
                xp.take(self.y, idx, axis=0, out=self.step.y)
                yield self.step.x, self.step.y
            else:
                yield self.X[idx], self.y[idx]


def device_budget(be: Backend) -> int:
    """Bytes of data to keep in device memory: half of the device's free memory (0 when the
    backend has no device memory or cannot say)."""
    if not be.device_memory:
        return 0
    try:
        free, _total = be.xp.cuda.runtime.memGetInfo()
        return int(free) // 2
    except Exception:  # noqa: BLE001
        return 0


def fits_on_device(be: Backend, source: Any, n_features: int) -> bool:
    """Whether ``source`` is in memory and its float32 inputs fit ``device_budget``."""
    return (be.device_memory and bool(getattr(source, "in_memory", False))
            and int(source.n) * int(n_features) * 4 <= device_budget(be))


def make_feed(be: Backend, source: Any, standardizer: Any, batch_size: int,
              step: TrainStep) -> Feed:
    """The feed for ``be``: host batches unless the backend has device memory."""
    if not be.device_memory:
        return HostFeed(be, source, standardizer, batch_size)
    if fits_on_device(be, source, int(source.n_features)):
        return DeviceFeed(be, source, standardizer, batch_size, step)
    return PinnedFeed(be, source, standardizer, batch_size)
