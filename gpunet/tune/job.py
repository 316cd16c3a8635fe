"""A search job: the checked options every worker of one ``tune`` call runs with.

``make_job`` checks the options and builds the base configuration and the space; ``Job``
opens the study (recording the settings every worker must share), makes the ``Search`` of
one worker, and travels to a worker process as JSON (``to_spec`` / ``from_spec``; no pickle).
``check_outputs`` refuses, before any trial, to overwrite a file gpunet did not write (the
plot, ``best.toml``) or to use a linked ``trials`` folder.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..errors import ConfigError
from .report import BEST_TOML_HEAD, is_our_plot
from .space import SearchSpace, default_space
from .study import TuneStudy

Say = Callable[[str, dict[str, Any]], None]

#: the largest ``--trials``: a million trials is far beyond any search one study holds (a
#: larger total would only run until killed)
MAX_TRIALS = 1_000_000
#: the most ``--rounds`` (each round is at least one trial)
MAX_ROUNDS = 1000


@dataclass
class Job:
    """One search: the data, the study's total (``trials``), rounds, epochs, the base
    configuration (``toml_device``: the device ``best.toml`` keeps), the space, the study
    ``name`` in ``storage``, the ``out_dir``, the stale-trial and retry settings, the pack
    size and the number of pool workers."""

    data: str
    trials: int
    rounds: int
    epochs: int
    base: TrainConfig
    toml_device: str
    space: SearchSpace
    name: str
    out_dir: Path
    storage: str
    pruner: str
    baseline: bool
    heartbeat: float
    stale_after: float
    retry_for: float
    max_failures: int
    #: ``--pack``: K, or ``"auto"`` (``gpunet.tune.packs``)
    pack: int | str = "auto"
    #: worker processes the pool started (1: this process, or a hand-started worker)
    workers: int = 1

    def open_study(self, say: Say) -> TuneStudy:
        """Open (or create) the study, check or record the shared settings and store round
        1's space."""
        st = TuneStudy.open(self.name, self.storage, self.out_dir / "trials",
                            pruner=self.pruner, epochs=self.epochs, stale_after=self.stale_after,
                            heartbeat=self.heartbeat, retry_for=self.retry_for, say=say)
        st.check_settings(settings_key(self.base, self.space, self.epochs, self.baseline))
        if st.space_attr(0) is None:
            st.store_space(0, self.space.to_dict())
        return st

    def search(self, st: TuneStudy, ds: Any, say: Say) -> Any:
        """This worker's ``Search`` over ``st``."""
        from ..packed import fit_packed
        from ..train import fit
        from .search import Search

        return Search(st, self.base, self.space, ds, trials=self.trials, rounds=self.rounds,
                      baseline=self.baseline, prune=self.pruner != "none",
                      heartbeat=self.heartbeat, max_failures=self.max_failures, say=say,
                      fit=fit, fit_packed=fit_packed, pack=self.pack, workers=self.workers)

    def to_spec(self, device: str | None) -> dict[str, Any]:
        """The job as JSON for a worker process that trains on ``device``."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d.update(base=self.base.to_dict(), space=self.space.to_dict(),
                 out_dir=str(self.out_dir), device=device)
        return d

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Job:
        """The job ``to_spec`` wrote, on the worker's device."""
        base = TrainConfig.from_dict(spec["base"], source="the worker's job")
        if spec.get("device") is not None:
            base = base.updated({"device": spec["device"]}, source="the worker's job")
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in spec.items() if k in fields}
        kw.update(base=base, space=SearchSpace.from_json(spec["space"]),
                  out_dir=Path(spec["out_dir"]))
        return cls(**kw)


def check_options(trials: int, rounds: int, epochs: int, pruner: str, heartbeat: float,
                  stale_after: float, retry_for: float = 30.0) -> None:
    """One-line ``ConfigError`` for an option out of range (``--trials`` at most
    ``MAX_TRIALS``, ``--rounds`` at most ``MAX_ROUNDS``; the configuration bounds epochs)."""
    if isinstance(trials, bool) or int(trials) < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    if int(trials) > MAX_TRIALS:
        raise ConfigError(f"--trials must be at most {MAX_TRIALS:,}, got {trials}")
    if isinstance(rounds, bool) or not 1 <= int(rounds) <= min(int(trials), MAX_ROUNDS):
        raise ConfigError(f"--rounds must be between 1 and --trials ({trials}; at most "
                          f"{MAX_ROUNDS}), got {rounds}")
    if int(epochs) < 1:
        raise ConfigError(f"--epochs must be >= 1, got {epochs}")
    if pruner not in ("none", "median"):
        raise ConfigError(f"unknown --pruner {pruner!r}: use median or none")
    if not (math.isfinite(heartbeat) and math.isfinite(stale_after)) or heartbeat <= 0 \
            or stale_after <= heartbeat or stale_after > 1e7:
        raise ConfigError("--stale-after must exceed --heartbeat, both positive seconds "
                          f"(got {heartbeat:g} and {stale_after:g})")
    if not math.isfinite(retry_for) or retry_for < 0 or retry_for > 1e7:
        raise ConfigError(f"--storage-retry must be >= 0 seconds, got {retry_for:g}")


