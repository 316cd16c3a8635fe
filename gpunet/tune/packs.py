"""Packed trials in a search: how many trials train as one pack (``--pack``), which planned
trials share a pack, and how a pack's members are reported to the study.

**Pack size.** ``--pack K`` (1..``MAX_PACK``) trains up to K trials as one pack
(``gpunet.packed.fit_packed``); ``--pack 1`` trains each trial alone with ``gpunet.train.fit``,
as does a pack that ends up with one member (packed K = 1 is slower than ``fit``).
``--pack auto`` (the default) chooses K from the device and the largest net the search space
can sample (``largest_net``: the widest, deepest architecture and the largest batch size it
allows), so that every pack pays:

- **CPU**: K = 16 for a net of at most 2**18 (262,144) parameters, 4 up to 2**19 (524,288),
  else 1 (``CPU_RULE``). Measured on the 2-core CPU with digits (batch 64, Adam, 3 epochs,
  run folders written; a shared machine), trials per minute of ``fit_packed`` over single
  ``fit`` runs: 1,210 parameters (one layer of 16) 2.0x at K = 4 and 2.4x at K = 16;
  4,810 (64): 1.5x / 1.8x; 19,210 (256): 1.4x / 1.8x; 50,826 (256,128): 1.6x / 2.1x;
  301,066 (512,512): 1.1-1.3x / 1.2-1.3x; 458,250 (640,640): 1.1x / 0.9x; 596,490
  (1024,512): 1.2x / 1.2x; 648,202 (768,768): 0.9x / 1.0x; 1,126,410 (1024,1024):
  0.8x / 0.8x. Past about half a million parameters the products of one net already keep
  the two cores busy and packing loses.
- **GPU** (a backend with ``device_memory``): K = 64 (``GPU_MAX``), fewer where K members
  would not fit in ``GPU_MEMORY_SHARE`` of the free device memory, per member ``16 P`` bytes
  (weights, gradients, two optimizer moments) plus the activations of a training batch and
  of a validation batch (``member_bytes``). Small MLPs are launch-bound on a GPU, so
  packing pays at every size that fits (not yet measured by ``tune`` itself).

**Grouping.** A worker claims up to K trials at a time (never more than the round still
needs, nor more than its share of the round: ``Search``), plans them round by round (a pack
never spans two rounds), groups the planned trials that share ``gpunet.packed.PACK_KEYS``
(architecture, batch size, epochs, ...) in trial order and trains each group in packs of at
most K. Trials whose architecture differs train one after another.

**Reporting.** Each member is its own Optuna trial: ``trial.report(val_acc, epoch)`` after
each of its epochs, the median pruner asked per member (a pruned member stops alone:
``gpunet.packed.StopMember``), its own value, user attributes (``gpunet_pack``: the numbers
of the pack's trials) and state (COMPLETE, PRUNED, or FAIL for a diverged member). Every
member keeps its own heartbeat, refreshed from the pack's callback, so a worker killed
mid-pack leaves each unfinished member to be marked failed.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..config import TrainConfig
from ..errors import ConfigError, GpunetError, TrainingDiverged
from .space import SearchSpace
from .storage import StorageError

#: the largest ``--pack``
MAX_PACK = 1024
#: ``--pack auto`` on the CPU: (most parameters, K), first match wins; larger nets get 1
CPU_RULE = ((2**18, 16), (2**19, 4))
#: ``--pack auto`` on a GPU: at most this many members ...
GPU_MAX = 64
#: ... using at most this share of the free device memory
GPU_MEMORY_SHARE = 0.5
#: rows of a validation batch (``gpunet.train.evaluation.EVAL_BATCH_SIZE``)
EVAL_ROWS = 1024


def parse_pack(value: int | str) -> int | str:
    """``"auto"`` or an integer in 1..``MAX_PACK`` (one-line ``ConfigError`` otherwise)."""
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    ok = not isinstance(value, bool) and (isinstance(value, int) or text.isdigit())
    k = int(text) if ok and len(text) < 8 else -1
    if not 1 <= k <= MAX_PACK:
        raise ConfigError(f"--pack must be auto or an integer from 1 to {MAX_PACK}, "
                          f"got {str(value)[:40]!r}")
    return k


# ====================================================================== pack size
def net_params(in_features: int, hidden: Sequence[int], classes: int) -> int:
    """Weights and biases of an MLP ``in_features -> hidden -> classes``."""
    dims = [int(in_features), *map(int, hidden), int(classes)]
    return sum(a * b + b for a, b in zip(dims[:-1], dims[1:], strict=False))


def member_bytes(in_features: int, hidden: Sequence[int], classes: int,
                 batch_size: int) -> int:
    """Device memory one packed member takes, about: ``16 P`` bytes of parameters, gradients
    and two optimizer moments, plus six float32 activations per unit of a training batch and
    two of a validation batch."""
    units = sum(map(int, hidden)) + int(classes) + int(in_features)
    return 16 * net_params(in_features, hidden, classes) + 4 * units * (
        6 * int(batch_size) + 2 * EVAL_ROWS)


def largest_net(base: TrainConfig, space: SearchSpace) -> tuple[list[int], int]:
    """The hidden widths and batch size of the largest net ``space`` can sample from
    ``base`` (each of width, depth and batch size at its largest)."""
    values = {n: p.corner("high") for n, p in space.params.items()}
    for name in ("width", "depth", "batch_size"):
        p = space.params.get(name)
        if p is not None and p.scale == "choice":
            values[name] = max(int(v) for v in p.values)
        elif p is not None:
            values[name] = int(p.high)
    try:
        cfg = space.config_for(base, values)
    except ConfigError:   # a corner the space never samples: the base is all we know
        cfg = base
    return list(cfg.hidden), int(cfg.batch_size)


def free_device_memory(be: Any) -> int | None:
    """Free bytes on ``be``'s device (None where it has no device memory or cannot say)."""
    if not be.device_memory:
        return None
    try:
        return int(be.xp.cuda.runtime.memGetInfo()[0])
    except Exception:  # noqa: BLE001 - no runtime call on this backend
        return None


