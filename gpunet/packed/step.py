"""The packed training step: ``gpunet.step.TrainStep`` for a ``PackedMLP`` (preallocated
buffers, one short sequence of launches, on the GPU one CUDA graph replayed per step).

``PackedTrainStep(pack, optimizer, batch_size, shared_input=...)`` owns the input buffers:
``x`` (B, in) when the members read one batch (``shared_input``), else (B, K*in) (member k's
batch in its columns); ``y`` (B,) int64 shared labels, else (B, K) (member k's labels in
column k). Per member (arrays of shape (K,)): ``loss_sum`` (float64, the sum of member k's
per-batch mean loss times the batch size), ``correct`` (int64), ``losses`` (float32, the
last step's), and ``active`` (bool): a member whose loss is NaN or inf is switched off
inside the step, before its update (its row of parameters and optimizer state then stays
as it was), and adds nothing to its sums from that step on. ``set_active`` switches members
off from the host (early stopping, pruning).

On the GPU (a backend with ``has_graphs`` and its own cuBLAS handle) the step reads the
per-member learning rates and step counts from device arrays (``PackedOptimizer``), and with
``cuda_graph=True`` the first call runs eagerly, the second records the step into a graph
with a private memory pool, and every later call replays it. Dropout (masks drawn on the
host) keeps the step eager, as in ``TrainStep``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import Array
from ..graph import GraphedStep, StepGraph
from .model import PackedMLP
from .optim import PackedOptimizer


class PackedTrainStep(GraphedStep):
    """forward -> per-member softmax cross-entropy -> backward -> per-member updates."""

    def __init__(self, pack: PackedMLP, optimizer: PackedOptimizer, batch_size: int,
                 class_weights: Array | None = None, shared_input: bool = True,
                 cuda_graph: bool | None = None, tf32: bool = False) -> None:
        be = pack.backend
        k, d = pack.k, pack.config["in_features"]
        self.pack, self.opt, self.backend = pack, optimizer, be
        self.batch_size, self.shared_input = int(batch_size), bool(shared_input)
        #: float32 (K, classes) per-member class weights, or None
        self.class_weights = class_weights
        b = self.batch_size
        self.x = be.zeros((b, d) if shared_input else (b, k * d), dtype=np.float32)
        self.y = be.zeros((b,) if shared_input else (b, k), dtype=np.int64)
        self.labels = be.zeros((b, k), dtype=np.int64)
        self.loss_sum = be.zeros((k,), dtype=np.float64)
        self.correct = be.zeros((k,), dtype=np.int64)
        self.active = be.asarray(np.ones(k, dtype=bool))
        self.losses: Array | None = None
        has_dropout = any(p > 0 for p in pack.dropout)
        graphs = bool(be.has_graphs)
        own_gemm = graphs and be.use_own_gemm(tf32=tf32)
        want = graphs if cuda_graph is None else bool(cuda_graph)
        self.cuda_graph = bool(want and graphs and own_gemm and not has_dropout)
        #: why the step is not graph-captured (None when it is)
        self.graph_off_reason = None if self.cuda_graph else (
            "the backend has no graphs" if not graphs else
            "turned off" if not want else
            "no own cuBLAS handle" if not own_gemm else "dropout draws host masks each step")
        self._graph = StepGraph(be)
        self.steps = 0

    # ------------------------------------------------------------------ host side
    def set_lr(self, lrs: list[float]) -> None:
        """Per-member learning rates for the following steps (a schedule sets them per
        epoch)."""
        self._graph.on_stream(lambda: self.opt.set_lr(lrs))

    def set_active(self, active: np.ndarray) -> None:
        """Which members train from the next step on (host bool (K,)); a member already
        switched off on the device stays off."""
        a = np.asarray(active, dtype=bool)
        self.pack.host_active[...] = a & self.pack.host_active
        self._graph.on_stream(lambda: self.backend.xp.logical_and(
            self.active, self.backend.asarray(a), out=self.active))

    def active_members(self) -> np.ndarray:
        """The device's ``active`` flags on the host (waits for the queued steps)."""
        self._graph.synchronize()
        return np.asarray(self.backend.to_host(self.active), dtype=bool).copy()

    def reset_sums(self, loss_sums: list[float], corrects: list[int]) -> None:
        """Start each member's ``loss_sum`` and ``correct`` at these values (0 at the start
        of an epoch; a run resumed mid-epoch continues its sums)."""
        be = self.backend
        self._graph.on_stream(lambda: (
            self.loss_sum.__setitem__(..., be.asarray(np.asarray(loss_sums, np.float64))),
            self.correct.__setitem__(..., be.asarray(np.asarray(corrects, np.int64)))))

    def sums(self) -> tuple[np.ndarray, np.ndarray]:
        """``(loss_sum, correct)`` per member on the host (waits for the queued steps)."""
        be = self.backend
        self._graph.synchronize()
        return (np.array(be.to_host(self.loss_sum), dtype=np.float64),
                np.array(be.to_host(self.correct), dtype=np.int64))

    # ------------------------------------------------------------------ the step
    def _body(self, x: Array, y: Array) -> None:
        """The step's work, all on device arrays, no host synchronization."""
        pack, be = self.pack, self.backend
        xp = be.xp
        n, k = x.shape[0], pack.k
        labels = self.labels if n == self.batch_size else be.empty((n, k), dtype=np.int64)
        xp.copyto(labels, y[:, None] if y.ndim == 1 else y)
        logits = pack.forward(x, training=True)
        losses, dlogits = be.softmax_cross_entropy_packed(logits, labels, self.class_weights,
                                                          dlogits=self._dlogits(logits))
        xp.logical_and(self.active, xp.isfinite(losses), out=self.active)
        hits = (logits.reshape(n, k, -1).argmax(axis=2) == labels).sum(axis=0)
        xp.add(self.correct, hits * self.active, out=self.correct)
        xp.add(self.loss_sum, xp.where(self.active, losses.astype(np.float64) * n, 0.0),
               out=self.loss_sum)
        self.losses = losses
        pack.backward(dlogits)
        self.opt.step(self.active)

    def _dlogits(self, logits: Array) -> Array:
        buf = getattr(self, "_dl", None)
        if buf is None or buf.shape != logits.shape:
            buf = self._dl = self.backend.empty(logits.shape, dtype=np.float32)
        return buf

    def run(self, x: Array | None = None, y: Array | None = None) -> Array:
        """One step on a full batch (``x``, ``y`` copied into the step's buffers unless they
        are those buffers). Returns the per-member losses (K,) (a device array, valid until
        the next step; NaN / inf for a member that diverged in this step)."""
        return self._step_full(x, y)

    def run_eager(self, x: Array, y: Array) -> Array:
        """One step on a batch of any size, outside the graph (an epoch's last partial
        batch)."""
        return self._step_any(x, y)

    # ------------------------------------------------------------------ CUDA graph
    def _output(self) -> Array | None:
        return self.losses

    def _run_graph(self) -> None:
        # the per-member step counts live on the device and advance inside the graph
        self._graph.run(lambda: self._body(self.x, self.y), self._graph_buffers)

    def _graph_buffers(self) -> list[Any]:
        """What the graph reads or writes, held as long as the graph."""
        return ([dict(op._buffers) for op in self.pack.ops]
                + [self.losses, getattr(self, "_dl", None)])

    def __repr__(self) -> str:
        mode = "cuda-graph" if self.cuda_graph else f"eager ({self.graph_off_reason})"
        return (f"PackedTrainStep(members={self.pack.k}, batch_size={self.batch_size}, "
                f"{mode}, steps={self.steps})")
