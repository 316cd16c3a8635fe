"""Hostile options, config files and file contents against the command line.

Every bad value of any magnitude or sign, every special file given as ``--config`` and every
deeply nested TOML document gives exactly one ``error:`` line, exit code 2, no traceback, and
leaves every existing file unchanged (``tests/hostile.py``). Strings read from files print
with their control characters escaped; JSON output stays valid JSON; ``predict --out`` never
replaces the data or the checkpoint it reads; a closed stdout ends a command quietly; the "no
usable GPU" note lives in the header line that names the device, never in a warning line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from gpunet.cli import app
from hostile import MEMORY_LIMIT, assert_one_line_error, run_cli, snapshot
from typer.testing import CliRunner

import gpunet
from gpunet.data import resolve_data_path
from gpunet.text import escape

runner = CliRunner()
FAST = ["--device", "cpu", "--hidden", "8", "--epochs", "1", "--batch-size", "64"]
#: class names, keys and attributes that try to forge or hide output lines
EVIL_CLASSES = ["a\x1b[2Jb", "c\nepoch 9/9  fake", "d\re\u202ef", "g\x07\x00h"]


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def blobs(path: Path, n: int = 240, d: int = 4, classes: int = 3, seed: int = 0,
          names: list[str] | None = None) -> Path:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (classes, d))
    y = np.arange(n) % classes
    X = (centers[y] + rng.standard_normal((n, d))).astype(np.float32)
    with h5py.File(path, "w") as f:
        k = n * 3 // 4
        f["train/X"], f["train/y"] = X[:k], y[:k]
        f["test/X"], f["test/y"] = X[k:], y[k:]
        if names is not None:
            f.attrs["classes"] = names
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small run on blobs whose class names carry control characters: (data, run folder)."""
    root = tmp_path_factory.mktemp("hostile")
    data = blobs(root / "evil.h5", names=EVIL_CLASSES[:3])
    out = root / "run"
    r = invoke("train", data, "--out", out, *FAST, "--quiet")
    assert r.exit_code == 0, r.output
    return data, out


# ---------------------------------------------------------------------- option values
BIG = str(2**64)
HUGE = str(2**70)
TRAIN_OPTIONS = [
    (["--seed", "-1"], r"--seed must be >= 0"),
    (["--seed", BIG], r"--seed must be at most"),
    (["--seed", str(2**53 + 1)], r"--seed must be at most 9007199254740992"),
    (["--seed", "1e30"], r"Invalid value for '--seed'"),
    (["--seed", "abc"], r"Invalid value for '--seed'"),
    (["--batch-size", "0"], r"--batch-size must be >= 1"),
    (["--batch-size", "-1"], r"--batch-size must be >= 1"),
    (["--batch-size", str(2**31)], r"--batch-size must be at most"),
    (["--batch-size", str(2**63)], r"--batch-size must be at most"),
    (["--epochs", "0"], r"--epochs must be >= 1"),
    (["--epochs", "-5"], r"--epochs must be >= 1"),
    (["--epochs", str(2**63)], r"--epochs must be at most 1000000"),
    (["--epochs", "1e30"], r"Invalid value for '--epochs'"),
    (["--memory-budget", "-1"], r"--memory-budget must be a size"),
    (["--memory-budget", "1e30GB"], r"--memory-budget must be at most"),
    (["--memory-budget", "1e400"], r"--memory-budget must be at most"),
    (["--memory-budget", "abc"], r"--memory-budget must be a size"),
    (["--memory-budget", "0.1"], r"--memory-budget must be positive"),
    (["--lr", "nan"], r"lr in the command line must be a finite number"),
    (["--lr", "inf"], r"lr in the command line must be a finite number"),
    (["--lr", "1e400"], r"lr in the command line must be a finite number"),
    (["--lr", "1e-400"], r"--lr must be a positive number"),
    (["--lr", "-0.1"], r"--lr must be a positive number"),
    (["--eps", "inf"], r"eps in the command line must be a finite number"),
    (["--eps", "0"], r"--eps must be a positive number"),
    (["--beta1", "nan"], r"must be a finite number"),
    (["--beta1", "1"], r"--beta1 must be in"),
    (["--dropout", "nan"], r"must be a finite number"),
    (["--dropout", "1"], r"--dropout must be in"),
    (["--val-split", "1e30"], r"--val-split must be in"),
    (["--bn-momentum", "-inf"], r"must be a finite number"),
    (["--bn-momentum", "1.5"], r"--bn-momentum must be in"),
    (["--weight-decay", "inf"], r"must be a finite number"),
    (["--weight-decay", "-1e-300"], r"--weight-decay must be >= 0"),
    (["--patience", "-1"], r"--patience must be >= 0"),
    (["--patience", HUGE], r"--patience must be at most"),
    (["--save-every", HUGE], r"--save-every must be at most"),
    (["--lr-decay-rate", "inf"], r"must be a finite number"),
    (["--lr-decay-rate", "-1"], r"lr_decay_rate must be >= 0"),
    (["--lr-step-size", "0"], r"lr_step_size must be >= 1"),
    (["--hidden", "0,-3"], r"--hidden widths must be integers in 1\.\."),
    (["--hidden", str(2**62)], r"--hidden widths must be integers in 1\.\."),
    (["--hidden", "1e30"], r"--hidden must be comma-separated integers"),
    (["--hidden", "abc"], r"--hidden must be comma-separated integers"),
    (["--device", "gpu:" + "9" * 40], r"unknown --device"),
]


