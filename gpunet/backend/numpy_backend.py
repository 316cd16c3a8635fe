"""The CPU backend: the reference ``Backend`` on NumPy, with CPU overrides.

Each override keeps the reference's signature and computes what the reference computes
(tested against it in ``tests/test_numpy_fastpath.py``), by the machinery in
``gpunet/backend/cpu`` (docs/architecture.md, "Op table"):

- ``matmul`` / ``matmuls``: products split over the backend's threads with the BLAS held at
  one thread, on MKL's sgemm where it serves (``cpu/gemm.py``, ``cpu/mkl.py``);
- batch norm: fewer passes over memory, split by rows, and the in-place variant the MLP uses
  (``cpu/batchnorm.py``);
- the optimizer updates: cache-sized chunks over the threads, on the level-1 BLAS
  (``saxpy`` / ``saxpby``) for contiguous float32 flat arrays (``cpu/optim.py``,
  ``cpu/blas1.py``);
- batch norm and the optimizer updates, first of all, on gpunet's native CPU kernels
  (``cpu/native.c``, compiled on first use; ``cpu/native_ops.py``) when a C compiler is
  there (``GPUNET_NATIVE=off``: never); the paths above serve when they are not.

Softmax, softmax cross-entropy, the activations and dropout are the reference's.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..text import short_repr
from .base import Array, Backend, check_training_batch
from .cpu import batchnorm as bn
from .cpu import native_ops, optim
from .cpu.blas1 import Blas1, load_blas1
from .cpu.gemm import SplitGemm, openblas_controllers
from .cpu.mkl import load_mkl
from .cpu.native import NativeKernels, load_native
from .cpu.pool import WorkPool, bound_native_threads

#: the most threads ``GPUNET_THREADS`` may ask for
MAX_THREADS = 4096

#: the packed optimizer ops: op name -> (single CPU update, its per-member scalar names)
PACKED_UPDATES = {
    "sgd": (optim.sgd_update, ("lr",)),
    "momentum": (optim.momentum_update, ("lr", "beta")),
    "rmsprop": (optim.rmsprop_update, ("lr", "beta2", "eps")),
    "adam": (optim.adam_update, ("lr", "beta1", "beta2", "eps", "t")),
}


def env_threads() -> int | None:
    """``GPUNET_THREADS`` as an integer in 1..``MAX_THREADS``, or None when it is unset or
    empty."""
    env = os.environ.get("GPUNET_THREADS", "").strip()
    if not env:
        return None
    if not (env.isascii() and env.isdigit()) or int(env) < 1:
        raise ConfigError(f"GPUNET_THREADS={short_repr(env)}: expected a positive integer")
    if len(env) > 6 or int(env) > MAX_THREADS:
        raise ConfigError(f"GPUNET_THREADS={short_repr(env)}: expected at most {MAX_THREADS}")
    return int(env)


class NumpyBackend(Backend):
    """NumPy arrays on the host.

    ``threads`` (``GPUNET_THREADS``, default: the number of cores) threads share the work:
    elementwise ops split by rows or chunks (NumPy releases the GIL inside ufuncs) and, with
    ``threadpoolctl`` installed and NumPy on OpenBLAS, the matrix products too (the BLAS then
    runs one thread per call). ``threads=1`` given here leaves all parallelism to the BLAS;
    ``GPUNET_THREADS=N`` instead bounds everything at N threads: the pool, and every BLAS and
    OpenMP library loaded in the process (``cpu/pool.py``'s ``bound_native_threads``).
    ``native=False`` keeps batch norm and the optimizers off the native kernels (default:
    on them when they build, ``cpu/native.py``).
    """

    name = "cpu"
    xp = np
    #: the MLP centres its Dense outputs in place (``batchnorm_forward_train_inplace``):
    #: one pass over memory fewer in the backward
    bn_centre_in_place = True

    def __init__(self, threads: int | None = None, native: bool | None = None) -> None:
        env = env_threads()
        self.pool = WorkPool(threads or env or os.cpu_count() or 1)
        #: MKL's sequential sgemm when ``gpunet[mkl]`` is installed (else None: NumPy's BLAS)
        self.mkl = load_mkl()
        if env is not None:  # after MKL loaded, so that it is bounded too
            bound_native_threads(env)
        openblas = openblas_controllers()
        self.gemm = SplitGemm(self.pool, self.mkl, openblas if self.threads > 1 else [])
        #: saxpy / saxpby for the optimizers (MKL's, else NumPy's OpenBLAS; None: ufuncs)
        self.blas1: Blas1 | None = load_blas1(self.mkl.lib if self.mkl is not None else None,
                                              openblas)
        #: False: not looked for yet (``native=False``: never, the NumPy paths only)
        self._native: NativeKernels | None | bool = False if native is not False else None

    @property
    def native(self) -> NativeKernels | None:
        """gpunet's native CPU kernels (``cpu/native.py``: compiled on first use), or None
        when there is no C compiler or ``GPUNET_NATIVE=off``."""
        if self._native is False:
            self._native = load_native()
        return self._native  # type: ignore[return-value]

    @property
    def threads(self) -> int:
        """How many threads share the work (the caller's and ``threads - 1`` workers)."""
        return self.pool.threads

    @property
    def blas(self) -> str:
        """Which BLAS the products run on: ``"mkl"`` or ``"numpy"`` (NumPy's own)."""
        return "mkl" if self.mkl is not None else "numpy"

    # ------------------------------------------------------------------ dense
    def matmul(self, a: Array, b: Array, out: Array | None = None) -> Array:
        """``a @ b``, split over the threads (``cpu/gemm.py``)."""
        return self.gemm.matmul(a, b, out)

    def matmuls(self, products: list[tuple[Array, Array, Array]]) -> None:
        """Independent products side by side on the threads (``cpu/gemm.py``); one after
        the other (the reference) when they cannot be."""
        if not self.gemm.matmuls(products):
            super().matmuls(products)

    #: batched products of fewer flops than this run as one ``np.matmul`` call; larger
    #: ones share the members out among the threads
    MIN_SPLIT_BATCHED_FLOPS = 1 << 25

    def matmul_batched(self, a: Array, b: Array, out: Array) -> Array:
        """``out[k] = a[k] @ b[k]``: one call over all members (MKL's ``cblas_sgemm_batch``
        where it serves, else ``np.matmul``) with the BLAS at one thread, the members shared
        out among the threads when the products are large."""
        k, m, q = out.shape
        mkl = self.mkl if self.mkl is not None and self.mkl.accepts_batched(a, b, out) else None
        with self.gemm.one_thread():
            if self.threads == 1 or 2 * k * m * q * b.shape[1] < self.MIN_SPLIT_BATCHED_FLOPS:
                if mkl is not None:
                    mkl.batched(a, b, out)
                else:
                    np.matmul(a, b, out=out)
            elif mkl is not None:
                self.pool.map(lambda s: mkl.batched(a, b, out, range(s.start, s.stop)),
                              self.pool.parts(k, min_size=1))
            else:
                self.pool.map(lambda s: np.matmul(a if a.ndim == 2 else a[s], b[s], out=out[s]),
                              self.pool.parts(k, min_size=1))
        return out

    # ------------------------------------------------------------------ batch norm
    def batchnorm_forward_train(
        self, x: Array, gamma: Array, beta: Array, running_mean: Array, running_var: Array,
        momentum: float | Array, eps: float, relu: bool = False, out: Array | None = None,
    ) -> tuple[Array, Array, Array]:
        out = self._out(out, x.shape, x.dtype)
        done = self._native_bn_forward(x, gamma, beta, running_mean, running_var, momentum,
                                       eps, relu, out)
        if done is not None:
            return done
        return bn.batchnorm_forward_train(self.pool, x, gamma, beta, running_mean, running_var,
                                          momentum, eps, relu, out)

    def _native_bn_forward(self, x: Array, *args: Any, centre: Array | None = None,
                           relu_mask: Array | None = None) -> tuple[Array, Array, Array] | None:
        """The training forward on the native kernel, or None (not there, or the arrays
        do not fit it)."""
        if self.native is None:
            return None
        check_training_batch(x.shape[0])
        # no BLAS runs inside: the BLAS need not be held at one thread (``gemm.one_thread``)
        return native_ops.bn_forward_train(self.native, self.pool, x, *args, centre=centre,
                                           relu_mask=relu_mask)

    def batchnorm_forward_infer(
        self, x: Array, gamma: Array, beta: Array, running_mean: Array, running_var: Array,
        eps: float, relu: bool = False, out: Array | None = None,
    ) -> Array:
        out = self._out(out, x.shape, x.dtype)
        return bn.batchnorm_forward_infer(self.pool, x, gamma, beta, running_mean, running_var,
                                          eps, relu, out)

    def batchnorm_backward(
        self, dy: Array, x: Array, gamma: Array, mean: Array, invstd: Array, dgamma: Array,
        dbeta: Array, y: Array | None = None, out: Array | None = None,
    ) -> Array:
        out = self._out(out, x.shape, x.dtype)
        if self._native_bn_backward(dy, x, gamma, mean, invstd, dgamma, dbeta, y, out):
            return out
        return bn.batchnorm_backward(self.pool, dy, x, gamma, mean, invstd, dgamma, dbeta, y,
                                     out)

    def _native_bn_backward(self, dy: Array, x: Array, gamma: Array, mean: Array,
                            invstd: Array, dgamma: Array, dbeta: Array, y: Array | None,
                            out: Array, relu_mask: Array | None = None) -> bool:
        """The backward on the native kernel; False when it cannot serve."""
        if self.native is None:
            return False
        return native_ops.bn_backward(self.native, self.pool, dy, x, gamma, mean, invstd,
                                      dgamma, dbeta, y, out, relu_mask) is not None

    def batchnorm_forward_train_inplace(
        self, x: Array, gamma: Array, beta: Array, running_mean: Array, running_var: Array,
        momentum: float | Array, eps: float, relu: bool = False, out: Array | None = None,
        relu_mask: Array | None = None,
    ) -> tuple[Array, Array, Array]:
        out = self._out(out, x.shape, x.dtype)
        done = self._native_bn_forward(x, gamma, beta, running_mean, running_var, momentum,
                                       eps, relu, out, centre=x, relu_mask=relu_mask)
        if done is not None:
            return done
        return bn.batchnorm_forward_train(self.pool, x, gamma, beta, running_mean, running_var,
                                          momentum, eps, relu, out, centre=x,
                                          relu_mask=relu_mask)

    def batchnorm_backward_inplace(
        self, dy: Array, x: Array, gamma: Array, mean: Array, invstd: Array, dgamma: Array,
        dbeta: Array, y: Array | None = None, relu_mask: Array | None = None,
        overwrite_dy: bool = False,
    ) -> Array:
        if self._native_bn_backward(dy, x, gamma, mean, invstd, dgamma, dbeta, y, x,
                                    relu_mask):
            return x
        return bn.batchnorm_backward(self.pool, dy, x, gamma, mean, invstd, dgamma, dbeta, y,
                                     x, centred=True, overwrite_dy=overwrite_dy,
                                     relu_mask=relu_mask)

    # ------------------------------------------------------------------ optimizers
    def _blas1_for(self, *arrays: Any) -> Blas1 | None:
        """The level-1 BLAS when it can take these flat arrays (contiguous float32 of one
        shape), else None (the chunked ufuncs)."""
        n = arrays[0].shape
        ok = all(isinstance(a, np.ndarray) and a.dtype == np.float32 and a.ndim == 1
                 and a.shape == n and a.flags.c_contiguous for a in arrays)
        return self.blas1 if ok else None

    def _native_update(self, kind: str, w: Array, g: Array, states: tuple[Array, ...],
                       scalars: dict[str, float], decay: float,
                       decay_mask: Array | None) -> bool:
        """A single optimizer op as one row of the native kernel; False when it cannot
        serve (no kernels, arrays that are not contiguous float32 vectors)."""
        flat = (w, g, *states)
        if self.native is None or not all(isinstance(a, np.ndarray) and a.ndim == 1
                                          for a in flat):
            return False
        rows = tuple(a.reshape(1, -1) for a in flat)
        return native_ops.optimizer_rows(
            self.native, self.pool, kind, rows[0], rows[1], rows[2:],
            {n: [float(v)] for n, v in scalars.items()}, [float(decay)], decay_mask, None)

    def sgd_update(
        self, w: Array, g: Array, lr: float, decay: float = 0.0, decay_mask: Array | None = None
    ) -> None:
        if self._native_update("sgd", w, g, (), {"lr": lr}, decay, decay_mask):
            return
        with self.gemm.one_thread():  # the chunks are already spread over the threads
            optim.sgd_update(self.pool, self._blas1_for(w, g), w, g, lr, decay, decay_mask)

    def momentum_update(
        self, w: Array, g: Array, v: Array, lr: float, beta: float, decay: float = 0.0,
        decay_mask: Array | None = None,
    ) -> None:
        if self._native_update("momentum", w, g, (v,), {"lr": lr, "beta": beta}, decay,
                               decay_mask):
            return
        with self.gemm.one_thread():
            optim.momentum_update(self.pool, self._blas1_for(w, g, v), w, g, v, lr, beta,
                                  decay, decay_mask)

    def rmsprop_update(
        self, w: Array, g: Array, s: Array, lr: float, beta2: float, eps: float,
        decay: float = 0.0, decay_mask: Array | None = None,
    ) -> None:
        if self._native_update("rmsprop", w, g, (s,), {"lr": lr, "beta2": beta2, "eps": eps},
                               decay, decay_mask):
            return
        with self.gemm.one_thread():
            optim.rmsprop_update(self.pool, self._blas1_for(w, g, s), w, g, s, lr, beta2, eps,
                                 decay, decay_mask)

    def adam_update(
        self, w: Array, g: Array, m: Array, v: Array, lr: float, beta1: float, beta2: float,
        eps: float, step: int, decay: float = 0.0, decay_mask: Array | None = None,
    ) -> None:
        if self._native_update("adam", w, g, (m, v), {"lr": lr, "beta1": beta1, "beta2": beta2,
                               "eps": eps, "t": step}, decay, decay_mask):
            return
        with self.gemm.one_thread():
            optim.adam_update(self.pool, self._blas1_for(w, g, m, v), w, g, m, v, lr, beta1,
                              beta2, eps, step, decay, decay_mask)

    # ------------------------------------------------------------------ optimizers, packed
    def _update_rows(self, opt: str, w: Array, g: Array, states: tuple[Array, ...],
                     scalars: dict[str, Array], decay: Array, decay_mask: Array | None,
                     active: Array | None) -> bool:
        """Each active row through the single op's chunked update (``cpu/optim.py``) with
        its member's scalars: row k is bit for bit what ``*_update`` gives member k. The rows
        go one after the other on the calling thread (a row that alone fills the threads
        is split in chunks among them, as the single op does): sharing the rows out among
        2 threads measured 1.5-2x slower at K = 1, 16 and 64 on the 2-core machine (the
        passes are memory-bound; benchmarks/packed.py). Returns False, doing nothing, for
        arrays the rows cannot be taken from."""
        arrays = (w, g, *states)
        if not all(isinstance(a, np.ndarray) and a.ndim == 2 and a.shape == w.shape
                   and a.dtype == np.float32 and a.flags.c_contiguous for a in arrays):
            return False
        update, names = PACKED_UPDATES[opt]
        host = [np.asarray(scalars[n]).tolist() for n in names]
        dec = np.asarray(decay).tolist()
        if self.native is not None and native_ops.optimizer_rows(
                self.native, self.pool, opt, w, g, states, dict(zip(names, host, strict=True)),
                dec, decay_mask, active):
            return True
        on = np.ones(w.shape[0], dtype=bool) if active is None else np.asarray(active)
        pool = self.pool if w.shape[1] >= 2 * optim.CHUNK else self._row_pool
        blas = self._blas1_for(w[0], g[0], *(a[0] for a in states))
        with self.gemm.one_thread():
            for k in np.flatnonzero(on).tolist():
                row = tuple(a[k] for a in arrays)
                update(pool, blas, *row, *(h[k] for h in host), dec[k], decay_mask)
        return True

    @property
    def _row_pool(self) -> WorkPool:
        """A one-thread pool for a row updated on a worker (no nested hand-offs)."""
        pool = self.__dict__.get("_one_thread_pool")
        if pool is None:
            pool = self.__dict__["_one_thread_pool"] = WorkPool(1)
        return pool

    def sgd_update_packed(self, w: Array, g: Array, lr: Array, decay: Array,
                          decay_mask: Array | None = None, active: Array | None = None) -> None:
        if not self._update_rows("sgd", w, g, (), {"lr": lr}, decay, decay_mask, active):
            super().sgd_update_packed(w, g, lr, decay, decay_mask, active)

    def momentum_update_packed(self, w: Array, g: Array, v: Array, lr: Array, beta: Array,
                               decay: Array, decay_mask: Array | None = None,
                               active: Array | None = None) -> None:
        if not self._update_rows("momentum", w, g, (v,), {"lr": lr, "beta": beta}, decay,
                                 decay_mask, active):
            super().momentum_update_packed(w, g, v, lr, beta, decay, decay_mask, active)

    def rmsprop_update_packed(self, w: Array, g: Array, s: Array, lr: Array, beta2: Array,
                              eps: Array, decay: Array, decay_mask: Array | None = None,
                              active: Array | None = None) -> None:
        if not self._update_rows("rmsprop", w, g, (s,), {"lr": lr, "beta2": beta2, "eps": eps},
                                 decay, decay_mask, active):
            super().rmsprop_update_packed(w, g, s, lr, beta2, eps, decay, decay_mask, active)

    def adam_update_packed(self, w: Array, g: Array, m: Array, v: Array, lr: Array,
                           beta1: Array, beta2: Array, eps: Array, t: Array, decay: Array,
                           decay_mask: Array | None = None,
                           active: Array | None = None) -> None:
        if not self._update_rows("adam", w, g, (m, v), {"lr": lr, "beta1": beta1,
                                 "beta2": beta2, "eps": eps, "t": t}, decay, decay_mask,
                                 active):
            super().adam_update_packed(w, g, m, v, lr, beta1, beta2, eps, t, decay,
                                       decay_mask, active)
