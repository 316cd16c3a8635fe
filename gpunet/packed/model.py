"""PackedMLP: K MLPs of one architecture trained in lock step as one model whose every op is K
times wider (docs/architecture.md, "Conventions").

Layout. Activations are (n, K*C): member k's columns are ``[:, k*C:(k+1)*C]``, so the existing
per-column batch norm over (n, K*C) is per-member batch norm (each member's momentum repeated
over its C columns). Parameters and gradients are (K, P) arrays: row k is member k's flat
vector in exactly the single model's ``MLP.layout``, so ``params[k]`` is an ordinary
checkpoint's ``params``; member k's Dense weight is the (in, out) view
``params[k, off:off + in*out].reshape(in, out)``, and a layer's K weights are the strided
(K, in, out) view the batched GEMM (``Backend.matmul_batched``) reads.

Members share: input width, hidden widths, classes, batch norm on/off, activation, batch-norm
eps. They may differ in: initial weights (seed), dropout rate (and masks: member k draws its
own from its own generator, exactly as the single model would), batch-norm momentum.

The input of the first Dense is either shared, (n, in_features) (the members read the same
batch), or per member, (n, K*in_features).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..backend import Array, Backend, get_backend
from ..layers import BatchNorm, Dense, Dropout
from ..model import MLP

#: what every member of a pack must share (``MLP.config`` keys)
SHARED_KEYS = ("in_features", "hidden", "classes", "batchnorm", "activation", "bn_eps")


def member_view(h: Array, k: int, c: int) -> Array:
    """The (K, n, c) view of an (n, K*c) C-contiguous activation (member axis first)."""
    return h.reshape(h.shape[0], k, c).transpose(1, 0, 2)


class _Op:
    """One packed layer: owns reusable buffers keyed by name and shape."""

    def __init__(self, pack: PackedMLP) -> None:
        self.pack, self.be = pack, pack.backend
        self._buffers: dict[str, Array] = {}

    def _buf(self, name: str, shape: tuple[int, ...], dtype: Any = np.float32) -> Array:
        buf = self._buffers.get(name)
        if buf is None or tuple(buf.shape) != shape:
            buf = self._buffers[name] = self.be.empty(shape, dtype=dtype)
        return buf


class _PDense(_Op):
    """K Dense layers: ``z[:, k] = x_k @ W_k (+ b_k)``; ``x`` shared (n, in) or (n, K*in)."""

    def __init__(self, pack: PackedMLP, layer: Dense, offsets: dict[str, int]) -> None:
        super().__init__(pack)
        k, i, o = pack.k, layer.in_features, layer.out_features
        self.k, self.i, self.o, self.bias = k, i, o, layer.bias
        w0 = offsets["W"]
        self.W = pack.params[:, w0:w0 + i * o].reshape(k, i, o)
        self.gW = pack.grads[:, w0:w0 + i * o].reshape(k, i, o)
        if self.bias:
            b0 = offsets["b"]
            self.b, self.gb = pack.params[:, b0:b0 + o], pack.grads[:, b0:b0 + o]
        self._x: Array | None = None

    def forward(self, x: Array) -> Array:
        n = x.shape[0]
        z = self._buf("z", (n, self.k * self.o))
        a = member_view(x, self.k, self.i) if x.shape[1] == self.k * self.i else x
        self.be.matmul_batched(a, self.W, member_view(z, self.k, self.o))
        if self.bias:
            zr = z.reshape(n, self.k, self.o)
            self.be.xp.add(zr, self.b, out=zr)
        self._x = x
        return z

    def backward(self, dz: Array, need_dx: bool) -> Array | None:
        """``dW_k = x_k.T @ dz_k``, ``db_k = sum_rows(dz_k)``, ``dx_k = dz_k @ W_k.T``."""
        x, k = self._x, self.k
        assert x is not None, "backward before forward"
        dz3 = member_view(dz, k, self.o)
        xt = member_view(x, k, self.i).transpose(0, 2, 1) if x.shape[1] == k * self.i else x.T
        products = [(xt, dz3, self.gW)]
        dx = None
        if need_dx:
            dx = self._buf("dx", (dz.shape[0], k * self.i))
            products.append((dz3, self.W.transpose(0, 2, 1), member_view(dx, k, self.i)))
        self.be.matmuls_batched(products)
        if self.bias:
            db = self.be.sum_rows(dz, out=self._buf("db", (k * self.o,)))
            self.gb[...] = db.reshape(k, self.o)
        return dx


class _PBatchNorm(_Op):
    """Per-member batch norm as per-column batch norm over (n, K*C). gamma / beta are gathered
    from the (K, P) rows into contiguous (K*C,) vectors before each forward; their gradients
    are scattered back after the backward."""

    def __init__(self, pack: PackedMLP, layer: BatchNorm, offsets: dict[str, int],
                 momenta: Sequence[float]) -> None:
        super().__init__(pack)
        be, k, c = self.be, pack.k, layer.num_features
        self.k, self.c, self.eps = k, c, layer.eps
        g0, b0 = offsets["gamma"], offsets["beta"]
        self.gamma_rows, self.beta_rows = pack.params[:, g0:g0 + c], pack.params[:, b0:b0 + c]
        self.dgamma_rows, self.dbeta_rows = pack.grads[:, g0:g0 + c], pack.grads[:, b0:b0 + c]
        self.gamma, self.beta = be.zeros((k * c,)), be.zeros((k * c,))
        self.dgamma, self.dbeta = be.zeros((k * c,)), be.zeros((k * c,))
        self.running_mean = be.zeros((k * c,))
        self.running_var = be.asarray(np.ones(k * c, dtype=np.float32))
        self.momentum = be.asarray(np.repeat(np.asarray(momenta, dtype=np.float32), c))
        self._saved: tuple[Any, ...] | None = None

    def _gather(self) -> None:
        self.gamma.reshape(self.k, self.c)[...] = self.gamma_rows
        self.beta.reshape(self.k, self.c)[...] = self.beta_rows

    def forward(self, x: Array, training: bool, relu: bool, inplace: bool) -> Array:
        be = self.be
        self._gather()
        y = self._buf("y", tuple(x.shape))
        if not training:
            return be.batchnorm_forward_infer(x, self.gamma, self.beta, self.running_mean,
                                              self.running_var, self.eps, relu=relu, out=y)
        stats = (self.gamma, self.beta, self.running_mean, self.running_var, self.momentum,
                 self.eps)
        centred = bool(inplace and be.bn_centre_in_place)
        mask = None
        if centred:
            mask = self._buf("relu_mask", tuple(x.shape), np.bool_) if relu else None
            y, mean, invstd = be.batchnorm_forward_train_inplace(x, *stats, relu=relu, out=y,
                                                                 relu_mask=mask)
        else:
            y, mean, invstd = be.batchnorm_forward_train(x, *stats, relu=relu, out=y)
        self._saved = (x, mean, invstd, y if relu else None, centred, mask)
        return y

    def backward(self, dy: Array) -> Array:
        assert self._saved is not None, "batch-norm backward needs a training forward"
        x, mean, invstd, y, centred, mask = self._saved
        be = self.be
        if centred:
            self._saved = None
            dx = be.batchnorm_backward_inplace(dy, x, self.gamma, mean, invstd, self.dgamma,
                                               self.dbeta, relu_mask=mask, overwrite_dy=True)
        else:
            dx = be.batchnorm_backward(dy, x, self.gamma, mean, invstd, self.dgamma,
                                       self.dbeta, y=y, out=self._buf("dx", tuple(x.shape)))
        self.dgamma_rows[...] = self.dgamma.reshape(self.k, self.c)
        self.dbeta_rows[...] = self.dbeta.reshape(self.k, self.c)
        return dx


class _PActivation(_Op):
    """An elementwise activation over (n, K*C) (``relu``, ``tanh`` or ``sigmoid``)."""

    def __init__(self, pack: PackedMLP, kind: str) -> None:
        super().__init__(pack)
        self.kind = kind
        self._y: Array | None = None

    def forward(self, x: Array) -> Array:
        self._y = getattr(self.be, f"{self.kind}_forward")(x, out=self._buf("y", x.shape))
        return self._y

    def backward(self, dy: Array) -> Array:
        return getattr(self.be, f"{self.kind}_backward")(dy, self._y,
                                                         out=self._buf("dx", dy.shape))


class _PDropout(_Op):
    """Inverted dropout, member k at its own rate from its own generator: member k's (n, C)
    mask is ``backend.dropout_mask((n, C), p_k, rng_k)``, drawn as the single model's
    ``Dropout`` draws it; members with rate 0 (no Dropout layer alone) draw nothing and pass
    through (a mask of ones). Members marked inactive in ``pack.host_active`` draw nothing."""

    def __init__(self, pack: PackedMLP, c: int) -> None:
        super().__init__(pack)
        self.c = c
        self._masks: dict[int, Array] = {}
        self._mask: Array | None = None

    def forward(self, x: Array, training: bool) -> Array:
        pack = self.pack
        if not training:
            self._mask = None
            return x
        n, c = x.shape[0], self.c
        mask = self._masks.get(n)
        if mask is None:
            mask = self._masks[n] = self.be.asarray(np.ones((n, pack.k * c), np.float32))
        for k, p in enumerate(pack.dropout):
            if p > 0 and pack.host_active[k]:
                mask[:, k * c:(k + 1) * c] = self.be.dropout_mask((n, c), p,
                                                                  pack.dropout_rngs[k])
        self._mask = mask
        y = self._buf("y", tuple(x.shape))
        self.be.xp.multiply(x, mask, out=y)
        return y

    def backward(self, dy: Array) -> Array:
        if self._mask is None:
            return dy
        dx = self._buf("dx", tuple(dy.shape))
        self.be.xp.multiply(dy, self._mask, out=dx)
        return dx


class PackedMLP:
    """K MLPs of one architecture as one model (see the module docstring for the layout).

    ``PackedMLP(in_features, hidden, classes, seeds=[...], dropout=..., bn_momentum=...)``
    builds member k as ``MLP(..., seed=seeds[k], dropout=dropout[k], bn_momentum=...)``
    would (same initial weights, same dropout generator); ``dropout`` and ``bn_momentum``
    are one value for all or one per member. ``PackedMLP.from_members(models)`` packs
    existing MLPs (their parameters, batch-norm statistics and dropout generators, which
    the pack then shares). ``params`` / ``grads`` are (K, P); ``forward`` takes (n, in)
    (shared) or (n, K*in) and returns (n, K*classes) logits.
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (), classes: int = 2, *,
                 seeds: Sequence[int] = (0,), batchnorm: bool = True,
                 dropout: float | Sequence[float] = 0.0, activation: str = "relu",
                 bn_momentum: float | Sequence[float] = 0.1, bn_eps: float = 1e-5,
                 backend: Backend | str | None = None) -> None:
        k = len(seeds)
        if k < 1:
            raise ValueError("a pack needs at least one member (seeds=[...])")
        drops = _per_member("dropout", dropout, k)
        moms = _per_member("bn_momentum", bn_momentum, k)
        be = get_backend(backend)
        members = [MLP(in_features, hidden, classes, batchnorm=batchnorm, dropout=drops[i],
                       activation=activation, backend=be, seed=int(seeds[i]),
                       bn_momentum=moms[i], bn_eps=bn_eps) for i in range(k)]
        self._build(members)

    @classmethod
    def from_members(cls, members: Sequence[MLP]) -> PackedMLP:
        """A pack of these MLPs (same architecture, same backend), with their current
        parameters and batch-norm statistics; the pack draws member k's dropout masks from
        ``members[k].dropout_rng`` itself."""
        pack = cls.__new__(cls)
        pack._build(list(members))
        return pack

    def _build(self, members: list[MLP]) -> None:
        if not members:
            raise ValueError("a pack needs at least one member")
        base = members[0]
        for m in members[1:]:
            diff = [key for key in SHARED_KEYS if m.config[key] != base.config[key]]
            if diff:
                raise ValueError(f"pack members must share the architecture; they differ in "
                                 f"{', '.join(diff)}")
            if m.backend is not base.backend:
                raise ValueError("pack members must live on one backend")
        self.backend = be = base.backend
        self.k = len(members)
        self.configs = [dict(m.config) for m in members]
        self.config = {key: base.config[key] for key in SHARED_KEYS}
        self.dropout = [float(c["dropout"]) for c in self.configs]
        self.bn_momentum = [float(c["bn_momentum"]) for c in self.configs]
        self.dropout_rngs = [m.dropout_rng for m in members]
        #: host flags of the members still training (dropout draws only for these)
        self.host_active = np.ones(self.k, dtype=bool)
        template = next((m for m in members if m.config["dropout"] > 0), base)
        self.layout = [dict(e) for e in base.layout]
        p = base.num_params
        self.params = be.zeros((self.k, p))
        self.grads = be.zeros((self.k, p))
        self.decay_mask = base.decay_mask
        self.fuse_bn_relu = bool(getattr(be, "fuses_bn_relu", False))
        self.ops = self._make_ops(template)
        for i, m in enumerate(members):
            self.load_member(i, m)

    def _make_ops(self, template: MLP) -> list[Any]:
        offsets: dict[int, dict[str, int]] = {}
        for e in template.layout:
            offsets.setdefault(e["layer"], {})[e["name"]] = e["offset"]
        ops: list[Any] = []
        for i, layer in enumerate(template.layers):
            if isinstance(layer, Dense):
                ops.append(_PDense(self, layer, offsets[i]))
            elif isinstance(layer, BatchNorm):
                ops.append(_PBatchNorm(self, layer, offsets[i], self.bn_momentum))
            elif isinstance(layer, Dropout):
                width = next(op.o for op in reversed(ops) if isinstance(op, _PDense))
                ops.append(_PDropout(self, width))
            else:
                ops.append(_PActivation(self, self.config["activation"]))
        return ops

    # ------------------------------------------------------------------ members
    @property
    def num_params(self) -> int:
        """Parameters of one member (P)."""
        return int(self.params.shape[1])

    def batchnorms(self) -> list[_PBatchNorm]:
        return [op for op in self.ops if isinstance(op, _PBatchNorm)]

    def load_member(self, k: int, model: MLP) -> None:
        """Copy ``model``'s parameters and batch-norm statistics into member k's slots."""
        be = self.backend
        self.params[k] = be.asarray(model.params)
        for bn, (_, layer) in zip(self.batchnorms(), model.batchnorm_layers(), strict=True):
            sl = slice(k * bn.c, (k + 1) * bn.c)
            bn.running_mean[sl] = be.asarray(layer.running_mean)
            bn.running_var[sl] = be.asarray(layer.running_var)

    def store_member(self, k: int, model: MLP) -> MLP:
        """Copy member k's parameters and batch-norm statistics into ``model`` (an MLP of
        member k's configuration); returns it."""
        be = model.backend
        model.params[...] = be.asarray(self.params[k])
        for bn, (_, layer) in zip(self.batchnorms(), model.batchnorm_layers(), strict=True):
            sl = slice(k * bn.c, (k + 1) * bn.c)
            layer.running_mean[...] = be.asarray(bn.running_mean[sl])
            layer.running_var[...] = be.asarray(bn.running_var[sl])
        return model

    def member(self, k: int, backend: Backend | str | None = None) -> MLP:
        """Member k as an ordinary ``MLP`` (a copy: parameters, batch-norm statistics and
        its dropout generator's state)."""
        m = MLP.from_config(self.configs[k], backend=backend or self.backend, seed=0)
        m.dropout_rng.bit_generator.state = self.dropout_rngs[k].bit_generator.state
        return self.store_member(k, m)

    # ------------------------------------------------------------------ compute
    def forward(self, x: Any, training: bool = False) -> Array:
        """Logits (n, K*classes) for input (n, in) shared or (n, K*in). The array is the
        output layer's buffer, overwritten by the next forward."""
        h = self.backend.asarray(x, dtype=np.float32)
        d, k = self.config["in_features"], self.k
        if h.ndim != 2 or h.shape[1] not in (d, k * d):
            raise ValueError(f"a pack of {k} expects input (n, {d}) or (n, {k * d}), "
                             f"got {tuple(h.shape)}")
        if not h.flags.c_contiguous:
            h = self.backend.xp.ascontiguousarray(h)
        ops, i = self.ops, 0
        self._fused: set[int] = set()
        private = False  # whether h is an op's own buffer (batch norm may centre it in place)
        while i < len(ops):
            op = ops[i]
            if isinstance(op, _PBatchNorm):
                relu = (self.fuse_bn_relu and i + 1 < len(ops)
                        and isinstance(ops[i + 1], _PActivation) and ops[i + 1].kind == "relu")
                h = op.forward(h, training, relu=relu, inplace=private)
                if relu:
                    self._fused.add(i + 1)
                    i += 1
            elif isinstance(op, _PDense):
                h = op.forward(h)
            elif isinstance(op, _PDropout):
                h = op.forward(h, training)
            else:
                h = op.forward(h)
            private = isinstance(op, _PDense)
            i += 1
        return h

    def backward(self, dlogits: Array) -> None:
        """Backpropagate (n, K*classes) ``dlogits``; fills ``grads`` (overwriting)."""
        g = dlogits
        for i in range(len(self.ops) - 1, 0, -1):
            if i in self._fused:
                continue
            op = self.ops[i]
            g = op.backward(g, need_dx=True) if isinstance(op, _PDense) else op.backward(g)
        self.ops[0].backward(g, need_dx=False)

    def __repr__(self) -> str:
        c = self.config
        return (f"PackedMLP(members={self.k}, {c['in_features']}-"
                f"{'-'.join(map(str, c['hidden']))}{'-' if c['hidden'] else ''}{c['classes']}, "
                f"params/member={self.num_params:,}, backend={self.backend.name})")


def _per_member(name: str, value: float | Sequence[float], k: int) -> list[float]:
    """One value per member from a scalar or a length-k sequence."""
    if isinstance(value, (int, float)):
        return [float(value)] * k
    vals = [float(v) for v in value]
    if len(vals) != k:
        raise ValueError(f"{name} has {len(vals)} values for {k} members")
    return vals
