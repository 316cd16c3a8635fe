"""Packed trials: K models of one architecture trained in lock step as one model whose every
op is K times wider (one batched GEMM instead of K, one batch-norm launch over K x C columns,
one optimizer pass over K parameter sets), each member giving the result it would give alone.

- ``model``: ``PackedMLP`` (activations (n, K*C), parameters (K, P));
- ``optim``: ``PackedOptimizer`` (per-member kind, hyperparameters, schedule, step count);
- ``step``: ``PackedTrainStep`` (fixed buffers; one CUDA graph on the GPU);
- ``fit``: ``fit_packed``, each member writing the run folder ``gpunet.train.fit`` would;
- ``members``: a member as an ordinary ``MLP`` / checkpoint, and the pack's save commit.
"""

from __future__ import annotations

from typing import Any

from .members import PackCommit, member_checkpoint, member_model, save_member, store_member
from .model import PackedMLP
from .optim import PackedOptimizer
from .step import PackedTrainStep

__all__ = [
    "PACK_KEYS", "PackCallback", "PackCommit", "PackedFitResult", "PackedMLP",
    "PackedOptimizer", "PackedTrainStep", "StopMember", "fit_packed", "member_checkpoint",
    "member_model", "save_member", "store_member",
]

#: defined in ``fit``, imported on first use (it imports ``gpunet.train``, which ``import
#: gpunet`` does not load)
_FIT_NAMES = ("PACK_KEYS", "PackCallback", "PackedFitResult", "StopMember", "fit_packed")


def __getattr__(name: str) -> Any:
    if name in _FIT_NAMES:
        from . import fit

        return getattr(fit, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
