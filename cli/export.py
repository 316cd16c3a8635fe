"""``gpunet export``: a thin wrapper over ``gpunet.export.export_checkpoint``."""

from __future__ import annotations

import typer

from gpunet.text import escape, json_line


def export_command(
    checkpoint: str = typer.Argument(..., metavar="CHECKPOINT", help="A .h5 checkpoint."),
    fmt: str | None = typer.Option(
        None, "--format", metavar="onnx|safetensors",
        help="Output format (default: from --out's extension, else onnx)."),
    out: str | None = typer.Option(
        None, "--out", metavar="FILE",
        help="Output file (default: the checkpoint's name with .onnx / .safetensors)."),
    opset: int | None = typer.Option(None, "--opset", metavar="N",
                                     help="ONNX opset (default 17)."),
    fold_batchnorm: bool = typer.Option(
        False, "--fold-batchnorm/--no-fold-batchnorm",
        help="ONNX: fold batch norm's running statistics into the Dense before it instead "
             "of BatchNormalization nodes (~8% faster; default off: nodes stay closer to "
             "gpunet's own probabilities)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Export a checkpoint for ONNX Runtime (onnx: standardization, network and softmax in
    one graph) or PyTorch (safetensors: a torch.nn.Sequential state dict)."""
    from gpunet.errors import ConfigError
    from gpunet.export import DEFAULT_OPSET, export_checkpoint

    if opset is not None and fmt is not None and fmt.lower() != "onnx":
        raise ConfigError("--opset only applies to --format onnx")
    res = export_checkpoint(checkpoint, fmt, out, opset=opset or DEFAULT_OPSET,
                            fold_batchnorm=fold_batchnorm)
    if json_out:
        typer.echo(json_line(res))
        return
    extra = f", opset {res['opset']}, dynamic batch" if res["format"] == "onnx" else ""
    typer.echo(f"wrote {escape(res['out'])} ({res['format']}{extra}, {res['in_features']} inputs, "
               f"{len(res['classes'])} classes, {res['bytes']:,} bytes)")
