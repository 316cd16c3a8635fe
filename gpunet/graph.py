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


class GraphedStep:
    """What ``TrainStep`` and ``PackedTrainStep`` share around ``StepGraph``: a full-batch step
    (inputs copied into the step's own buffers ``x`` / ``y``, then the body eagerly or through
    the graph) and an any-size step outside the graph. A subclass provides ``backend``, ``x``,
    ``y``, ``cuda_graph``, ``_graph``, ``steps``, ``_body(x, y)``, ``_run_graph()`` and
    ``_output()`` (what a step returns)."""

    backend: Any
    x: Any
    y: Any
    cuda_graph: bool
    steps: int
    _graph: StepGraph

    @property
    def graph(self) -> Any:
        """The recorded CUDA graph (None before the second graph-path step)."""
        return self._graph.graph

    def _body(self, x: Any, y: Any) -> None:
        raise NotImplementedError

    def _run_graph(self) -> None:
        raise NotImplementedError

    def _output(self) -> Any:
        raise NotImplementedError

    def _step_full(self, x: Any, y: Any) -> Any:
        xp = self.backend.xp
        if x is not None and x is not self.x:
            xp.copyto(self.x, x)
        if y is not None and y is not self.y:
            xp.copyto(self.y, y)
        if not self.cuda_graph:
            self._body(self.x, self.y)
        else:
            self._run_graph()
        return self._done()

    def _step_any(self, x: Any, y: Any) -> Any:
        self._graph.on_stream(lambda: self._body(x, y))
        return self._done()

    def _done(self) -> Any:
        self.steps += 1
        out = self._output()
        assert out is not None
        return out
