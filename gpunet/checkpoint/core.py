"""The in-memory checkpoint: ``Checkpoint`` (plain Python values and host NumPy arrays),
captured from a training state (``from_training_state``) and turned back into a model
(``build_model``). The file format is in ``store`` (docs/architecture.md, "Checkpoint format").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import CheckpointError
from .schema import expected_layout

#: the format version ``save`` writes (``store.FORMAT_VERSION``)
_CURRENT_VERSION = 2


@dataclass
class Checkpoint:
    """Everything a checkpoint holds, as plain Python values and host NumPy arrays."""

    model: dict[str, Any]
    layout: list[dict[str, Any]]
    arrays: dict[str, np.ndarray]
    optimizer: dict[str, Any] = field(default_factory=dict)
    optimizer_state: dict[str, np.ndarray] = field(default_factory=dict)
    standardizer: dict[str, np.ndarray] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    progress: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = _CURRENT_VERSION
    gpunet_version: str = ""
    created: str = ""
    path: str = ""

    @property
    def epoch(self) -> int:
        return int(self.progress.get("epoch", 0))

    @property
    def step(self) -> int:
        return int(self.progress.get("step", 0))

    @property
    def in_features(self) -> int:
        return int(self.model["in_features"])

    @property
    def n_classes(self) -> int:
        return int(self.model["classes"])


# ---------------------------------------------------------------------- capture / restore
def from_training_state(
    model: Any,
    optimizer: Any = None,
    standardizer: Any = None,
    *,
    config: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    classes: list[str] | None = None,
    progress: dict[str, Any] | None = None,
    rng: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Checkpoint:
    """Capture an ``MLP`` (and optimizer, standardizer) as host arrays in a ``Checkpoint``."""
    opt_meta: dict[str, Any] = {}
    opt_state: dict[str, np.ndarray] = {}
    if optimizer is not None:
        sd = optimizer.state_dict()
        opt_meta = {"name": type(optimizer).__name__.lower(),
                    "hyperparams": optimizer.hyperparams(), "t": int(sd["t"]),
                    "lr": float(sd.get("lr", optimizer.lr))}
        opt_state = {k: np.ascontiguousarray(v) for k, v in sd.items()
                     if isinstance(v, np.ndarray)}
    std: dict[str, np.ndarray] = {}
    if standardizer is not None:
        std = {"mean": np.asarray(standardizer.mean, dtype=np.float32),
               "std": np.asarray(standardizer.std, dtype=np.float32)}
    if rng is None:
        rng = {}
        if getattr(model, "dropout_rng", None) is not None:
            rng["dropout"] = model.dropout_rng.bit_generator.state
    return Checkpoint(
        model=dict(model.config), layout=[dict(e) for e in model.layout],
        arrays=model.state_arrays(), optimizer=opt_meta, optimizer_state=opt_state,
        standardizer=std, config=dict(config or {}), data=dict(data or {}),
        classes=[str(c) for c in (classes or [])], progress=dict(progress or {}),
        rng=dict(rng), extra=dict(extra or {}),
    )


def build_model(ckpt: Checkpoint, backend: Any = None) -> Any:
    """A ``gpunet.MLP`` on ``backend`` with the checkpoint's architecture, parameters and
    batch-norm statistics (and its dropout generator state, when recorded)."""
    from ..model import MLP

    m = ckpt.model
    try:
        if "batchnorm" not in m:
            raise KeyError("batchnorm")
        layout = expected_layout(m)  # Python integers: nothing allocated yet
        same = _norm_layout(layout) == _norm_layout(ckpt.layout)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
        raise CheckpointError(f"checkpoint {ckpt.path or ''} has a bad model description: "
                              f"{e}".replace("  ", " ")) from None
    if not same:
        raise CheckpointError(f"checkpoint {ckpt.path} is corrupt: its parameter layout does not "
                              "match the model it describes")
    n = sum(e["size"] for e in layout)
    p = ckpt.arrays.get("params")
    if p is None or int(np.size(p)) != n:
        raise CheckpointError(f"checkpoint {ckpt.path} does not fit its model: params has "
                              f"{None if p is None else np.size(p)} values, the model {n}")
    try:
        model = MLP.from_config(m, backend=backend, seed=0)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {ckpt.path or ''} has a bad model description: "
                              f"{e}".replace("  ", " ")) from None
    try:
        model.load_state_arrays(ckpt.arrays)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {ckpt.path} does not fit its model: {e}") from None
    if "dropout" in ckpt.rng:
        set_rng_state(model.dropout_rng, ckpt.rng["dropout"])
    return model


def set_rng_state(gen: np.random.Generator, state: dict[str, Any]) -> None:
    """Restore a ``numpy.random.Generator`` from a ``bit_generator.state`` dict."""
    try:
        gen.bit_generator.state = state
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        raise CheckpointError(f"checkpoint holds a bad random-generator state: {e}") from None


def _norm_layout(layout: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(int(e["layer"]), str(e["name"]), tuple(int(s) for s in e["shape"]),
             int(e["offset"]), int(e["size"])) for e in layout]


def summary(ckpt: Checkpoint) -> dict[str, Any]:
    """A short JSON-able description (for ``gpunet eval`` / logs)."""
    return {
        "path": ckpt.path, "format_version": ckpt.format_version,
        "gpunet_version": ckpt.gpunet_version, "created": ckpt.created,
        "epoch": ckpt.epoch, "step": ckpt.step, "model": ckpt.model,
        "optimizer": ckpt.optimizer.get("name"), "classes": ckpt.classes,
    }
