"""Packed trials: trials per minute at K = 1, 4, 16, 64 members against single runs.

Workloads (each trial: 10 epochs, batch 64, Adam with a cosine schedule, batch norm):

- ``digits``: the default recipe on the bundled digits (64 features, 10 classes), 256,128;
- ``synth``: a synthetic 40-feature, 10-class set of 4,000 samples, 256,256.

Each pack is a search's pack: K learning rates (log-spaced, one seed: one data order), trained
by ``gpunet.packed.fit_packed`` with every member's run folder written, as ``tune`` would.
``single`` is the same K = 1 trial through ``gpunet.train.fit`` (what ``tune`` runs today).
The ratio column is trials/min over K = 1's (the packed K = 1 row). On a GPU, where PyTorch is
importable, ``torch.func.stack_module_state`` + ``vmap`` trains the same K models on the
same batches (training steps only: no validation, no files), graph-captured where possible.

``--repeat N`` runs each row N times (interleaved: every row once, then again) and reports the
fastest and the median; the machine's load average is printed with each table (a shared
machine). ``--fsync`` makes the pack's durable saves fsync each file and folder instead of one
Linux ``syncfs`` per save (``gpunet.fileio.USE_SYNCFS``), to compare the two.

    python benchmarks/packed.py [--device cpu|gpu] [--ks 1,4,16,64] [--workloads digits,synth]
                                [--epochs 10] [--repeat 1] [--fsync] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

WORKLOADS = {
    "digits": {"hidden": [256, 128], "data": "digits"},
    "synth": {"hidden": [256, 256], "data": None},
}


def _synth(folder: Path) -> str:
    """The synthetic 40-feature, 10-class set of 4,000 samples (gpunet.data.synthetic)."""
    import h5py

    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1.0, (10, 40))
    y = rng.integers(0, 10, 4000)
    X = (centers[y] + rng.standard_normal((4000, 40)) * 2.0).astype(np.float32)
    path = folder / "synth.h5"
    with h5py.File(path, "w") as f:
        f["X"], f["y"] = X, y.astype(np.int64)
    return str(path)


def _configs(data: str, hidden: list[int], k: int, epochs: int, device: str, out: Path):
    from gpunet.config import TrainConfig

    lrs = np.geomspace(5e-4, 8e-3, k) if k > 1 else [2e-3]
    return [TrainConfig.from_dict({
        "data": data, "hidden": hidden, "epochs": epochs, "batch_size": 64, "lr": float(lr),
        "optimizer": "adam", "lr_schedule": "cosine", "device": device, "seed": 0,
        "out": str(out / f"m{i}")}) for i, lr in enumerate(lrs)]


def run_packed(data: str, hidden: list[int], k: int, epochs: int, device: str,
               ds) -> dict:
    from gpunet.packed import fit_packed

    with tempfile.TemporaryDirectory() as tmp:
        cfgs = _configs(data, hidden, k, epochs, device, Path(tmp))
        t0 = time.perf_counter()
        res = fit_packed(cfgs, dataset=ds)
        secs = time.perf_counter() - t0
    accs = [r.best_value for r in res.results]
    return {"k": k, "seconds": secs, "trials_per_min": 60 * k / secs,
            "best_val_acc": float(max(a for a in accs if a is not None))}


def run_single(data: str, hidden: list[int], epochs: int, device: str, ds) -> dict:
    from gpunet.train import fit

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _configs(data, hidden, 1, epochs, device, Path(tmp))[0]
        t0 = time.perf_counter()
        res = fit(cfg, dataset=ds)
        secs = time.perf_counter() - t0
    return {"k": 1, "seconds": secs, "trials_per_min": 60 / secs,
            "best_val_acc": res.best_value}


def run_torch(ds, hidden: list[int], k: int, epochs: int) -> dict | None:
    """K PyTorch MLPs stacked with torch.func (stack_module_state + vmap), Adam, on the GPU:
    the training steps of ``epochs`` epochs on the same batches (no validation, no files)."""
    try:
        import torch
        from torch.func import functional_call, grad_and_value, stack_module_state
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    dev = torch.device("cuda")
    X, y = ds.train.arrays()
    X = torch.tensor((X - X.mean(0)) / (X.std(0) + 1e-6), device=dev)
    y = torch.tensor(y, device=dev)
    d, c = X.shape[1], int(ds.n_classes)

    def make():
        layers, w = [], d
        for h in hidden:
            layers += [torch.nn.Linear(w, h, bias=False), torch.nn.BatchNorm1d(h),
                       torch.nn.ReLU()]
            w = h
        return torch.nn.Sequential(*layers, torch.nn.Linear(w, c)).to(dev)

    models = [make() for _ in range(k)]
    params, buffers = stack_module_state(models)
    base = make().to("meta")
    lrs = torch.tensor(np.geomspace(5e-4, 8e-3, k) if k > 1 else [2e-3], device=dev,
                       dtype=torch.float32)

    def loss_fn(p, b, xb, yb):
        out = functional_call(base, (p, b), (xb,))
        return torch.nn.functional.cross_entropy(out, yb)

    step_fn = torch.vmap(grad_and_value(loss_fn), in_dims=(0, 0, None, None),
                         randomness="different")
    m = {n: torch.zeros_like(v) for n, v in params.items()}
    v2 = {n: torch.zeros_like(v) for n, v in params.items()}
    n, b = X.shape[0], 64
    t0 = time.perf_counter()
    t = 0
    for _ in range(epochs):
        perm = torch.randperm(n, device=dev)
        for i in range(0, n - b + 1, b):
            idx = perm[i:i + b]
            grads, _ = step_fn(params, buffers, X[idx], y[idx])
            t += 1
            with torch.no_grad():
                for name, g in grads.items():
                    p = params[name]
                    m[name].mul_(0.9).add_(g, alpha=0.1)
                    v2[name].mul_(0.999).addcmul_(g, g, value=0.001)
                    shape = (k,) + (1,) * (p.dim() - 1)
                    step = lrs.view(shape) / (1 - 0.9 ** t)
                    p.sub_(step * m[name] / ((v2[name] / (1 - 0.999 ** t)).sqrt() + 1e-8))
    torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    return {"k": k, "seconds": secs, "trials_per_min": 60 * k / secs}


def _open(data: str):
    from gpunet.data import open_dataset

    return open_dataset(data, val_split=0.1, seed=0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=os.environ.get("GPUNET_DEVICE", "cpu"))
    ap.add_argument("--ks", default="1,4,16,64")
    ap.add_argument("--workloads", default="digits,synth")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=1,
                    help="Run each variant this many times and keep the fastest (a shared "
                         "machine).")
    ap.add_argument("--fsync", action="store_true",
                    help="Durable saves by an fsync per file and folder, not syncfs.")
    ap.add_argument("--json", default=os.environ.get("BENCH_JSON"))
    args = ap.parse_args()
    if args.fsync:
        from gpunet import fileio

        fileio.USE_SYNCFS = False
    ks = [int(x) for x in args.ks.split(",")]
    results: dict = {"device": args.device, "epochs": args.epochs, "fsync": args.fsync,
                     "workloads": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.workloads.split(","):
            spec = WORKLOADS[name]
            data = spec["data"] or _synth(Path(tmp))
            ds = _open(data)
            load = _load()
            rows = _rows(args, ks, name, data, spec["hidden"], ds)
            load = f"{load} at the start, {_load()} at the end"
            _print(name, rows, load)
            results["workloads"][name] = {"load_average": load, **rows}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def _rows(args, ks: list[int], name: str, data: str, hidden: list[int], ds) -> dict:
    """Every row ``args.repeat`` times, interleaved; each row's fastest and median."""
    runs: dict[str, list[dict]] = {}
    variants = [("single", run_single, (data, hidden, args.epochs, args.device, ds))]
    variants += [(f"packed K={k}", run_packed, (data, hidden, k, args.epochs, args.device, ds))
                 for k in ks]
    too_big = None
    for _ in range(max(args.repeat, 1)):
        for label, fn, fargs in variants:
            k = fargs[2] if fn is run_packed else 1
            if too_big is not None and k >= too_big:
                continue
            try:
                runs.setdefault(label, []).append(fn(*fargs))
            except MemoryError:
                print(f"{name}: K={k} does not fit in memory")
                too_big = k
                runs.pop(label, None)
    rows = {label: _summary(rs) for label, rs in runs.items()}
    if args.device.startswith("gpu"):
        for k in ks:
            tr = run_torch(ds, hidden, k, args.epochs)
            if tr is not None:
                rows[f"torch vmap K={k}"] = tr
    return rows


