"""Repeated runs: K seeds of one configuration trained as one pack (``gpunet.packed``), error
bars for a configuration in one command (``gpunet train DATA --repeats K``).

Member i trains with seed ``seed + i`` (its initial weights, dropout masks, data order and,
when the file has no validation group, its validation split) into ``<out>/member-<i>/``, an
ordinary run folder that ``gpunet eval`` and ``gpunet train --resume`` accept. ``<out>/
summary.json`` holds the mean, population standard deviation, min and max of the members'
best validation accuracy and test accuracy, and each member's summary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..backend import Backend
from ..config import TrainConfig
from ..errors import ConfigError
from ..fileio import atomic_write_text
from .runfolder import default_out_dir, resolve_resume


def member_dir(out: str | Path, i: int) -> Path:
    """Member i's run folder: ``<out>/member-<i>``."""
    return Path(out) / f"member-{i}"


def repeat_configs(cfg: TrainConfig, repeats: int) -> list[TrainConfig]:
    """Member i's configuration: ``cfg`` with seed ``cfg.seed + i`` and its own run folder
    under ``cfg.out`` (default: ``runs/<data>-<time>``)."""
    if repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {repeats}")
    out = Path(cfg.out) if cfg.out else default_out_dir(str(cfg.data))
    return [cfg.updated({"seed": cfg.seed + i, "out": str(member_dir(out, i))},
                        source="--repeats") for i in range(repeats)]


def fit_repeats(cfg: TrainConfig, repeats: int, backend: Backend | str | None = None, *,
                resume: str | None = None, callback: Any = None) -> dict[str, Any]:
    """Train ``repeats`` seeds of ``cfg`` as one pack (``resume="auto"`` continues the
    members that have a ``last.h5``); write and return ``summary.json``'s content (see
    ``gpunet.packed.PackedFitResult.summary``, plus ``out`` and ``seeds``)."""
    from ..packed import PackCommit, fit_packed

    cfgs = repeat_configs(cfg, repeats)
    out = Path(cfgs[0].out).parent
    PackCommit([c.out for c in cfgs]).recover()  # before looking for last.h5
    resumes: list[Path | None] = [None] * repeats
    if resume is not None and str(resume).lower() != "auto":
        raise ConfigError("a repeated run resumes with --resume auto (each member from its "
                          "own last.h5)")
    if resume is not None:
        resumes = [resolve_resume(resume, c.out) for c in cfgs]
        if any(r is not None for r in resumes) and any(r is None for r in resumes):
            missing = [str(c.out) for c, r in zip(cfgs, resumes, strict=True) if r is None]
            raise ConfigError(f"cannot resume the repeated run in {out}: no last.h5 in "
                              + ", ".join(missing))
    result = fit_packed(cfgs, backend, resume=resumes, callback=callback)
    summary = {"out": str(out), "seeds": [c.seed for c in cfgs], **result.summary()}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """What ``gpunet train --repeats`` prints at the end."""
    lines = []
    for key, what in (("val_acc", "best validation accuracy"), ("test_acc", "test accuracy")):
        s = summary.get(key)
        if s:
            lines.append(f"{what}: mean {s['mean']:.4f} std {s['std']:.4f} min {s['min']:.4f} "
                         f"max {s['max']:.4f} over {s['n']} members")
    statuses = summary["statuses"]
    odd = [f"member-{i} {st}" for i, st in enumerate(statuses) if st != "finished"]
    if odd:
        lines.append("not finished: " + ", ".join(odd))
    lines.append(f"saved {summary['members']} run folders and summary.json in {summary['out']} "
                 f"in {summary['seconds']:.1f}s")
    return lines
