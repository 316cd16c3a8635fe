"""Convert a format-1 checkpoint (before integrity digests) to format 2, once, for a file its
owner trusts::

    python -m gpunet.checkpoint.upgrade OLD.h5 NEW.h5

Format 1 stored its JSON in variable-length string attributes, which HDF5 reads from the
file's global heap: a damaged heap makes HDF5 crash or spin. So the old file is read in a child
process under a time limit, its arrays are checked against their crc32, and the result is
written as a new file (never over an existing one), then loaded as every checkpoint is: its
metadata validated and its digest verified.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import h5py
import numpy as np

from ..errors import CheckpointError, GpunetError
from .core import Checkpoint
from .store import JSON_ATTRS, load, save

#: seconds the child process may take to read the old file
TIME_LIMIT = 120


def read_v1(path: str | Path) -> Checkpoint:
    """Read a format-1 checkpoint (JSON attributes, arrays checked against their crc32).
    Only for a file you trust: run it in a separate process (``upgrade`` does)."""
    with h5py.File(path, "r") as f:
        if int(f.attrs.get("format_version", -1)) != 1:
            raise CheckpointError(f"{path} is not a format-1 gpunet checkpoint")
        meta = {k: json.loads(f.attrs[k]) for k in JSON_ATTRS}
        groups: dict[str, dict[str, np.ndarray]] = {}
        for g in ("model", "optimizer", "standardizer"):
            groups[g] = {}
            for name, d in f[g].items():
                a = d[()]
                if int(d.attrs["crc32"]) != zlib.crc32(np.ascontiguousarray(a).tobytes()):
                    raise CheckpointError(f"{path}: {g}/{name} fails its crc32")
                groups[g][name] = np.asarray(a, dtype=np.float32)
    return Checkpoint(arrays=groups["model"], optimizer_state=groups["optimizer"],
                      standardizer=groups["standardizer"], **meta)


def upgrade(src: str | Path, dst: str | Path) -> Checkpoint:
    """Write ``src`` (format 1) as ``dst`` (format 2) and return the verified result."""
    src, dst = Path(src), Path(dst)
    if dst.exists():
        raise CheckpointError(f"{dst} exists; choose a new file name")
    try:
        r = subprocess.run([sys.executable, "-m", "gpunet.checkpoint.upgrade", "--child",
                            str(src), str(dst)], capture_output=True, text=True,
                           timeout=TIME_LIMIT, env=dict(os.environ))
    except subprocess.TimeoutExpired:
        raise CheckpointError(f"{src}: reading it took over {TIME_LIMIT} s (a damaged file)") \
            from None
    if r.returncode != 0:
        lines = (r.stderr.strip() or f"the reader died (exit {r.returncode})").splitlines()
        raise CheckpointError(f"cannot upgrade {src}: {lines[-1].removeprefix('error: ')}")
    try:
        return load(dst)
    except CheckpointError:
        dst.unlink(missing_ok=True)  # we wrote it, and it is not a valid checkpoint
        raise


def main(argv: list[str]) -> int:
    """``upgrade OLD NEW`` (or ``--child OLD NEW``, the reading process)."""
    child = argv[:1] == ["--child"]
    args = argv[1:] if child else argv
    if len(args) != 2:
        print("usage: python -m gpunet.checkpoint.upgrade OLD.h5 NEW.h5", file=sys.stderr)
        return 2
    try:
        if child:
            save(args[1], read_v1(args[0]))
        else:
            upgrade(args[0], args[1])
            print(f"wrote {args[1]} (format 2, verified)")
    except (GpunetError, OSError, KeyError, ValueError, TypeError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
