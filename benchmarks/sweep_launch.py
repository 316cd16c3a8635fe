"""Sweep the kernels' launch geometry (``LaunchConfig``) on a GPU: time batch norm, softmax
cross-entropy and the Adam update under each configuration, check every result against a
float64 reference, and print the fastest correct configurations beside the default.

    python benchmarks/sweep_launch.py [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json

import numpy as np


def timed(cp, fn, reps: int = 10) -> float:
    fn()
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    for _ in range(reps):
        fn()
    stop.record()
    stop.synchronize()
    return cp.cuda.get_elapsed_time(start, stop) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import cupy as cp

    import gpunet as gn
    from gpunet.backend import cupy_backend as cb

    be = gn.get_backend("gpu")
    default = be.launch_config
    rng = cp.random.default_rng(0)
    n, c = 65536, 1024
    x = rng.standard_normal((n, c), dtype=cp.float32) * 2 + 1
    dy = rng.standard_normal((n, c), dtype=cp.float32)
    gamma = rng.random(c, dtype=cp.float32) + 0.5
    beta = rng.standard_normal(c, dtype=cp.float32)
    y = cp.empty_like(x)
    dx = cp.empty_like(x)
    xd = x.astype(cp.float64)
    mu = xd.mean(0)
    var = ((xd - mu) ** 2).mean(0)
    y_ref = (gamma * (xd - mu) / cp.sqrt(var + 1e-5) + beta)
    xhat = (xd - mu) / cp.sqrt(var + 1e-5)
    g64 = dy.astype(cp.float64)
    db_ref = g64.sum(0)
    dg_ref = (g64 * xhat).sum(0)
    dx_ref = gamma * (g64 - db_ref / n - xhat * dg_ref / n) / cp.sqrt(var + 1e-5)
    z = rng.standard_normal((n, 1000), dtype=cp.float32) * 4
    labels = cp.asarray(np.random.default_rng(1).integers(0, 1000, n))
    dz = cp.empty_like(z)
    zd = z.astype(cp.float64)
    p = cp.exp(zd - zd.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[cp.arange(n), labels] -= 1
    dz_ref = p / n

    def rel(a, b):
        return float(cp.abs(a.astype(cp.float64) - b).max() / cp.abs(b).max())

    rm, rv = cp.zeros(c, cp.float32), cp.ones(c, cp.float32)
    dgam, dbet = cp.empty(c, cp.float32), cp.empty(c, cp.float32)
    results = []
    grid = itertools.product((16, 32, 64, 128, 256), (128, 256), (2, 4, 8, 16), (4, 16))
    for bdx, threads, bps, mrpt in grid:
        if bdx > threads:
            continue
        cfg = default.with_(bn_max_bdx=bdx, bn_threads=threads, bn_blocks_per_sm=bps,
                            bn_min_rows_per_thread=mrpt)
        be.launch_config = cfg

        def fwd():
            be.batchnorm_forward_train(x, gamma, beta, rm, rv, 0.1, 1e-5, out=y)

        def infer():
            be.batchnorm_forward_infer(x, gamma, beta, rm, rv, 1e-5, out=y)

        def fwd_bwd():
            _, mean, invstd = be.batchnorm_forward_train(x, gamma, beta, rm, rv, 0.1, 1e-5,
                                                         out=y)
            be.batchnorm_backward(dy, x, gamma, mean, invstd, dgam, dbet, out=dx)

        t_inf = timed(cp, infer)
        t_fwd = timed(cp, fwd)
        err_y = rel(y, y_ref)
        t_fb = timed(cp, fwd_bwd)
        err_dx = rel(dx, dx_ref)
        err_dg = rel(dgam, dg_ref)
        ok = max(err_y, err_dx, err_dg) < 1e-4
        results.append({"op": "bn", "bn_max_bdx": bdx, "bn_threads": threads,
                        "bn_blocks_per_sm": bps, "bn_min_rows_per_thread": mrpt,
                        "train_fwd_ms": t_fwd, "infer_ms": t_inf, "fwd_bwd_ms": t_fb,
                        "total_ms": t_fwd + t_inf + t_fb, "ok": ok,
                        "err": max(err_y, err_dx, err_dg)})
    for wpb in (1, 2, 4, 8, 16):
        cfg = default.with_(sm_warps_per_block=wpb)
        be.launch_config = cfg

        def ce():
            be.softmax_cross_entropy(z, labels, None, dz)

        try:
            t = timed(cp, ce)
        except Exception as exc:  # noqa: BLE001 - e.g. too many registers for the block
            print(f"softmax warps_per_block={wpb}: {type(exc).__name__}")
            continue
        results.append({"op": "softmax_ce", "sm_warps_per_block": wpb, "ms": t,
                        "ok": rel(dz, dz_ref) < 1e-4, "err": rel(dz, dz_ref)})
    P = 1865738
    w, g, m, v = (cp.asarray(np.random.default_rng(i).standard_normal(P).astype(np.float32))
                  for i in range(4))
    v = cp.abs(v)
    for threads, bps in itertools.product((128, 256, 512, 1024), (2, 4, 8, 16, 32)):
        be.launch_config = default.with_(ew_threads=threads, ew_blocks_per_sm=bps)
        t = timed(cp, lambda: be.adam_update(w, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 1), 20)
        results.append({"op": "adam", "ew_threads": threads, "ew_blocks_per_sm": bps, "ms": t,
                        "ok": True})
    be.launch_config = default
    print(f"default: {default}")
    for op, key in (("bn", "total_ms"), ("softmax_ce", "ms"), ("adam", "ms")):
        rows = sorted((r for r in results if r["op"] == op), key=lambda r: r[key])
        bad = [r for r in rows if not r["ok"]]
        print(f"--- {op}: {len(rows)} configurations, {len(bad)} wrong")
        for r in rows[:6]:
            print("   ", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
        for r in bad[:3]:
            print("    WRONG", r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"default": str(default), "results": results}, f, indent=1)
    _ = cb  # the module whose LaunchConfig is swept


if __name__ == "__main__":
    main()
