"""``GPUNET_THREADS=N`` bounds every thread pool gpunet touches: its own pool and, through
threadpoolctl, every BLAS and OpenMP library loaded in the process (OpenBLAS's own threads
kept a ``GPUNET_THREADS=1`` run at 162 s instead of 14 s). Checked in fresh subprocesses: the
thread counts threadpoolctl reports, and the CPU time a large product takes against its wall
time."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_PROBE = r"""
import time
import numpy as np
from threadpoolctl import threadpool_info
import gpunet
from gpunet.text import json_line
be = gpunet.get_backend("cpu")
a = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
b = a.copy()
out = np.empty_like(a)
be.matmul(a, b, out)
t0, c0 = time.perf_counter(), time.process_time()
for _ in range(12):
    be.matmul(a, b, out)
    np.dot(a, b)   # NumPy's own BLAS call, outside gpunet's split products
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json_line({"pools": [[i["internal_api"], i["num_threads"]] for i in threadpool_info()],
                 "threads": be.threads, "wall": wall, "cpu": cpu}))
"""


def _probe(env: dict[str, str]) -> dict:
    e = {k: v for k, v in os.environ.items()
         if k not in ("GPUNET_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                      "MKL_NUM_THREADS")}
    p = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                       timeout=300, env={**e, **env})
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.mark.slow
def test_gpunet_threads_1_bounds_every_blas_and_openmp_pool():
    r = _probe({"GPUNET_THREADS": "1"})
    assert r["pools"], "threadpoolctl found no BLAS: nothing to bound"
    assert all(n == 1 for _, n in r["pools"]), r["pools"]
    assert r["threads"] == 1
    # one thread busy at a time: CPU time cannot exceed wall time by more than noise
    assert r["cpu"] <= 1.25 * r["wall"] + 0.05, r


@pytest.mark.slow
def test_gpunet_threads_n_caps_the_pools_at_n():
    r = _probe({"GPUNET_THREADS": "2"})
    assert r["threads"] == 2
    assert all(n <= 2 for _, n in r["pools"]), r["pools"]


@pytest.mark.slow
def test_without_gpunet_threads_the_blas_keeps_its_own_setting():
    """Unset, nothing is bounded: OpenBLAS keeps the thread count it chose at load (what the
    same process reports before gpunet made a backend)."""
    code = ("from threadpoolctl import threadpool_info; import numpy; "
            "before = {i['filepath']: i['num_threads'] for i in threadpool_info()}; "
            "import gpunet; gpunet.get_backend('cpu'); "
            "after = {i['filepath']: i['num_threads'] for i in threadpool_info()}; "
            "print(all(after[k] == v for k, v in before.items()))")
    e = {k: v for k, v in os.environ.items() if k != "GPUNET_THREADS"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, env=e)
    assert p.returncode == 0 and p.stdout.strip() == "True", p.stdout + p.stderr


@pytest.mark.slow
def test_the_cli_under_gpunet_threads_1_trains_with_one_blas_thread(tmp_path):
    """The command line path: ``gpunet train`` in a subprocess reports the BLAS bound at 1
    thread afterwards (a wrapper module prints threadpoolctl's view once the run ends)."""
    code = ("import sys, json; from gpunet.cli import app; "
            "from threadpoolctl import threadpool_info\n"
            "try:\n"
            "    app(['train', 'digits', '--out', sys.argv[1], '--hidden', '8', '--epochs',"
            " '1', '--device', 'cpu', '--quiet'])\n"
            "except SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            "print(json.dumps([i['num_threads'] for i in threadpool_info()]))")
    e = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=300,
                       env={**e, "GPUNET_THREADS": "1"})
    assert p.returncode == 0, p.stderr
    counts = json.loads(p.stdout.strip().splitlines()[-1])
    assert counts and all(n == 1 for n in counts), counts
