"""Training-step throughput on the CPU: gpunet (NumPy backend) beside a baseline in the same run.

Model: MLP 784-1024-1024-10, BatchNorm + ReLU, Adam, batch 512, float32
(docs/architecture.md, "Benchmarks").
Baseline: PyTorch CPU on the same model when torch is importable, else a plain NumPy loop
written the obvious way. Both get the same number of threads. Each side runs in its own worker
process (so neither pays for the other's idle, spinning BLAS / OpenMP threads), and the two
take turns: ``repeats`` rounds of ``steps`` steps each, alternating which goes first, so drift
and noise from a shared machine hit both alike. Prints the best round's samples/s for each (the
least disturbed; the median beside it) and the ratio gpunet / baseline, and the median and
quartiles of the per-round ratios (the two runs of a round are back to back, so each ratio is
taken in one machine state: the most robust figure on a noisy machine); ``--json PATH`` writes
every round.

    python benchmarks/cpu_step.py [--steps 10] [--repeats 25] [--threads N] [--same-process]
                                   [--baseline auto|torch|numpy] [--against DIR] [--json out.json]

``--against DIR`` makes the baseline gpunet itself as checked out in DIR (another commit's
working tree, imported through PYTHONPATH): a before / after comparison of a change in one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

SIZES = (784, 1024, 1024, 10)


def gpunet_step_fn(batch: int, seed: int = 0):
    import gpunet as gn

    model = gn.MLP(SIZES[0], hidden=list(SIZES[1:-1]), classes=SIZES[-1], batchnorm=True,
                   backend="cpu", seed=seed)
    opt = gn.optim.Adam(model, lr=1e-3)
    be = model.backend
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], batch)

    def step() -> float:
        logits = model.forward(x, training=True)
        loss, dlogits = be.softmax_cross_entropy(logits, y)
        model.backward(dlogits)
        opt.step()
        return float(loss)

    return step


def torch_step_fn(batch: int, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    layers: list = []
    for a, b in zip(SIZES[:-2], SIZES[1:-1], strict=True):
        layers += [torch.nn.Linear(a, b, bias=False), torch.nn.BatchNorm1d(b), torch.nn.ReLU()]
    layers.append(torch.nn.Linear(SIZES[-2], SIZES[-1]))
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal((batch, SIZES[0])).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, SIZES[-1], batch))

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return float(loss)

    return step


def naive_numpy_step_fn(batch: int, seed: int = 0):
    """The obvious NumPy loop: fresh arrays everywhere, a Python loop over parameters."""
    rng = np.random.default_rng(seed)
    Ws = [rng.standard_normal((a, b)).astype(np.float32) * np.sqrt(2 / a)
          for a, b in zip(SIZES[:-1], SIZES[1:], strict=True)]
    gammas = [np.ones(b, np.float32) for b in SIZES[1:-1]]
    betas = [np.zeros(b, np.float32) for b in SIZES[1:-1]]
    bias = np.zeros(SIZES[-1], np.float32)
    params = Ws + gammas + betas + [bias]
    ms = [np.zeros_like(p) for p in params]
    vs = [np.zeros_like(p) for p in params]
    x = rng.standard_normal((batch, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], batch)
    t = [0]

    def step() -> float:
        cache = []
        h = x
        for i in range(len(Ws) - 1):
            z = h @ Ws[i]
            mu = z.mean(0)
            var = z.var(0)
            xhat = (z - mu) / np.sqrt(var + 1e-5)
            a = np.maximum(gammas[i] * xhat + betas[i], 0)
            cache.append((h, xhat, var, a))
            h = a
        logits = h @ Ws[-1] + bias
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        loss = -np.log(p[np.arange(batch), y]).mean()
        d = p
        d[np.arange(batch), y] -= 1
        d /= batch
        grads_W = [None] * len(Ws)
        grads_W[-1] = h.T @ d
        g_bias = d.sum(0)
        dh = d @ Ws[-1].T
        g_gam, g_bet = [None] * len(gammas), [None] * len(betas)
        for i in range(len(Ws) - 2, -1, -1):
            hin, xhat, var, a = cache[i]
            da = dh * (a > 0)
            g_bet[i] = da.sum(0)
            g_gam[i] = (da * xhat).sum(0)
            dxhat = da * gammas[i]
            dz = (dxhat - dxhat.mean(0) - xhat * (dxhat * xhat).mean(0)) / np.sqrt(var + 1e-5)
            grads_W[i] = hin.T @ dz
            dh = dz @ Ws[i].T
        grads = grads_W + g_gam + g_bet + [g_bias]
        t[0] += 1
        for p_, g, m, v in zip(params, grads, ms, vs, strict=True):
            m[...] = 0.9 * m + 0.1 * g
            v[...] = 0.999 * v + 0.001 * g * g
            mhat = m / (1 - 0.9 ** t[0])
            vhat = v / (1 - 0.999 ** t[0])
            p_ -= 1e-3 * mhat / (np.sqrt(vhat) + 1e-8)
        return float(loss)

    return step


def measure(step, steps: int) -> float:
    """Seconds per step over ``steps`` steps (after two warm-up steps)."""
    step()
    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def make_step(name: str, batch: int):
    if name in ("gpunet", "before"):
        return gpunet_step_fn(batch)
    if name == "torch":
        return torch_step_fn(batch)
    return naive_numpy_step_fn(batch)


def limit_threads(name: str, threads: int) -> None:
    """Give ``name`` ``threads`` threads (gpunet's are set by GPUNET_THREADS before import)."""
    if name == "torch":
        import torch

        torch.set_num_threads(threads)
    elif name == "numpy":
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(threads)
        except ImportError:
            pass


def worker(name: str, batch: int, threads: int) -> None:
    """Serve ``run STEPS`` lines on stdin with one JSON line (seconds per step) each."""
    import warnings

    warnings.filterwarnings("ignore")  # torch's float(loss) of a tensor that requires grad
    limit_threads(name, threads)
    step = make_step(name, batch)
    print(json.dumps({"ready": name}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] != "run":
            break
        print(json.dumps({"s": measure(step, int(cmd[1]))}), flush=True)


class Worker:
    """One side of the comparison in its own process, idle (blocked on stdin) between runs."""

    def __init__(self, name: str, batch: int, threads: int, pythonpath: str | None = None) -> None:
        env = dict(os.environ, GPUNET_THREADS=str(threads))
        if pythonpath:  # this side imports gpunet from another checkout
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath,
                                                              env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", name, "--batch", str(batch),
             "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )
        self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker exited with code {self.proc.wait()}")
        return json.loads(line)

    def run(self, steps: int) -> float:
        self.proc.stdin.write(f"run {steps}\n")
        self.proc.stdin.flush()
        return float(self._read()["s"])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--baseline", choices=["auto", "torch", "numpy"], default="auto")
    ap.add_argument("--same-process", action="store_true",
                    help="run both sides in this process (default: one process each)")
    ap.add_argument("--against", default=None, metavar="DIR",
                    help="baseline: gpunet as checked out in DIR (before / after a change)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.batch, args.threads)
        return

    baseline = args.baseline
    if args.against:
        baseline = "before"
        if args.same_process:
            ap.error("--against needs one process per side")
    elif baseline == "auto":
        baseline = "torch" if importlib.util.find_spec("torch") else "numpy"
    names = ["gpunet", baseline]
    times: dict[str, list[float]] = {k: [] for k in names}
    if args.same_process:
        os.environ["GPUNET_THREADS"] = str(args.threads)
        limit_threads(baseline, args.threads)
        steps = {k: make_step(k, args.batch) for k in names}
        run = {k: (lambda k=k: measure(steps[k], args.steps)) for k in names}
        close = []
    else:
        paths = {"before": os.path.abspath(args.against) if args.against else None}
        workers = {k: Worker(k, args.batch, args.threads, paths.get(k)) for k in names}
        run = {k: (lambda k=k: workers[k].run(args.steps)) for k in names}
        close = list(workers.values())
    try:
        for r in range(args.repeats):  # interleaved (and alternating), so drift hits both alike
            for k in names if r % 2 == 0 else names[::-1]:
                times[k].append(run[k]())
                time.sleep(0.05)  # let the other side's spinning threads go idle
    finally:
        for w in close:
            w.close()
    best = {k: min(v) for k, v in times.items()}
    med = {k: float(np.median(v)) for k, v in times.items()}
    sps = {k: args.batch / t for k, t in best.items()}
    ratio = sps["gpunet"] / sps[baseline]
    ratio_med = med[baseline] / med["gpunet"]
    # each round's two runs were back to back: their ratio shares the machine's state
    paired = np.array(times[baseline]) / np.array(times["gpunet"])
    q1, q2, q3 = (float(q) for q in np.percentile(paired, [25, 50, 75]))
    how = "same process" if args.same_process else "one process each"
    from gpunet.backend.cpu.mkl import cpu_vendor, load_mkl

    vendor = cpu_vendor() or "unknown vendor"
    blas = "MKL" if load_mkl() is not None else "NumPy's OpenBLAS"
    print(f"MLP {'-'.join(map(str, SIZES))}, BN+ReLU, Adam, batch {args.batch}, float32, "
          f"{args.threads} threads, {how}, {args.repeats} x {args.steps} steps, "
          f"{platform.processor() or platform.machine()} ({vendor}), gpunet on {blas}")
    for name in names:
        print(f"  {name:8s} {best[name] * 1e3:8.2f} ms/step  {sps[name]:10,.0f} samples/s  "
              f"(best of {args.repeats}; median {med[name] * 1e3:.2f} ms)")
    print(f"  ratio gpunet / {baseline}: {ratio:.2f}x (best), {ratio_med:.2f}x (median)")
    print(f"  per-round ratio (each round's runs back to back): median {q2:.2f}x, "
          f"quartiles {q1:.2f}x-{q3:.2f}x, {int((paired > 1).sum())} of {len(paired)} "
          f"rounds above 1")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"batch": args.batch, "threads": args.threads, "baseline": baseline,
                       "cpu_vendor": vendor, "gpunet_blas": blas,
                       "same_process": args.same_process, "seconds_per_step": times,
                       "samples_per_s": sps, "ratio": ratio, "ratio_median": ratio_med,
                       "ratio_paired_median": q2, "ratio_paired_quartiles": [q1, q3]}, f,
                      indent=2)


if __name__ == "__main__":
    main()
