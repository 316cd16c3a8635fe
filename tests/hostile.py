"""Shared checks for bad and hostile input: the promise every command keeps.

Bad input gives exactly one ``error: ...`` line on stderr, exit code 2, no traceback, nothing on
stdout, and every file that existed before is byte-for-byte unchanged. ``run_cli`` runs the real
command line in a subprocess (optionally under an address-space limit and a time limit), so a
case that would allocate without bound or spin forever fails the test instead of the machine.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

#: address-space limit for the small-file memory cases (bytes)
MEMORY_LIMIT = 2 * 1024**3


def snapshot(*folders: Path) -> dict[str, str]:
    """sha256 of every regular file (not following links) under ``folders``, by path."""
    out: dict[str, str] = {}
    for folder in folders:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file() and not p.is_symlink():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def _limit_memory(limit: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def run_cli(*args: object, memory: int | None = None, timeout: float = 60,
            env: dict[str, str] | None = None, cwd: Path | None = None) -> Result:
    """``python -m gpunet.cli ARGS`` in a subprocess; ``memory`` caps its address space."""
    e = dict(os.environ, GPUNET_DEVICE="cpu", **(env or {}))
    pre = (lambda: _limit_memory(memory)) if memory else None
    p = subprocess.run([sys.executable, "-m", "gpunet.cli", *map(str, args)], capture_output=True,
                       text=True, timeout=timeout, env=e, cwd=cwd, preexec_fn=pre)
    return Result(p.returncode, p.stdout, p.stderr)


def assert_one_line_error(r: object, pattern: str | None = None) -> str:
    """``r`` (a ``Result`` or a ``CliRunner`` result) failed as promised; returns the line.

    Warning lines (``warning: ...``) may precede the error; nothing else may."""
    code = getattr(r, "code", getattr(r, "exit_code", None))
    stdout = r.stdout
    stderr = r.stderr
    assert code == 2, f"exit code {code}\nstdout: {stdout}\nstderr: {stderr}"
    assert "Traceback" not in stdout + stderr, stderr
    assert stdout == "", stdout
    lines = [ln for ln in stderr.splitlines() if not ln.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    if pattern is not None:
        assert re.search(pattern, lines[0]), lines[0]
    return lines[0]
