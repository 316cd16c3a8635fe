"""Search spaces: hyperparameters, their sampling scales, the default space and space files.

Every numeric hyperparameter is sampled uniformly in its *sampling scale* ``u`` and mapped to
a value; ``SCALE_TABLE`` holds, for each scale, the map both ways, how a value is drawn, how a
shrunk range is rounded outwards and how bounds are shown. ``choice`` (one of ``values``) is
the one non-numeric kind. Bounds are in value terms and inclusive.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import TrainConfig, read_toml
from ..errors import ConfigError

#: the scale a hyperparameter gets when a space does not name one
DEFAULT_SCALES: dict[str, str] = {
    "lr": "log", "weight_decay": "log", "eps": "log", "lr_decay_rate": "log",
    "beta1": "log1m", "beta2": "log1m", "bn_momentum": "log", "lr_gamma": "log1m",
    "width": "log2", "depth": "int", "batch_size": "pow2", "lr_step_size": "int",
    "dropout": "linear",
}
#: hyperparameters a space may name (``width`` / ``depth`` set ``hidden``)
TUNABLE = tuple(DEFAULT_SCALES) + ("optimizer", "activation", "lr_schedule", "batchnorm",
                                   "class_weights")
_INTEGER = {"width", "depth", "batch_size", "lr_step_size"}
_NOT_FIXABLE = {"data", "val", "out", "seed", "epochs", "device", "x_key", "y_key",
                "val_split", "memory_budget", "save_every"}
#: margin added on each side of a shrunk range: this share of the best trials' span, at least
#: MIN_MARGIN of the previous range (both in the sampling scale)
MARGIN = 0.25
MIN_MARGIN = 0.10
#: slack for rounding a shrunk integer range outwards (``floor(u + EPS)``, ``ceil(u - EPS)``)
_EPS = 1e-9


# ====================================================================== the scale table
@dataclass(frozen=True)
class Scale:
    """One sampling scale. ``to_u`` / ``from_u``: value <-> sampling scale (NumPy or Python
    numbers); ``draw(p, rng, size)``: values of ``p`` (clipped to its bounds); ``widen(s, ua,
    ub)``: the value range ``(lo, hi)`` of the sampling-scale range ``ua <= ub``, integer ranges
    rounded outwards; ``domain(lo, hi)``: why bounds are outside the scale's domain (or None),
    ``grid(lo, hi)``: why they are off its grid of values (or None); ``fmt``: how bounds print;
    ``optuna_log``: Optuna's ``log`` flag for the recorded distribution."""

    name: str
    to_u: Callable[[Any], Any]
    from_u: Callable[[Any], Any]
    draw: Callable[[Param, np.random.Generator, int | None], Any]
    widen: Callable[[Scale, float, float], tuple[float, float]]
    integer: bool = False
    domain: Callable[[float, float], str | None] = lambda lo, hi: None
    grid: Callable[[float, float], str | None] = lambda lo, hi: None
    fmt: str = "{:.3g}"
    optuna_log: bool = False


def _draw_uniform_u(p: Param, rng: np.random.Generator, size: int | None) -> Any:
    ua, ub = p.u_bounds()
    return np.clip(p.scale_spec.from_u(rng.uniform(ua, ub, size=size)), p.low, p.high)


def _draw_int(p: Param, rng: np.random.Generator, size: int | None) -> Any:
    return rng.integers(int(p.low), int(p.high) + 1, size=size)


def _draw_pow2(p: Param, rng: np.random.Generator, size: int | None) -> Any:
    return 2 ** rng.integers(int(math.log2(p.low)), int(math.log2(p.high)) + 1, size=size)


def _draw_log2(p: Param, rng: np.random.Generator, size: int | None) -> Any:
    # the +-0.5 edges give the end integers their fair share after rounding
    u = rng.uniform(math.log2(max(p.low - 0.5, 0.5)), math.log2(p.high + 0.5), size=size)
    return np.clip(np.rint(2.0 ** u), p.low, p.high).astype(np.int64)