@pytest.mark.parametrize("args,pattern", TRAIN_OPTIONS, ids=lambda v: " ".join(v)
                         if isinstance(v, list) else None)
def test_train_option_of_any_magnitude_is_one_line(args, pattern, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    before = snapshot(tmp_path)
    r = invoke("train", "digits", "--out", tmp_path / "run", "--device", "cpu", *args)
    assert_one_line_error(r, pattern)
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "run").exists()


OTHER_OPTIONS = [
    (["eval", "{ck}", "--batch-size", "0"], r"--batch-size must be >= 1"),
    (["eval", "{ck}", "--batch-size", str(2**63)], r"--batch-size must be at most"),
    (["eval", "{ck}", "--memory-budget", "-1"], r"--memory-budget must be a size"),
    (["eval", "{ck}", "--memory-budget", "1e30GB"], r"--memory-budget must be at most"),
    (["eval", "{ck}", "--memory-budget", "abc"], r"--memory-budget must be a size"),
    (["eval", "{ck}", "--split", "\x1b[2J"], r"unknown --split '\\x1b\[2J'"),
    (["predict", "{ck}", "--data", "{data}", "--out", "{tmp}/p.csv", "--batch-size", "-1"],
     r"--batch-size must be >= 1"),
    (["predict", "{ck}", "--data", "{data}", "--out", "{tmp}/p.csv", "--memory-budget",
      "1e999"], r"--memory-budget must be at most"),
    (["export", "{ck}", "--opset", "-1", "--out", "{tmp}/m.onnx"], r"--opset must be in"),
    (["export", "{ck}", "--opset", HUGE, "--out", "{tmp}/m.onnx"], r"--opset must be in"),
    (["data", "make", "--out", "{tmp}/m.h5", "--seed", "-1"], r"seed must be in"),
    (["data", "make", "--out", "{tmp}/m.h5", "--n", str(2**63)], r"too large"),
    (["data", "make", "--out", "{tmp}/m.h5", "--noise", "nan"], r"noise must be in"),
    (["data", "make", "--out", "{tmp}/m.h5", "--noise", "inf"], r"noise must be in"),
    (["data", "make", "--out", "{tmp}/m.h5", "--classes", "-3"], r"classes must be at least"),
    (["data", "make", "--out", "{tmp}/m.h5", "--test-fraction", "nan"], r"test_fraction"),
    (["tune", "digits", "--trials", "-1", "--out", "{tmp}/t"], r"--trials must be >= 1"),
    (["tune", "digits", "--trials", "1", "--epochs", str(2**63), "--out", "{tmp}/t"],
     r"--epochs must be at most"),
    (["tune", "digits", "--trials", "1", "--seed", "-1", "--out", "{tmp}/t"],
     r"--seed must be >= 0"),
]


@pytest.mark.parametrize("argv,pattern", OTHER_OPTIONS,
                         ids=lambda v: " ".join(v[:1] + v[-2:]) if isinstance(v, list) else None)
