"""``gpunet eval`` and ``gpunet predict``: thin wrappers over ``gpunet.train``."""

from __future__ import annotations

from typing import Any

import typer

from gpunet.config import MAX_DIM, parse_size
from gpunet.data import allow_external_data as allow_external_data_in
from gpunet.errors import ConfigError
from gpunet.text import escape, json_line

_SPLITS = ("test", "val", "train", "all")
_ALLOW_EXTERNAL_DATA = typer.Option(
    False, "--allow-external",
    help="Read HDF5 links, virtual datasets and external raw storage in the data (refused by "
         "default); each is checked first, and a missing source is an error.")


def eval_command(
    checkpoint: str = typer.Argument(..., metavar="CHECKPOINT", help="A .h5 checkpoint."),
    data: str | None = typer.Option(
        None, "--data", metavar="FILE",
        help="Data to evaluate (default: the held-out split recorded in the checkpoint)."),
    split: str | None = typer.Option(
        None, "--split", metavar="test|val|train|all",
        help="Split of the data (default: the test group if any, else val (no --data) or "
             "the whole file with --data)."),
    batch_size: int = typer.Option(1024, "--batch-size", metavar="B",
                                   help="Does not change the result (inference batch norm)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, gpu or gpu:N."),
    x_key: str | None = typer.Option(None, "--x-key", metavar="K"),
    y_key: str | None = typer.Option(None, "--y-key", metavar="K"),
    memory_budget: str | None = typer.Option(
        None, "--memory-budget", metavar="BYTES"),
    allow_external_data: bool = _ALLOW_EXTERNAL_DATA,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Evaluate a checkpoint with batch norm's inference statistics: accuracy, loss,
    per-class precision / recall / f1 and the confusion matrix."""
    from gpunet.train import evaluate_checkpoint

    if split is not None and split not in _SPLITS:
        raise ConfigError(f"unknown --split {split!r}: use {', '.join(_SPLITS)}")
    _check_batch_size(batch_size)
    with allow_external_data_in(allow_external_data):
        res = evaluate_checkpoint(
            checkpoint, data, split, batch_size=batch_size, device=device, x_key=x_key,
            y_key=y_key, memory_budget=parse_size(memory_budget) if memory_budget else None)
    if json_out:
        typer.echo(json_line(res))
        return
    for line in format_report(res):
        typer.echo(line)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if batch_size > MAX_DIM:
        raise ConfigError(f"--batch-size must be at most {MAX_DIM}, got {batch_size}")


def format_report(res: dict[str, Any]) -> list[str]:
    """The human-readable evaluation report (text from files escaped: ``gpunet.text``)."""
    lines = [f"{escape(res['checkpoint'])} (epoch {res['epoch']}) on {escape(res['data'])} "
             f"[{res['split']}]",
             f"accuracy {res['accuracy']:.4f}  loss {res['loss']:.4f}  n {res['n']}  "
             f"macro f1 {res['macro_f1']:.4f}", ""]
    names = [escape(n) for n in res["per_class"]]
    w = max([5] + [len(n) for n in names])
    lines.append(f"{'class':<{w}}  precision  recall      f1  support")
    for name, m in zip(names, res["per_class"].values(), strict=True):
        lines.append(f"{name:<{w}}  {m['precision']:9.4f}  {m['recall']:6.4f}  {m['f1']:6.4f}"
                     f"  {m['support']:7d}")
    lines.append("")
    lines.append("confusion matrix (rows: true class, columns: predicted)")
    cm = res["confusion_matrix"]
    cw = max([len(str(v)) for row in cm for v in row] + [len(n) for n in names] + [3])
    lines.append(" " * (w + 1) + " ".join(f"{n:>{cw}}" for n in names))
    for name, row in zip(names, cm, strict=True):
        lines.append(f"{name:<{w}} " + " ".join(f"{v:>{cw}}" for v in row))
    return lines


def predict_command(
    checkpoint: str = typer.Argument(..., metavar="CHECKPOINT", help="A .h5 checkpoint."),
    data: str = typer.Option(..., "--data", metavar="FILE", help="Inputs (labels optional)."),
    out: str = typer.Option(..., "--out", metavar="FILE",
                            help="Predictions: .h5, .csv or .npy (by extension)."),
    proba: bool = typer.Option(False, "--proba", help="Also write class probabilities."),
    split: str = typer.Option("all", "--split", metavar="test|val|train|all"),
    batch_size: int = typer.Option(1024, "--batch-size", metavar="B"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, gpu or gpu:N."),
    x_key: str | None = typer.Option(None, "--x-key", metavar="K"),
    y_key: str | None = typer.Option(None, "--y-key", metavar="K"),
    memory_budget: str | None = typer.Option(
        None, "--memory-budget", metavar="BYTES"),
    allow_external_data: bool = _ALLOW_EXTERNAL_DATA,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Predict classes (and probabilities) for a data file with a checkpoint."""
    from gpunet.train import predict_checkpoint

    if split not in _SPLITS:
        raise ConfigError(f"unknown --split {split!r}: use {', '.join(_SPLITS)}")
    _check_batch_size(batch_size)
    with allow_external_data_in(allow_external_data):
        res = predict_checkpoint(
            checkpoint, data, out, proba=proba, split=split, batch_size=batch_size,
            device=device, x_key=x_key, y_key=y_key,
            memory_budget=parse_size(memory_budget) if memory_budget else None)
    if json_out:
        typer.echo(json_line(res))
    else:
        counts = ", ".join(f"{escape(k)}: {v}" for k, v in res["counts"].items())
        typer.echo(f"wrote {res['n']} predictions to {escape(res['out'])} ({counts})")