def _widen_continuous(s: Scale, ua: float, ub: float) -> tuple[float, float]:
    a, b = s.from_u(ua), s.from_u(ub)
    return min(a, b), max(a, b)


def _widen_in_u(s: Scale, ua: float, ub: float) -> tuple[float, float]:
    """Integer exponents (``pow2``) or integers (``int``): round ``u`` outwards."""
    return float(s.from_u(math.floor(ua + _EPS))), float(s.from_u(math.ceil(ub - _EPS)))


def _widen_in_value(s: Scale, ua: float, ub: float) -> tuple[float, float]:
    """Integers drawn on a log scale (``log2``): round the values outwards."""
    return float(math.floor(s.from_u(ua) + _EPS)), float(math.ceil(s.from_u(ub) - _EPS))


def _positive(name: str) -> Callable[[float, float], str | None]:
    return lambda lo, hi: (f"a {name} scale needs low > 0, got low = {lo:g}"
                           if lo <= 0 else None)


def _unit_open(lo: float, hi: float) -> str | None:
    if 0 < lo and hi < 1:
        return None
    return (f"the 1 - beta scale needs 0 < low <= high < 1 (a beta in (0, 1)), got "
            f"low = {lo:g}, high = {hi:g}")


def _is_pow2(v: float) -> bool:
    return v >= 1 and float(v).is_integer() and (int(v) & (int(v) - 1)) == 0


def _powers_of_two(lo: float, hi: float) -> str | None:
    if _is_pow2(lo) and _is_pow2(hi):
        return None
    return f"pow2 bounds must be powers of two, got {lo:g} and {hi:g}"


def _identity(v: Any) -> Any:
    return v


#: every numeric scale: ``log`` (``u = log10 v``), ``log1m`` (``u = log10(1 - v)``, betas),
#: ``linear``, ``log2`` (integers, ``u = log2 v``), ``int`` (uniform integers), ``pow2``
#: (powers of two with a uniform exponent)
SCALE_TABLE: dict[str, Scale] = {s.name: s for s in (
    Scale("log", np.log10, lambda u: 10.0 ** u, _draw_uniform_u, _widen_continuous,
          domain=_positive("log"), optuna_log=True),
    Scale("log1m", lambda v: np.log10(1.0 - v), lambda u: 1.0 - 10.0 ** u, _draw_uniform_u,
          _widen_continuous, domain=_unit_open),
    Scale("linear", _identity, _identity, _draw_uniform_u, _widen_continuous),
    Scale("log2", np.log2, lambda u: 2.0 ** u, _draw_log2, _widen_in_value, integer=True,
          domain=_positive("log2"), fmt="{:g}", optuna_log=True),
    Scale("int", _identity, _identity, _draw_int, _widen_in_u, integer=True, fmt="{:g}"),
    Scale("pow2", np.log2, lambda u: 2 ** u, _draw_pow2, _widen_in_u, integer=True,
          domain=_positive("pow2"), grid=_powers_of_two, fmt="{:g}", optuna_log=True),
)}
SCALES = (*SCALE_TABLE, "choice")


# ====================================================================== parameters
def _num(x: Any, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ConfigError(f"{what} must be a number, got {x!r}")
    f = float(x)
    if not math.isfinite(f):
        raise ConfigError(f"{what} must be finite, got {x!r}")
    return f


def _spec_table(where: str, spec: Any) -> dict[str, Any]:
    """A TOML entry as a ``{low, high, scale, values}`` table (``[a, b]``: bounds; any
    other list: choices)."""
    if isinstance(spec, (list, tuple)):
        if len(spec) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                  for v in spec):
            spec = {"low": spec[0], "high": spec[1]}
        else:
            spec = {"values": list(spec)}
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a table like {{low = 1e-4, high = 1e-1}}, a "
                          f"[low, high] pair or {{values = [...]}}, got {spec!r}")
    unknown = set(spec) - {"low", "high", "scale", "values"}
    if unknown:
        raise ConfigError(f"{where} has unknown keys {sorted(unknown)}; use low, high, "
                          "scale or values")
    return spec