def _summary(runs: list[dict]) -> dict:
    """The fastest run, with the median's seconds and trials/min beside it."""
    best = min(runs, key=lambda r: r["seconds"])
    secs = sorted(r["seconds"] for r in runs)[len(runs) // 2]
    return {**best, "median_seconds": secs, "median_trials_per_min": 60 * best["k"] / secs,
            "runs": len(runs)}


def _load() -> str:
    try:
        return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average unknown"


def _print(name: str, rows: dict, load: str) -> None:
    ref = rows.get("packed K=1", rows["single"])
    print(f"\n{name}: trials per minute ({load}; ratio to packed K=1; fastest and median "
          f"of {ref.get('runs', 1)})")
    print(f"{'variant':<18} {'seconds':>9} {'trials/min':>11} {'ratio':>7} "
          f"{'median s':>9} {'trials/min':>11} {'ratio':>7}")
    for label, r in rows.items():
        med = r.get("median_trials_per_min", r["trials_per_min"])
        print(f"{label:<18} {r['seconds']:9.2f} {r['trials_per_min']:11.1f} "
              f"{r['trials_per_min'] / ref['trials_per_min']:7.2f} "
              f"{r.get('median_seconds', r['seconds']):9.2f} {med:11.1f} "
              f"{med / ref.get('median_trials_per_min', ref['trials_per_min']):7.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