def test_other_commands_options_of_any_magnitude_are_one_line(argv, pattern, run, tmp_path):
    data, out = run
    (tmp_path / "keep.txt").write_text("mine")
    argv = [a.format(ck=out / "best.h5", data=data, tmp=tmp_path) for a in argv]
    before = snapshot(tmp_path, out, data.parent)
    r = invoke(*argv)
    assert_one_line_error(r, pattern)
    assert snapshot(tmp_path, out, data.parent) == before


# ---------------------------------------------------------------------- config values
DEEP = 10_000
CONFIG_VALUES = [
    ("seed = -1", r"--seed must be >= 0"),
    ("seed = 1e30", r"--seed must be at most"),
    (f"seed = {2**64}", r"--seed must be at most"),
    ("seed = inf", r"seed in config file .* must be an integer"),
    ("seed = nan", r"must be an integer"),
    ('seed = "x"', r"must be an integer"),
    ("seed = [1]", r"must be an integer"),
    ("seed = {a = 1}", r"must be an integer"),
    ("seed = 1979-05-27", r"must be an integer"),
    ("seed = true", r"must be an integer"),
    ("batch_size = 0", r"--batch-size must be >= 1"),
    (f"batch_size = {2**63 - 1}", r"--batch-size must be at most"),
    (f"batch_size = {-2**63}", r"--batch-size must be >= 1"),
    ("batch_size = 1.5", r"must be an integer"),
    ("epochs = 1e30", r"--epochs must be at most"),
    ("epochs = 1e400", r"must be an integer"),
    ("hidden = [1e30]", r"--hidden widths must be integers in"),
    ("hidden = [inf]", r"--hidden must be comma-separated integers"),
    ("hidden = [nan]", r"--hidden must be comma-separated integers"),
    ("hidden = [true]", r"--hidden must be comma-separated integers"),
    ("hidden = [[1]]", r"--hidden must be comma-separated integers"),
    ('hidden = "1,-1"', r"--hidden widths must be integers in"),
    ("memory_budget = -1", r"--memory-budget must be positive"),
    ("memory_budget = 1e30", r"--memory-budget must be a size"),
    ("memory_budget = true", r"--memory-budget must be a size"),
    ('memory_budget = "1e30GB"', r"--memory-budget must be at most"),
    ("memory_budget = [1]", r"--memory-budget must be a size"),
    ("lr = inf", r"must be a finite number"),
    ("lr = nan", r"must be a finite number"),
    ("lr = true", r"must be a number"),
    (f"lr = {'9' * 400}", r"must be a number"),
    ("lr_gamma = inf", r"must be a finite number"),
    ("lr_step_size = 0", r"lr_step_size must be >= 1"),
    ('data = "a\\u0000b"', r"must be a string without NUL"),
    ('out = "x\\u0000"', r"must be a string without NUL"),
    ('device = "gpu:99999999999"', r"unknown --device"),
    ('"\\u001b[2J" = 1', r"unknown key '\\x1b\[2J'"),
    ('optimizer = "' + "x" * 100_000 + '"', r"unknown optimizer 'x+\.\.\.x+'"),
    ("a = " + "[" * DEEP + "]" * DEEP, r"nested too deeply"),
    ("a = " + "{b = " * DEEP + "1" + "}" * DEEP, r"nested too deeply"),
    ("[" + ".".join(["a"] * DEEP) + "]", r"unknown key 'a'"),
    ("train = 1\nseed = 1", r"unknown key 'train'"),
]


@pytest.mark.parametrize("text,pattern", CONFIG_VALUES, ids=lambda v: v[:40] if isinstance(
    v, str) else None)
def test_config_value_of_any_magnitude_or_shape_is_one_line(text, pattern, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text + "\n", encoding="utf-8")
    before = snapshot(tmp_path)
    r = invoke("train", "digits", "--out", tmp_path / "run", "--config", cfg)
    line = assert_one_line_error(r, pattern)
    assert len(line) < 2000 and "\x1b" not in line and "\x00" not in line
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "run").exists()


