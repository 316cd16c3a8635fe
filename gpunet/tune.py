"""Hyperparameter search: random, on the right scale, coarse to fine, many workers on one study.

Conventions:

- **Scales.** Each hyperparameter is sampled uniformly in its *sampling scale* ``u`` and mapped
  to a value: ``log`` (``u = log10 v``: learning rate, weight decay, eps, decay rate),
  ``log1m`` (``u = log10(1 - v)``: momentum and Adam betas, so 0.9..0.999 gets as many samples
  per decade of averaging window ``1 / (1 - beta)``), ``linear`` (dropout), ``log2``
  (integers, ``u = log2 v``: hidden width), ``int`` (uniform integers: depth), ``pow2``
  (powers of two with a uniform exponent: batch size) and ``choice`` (one of ``values``).
  Bounds are in value terms (``low = 0.9, high = 0.999`` for a beta) and inclusive.
- **Default space** (``default_space``), in the course's order of importance: learning rate;
  momentum beta (``beta1`` with the momentum optimizer); batch size and hidden width; depth
  and learning-rate decay (the course's ``lr0 / (1 + decay_rate * epoch)``, the ``inverse``
  schedule). Adam's beta1, beta2 and eps keep 0.9, 0.999 and 1e-8 unless a space names them.
  ``width`` and ``depth`` set ``hidden = [width] * depth``.
- **Space files** (``--space FILE.toml``): one entry per hyperparameter, ``lr = {low = 1e-4,
  high = 1e-1, scale = "log"}`` (the scale defaults by name), ``lr = [1e-4, 1e-1]`` for short,
  ``optimizer = {values = ["adam", "momentum"]}`` for a choice; an optional ``[fixed]`` table of
  training settings every sampled trial uses (``optimizer = "momentum"``).
- **Randomness.** Trial ``k`` samples from ``default_rng(SeedSequence(seed, spawn_key=(3, k)))``
  (the model uses streams 0 and 1, shuffling 2): a trial's values depend on the seed, its
  number and its round's space only, whichever worker runs it. Every trial trains with the
  same ``seed``, so all see the same validation rows and a best configuration retrains to the
  same result with ``gpunet train --config best.toml``.
- **Study.** Trials live in an Optuna study (a ``JournalStorage`` file by default, or any
  Optuna storage URL); ``trials`` is the study's total of *finished* trials (COMPLETE, and
  PRUNED when a pruner stops one), counted across workers and resumes; FAIL trials (divergence,
  a killed worker) never count. A worker claims a trial with ``study.ask()`` and keeps it only
  if fewer than ``trials`` finished or running trials precede it (a claim beyond the total is
  closed at once as FAIL with the user attribute ``gpunet_surplus``). A running trial records
  its worker (host, pid namespace, pid, process start time) and a heartbeat; a RUNNING trial
  whose process is gone (same host) or whose heartbeat is older than ``stale_after`` seconds is
  marked FAIL by the next worker that looks.
- **Rounds.** With ``rounds = K`` the total is cut into K rounds of (nearly) equal size. Round
  ``r > 0`` waits for round ``r - 1`` to finish, then samples from each numeric range shrunk,
  in its sampling scale, to the span of the best quarter (at least 2) of round ``r - 1``'s
  trials plus a margin (a quarter of that span, at least a tenth of the previous range), never
  beyond the previous range; integer ranges are rounded outwards; choices stay. The shrunk
  space is stored in the study (user attribute ``gpunet_space_<r>``) so that every worker
  uses it.
- **Data.** Each trial trains with ``gpunet.train.fit`` on the training split for ``epochs``
  epochs; the objective is the best validation accuracy over those epochs (what ``best.h5``
  keeps), ties broken by the lower validation loss. The test split is never read.
- **Baseline.** By default the study's first trial trains the base configuration unchanged
  (the defaults, or ``--config``) for the same budget, marked ``baseline``.

No pickle anywhere: the journal file is JSON lines; our trial attributes are JSON values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import socket
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import TrainConfig
from .errors import ConfigError, GpunetError, TrainingDiverged

#: the SeedSequence child that seeds trial sampling (model: 0 and 1, shuffling: 2)
TUNE_STREAM = 3
SCALES = ("log", "log1m", "linear", "log2", "int", "pow2", "choice")
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
#: share of a round's trials whose span defines the next round's range (at least 2 trials)
TOP_FRACTION = 0.25
#: margin added on each side: this share of the best trials' span, at least MIN_MARGIN of the
#: previous range (both in the sampling scale)
MARGIN = 0.25
MIN_MARGIN = 0.10

Callback = Callable[[str, dict[str, Any]], None]


# ====================================================================== parameters
def _num(x: Any, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ConfigError(f"{what} must be a number, got {x!r}")
    f = float(x)
    if not math.isfinite(f):
        raise ConfigError(f"{what} must be finite, got {x!r}")
    return f


def _is_pow2(v: float) -> bool:
    return v >= 1 and float(v).is_integer() and (int(v) & (int(v) - 1)) == 0


@dataclass(frozen=True)
class Param:
    """One hyperparameter: ``scale`` (see the module docstring), inclusive bounds ``low`` /
    ``high`` in value terms, or ``values`` for a ``choice``."""

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
        scale = spec.get("scale", "choice" if "values" in spec else DEFAULT_SCALES.get(name))
        if scale not in SCALES:
            raise ConfigError(f"{where}: unknown scale {scale!r}; use " + ", ".join(SCALES))
        if scale == "choice":
            values = spec.get("values")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{where}: a choice needs a non-empty list of values")
            if name in _INTEGER and not all(isinstance(v, int) and not isinstance(v, bool)
                                            and v >= 1 for v in values):
                raise ConfigError(f"{where}: choices must be positive integers, got {values}")
            return cls(name, "choice", values=tuple(values))
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

    def check(self, where: str) -> None:
        """Raise ``ConfigError`` for bounds that make no sense on this scale."""
        lo, hi, s = self.low, self.high, self.scale
        if lo > hi:
            raise ConfigError(f"{where}: low {lo:g} is above high {hi:g}")
        if s in ("log", "log2", "pow2") and lo <= 0:
            raise ConfigError(f"{where}: a {s} scale needs low > 0, got low = {lo:g}")
        if s == "log1m" and not (0 < lo and hi < 1):
            raise ConfigError(f"{where}: the 1 - beta scale needs 0 < low <= high < 1 (a beta "
                              f"in (0, 1)), got low = {lo:g}, high = {hi:g}")
        if self.name in _INTEGER or s in ("int", "log2", "pow2"):
            if not (lo.is_integer() and hi.is_integer()):
                raise ConfigError(f"{where}: bounds must be integers, got {lo:g} and {hi:g}")
            if s != "int" and self.name in _INTEGER and s not in ("log2", "pow2", "int"):
                raise ConfigError(f"{where} is an integer: use scale int, log2 or pow2")
            if lo < 1:
                raise ConfigError(f"{where}: low must be >= 1, got {lo:g}")
        if s in ("int", "log2", "pow2") and self.name not in _INTEGER:
            raise ConfigError(f"{where} is not an integer hyperparameter: use scale log, "
                              "log1m or linear")
        if s == "pow2" and not (_is_pow2(lo) and _is_pow2(hi)):
            raise ConfigError(f"{where}: pow2 bounds must be powers of two, got {lo:g} and "
                              f"{hi:g}")
        if self.name in ("dropout",) and not (0 <= lo and hi < 1):
            raise ConfigError(f"{where}: dropout must stay in [0, 1), got {lo:g}..{hi:g}")
        if self.name in ("beta1", "beta2", "lr_gamma") and s != "log1m" and not (
                0 <= lo and hi < 1):
            raise ConfigError(f"{where}: a beta must stay in [0, 1), got {lo:g}..{hi:g}")

    # ------------------------------------------------------------------ scales
    def to_u(self, v: Any) -> Any:
        """Value(s) -> sampling scale."""
        v = np.asarray(v, dtype=np.float64)
        if self.scale == "log":
            return np.log10(v)
        if self.scale == "log1m":
            return np.log10(1.0 - v)
        if self.scale in ("log2", "pow2"):
            return np.log2(v)
        return v

    def u_bounds(self) -> tuple[float, float]:
        """The range in the sampling scale, low < high order (``log1m`` flips)."""
        a, b = float(self.to_u(self.low)), float(self.to_u(self.high))
        return (min(a, b), max(a, b))

    def sample(self, rng: np.random.Generator, size: int | None = None) -> Any:
        """One value (a Python scalar), or an array of ``size`` values."""
        if self.scale == "choice":
            idx = rng.integers(len(self.values), size=size)
            return self.values[int(idx)] if size is None else np.asarray(self.values)[idx]
        lo, hi = self.low, self.high
        if self.scale == "int":
            out = rng.integers(int(lo), int(hi) + 1, size=size)
        elif self.scale == "pow2":
            out = 2 ** rng.integers(int(math.log2(lo)), int(math.log2(hi)) + 1, size=size)
        elif self.scale == "log2":
            # the +-0.5 edges give the end integers their fair share after rounding
            u = rng.uniform(math.log2(max(lo - 0.5, 0.5)), math.log2(hi + 0.5), size=size)
            out = np.clip(np.rint(2.0 ** u), lo, hi).astype(np.int64)
        else:
            ua, ub = self.u_bounds()
            u = rng.uniform(ua, ub, size=size)
            if self.scale == "log":
                v = 10.0 ** u
            elif self.scale == "log1m":
                v = 1.0 - 10.0 ** u
            else:
                v = u
            out = np.clip(v, lo, hi)
        if size is None:
            return int(out) if self.is_integer else float(out)
        return out

    @property
    def is_integer(self) -> bool:
        return self.scale in ("int", "log2", "pow2")

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
        """The range narrowed to the span of ``best`` values plus a margin (see the module
        docstring); a choice, or nothing to go on, returns ``self``."""
        vals = [v for v in best if v is not None and self.contains(v)]
        if self.scale == "choice" or not vals or self.low == self.high:
            return self
        us = np.asarray(self.to_u(vals), dtype=np.float64)
        L, H = self.u_bounds()
        a, b = float(us.min()), float(us.max())
        m = max(MARGIN * (b - a), MIN_MARGIN * (H - L))
        ua, ub = max(L, a - m), min(H, b + m)
        if self.scale == "log":
            lo, hi = 10.0 ** ua, 10.0 ** ub
        elif self.scale == "log1m":
            lo, hi = 1.0 - 10.0 ** ub, 1.0 - 10.0 ** ua
        elif self.scale == "pow2":
            lo, hi = 2.0 ** math.floor(ua + 1e-9), 2.0 ** math.ceil(ub - 1e-9)
        elif self.scale == "log2":
            lo, hi = float(math.floor(2.0 ** ua + 1e-9)), float(math.ceil(2.0 ** ub - 1e-9))
        elif self.scale == "int":
            lo, hi = float(math.floor(ua + 1e-9)), float(math.ceil(ub - 1e-9))
        else:
            lo, hi = ua, ub
        lo, hi = max(self.low, min(lo, self.high)), min(self.high, max(hi, self.low))
        return dataclasses.replace(self, low=lo, high=hi)

    # ------------------------------------------------------------------ display, JSON
    def describe(self) -> str:
        if self.scale == "choice":
            return "{" + ", ".join(map(str, self.values)) + "}"
        f = "{:g}" if self.is_integer else "{:.3g}"
        return f"{f.format(self.low)}..{f.format(self.high)} ({self.scale})"

    def to_dict(self) -> dict[str, Any]:
        if self.scale == "choice":
            return {"scale": "choice", "values": list(self.values)}
        return {"scale": self.scale, "low": self.low, "high": self.high}



def fmt_value(v: Any) -> str:
    """A hyperparameter value for tables and messages (``-``: does not apply)."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3g}"
    return str(v)


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
        return _load_space(path)

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
            vals: dict[str, Any] = {}
            for n, p in self.params.items():
                vals[n] = p.values[0 if corner == "low" else -1] if p.scale == "choice" \
                    else (int(getattr(p, corner)) if p.is_integer else getattr(p, corner))
            try:
                self.config_for(base, vals).resolve()
            except ConfigError as e:
                raise ConfigError(f"search space: its {corner} corner gives an invalid "
                                  f"configuration: {e}") from None


