"""One training step on the GPU: gpunet eager (and graph-captured where available) beside
PyTorch eager and CUDA-graph-captured, on the same model.

Model: MLP 784-1024-1024-10, BatchNorm + ReLU, Adam, float32; batch sizes 128, 512, 4096.
Prints ms/step and samples/s per variant, and the ratio against PyTorch eager; writes JSON to
``--json PATH`` (or the ``BENCH_JSON`` environment variable).

    python benchmarks/train_step.py [--batches 128,512,4096] [--steps 50]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

SIZES = (784, 1024, 1024, 10)


def cuda_time(fn, steps: int, warmup: int = 5) -> float:
    """Median-of-3 milliseconds per call of ``fn``, timed with CUDA events around ``steps``
    calls."""
    import cupy

    for _ in range(warmup):
        fn()
    cupy.cuda.get_current_stream().synchronize()
    times = []
    for _ in range(3):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        for _ in range(steps):
            fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop) / steps)
    return float(np.median(times))


def gpunet_variants(batch: int) -> dict:
    """gpunet's TrainStep eager, graph-captured, and graph-captured with TF32 GEMMs."""
    import cupy

    import gpunet as gn

    be = gn.get_backend("gpu")
    rng = np.random.default_rng(0)
    x = be.asarray(rng.standard_normal((batch, SIZES[0])).astype(np.float32))
    y = be.asarray(rng.integers(0, SIZES[-1], batch).astype(np.int64))
    out = {}
    for name, graph, tf32 in (("gpunet eager", False, False), ("gpunet graph", True, False),
                              ("gpunet graph tf32", True, True)):
        model = gn.MLP(SIZES[0], hidden=list(SIZES[1:-1]), classes=SIZES[-1], backend=be,
                       seed=0)
        step = gn.TrainStep(model, gn.optim.Adam(model, lr=1e-3), batch_size=batch,
                            cuda_graph=graph, tf32=tf32)
        step.x[...] = x
        step.y[...] = y
        try:
            out[name] = cuda_time(step.run, 50)
            if graph and not step.cuda_graph:
                print(f"  {name}: not captured ({step.graph_off_reason})")
        except Exception as exc:  # noqa: BLE001 - report and carry on
            print(f"  {name} failed: {type(exc).__name__}: {exc}")
            out[name] = float("nan")
    be.use_own_gemm(tf32=False)
    cupy.get_default_memory_pool().free_all_blocks()
    return out


def torch_variants(batch: int) -> dict:
    import torch

    dev = "cuda"
    torch.manual_seed(0)
    layers: list = []
    for a, b in zip(SIZES[:-2], SIZES[1:-1], strict=True):
        layers += [torch.nn.Linear(a, b, bias=False), torch.nn.BatchNorm1d(b), torch.nn.ReLU()]
    layers.append(torch.nn.Linear(SIZES[-2], SIZES[-1]))
    model = torch.nn.Sequential(*layers).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=True)
    x = torch.randn(batch, SIZES[0], device=dev)
    y = torch.randint(0, SIZES[-1], (batch,), device=dev)

    def step():
        opt.zero_grad(set_to_none=False)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    out = {}
    out["torch eager"] = torch_time(step, 30)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step()
    out["torch graph"] = torch_time(g.replay, 50)
    return out


def torch_time(fn, steps: int) -> float:
    import torch

    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(3):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(steps):
            fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / steps)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="128,512,4096")
    ap.add_argument("--json", default=os.environ.get("BENCH_JSON") or None)
    args = ap.parse_args()
    results: dict[str, dict[str, float]] = {}
    for batch in [int(b) for b in args.batches.split(",")]:
        row = gpunet_variants(batch)
        try:
            row.update(torch_variants(batch))
        except Exception as exc:  # noqa: BLE001 - torch is optional
            print(f"  torch unavailable: {type(exc).__name__}: {exc}", file=sys.stderr)
        results[str(batch)] = row
        base = row.get("torch eager")
        print(f"batch {batch}:")
        for name, ms in row.items():
            ratio = f"  {base / ms:5.2f}x vs torch eager" if base and ms == ms else ""
            print(f"  {name:14s} {ms:8.3f} ms/step {batch / ms * 1e3:12,.0f} samples/s{ratio}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": "-".join(map(str, SIZES)), "ms_per_step": results}, f, indent=2)


if __name__ == "__main__":
    main()