def test_config_values_at_the_limits_are_accepted(tmp_path):
    """The largest seed, a batch larger than the data and a huge memory budget train."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'seed = {2**53}\nbatch_size = 5000\nmemory_budget = "1000TB"\n'
                   f"epochs = 1\nhidden = [8]\npatience = {2**53}\n")
    r = invoke("train", "digits", "--out", tmp_path / "run", "--device", "cpu", "--config",
               cfg, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["epochs"] == 1


def _special_config(kind: str, tmp_path: Path) -> str:
    if kind == "fifo":
        os.mkfifo(tmp_path / "fifo")
        return str(tmp_path / "fifo")
    if kind == "directory":
        return str(tmp_path)
    if kind == "huge file":
        p = tmp_path / "huge.toml"
        with open(p, "wb") as f:  # a valid TOML comment, 64 MiB long
            f.write(b"#" + b"x" * (64 << 20) + b"\n")
        return str(p)
    if kind == "non-UTF-8":
        p = tmp_path / "latin1.toml"
        p.write_bytes(b'optimizer = "caf\xe9"\n')
        return str(p)
    if kind == "NUL in path":
        return "c\x00.toml"
    return kind  # a device


@pytest.mark.slow
@pytest.mark.parametrize("kind,pattern", [
    ("/dev/zero", r"not a regular file"),
    ("/dev/urandom", r"not a regular file"),
    ("/dev/null", r"not a regular file"),
    ("fifo", r"not a regular file"),
    ("directory", r"is a directory"),
    ("huge file", r"larger than 1 MiB"),
    ("non-UTF-8", r"not UTF-8"),
])
def test_special_files_as_config_in_bounded_time_and_memory(kind, pattern, tmp_path):
    """A real subprocess under a 2 GB address-space limit: a FIFO must not block, a device
    must not be read forever, a huge file is not read whole."""
    cfg = _special_config(kind, tmp_path)
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "mine.txt").write_text("mine")
    before = snapshot(tmp_path)
    r = run_cli("train", "digits", "--out", keep / "run", "--config", cfg,
                memory=MEMORY_LIMIT, timeout=60)
    assert_one_line_error(r, pattern)
    assert snapshot(tmp_path) == before
    assert not (keep / "run").exists()


def test_config_path_with_a_nul_byte_is_one_line(tmp_path):
    from gpunet.config import read_toml
    from gpunet.errors import ConfigError

    with pytest.raises(ConfigError, match="not a valid path"):
        read_toml("c\x00.toml")


# ---------------------------------------------------------------------- escaped output
def _assert_clean(text: str) -> None:
    """No raw control, format or separator character but the newlines between lines."""
    for line in text.split("\n"):
        assert escape(line) == line, repr(line)


def test_class_names_print_escaped_in_every_command(run, tmp_path):
    data, out = run
    ck = out / "best.h5"
    outputs = {
        "inspect": invoke("data", "inspect", data),
        "eval": invoke("eval", ck, "--device", "cpu"),
        "predict": invoke("predict", ck, "--data", data, "--out", tmp_path / "p.csv",
                          "--device", "cpu"),
        "train": invoke("train", data, "--out", tmp_path / "r2", *FAST),
    }
    for name, r in outputs.items():
        assert r.exit_code == 0, (name, r.output)
        _assert_clean(r.stdout)
        _assert_clean(r.stderr)
    report = outputs["eval"].stdout.splitlines()
    # the report's shape does not change: 3 classes = 3 rows in each table
    assert len(report) == 3 + 1 + 3 + 1 + 1 + 1 + 3
    assert report[4].startswith(escape(EVIL_CLASSES[0])) and "\\x1b[2J" in report[4]
    assert report[5].startswith("c\\nepoch 9/9  fake")
    assert "d\\re\\u202ef" in outputs["predict"].stdout
    assert "classes (3): a\\x1b[2Jb, c\\nepoch 9/9  fake, d\\re\\u202ef" in \
        outputs["inspect"].stdout


def test_json_output_stays_valid_and_round_trips_class_names(run, tmp_path):
    data, out = run
    ck = out / "best.h5"
    for argv in (["eval", ck, "--json", "--device", "cpu"],
                 ["predict", ck, "--data", data, "--out", tmp_path / "p.h5", "--json",
                  "--device", "cpu"],
                 ["data", "inspect", data, "--json"], ["info", "--json"],
                 ["export", ck, "--format", "safetensors", "--out", tmp_path / "m.st",
                  "--json"]):
        r = invoke(*argv)
        assert r.exit_code == 0, (argv, r.output)
        assert len(r.stdout.splitlines()) == 1 and r.stdout.isascii()
        obj = json.loads(r.stdout)
        if argv[0] == "eval":
            assert obj["classes"] == EVIL_CLASSES[:3]
            assert list(obj["per_class"]) == EVIL_CLASSES[:3]
        if argv[0] == "predict":
            assert list(obj["counts"]) == EVIL_CLASSES[:3]


def test_json_line_writes_non_finite_numbers_as_null():
    from gpunet.text import json_line

    s = json_line({"a": float("nan"), "b": [float("inf"), 1.5], "c": "x\x1b\udcff"})
    assert json.loads(s) == {"a": None, "b": [None, 1.5], "c": "x\x1b\udcff"}
    assert "NaN" not in s and "Infinity" not in s and s.isascii()


def test_error_lines_quoting_files_are_escaped(tmp_path):
    """A key with control characters in a data file or a config file reaches the error
    line escaped: still one line, no escape sequence."""
    bad = tmp_path / "k.h5"
    with h5py.File(bad, "w") as f:
        f["X\x1b[31m\nfake"] = np.zeros((4, 2), np.float32)
    before = snapshot(tmp_path)
    for argv in (["train", bad, "--out", tmp_path / "r", *FAST, "--x-key", "X\x1b[31m\nno"],
                 ["eval", tmp_path / "no\x1b[2J.h5"],
                 ["predict", tmp_path / "a\rb.h5", "--data", bad, "--out", tmp_path / "p.csv"]):
        r = invoke(*argv)
        line = assert_one_line_error(r)
        assert "\x1b" not in r.stderr and "\r" not in r.stderr, line
    assert snapshot(tmp_path) == before


def test_escape_reference_cases():
    assert escape("plain text, é 猫 \\ [b]") == "plain text, é 猫 \\ [b]"
    assert escape("a\x1b[2Jb\n\r\t") == "a\\x1b[2Jb\\n\\r\\t"
    assert escape("\x00\x7f\x85\u200b\u202e\u2028\U000e0001\udcff") == \
        "\\x00\\x7f\\x85\\u200b\\u202e\\u2028\\U000e0001\\udcff"
    assert escape(12) == "12"


def test_rich_output_escapes_markup_too():
    from gpunet.text import rich_text

    assert rich_text("[bold]x\x1b") == "\\[bold]x\\x1b"


# ---------------------------------------------------------------------- predict --out
def test_predict_never_overwrites_the_bundled_data_or_the_checkpoint(run, tmp_path):
    data, out = run
    ck = out / "best.h5"
    digits = resolve_data_path("digits")
    link = tmp_path / "link.h5"
    link.symlink_to(data)
    hard = tmp_path / "hard.h5"
    os.link(data, hard)
    ck_link = tmp_path / "ck.h5"
    ck_link.symlink_to(ck)
    cases = [
        (["--data", data, "--out", data], r"is the data file"),
        (["--data", data, "--out", link], r"is the data file"),
        (["--data", data, "--out", hard], r"is the data file"),
        (["--data", link, "--out", data.parent / ".." / data.parent.name / data.name],
         r"is the data file"),
        (["--data", data, "--out", ck], r"is the checkpoint"),
        (["--data", data, "--out", ck_link], r"is the checkpoint"),
    ]
    before = snapshot(tmp_path, out, data.parent, digits.parent)
    for extra, pattern in cases:
        assert_one_line_error(invoke("predict", ck, *extra, "--device", "cpu"), pattern)
    assert snapshot(tmp_path, out, data.parent, digits.parent) == before


def test_predict_never_overwrites_digits_given_by_name(tmp_path):
    """``--data digits`` is the packaged file: --out naming that file is refused."""
    digits = resolve_data_path("digits")
    r = invoke("train", "digits", "--out", tmp_path / "run", *FAST, "--quiet")
    assert r.exit_code == 0, r.output
    before = snapshot(digits.parent)
    for out in (digits, Path(os.path.relpath(digits))):
        r = invoke("predict", tmp_path / "run" / "best.h5", "--data", "digits", "--out", out,
                   "--device", "cpu")
        assert_one_line_error(r, r"is the data file")
    assert snapshot(digits.parent) == before
    # a file of the same name elsewhere is not the data
    r = invoke("predict", tmp_path / "run" / "best.h5", "--data", "digits", "--out",
               tmp_path / "digits.h5", "--device", "cpu")
    assert r.exit_code == 0, r.output


# ---------------------------------------------------------------------- the GPU note
def _auto_falls_back() -> bool:
    """Whether ``auto`` finds no usable GPU here (as the subprocesses will)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gpunet.get_backend("auto").name == "cpu"