def _load_space(path: str | Path) -> SearchSpace:
    from .config import read_toml

    p = Path(path)
    doc = read_toml(p, "space file")
    return SearchSpace.from_dict(doc, source=f"space file {p}")


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


def round_sizes(trials: int, rounds: int) -> list[int]:
    """Trials per round: ``trials`` split as evenly as possible, earlier rounds larger."""
    return [trials // rounds + (1 if r < trials % rounds else 0) for r in range(rounds)]


def round_of(rank: int, trials: int, rounds: int) -> int:
    """The round of the trial with ``rank`` finished-or-running trials before it."""
    acc = 0
    for r, size in enumerate(round_sizes(trials, rounds)):
        acc += size
        if rank < acc:
            return r
    return rounds - 1


# ====================================================================== workers
def _worker_identity() -> dict[str, Any]:
    """Host (with the pid namespace), pid and process start time of this process."""
    host = socket.gethostname()
    with contextlib.suppress(OSError):
        host += "/" + os.readlink("/proc/self/ns/pid")
    return {"host": host, "pid": os.getpid(), "start": _proc_start(os.getpid())}


def _proc_start(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields and fields[0] == "Z":
        return "zombie"
    return fields[19] if len(fields) > 19 else None


def _process_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):
        return False
    now = _proc_start(int(pid))
    if now == "zombie":
        return False
    return start is None or now is None or now == start


def _is_stale(t: Any, me: dict[str, Any], now: float, stale_after: float) -> bool:
    w = t.user_attrs.get("gpunet_worker")
    if isinstance(w, dict) and w.get("host") == me["host"] and w.get("pid") != me["pid"]:
        if not _process_alive(w.get("pid", -1), w.get("start")):
            return True
    hb = t.user_attrs.get("gpunet_heartbeat")
    if hb is None:
        hb = t.datetime_start.timestamp() if t.datetime_start is not None else now
    return now - float(hb) > stale_after


# ====================================================================== optuna glue
def _require_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError("gpunet tune needs optuna: pip install 'gpunet[tune]'") from None
    return optuna


def make_storage(url: str | Path) -> Any:
    """An Optuna storage: a journal file for a path (created with its folder), a
    ``JournalRedisBackend`` for ``redis://``, an ``RDBStorage`` for any other URL
    (``sqlite:///x.db``, ``postgresql://...``)."""
    optuna = _require_optuna()
    s = str(url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if s.startswith("redis://") or s.startswith("rediss://"):
            from optuna.storages.journal import JournalRedisBackend

            return optuna.storages.JournalStorage(JournalRedisBackend(s))
        if "://" in s:
            try:
                return optuna.storages.RDBStorage(s)
            except Exception as e:  # noqa: BLE001 - driver / connection errors vary
                raise ConfigError(f"cannot open storage {s}: {str(e).splitlines()[0]}") from None
        p = Path(s).expanduser()
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create the folder of storage {p}: "
                              f"{e.strerror or type(e).__name__}") from None
        if p.is_dir():
            raise ConfigError(f"storage {p} is a folder; give a journal file path")
        try:
            from optuna.storages.journal import JournalFileBackend
        except ImportError:  # pragma: no cover - optuna < 4
            from optuna.storages import JournalFileStorage as JournalFileBackend
        return optuna.storages.JournalStorage(JournalFileBackend(str(p)))


def _planned_sampler() -> Any:
    """A sampler that returns the values gpunet chose (``sampler.planned``) so that Optuna
    records them as the trial's parameters."""
    optuna = _require_optuna()

    class PlannedSampler(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self.planned: dict[str, Any] = {}

        def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
            return {}

        def sample_relative(self, study: Any, trial: Any, search_space: Any) -> dict[str, Any]:
            return {}

        def sample_independent(self, study: Any, trial: Any, param_name: str,
                               param_distribution: Any) -> Any:
            return self.planned[param_name]

    return PlannedSampler()


# ====================================================================== results
@dataclass
class TrialRow:
    """A finished trial as the table and the plot show it."""

    number: int
    state: str
    round: int
    value: float | None
    val_loss: float | None
    values: dict[str, Any]
    baseline: bool = False
    seconds: float | None = None
    error: str | None = None
    best_epoch: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _rows(trials: list[Any]) -> list[TrialRow]:
    out = []
    for t in trials:
        ua = t.user_attrs
        if ua.get("gpunet_surplus"):
            continue
        vals = ua.get("gpunet_values")
        if not isinstance(vals, dict):
            vals = dict(t.params)
        out.append(TrialRow(
            number=t.number, state=t.state.name, round=int(ua.get("gpunet_round", 0)),
            value=t.value if t.state.name in ("COMPLETE", "PRUNED") else None,
            val_loss=ua.get("gpunet_val_loss"), values=vals,
            baseline=bool(ua.get("gpunet_baseline", False)), seconds=ua.get("gpunet_seconds"),
            error=ua.get("gpunet_error"), best_epoch=ua.get("gpunet_best_epoch")))
    return out


def rank_key(r: TrialRow) -> tuple[float, float, int]:
    """Sort key, best first: higher val accuracy, then lower val loss, then earlier trial."""
    loss = r.val_loss if r.val_loss is not None and math.isfinite(r.val_loss) else math.inf
    return (-(r.value if r.value is not None else -math.inf), loss, r.number)


@dataclass
class TuneResult:
    """What ``tune`` returns; ``summary()`` is the ``--json`` object."""

    study: str
    storage: str
    trials: int
    rounds: int
    epochs: int
    rows: list[TrialRow]
    spaces: list[dict[str, Any]]
    best_config: Path | None
    best_toml: str | None
    plot: Path | None
    seconds: float
    ran_here: int
    note: str | None = None

    def count(self, state: str) -> int:
        return sum(r.state == state for r in self.rows)

    @property
    def finished(self) -> list[TrialRow]:
        return sorted((r for r in self.rows if r.state == "COMPLETE"), key=rank_key)

    @property
    def best(self) -> TrialRow | None:
        f = self.finished
        return f[0] if f else None

    @property
    def baseline(self) -> TrialRow | None:
        return next((r for r in self.rows if r.baseline and r.state == "COMPLETE"), None)

    def summary(self, top: int = 10) -> dict[str, Any]:
        best, base = self.best, self.baseline
        return {
            "study": self.study, "storage": self.storage, "trials": self.trials,
            "rounds": self.rounds, "epochs": self.epochs,
            "complete": self.count("COMPLETE"), "pruned": self.count("PRUNED"),
            "failed": self.count("FAIL"), "running": self.count("RUNNING"),
            "ran_here": self.ran_here,
            "best": best.to_dict() if best else None,
            "baseline": base.to_dict() if base else None,
            "top": [r.to_dict() for r in self.finished[:top]],
            "spaces": self.spaces,
            "best_config": str(self.best_config) if self.best_config else None,
            "plot": str(self.plot) if self.plot else None,
            "seconds": round(self.seconds, 3), "note": self.note,
        }


# ====================================================================== the search
def _settings_key(data: str, base: TrainConfig, space: SearchSpace, epochs: int,
                  baseline: bool) -> dict[str, Any]:
    b = base.to_dict()
    for k in ("device", "out", "data", "memory_budget"):
        b.pop(k, None)
    return {"version": 1, "data": str(data), "epochs": int(epochs), "base": b,
            "space": space.to_dict(), "baseline": bool(baseline)}


def _check_settings(study: Any, mine: dict[str, Any], name: str, storage: str) -> None:
    stored = study.user_attrs.get("gpunet_settings")
    if stored is None:
        study.set_user_attr("gpunet_settings", mine)
        stored = study.user_attrs.get("gpunet_settings")
    if stored == mine:
        return
    diff = [k for k in mine if json.dumps(mine.get(k), sort_keys=True)
            != json.dumps(stored.get(k), sort_keys=True)]
    what = ", ".join(diff) or "settings"
    raise ConfigError(f"study {name!r} in {storage} was run with different {what}; give the "
                      "same options to join it, or a new --study")


def tune(
    data: str,
    trials: int,
    *,
    rounds: int = 1,
    epochs: int = 10,
    space: SearchSpace | str | Path | None = None,
    config: TrainConfig | dict[str, Any] | None = None,
    storage: str | Path | None = None,
    study: str | None = None,
    out: str | Path | None = None,
    seed: int | None = None,
    device: str | None = None,
    pruner: str = "none",
    baseline: bool = True,
    plot: str | Path | None = None,
    callback: Callback | None = None,
    heartbeat: float = 10.0,
    stale_after: float = 120.0,
    max_failures: int = 20,
) -> TuneResult:
    """Random search (``rounds`` > 1: coarse to fine) in a shared Optuna study until it holds
    ``trials`` finished trials; see the module docstring for every convention.

    ``config``: the base training configuration (defaults otherwise; ``seed``, ``device``,
    ``data`` given here win). ``storage``: a journal file path or an Optuna URL (default
    ``<out>/study.journal``); ``study``: its name (default: the data's stem); ``out``: the
    folder for trial runs (deleted as each ends) and ``best.toml`` (default
    ``runs/tune-<study>``). ``callback(event, info)`` hears ``start``, ``round``, ``trial``,
    ``wait`` and ``end``. Writes ``best.toml`` (a ``gpunet train --config`` file) and, with
    ``plot``, a PNG.
    """
    from . import data as data_mod
    from .train import fit

    t_start = time.perf_counter()
    say = callback or (lambda event, info: None)
    if isinstance(trials, bool) or int(trials) < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    if int(rounds) < 1 or int(rounds) > int(trials):
        raise ConfigError(f"--rounds must be between 1 and --trials ({trials}), got {rounds}")
    if int(epochs) < 1:
        raise ConfigError(f"--epochs must be >= 1, got {epochs}")
    if pruner not in ("none", "median"):
        raise ConfigError(f"unknown --pruner {pruner!r}: use median or none")
    if heartbeat <= 0 or stale_after <= heartbeat:
        raise ConfigError("stale_after must exceed the heartbeat interval, both positive")
    if plot is not None:
        _require_matplotlib()
    optuna = _require_optuna()

    base = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config or {})
    over: dict[str, Any] = {"data": data, "epochs": int(epochs), "out": None, "patience": 0}
    if seed is not None:
        over["seed"] = int(seed)
    if device is not None:
        over["device"] = device
    toml_device = base.device   # best.toml keeps the configured device, not this worker's
    base = base.updated(over, source="the tune options")
    base.resolve()  # a bad base configuration fails here, before any trial
    if isinstance(space, (str, Path)):
        space = SearchSpace.load(space)
    space = space if space is not None else default_space(base.optimizer)
    space.check_against(base)

    stem = Path(str(data)).stem or "study"
    name = study or stem
    out_dir = Path(out) if out is not None else Path("runs") / f"tune-{name}"
    storage_desc = str(storage) if storage is not None else str(out_dir / "study.journal")
    # the data first: a bad file fails before any folder or study exists
    ds = data_mod.open_dataset(base.data, x_key=base.x_key, y_key=base.y_key, val=base.val,
                               val_split=base.val_split, seed=base.seed,
                               **({"memory_budget": base.memory_budget}
                                  if base.memory_budget is not None else {}))
    if ds.val is None:
        raise ConfigError(f"{data} has no validation set (no val group and --val-split 0); "
                          "tuning needs one (the test split is never used)")
    ds = dataclasses.replace(ds, test=None)   # nothing leaks from the test split
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create output folder {out_dir}: "
                          f"{e.strerror or type(e).__name__}") from None
    store = make_storage(storage_desc)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = _planned_sampler()
    prun = (optuna.pruners.MedianPruner(n_startup_trials=5,
                                        n_warmup_steps=max(1, int(epochs) // 3))
            if pruner == "median" else optuna.pruners.NopPruner())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        st = optuna.create_study(study_name=name, storage=store, sampler=sampler, pruner=prun,
                                 direction="maximize", load_if_exists=True)
    if st.directions != [optuna.study.StudyDirection.MAXIMIZE]:
        raise ConfigError(f"study {name!r} in {storage_desc} is not a gpunet tune study")
    data_ref = str(Path(base.data).resolve()) if Path(base.data).exists() else str(base.data)
    _check_settings(st, _settings_key(data_ref, base, space, epochs, baseline), name,
                    storage_desc)
    space0 = st.user_attrs.get("gpunet_space_0")
    if space0 is None:
        st.set_user_attr("gpunet_space_0", space.to_dict())

    me = _worker_identity()
    trials_dir = out_dir / "trials"
    say("start", {"study": name, "storage": storage_desc, "trials": int(trials),
                  "rounds": int(rounds), "epochs": int(epochs), "space": space.describe(),
                  "device": base.device, "n_train": ds.train.n, "n_val": ds.val.n})

    def all_trials() -> list[Any]:
        return st.get_trials(deepcopy=False)

    def fail_stale() -> None:
        now = time.time()
        for t in all_trials():
            if t.state.name == "RUNNING" and _is_stale(t, me, now, stale_after):
                with contextlib.suppress(Exception):  # another worker may beat us to it
                    st.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
                    say("stale", {"number": t.number})
        # folders of finished trials of this host (a killed worker leaves its folder)
        if trials_dir.exists():
            states = {t.number: t.state.name for t in all_trials()}
            for d in trials_dir.iterdir():
                num = d.name.rsplit("-", 1)[-1]
                if d.name.startswith(f"{name}-") and num.isdigit() \
                        and states.get(int(num), "RUNNING") != "RUNNING":
                    shutil.rmtree(d, ignore_errors=True)

    def active(ts: list[Any]) -> list[Any]:
        return [t for t in ts if t.state.name in ("COMPLETE", "PRUNED", "RUNNING")
                and not t.user_attrs.get("gpunet_surplus")]

    def space_for(r: int, trial: Any) -> SearchSpace:
        """Round r's space: stored, or made from round r - 1 once it has finished."""
        key = f"gpunet_space_{r}"
        last_beat = time.monotonic()
        waited = False
        while True:
            stored = st.user_attrs.get(key)
            if stored is not None:
                return SearchSpace.from_json(stored)
            ts = all_trials()
            prev_running = [t for t in ts if t.state.name == "RUNNING" and t.number != trial.number
                            and t.user_attrs.get("gpunet_round") == r - 1]
            if not prev_running:
                break
            if not waited:
                say("wait", {"round": r + 1, "running": [t.number for t in prev_running]})
                waited = True
            time.sleep(0.5)
            if time.monotonic() - last_beat > heartbeat:
                trial.set_user_attr("gpunet_heartbeat", time.time())
                last_beat = time.monotonic()
            fail_stale()
        prev = SearchSpace.from_json(st.user_attrs.get(f"gpunet_space_{r - 1}")
                                     or space_for(r - 1, trial).to_dict())
        rows = [x for x in _rows(all_trials()) if x.round == r - 1 and x.state == "COMPLETE"
                and not x.baseline]
        rows.sort(key=rank_key)
        k = max(2, math.ceil(TOP_FRACTION * len(rows)))
        if len(rows) < 2:
            new, note = prev, f"only {len(rows)} finished trial(s) in round {r}: range kept"
        else:
            new = prev.shrink([x.values for x in rows[:k]])
            note = f"around the best {min(k, len(rows))} of {len(rows)} round-{r} trials"
        st.set_user_attr(key, new.to_dict())
        stored = st.user_attrs.get(key) or new.to_dict()  # first writer wins a race
        chosen = SearchSpace.from_json(stored)
        say("round", {"round": r + 1, "rounds": int(rounds), "note": note,
                      "changes": [(n, prev.params[n].describe(), p.describe())
                                  for n, p in chosen.params.items() if n in prev.params]})
        return chosen

    ran_here = 0
    failures = 0
    note = None
    while True:
        fail_stale()
        ts = all_trials()
        done = sum(t.state.name in ("COMPLETE", "PRUNED") for t in ts)
        if done >= trials:
            break
        if len(active(ts)) >= trials:
            note = "the remaining trials are running in other workers"
            break
        if failures >= max_failures:
            raise GpunetError(f"the last {failures} trials of this worker all failed; stopping "
                              "(see the errors in the study)")
        trial = st.ask()
        trial.set_user_attr("gpunet_worker", me)
        trial.set_user_attr("gpunet_heartbeat", time.time())
        rank = sum(1 for t in active(all_trials()) if t.number < trial.number)
        if rank >= trials:  # another worker claimed the last slot at the same moment
            trial.set_user_attr("gpunet_surplus", True)
            st.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            continue
        rnd = round_of(rank, int(trials), int(rounds))
        trial.set_user_attr("gpunet_round", rnd)
        is_base = baseline and rank == 0
        if is_base:
            values = {n: _base_value(base, n) for n in space.params}
            cfg = TrainConfig(**dataclasses.asdict(base))
            trial.set_user_attr("gpunet_baseline", True)
        else:
            sp = space if rnd == 0 else space_for(rnd, trial)
            rng = np.random.default_rng(np.random.SeedSequence(base.seed, spawn_key=(
                TUNE_STREAM, trial.number)))
            values = sp.sample(rng)
            sampler.planned = {n: values[n] for n in sp.params}
            for p in sp.params.values():
                _suggest(trial, p)
            cfg = sp.config_for(base, values)
        trial.set_user_attr("gpunet_values", _jsonable(values))
        cfg.out = str(trials_dir / f"{name}-{trial.number}")
        ran_here += 1
        row = _run_trial(fit, st, trial, cfg, ds, pruner != "none", heartbeat, optuna)
        shutil.rmtree(cfg.out, ignore_errors=True)
        failures = failures + 1 if row["state"] == "FAIL" else 0
        say("trial", {**row, "number": trial.number, "round": rnd + 1, "rounds": int(rounds),
                      "values": values, "baseline": is_base})

    rows = _rows(all_trials())
    spaces = []
    for r in range(int(rounds)):
        s = st.user_attrs.get(f"gpunet_space_{r}")
        if s is not None:
            spaces.append({"round": r + 1, **s})
    result = TuneResult(study=name, storage=storage_desc, trials=int(trials),
                        rounds=int(rounds), epochs=int(epochs), rows=rows, spaces=spaces,
                        best_config=None, best_toml=None, plot=None,
                        seconds=time.perf_counter() - t_start, ran_here=ran_here, note=note)
    best = result.best
    if best is not None:
        result.best_toml = best_config_toml(best, dataclasses.replace(base, device=toml_device),
                                            space, name, int(epochs))
        result.best_config = out_dir / "best.toml"
        _atomic_write(result.best_config, result.best_toml)
    if plot is not None:
        result.plot = write_plot(result, plot)
    result.seconds = time.perf_counter() - t_start
    say("end", result.summary())
    return result


def _run_trial(fit: Any, st: Any, trial: Any, cfg: TrainConfig, ds: Any, prune: bool,
               heartbeat: float, optuna: Any) -> dict[str, Any]:
    """Train one trial and tell the study how it ended."""
    state = optuna.trial.TrialState
    last_beat = [time.monotonic()]

    def cb(event: str, info: dict[str, Any]) -> None:
        if time.monotonic() - last_beat[0] > heartbeat:
            trial.set_user_attr("gpunet_heartbeat", time.time())
            last_beat[0] = time.monotonic()
        if event == "epoch" and info.get("val_acc") is not None:
            trial.report(float(info["val_acc"]), int(info["epoch"]))
            if prune and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {info['epoch']}")

    t0 = time.perf_counter()
    out: dict[str, Any] = {"state": "FAIL", "value": None, "val_loss": None, "error": None}
    try:
        res = fit(cfg, dataset=ds, callback=cb)
    except optuna.TrialPruned as e:
        trial.set_user_attr("gpunet_seconds", round(time.perf_counter() - t0, 3))
        _tell(st, trial, None, state.PRUNED)
        out.update(state="PRUNED", error=str(e))
        return out
    except (TrainingDiverged, GpunetError, FloatingPointError, MemoryError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        trial.set_user_attr("gpunet_error", msg)
        trial.set_user_attr("gpunet_seconds", round(time.perf_counter() - t0, 3))
        _tell(st, trial, None, state.FAIL)
        out.update(error=msg)
        return out
    except BaseException:
        with contextlib.suppress(Exception):
            trial.set_user_attr("gpunet_error", "interrupted")
            _tell(st, trial, None, state.FAIL)
        raise
    best_rec = next((h for h in res.history if h.get("epoch") == res.best_epoch), {})
    value = float(res.best_value) if res.best_value is not None else float("nan")
    val_loss = best_rec.get("val_loss")
    trial.set_user_attr("gpunet_val_loss", val_loss)
    trial.set_user_attr("gpunet_best_epoch", int(res.best_epoch))
    trial.set_user_attr("gpunet_seconds", round(time.perf_counter() - t0, 3))
    if not math.isfinite(value):
        _tell(st, trial, None, state.FAIL)
        out.update(error="no finite validation accuracy")
        return out
    told = _tell(st, trial, value, state.COMPLETE)
    out.update(state="COMPLETE" if told else "FAIL", value=value, val_loss=val_loss,
               seconds=round(time.perf_counter() - t0, 3),
               error=None if told else "marked failed by another worker (no heartbeat)")
    return out


def _suggest(trial: Any, p: Param) -> None:
    """Record ``p``'s planned value as an Optuna parameter (the sampler returns it)."""
    if p.scale == "choice":
        trial.suggest_categorical(p.name, list(p.values))
    elif p.is_integer:
        trial.suggest_int(p.name, int(p.low), int(p.high), log=p.scale in ("log2", "pow2"))
    else:
        trial.suggest_float(p.name, p.low, p.high, log=p.scale == "log")


def _tell(st: Any, trial: Any, value: float | None, state: Any) -> bool:
    """Tell the study; False if another worker already marked the trial (stale heartbeat)."""
    try:
        st.tell(trial, value, state=state)
        return True
    except (ValueError, RuntimeError):
        return False


def _base_value(base: TrainConfig, name: str) -> Any:
    """What the baseline trains with for ``name`` (None where it does not apply)."""
    if name == "width":
        if len(set(base.hidden)) > 1:
            return ",".join(map(str, base.hidden))
        return base.hidden[0] if base.hidden else None
    if name == "depth":
        return len(base.hidden)
    r = base.resolve()
    if name == "lr_decay_rate" and r.lr_schedule != "inverse":
        return None
    if name in ("lr_gamma", "lr_step_size") and r.lr_schedule not in ("step", "exp"):
        return None
    return getattr(r, name, None)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


# ====================================================================== outputs
def best_config_toml(best: TrialRow, base: TrainConfig, space: SearchSpace, study: str,
                     epochs: int) -> str:
    """The best trial's configuration as a ``gpunet train --config`` file."""
    if best.baseline:
        cfg = TrainConfig(**dataclasses.asdict(base))
    else:
        cfg = space.config_for(base, {n: best.values[n] for n in space.params
                                      if n in best.values})
    cfg = cfg.resolve()
    cfg.out = None
    cfg.epochs = int(epochs)
    head = (f"# gpunet tune: best trial #{best.number} of study {study!r} "
            f"({'baseline' if best.baseline else f'round {best.round + 1}'}): "
            f"val_acc {best.value:.4f} after {epochs} epochs\n"
            f"# train it with: gpunet train --config best.toml\n")
    return head + cfg.to_toml()


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'gpunet[plot]'") from None


def write_plot(result: TuneResult, path: str | Path) -> Path:
    """Validation accuracy against the learning rate (log axis), one colour per round, each
    round's box (its lr range by its accuracy range), the baseline as a dashed line and the
    best trial as a star. Drawn with the Agg canvas; pyplot's global state is not touched."""
    _require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    p = Path(path)
    fig = Figure(figsize=(10, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
              "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]
    done = [r for r in result.rows if r.value is not None and r.values.get("lr")]
    accs = [float(r.value) for r in done]
    # the axis shows the good region; trials far below it sit on the bottom edge as triangles
    floor = 0.0
    if accs:
        floor = float(np.median(accs)) - 0.05
        if result.baseline is not None:
            floor = min(floor, float(result.baseline.value) - 0.03)
        floor = max(0.0, min(floor, max(accs) - 0.02))
    below = 0
    for k in range(result.rounds):
        rows = [r for r in done if r.round == k and not r.baseline]
        c = colors[k % len(colors)]
        if rows:
            ins = [r for r in rows if r.value >= floor]
            out = [r for r in rows if r.value < floor]
            below += len(out)
            ax.scatter([r.values["lr"] for r in ins], [r.value for r in ins], s=28,
                       color=c, alpha=0.85, label=f"round {k + 1} ({len(rows)} trials)",
                       zorder=3)
            if out:
                ax.scatter([r.values["lr"] for r in out], [floor] * len(out), marker="v",
                           s=36, color=c, alpha=0.85, zorder=3, clip_on=False)
        sp = next((s for s in result.spaces if s["round"] == k + 1), None)
        lr = (sp or {}).get("params", {}).get("lr")
        if lr and lr.get("scale") != "choice" and rows:
            ys = [r.value for r in rows]
            y0, y1 = max(min(ys), floor), max(ys)
            pad = 0.003 * (k + 1)
            ax.add_patch(Rectangle((lr["low"], y0 - pad), lr["high"] - lr["low"],
                                   y1 - y0 + 2 * pad, fill=False, edgecolor=c, lw=1.5,
                                   ls="--", zorder=2, label=f"round {k + 1} box: lr "
                                   f"{lr['low']:.2g}..{lr['high']:.2g}"))
    base = result.baseline
    if base is not None:
        ax.axhline(base.value, color="black", ls=":", lw=1)
        if base.values.get("lr"):
            ax.scatter([base.values["lr"]], [base.value], marker="s", color="black", s=30,
                       zorder=4, label=f"baseline (defaults): {base.value:.4f}")
    best = result.best
    if best is not None and best.values.get("lr"):
        ax.scatter([best.values["lr"]], [best.value], marker="*", s=220, color="gold",
                   edgecolor="black", zorder=5, label=f"best #{best.number}: {best.value:.4f}")
    if below:
        ax.annotate(f"{below} trial(s) below {floor:.3f} (triangles)", (0.99, 0.01),
                    xycoords="axes fraction", fontsize=8, color="dimgray", ha="right")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel(f"validation accuracy (best of {result.epochs} epochs)")
    failed = result.count("FAIL")
    ax.set_title(f"gpunet tune: study {result.study!r}, {result.count('COMPLETE')} complete"
                 + (f", {failed} failed" if failed else "")
                 + (f", {result.count('PRUNED')} pruned" if result.count("PRUNED") else ""))
    ax.set_ylim(floor - 0.005, 1.003)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0)
    fig.tight_layout()
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, format="png")
    return p


__all__ = [
    "Param", "SearchSpace", "TrialRow", "TuneResult", "default_space", "make_storage",
    "round_of", "round_sizes", "tune", "best_config_toml", "write_plot", "SCALES",
    "DEFAULT_SCALES", "TUNABLE",
]
