"""``gpunet train``: a thin wrapper over ``gpunet.train.fit``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from gpunet.config import TrainConfig, load_toml
from gpunet.errors import ConfigError

#: command-line parameters that are configuration keys (the rest: config, resume, json, quiet);
#: every ``TrainConfig`` key but ``data``, which is the DATA argument
CONFIG_PARAMS = tuple(k for k in TrainConfig.keys() if k != "data")
_D = TrainConfig()

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
_DROPOUT = typer.Option(_D.dropout, "--dropout", metavar="P")
_ACTIVATION = typer.Option(_D.activation, "--activation", help="relu, tanh or sigmoid.")
_OPTIMIZER = typer.Option(_D.optimizer, "--optimizer", help="adam, sgd, momentum or rmsprop.")
_LR = typer.Option(
    None, "--lr", metavar="A",
    help="Learning rate (default: adam 2e-3, rmsprop 1e-3, sgd / momentum 0.1).")
_BETA1 = typer.Option(None, "--beta1", metavar="B",
                      help="Adam beta1 / Momentum beta (default 0.9).")
_BETA2 = typer.Option(None, "--beta2", metavar="B",
                      help="Adam beta2 (0.999) / RMSprop beta2 (0.99).")
_EPS = typer.Option(None, "--eps", metavar="E", help="Adam / RMSprop epsilon (default 1e-8).")
_WEIGHT_DECAY = typer.Option(_D.weight_decay, "--weight-decay", metavar="L",
                             help="L2 on Dense weights (never on BN gamma/beta).")
_LR_SCHEDULE = typer.Option(_D.lr_schedule, "--lr-schedule",
                            help="none, step, exp, cosine or inverse.")
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
                    help="Run folder (default: runs/<data>-<YYYYmmdd-HHMMSS>).")
_RESUME = typer.Option(
    None, "--resume", metavar="auto|PATH",
    help="Continue a run: 'auto' uses <out>/last.h5 if present (else starts fresh).")
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


def _epoch_line(info: dict[str, Any]) -> str:
    parts = [f"epoch {info['epoch']:>3}/{info['epochs']}",
             f"train loss {_fmt(info['train_loss'])} acc {_fmt(info['train_acc'])}"]
    if info.get("val_acc") is not None:
        parts.append(f"val loss {_fmt(info['val_loss'])} acc {_fmt(info['val_acc'])}")
    parts.append(f"lr {info['lr']:.3g}")
    parts.append(f"{info['seconds']:.2f}s")
    if info.get("samples_per_s"):
        parts.append(f"{info['samples_per_s']:,.0f} samples/s")
    line = "  ".join(parts)
    return line + ("  *" if info.get("best") else "")


def _start_line(info: dict[str, Any]) -> str:
    what = "resuming" if info["resumed"] else "training"
    return (f"{what} on {info['device']}: {info['n_train']:,} samples, {info['batches']} "
            f"batches/epoch, {info['params']:,} parameters -> {info['out']}")


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
    lines.append(f"saved {s['last']} and {s['best']} in {s['seconds']:.1f}s")
    return lines


class _Plain(_Display):
    """One line per epoch (logs, pipes)."""

    def on_start(self, info: dict[str, Any]) -> None:
        typer.echo(_start_line(info))
        if info["finished"]:
            typer.echo("the run is already complete; raise --epochs to continue it")

    def on_epoch(self, info: dict[str, Any]) -> None:
        typer.echo(_epoch_line(info))

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
        self.console.print(_start_line(info), highlight=False)
        self.epochs = info["epochs"]
        if info["finished"]:
            self.console.print("the run is already complete; raise --epochs to continue it")
            return
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
        self.progress.console.print(_epoch_line(info), highlight=False)

    def on_end(self, s: dict[str, Any]) -> None:
        self.close()
        for line in _end_lines(s):
            self.console.print(line, highlight=False)

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
