"""Byte-flip fuzzing of a small checkpoint: every corrupted file either loads identically
(same arrays, same attributes) or is refused with a one-line ``CheckpointError``, within a
time limit per load, and never crashes the process.

Each byte of the file is flipped (``^ 0xFF``); the metadata text and the digest attribute are
also flipped one bit at a time (``^ 0x01``, which keeps the JSON ASCII, so the schema and the
digest are reached rather than the text decoding). The loads run in a child process, each under
``signal.alarm``: a load stuck inside HDF5's C code cannot be interrupted from Python, so the
alarm's default action ends the child and the parent records the offset that did it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

import gpunet as gn
from gpunet import checkpoint as ck
from gpunet.data import Standardizer

#: seconds one load may take before the child is killed
LOAD_LIMIT = 5

CHILD = textwrap.dedent("""
    import json, signal, sys
    import numpy as np
    from gpunet import checkpoint as ck
    from gpunet.errors import CheckpointError
    src, tmp, jobs = sys.argv[1], sys.argv[2], json.loads(open(sys.argv[3]).read())
    limit = int(sys.argv[4])
    data = open(src, "rb").read()
    ref = ck.load(src)
    KEYS = ("model", "layout", "config", "data", "classes", "progress", "rng", "optimizer",
            "extra", "gpunet_version", "created", "format_version")
    def same(a, b):
        if any(getattr(a, k) != getattr(b, k) for k in KEYS):
            return False
        for k in ("arrays", "optimizer_state", "standardizer"):
            x, y = getattr(a, k), getattr(b, k)
            if x.keys() != y.keys() or any(x[n].dtype != y[n].dtype
                                           or not np.array_equal(x[n], y[n]) for n in x):
                return False
        return True
    for off, mask in jobs:
        b = bytearray(data)
        b[off] ^= mask
        with open(tmp, "wb") as fh:
            fh.write(b)
        sys.stdout.write(f"start {off} {mask}\\n")
        sys.stdout.flush()
        signal.alarm(limit)
        try:
            out = "same" if same(ck.load(tmp), ref) else "DIFFERENT"
        except CheckpointError as e:
            msg = str(e)
            out = "bad-multiline" if "\\n" in msg else "err " + msg.split(tmp, 1)[-1][:60]
        except BaseException as e:
            out = f"bad-exception {type(e).__name__}: {str(e)[:100]!r}"
        signal.alarm(0)
        sys.stdout.write(f"{out}\\n")
    sys.stdout.write("done\\n")
""")


def _tiny(path: Path) -> Path:
    """A small checkpoint with every kind of content: batch norm, dropout, Adam, a
    standardizer, class names and progress."""
    be = gn.get_backend("cpu")
    model = gn.MLP(2, [2], 2, batchnorm=True, dropout=0.1, backend=be, seed=0)
    opt = gn.optim.make_optimizer("adam", model, lr=1e-2)
    std = Standardizer(np.array([0.5, -1], np.float32), np.array([2, 3], np.float32))
    ck.save(path, ck.from_training_state(model, opt, std, config={"lr": 0.01},
                                         data={"path": "x.h5"}, classes=["a", "b"],
                                         progress={"epoch": 1, "batch": 0, "step": 3}))
    return path


def _jobs(p: Path) -> list[tuple[int, int]]:
    data = p.read_bytes()
    with h5py.File(p, "r") as f:
        m = f["metadata"]
        meta = range(m.id.get_offset(), m.id.get_offset() + m.shape[0])
    d = data.index(b"sha256:")
    bits = [*meta, *range(d, d + 71)]
    return [(i, 0xFF) for i in range(len(data))] + [(i, 0x01) for i in bits]


def _run(src: Path, tmp_dir: Path, jobs: list[tuple[int, int]]) -> tuple[dict, list[str]]:
    """Run ``jobs`` in child processes (a new one after a death). Returns the count of each
    outcome and the problems found."""
    counts: dict[str, int] = {}
    problems: list[str] = []
    while jobs:
        (tmp_dir / "jobs.json").write_text(json.dumps(jobs))
        r = subprocess.run([sys.executable, "-c", CHILD, str(src), str(tmp_dir / "x.h5"),
                            str(tmp_dir / "jobs.json"), str(LOAD_LIMIT)],
                           capture_output=True, text=True, timeout=600)
        lines = r.stdout.splitlines()
        done = 0
        for line in lines:
            if line.startswith("start") or line == "done":
                continue
            kind = line.split(" ", 1)[0]
            counts[kind] = counts.get(kind, 0) + 1
            if kind not in ("same", "err"):
                problems.append(f"byte {jobs[done][0]} ^ {jobs[done][1]:#x}: {line}")
            done += 1
        if r.returncode == 0 and lines[-1:] == ["done"]:
            break
        problems.append(f"byte {jobs[done][0]} ^ {jobs[done][1]:#x}: the load "
                        f"{'ran past the time limit' if r.returncode == -14 else 'crashed'} "
                        f"(exit {r.returncode}) {r.stderr[-200:]}")
        jobs = jobs[done + 1:]
    return counts, problems


@pytest.mark.slow
def test_every_byte_flip_loads_identically_or_is_refused_in_one_line(tmp_path):
    src = _tiny(tmp_path / "tiny.h5")
    jobs = _jobs(src)
    assert len(jobs) > src.stat().st_size + 500  # every byte, plus the metadata's bits
    counts, problems = _run(src, tmp_path, jobs)
    assert problems == [], "\n".join(problems[:20])
    assert sum(counts.values()) == len(jobs)
    # both outcomes occur: unused bytes load identically; the rest are refused
    assert counts.get("same", 0) > 0 and counts.get("err", 0) > len(jobs) // 2
