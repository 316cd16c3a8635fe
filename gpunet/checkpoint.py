"""Checkpoints: one HDF5 file, host NumPy arrays and JSON attributes only (no pickle).

Layout (format version 1)::

    /                          attributes (JSON strings unless noted):
        gpunet_format          "gpunet-checkpoint" (plain string: identifies the file)
        format_version         1 (integer)
        gpunet_version         the writing gpunet's version (plain string)
        created                ISO-8601 UTC time (plain string)
        model                  MLP.config: in_features, hidden, classes, batchnorm, ...
        layout                 MLP.layout: per parameter its layer, name, shape, offset, size
        config                 the resolved TrainConfig
        data                   the data reference: path, x_key, y_key, val, val_split, seed,
                               val_source, heldout ("test" | "val" | null)
        classes                class names
        progress               epoch (completed), batch (done in the epoch in progress),
                               step, status, best_metric, best_value, best_epoch,
                               epoch_loss_sum, epoch_correct, epoch_count, epoch_seconds
        rng                    bit_generator.state dicts: shuffle_epoch_start, dropout
        optimizer              name, hyperparams, t
        extra                  anything else the caller passes (JSON object)
    /model/params              float32 (P,)   every trainable parameter, flat
    /model/layers.<i>.running_mean, /model/layers.<i>.running_var   batch-norm statistics
    /optimizer/<name>          float32 (P,)   optimizer state (Adam: m, v; Momentum: v; ...)
    /standardizer/mean, /standardizer/std     float32 (d,)   training-set input statistics

Every dataset carries a ``crc32`` attribute checked on load. ``save`` writes through
``fileio.atomic_write`` (a temporary file in the target's folder, fsynced, then
``os.replace``d over the target), so a crash mid-save leaves the previous file intact.
``load`` raises ``CheckpointError`` naming what is wrong with a missing, foreign, truncated,
corrupt or newer-version file.
"""

from __future__ import annotations

import datetime as _dt
import json
import zlib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .errors import CheckpointError
from .fileio import atomic_write

FORMAT_NAME = "gpunet-checkpoint"
FORMAT_VERSION = 1

_JSON_ATTRS = ("model", "layout", "config", "data", "classes", "progress", "rng", "optimizer",
               "extra")


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
    format_version: int = FORMAT_VERSION
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
    from .model import MLP

    m = ckpt.model
    try:
        if "batchnorm" not in m:
            raise KeyError("batchnorm")
        model = MLP.from_config(m, backend=backend, seed=0)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {ckpt.path or ''} has a bad model description: "
                              f"{e}".replace("  ", " ")) from None
    if _norm_layout(model.layout) != _norm_layout(ckpt.layout):
        raise CheckpointError(f"checkpoint {ckpt.path} is corrupt: its parameter layout does not "
                              "match the model it describes")
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
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint holds a bad random-generator state: {e}") from None


def _norm_layout(layout: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(int(e["layer"]), str(e["name"]), tuple(int(s) for s in e["shape"]),
             int(e["offset"]), int(e["size"])) for e in layout]


