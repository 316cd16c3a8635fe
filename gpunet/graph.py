"""A training step recorded once as a CUDA graph and replayed (CuPy), for ``TrainStep`` and
``PackedTrainStep``.

``StepGraph.run(body, keep)``: the first call runs ``body()`` eagerly (it compiles the kernels
and sizes the buffers); the second records ``body()`` into a graph on a private stream, with a
private memory pool (capture mode relaxed, so the pool may ``cudaMalloc`` outside the graph
while recording), then replays it; every later call is one graph launch. ``keep()`` names the
arrays the graph reads or writes; they are held as long as the graph. ``on_stream(fn)`` runs
host-issued work (a new learning rate, reset sums) ordered after the caller's queued work and
before its later work, on the capture stream once there is one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class StepGraph:
    """The capture stream, private pool and graph of one training step."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.graph: Any = None
        self.stream: Any = None
        self._pool: Any = None
        self._keep: list[Any] = []
        self._warm = False

    def on_stream(self, fn: Callable[[], Any]) -> Any:
        """``fn()``, ordered with the steps (simply now before there is a capture stream)."""
        if self.stream is None:
            return fn()
        cp = self.backend.xp
        caller = cp.cuda.get_current_stream()
        self.stream.wait_event(caller.record())
        with self.stream:
            out = fn()
        caller.wait_event(self.stream.record())
        return out

    def synchronize(self) -> None:
        """Wait for the steps queued on the capture stream."""
        if self.stream is not None:
            self.stream.synchronize()

    def run(self, body: Callable[[], None], keep: Callable[[], list[Any]]) -> bool:
        """One step: eagerly the first time, then from the graph (recorded on the second call).
        Returns whether the graph ran it (``body`` itself ran only as the warm-up)."""
        if not self._warm:
            self._warm = True
            body()
            return False
        if self.graph is None:
            self._capture(body, keep)
        self.on_stream(lambda: self.graph.launch(self.stream))
        return True

    def _capture(self, body: Callable[[], None], keep: Callable[[], list[Any]]) -> None:
        """Record ``body()`` into ``self.graph``; it does not run (the first replay does)."""
        cp = self.backend.xp
        self.backend.synchronize()
        self.stream = cp.cuda.Stream(non_blocking=True)
        self._pool = cp.cuda.MemoryPool()  # private: nothing else allocates from it
        self._keep = list(keep())  # the buffers as recording finds them
        with self.stream:
            with cp.cuda.using_allocator(self._pool.malloc):
                relaxed = getattr(cp.cuda.runtime, "streamCaptureModeRelaxed", None)
                if relaxed is None:
                    self.stream.begin_capture()
                else:
                    self.stream.begin_capture(relaxed)
                try:
                    body()
                finally:
                    graph = self.stream.end_capture()
        self.graph = graph
        self._keep += list(keep())  # and those recording made
