"""Trials per minute of ``gpunet tune --workers N`` on this machine, for N = 1, 2, 4, on a
journal file and on PostgreSQL, in one run.

Each measurement is one ``gpunet tune`` command (a fresh study, ``--trials`` trials of
``--epochs`` epochs on synthetic data, CPU) timed from start to exit, so process start-up,
opening the study and the summary are included. PostgreSQL: ``--postgres URL`` (one database
per measurement is created through it), or a throwaway local cluster
(``tests/pgserver.py``) when the PostgreSQL binaries are installed.

    python3 benchmarks/tune_workers.py [--trials 24] [--epochs 8] [--workers 1,2,4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

SPACE = 'lr = [1e-3, 3e-2]\nbatch_size = {values = [64]}\nwidth = {low = 32, high = 128}\n' \
        'depth = {values = [2]}\n'


def make_data(path: Path, n: int = 6000, d: int = 32, classes: int = 5) -> Path:
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1.5, (classes, d))
    y = rng.integers(0, classes, n)
    X = (centers[y] + rng.standard_normal((n, d))).astype(np.float32)
    with h5py.File(path, "w") as f:
        f["train/X"], f["train/y"] = X, y
    return path


def run(data: Path, space: Path, storage: str, out: Path, trials: int, epochs: int,
        workers: int) -> dict:
    cmd = [sys.executable, "-m", "gpunet.cli", "tune", str(data), "--trials", str(trials),
           "--epochs", str(epochs), "--device", "cpu", "--storage", storage, "--study",
           f"bench{workers}", "--out", str(out), "--space", str(space), "--no-baseline",
           "--val-split", "0.2", "--json"]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stderr}")
    s = json.loads(r.stdout)
    assert s["complete"] == trials, s
    return {"wall": wall, "per_min": trials / wall * 60}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--postgres", default=None, help="a postgresql:// URL (default: a "
                    "throwaway local cluster)")
    a = ap.parse_args()
    counts = [int(w) for w in a.workers.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="gpunet-bench-"))
    data = make_data(tmp / "bench.h5")
    space = tmp / "space.toml"
    space.write_text(SPACE)
    server = None
    pg_url = a.postgres
    if pg_url is None:
        from pgserver import SKIP_REASON, PgServer

        if SKIP_REASON is None:
            server = PgServer()
            server.start()
    rows = []
    try:
        for kind in ("journal", "postgresql"):
            for w in counts:
                if kind == "journal":
                    storage = str(tmp / f"j{w}" / "study.journal")
                elif server is not None:
                    storage = server.create_db(f"bench{w}")
                elif pg_url is not None:
                    storage = pg_url
                else:
                    print("postgresql: skipped (no PostgreSQL binaries or psycopg here)")
                    break
                res = run(data, space, storage, tmp / f"o-{kind}-{w}", a.trials, a.epochs, w)
                rows.append((kind, w, res))
                print(f"{kind:10s} workers {w}: {res['wall']:6.1f} s, "
                      f"{res['per_min']:6.1f} trials/min", flush=True)
    finally:
        if server is not None:
            server.close()
    print(f"\n{os.cpu_count()} cores, {a.trials} trials of {a.epochs} epochs each "
          "(6,000 x 32 synthetic samples, MLP 2 x 32..128), CPU\n")
    print("| storage | workers | wall s | trials / min | vs 1 worker |")
    print("|---|---|---|---|---|")
    for kind, w, res in rows:
        one = next(r for k, n, r in rows if k == kind and n == counts[0])
        print(f"| {kind} | {w} | {res['wall']:.1f} | {res['per_min']:.1f} | "
              f"{res['per_min'] / one['per_min']:.2f}x |")


if __name__ == "__main__":
    main()
