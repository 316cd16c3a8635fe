"""The ``gpunet`` command line (Typer): train, eval, predict, info, and the data group.

Every command is a thin wrapper over an importable function. Errors that are the user's
input (``gpunet.errors.GpunetError``), an ``OSError`` such as an unwritable folder, and
running out of memory print ``error: <one line>`` to stderr and exit with code 2, without a
traceback, as do bad option values; Ctrl-C exits with 130. Warnings print as
``warning: <message>`` on stderr. Text from files is printed through ``gpunet.text.escape``
(control characters as escapes). A closed stdout (``| head``) ends the command quietly with
exit code 141.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

from gpunet.backend import NoGpuWarning
from gpunet.errors import GpunetError
from gpunet.text import escape, one_line

EXIT_USER_ERROR = 2
#: the exit code when stdout's reader has gone (128 + SIGPIPE, as a shell reports a Unix tool
#: killed by SIGPIPE)
EXIT_BROKEN_PIPE = 141


def os_error_message(e: OSError) -> str:
    """``<strerror>: <filename>`` for an OSError, with a hint for the usual cases."""
    what = e.strerror or one_line(str(e)) or type(e).__name__
    if e.filename is not None:
        return f"{what}: {e.filename}"
    return what


def fail(msg: str, code: int = EXIT_USER_ERROR) -> NoReturn:
    """Print ``error: msg`` on stderr (one line, control characters escaped) and exit with
    ``code``."""
    typer.echo(f"error: {escape(one_line(msg))}", err=True)
    raise typer.Exit(code)


def _show_warning(message: Any, category: Any, filename: str, lineno: int,
                  file: Any = None, line: Any = None) -> None:
    print(f"warning: {escape(one_line(str(message)))}", file=sys.stderr)


def _is_usage_error(e: BaseException) -> bool:
    """A command-line parsing error (bad option value, unknown option or command), but not
    the "no arguments: show the help" case. Compared by class name: typer >= 0.29 vendors
    its own click."""
    names = {c.__name__ for c in type(e).__mro__}
    return "UsageError" in names and "NoArgsIsHelpError" not in names


def _usage_error(e: Any) -> NoReturn:
    ctx = getattr(e, "ctx", None)
    hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
    fail(f"{e.format_message()}{hint}", getattr(e, "exit_code", EXIT_USER_ERROR))


def _stdout_closed() -> NoReturn:
    """The reader of stdout went away (``gpunet ... | head -1``): exit quietly, as Unix tools
    do, with 141 (128 + SIGPIPE); stdout is pointed at /dev/null so that the interpreter's
    final flush cannot complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass  # not a real file (tests): nothing will flush it
    raise SystemExit(EXIT_BROKEN_PIPE)


class GpunetGroup(TyperGroup):
    """The top-level group: turns user errors raised by any subcommand (the mounted ``data``
    group included) into one-line messages and exit code 2, says nothing when stdout's
    reader has gone, and keeps the "no usable GPU" warning for the header lines that name
    the device (``gpunet.backend.device_label``)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            try:
                with _rich_pipe_exit():
                    return super().main(*args, **kwargs)
            finally:
                _flush_stdout()
        except BrokenPipeError:
            _stdout_closed()

    def invoke(self, ctx: Any) -> Any:
        old = warnings.showwarning
        warnings.showwarning = _show_warning
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NoGpuWarning)
                return super().invoke(ctx)
        except BrokenPipeError:
            _stdout_closed()
        except GpunetError as e:
            fail(str(e))
        except OSError as e:
            fail(os_error_message(e))
        except MemoryError:
            fail("out of memory; try a smaller --batch-size or --memory-budget")
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except Exception as e:
            if _is_usage_error(e):
                _usage_error(e)
            raise
        finally:
            warnings.showwarning = old


@contextlib.contextmanager
def _rich_pipe_exit() -> Iterator[None]:
    """While the command runs, Rich consoles (help pages, tables) whose reader has gone exit
    like the rest of the command line (``_stdout_closed``: 141) instead of with Rich's 1,
    through Rich's documented ``Console.on_broken_pipe`` hook."""
    try:
        from rich.console import Console
    except ImportError:
        yield
        return
    old = Console.on_broken_pipe
    Console.on_broken_pipe = lambda self: _stdout_closed()  # type: ignore[method-assign]
    try:
        yield
    finally:
        Console.on_broken_pipe = old  # type: ignore[method-assign]


def _flush_stdout() -> None:
    stream = sys.stdout
    if stream is not None and not stream.closed:
        stream.flush()


app = typer.Typer(
    cls=GpunetGroup,
    name="gpunet",
    help="gpunet: fully connected classifiers on NumPy (CPU) or CuPy (GPU).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _help(fn: object) -> str:
    """A command's help: its docstring's paragraphs with the source's line breaks folded (the
    terminal wraps them), so ``gpunet --help`` lists each command as running text."""
    import inspect

    doc = inspect.getdoc(fn) or ""
    return "\n\n".join(" ".join(p.split()) for p in doc.split("\n\n"))


def _register() -> None:
    from .eval import eval_command, predict_command
    from .export import export_command
    from .info import info_command
    from .train import train_command
    from .tune import tune_command

    for name, fn in (("train", train_command), ("tune", tune_command), ("eval", eval_command),
                     ("predict", predict_command), ("info", info_command),
                     ("export", export_command)):
        app.command(name, help=_help(fn))(fn)
    from .data import data_app

    app.add_typer(data_app, name="data", help="Make, import and inspect HDF5 datasets.")


_register()

__all__ = ["app", "fail", "one_line"]
