"""The ``gpunet`` command line (Typer): train, eval, predict, info, and the data group.

Every command is a thin wrapper over an importable function. Errors that are the user's
input (``gpunet.errors.GpunetError``), an ``OSError`` such as an unwritable folder, and
running out of memory print ``error: <one line>`` to stderr and exit with code 2, without a
traceback; Ctrl-C exits with 130. Warnings print as ``warning: <message>`` on stderr.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

from gpunet.errors import GpunetError

EXIT_USER_ERROR = 2


def one_line(msg: str) -> str:
    """Collapse a message to one line."""
    parts = [p.strip() for p in str(msg).splitlines() if p.strip()]
    return "; ".join(parts) if parts else "unknown error"


def os_error_message(e: OSError) -> str:
    """``<strerror>: <filename>`` for an OSError, with a hint for the usual cases."""
    what = e.strerror or one_line(str(e)) or type(e).__name__
    if e.filename is not None:
        return f"{what}: {e.filename}"
    return what


def fail(msg: str, code: int = EXIT_USER_ERROR) -> NoReturn:
    """Print ``error: msg`` on stderr and exit with ``code``."""
    typer.echo(f"error: {one_line(msg)}", err=True)
    raise typer.Exit(code)


def _show_warning(message: Any, category: Any, filename: str, lineno: int,
                  file: Any = None, line: Any = None) -> None:
    print(f"warning: {one_line(str(message))}", file=sys.stderr)


class GpunetGroup(TyperGroup):
    """The top-level group: turns user errors raised by any subcommand (the mounted ``data``
    group included) into one-line messages and exit code 2."""

    def invoke(self, ctx: Any) -> Any:
        old = warnings.showwarning
        warnings.showwarning = _show_warning
        try:
            return super().invoke(ctx)
        except GpunetError as e:
            fail(str(e))
        except OSError as e:
            fail(os_error_message(e))
        except MemoryError:
            fail("out of memory; try a smaller --batch-size or --memory-budget")
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        finally:
            warnings.showwarning = old


app = typer.Typer(
    cls=GpunetGroup,
    name="gpunet",
    help="gpunet: fully connected classifiers on NumPy (CPU) or CuPy (GPU).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _register() -> None:
    from .eval import eval_command, predict_command
    from .export import export_command
    from .info import info_command
    from .train import train_command
    from .tune import tune_command

    app.command("train")(train_command)
    app.command("tune")(tune_command)
    app.command("eval")(eval_command)
    app.command("predict")(predict_command)
    app.command("info")(info_command)
    app.command("export")(export_command)
    from .data import data_app

    app.add_typer(data_app, name="data", help="Make, import and inspect HDF5 datasets.")


_register()

__all__ = ["app", "fail", "one_line"]