# ---------------------------------------------------------------------- save
def save(path: str | Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` to ``path`` atomically (``fileio.atomic_write``: a temporary file in the
    same folder, fsync, replace, folder fsync).

    Raises ``OSError`` when the folder is not writable; the previous file is never harmed.
    """
    from . import __version__

    path = Path(path)
    atomic_write(path, partial(_write_file, ckpt=ckpt, version=__version__))
    ckpt.path = str(path)
    return path


def _write_file(tmp: Path, *, ckpt: Checkpoint, version: str) -> None:
    with h5py.File(tmp, "w") as f:
        _write_contents(f, ckpt, version)
        f.flush()


def _write_contents(f: h5py.File, ckpt: Checkpoint, version: str) -> None:
    """Everything but the identifying attributes first, so a partly written file is foreign."""
    groups = {"model": ckpt.arrays, "optimizer": ckpt.optimizer_state,
              "standardizer": ckpt.standardizer}
    for gname, arrays in groups.items():
        g = f.create_group(gname)
        for name, arr in arrays.items():
            a = np.ascontiguousarray(np.asarray(arr))
            if a.dtype == object:
                raise TypeError(f"checkpoint array {gname}/{name} has dtype object")
            d = g.create_dataset(name, data=a)
            d.attrs["crc32"] = np.uint32(zlib.crc32(a.tobytes()))
    for key in _JSON_ATTRS:
        f.attrs[key] = json.dumps(getattr(ckpt, key), allow_nan=True)
    f.attrs["gpunet_version"] = str(version)
    f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    f.attrs["format_version"] = np.int64(FORMAT_VERSION)
    f.attrs["gpunet_format"] = FORMAT_NAME


# ---------------------------------------------------------------------- load
def load(path: str | Path) -> Checkpoint:
    """Read a checkpoint; ``CheckpointError`` says what is wrong with a bad file."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    if p.is_dir():
        raise CheckpointError(f"checkpoint {p} is a directory, not a file")
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {p} is empty (0 bytes)")
    try:
        is_h5 = h5py.is_hdf5(str(p))
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {p}: {e.strerror or e}") from None
    if not is_h5:
        raise CheckpointError(f"{p} is not a gpunet checkpoint (not an HDF5 file)")
    try:
        f = h5py.File(p, "r")
    except OSError as e:
        raise CheckpointError(f"checkpoint {p} is truncated or corrupt "
                              f"(HDF5 cannot open it: {_first_line(e)})") from None
    try:
        with f:
            return _read(f, p)
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {p} is truncated or corrupt ({_first_line(e)})") \
            from None


def _read(f: h5py.File, p: Path) -> Checkpoint:
    fmt = f.attrs.get("gpunet_format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode("utf-8", "replace")
    if fmt != FORMAT_NAME:
        keys = ", ".join(sorted(f.keys())[:8]) or "none"
        raise CheckpointError(f"{p} is an HDF5 file but not a gpunet checkpoint (no "
                              f"'gpunet_format' attribute; top-level keys: {keys})")
    version = f.attrs.get("format_version")
    writer = f.attrs.get("gpunet_version", "?")
    try:
        version = int(version)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise CheckpointError(f"checkpoint {p} is corrupt: bad format_version {version!r}") \
            from None
    if version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {p} has format version {version}, written by gpunet "
                              f"{writer}; this gpunet reads versions up to {FORMAT_VERSION}: "
                              "upgrade gpunet")
    if version < 1:
        raise CheckpointError(f"checkpoint {p} is corrupt: bad format_version {version}")
    meta: dict[str, Any] = {}
    for key in _JSON_ATTRS:
        raw = f.attrs.get(key)
        if raw is None:
            raise CheckpointError(f"checkpoint {p} is corrupt: attribute {key!r} is missing")
        try:
            meta[key] = json.loads(raw)
        except (TypeError, ValueError):
            raise CheckpointError(f"checkpoint {p} is corrupt: attribute {key!r} is not valid "
                                  "JSON") from None
    groups: dict[str, dict[str, np.ndarray]] = {}
    for gname in ("model", "optimizer", "standardizer"):
        if gname not in f or not isinstance(f[gname], h5py.Group):
            raise CheckpointError(f"checkpoint {p} is corrupt: group {gname!r} is missing")
        out: dict[str, np.ndarray] = {}
        for name, d in f[gname].items():
            a = d[()]
            crc = d.attrs.get("crc32")
            if crc is not None and int(crc) != zlib.crc32(np.ascontiguousarray(a).tobytes()):
                raise CheckpointError(f"checkpoint {p} is corrupt: {gname}/{name} fails its "
                                      "checksum")
            out[name] = a
        groups[gname] = out
    if "params" not in groups["model"]:
        raise CheckpointError(f"checkpoint {p} is corrupt: model/params is missing")
    if not isinstance(meta["model"], dict) or "in_features" not in meta["model"]:
        raise CheckpointError(f"checkpoint {p} is corrupt: bad model description")
    ck = Checkpoint(
        model=meta["model"], layout=meta["layout"], arrays=groups["model"],
        optimizer=meta["optimizer"], optimizer_state=groups["optimizer"],
        standardizer=groups["standardizer"], config=meta["config"], data=meta["data"],
        classes=list(meta["classes"]), progress=meta["progress"], rng=meta["rng"],
        extra=meta["extra"], format_version=version, gpunet_version=str(writer),
        created=str(f.attrs.get("created", "")), path=str(p),
    )
    return ck


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def summary(ckpt: Checkpoint) -> dict[str, Any]:
    """A short JSON-able description (for ``gpunet eval`` / logs)."""
    return {
        "path": ckpt.path, "format_version": ckpt.format_version,
        "gpunet_version": ckpt.gpunet_version, "created": ckpt.created,
        "epoch": ckpt.epoch, "step": ckpt.step, "model": ckpt.model,
        "optimizer": ckpt.optimizer.get("name"), "classes": ckpt.classes,
    }
