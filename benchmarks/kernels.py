"""Kernel benchmarks on a GPU (docs/architecture.md, "Benchmarks").

For each fused op at the benchmark shapes (65536 x 1024 batch norm, 65536 x 1000
softmax cross-entropy), a small MLP shape (512 x 1024) and the optimizer update over the
784-1024-1024-10 MLP's ~1.87M parameters: the median time (CUDA events, after warm-up), GB/s
on the fewest bytes the op must move, that as a percentage of a device-to-device copy measured
in the same run, and the ratio against a naive CuPy composition (the reference ``Backend`` op
run with ``xp = cupy``) and against PyTorch when it is importable.

    python3 benchmarks/kernels.py [--json PATH] [--repeats N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

F32 = 4
# the targets (ms on an H100; docs/architecture.md, "Benchmarks"), keyed by case name
TARGETS_MS = {
    "bn_train_fwd": 0.21,
    "bn_infer_fwd": 0.20,
    "bn_fwd_bwd": 0.55,
    "softmax_ce_fwd_bwd": 0.22,
}


def _cupy():
    import cupy

    return cupy


# ------------------------------------------------------------------ timing
def _time_events(fn: Callable[[], Any], repeats: int, start: Any, end: Any,
                 elapsed: Callable[[], float], min_sample_ms: float) -> dict[str, float]:
    """Median ms per call over ``repeats`` samples; each sample times ``inner`` back-to-back
    calls between the events ``start`` and ``end`` (``inner`` grows until a sample lasts
    ``min_sample_ms``), so tiny ops are timed at their throughput rather than one launch's
    latency. ``elapsed()`` reads the ms between the two recorded events."""

    def sample(inner: int) -> float:
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        return elapsed()

    inner = 1
    while sample(inner) < min_sample_ms and inner < 1024:
        inner *= 2
    samples = [sample(inner) / inner for _ in range(repeats)]
    return {"ms": statistics.median(samples), "min_ms": min(samples), "inner": inner,
            "samples": len(samples)}


def time_cupy(fn: Callable[[], Any], repeats: int, warmup: int = 3,
              min_sample_ms: float = 0.5) -> dict[str, float]:
    """``_time_events`` with CuPy events, after ``warmup`` calls."""
    cp = _cupy()
    for _ in range(warmup):
        fn()
    cp.cuda.Device().synchronize()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    return _time_events(fn, repeats, start, end, lambda: cp.cuda.get_elapsed_time(start, end),
                        min_sample_ms)


def time_torch(fn: Callable[[], Any], repeats: int, warmup: int = 3,
               min_sample_ms: float = 0.5) -> dict[str, float]:
    """``_time_events`` with PyTorch's CUDA events, after ``warmup`` calls."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    return _time_events(fn, repeats, start, end, lambda: start.elapsed_time(end),
                        min_sample_ms)


