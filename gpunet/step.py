"""A fixed training step: preallocated buffers, one short sequence of launches, and on the GPU
the whole step recorded once as a CUDA graph and replayed.

``TrainStep(model, optimizer, batch_size)`` owns the input buffers ``x`` (B, d) float32 and
``y`` (B,) int64 and the running sums ``loss_sum`` (float64, sum of per-batch mean loss times
batch size) and ``correct`` (int64). ``run()`` trains on what ``x`` and ``y`` hold (or copies
``x``, ``y`` into them); ``run_eager(x, y)`` trains on a batch of any size (an epoch's last,
partial batch) outside the graph.

On the GPU (``CupyBackend``) the step reads the optimizer's step count and learning rate
from device memory (``DeviceScalars``), the GEMMs go through gpunet's own cuBLAS handle, and
with ``cuda_graph=True`` the first call runs eagerly (compiling kernels, sizing buffers), the
second records the step into a graph with a private memory pool, and every later call replays
it: one launch from Python per step. Captured and eager steps run the same kernels with the
same scalars, so they give the same bits. Dropout (masks drawn on the host each step) runs
eagerly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import Array
from .graph import GraphedStep, StepGraph
from .layers import Dropout
from .model import MLP
from .optim import DeviceScalars, Optimizer


class TrainStep(GraphedStep):
    """forward -> softmax cross-entropy -> backward -> optimizer update, on fixed buffers."""

    def __init__(
        self,
        model: MLP,
        optimizer: Optimizer,
        batch_size: int,
        class_weights: Array | None = None,
        cuda_graph: bool | None = None,
        tf32: bool = False,
    ) -> None:
        be = model.backend
        self.model, self.opt, self.backend = model, optimizer, be
        self.batch_size = int(batch_size)
        self.class_weights = class_weights
        d = model.config["in_features"]
        self.x = be.zeros((self.batch_size, d), dtype=model.dtype)
        self.y = be.zeros((self.batch_size,), dtype=np.int64)
        self.loss_sum = be.zeros((), dtype=np.float64)
        self.correct = be.zeros((), dtype=np.int64)
        self.loss: Array | None = None
        state = list(optimizer.state.values())
        self.device_scalars = be.supports_device_scalars(
            model.params, model.grads, model.decay_mask, *state)
        self.scalars = (DeviceScalars(be, optimizer.t, optimizer.lr)
                        if self.device_scalars else None)
        own_gemm = self.device_scalars and be.use_own_gemm(tf32=tf32)
        has_dropout = any(isinstance(layer, Dropout) and layer.p > 0 for layer in model.layers)
        want = self.device_scalars if cuda_graph is None else bool(cuda_graph)
        self.cuda_graph = bool(want and self.device_scalars and own_gemm and not has_dropout)
        #: why the step is not graph-captured (None when it is)
        self.graph_off_reason = None if self.cuda_graph else (
            "not on a GPU backend" if not self.device_scalars else
            "turned off" if not want else
            "no own cuBLAS handle" if not own_gemm else "dropout draws host masks each step")
        self._graph = StepGraph(be)
        self.steps = 0

    # ------------------------------------------------------------------ hyperparameters
    def set_lr(self, lr: float) -> None:
        """The learning rate for the following steps (a schedule calls this per epoch)."""
        self.opt.lr = float(lr)
        if self.scalars is not None:
            self._graph.on_stream(lambda: self.scalars.set_lr(lr))

    def reset_sums(self, loss_sum: float = 0.0, correct: int = 0) -> None:
        """Start ``loss_sum`` and ``correct`` at these values (0 at the start of an epoch; a
        run resumed mid-epoch continues its sums, so they add up in the same order)."""
        self._graph.on_stream(lambda: (self.loss_sum.fill(float(loss_sum)),
                                       self.correct.fill(int(correct))))

    def sums(self) -> tuple[float, int]:
        """``(loss_sum, correct)`` on the host (waits for the queued steps)."""
        be = self.backend
        self._graph.synchronize()
        return float(be.to_host(self.loss_sum)), int(be.to_host(self.correct))

    # ------------------------------------------------------------------ the step
    def _body(self, x: Array, y: Array) -> None:
        """The step's work, all on device arrays, no host synchronization."""
        model, be = self.model, self.backend
        xp = be.xp
        logits = model.forward(x, training=True)
        xp.add(self.correct, (logits.argmax(axis=1) == y).sum(), out=self.correct)
        loss, dlogits = be.softmax_cross_entropy(logits, y, self.class_weights)
        xp.add(self.loss_sum, loss.astype(np.float64) * x.shape[0], out=self.loss_sum)
        self.loss = loss
        model.backward(dlogits)
        if self.scalars is not None:
            self.opt.step_device(self.scalars)
        else:
            self.opt.step()

    def run(self, x: Array | None = None, y: Array | None = None) -> Array:
        """One step on a full batch: ``x``, ``y`` (device arrays of the batch size) are copied
        into the step's buffers first unless they are those buffers. Returns the batch's loss
        (a 0-d device array, valid until the next step)."""
        return self._step_full(x, y)

    def run_eager(self, x: Array, y: Array) -> Array:
        """One step on a batch of any size, outside the graph (an epoch's last partial batch)."""
        return self._step_any(x, y)

    # ------------------------------------------------------------------ CUDA graph
    def _output(self) -> Array | None:
        return self.loss

    def _run_graph(self) -> None:
        t = self.opt.t
        if self._graph.run(lambda: self._body(self.x, self.y), self._graph_buffers):
            self.opt.t = t + 1  # the host counts the graph's step (recording it took none)

    def _graph_buffers(self) -> list[Any]:
        """What the graph reads or writes, held as long as the graph."""
        return [dict(layer._buffers) for layer in self.model.layers] + [self.loss]

    def __repr__(self) -> str:
        mode = "cuda-graph" if self.cuda_graph else (
            f"eager ({self.graph_off_reason})" if self.graph_off_reason else "eager")
        return f"TrainStep(batch_size={self.batch_size}, {mode}, steps={self.steps})"
