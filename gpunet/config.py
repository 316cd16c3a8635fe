"""The resolved training configuration: one dataclass, loaded from TOML, written as TOML.

Precedence (lowest first): the defaults here, then the checkpoint's configuration when
resuming, then a ``--config FILE.toml``, then options given explicitly on the command line.
``None`` means "the optimizer's / schedule's own default" and is resolved by ``resolve()``.

A config file is flat (``lr = 0.003``, ``hidden = [256, 128]``) or has the same keys under a
``[train]`` table; keys may be written with ``-`` or ``_``. Unknown keys are an error.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from . import layers, optim
from .errors import ConfigError
from .text import short_repr

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

#: the hyperparameters an optimizer may take from the configuration
OPTIMIZER_KEYS = ("lr", "beta1", "beta2", "eps")

# The option lists come from the registries that implement them (an entry added there is
# accepted here): optimizers from ``optim.OPTIMIZERS``, schedules from ``optim.SCHEDULES``,
# activations from ``layers.ACTIVATIONS``.
#: per-optimizer defaults for ``lr``, ``beta1``, ``beta2``, ``eps`` (None: not used)
OPTIMIZER_DEFAULTS: dict[str, dict[str, float | None]] = {
    name: {k: cls.train_defaults.get(k) for k in OPTIMIZER_KEYS}
    for name, cls in optim.OPTIMIZERS.items()
}
SCHEDULES: tuple[str, ...] = tuple(optim.SCHEDULES)
ACTIVATIONS: tuple[str, ...] = tuple(layers.ACTIVATIONS)
DEVICES = ("auto", "cpu", "gpu")
CLASS_WEIGHTS = ("none", "balanced")

#: keys that fix the model or the data stream; they cannot change when resuming
IMMUTABLE_ON_RESUME = (
    "x_key", "y_key", "val", "val_split", "seed", "hidden", "batchnorm", "dropout",
    "activation", "optimizer", "bn_momentum", "drop_last",
)


@dataclass
class TrainConfig:
    """Every setting of a training run (see ``gpunet train --help`` for each option)."""

    data: str | None = None
    val: str | None = None
    val_split: float = 0.1
    x_key: str | None = None
    y_key: str | None = None
    memory_budget: int | None = None  # None: gpunet.data.DEFAULT_MEMORY_BUDGET
    allow_external_data: bool = False  # read HDF5 links / virtual datasets / external storage
    hidden: list[int] = field(default_factory=lambda: [256, 128])
    batchnorm: bool = True
    dropout: float = 0.0
    activation: str = "relu"
    optimizer: str = "adam"
    lr: float | None = None
    beta1: float | None = None
    beta2: float | None = None
    eps: float | None = None
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"
    lr_step_size: int = 10
    lr_gamma: float | None = None
    lr_decay_rate: float = 1.0
    epochs: int = 40
    batch_size: int = 64
    bn_momentum: float = 0.1
    patience: int = 0
    class_weights: str = "none"
    seed: int = 0
    device: str = "auto"
    out: str | None = None
    save_every: int = 0
    cuda_graph: bool = True
    tf32: bool = False
    drop_last: bool = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, d: dict[str, Any], base: TrainConfig | None = None,
                  source: str = "configuration") -> TrainConfig:
        """``base`` (or the defaults) with the entries of ``d`` applied and validated."""
        cfg = TrainConfig(**asdict(base)) if base is not None else TrainConfig()
        known = set(cls.keys())
        for key, value in d.items():
            k = key.replace("-", "_")
            if k not in known:
                raise ConfigError(f"unknown key {short_repr(key)} in {source}; known keys: "
                                  + ", ".join(sorted(known)))
            setattr(cfg, k, _coerce(k, value, source))
        return cfg

    def updated(self, d: dict[str, Any], source: str = "command line") -> TrainConfig:
        return TrainConfig.from_dict(d, base=self, source=source)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # ------------------------------------------------------------------ resolution
    def resolve(self) -> TrainConfig:
        """Fill optimizer / schedule defaults, check every value; return the result."""
        cfg = TrainConfig(**asdict(self))
        if cfg.optimizer not in OPTIMIZER_DEFAULTS:
            raise ConfigError(f"unknown optimizer {short_repr(cfg.optimizer)}: use "
                              + ", ".join(OPTIMIZER_DEFAULTS))
        for k, v in OPTIMIZER_DEFAULTS[cfg.optimizer].items():
            if getattr(cfg, k) is None:
                setattr(cfg, k, v)
        if cfg.lr_gamma is None:
            cfg.lr_gamma = 0.1 if cfg.lr_schedule == "step" else 0.95
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first bad value."""
        def bad(msg: str) -> None:
            raise ConfigError(msg)

        for name, lo, hi, note in _INT_RANGES:
            v = getattr(self, name)
            if v < lo:
                bad(f"{_opt(name)} must be >= {lo}{note}, got {v}")
            if v > hi:
                bad(f"{_opt(name)} must be at most {hi}, got {short_repr(v)}")
        for name in ("lr", "eps", "lr_gamma"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                bad(f"{_opt(name)} must be a positive number, got {v}")
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v < 1.0:
                bad(f"--{name} must be in [0, 1), got {v}")
        for name in ("weight_decay", "lr_decay_rate"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                bad(f"{_opt(name)} must be >= 0, got {v}")
        if not 0.0 <= self.dropout < 1.0:
            bad(f"--dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.val_split < 1.0:
            bad(f"--val-split must be in [0, 1), got {self.val_split}")
        if not 0.0 <= self.bn_momentum <= 1.0:
            bad(f"--bn-momentum must be in [0, 1], got {self.bn_momentum}")
        if self.batch_size < 2 and self.batchnorm:
            bad("--batch-size 1 cannot train with batch norm (its batch variance needs at "
                "least 2 samples); use --batch-size 2 or more, or --no-batchnorm")
        if any(not 1 <= h <= MAX_DIM for h in self.hidden):
            bad(f"--hidden widths must be integers in 1..{MAX_DIM}, got "
                f"{short_repr(self.hidden)}")
        for name, label, allowed in (("lr_schedule", "--lr-schedule", SCHEDULES),
                                     ("activation", "activation", ACTIVATIONS),
                                     ("class_weights", "--class-weights", CLASS_WEIGHTS)):
            if getattr(self, name) not in allowed:
                use = " or ".join(allowed) if len(allowed) == 2 else ", ".join(allowed)
                bad(f"unknown {label} {short_repr(getattr(self, name))}: use {use}")
        dev = self.device
        if not (dev in DEVICES or re.fullmatch(r"gpu:[0-9]{1,9}", dev)):
            bad(f"unknown --device {short_repr(dev)}: use auto, cpu, gpu or gpu:N")
        if self.memory_budget is not None and not 1 <= self.memory_budget <= MAX_INT:
            bad(f"--memory-budget must be in 1..{MAX_INT} bytes, got {self.memory_budget}")

    def optimizer_kwargs(self) -> dict[str, float]:
        """Keyword arguments for ``optim.make_optimizer`` (call on a resolved config): ``lr``,
        ``weight_decay`` and the optimizer's other ``train_defaults`` keys, under the names
        its ``__init__`` takes (``config_keywords``)."""
        cls = optim.OPTIMIZERS[self.optimizer]
        kw: dict[str, float] = {"lr": float(self.lr or 0), "weight_decay": self.weight_decay}
        for key in cls.train_defaults:
            if key != "lr":
                kw[cls.config_keywords.get(key, key)] = getattr(self, key)
        return kw

    def schedule_kwargs(self) -> dict[str, float]:
        """Keyword arguments for ``optim.make_schedule`` (besides name and epochs)."""
        if self.lr_schedule == "step":
            return {"step_size": self.lr_step_size, "gamma": float(self.lr_gamma or 0.1)}
        if self.lr_schedule == "exp":
            return {"gamma": float(self.lr_gamma or 0.95)}
        if self.lr_schedule == "inverse":
            return {"decay_rate": self.lr_decay_rate}
        return {}

    # ------------------------------------------------------------------ TOML
    def to_toml(self) -> str:
        """The configuration as TOML (``None`` values are left out, as TOML has no null)."""
        lines = ["# gpunet train: resolved configuration", "[train]"]
        for k, v in asdict(self).items():
            if v is None:
                continue
            lines.append(f"{k} = {_toml_value(v)}")
        return "\n".join(lines) + "\n"


#: the most bytes a TOML file (config, search space) may have
MAX_TOML_BYTES = 1 << 20


def read_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A TOML document, or a one-line ``ConfigError`` naming ``what`` and the problem.

    Only a regular file of at most ``MAX_TOML_BYTES`` is read (a FIFO, a device such as
    /dev/zero or a folder is refused before reading, without blocking); a document nested
    too deeply for the parser is an error too."""
    p = Path(path)
    text = _read_bounded(p, what)
    try:
        return tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {p} is not valid TOML (not UTF-8 text)") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{what} {p} is not valid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{what} {p} is nested too deeply to read") from None


def _read_bounded(p: Path, what: str) -> bytes:
    """The bytes of the regular file ``p`` (at most ``MAX_TOML_BYTES``)."""
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {p}") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {p} is a directory") from None
    except ValueError:  # an embedded NUL byte
        raise ConfigError(f"{what} path {short_repr(str(p))} is not a valid path") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ConfigError(f"{what} {p} is a directory")
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{what} {p} is not a regular file")
        chunks: list[bytes] = []
        left = MAX_TOML_BYTES + 1
        while left > 0 and (chunk := os.read(fd, left)):
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if len(data) > MAX_TOML_BYTES:
        raise ConfigError(f"{what} {p} is larger than {MAX_TOML_BYTES >> 20} MiB")
    return data


def load_toml(path: str | Path) -> dict[str, Any]:
    """The table of a config file: the ``[train]`` table if present, else the top level."""
    p = Path(path)
    doc = read_toml(p)
    if "train" in doc and isinstance(doc["train"], dict):
        extra = [k for k in doc if k != "train"]
        if extra:
            raise ConfigError(f"config file {p}: keys outside [train]: {', '.join(extra)}")
        return dict(doc["train"])
    return dict(doc)


#: the largest value an integer setting may take: checkpoints store the configuration as JSON,
#: whose numbers are exact up to 2**53 (gpunet.checkpoint.schema.MAX_INT, tested equal)
MAX_INT = 2**53
#: seeds are integers in 0..MAX_INT (stored in checkpoints and config.toml)
MAX_SEED = MAX_INT
#: the most epochs a run may have
MAX_EPOCHS = 1_000_000
#: the largest batch size and hidden width (one array dimension)
MAX_DIM = 2**31 - 1


def parse_hidden(text: str | list[int] | tuple[int, ...]) -> list[int]:
    """``"512,256"`` -> ``[512, 256]``; ``""``, ``"none"`` or ``"0"`` -> ``[]`` (softmax
    regression). Each width is an integer in 1..``MAX_DIM``."""
    if isinstance(text, (list, tuple)):
        items = list(text)
    else:
        s = str(text).strip().lower()
        if s in ("", "none", "0", "[]"):
            return []
        items = [t for t in re.split(r"[,\s]+", s.strip("[]")) if t]
    out: list[int] = []
    for t in items:
        try:
            if isinstance(t, bool) or not isinstance(t, (int, float, str)):
                raise TypeError
            v = int(t)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"--hidden must be comma-separated integers like 512,256, "
                              f"got {short_repr(text)}") from None
        if not 1 <= v <= MAX_DIM or (isinstance(t, float) and t != v):
            raise ConfigError(f"--hidden widths must be integers in 1..{MAX_DIM}, "
                              f"got {short_repr(text)}")
        out.append(v)
    return out


_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
               "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
               "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
               "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}


def parse_size(text: str | int) -> int:
    """``"512MB"``, ``"2g"``, ``"1000000"`` -> bytes (binary units: 1 MB = 2**20 bytes);
    at least 1 byte and at most ``MAX_INT``."""
    if isinstance(text, int) and not isinstance(text, bool):
        value: float = text
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*",
                         str(text).lower()[:100])
        if isinstance(text, bool) or not m or m.group(2) not in _SIZE_UNITS:
            raise ConfigError(f"--memory-budget must be a size like 500000000, 512MB or 2GB, "
                              f"got {short_repr(text)}")
        value = float(m.group(1)) * _SIZE_UNITS[m.group(2)]
    if not value >= 1:
        raise ConfigError(f"--memory-budget must be positive, got {short_repr(text)}")
    if value > MAX_INT:
        raise ConfigError(f"--memory-budget must be at most {MAX_INT} bytes (8 EiB), "
                          f"got {short_repr(text)}")
    return int(value)


# ---------------------------------------------------------------------- helpers
#: (key, lowest, highest, note on the lowest) of each integer setting
_INT_RANGES = (
    ("epochs", 1, MAX_EPOCHS, ""), ("batch_size", 1, MAX_DIM, ""),
    ("patience", 0, MAX_INT, " (0 turns early stopping off)"),
    ("save_every", 0, MAX_INT, " (0: only at epoch ends)"), ("seed", 0, MAX_SEED, ""),
    ("lr_step_size", 1, MAX_INT, ""),
)
#: settings that have no command-line option of their own
_NO_OPTION = ("lr_step_size", "lr_gamma", "lr_decay_rate")


def _opt(name: str) -> str:
    """How messages name a setting: its option (``--lr-schedule``), else its key."""
    return name if name in _NO_OPTION else "--" + name.replace("_", "-")


_FLOAT_KEYS = {"val_split", "dropout", "lr", "beta1", "beta2", "eps", "weight_decay",
               "lr_gamma", "lr_decay_rate", "bn_momentum"}
_INT_KEYS = {"epochs", "batch_size", "patience", "seed", "save_every", "lr_step_size"}
_BOOL_KEYS = {"batchnorm", "cuda_graph", "tf32", "drop_last", "allow_external_data"}
_STR_KEYS = {"data", "val", "x_key", "y_key", "optimizer", "lr_schedule", "class_weights",
             "device", "out", "activation"}


def _coerce(key: str, value: Any, source: str) -> Any:
    """Check and convert one value read from a config file, checkpoint or the command line."""
    def wrong(kind: str) -> ConfigError:
        return ConfigError(f"{key} in {source} must be {kind}, got {short_repr(value)}")

    if value is None:
        return None
    if key == "hidden":
        return parse_hidden(value)
    if key == "memory_budget":
        return parse_size(value)
    if key in _BOOL_KEYS:
        if isinstance(value, bool):
            return value
        raise wrong("true or false")
    if key in _INT_KEYS:
        return _coerce_int(value, wrong)
    if key in _FLOAT_KEYS:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise wrong("a number")
        try:
            f = float(value)
        except (ValueError, OverflowError):
            raise wrong("a number") from None
        if not math.isfinite(f):
            raise wrong("a finite number")
        return f
    if key in _STR_KEYS:
        if not isinstance(value, str):
            raise wrong("a string")
        if "\x00" in value:
            raise wrong("a string without NUL characters")
        return value.lower() if key in ("optimizer", "lr_schedule", "class_weights",
                                        "device", "activation") else value
    return value


def _coerce_int(value: Any, wrong: Any) -> int:
    """An integer setting from an int, an integral float or a numeric string."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise wrong("an integer")
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip()) if isinstance(value, str) else _integral(value)
    except (ValueError, OverflowError):
        pass
    try:
        return _integral(float(value))
    except (ValueError, OverflowError):
        raise wrong("an integer") from None


def _integral(f: float) -> int:
    if not (math.isfinite(f) and f.is_integer()):
        raise ValueError(f)
    return int(f)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string