def copy_bandwidth(nbytes: int, repeats: int) -> dict[str, float]:
    """Device-to-device cudaMemcpy of ``nbytes``; GB/s counts bytes read plus written."""
    cp = _cupy()
    src = cp.ones(nbytes // F32, dtype=cp.float32)
    dst = cp.empty_like(src)

    def run():
        dst.data.copy_from_device_async(src.data, src.nbytes)

    t = time_cupy(run, repeats)
    t["gbps"] = 2 * src.nbytes / (t["ms"] * 1e-3) / 1e9
    t["bytes"] = 2 * src.nbytes
    return t


# ------------------------------------------------------------------ cases
class Case:
    def __init__(self, name: str, shape: str, nbytes: int) -> None:
        self.name, self.shape, self.nbytes = name, shape, nbytes
        self.ours: Callable[[], Any] | None = None
        self.naive: Callable[[], Any] | None = None
        self.torch: Callable[[], Any] | None = None
        self.torch_label = ""


def make_cases(quick: bool) -> list[Case]:
    cp = _cupy()
    import gpunet
    from gpunet.backend.base import Backend

    be = gpunet.get_backend("gpu")

    class NaiveCupy(Backend):
        """The reference ops, unchanged, on CuPy arrays."""

        name = "naive-cupy"
        xp = cp

    naive = NaiveCupy()

    try:
        import torch
        import torch.nn.functional as F  # noqa: N812

        have_torch = torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        have_torch = False

    rng = cp.random.RandomState(0)
    cases: list[Case] = []

    def bn_cases(n: int, c: int, tag: str) -> None:
        x = rng.standard_normal((n, c), dtype=cp.float32) * 2 + 0.5
        dy = rng.standard_normal((n, c), dtype=cp.float32)
        gamma = cp.ones(c, cp.float32) * 1.5
        beta = cp.zeros(c, cp.float32) + 0.1
        rm, rv = cp.zeros(c, cp.float32), cp.ones(c, cp.float32)
        y = cp.empty_like(x)
        dx = cp.empty_like(x)
        dgamma, dbeta = cp.empty(c, cp.float32), cp.empty(c, cp.float32)
        shape = f"{n}x{c}"
        nb = n * c * F32

        case = Case(f"bn_train_fwd{tag}", shape, 2 * nb)
        case.ours = lambda: be.batchnorm_forward_train(x, gamma, beta, rm, rv, 0.1, 1e-5, out=y)
        case.naive = lambda: naive.batchnorm_forward_train(x, gamma, beta, rm, rv, 0.1, 1e-5,
                                                           out=y)
        cases.append(case)

        case = Case(f"bn_train_fwd_relu{tag}", shape, 2 * nb)
        case.ours = lambda: be.batchnorm_forward_train(x, gamma, beta, rm, rv, 0.1, 1e-5,
                                                       relu=True, out=y)
        cases.append(case)

        case = Case(f"bn_infer_fwd{tag}", shape, 2 * nb)
        case.ours = lambda: be.batchnorm_forward_infer(x, gamma, beta, rm, rv, 1e-5, out=y)
        case.naive = lambda: naive.batchnorm_forward_infer(x, gamma, beta, rm, rv, 1e-5, out=y)
        cases.append(case)

        def fb(b: Backend, relu: bool = False) -> Callable[[], Any]:
            def run():
                yy, mean, invstd = b.batchnorm_forward_train(x, gamma, beta, rm, rv, 0.1, 1e-5,
                                                             relu=relu, out=y)
                b.batchnorm_backward(dy, x, gamma, mean, invstd, dgamma, dbeta,
                                     y=yy if relu else None, out=dx)
            return run

        case = Case(f"bn_fwd_bwd{tag}", shape, 5 * nb)
        case.ours, case.naive = fb(be), fb(naive)
        cases.append(case)
        case = Case(f"bn_fwd_bwd_relu{tag}", shape, 5 * nb)
        case.ours = fb(be, True)
        cases.append(case)

        if have_torch:
            tx = torch.from_dlpack(x)
            tdy = torch.from_dlpack(dy)
            tg, tb = torch.from_dlpack(gamma).clone(), torch.from_dlpack(beta).clone()
            trm, trv = torch.zeros(c, device="cuda"), torch.ones(c, device="cuda")
            by_name = {cs.name: cs for cs in cases}
            by_name[f"bn_train_fwd{tag}"].torch = lambda: F.batch_norm(
                tx, trm, trv, tg, tb, training=True, momentum=0.1, eps=1e-5)
            by_name[f"bn_infer_fwd{tag}"].torch = lambda: F.batch_norm(
                tx, trm, trv, tg, tb, training=False, momentum=0.1, eps=1e-5)
            txg = tx.detach().clone().requires_grad_(True)
            tgg = tg.detach().clone().requires_grad_(True)
            tbg = tb.detach().clone().requires_grad_(True)

            def torch_fb():
                txg.grad = tgg.grad = tbg.grad = None
                out = F.batch_norm(txg, trm, trv, tgg, tbg, training=True, momentum=0.1,
                                   eps=1e-5)
                out.backward(tdy)

            by_name[f"bn_fwd_bwd{tag}"].torch = torch_fb

            def torch_fb_relu():
                txg.grad = tgg.grad = tbg.grad = None
                out = F.relu(F.batch_norm(txg, trm, trv, tgg, tbg, training=True, momentum=0.1,
                                          eps=1e-5))
                out.backward(tdy)

            by_name[f"bn_fwd_bwd_relu{tag}"].torch = torch_fb_relu
            by_name[f"bn_train_fwd_relu{tag}"].torch = lambda: F.relu(F.batch_norm(
                tx, trm, trv, tg, tb, training=True, momentum=0.1, eps=1e-5))

    def sm_cases(n: int, c: int, tag: str) -> None:
        z = rng.standard_normal((n, c), dtype=cp.float32) * 3
        labels = rng.randint(0, c, n).astype(cp.int64)
        dl = cp.empty_like(z)
        p = cp.empty_like(z)
        shape = f"{n}x{c}"
        nb = n * c * F32
        case = Case(f"softmax_ce_fwd_bwd{tag}", shape, 2 * nb + n * 8)
        case.ours = lambda: be.softmax_cross_entropy(z, labels, dlogits=dl)
        case.naive = lambda: naive.softmax_cross_entropy(z, labels, dlogits=dl)
        sm = Case(f"softmax_fwd{tag}", shape, 2 * nb)
        sm.ours = lambda: be.softmax(z, out=p)
        sm.naive = lambda: naive.softmax(z, out=p)
        if have_torch:
            tz = torch.from_dlpack(z).detach().clone().requires_grad_(True)
            tl = torch.from_dlpack(labels)

            def torch_ce():
                tz.grad = None
                F.cross_entropy(tz, tl).backward()

            case.torch = torch_ce
            tz2 = torch.from_dlpack(z)
            sm.torch = lambda: torch.softmax(tz2, dim=1)
        cases.extend([case, sm])

    def opt_cases(size: int) -> None:
        w = rng.standard_normal(size, dtype=cp.float32)
        g = rng.standard_normal(size, dtype=cp.float32) * 1e-2
        m, v = cp.zeros(size, cp.float32), cp.zeros(size, cp.float32)
        state = {"t": 0}

        def ours():
            state["t"] += 1
            be.adam_update(w, g, m, v, 1e-3, 0.9, 0.999, 1e-8, state["t"])

        def nv():
            state["t"] += 1
            naive.adam_update(w, g, m, v, 1e-3, 0.9, 0.999, 1e-8, state["t"])

        case = Case("adam_update", f"{size}", 7 * size * F32)
        case.ours, case.naive = ours, nv
        if have_torch:
            tp = torch.nn.Parameter(torch.from_dlpack(w).clone())
            tp.grad = torch.from_dlpack(g).clone()
            try:
                topt = torch.optim.Adam([tp], lr=1e-3, fused=True)
                case.torch_label = "fused"
            except Exception:  # noqa: BLE001
                topt = torch.optim.Adam([tp], lr=1e-3, foreach=True)
                case.torch_label = "foreach"
            case.torch = topt.step
        cases.append(case)
        sgd = Case("sgd_update", f"{size}", 3 * size * F32)
        sgd.ours = lambda: be.sgd_update(w, g, 1e-3)
        sgd.naive = lambda: naive.sgd_update(w, g, 1e-3)
        cases.append(sgd)

    big_n = 16384 if quick else 65536
    bn_cases(big_n, 1024, "")
    sm_cases(big_n, 1000, "")
    bn_cases(512, 1024, "_mlp")
    sm_cases(512, 10, "_mlp")
    opt_cases(784 * 1024 + 1024 * 1024 + 4 * 1024 + 1024 * 10 + 10)
    return cases


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", metavar="PATH", help="write every number to this JSON file")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="smaller shapes, fewer repeats")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive CuPy baseline")
    args = ap.parse_args(argv)
    repeats = 5 if args.quick else args.repeats

    cp = _cupy()
    import gpunet
    from gpunet import kernels

    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    info: dict[str, Any] = {
        "device": props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
        "sm_count": dev.attributes["MultiProcessorCount"],
        "cupy": cp.__version__,
        "gpunet": gpunet.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
        "kernel_cache": kernels.cache_dir(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except Exception:  # noqa: BLE001
        info["torch"] = None
    print(f"device: {info['device']} ({info['sm_count']} SMs), cupy {info['cupy']}, "
          f"torch {info['torch']}", flush=True)

    t0 = time.time()
    be = gpunet.get_backend("gpu")
    for name in kernels.FILES:  # compile (or load from CuPy's cache) up front
        kernels.get_module(name, be.device_id)
    info["compile_s"] = round(time.time() - t0, 2)

    copy = copy_bandwidth(256 * 2**20, repeats)
    print(f"device-to-device copy: {copy['gbps']:.0f} GB/s (read + write, 256 MiB)", flush=True)

    results: list[dict[str, Any]] = []
    errors: list[str] = []
    for case in make_cases(args.quick):
        row: dict[str, Any] = {"name": case.name, "shape": case.shape, "bytes": case.nbytes,
                               "target_ms": TARGETS_MS.get(case.name)}
        try:
            ours = time_cupy(case.ours, repeats)
            row["ms"] = ours["ms"]
            row["min_ms"] = ours["min_ms"]
            row["gbps"] = case.nbytes / (ours["ms"] * 1e-3) / 1e9
            row["pct_copy"] = 100 * row["gbps"] / copy["gbps"]
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{case.name}: {exc!r}")
            traceback.print_exc()
            row["error"] = repr(exc)
            results.append(row)
            continue
        if case.naive is not None and not args.no_naive:
            try:
                nv = time_cupy(case.naive, max(3, repeats // 3), warmup=2)
                row["naive_ms"] = nv["ms"]
                row["x_naive"] = nv["ms"] / ours["ms"]
            except Exception as exc:  # noqa: BLE001
                row["naive_error"] = repr(exc)
        if case.torch is not None:
            try:
                tt = time_torch(case.torch, repeats)
                row["torch_ms"] = tt["ms"]
                row["x_torch"] = tt["ms"] / ours["ms"]
                if case.torch_label:
                    row["torch_variant"] = case.torch_label
            except Exception as exc:  # noqa: BLE001
                row["torch_error"] = repr(exc)
        if row["target_ms"] is not None:
            row["target_met"] = row["ms"] <= row["target_ms"]
        results.append(row)
        print(f"  {case.name:<24} {case.shape:>11} {row['ms']:9.4f} ms", flush=True)

    print()
    print(format_table(results, copy))
    out = {"info": info, "copy": copy, "results": results, "errors": errors}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2, default=float)
        print(f"\nwrote {args.json}")
    return 1 if errors else 0


def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec)


def format_table(results: list[dict[str, Any]], copy: dict[str, float]) -> str:
    head = (f"{'op':<24} {'shape':>11} {'ms':>9} {'GB/s':>7} {'%copy':>6} {'naive ms':>9} "
            f"{'x naive':>8} {'torch ms':>9} {'x torch':>8} {'target':>7} {'met':>4}")
    lines = [f"copy bandwidth (D2D, read+write): {copy['gbps']:.0f} GB/s", head, "-" * len(head)]
    for r in results:
        if "error" in r:
            lines.append(f"{r['name']:<24} {r['shape']:>11}  ERROR {r['error'][:60]}")
            continue
        met = r.get("target_met")
        lines.append(
            f"{r['name']:<24} {r['shape']:>11} {_fmt(r.get('ms'), '9.4f')} "
            f"{_fmt(r.get('gbps'), '7.0f')} {_fmt(r.get('pct_copy'), '6.1f')} "
            f"{_fmt(r.get('naive_ms'), '9.3f')} {_fmt(r.get('x_naive'), '8.1f')} "
            f"{_fmt(r.get('torch_ms'), '9.4f')} {_fmt(r.get('x_torch'), '8.2f')} "
            f"{_fmt(r.get('target_ms'), '7.2f')} "
            f"{'-' if met is None else ('yes' if met else 'NO'):>4}"
        )
    lines.append("x naive / x torch: how many times faster than that baseline (>1: gpunet wins). "
                 "GB/s on the fewest bytes (BN fwd: x + y; fwd+bwd: + x, dy, dx; CE: logits + "
                 "grad; Adam: w, g, m, v read, w, m, v written).")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
