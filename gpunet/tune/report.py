"""What a search reports: trial rows, their ranking, the result, the best-config TOML, the plot.

Ranking, best first: higher validation accuracy, then lower validation loss, then the earlier
trial. Files are replaced atomically (``gpunet.fileio``).
"""

from __future__ import annotations

import dataclasses
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import TrainConfig
from ..errors import ConfigError
from ..fileio import atomic_write, atomic_write_text
from .space import SearchSpace


def fmt_value(v: Any) -> str:
    """A hyperparameter value for tables and messages (``-``: does not apply)."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3g}"
    return str(v)


# ====================================================================== rows and the result
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


def trial_rows(trials: list[Any]) -> list[TrialRow]:
    """Rows of Optuna trials (surplus claims left out); values from ``gpunet_values``."""
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
    #: with ``workers``: each worker process (number, pid, device, trials run, exit)
    workers: list[dict[str, Any]] | None = None

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
            **({"workers": self.workers} if self.workers is not None else {}),
        }


# ====================================================================== best configuration
#: how every ``best.toml`` starts (an existing file that does not is never replaced)
BEST_TOML_HEAD = "# gpunet tune: best trial #"


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
    head = (f"{BEST_TOML_HEAD}{best.number} of study {study!r} "
            f"({'baseline' if best.baseline else f'round {best.round + 1}'}): "
            f"val_acc {best.value:.4f} after {epochs} epochs\n"
            f"# train it with: gpunet train --config best.toml\n")
    return head + cfg.to_toml()


def write_best_config(result: TuneResult, base: TrainConfig, space: SearchSpace,
                      out_dir: Path) -> None:
    """Set ``result.best_toml`` / ``best_config`` and write ``<out_dir>/best.toml``
    (nothing without a complete trial)."""
    best = result.best
    if best is None:
        return
    result.best_toml = best_config_toml(best, base, space, result.study, result.epochs)
    result.best_config = out_dir / "best.toml"
    result.best_config.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(result.best_config, result.best_toml)


# ====================================================================== the plot
PLOT_COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
               "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]


#: the PNG text chunk that marks a plot as ours (an existing file without it is never replaced)
PLOT_SOFTWARE = "gpunet tune"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_our_plot(path: Path) -> bool:
    """Whether ``path`` is a PNG whose ``Software`` text chunk (before the image data) says
    ``gpunet tune``; reads 64 chunk headers at most."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != PNG_SIGNATURE:
                return False
            for _ in range(64):
                head = f.read(8)
                if len(head) < 8:
                    return False
                size, kind = struct.unpack(">I4s", head)
                if kind in (b"IDAT", b"IEND") or size > 1 << 20:
                    return False
                body = f.read(size)
                f.seek(4, 1)   # the chunk's CRC
                if kind == b"tEXt" and body.split(b"\0", 1) == [
                        b"Software", PLOT_SOFTWARE.encode()]:
                    return True
    except OSError:
        return False
    return False


def require_matplotlib() -> None:
    """A one-line ``ConfigError`` saying how to install matplotlib, where it is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'gpunet[plot]'") from None


def _plot_floor(result: TuneResult, accs: list[float]) -> float:
    """The axis shows the good region: the median accuracy less 0.05 (below the baseline by
    0.03 at most), at least 0.02 below the best, never below 0."""
    if not accs:
        return 0.0
    floor = float(np.median(accs)) - 0.05
    if result.baseline is not None:
        floor = min(floor, float(result.baseline.value) - 0.03)
    return max(0.0, min(floor, max(accs) - 0.02))


def _plot_round(ax: Any, result: TuneResult, done: list[TrialRow], k: int,
                floor: float) -> int:
    """Round ``k``'s trials (those below ``floor`` as triangles on the bottom edge) and its
    box: its lr range by its accuracy range. Returns how many fell below ``floor``."""
    from matplotlib.patches import Rectangle

    rows = [r for r in done if r.round == k and not r.baseline]
    c = PLOT_COLORS[k % len(PLOT_COLORS)]
    below = 0
    if rows:
        ins = [r for r in rows if r.value >= floor]
        out = [r for r in rows if r.value < floor]
        below = len(out)
        ax.scatter([r.values["lr"] for r in ins], [r.value for r in ins], s=28,
                   color=c, alpha=0.85, label=f"round {k + 1} ({len(rows)} trials)", zorder=3)
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
    return below


def _plot_marks(ax: Any, result: TuneResult, floor: float, below: int) -> None:
    """The baseline (dashed line and square), the best trial (star), the axes and title."""
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


def write_plot(result: TuneResult, path: str | Path) -> Path:
    """Validation accuracy against the learning rate (log axis), one colour per round, each
    round's box (its lr range by its accuracy range), the baseline as a dashed line and the
    best trial as a star. Drawn with the Agg canvas; pyplot's global state is not touched.
    The PNG (its ``Software`` text chunk ``gpunet tune``) replaces ``path`` atomically."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    p = Path(path)
    fig = Figure(figsize=(10, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    done = [r for r in result.rows if r.value is not None and r.values.get("lr")]
    floor = _plot_floor(result, [float(r.value) for r in done])
    below = sum(_plot_round(ax, result, done, k, floor) for k in range(result.rounds))
    _plot_marks(ax, result, floor, below)
    fig.tight_layout()
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(p, lambda tmp: fig.savefig(tmp, format="png",
                                            metadata={"Software": PLOT_SOFTWARE}))
    return p