@dataclass(frozen=True)
class Param:
    """One hyperparameter: ``scale`` (a ``SCALE_TABLE`` name, or ``choice``), inclusive bounds
    ``low`` / ``high`` in value terms, or ``values`` for a ``choice``."""

    name: str
    scale: str
    low: float = 0.0
    high: float = 0.0
    values: tuple[Any, ...] = ()

    # ------------------------------------------------------------------ construction
    @classmethod
    def make(cls, name: str, spec: Any, source: str = "search space") -> Param:
        """A checked ``Param`` from a TOML value: ``{low, high, scale}``, ``[low, high]``,
        ``{values = [...]}`` or a list of non-numbers (a choice)."""
        where = f"{source}: {name}"
        if name not in TUNABLE:
            raise ConfigError(f"{where} is not a tunable hyperparameter; use one of "
                              + ", ".join(TUNABLE))
        spec = _spec_table(where, spec)
        scale = spec.get("scale", "choice" if "values" in spec else DEFAULT_SCALES.get(name))
        if scale not in SCALES:
            raise ConfigError(f"{where}: unknown scale {scale!r}; use " + ", ".join(SCALES))
        if scale == "choice":
            return cls._choice(name, where, spec.get("values"))
        if "values" in spec:
            raise ConfigError(f"{where}: values go with scale \"choice\", not {scale!r}")
        if name not in DEFAULT_SCALES:
            raise ConfigError(f"{where} is categorical: give {{values = [...]}}")
        if "low" not in spec or "high" not in spec:
            raise ConfigError(f"{where} needs both low and high")
        low, high = _num(spec["low"], f"{where} low"), _num(spec["high"], f"{where} high")
        p = cls(name, scale, low, high)
        p.check(where)
        return p

    @classmethod
    def _choice(cls, name: str, where: str, values: Any) -> Param:
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: a choice needs a non-empty list of values")
        if name in _INTEGER and not all(isinstance(v, int) and not isinstance(v, bool)
                                        and v >= 1 for v in values):
            raise ConfigError(f"{where}: choices must be positive integers, got {values}")
        return cls(name, "choice", values=tuple(values))

    def check(self, where: str) -> None:
        """Raise ``ConfigError`` for bounds that make no sense on this scale."""
        lo, hi, sc = self.low, self.high, self.scale_spec
        if lo > hi:
            raise ConfigError(f"{where}: low {lo:g} is above high {hi:g}")
        why = sc.domain(lo, hi)
        if why:
            raise ConfigError(f"{where}: {why}")
        if self.name in _INTEGER or sc.integer:
            if not (lo.is_integer() and hi.is_integer()):
                raise ConfigError(f"{where}: bounds must be integers, got {lo:g} and {hi:g}")
            if not sc.integer:
                raise ConfigError(f"{where} is an integer: use scale int, log2 or pow2")
            if lo < 1:
                raise ConfigError(f"{where}: low must be >= 1, got {lo:g}")
        if sc.integer and self.name not in _INTEGER:
            raise ConfigError(f"{where} is not an integer hyperparameter: use scale log, "
                              "log1m or linear")
        why = sc.grid(lo, hi)
        if why:
            raise ConfigError(f"{where}: {why}")
        if self.name in ("dropout",) and not (0 <= lo and hi < 1):
            raise ConfigError(f"{where}: dropout must stay in [0, 1), got {lo:g}..{hi:g}")
        if self.name in ("beta1", "beta2", "lr_gamma") and self.scale != "log1m" and not (
                0 <= lo and hi < 1):
            raise ConfigError(f"{where}: a beta must stay in [0, 1), got {lo:g}..{hi:g}")

    # ------------------------------------------------------------------ scales
    @property
    def scale_spec(self) -> Scale:
        """This parameter's row of ``SCALE_TABLE`` (``KeyError`` for a choice)."""
        return SCALE_TABLE[self.scale]

    @property
    def is_integer(self) -> bool:
        return self.scale != "choice" and self.scale_spec.integer

    def to_u(self, v: Any) -> Any:
        """Value(s) -> sampling scale (a choice's values pass through)."""
        v = np.asarray(v, dtype=np.float64)
        return v if self.scale == "choice" else self.scale_spec.to_u(v)

    def u_bounds(self) -> tuple[float, float]:
        """The range in the sampling scale, low < high order (``log1m`` flips)."""
        a, b = float(self.to_u(self.low)), float(self.to_u(self.high))
        return (min(a, b), max(a, b))

    def sample(self, rng: np.random.Generator, size: int | None = None) -> Any:
        """One value (a Python scalar), or an array of ``size`` values."""
        if self.scale == "choice":
            idx = rng.integers(len(self.values), size=size)
            return self.values[int(idx)] if size is None else np.asarray(self.values)[idx]
        out = self.scale_spec.draw(self, rng, size)
        if size is None:
            return int(out) if self.is_integer else float(out)
        return out

    def contains(self, v: Any) -> bool:
        if self.scale == "choice":
            return v in self.values
        try:
            f = float(v)
        except (TypeError, ValueError):
            return False
        return self.low <= f <= self.high

    # ------------------------------------------------------------------ coarse to fine
    def shrink(self, best: Sequence[Any]) -> Param:
        """The range narrowed, in the sampling scale, to the span of ``best`` values plus a
        margin (``MARGIN`` of that span, at least ``MIN_MARGIN`` of the range), never beyond
        the range, integer ranges rounded outwards; a choice, or nothing to go on, returns
        ``self``."""
        vals = [v for v in best if v is not None and self.contains(v)]
        if self.scale == "choice" or not vals or self.low == self.high:
            return self
        us = np.asarray(self.to_u(vals), dtype=np.float64)
        L, H = self.u_bounds()
        a, b = float(us.min()), float(us.max())
        m = max(MARGIN * (b - a), MIN_MARGIN * (H - L))
        lo, hi = self.scale_spec.widen(self.scale_spec, max(L, a - m), min(H, b + m))
        lo, hi = max(self.low, min(lo, self.high)), min(self.high, max(hi, self.low))
        return dataclasses.replace(self, low=lo, high=hi)

    # ------------------------------------------------------------------ display, JSON
    def describe(self) -> str:
        if self.scale == "choice":
            return "{" + ", ".join(map(str, self.values)) + "}"
        f = self.scale_spec.fmt
        return f"{f.format(self.low)}..{f.format(self.high)} ({self.scale})"

    def to_dict(self) -> dict[str, Any]:
        if self.scale == "choice":
            return {"scale": "choice", "values": list(self.values)}
        return {"scale": self.scale, "low": self.low, "high": self.high}

    def corner(self, which: str) -> Any:
        """The ``"low"`` or ``"high"`` end (a choice's first or last value)."""
        if self.scale == "choice":
            return self.values[0 if which == "low" else -1]
        v = getattr(self, which)
        return int(v) if self.is_integer else v