def base_config(config: TrainConfig | dict[str, Any] | None, data: str, epochs: int,
                seed: int | None, device: str | None) -> tuple[TrainConfig, str]:
    """The checked base configuration (the tune options win) and the configured device,
    which ``best.toml`` keeps (not this worker's)."""
    base = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config or {})
    over: dict[str, Any] = {"data": data, "epochs": int(epochs), "out": None, "patience": 0}
    if seed is not None:
        over["seed"] = int(seed)
    if device is not None:
        over["device"] = device
    toml_device = base.device
    base = base.updated(over, source="the tune options")
    base.resolve()  # a bad base configuration fails here, before any trial
    return base, toml_device


def search_space(space: SearchSpace | str | Path | None, base: TrainConfig) -> SearchSpace:
    """The space given (a ``SearchSpace`` or a space file), else the default one."""
    if isinstance(space, (str, Path)):
        space = SearchSpace.load(space)
    space = space if space is not None else default_space(base.optimizer)
    space.check_against(base)
    return space


def open_data(base: TrainConfig, data: str) -> Any:
    """The training and validation splits; the test split is dropped (never read)."""
    from ..data import open_dataset

    ds = open_dataset(base.data, x_key=base.x_key, y_key=base.y_key, val=base.val,
                      val_split=base.val_split, seed=base.seed,
                      allow_external=base.allow_external_data,
                      **({"memory_budget": base.memory_budget}
                         if base.memory_budget is not None else {}))
    if ds.val is None:
        raise ConfigError(f"{data} has no validation set (no val group and --val-split 0); "
                          "tuning needs one (the test split is never used)")
    return dataclasses.replace(ds, test=None)


def make_folder(out_dir: Path) -> None:
    """Create ``out_dir`` (one-line ``ConfigError`` where it cannot be)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create output folder {out_dir}: "
                          f"{e.strerror or type(e).__name__}") from None


def settings_key(base: TrainConfig, space: SearchSpace, epochs: int,
                 baseline: bool) -> dict[str, Any]:
    """What every worker of a study must agree on: the data, epochs, base configuration
    (less the per-worker settings), space and baseline."""
    data = str(Path(base.data).resolve()) if Path(base.data).exists() else str(base.data)
    b = base.to_dict()
    for k in ("device", "out", "data", "memory_budget"):
        b.pop(k, None)
    return {"version": 1, "data": data, "epochs": int(epochs), "base": b,
            "space": space.to_dict(), "baseline": bool(baseline)}


def check_outputs(out_dir: Path, plot: str | Path | None) -> None:
    """Refuse (one-line ``ConfigError``) to replace a ``--plot`` file that is not a PNG
    ``gpunet tune`` wrote, a ``best.toml`` it did not write, or anything through a symbolic
    link, and a ``trials`` folder that is a link (finished trials' folders are removed)."""
    if plot is not None:
        p = Path(plot)
        if p.is_symlink():
            raise ConfigError(f"--plot {p} is a symbolic link; give the path of a new file")
        if p.exists() and (not p.is_file() or not is_our_plot(p)):
            raise ConfigError(f"--plot {p} exists and is not a plot gpunet tune wrote; give "
                              "a new file name (nothing was changed)")
    best = out_dir / "best.toml"
    if best.is_symlink() or (best.exists() and not _starts_with(best, BEST_TOML_HEAD)):
        raise ConfigError(f"{best} exists and is not a file gpunet tune wrote; give another "
                          "--out (nothing was changed)")
    trials = out_dir / "trials"
    if trials.is_symlink() or (trials.exists() and not trials.is_dir()):
        raise ConfigError(f"{trials} is not a folder (or is a link); give another --out")


def _starts_with(p: Path, head: str) -> bool:
    try:
        with open(p, "rb") as f:
            return f.read(len(head.encode())) == head.encode()
    except OSError:
        return False


def make_job(data: str, trials: int, *, rounds: int, epochs: int,
             space: SearchSpace | str | Path | None,
             config: TrainConfig | dict[str, Any] | None, storage: str | Path | None,
             study: str | None, out: str | Path | None, seed: int | None, device: str | None,
             pruner: str, baseline: bool, heartbeat: float, stale_after: float,
             retry_for: float, max_failures: int, pack: int | str = "auto") -> Job:
    """The checked job of a ``tune`` call (see ``tune`` for the arguments)."""
    from .packs import parse_pack
    from .storage import refuse_redis
    from .study import folder_slug

    check_options(trials, rounds, epochs, pruner, heartbeat, stale_after, retry_for)
    k = parse_pack(pack)
    if storage is not None:
        refuse_redis(storage)
    base, toml_device = base_config(config, data, epochs, seed, device)
    sp = search_space(space, base)
    name = study or Path(str(data)).stem or "study"
    out_dir = Path(out) if out is not None else Path("runs") / f"tune-{folder_slug(name)}"
    storage_desc = str(storage) if storage is not None else str(out_dir / "study.journal")
    return Job(data=data, trials=int(trials), rounds=int(rounds), epochs=int(epochs),
               base=base, toml_device=toml_device, space=sp, name=name, out_dir=out_dir,
               storage=storage_desc, pruner=pruner, baseline=bool(baseline),
               heartbeat=float(heartbeat), stale_after=float(stale_after),
               retry_for=float(retry_for), max_failures=int(max_failures), pack=k)
