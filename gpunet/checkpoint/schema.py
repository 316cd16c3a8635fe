"""The checkpoint's metadata: its expected structure as a small declarative table, and the
arrays (names and shapes) a valid model description implies.

``validate(meta, file_size)`` checks every JSON value of a checkpoint against ``METADATA``
(types, keys, ranges, nesting depth, lengths) and returns the array shapes the file must hold,
computed from the model description (docs/architecture.md, "Checkpoint format"). Nothing is
allocated from the description before it is found to fit the file: the parameters it declares
must be stored in the file, 4 bytes each.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from ..errors import CheckpointError

#: the deepest JSON nesting any metadata value may have
MAX_DEPTH = 32
#: the most hidden layers a model description may declare
MAX_HIDDEN = 1024
#: the largest integer a count or width may hold (JSON numbers are exact up to 2**53)
MAX_INT = 2**53
#: the longest string in the structured sections (class names, keys, paths)
MAX_STR = 4096
#: the most entries in any JSON list or object
MAX_ITEMS = 1 << 20


class _Bad(Exception):
    """A value that does not fit its spec: ``where`` (a JSON path) and what is wrong."""

    def __init__(self, where: str, what: str) -> None:
        super().__init__(f"{where}: {what}")


def _kind(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "an object", type(None): "null"}.get(type(v), type(v).__name__)


# ---------------------------------------------------------------------- specs
@dataclass(frozen=True)
class Int:
    lo: int = 0
    hi: int = MAX_INT

    def check(self, v: Any, where: str, depth: int) -> None:
        if type(v) is not int:
            raise _Bad(where, f"expected an integer, found {_kind(v)}")
        if not self.lo <= v <= self.hi:
            raise _Bad(where, f"{v} is outside [{self.lo}, {self.hi}]")


@dataclass(frozen=True)
class Float:
    lo: float = -math.inf
    hi: float = math.inf
    finite: bool = False

    def check(self, v: Any, where: str, depth: int) -> None:
        if type(v) not in (int, float):
            raise _Bad(where, f"expected a number, found {_kind(v)}")
        if math.isnan(v) and not self.finite:
            return
        if (self.finite and not math.isfinite(v)) or not self.lo <= v <= self.hi:
            raise _Bad(where, f"{v} is outside [{self.lo}, {self.hi}]")


@dataclass(frozen=True)
class Bool:
    def check(self, v: Any, where: str, depth: int) -> None:
        if type(v) is not bool:
            raise _Bad(where, f"expected true or false, found {_kind(v)}")


@dataclass(frozen=True)
class Str:
    max_len: int = MAX_STR
    choices: tuple[str, ...] = ()

    def check(self, v: Any, where: str, depth: int) -> None:
        if type(v) is not str:
            raise _Bad(where, f"expected a string, found {_kind(v)}")
        if len(v) > self.max_len:
            raise _Bad(where, f"a string of {len(v)} characters (at most {self.max_len})")
        if self.choices and v not in self.choices:
            raise _Bad(where, f"{v[:40]!r} is not one of {', '.join(self.choices)}")


@dataclass(frozen=True)
class Match:
    """A string matching ``pattern`` (whole)."""

    pattern: str

    def check(self, v: Any, where: str, depth: int) -> None:
        Str(64).check(v, where, depth)
        if re.fullmatch(self.pattern, v) is None:
            raise _Bad(where, f"{v!r} is not of the form {self.pattern}")


@dataclass(frozen=True)
class Null:
    """``inner`` or null."""

    inner: Any

    def check(self, v: Any, where: str, depth: int) -> None:
        if v is not None:
            self.inner.check(v, where, depth)


@dataclass(frozen=True)
class List:
    item: Any
    max_len: int = MAX_ITEMS

    def check(self, v: Any, where: str, depth: int) -> None:
        if type(v) is not list:
            raise _Bad(where, f"expected a list, found {_kind(v)}")
        if len(v) > self.max_len:
            raise _Bad(where, f"a list of {len(v)} entries (at most {self.max_len})")
        _deeper(where, depth)
        for i, x in enumerate(v):
            self.item.check(x, f"{where}[{i}]", depth + 1)


@dataclass(frozen=True)
class Obj:
    """A JSON object: ``fields`` name -> (spec, required); other keys must fit ``other``
    (``None``: no other keys allowed)."""

    fields: dict[str, tuple[Any, bool]]
    other: Any = None

    def check(self, v: Any, where: str, depth: int) -> None:
        if type(v) is not dict:
            raise _Bad(where, f"expected an object, found {_kind(v)}")
        if len(v) > MAX_ITEMS:
            raise _Bad(where, f"an object of {len(v)} entries (at most {MAX_ITEMS})")
        _deeper(where, depth)
        for k, (spec, required) in self.fields.items():
            if k in v:
                spec.check(v[k], f"{where}.{k}", depth + 1)
            elif required:
                raise _Bad(where, f"{k!r} is missing")
        for k, x in v.items():
            if k in self.fields:
                continue
            if self.other is None:
                raise _Bad(where, f"unexpected key {k[:40]!r}")
            self.other.check(x, f"{where}.{k[:40]}", depth + 1)


@dataclass(frozen=True)
class Any_:
    """Any JSON value, nested at most ``MAX_DEPTH`` deep."""

    def check(self, v: Any, where: str, depth: int) -> None:
        if isinstance(v, (list, dict)):
            _deeper(where, depth)
            items = v.values() if isinstance(v, dict) else v
            for x in items:
                self.check(x, where, depth + 1)
        elif type(v) not in (str, int, float, bool, type(None)):
            raise _Bad(where, f"unexpected {_kind(v)}")


def _deeper(where: str, depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise _Bad(where, f"nested more than {MAX_DEPTH} deep")


ANY = Any_()
COUNT = Int(0, MAX_INT)
_U128 = Int(0, 2**128 - 1)

#: a ``numpy.random.Generator``'s ``bit_generator.state`` (PCG64, what gpunet uses)
RNG_STATE = Obj({
    "bit_generator": (Str(16, ("PCG64",)), True),
    "state": (Obj({"state": (_U128, True), "inc": (_U128, True)}), True),
    "has_uint32": (Int(0, 1), True),
    "uinteger": (Int(0, 2**32 - 1), True),
})


def _model_spec() -> Obj:
    from ..layers import ACTIVATIONS

    return Obj({
        "in_features": (Int(1, MAX_INT), True),
        "hidden": (List(Int(1, MAX_INT), MAX_HIDDEN), True),
        "classes": (Int(2, MAX_INT), True),
        "batchnorm": (Bool(), True),
        "dropout": (Float(0.0, 0.999999, finite=True), False),
        "activation": (Str(16, tuple(ACTIVATIONS)), False),
        "bn_momentum": (Float(0.0, 1.0, finite=True), False),
        "bn_eps": (Float(1e-300, 1.0, finite=True), False),
    })


LAYOUT_ENTRY = Obj({
    "layer": (Int(0, 4 * MAX_HIDDEN + 1), True), "name": (Str(16), True),
    "shape": (List(Int(1, MAX_INT), 2), True), "offset": (COUNT, True),
    "size": (COUNT, True), "decay": (Bool(), False),
})

OPTIMIZER = Obj({"name": (Str(32), True), "hyperparams": (Obj({}, Float()), False),
                 "t": (COUNT, False), "lr": (Float(), False)})

PROGRESS = Obj({
    **{k: (COUNT, False) for k in ("epoch", "batch", "step", "best_epoch", "improved_epoch",
                                   "epoch_correct", "epoch_count", "n_batches")},
    "batch_size": (Int(1, MAX_INT), False),
    "status": (Str(32, ("running", "finished", "early_stopped", "interrupted")), False),
    "best_metric": (Str(64), False), "best_value": (Null(Float()), False),
    "epoch_loss_sum": (Float(), False), "epoch_seconds": (Float(), False),
}, ANY)

DATA = Obj({
    **{k: (Null(Str()), False) for k in ("path", "x_key", "y_key", "detected_x_key",
                                         "detected_y_key", "val", "val_source")},
    "val_split": (Null(Float(0.0, 1.0, finite=True)), False),
    "seed": (Null(Int(-MAX_INT, MAX_INT)), False),
    "heldout": (Null(Str(8, ("test", "val"))), False),
    "n_features": (Null(Int(1, MAX_INT)), False), "n_classes": (Null(Int(1, MAX_INT)), False),
}, ANY)


#: what ``gpunet.sklearn.MLPClassifier.save`` puts in ``extra["sklearn"]``; the dtype of
#: ``classes_`` is limited to small plain kinds (a ``V1000000000`` would allocate per class)
SKLEARN = Obj({
    "params": (Obj({}, ANY), False), "classes": (List(ANY), False),
    "classes_dtype": (Match(r"[<>|=]?(?:[US]\d{1,5}|[iuf][1248]|b1|O)"), False),
    "n_iter": (COUNT, False), "loss_curve": (List(Float()), False),
    "feature_names_in": (Null(List(Str())), False),
}, ANY)


def metadata_spec() -> Obj:
    """The declarative table of a checkpoint's metadata object (every key required)."""
    return Obj({
        "model": (_model_spec(), True),
        "layout": (List(LAYOUT_ENTRY, 4 * MAX_HIDDEN + 4), True),
        "config": (Obj({}, ANY), True),
        "data": (DATA, True),
        "classes": (List(Str()), True),
        "progress": (PROGRESS, True),
        "rng": (Obj({"shuffle_epoch_start": (RNG_STATE, False),
                     "dropout": (RNG_STATE, False)}, ANY), True),
        "optimizer": (Obj({}, ANY), True),
        "extra": (Obj({"sklearn": (SKLEARN, False)}, ANY), True),
        "created": (Str(64), True),
    })