@pytest.mark.slow
def test_no_gpu_is_said_once_in_the_header_and_never_under_quiet(tmp_path):
    """Without ``--device`` (auto): no ``warning: ... no usable GPU`` line on any command;
    train's header line names the device and, on a machine without a GPU, why."""
    fell_back = _auto_falls_back()
    r = run_cli("train", "digits", "--out", tmp_path / "a", "--hidden", "8", "--epochs", "1")
    assert r.code == 0, r.stderr
    assert "usable GPU" not in r.stderr
    header = r.stdout.splitlines()[0]
    if fell_back:
        assert header.startswith("training on cpu (no usable GPU: "), header
        assert sum("no usable GPU" in line for line in r.stdout.splitlines()) == 1
    r = run_cli("train", "digits", "--out", tmp_path / "b", "--hidden", "8", "--epochs", "1",
                "--quiet")
    assert r.code == 0 and r.stdout == "" and r.stderr == "", r.stderr
    for argv in (["eval", tmp_path / "a" / "best.h5"], ["data", "inspect", "digits"],
                 ["predict", tmp_path / "a" / "best.h5", "--data", "digits", "--out",
                  tmp_path / "p.csv"]):
        r = run_cli(*argv)
        assert r.code == 0 and "usable GPU" not in r.stdout + r.stderr, (argv, r.stderr)


