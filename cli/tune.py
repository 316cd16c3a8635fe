"""``gpunet tune``: a thin wrapper over ``gpunet.tune.tune``."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import typer

from gpunet.config import OPTIMIZER_DEFAULTS, TrainConfig, load_toml
from gpunet.text import escape, one_line, rich_text

from .signals import sigterm_as_interrupt
from .train import one_of

# ---------------------------------------------------------------------- the option list
# Declarative: one Typer parameter per option of `gpunet tune`.
_DATA = typer.Argument(..., metavar="DATA",
    help="An .h5 file, or a bundled dataset name (digits).")
_TRIALS = typer.Option(..., "--trials", metavar="N",
    help="The study's total of finished trials, counted across "
    "workers and resumes (failed trials do not count).")
_ROUNDS = typer.Option(1, "--rounds", metavar="K",
    help="Coarse to fine: each round shrinks every numeric range "
    "around the previous round's best trials.")
_EPOCHS = typer.Option(10, "--epochs", metavar="N", help="Epochs per trial.")
_SPACE = typer.Option(
    None, "--space", metavar="FILE.toml",
    help="Search space (default: lr, batch size, width, depth, lr decay; momentum beta "
    "with --optimizer momentum).")
_CONFIG = typer.Option(
    None, "--config", metavar="FILE.toml",
    help="Base training configuration (what the baseline trial trains).")
_OPTIMIZER = typer.Option(None, "--optimizer", help=one_of(list(OPTIMIZER_DEFAULTS)))
_STORAGE = typer.Option(
    None, "--storage", metavar="URL",
    help="Optuna storage: a journal file (default <out>/study.journal) or a URL such as "
    "postgresql://... or sqlite:///tune.db.")
_STUDY = typer.Option(None, "--study", metavar="NAME",
    help="Study name (default: the data's name).")
_OUT = typer.Option(None, "--out", metavar="DIR",
    help="Folder for best.toml and trial runs "
    "(default runs/tune-<study>).")
_SEED = typer.Option(None, "--seed", metavar="S",
    help="Seeds the search, the split and every trial.")
_DEVICE = typer.Option(None, "--device", help="auto, cpu, gpu or gpu:N.")
_VAL_SPLIT = typer.Option(None, "--val-split", metavar="F",
    help="Held-out validation fraction.")
_X_KEY = typer.Option(None, "--x-key", metavar="K")
_Y_KEY = typer.Option(None, "--y-key", metavar="K")
_PRUNER = typer.Option("none", "--pruner", help="median or none.")
_BASELINE = typer.Option(True, "--baseline/--no-baseline",
    help="Train the base configuration as the first trial.")
_TOP = typer.Option(10, "--top", metavar="N", help="Rows of the table of best trials.")
_PLOT = typer.Option(
    None, "--plot", metavar="FILE.png",
    help="Plot validation accuracy against the learning rate (needs matplotlib).")
_ALLOW_EXTERNAL_DATA = typer.Option(
    False, "--allow-external",
    help="Read HDF5 links, virtual datasets and external raw storage in the data (refused "
    "by default); each is checked first, and a missing source is an error.")
_WORKERS = typer.Option(
    1, "--workers", metavar="N",
    help="Worker processes on this machine, all on one study (with --devices: per GPU).")
_DEVICES = typer.Option(
    None, "--devices", metavar="0,1|all",
    help="Pin workers to these GPUs, --workers each (CUDA_VISIBLE_DEVICES).")
_HEARTBEAT = typer.Option(
    10.0, "--heartbeat", metavar="S", help="Seconds between a running trial's heartbeats.")
_STALE_AFTER = typer.Option(
    120.0, "--stale-after", metavar="S",
    help="A running trial without a heartbeat for this long is marked failed.")
_PACK = typer.Option(
    "auto", "--pack", metavar="K|auto",
    help="Train up to K trials that share an architecture, batch size and epochs as one "
    "pack (each still its own trial); auto: from the device and the net's size.")
_STORAGE_RETRY = typer.Option(
    30.0, "--storage-retry", metavar="S",
    help="Seconds a lost database connection is retried before the search stops.")
_JSON_OUT = typer.Option(False, "--json", help="Print one JSON object at the end.")
_QUIET = typer.Option(False, "--quiet", "-q", help="Only the final table.")


def tune_command(
    data: str = _DATA,
    trials: int = _TRIALS,
    rounds: int = _ROUNDS,
    epochs: int = _EPOCHS,
    space: str | None = _SPACE,
    config: str | None = _CONFIG,
    optimizer: str | None = _OPTIMIZER,
    storage: str | None = _STORAGE,
    study: str | None = _STUDY,
    out: str | None = _OUT,
    seed: int | None = _SEED,
    device: str | None = _DEVICE,
    val_split: float | None = _VAL_SPLIT,
    x_key: str | None = _X_KEY,
    y_key: str | None = _Y_KEY,
    pruner: str = _PRUNER,
    baseline: bool = _BASELINE,
    top: int = _TOP,
    plot: str | None = _PLOT,
    allow_external_data: bool = _ALLOW_EXTERNAL_DATA,
    workers: int = _WORKERS,
    devices: str | None = _DEVICES,
    heartbeat: float = _HEARTBEAT,
    stale_after: float = _STALE_AFTER,
    pack: str = _PACK,
    storage_retry: float = _STORAGE_RETRY,
    json_out: bool = _JSON_OUT,
    quiet: bool = _QUIET,
) -> None:
    """Random hyperparameter search on the right scales, coarse to fine, in an Optuna study
    that several workers can share; writes the best configuration as TOML."""
    from gpunet.errors import ConfigError
    from gpunet.tune import tune
    from gpunet.tune.job import MAX_TRIALS

    if not 0 <= top <= MAX_TRIALS:
        raise ConfigError(f"--top must be between 0 and {MAX_TRIALS:,}, got {top}")
    base: dict[str, Any] = load_toml(config) if config is not None else {}
    for key, value in (("optimizer", optimizer), ("val_split", val_split), ("x_key", x_key),
                       ("y_key", y_key)):
        if value is not None:
            base[key] = value
    if val_split is not None:
        base["val"] = None
    if allow_external_data:
        base["allow_external_data"] = True
    cfg = TrainConfig.from_dict(base, source=f"config file {config}" if config else "options")
    show = not (json_out or quiet)
    with sigterm_as_interrupt():
        res = tune(data, trials, rounds=rounds, epochs=epochs, space=space, config=cfg,
                   storage=storage, study=study, out=out, seed=seed, device=device,
                   pruner=pruner, baseline=baseline, plot=plot, workers=workers,
                   devices=devices, heartbeat=heartbeat, stale_after=stale_after,
                   storage_retry=storage_retry, pack=pack, callback=_printer(show))
    if json_out:
        typer.echo(json.dumps(res.summary(top=top)))
        return
    print_table(res, top)


def _start_lines(info: dict[str, Any]) -> list[str]:
    lines = [f"study {escape(repr(info['study']))} in {escape(info['storage'])}: "
             f"{info['trials']} trials, "
             f"{info['rounds']} round(s), {info['epochs']} epochs each, "
             f"{info['n_train']} training / {info['n_val']} validation samples",
             "space: " + "; ".join(escape(s) for s in info["space"])]
    if info.get("workers"):
        ws = info["workers"]
        where = sorted(set(w["device"] for w in ws))
        threads = ws[0].get("threads")
        lines.append(f"workers: {len(ws)} on {', '.join(where)}"
                     + (f", {threads} thread(s) each" if threads else ""))
    return lines


def _round_lines(info: dict[str, Any]) -> list[str]:
    return [f"round {info['round']}/{info['rounds']}: shrinking the ranges {info['note']}:",
            *(f"  {escape(name)}: {escape(old)} -> {escape(new)}"
              for name, old, new in info["changes"])]


def _trial_lines(info: dict[str, Any]) -> list[str]:
    from gpunet.tune import fmt_value

    vals = "  ".join(f"{escape(k)} {escape(fmt_value(v))}" for k, v in info["values"].items())
    head = f"trial {info['number']:>3} (round {info['round']}/{info['rounds']}"
    head += ", baseline" if info["baseline"] else ""
    head += f", pack of {info['pack']})" if info.get("pack", 1) > 1 else ")"
    done = f"  [{info['progress'][0]}/{info['progress'][1]}]" if info.get("progress") else ""
    if info["state"] == "COMPLETE":
        return [f"{head}  val_acc {info['value']:.4f}  {vals}  {info.get('seconds', 0):.1f}s"
                + done]
    return [f"{head}  {info['state'].lower()}: {escape(one_line(info['error']))}  {vals}{done}"]


def _died_lines(info: dict[str, Any]) -> list[str]:
    trials = info.get("trials") or []
    what = (f"; trial{'s' if len(trials) > 1 else ''} {', '.join(map(str, trials))} marked "
            "failed" if trials else "")
    return [f"worker {info['worker']} (pid {info['pid']}) died: {info['why']}{what}"
            + ("; starting another" if info.get("replaced") else "")]


#: progress lines for each ``tune`` event the console shows (``end`` prints the table)
_EVENT_LINES: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "start": _start_lines,
    "round": _round_lines,
    "pack": lambda info: [f"packs: up to {info['pack']} trials sharing an architecture train "
                          "as one" + (" (--pack auto)" if info.get("auto") else "")],
    "wait": lambda info: [f"round {info['round']} waits for trials {info['running']} of the "
                          "previous round"],
    "stale": lambda info: [f"trial {info['number']}: its worker is gone; marked failed"],
    "trial": _trial_lines,
}

#: lines for events shown even with --quiet / --json, on stderr
_STDERR_LINES: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "worker-died": _died_lines,
    "worker-error": lambda info: [f"worker {info['worker']} stopped: "
                                  f"{escape(one_line(info['message']))}"],
    "worker-output": lambda info: [f"worker {info['worker']}: {escape(info['line'])}"],
    "journal-repaired": lambda info: [f"warning: {escape(one_line(info['message']))}"],
}


def _printer(show: bool) -> Callable[[str, dict[str, Any]], None]:
    """The ``tune`` callback: each event's progress lines (``show``), a worker's number in
    front when several work; problems on stderr always."""

    def say(event: str, info: dict[str, Any]) -> None:
        if event in _STDERR_LINES:
            for line in _STDERR_LINES[event](info):
                typer.echo(line, err=True)
            return
        if not show:
            return
        tag = f"[{info['worker']}] " if "worker" in info else ""
        for line in _EVENT_LINES.get(event, lambda info: [])(info):
            typer.echo(tag + line)

    return say


def print_table(res: Any, top: int) -> None:
    """The rich table of the best trials, then where the best configuration went."""
    from rich.console import Console
    from rich.table import Table

    from gpunet.tune import fmt_value

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)   # logs: one line per row, no squeezed columns
    rows = res.finished[:max(top, 0)]
    names: list[str] = []
    for r in rows:
        for k in r.values:
            if k not in names:
                names.append(k)
    t = Table(title=f"best trials of study {rich_text(repr(res.study))} "
                    f"({res.count('COMPLETE')} complete, "
                    f"{res.count('PRUNED')} pruned, {res.count('FAIL')} failed)")
    for col in ["#", "round", "val acc", "val loss", *map(rich_text, names), "s"]:
        t.add_column(col, justify="right", no_wrap=True)
    for i, r in enumerate(rows):
        t.add_row(str(r.number) + (" *" if i == 0 else ""),
                  "base" if r.baseline else str(r.round + 1), f"{r.value:.4f}",
                  "-" if r.val_loss is None else f"{r.val_loss:.4f}",
                  *[rich_text(fmt_value(r.values.get(k, "-"))) for k in names],
                  "-" if r.seconds is None else f"{r.seconds:.1f}")
    console.print(t)
    best, base = res.best, res.baseline
    if best is not None and base is not None:
        console.print(f"best val_acc {best.value:.4f} (trial {best.number}) vs baseline "
                      f"{base.value:.4f} ({best.value - base.value:+.4f})", highlight=False)
    if res.note:
        console.print(f"note: {escape(res.note)}", highlight=False, markup=False)
    if res.best_config is not None:
        console.print(f"best configuration: {escape(res.best_config)} (gpunet train --config "
                      f"{escape(res.best_config)})", highlight=False, markup=False)
    if res.plot is not None:
        console.print(f"plot: {escape(res.plot)}", highlight=False, markup=False)
    console.print(f"{res.seconds:.1f}s", highlight=False)