# ---------------------------------------------------------------------- layout
def expected_layout(model: dict[str, Any]) -> list[dict[str, Any]]:
    """The parameter layout ``MLP.from_config(model).layout`` has, computed without building
    the model: per hidden width a Dense (``W`` (in, h), ``b`` unless batch norm), a BatchNorm
    (``gamma``, ``beta``), the activation and a Dropout when ``dropout > 0``; then the output
    Dense (``W``, ``b``). Offsets are cumulative."""
    out: list[dict[str, Any]] = []
    bn, drop = bool(model["batchnorm"]), float(model.get("dropout", 0.0)) > 0
    layer, offset, width = 0, 0, int(model["in_features"])

    def add(name: str, shape: list[int], decay: bool) -> None:
        nonlocal offset
        size = math.prod(shape)
        out.append({"layer": layer, "name": name, "shape": shape, "offset": offset,
                    "size": size, "decay": decay})
        offset += size

    for h in model["hidden"]:
        add("W", [width, h], True)
        if not bn:
            add("b", [h], False)
        layer += 1
        if bn:
            add("gamma", [h], False)
            add("beta", [h], False)
            layer += 1
        layer += 1 + drop
        width = h
    add("W", [width, int(model["classes"])], True)
    add("b", [int(model["classes"])], False)
    return out