# ====================================================================== search spaces
@dataclass
class SearchSpace:
    """Hyperparameters to sample (in order) and ``fixed`` training settings for every sampled
    trial."""

    params: dict[str, Param]
    fixed: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], source: str = "search space") -> SearchSpace:
        """Parse a space document (top-level entries, or a ``[space]`` table, plus ``[fixed]``)."""
        doc = dict(doc)
        fixed = doc.pop("fixed", {})
        if "space" in doc and isinstance(doc["space"], dict):
            extra = [k for k in doc if k != "space"]
            if extra:
                raise ConfigError(f"{source}: keys outside [space] and [fixed]: "
                                  + ", ".join(extra))
            doc = dict(doc["space"])
        if not isinstance(fixed, dict):
            raise ConfigError(f"{source}: [fixed] must be a table of training settings")
        params = {}
        for key, spec in doc.items():
            name = key.replace("-", "_")
            params[name] = Param.make(name, spec, source)
        if not params:
            raise ConfigError(f"{source} names no hyperparameter to search")
        fixed = {k.replace("-", "_"): v for k, v in fixed.items()}
        bad = sorted(set(fixed) & (_NOT_FIXABLE | set(params)))
        if bad:
            raise ConfigError(f"{source}: [fixed] cannot set {', '.join(bad)} (set by the tune "
                              "command, or searched)")
        TrainConfig.from_dict(fixed, source=f"{source} [fixed]")  # checks keys and types
        return cls(params, fixed)

    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        """Read a ``--space FILE.toml``."""
        p = Path(path)
        return cls.from_dict(read_toml(p, "space file"), source=f"space file {p}")

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        """One value per hyperparameter, in order."""
        return {name: p.sample(rng) for name, p in self.params.items()}

    def config_for(self, base: TrainConfig, values: dict[str, Any]) -> TrainConfig:
        """``base`` with ``fixed`` and the sampled ``values`` applied (not yet resolved)."""
        cfg = base.updated(self.fixed, source="the search space's [fixed]") if self.fixed \
            else TrainConfig(**dataclasses.asdict(base))
        over = {k: v for k, v in values.items() if k not in ("width", "depth")}
        if "width" in values or "depth" in values:
            width = int(values.get("width", cfg.hidden[0] if cfg.hidden else 64))
            depth = int(values.get("depth", len(cfg.hidden)))
            over["hidden"] = [width] * depth
        if "lr_decay_rate" in values and "lr_schedule" not in values \
                and "lr_schedule" not in self.fixed:
            over["lr_schedule"] = "inverse"
        return cfg.updated(over, source="the search space")

    def shrink(self, best: list[dict[str, Any]]) -> SearchSpace:
        """Each numeric range shrunk around the ``best`` trials' values (see ``Param.shrink``)."""
        return SearchSpace({n: p.shrink([b.get(n) for b in best]) for n, p in
                            self.params.items()}, dict(self.fixed))

    def to_dict(self) -> dict[str, Any]:
        return {"params": {n: p.to_dict() for n, p in self.params.items()},
                "fixed": dict(self.fixed)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SearchSpace:
        return cls.from_dict({**d["params"], "fixed": d.get("fixed", {})}, "stored space")

    def describe(self) -> list[str]:
        lines = [f"{n} {p.describe()}" for n, p in self.params.items()]
        if self.fixed:
            lines.append("fixed: " + ", ".join(f"{k}={v}" for k, v in self.fixed.items()))
        return lines

    def check_against(self, base: TrainConfig) -> None:
        """Raise ``ConfigError`` if a corner of the space gives an invalid configuration."""
        for corner in ("low", "high"):
            vals = {n: p.corner(corner) for n, p in self.params.items()}
            try:
                self.config_for(base, vals).resolve()
            except ConfigError as e:
                raise ConfigError(f"search space: its {corner} corner gives an invalid "
                                  f"configuration: {e}") from None


def default_space(optimizer: str = "adam") -> SearchSpace:
    """The default search space for ``optimizer``, in the course's order of importance:
    learning rate; momentum beta (momentum optimizer only); batch size, hidden width; depth,
    learning-rate decay (the ``inverse`` schedule)."""
    lr = (1e-4, 1e-1) if optimizer in ("adam", "rmsprop") else (1e-3, 1.0)
    params = {"lr": Param("lr", "log", *lr)}
    if optimizer == "momentum":
        params["beta1"] = Param("beta1", "log1m", 0.9, 0.999)
    params["batch_size"] = Param("batch_size", "pow2", 32, 256)
    params["width"] = Param("width", "log2", 32, 512)
    params["depth"] = Param("depth", "int", 1, 3)
    params["lr_decay_rate"] = Param("lr_decay_rate", "log", 0.01, 1.0)
    return SearchSpace(params, {})
