"""``gpunet train``: a thin wrapper over ``gpunet.train.fit``."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

from gpunet.config import TrainConfig, load_toml
from gpunet.errors import ConfigError

#: command-line parameters that are configuration keys (the rest: config, resume, json, quiet)
CONFIG_PARAMS = (
    "val", "val_split", "x_key", "y_key", "memory_budget", "hidden", "batchnorm", "dropout",
    "activation", "optimizer", "lr", "beta1", "beta2", "eps", "weight_decay", "lr_schedule",
    "lr_step_size", "lr_gamma", "lr_decay_rate", "epochs", "batch_size", "bn_momentum",
    "patience", "class_weights", "seed", "device", "out", "save_every", "cuda_graph", "tf32",
    "drop_last",
)
_D = TrainConfig()


def train_command(
    ctx: typer.Context,
    data: str | None = typer.Argument(
        None, metavar="DATA", help="An .h5 file, or a bundled dataset name (digits)."),
    val: str | None = typer.Option(
        None, "--val", metavar="FILE", help="Validation data file (instead of --val-split)."),
    val_split: float = typer.Option(
        _D.val_split, "--val-split", metavar="F",
        help="Fraction of the training set held out for validation when the file has no val "
             "group (fixed by --seed)."),
    hidden: str = typer.Option(",".join(map(str, _D.hidden)), "--hidden", metavar="W1,W2",
                               help="Hidden layer widths ('none': softmax regression)."),
    batchnorm: bool = typer.Option(_D.batchnorm, "--batchnorm/--no-batchnorm",
                                   help="Batch norm after each hidden Dense layer."),
    dropout: float = typer.Option(_D.dropout, "--dropout", metavar="P"),
    activation: str = typer.Option(_D.activation, "--activation",
                                   help="relu, tanh or sigmoid."),
    optimizer: str = typer.Option(_D.optimizer, "--optimizer",
                                  help="adam, sgd, momentum or rmsprop."),
    lr: float | None = typer.Option(
        None, "--lr", metavar="A",
        help="Learning rate (default: adam 2e-3, rmsprop 1e-3, sgd / momentum 0.1)."),
    beta1: float | None = typer.Option(
        None, "--beta1", metavar="B", help="Adam beta1 / Momentum beta (default 0.9)."),
    beta2: float | None = typer.Option(
        None, "--beta2", metavar="B", help="Adam beta2 (0.999) / RMSprop beta2 (0.99)."),
    eps: float | None = typer.Option(
        None, "--eps", metavar="E", help="Adam / RMSprop epsilon (default 1e-8)."),
    weight_decay: float = typer.Option(_D.weight_decay, "--weight-decay", metavar="L",
                                       help="L2 on Dense weights (never on BN gamma/beta)."),
    lr_schedule: str = typer.Option(_D.lr_schedule, "--lr-schedule",
                                    help="none, step, exp, cosine or inverse."),
    lr_step_size: int = typer.Option(_D.lr_step_size, "--lr-step-size", metavar="N",
                                     help="step schedule: epochs per decay."),
    lr_gamma: float | None = typer.Option(
        None, "--lr-gamma", metavar="G", help="step / exp schedule factor (0.1 / 0.95)."),
    lr_decay_rate: float = typer.Option(_D.lr_decay_rate, "--lr-decay-rate", metavar="R",
                                        help="inverse schedule: lr0 / (1 + R * epoch)."),
    epochs: int = typer.Option(_D.epochs, "--epochs", metavar="N"),
    batch_size: int = typer.Option(_D.batch_size, "--batch-size", metavar="B"),
    bn_momentum: float = typer.Option(_D.bn_momentum, "--bn-momentum", metavar="M",
                                      help="PyTorch convention (Keras 0.99 = 0.01 here)."),
    patience: int = typer.Option(_D.patience, "--patience", metavar="N",
                                 help="Stop after N epochs without a better validation "
                                      "accuracy and restore the best weights (0: off)."),
    class_weights: str = typer.Option(_D.class_weights, "--class-weights",
                                      help="none or balanced (n / (classes * count))."),
    seed: int = typer.Option(_D.seed, "--seed", metavar="S"),
    device: str = typer.Option(_D.device, "--device", help="auto, cpu, gpu or gpu:N."),
    out: str | None = typer.Option(
        None, "--out", metavar="DIR",
        help="Run folder (default: runs/<data>-<YYYYmmdd-HHMMSS>)."),
    resume: str | None = typer.Option(
        None, "--resume", metavar="auto|PATH",
        help="Continue a run: 'auto' uses <out>/last.h5 if present (else starts fresh)."),
    save_every: int = typer.Option(_D.save_every, "--save-every", metavar="N",
                                   help="Also save last.h5 every N steps (0: epoch ends)."),
    cuda_graph: bool = typer.Option(
        _D.cuda_graph, "--cuda-graph/--no-cuda-graph",
        help="On the GPU, record the training step once as a CUDA graph and replay it "
             "(one launch per step; results equal the eager step's)."),
    tf32: bool = typer.Option(
        _D.tf32, "--tf32/--no-tf32",
        help="On the GPU, let the matrix products use TF32 tensor cores: faster, with "
             "products rounded to a 10-bit mantissa (a precision trade; off by default)."),
    drop_last: bool = typer.Option(
        _D.drop_last, "--drop-last/--no-drop-last",
        help="Drop each epoch's last partial batch (else it runs outside the CUDA graph)."),
    config: str | None = typer.Option(
        None, "--config", metavar="FILE.toml",
        help="Configuration file; options given on the command line override it."),
    x_key: str | None = typer.Option(None, "--x-key", metavar="K"),
    y_key: str | None = typer.Option(None, "--y-key", metavar="K"),
    memory_budget: str | None = typer.Option(
        None, "--memory-budget", metavar="BYTES",
        help="Read the data into memory up to this size (e.g. 512MB), stream beyond it."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object at the end."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Train an MLP on an HDF5 dataset; writes last.h5, best.h5, metrics.jsonl and
    config.toml into the run folder."""
    from gpunet.checkpoint import load as load_checkpoint
    from gpunet.train import fit, resolve_resume

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
    out_hint = explicit.get("out") or file_cfg.get("out")
    resume_path = resolve_resume(resume, out_hint)
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

    display = make_display(json_out=json_out, quiet=quiet)
    try:
        result = fit(cfg, resume=resume_path, callback=display)
    finally:
        display.close()
    summary = result.summary()
    if json_out:
        typer.echo(json.dumps(summary))


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