def batchnorm_layers(model: dict[str, Any]) -> list[tuple[int, int]]:
    """``(layer index, width)`` of every BatchNorm the model description implies."""
    if not model["batchnorm"]:
        return []
    step = 3 + (float(model.get("dropout", 0.0)) > 0)
    return [(i * step + 1, int(h)) for i, h in enumerate(model["hidden"])]


def _norm(layout: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(e["layer"], e["name"], tuple(e["shape"]), e["offset"], e["size"]) for e in layout]


def optimizer_arrays(opt: dict[str, Any]) -> tuple[str, ...]:
    """The state arrays the optimizer description names (none without an optimizer)."""
    from ..optim import OPTIMIZERS

    if not opt:
        return ()
    OPTIMIZER.check(opt, "optimizer", 0)
    cls = OPTIMIZERS.get(opt["name"])
    if cls is None:
        raise _Bad("optimizer.name", f"{opt['name'][:32]!r} is not one of "
                   + ", ".join(OPTIMIZERS))
    return tuple(cls.state_names)


# ---------------------------------------------------------------------- validation
def validate(meta: Any, file_size: int, where: str) -> dict[str, tuple[int, ...]]:
    """Check ``meta`` (the parsed metadata object) against the table and the model
    description against its layout; return ``{dataset path: shape}`` of every array the file
    must hold, besides ``standardizer/mean`` and ``std`` (``(in_features,)`` when present).
    Raises ``CheckpointError`` naming the first thing wrong."""
    try:
        metadata_spec().check(meta, "metadata", 0)
        opt_names = optimizer_arrays(meta["optimizer"])
    except _Bad as e:
        raise CheckpointError(f"checkpoint {where} is corrupt: {e}") from None
    model = meta["model"]
    layout = expected_layout(model)  # Python integers: nothing allocated
    n_params = sum(e["size"] for e in layout)
    if 4 * n_params > file_size:
        raise CheckpointError(
            f"checkpoint {where} is corrupt: its model description declares {n_params:,} "
            f"parameters ({4 * n_params:,} bytes) but the file is only {file_size:,} bytes")
    if _norm(layout) != _norm(meta["layout"]):
        raise CheckpointError(f"checkpoint {where} is corrupt: its parameter layout does not "
                              "match the model it describes")
    classes = meta["classes"]
    if classes and len(classes) != model["classes"]:
        raise CheckpointError(f"checkpoint {where} is corrupt: it names {len(classes)} classes "
                              f"but its model has {model['classes']}")
    shapes: dict[str, tuple[int, ...]] = {"model/params": (n_params,)}
    for i, h in batchnorm_layers(model):
        shapes[f"model/layers.{i}.running_mean"] = (h,)
        shapes[f"model/layers.{i}.running_var"] = (h,)
    for name in opt_names:
        shapes[f"optimizer/{name}"] = (n_params,)
    return shapes


def check_value(spec: Any, v: Any, where: str) -> None:
    """``spec.check`` with a ``CheckpointError`` for the caller (used when saving)."""
    try:
        spec.check(v, where, 0)
    except _Bad as e:
        raise CheckpointError(f"cannot save the checkpoint: {e}") from None