def auto_pack_size(be: Any, in_features: int, hidden: Sequence[int], classes: int,
                   batch_size: int) -> int:
    """``--pack auto``'s K on backend ``be`` for the net ``in_features -> hidden -> classes``
    at ``batch_size`` (see the module docstring)."""
    if be.device_memory:
        free = free_device_memory(be)
        if free is None:
            return GPU_MAX
        per = member_bytes(in_features, hidden, classes, batch_size)
        return max(1, min(GPU_MAX, int(GPU_MEMORY_SHARE * free) // max(per, 1)))
    params = net_params(in_features, hidden, classes)
    return next((k for most, k in CPU_RULE if params <= most), 1)


def resolve_pack(pack: int | str, base: TrainConfig, space: SearchSpace, ds: Any) -> int:
    """K for this worker: ``pack`` itself, or ``auto``'s choice for the largest net of
    ``space`` on ``base``'s device (needs the data ``ds`` for its widths)."""
    if pack != "auto":
        return int(pack)
    from ..backend import get_backend

    hidden, batch = largest_net(base, space)
    return auto_pack_size(get_backend(base.device), ds.n_features, hidden, ds.n_classes,
                          batch)


# ====================================================================== grouping
def pack_key(cfg: TrainConfig) -> tuple[Any, ...]:
    """What members of one pack share (``gpunet.packed.PACK_KEYS``)."""
    from ..packed import PACK_KEYS

    return tuple(tuple(v) if isinstance(v, list) else v
                 for v in (getattr(cfg, k) for k in PACK_KEYS))


def group_packs(items: Sequence[Any], cfg_of: Callable[[Any], TrainConfig],
                k: int) -> list[list[Any]]:
    """``items`` in packs of at most ``k`` sharing ``pack_key(cfg_of(item))``, each pack in
    item order, packs ordered by their first item."""
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for it in items:
        groups.setdefault(pack_key(cfg_of(it)), []).append(it)
    packs = [g[i:i + k] for g in groups.values() for i in range(0, len(g), max(1, k))]
    return sorted(packs, key=lambda p: items.index(p[0]))


# ====================================================================== reporting
def finish_trial(study: Any, trial: Any, res: Any, seconds: float,
                 out: dict[str, Any]) -> dict[str, Any]:
    """Record a trained trial's best epoch (``res``: a ``FitResult``) and tell the study:
    COMPLETE with a finite accuracy, else FAIL; ``out`` updated as the ``trial`` row."""
    best_rec = next((h for h in res.history if h.get("epoch") == res.best_epoch), {})
    value = float(res.best_value) if res.best_value is not None else float("nan")
    val_loss = best_rec.get("val_loss")
    trial.set_user_attr("gpunet_val_loss", val_loss)
    trial.set_user_attr("gpunet_best_epoch", int(res.best_epoch))
    trial.set_user_attr("gpunet_seconds", seconds)
    if not math.isfinite(value):
        study.tell(trial, None, "FAIL")
        out.update(error="no finite validation accuracy")
        return out
    told = study.tell(trial, value, "COMPLETE")
    out.update(state="COMPLETE" if told else "FAIL", value=value, val_loss=val_loss,
               seconds=seconds,
               error=None if told else "marked failed by another worker (no heartbeat)")
    return out


def _blank_row() -> dict[str, Any]:
    return {"state": "FAIL", "value": None, "val_loss": None, "error": None}


class PackRun:
    """One pack of claimed, planned trials (``trials[k]`` trains ``cfgs[k]``). As
    ``fit_packed``'s callback it keeps the heartbeats, reports member k's epochs to its trial
    and, with ``prune``, stops a member the pruner gives up on; ``run`` tells the study how
    each member ended and returns the rows the ``trial`` events show."""

    def __init__(self, study: Any, trials: list[Any], prune: bool, beat: Callable[[], None]
                 ) -> None:
        self.study, self.trials, self.prune, self.beat = study, trials, prune, beat
        self.t0 = time.perf_counter()

    def __call__(self, k: int, event: str, info: dict[str, Any]) -> None:
        self.beat()
        if event == "epoch" and info.get("val_acc") is not None:
            trial = self.trials[k]
            trial.report(float(info["val_acc"]), int(info["epoch"]))
            if self.prune and trial.should_prune():
                from ..packed import StopMember

                raise StopMember(f"pruned at epoch {info['epoch']}")

    def seconds(self) -> float:
        return round(time.perf_counter() - self.t0, 3)

    def run(self, fit_packed: Callable[..., Any], cfgs: list[TrainConfig],
            ds: Any) -> list[dict[str, Any]]:
        numbers = [t.number for t in self.trials]
        for t in self.trials:
            t.set_user_attr("gpunet_pack", numbers)
        self.t0 = time.perf_counter()
        try:
            res = fit_packed(cfgs, dataset=ds, callback=self)
        except StorageError:
            raise   # the storage is gone: the trials stay RUNNING until their heartbeats stop
        except (TrainingDiverged, GpunetError, FloatingPointError, MemoryError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            return [self._fail(t, msg) for t in self.trials]
        except BaseException:
            for t in self.trials:
                with contextlib.suppress(Exception):
                    t.set_user_attr("gpunet_error", "interrupted")
                    self.study.tell(t, None, "FAIL")
            raise
        return [self._member(t, r, e) for t, r, e in zip(self.trials, res.results,
                                                         res.errors, strict=True)]

    def _fail(self, trial: Any, msg: str) -> dict[str, Any]:
        trial.set_user_attr("gpunet_error", msg)
        trial.set_user_attr("gpunet_seconds", self.seconds())
        self.study.tell(trial, None, "FAIL")
        return {**_blank_row(), "error": msg}

    def _member(self, trial: Any, res: Any, error: str | None) -> dict[str, Any]:
        """Tell the study how one member ended (``res.status``)."""
        if res.status == "pruned":
            trial.set_user_attr("gpunet_seconds", self.seconds())
            told = self.study.tell(trial, None, "PRUNED")
            return {**_blank_row(), "state": "PRUNED" if told else "FAIL",
                    "error": error or "pruned"}
        if res.status == "diverged":
            return self._fail(trial, (error or "diverged").splitlines()[0])
        return finish_trial(self.study, trial, res, self.seconds(), _blank_row())
