"""``gpunet train``: a thin wrapper over ``gpunet.train.fit``."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from gpunet.backend import device_label
from gpunet.config import ACTIVATIONS, OPTIMIZER_DEFAULTS, SCHEDULES, TrainConfig, load_toml
from gpunet.errors import ConfigError
from gpunet.text import escape

from .signals import sigterm_as_interrupt

#: command-line parameters that are configuration keys (the rest: config, resume, json, quiet);
#: every ``TrainConfig`` key but ``data``, which is the DATA argument
CONFIG_PARAMS = tuple(k for k in TrainConfig.keys() if k != "data")
_D = TrainConfig()


def one_of(names: tuple[str, ...] | list[str]) -> str:
    """'a, b or c.' from a registry's names (the help text follows the registry)."""
    names = list(names)
    return (", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]) + "."


def _lr_defaults() -> str:
    """Each optimizer's default learning rate, from the optimizer classes."""
    return ", ".join(f"{name} {d['lr']:g}" for name, d in OPTIMIZER_DEFAULTS.items())

# ---------------------------------------------------------------------- the option list
# Declarative: one Typer parameter per configuration key, then the command's own options.
_DATA = typer.Argument(None, metavar="DATA",
                       help="An .h5 file, or a bundled dataset name (digits).")
_VAL = typer.Option(None, "--val", metavar="FILE",
                    help="Validation data file (instead of --val-split).")
_VAL_SPLIT = typer.Option(
    _D.val_split, "--val-split", metavar="F",
    help="Fraction of the training set held out for validation when the file has no val "
         "group (fixed by --seed).")
_HIDDEN = typer.Option(",".join(map(str, _D.hidden)), "--hidden", metavar="W1,W2",
                       help="Hidden layer widths ('none': softmax regression).")
_BATCHNORM = typer.Option(_D.batchnorm, "--batchnorm/--no-batchnorm",
                          help="Batch norm after each hidden Dense layer.")
_DROPOUT = typer.Option(_D.dropout, "--dropout", metavar="P",
                        help="Dropout probability after each hidden activation, in [0, 1) "
                             "(inverted dropout; 0: off).")
_ACTIVATION = typer.Option(_D.activation, "--activation", help=one_of(ACTIVATIONS))
_OPTIMIZER = typer.Option(_D.optimizer, "--optimizer", help=one_of(list(OPTIMIZER_DEFAULTS)))
_LR = typer.Option(None, "--lr", metavar="A",
                   help=f"Learning rate (default: {_lr_defaults()}).")
_BETA1 = typer.Option(None, "--beta1", metavar="B",
                      help="Adam beta1 / Momentum beta (default 0.9).")
_BETA2 = typer.Option(None, "--beta2", metavar="B",
                      help="Adam beta2 (0.999) / RMSprop beta2 (0.99).")
_EPS = typer.Option(None, "--eps", metavar="E", help="Adam / RMSprop epsilon (default 1e-8).")
_WEIGHT_DECAY = typer.Option(_D.weight_decay, "--weight-decay", metavar="L",
                             help="L2 on Dense weights (never on BN gamma/beta).")
_LR_SCHEDULE = typer.Option(_D.lr_schedule, "--lr-schedule", help=one_of(SCHEDULES))
_LR_STEP_SIZE = typer.Option(_D.lr_step_size, "--lr-step-size", metavar="N",
                             help="step schedule: epochs per decay.")
_LR_GAMMA = typer.Option(None, "--lr-gamma", metavar="G",
                         help="step / exp schedule factor (0.1 / 0.95).")
_LR_DECAY_RATE = typer.Option(_D.lr_decay_rate, "--lr-decay-rate", metavar="R",
                              help="inverse schedule: lr0 / (1 + R * epoch).")
_EPOCHS = typer.Option(_D.epochs, "--epochs", metavar="N")
_BATCH_SIZE = typer.Option(_D.batch_size, "--batch-size", metavar="B")
_BN_MOMENTUM = typer.Option(_D.bn_momentum, "--bn-momentum", metavar="M",
                            help="PyTorch convention (Keras 0.99 = 0.01 here).")
_PATIENCE = typer.Option(_D.patience, "--patience", metavar="N",
                         help="Stop after N epochs without a better validation "
                              "accuracy and restore the best weights (0: off).")
_CLASS_WEIGHTS = typer.Option(_D.class_weights, "--class-weights",
                              help="none or balanced (n / (classes * count)).")
_SEED = typer.Option(_D.seed, "--seed", metavar="S")
_DEVICE = typer.Option(_D.device, "--device", help="auto, cpu, gpu or gpu:N.")
_OUT = typer.Option(None, "--out", metavar="DIR",
                    help="Run folder: new, empty or a gpunet run folder (default: a new "
                         "folder in runs/ named after the data, the date and the time).")
_RESUME = typer.Option(
    None, "--resume", metavar="auto|PATH",
    help="Continue a run: 'auto' uses <out>/last.h5 if present (else starts fresh); a PATH "
         "outside a gpunet run folder continues into --out or a new run folder.")
_SAVE_EVERY = typer.Option(_D.save_every, "--save-every", metavar="N",
                           help="Also save last.h5 every N steps (0: epoch ends).")
_CUDA_GRAPH = typer.Option(
    _D.cuda_graph, "--cuda-graph/--no-cuda-graph",
    help="On the GPU, record the training step once as a CUDA graph and replay it "
         "(one launch per step; results equal the eager step's).")
_TF32 = typer.Option(
    _D.tf32, "--tf32/--no-tf32",
    help="On the GPU, let the matrix products use TF32 tensor cores: faster, with "
         "products rounded to a 10-bit mantissa (a precision trade; off by default).")
_DROP_LAST = typer.Option(
    _D.drop_last, "--drop-last/--no-drop-last",
    help="Drop each epoch's last partial batch (else it runs outside the CUDA graph).")
_CONFIG = typer.Option(
    None, "--config", metavar="FILE.toml",
    help="Configuration file; options given on the command line override it.")
_X_KEY = typer.Option(None, "--x-key", metavar="K")
_Y_KEY = typer.Option(None, "--y-key", metavar="K")
_MEMORY_BUDGET = typer.Option(
    None, "--memory-budget", metavar="BYTES",
    help="Read the data into memory up to this size (e.g. 512MB), stream beyond it.")
_ALLOW_EXTERNAL_DATA = typer.Option(
    _D.allow_external_data, "--allow-external",
    help="Read HDF5 links, virtual datasets and external raw storage in the data (refused by "
         "default); each is checked first, and a missing source is an error.")
_REPEATS = typer.Option(
    None, "--repeats", metavar="K",
    help="Train K seeds (--seed, --seed + 1, ...) as one pack: member-<i>/ run folders under "
         "--out and summary.json (mean, std, min, max of validation and test accuracy).")
_JSON = typer.Option(False, "--json", help="Print one JSON object at the end.")
_QUIET = typer.Option(False, "--quiet", "-q", help="No progress output.")


def train_command(
    ctx: typer.Context,
    data: str | None = _DATA,
    val: str | None = _VAL,
    val_split: float = _VAL_SPLIT,
    hidden: str = _HIDDEN,
    batchnorm: bool = _BATCHNORM,
    dropout: float = _DROPOUT,
    activation: str = _ACTIVATION,
    optimizer: str = _OPTIMIZER,
    lr: float | None = _LR,
    beta1: float | None = _BETA1,
    beta2: float | None = _BETA2,
    eps: float | None = _EPS,
    weight_decay: float = _WEIGHT_DECAY,
    lr_schedule: str = _LR_SCHEDULE,
    lr_step_size: int = _LR_STEP_SIZE,
    lr_gamma: float | None = _LR_GAMMA,
    lr_decay_rate: float = _LR_DECAY_RATE,
    epochs: int = _EPOCHS,
    batch_size: int = _BATCH_SIZE,
    bn_momentum: float = _BN_MOMENTUM,
    patience: int = _PATIENCE,
    class_weights: str = _CLASS_WEIGHTS,
    seed: int = _SEED,
    device: str = _DEVICE,
    out: str | None = _OUT,
    resume: str | None = _RESUME,
    save_every: int = _SAVE_EVERY,
    cuda_graph: bool = _CUDA_GRAPH,
    tf32: bool = _TF32,
    drop_last: bool = _DROP_LAST,
    config: str | None = _CONFIG,
    x_key: str | None = _X_KEY,
    y_key: str | None = _Y_KEY,
    memory_budget: str | None = _MEMORY_BUDGET,
    allow_external_data: bool = _ALLOW_EXTERNAL_DATA,
    repeats: int | None = _REPEATS,
    json_out: bool = _JSON,
    quiet: bool = _QUIET,
) -> None:
    """Train an MLP on an HDF5 dataset; writes last.h5, best.h5, metrics.jsonl and
    config.toml into the run folder."""
    from gpunet.train import fit

    if repeats is not None:
        repeats_command(ctx, data, config, resume, repeats, json_out=json_out, quiet=quiet)
        return
    cfg, resume_path = command_config(ctx, data, config, resume)
    display = make_display(json_out=json_out, quiet=quiet)
    try:
        with sigterm_as_interrupt():
            result = fit(cfg, resume=resume_path, callback=display)
    finally:
        display.close()
    summary = result.summary()
    if json_out:
        typer.echo(json.dumps(summary))


def repeats_command(ctx: typer.Context, data: str | None, config: str | None,
                    resume: str | None, repeats: int, *, json_out: bool, quiet: bool) -> None:
    """``--repeats K``: K seeds of the configuration as one pack (``gpunet.train.repeats``)."""
    from gpunet.train.repeats import fit_repeats, summary_lines

    if repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {repeats}")
    cfg, _ = command_config(ctx, data, config, resume, member=0)
    say = None if json_out or quiet else _member_epoch_line
    with sigterm_as_interrupt():
        summary = fit_repeats(cfg, repeats, resume=resume, callback=say)
    if json_out:
        typer.echo(json.dumps(summary))
    elif not quiet:
        for line in summary_lines(summary):
            typer.echo(line)


def _member_epoch_line(member: int, event: str, info: dict[str, Any]) -> None:
    if event == "epoch":
        typer.echo(f"member-{member}  " + _epoch_line(info))


def command_config(ctx: typer.Context, data: str | None, config: str | None,
                   resume: str | None, member: int | None = None
                   ) -> tuple[TrainConfig, Path | None]:
    """The run's configuration and the checkpoint to resume (None: a fresh run).

    Precedence, lowest first: the defaults, the resumed checkpoint's configuration, the
    ``--config`` file, the options given on the command line. With ``member`` (a repeated
    run) the checkpoint is that member's, in ``<out>/member-<member>/``."""
    from gpunet.checkpoint import load as load_checkpoint
    from gpunet.train import resolve_resume

    explicit = explicit_params(ctx, CONFIG_PARAMS)
    if data is not None:
        explicit["data"] = data
    file_cfg: dict[str, Any] = load_toml(config) if config is not None else {}
    file_keys = {k.replace("-", "_") for k in file_cfg}
    val_given = "val" in explicit or "val" in file_keys
    split_given = "val_split" in explicit or "val_split" in file_keys
    if val_given and split_given and ("val" in explicit) == ("val_split" in explicit):
        raise ConfigError("use either --val FILE or --val-split F, not both")
    if "val_split" in explicit and "val" not in explicit:
        explicit["val"] = None  # --val-split on the command line beats a val file elsewhere
    out = explicit.get("out") or file_cfg.get("out")
    if member is not None and out:
        from gpunet.train.repeats import member_dir

        out = member_dir(out, member)
    resume_path = resolve_resume(resume, out)
    if resume_path is not None:
        ck = load_checkpoint(resume_path)
        base = TrainConfig.from_dict(ck.config, source=f"checkpoint {resume_path}")
        base.out = None  # a run folder that moved: continue beside the checkpoint
        base.allow_external_data = False  # a permission is given anew, never inherited
    else:
        base = TrainConfig()
    cfg = base.updated(file_cfg, source=f"config file {config}") if file_cfg else base
    cfg = cfg.updated(explicit, source="the command line")
    if cfg.data is None:
        raise ConfigError("missing DATA: give an .h5 file or a bundled dataset name (digits)")
    return cfg, resume_path


def explicit_params(ctx: typer.Context, names: tuple[str, ...]) -> dict[str, Any]:
    """The parameters given on the command line (or by environment), by config key."""
    out: dict[str, Any] = {}
    for name in names:
        # compared by name: typer >= 0.29 vendors its own click
        src = ctx.get_parameter_source(name)
        if src is not None and src.name in ("COMMANDLINE", "ENVIRONMENT"):
            out[name] = ctx.params[name]
    return out


# ---------------------------------------------------------------------- progress display
class _Display:
    """Receives ``fit``'s events; subclasses print them."""

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        getattr(self, "on_" + event, lambda info: None)(info)

    def close(self) -> None:
        pass


class _Silent(_Display):
    pass


def _fmt(v: Any, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def _num(v: Any, width: int) -> str:
    """A loss in at most ``width`` characters: 4 decimals, else scientific notation."""
    if v is None:
        return "-"
    text = f"{v:.4f}"
    return text if len(text) <= width else f"{v:.{max(width - 6, 0)}e}"


def _secs(s: float) -> str:
    """Seconds in at most 6 characters: 0.04s, 12.3s, 1234s, 28h."""
    if s < 9.995:
        return f"{s:.2f}s"
    if s < 99.95:
        return f"{s:.1f}s"
    return f"{s:.0f}s" if s < 99999.5 else f"{s / 3600:.0f}h"


def _rate(v: Any) -> str:
    if not v:
        return "-"
    return f"{v:,.0f}" if v < 999999.5 else f"{v / 1e6:,.1f}M"


#: the epoch table's columns after the epoch: (header, width, cell, needs validation);
#: the last ones are dropped first when a line would not fit the terminal
_COLUMNS: list[tuple[str, int, Callable[[dict[str, Any]], str], bool]] = [
    ("loss", 7, lambda i: _num(i["train_loss"], 7), False),
    ("acc", 6, lambda i: _fmt(i["train_acc"]), False),
    ("val_loss", 8, lambda i: _num(i.get("val_loss"), 8), True),
    ("val_acc", 7, lambda i: _fmt(i.get("val_acc")), True),
    ("lr", 8, lambda i: f"{i['lr']:.3g}", False),
    ("time", 6, lambda i: _secs(i["seconds"]), False),
    ("samples/s", 9, lambda i: _rate(i.get("samples_per_s")), False),
]
_OPTIONAL = ("samples/s", "time")


class EpochTable:
    """One line per epoch under a header, within ``width`` columns (``samples/s``, then
    ``time``, are left out where they would not fit); ``*`` marks a new best.h5."""

    def __init__(self, epochs: int, validation: bool, width: int = 80) -> None:
        self.epochs = epochs
        self.lead = 6 + 2 * len(str(epochs)) + 1  # "epoch " + "12/40"
        self.cols = [c for c in _COLUMNS if validation or not c[3]]
        for name in _OPTIONAL:
            if self.width() > width:
                self.cols = [c for c in self.cols if c[0] != name]

    def width(self) -> int:
        return self.lead + sum(2 + w for _, w, _, _ in self.cols) + 2

    def header(self) -> str:
        return " " * self.lead + "".join(f"  {h:>{w}}" for h, w, _, _ in self.cols)

    def row(self, info: dict[str, Any]) -> str:
        e = f"epoch {info['epoch']:>{len(str(self.epochs))}}/{self.epochs}"
        cells = "".join(f"  {cell(info):>{w}}" for _, w, cell, _ in self.cols)
        return f"{e:<{self.lead}}{cells}" + (" *" if info.get("best") else "")


def _epoch_line(info: dict[str, Any], width: int = 80) -> str:
    """One epoch's line as the plain display prints it (without its header)."""
    return EpochTable(info["epochs"], info.get("val_acc") is not None, width).row(info)


def terminal_width() -> int:
    """The terminal's width (``COLUMNS`` first; 80 off a terminal)."""
    return shutil.get_terminal_size((80, 24)).columns


def _start_line(info: dict[str, Any]) -> str:
    what = "resuming" if info["resumed"] else "training"
    return (f"{what} on {device_label(info['device'])}: {info['n_train']:,} samples, "
            f"{info['batches']} batches/epoch, {info['params']:,} parameters -> "
            f"{escape(info['out'])}")


def _end_lines(s: dict[str, Any]) -> list[str]:
    lines = []
    if s["status"] == "early_stopped":
        lines.append(f"early stop: no better {s['best_metric']} for the last epochs; "
                     f"restored the best weights (epoch {s['best_epoch']})")
    if s.get("best_value") is not None:
        lines.append(f"best {s['best_metric']} {s['best_value']:.4f} at epoch {s['best_epoch']}")
    if s.get("test_accuracy") is not None:
        lines.append(f"test accuracy {s['test_accuracy']:.4f} (loss {s['test_loss']:.4f}, "
                     f"n={s['test_n']}) with best.h5")
    lines.append(f"saved {escape(s['last'])} and {escape(s['best'])} in {s['seconds']:.1f}s")
    return lines


class _Plain(_Display):
    """One line per epoch (logs, pipes), under a header, within the terminal's width."""

    table: EpochTable | None = None

    def on_start(self, info: dict[str, Any]) -> None:
        typer.echo(_start_line(info))
        if info["finished"]:
            typer.echo("the run is already complete; raise --epochs to continue it")
            return
        self.table = EpochTable(info["epochs"], info.get("validation", True), terminal_width())
        typer.echo(self.table.header())

    def on_epoch(self, info: dict[str, Any]) -> None:
        table = self.table or EpochTable(info["epochs"], True, terminal_width())
        typer.echo(table.row(info))

    def on_end(self, s: dict[str, Any]) -> None:
        for line in _end_lines(s):
            typer.echo(line)


class _Rich(_Plain):
    """A rich progress bar over the batches of each epoch, epoch lines above it."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = Console()
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(),
                                 console=self.console, transient=True)
        self.task: Any = None
        self.epochs = 0
        self.started = False

    def on_start(self, info: dict[str, Any]) -> None:
        self.console.print(_start_line(info), highlight=False, markup=False)
        self.epochs = info["epochs"]
        if info["finished"]:
            self.console.print("the run is already complete; raise --epochs to continue it")
            return
        self.table = EpochTable(info["epochs"], info.get("validation", True),
                                self.console.width)
        self.console.print(self.table.header(), highlight=False)
        self.progress.start()
        self.started = True
        self.task = self.progress.add_task("epoch", total=info["batches"])

    def on_epoch_start(self, info: dict[str, Any]) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=info["skip"],
                                 description=f"epoch {info['epoch']}/{self.epochs}")

    def on_batch(self, info: dict[str, Any]) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=info["batch"])

    def on_epoch(self, info: dict[str, Any]) -> None:
        table = self.table or EpochTable(info["epochs"], True, self.console.width)
        self.progress.console.print(table.row(info), highlight=False)

    def on_end(self, s: dict[str, Any]) -> None:
        self.close()
        for line in _end_lines(s):
            self.console.print(line, highlight=False, markup=False)

    def close(self) -> None:
        if self.started:
            self.progress.stop()
            self.started = False


def make_display(json_out: bool, quiet: bool) -> _Display:
    """Silent with --json or --quiet; a progress bar on a terminal; plain lines otherwise."""
    if json_out or quiet:
        return _Silent()
    if sys.stdout.isatty():
        return _Rich()
    return _Plain()