def test_device_label_follows_the_latest_request(monkeypatch):
    from gpunet import backend as bmod

    monkeypatch.setattr(bmod, "_fallbacks", {"auto": "CuPy is not installed"})
    monkeypatch.setattr(bmod, "_latest", [None])
    bmod.get_backend("cpu")
    assert bmod.device_label("cpu") == "cpu"
    monkeypatch.setitem(bmod._cache, "auto", bmod.get_backend("cpu"))
    bmod.get_backend("auto")
    assert bmod.device_label("cpu") == "cpu (no usable GPU: CuPy is not installed)"
    assert bmod.device_label("gpu") == "gpu"
    bmod.get_backend("cpu")
    assert bmod.device_label("cpu") == "cpu"


# ---------------------------------------------------------------------- broken pipe
def _closed_pipe_run(*args: object) -> subprocess.CompletedProcess:
    """The CLI with stdout a pipe whose reader has already gone: every write fails."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run([sys.executable, "-m", "gpunet.cli", *map(str, args)],
                              stdout=w, stderr=subprocess.PIPE, text=True, timeout=120,
                              env=dict(os.environ, GPUNET_DEVICE="cpu"))
    finally:
        os.close(w)


@pytest.mark.slow
def test_closed_stdout_exits_quietly(run, tmp_path):
    _, out = run
    for argv in (["data", "inspect", "digits"], ["eval", out / "best.h5"], ["info"],
                 ["train", "--help"],
                 ["train", "digits", "--out", tmp_path / "t", "--hidden", "8", "--epochs",
                  "1"]):
        p = _closed_pipe_run(*argv)
        assert p.returncode == 141, (argv, p.returncode, p.stderr)
        assert p.stderr == "", (argv, p.stderr)


@pytest.mark.slow
def test_piping_into_head_prints_the_first_line_and_nothing_else(run):
    _, out = run
    for cmd in ("data inspect digits", f"eval {out / 'best.h5'}"):
        p = subprocess.run(f"{sys.executable} -m gpunet.cli {cmd} | head -1; "
                           f"echo \"rc=${{PIPESTATUS[0]}}\"", shell=True,
                           executable="/bin/bash", capture_output=True, text=True,
                           timeout=120, env=dict(os.environ, GPUNET_DEVICE="cpu"))
        lines = p.stdout.splitlines()
        assert len(lines) == 2 and lines[1] in ("rc=0", "rc=141"), p.stdout
        assert p.stderr == "", p.stderr


def test_integer_limits_are_what_a_checkpoint_can_store():
    """Every integer setting the config accepts fits the checkpoint's JSON integers."""
    from gpunet import config
    from gpunet.checkpoint import schema

    assert config.MAX_INT == schema.MAX_INT and config.MAX_SEED <= schema.MAX_INT
