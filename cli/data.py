"""``gpunet data make|import|inspect``: thin wrappers over gpunet.data."""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Annotated, Any

import typer

from gpunet import data as gdata
from gpunet.config import parse_size
from gpunet.errors import DataError, GpunetError
from gpunet.text import escape, json_line, one_line

data_app = typer.Typer(
    help="Make, import and inspect HDF5 datasets (X: (n, ...) numeric, y: class ids).",
    no_args_is_help=True,
    add_completion=False,
)


def _run(fn: Callable[[], Any]) -> Any:
    """Call ``fn``; a GpunetError becomes ``error: <message>`` on stderr and exit code 2."""
    try:
        return fn()
    except GpunetError as e:
        typer.echo(f"error: {escape(one_line(str(e)))}", err=True)
        raise typer.Exit(2) from None


def _classes(value: str | None) -> list[str] | None:
    return [c.strip() for c in value.split(",")] if value else None


def _echo_summary(info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json_line(info))
        return
    parts = ", ".join(f"{s} {v['n']} x {v['x_shape'][1:]} {v['x_dtype']}"
                      for s, v in info["splits"].items())
    typer.echo(f"wrote {escape(info['path'])}: {parts}")


@data_app.command("make")
def make(
    out: Annotated[pathlib.Path, typer.Option("--out", "-o", help="Output .h5 file.")],
    kind: Annotated[str, typer.Option("--kind", help="blobs or spirals.")] = "blobs",
    n: Annotated[int, typer.Option("--n", help="Number of samples (train + test).")] = 1000,
    classes: Annotated[int, typer.Option("--classes", help="Number of classes.")] = 3,
    features: Annotated[int, typer.Option("--features", help="Number of features.")] = 2,
    noise: Annotated[float | None, typer.Option(
        "--noise", help="blobs: cluster std (default 1.0); spirals: angle jitter (0.2).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    test_fraction: Annotated[float, typer.Option(
        "--test-fraction", help="Stratified test share.")] = 0.2,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Write a synthetic dataset (groups train/ and test/, X float32, y int64)."""
    info = _run(lambda: gdata.make_synthetic(kind, out, n=n, classes=classes, features=features,
                                             noise=noise, seed=seed,
                                             test_fraction=test_fraction, force=force))
    _echo_summary(info, as_json)


@data_app.command("import")
def import_(
    src: Annotated[pathlib.Path, typer.Argument(help="A .npz (no pickles) or .csv/.tsv file.")],
    out: Annotated[pathlib.Path, typer.Option("--out", "-o", help="Output .h5 file.")],
    x_key: Annotated[str | None, typer.Option("--x-key", help=".npz: the X array's name.")] = None,
    y_key: Annotated[str | None, typer.Option("--y-key", help=".npz: the labels' name.")] = None,
    label_column: Annotated[str | None, typer.Option(
        "--label-column", help="CSV: label column name or index (default: a column "
        "named label/labels/y/target/class, else the last).")] = None,
    delimiter: Annotated[str | None, typer.Option("--delimiter", help="CSV delimiter.")] = None,
    header: Annotated[bool | None, typer.Option(
        "--header/--no-header", help="CSV: first row is a header (default: detect).")] = None,
    classes: Annotated[str | None, typer.Option(
        "--classes", help="Class names, comma-separated.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Convert a .npz or CSV file to .h5 (written to a temporary file, then renamed)."""
    suffix = src.suffix.lower()

    def go() -> dict[str, Any]:
        if suffix == ".npz":
            return gdata.import_npz(src, out, x_key=x_key, y_key=y_key,
                                    classes=_classes(classes), force=force)
        if suffix in (".csv", ".tsv", ".txt"):
            return gdata.import_csv(src, out, label_column=label_column, delimiter=delimiter,
                                    header=header, classes=_classes(classes), force=force)
        raise DataError(f"cannot import {src.name}: use a .npz, .csv or .tsv file")

    _echo_summary(_run(go), as_json)


_ALLOW_EXTERNAL = typer.Option(
    "--allow-external",
    help="Read HDF5 links, virtual datasets and external raw storage (refused by default); "
         "each is checked first, and a missing source is an error.")


def _show(s: object) -> str:
    """A string from a file, control characters escaped (``gpunet.text.escape``)."""
    return escape(s)


def _where(d: dict[str, Any]) -> str:
    """Where a dataset lives, for the inventory lines."""
    if d["storage"] in ("contiguous", "chunked", "compact"):
        return d["storage"]
    return f"{d['storage']}: {_show(d['target'])}" if d["target"] else d["storage"]


def _echo_inspect(info: dict[str, Any]) -> None:
    typer.echo(f"{_show(info['path'])} ({info['bytes']:,} bytes)")
    for k, v in info["attrs"].items():
        text = _show(", ".join(map(str, v)) if isinstance(v, list) else v)
        typer.echo(f"  @{_show(k)}: {text if len(text) <= 90 else text[:87] + '...'}")
    keys = [_show(d["key"]) for d in info["datasets"]]
    w = max((len(k) for k in keys), default=0)
    for k, d in zip(keys, info["datasets"], strict=True):
        shape = str(tuple(d["shape"])) if d["shape"] is not None else "-"
        typer.echo(f"  {k:<{w}}  {shape:<14} {d['dtype'] or '-':<8} {_where(d)}")
    for s, v in info["splits"].items():
        y = _show(v["y_key"]) if v["y_key"] else "(no labels)"
        same = ", same data as train" if v["same_as_train"] else ""
        typer.echo(f"{s}: {_show(v['x_key'])} / {y}: n={v['n']:,}, features={v['n_features']}, "
                   f"labels {v['labels']}{same}")
        typer.echo("  class counts: " + " ".join(
            f"{_show(c)}:{k}" for c, k in zip(info["classes"], v["class_counts"], strict=True)))
    if info["splits"] and "val" not in info["splits"]:
        typer.echo("val: none in the file (training holds out --val-split of train)")
    if info["classes"] is not None:
        typer.echo(f"classes ({info['n_classes']}): {', '.join(map(_show, info['classes']))}")


@data_app.command("inspect")
def inspect(
    data: Annotated[str, typer.Argument(help="An .h5 file or a bundled dataset name (digits).")],
    x_key: Annotated[str | None, typer.Option("--x-key", help="Override the X key.")] = None,
    y_key: Annotated[str | None, typer.Option("--y-key", help="Override the labels key.")] = None,
    allow_external_data: Annotated[bool, _ALLOW_EXTERNAL] = False,
    memory_budget: Annotated[str | None, typer.Option(
        "--memory-budget", metavar="BYTES",
        help="Most bytes the class ids of one split may take (default 2 GiB).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show keys, shapes, dtypes, where each dataset lives (in the file, external files,
    virtual sources, link targets), the detected splits and keys, and class counts."""
    def go() -> dict[str, Any]:
        budget = {"memory_budget": parse_size(memory_budget)} if memory_budget else {}
        return gdata.inspect_file(data, x_key=x_key, y_key=y_key,
                                  allow_external=allow_external_data, **budget)

    info = _run(go)
    if as_json:
        typer.echo(json_line(info))
    else:
        _echo_inspect(info)
    if info["error"]:
        typer.echo(f"error: {_show(info['error'])}", err=True)
        raise typer.Exit(2)
