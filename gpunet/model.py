"""MLP: a stack of layers over one flat parameter buffer and one flat gradient buffer."""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import Array, Backend, get_backend
from .layers import ACTIVATIONS, BatchNorm, Dense, Dropout, Layer, ReLU


class MLP:
    """Per hidden width: Dense -> [BatchNorm] -> activation [-> Dropout]; then a final Dense.

    Dense layers followed by BatchNorm have no bias. Hidden Dense layers use He init for ReLU
    and Xavier for tanh / sigmoid; the output layer uses Xavier. ``params`` and ``grads`` are
    flat arrays; every layer's ``params[...]`` / ``grads[...]`` is a view into them.
    ``hidden=[]`` is softmax regression. ``seed`` feeds ``numpy.random.SeedSequence``:
    one child stream initializes the weights, another draws dropout masks.
    """

    def __init__(
        self,
        in_features: int,
        hidden: list[int] | tuple[int, ...] = (),
        classes: int = 2,
        batchnorm: bool = True,
        dropout: float = 0.0,
        activation: str = "relu",
        backend: Backend | str | None = None,
        seed: int | None = 0,
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
        dtype: Any = np.float32,
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}: use {', '.join(ACTIVATIONS)}")
        if in_features < 1 or classes < 2:
            raise ValueError("MLP needs in_features >= 1 and classes >= 2")
        if any(int(h) < 1 for h in hidden):
            raise ValueError(f"hidden widths must be positive, got {list(hidden)}")
        self.backend = be = get_backend(backend)
        self.dtype = np.dtype(dtype)
        self.config = {
            "in_features": int(in_features),
            "hidden": [int(h) for h in hidden],
            "classes": int(classes),
            "batchnorm": bool(batchnorm),
            "dropout": float(dropout),
            "activation": activation,
            "bn_momentum": float(bn_momentum),
            "bn_eps": float(bn_eps),
        }
        init_seq, drop_seq = np.random.SeedSequence(seed).spawn(2)
        init_rng = np.random.default_rng(init_seq)
        #: host generator for dropout masks (its state goes into checkpoints)
        self.dropout_rng = np.random.default_rng(drop_seq)
        act = ACTIVATIONS[activation]
        init = "he" if activation == "relu" else "xavier"
        layers: list[Layer] = []
        width = int(in_features)
        for h in self.config["hidden"]:
            layers.append(Dense(width, h, bias=not batchnorm, init=init, backend=be,
                                rng=init_rng, dtype=dtype))
            if batchnorm:
                layers.append(BatchNorm(h, momentum=bn_momentum, eps=bn_eps, backend=be,
                                        dtype=dtype))
            layers.append(act(backend=be, dtype=dtype))
            if dropout > 0:
                layers.append(Dropout(dropout, rng=self.dropout_rng, backend=be, dtype=dtype))
            width = h
        layers.append(Dense(width, classes, bias=True, init="xavier", backend=be, rng=init_rng,
                            dtype=dtype))
        self.layers = layers
        self._build_flat()
        # Fuse BatchNorm + ReLU into one op where the backend has a fused kernel for it.
        self.fuse_bn_relu = bool(getattr(be, "fuses_bn_relu", False))
        self._fused: set[int] = set()

    @classmethod
    def from_config(cls, config: dict[str, Any], backend: Backend | str | None = None,
                    seed: int | None = 0, dtype: Any = np.float32) -> MLP:
        """An MLP from a ``model.config``-shaped dict (``in_features``, ``hidden``,
        ``classes``; optional ``batchnorm``, ``dropout``, ``activation``, ``bn_momentum``,
        ``bn_eps``, with the constructor's defaults). Raises ``KeyError`` / ``TypeError`` /
        ``ValueError`` on a missing or malformed entry."""
        c = config
        return cls(
            in_features=int(c["in_features"]), hidden=[int(h) for h in c["hidden"]],
            classes=int(c["classes"]), batchnorm=bool(c.get("batchnorm", True)),
            dropout=float(c.get("dropout", 0.0)), activation=str(c.get("activation", "relu")),
            backend=backend, seed=seed, bn_momentum=float(c.get("bn_momentum", 0.1)),
            bn_eps=float(c.get("bn_eps", 1e-5)), dtype=dtype,
        )

    # ------------------------------------------------------------------ flat buffers
    def _build_flat(self) -> None:
        """Allocate the flat buffers and make every layer's params / grads views into them."""
        be = self.backend
        layout: list[dict[str, Any]] = []
        offset = 0
        for i, layer in enumerate(self.layers):
            for name, arr in layer.params.items():
                size = int(np.prod(arr.shape))
                layout.append({"layer": i, "name": name, "shape": list(arr.shape),
                               "offset": offset, "size": size,
                               "decay": name in layer.decayed})
                offset += size
        self.layout = layout
        self.params = be.zeros((offset,), dtype=self.dtype)
        self.grads = be.zeros((offset,), dtype=self.dtype)
        mask = np.zeros(offset, dtype=self.dtype)
        views: dict[int, tuple[dict[str, Array], dict[str, Array]]] = {}
        for e in layout:
            sl = slice(e["offset"], e["offset"] + e["size"])
            pv, gv = views.setdefault(e["layer"], ({}, {}))
            pv[e["name"]] = self.params[sl].reshape(e["shape"])
            gv[e["name"]] = self.grads[sl].reshape(e["shape"])
            if e["decay"]:
                mask[sl] = 1
        for i, (pv, gv) in views.items():
            self.layers[i]._bind(pv, gv)
        #: 1 where L2 weight decay applies (Dense weights), 0 elsewhere (biases, BN gamma/beta)
        self.decay_mask = be.asarray(mask)

    @property
    def num_params(self) -> int:
        """Number of trainable parameters."""
        return int(self.params.shape[0])

    # ------------------------------------------------------------------ compute
    def forward(self, x: Any, training: bool = False) -> Array:
        """Logits (n, classes) for input (n, in_features). The array is the output layer's
        buffer, overwritten by the next forward."""
        h = self.backend.asarray(x, dtype=self.dtype)
        if h.ndim != 2 or h.shape[1] != self.config["in_features"]:
            raise ValueError(
                f"model expects input of shape (n, {self.config['in_features']}), got {h.shape}"
            )
        layers = self.layers
        i = 0
        self._fused = set()
        private = False  # whether h is a layer's own output buffer (not the caller's input)
        while i < len(layers):
            layer = layers[i]
            if (self.fuse_bn_relu and isinstance(layer, BatchNorm) and i + 1 < len(layers)
                    and isinstance(layers[i + 1], ReLU)):
                # the Dense output before it is private: batch norm may centre it in place
                # (where the backend declares bn_centre_in_place)
                h = layer.forward(h, training, relu=True, inplace=private)
                self._fused.add(i + 1)
                private = False
                i += 2
                continue
            if isinstance(layer, BatchNorm):
                h = layer.forward(h, training, inplace=private)
            else:
                h = layer.forward(h, training)
            private = isinstance(layer, Dense)
            i += 1
        return h

    def backward(self, dlogits: Array, input_grad: bool = False) -> Array | None:
        """Backpropagate ``dlogits``; fills the flat ``grads`` (overwriting, no accumulation).

        Returns d(loss)/d(input) with ``input_grad=True``; otherwise the first Dense skips
        that product and ``None`` is returned."""
        g = dlogits
        for i in range(len(self.layers) - 1, 0, -1):
            if i in self._fused:
                continue  # this ReLU's mask was applied inside BatchNorm's backward
            layer = self.layers[i]
            # every gradient passed down is a layer's own buffer: batch norm may reuse it
            g = layer.backward(g, overwrite_dy=True) if isinstance(layer, BatchNorm) \
                else layer.backward(g)
        first = self.layers[0]
        if isinstance(first, Dense):
            return first.backward(g, need_dx=input_grad)
        return first.backward(g)

    def predict_proba(self, x: Any, batch_size: int = 4096) -> np.ndarray:
        """Class probabilities (n, classes) on the host, in inference mode."""
        be = self.backend
        x = np.asarray(x) if not hasattr(x, "__cuda_array_interface__") else x
        n = x.shape[0]
        out = np.empty((n, self.config["classes"]), dtype=np.float32)
        for s in range(0, n, batch_size):
            logits = self.forward(x[s:s + batch_size], training=False)
            out[s:s + batch_size] = be.to_host(be.softmax(logits))
        return out

    def predict(self, x: Any, batch_size: int = 4096) -> np.ndarray:
        """Predicted class ids (n,) on the host."""
        return self.predict_proba(x, batch_size).argmax(axis=1)

    # ------------------------------------------------------------------ state
    def batchnorm_layers(self) -> list[tuple[int, BatchNorm]]:
        return [(i, layer) for i, layer in enumerate(self.layers) if isinstance(layer, BatchNorm)]

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Every array a checkpoint needs, as host NumPy copies: ``params`` (flat) and each
        batch norm's ``layers.<i>.running_mean`` / ``layers.<i>.running_var``."""
        be = self.backend
        out = {"params": be.to_host(self.params).copy()}
        for i, layer in enumerate(self.layers):
            for name, arr in layer.buffers().items():
                out[f"layers.{i}.{name}"] = be.to_host(arr).copy()
        return out

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Copy arrays from ``state_arrays`` (host or device) into this model, in place."""
        be = self.backend
        expected = set(self.state_arrays_keys())
        missing = expected - set(arrays)
        if missing:
            raise ValueError(f"missing arrays: {', '.join(sorted(missing))}")
        p = np.asarray(be.to_host(arrays["params"]))
        if p.shape != tuple(self.params.shape):
            raise ValueError(
                f"params has {p.shape[0] if p.ndim == 1 else p.shape} values, "
                f"the model has {self.num_params}"
            )
        self.params[...] = be.asarray(p, dtype=self.dtype)
        for i, layer in enumerate(self.layers):
            for name, arr in layer.buffers().items():
                src = np.asarray(be.to_host(arrays[f"layers.{i}.{name}"]))
                if src.shape != tuple(arr.shape):
                    raise ValueError(f"layers.{i}.{name} has shape {src.shape}, "
                                     f"expected {tuple(arr.shape)}")
                arr[...] = be.asarray(src, dtype=arr.dtype)

    def state_arrays_keys(self) -> list[str]:
        keys = ["params"]
        for i, layer in enumerate(self.layers):
            keys += [f"layers.{i}.{name}" for name in layer.buffers()]
        return keys

    def __repr__(self) -> str:
        inner = "\n".join(f"  ({i}) {layer!r}" for i, layer in enumerate(self.layers))
        return f"MLP(params={self.num_params:,}, backend={self.backend.name}) [\n{inner}\n]"
