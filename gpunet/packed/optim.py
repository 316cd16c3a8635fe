"""The packed optimizer: K members' optimizers over a pack's (K, P) parameters, one backend
call per optimizer kind per step.

Member k keeps its own optimizer kind, hyperparameters and learning-rate schedule, given as
the single-model ``gpunet.optim.Optimizer`` it would train with alone (``PackedOptimizer(pack,
[opt_0, ..., opt_{K-1}])``, or ``PackedOptimizer.create(pack, "adam", lr=[...], ...)``). The
per-member scalars live in backend arrays of shape (K,): ``lr``, ``beta1`` (Momentum's
``beta`` too), ``beta2``, ``eps``, ``decay`` (float32) and the step counts ``t`` (int64),
so a step recorded as a CUDA graph replays with the values written into them. Rows of
members marked inactive (``active[k] == False``) are left as they are, bit for bit, and
their step counts do not advance. The state arrays (``m``, ``v``, ``s``) are (K, P), row k
being member k's state in the single optimizer's layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..backend import Array
from ..optim import OPTIMIZERS, Optimizer, Schedule, make_optimizer
from .model import PackedMLP

#: the optimizer kinds by class, and the state arrays each one keeps
_KIND = {cls: name for name, cls in OPTIMIZERS.items()}


class _Row:
    """The flat-parameter stand-in a single optimizer is built on (``HasFlatParams``)."""

    def __init__(self, pack: PackedMLP) -> None:
        self.backend = pack.backend
        self.params = pack.backend.zeros((pack.num_params,))
        self.grads = self.params
        self.decay_mask = pack.decay_mask


class PackedOptimizer:
    """K optimizers (see the module docstring); ``members[k]`` is member k's single
    optimizer, whose ``lr0``, hyperparameters and schedule are read, and which
    ``store_member`` fills with member k's state for a checkpoint."""

    def __init__(self, pack: PackedMLP, members: Sequence[Optimizer]) -> None:
        if len(members) != pack.k:
            raise ValueError(f"{len(members)} optimizers for a pack of {pack.k}")
        be = self.backend = pack.backend
        self.pack, self.members = pack, list(members)
        self.kinds = [_KIND[type(o)] for o in self.members]
        k, p = pack.k, pack.num_params
        names = sorted({n for o in self.members for n in o.state_names})
        self.state: dict[str, Array] = {n: be.zeros((k, p)) for n in names}

        def col(values: list[float]) -> Array:
            return be.asarray(np.asarray(values, dtype=np.float32))

        def hyper(name: str, alias: str = "", unused: float = 0.0) -> Array:
            """Members whose kind has no such hyperparameter hold ``unused`` (their rows
            are not committed by the other kinds' ops; 1 keeps them finite there)."""
            return col([float(getattr(o, name, getattr(o, alias, unused) if alias else unused))
                        for o in self.members])

        self.beta1 = hyper("beta1", "beta")  # Momentum's beta rides in beta1
        self.beta2, self.eps = hyper("beta2"), hyper("eps", unused=1.0)
        self.decay = col([o.weight_decay for o in self.members])
        self.lr = col([o.lr for o in self.members])
        self.t = be.asarray(np.array([o.t for o in self.members], dtype=np.int64))
        self._any_decay = any(o.weight_decay for o in self.members)
        self._masks = {kind: be.asarray(np.array([x == kind for x in self.kinds]))
                       for kind in sorted(set(self.kinds))}
        self._scratch = be.zeros((k,), dtype=np.bool_)
        for i, o in enumerate(self.members):
            self.load_member(i, o)

    @classmethod
    def create(cls, pack: PackedMLP, name: str | Sequence[str] = "adam",
               schedule: Schedule | Sequence[Schedule] | None = None,
               **hyper: float | Sequence[float]) -> PackedOptimizer:
        """Member optimizers by name (one for all or one per member) with hyperparameters
        given as one value or one per member (``lr=[1e-3, 2e-3]``, ``beta1=0.9`` ...: the
        keywords of ``gpunet.optim.make_optimizer``)."""
        k = pack.k
        names = [name] * k if isinstance(name, str) else list(name)
        scheds = list(schedule) if isinstance(schedule, (list, tuple)) else [schedule] * k
        opts = []
        for i in range(k):
            kw = {key: (v if isinstance(v, (int, float)) else v[i]) for key, v in hyper.items()}
            opts.append(make_optimizer(names[i], _Row(pack), schedule=scheds[i], **kw))
        return cls(pack, opts)

    # ------------------------------------------------------------------ learning rates
    def set_epoch(self, epochs: Sequence[int]) -> list[float]:
        """Member k's learning rate from its schedule at (0-based) ``epochs[k]``; written to
        ``lr``; returns the host values."""
        lrs = [o.set_epoch(int(e)) for o, e in zip(self.members, epochs, strict=True)]
        self.set_lr(lrs)
        return lrs

    def set_lr(self, lrs: Sequence[float]) -> None:
        """Write per-member learning rates into the device array ``lr`` (stream-ordered)."""
        for o, v in zip(self.members, lrs, strict=True):
            o.lr = float(v)
        self.lr[...] = self.backend.asarray(np.asarray(lrs, dtype=np.float32))

    # ------------------------------------------------------------------ the update
    def step(self, active: Array | None = None) -> None:
        """One update of every active member from ``pack.grads`` (all members when
        ``active`` is None): ``t += active``, then one packed op per optimizer kind."""
        be, xp, pack = self.backend, self.backend.xp, self.pack
        if active is None:
            xp.add(self.t, 1, out=self.t)
        else:
            xp.add(self.t, active, out=self.t)
        w, g, st = pack.params, pack.grads, self.state
        mask = pack.decay_mask if self._any_decay else None
        for kind, kmask in self._masks.items():
            act = active
            if len(self._masks) > 1:
                act = xp.logical_and(kmask, active, out=self._scratch) if active is not None \
                    else kmask
            if kind == "adam":
                be.adam_update_packed(w, g, st["m"], st["v"], self.lr, self.beta1, self.beta2,
                                      self.eps, self.t, self.decay, mask, act)
            elif kind == "rmsprop":
                be.rmsprop_update_packed(w, g, st["s"], self.lr, self.beta2, self.eps,
                                         self.decay, mask, act)
            elif kind == "momentum":
                be.momentum_update_packed(w, g, st["v"], self.lr, self.beta1, self.decay,
                                          mask, act)
            else:
                be.sgd_update_packed(w, g, self.lr, self.decay, mask, act)

    # ------------------------------------------------------------------ members
    def load_member(self, k: int, opt: Optimizer) -> None:
        """Member k's step count and state from a single optimizer (e.g. a checkpoint's)."""
        be = self.backend
        self.t[k] = int(opt.t)
        for name, arr in opt.state.items():
            self.state[name][k] = be.asarray(arr)
        for name in self.state:
            if name not in opt.state:
                self.state[name][k] = 0

    def store_member(self, k: int, opt: Optimizer | None = None) -> Optimizer:
        """Member k's step count, learning rate and state written into ``opt`` (default:
        ``members[k]``); returns it."""
        opt = self.members[k] if opt is None else opt
        be = opt.backend
        opt.t = int(self.backend.to_host(self.t[k]))
        opt.lr = self.members[k].lr
        for name, arr in opt.state.items():
            arr[...] = be.asarray(self.state[name][k])
        return opt

    def hyperparams(self, k: int) -> dict[str, Any]:
        """Member k's hyperparameters, as its single optimizer reports them."""
        return {"optimizer": self.kinds[k], **self.members[k].hyperparams()}

    def __repr__(self) -> str:
        return f"PackedOptimizer(members={self.pack.k}, kinds={sorted(set(self.kinds))})"
