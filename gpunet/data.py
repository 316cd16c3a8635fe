"""HDF5 datasets: key detection, splits, batching, shuffling, input standardization.

Conventions (DESIGN sections 3 and 5):

- Samples are axis 0. ``X`` may have any numeric dtype and shape ``(n, ...)``; batches give it
  flattened to ``(b, d)`` float32, *raw* (not standardized: see :class:`Standardizer`). Labels
  are class ids ``0..C-1`` given as int64 ``(b,)``.
- Keys are detected in the order ``X/y``, ``x/y``, ``features/labels``, ``data/label``,
  ``data/labels``, ``train_set_x/train_set_y``, ``test_set_x/test_set_y`` (the course's cat
  files); ``x_key`` / ``y_key`` override. Groups ``train``, ``val``, ``test`` are used when
  present, with the keys detected inside each group. In a flat file a ``test_set_x/test_set_y``
  pair beside another pair is the test split; alone it is the data.
- Labels may be ``(n,)``, ``(n, 1)``, ``(1, n)`` or one-hot ``(n, C)``; integer-valued (floats
  that are integral are accepted) and ``>= 0``. Class names come from an attribute ``classes``
  (on the y dataset, the X dataset, its group or the file) or a dataset ``list_classes``; then
  ``n_classes = len(classes)``, otherwise the largest label over the splits + 1 (at least the
  one-hot width).
- Memory: a split whose float32 X (``n * d * 4`` bytes) fits ``memory_budget`` is read once into
  memory; a larger one is streamed from the file in contiguous slabs (``ds[a:b]``-style reads
  only, never fancy-index lists), and everything the streaming reader holds (its labels, its
  shuffle buffer, one slab, the batch it yields) stays within the budget; only fixed scratch
  outside it remains (NumPy's per-operation ufunc buffers of at most 64 KiB, h5py's small objects).
  The budget applies to each split on its own.
- Held-out validation (``val_split``): the rows of the training part are cut into
  ``min(n, 1024)`` contiguous blocks of equal size (+-1 row); blocks are drawn in a random order
  from ``numpy.random.default_rng([seed, 0x76616C])`` and taken until ``round(n * val_split)``
  rows are held out (the last block drawn may be taken in part, from its start). With
  ``n <= 1024`` this is a seeded random choice of rows; for larger ``n`` it is a seeded choice of
  short contiguous runs, so a streamed split is read with contiguous slabs only. The choice
  depends on ``(n, val_split, seed)`` alone, never on the memory budget, so training, eval and
  predict agree on the held-out rows whether the data was in memory or streamed.
- Files are opened read-only (``'r'``), by each process for itself (a streamed source reopens the
  file for every pass, so sources survive ``fork``).
- Every problem with the data raises :class:`gpunet.errors.DataError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.resources
import json
import os
import pathlib
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from .errors import ConfigError, DataError

__all__ = [
    "DEFAULT_MEMORY_BUDGET", "ArraySource", "Dataset", "Standardizer", "InMemorySource",
    "StreamedSource", "resolve_data_path", "open_dataset", "load_split", "validate",
    "make_synthetic", "import_npz", "import_csv", "inspect_file", "BUNDLED_DATASETS",
]

#: bytes; a split whose float32 X is larger than this is streamed from the file
DEFAULT_MEMORY_BUDGET: int = 2 * 1024**3
#: bundled dataset names -> file name under gpunet/datasets/
BUNDLED_DATASETS: dict[str, str] = {"digits": "digits.h5"}
#: (X key, y key) pairs, in detection order
KEY_PAIRS: tuple[tuple[str, str], ...] = (
    ("X", "y"), ("x", "y"), ("features", "labels"), ("data", "label"), ("data", "labels"),
    ("train_set_x", "train_set_y"), ("test_set_x", "test_set_y"),
)
SPLITS = ("train", "val", "test")
_SLAB_BYTES = 16 * 1024**2          # float32 bytes of one streamed slab, at most
_STATS_CHUNK_BYTES = 8 * 1024**2    # float64 working bytes of one feature_stats chunk (in memory)
_VAL_BLOCKS = 1024
_VAL_TAG = 0x76616C                 # "val": keeps the split stream apart from other seeded streams


# ---------------------------------------------------------------------------- small helpers
def _name(path: str | os.PathLike[str]) -> str:
    return os.path.basename(str(path))


def _check_batch_size(batch_size: int) -> int:
    b = int(batch_size)
    if b < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    return b


def _finite_rows(X: np.ndarray) -> int:
    """-1 when every value of float32 ``X`` (m, d) is finite, else the first bad row.

    The common case costs no temporary: a float64 sum is NaN or inf exactly when some value is.
    """
    if X.size == 0 or np.isfinite(X.sum(dtype=np.float64)):
        return -1
    return int(np.argmin(np.isfinite(X).all(axis=1)))


def _decode_names(value: Any) -> list[str]:
    arr = np.asarray(value).reshape(-1)
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in arr.tolist()]


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()] if value.ndim else _jsonable(value.item())
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _is_numeric(dtype: np.dtype) -> bool:
    return dtype.kind in "biuf"


# ---------------------------------------------------------------------------- labels
def normalize_labels(y: np.ndarray, n: int, where: str) -> tuple[np.ndarray, int]:
    """Labels of any accepted shape -> (int64 ``(n,)``, one-hot width or 0); DataError if bad.

    ``n`` is the number of samples in X (it tells ``(1, n)`` from ``(n, 1)``).
    """
    y = np.asarray(y)
    if not _is_numeric(y.dtype):
        raise DataError(f"labels {where} must be numeric class ids, got dtype {y.dtype}")
    width = 0
    if y.ndim == 1:
        flat = y
    elif y.ndim == 2 and y.shape[0] == n and y.shape[1] == 1:
        flat = y[:, 0]
    elif y.ndim == 2 and y.shape[0] == 1 and y.shape[1] == n:
        flat = y[0]
    elif y.ndim == 2 and y.shape[0] == n:
        ok = np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all()
        if not ok:
            raise DataError(f"labels {where} shaped {y.shape} are not one-hot (each row one 1)")
        flat, width = np.argmax(y, axis=1), int(y.shape[1])
    elif y.ndim == 2 and (y.shape[0] == 1 or y.shape[1] == 1):
        flat = y.reshape(-1)
    else:
        raise DataError(f"labels {where} have shape {y.shape}; expected (n,), (n, 1), (1, n) "
                        "or one-hot (n, C)")
    if flat.shape[0] != n:
        raise DataError(f"X has {n} samples but labels {where} have {flat.shape[0]}")
    if flat.dtype.kind == "f":
        bad = ~np.isfinite(flat) | (flat != np.round(flat))
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"labels {where} must be integers: found {flat[i].item()!r} at "
                            f"row {i}")
    if n and flat.min() < 0:
        i = int(np.argmin(flat))
        raise DataError(f"labels {where} must be >= 0: found {flat[i].item()!r} at row {i}")
    return flat.astype(np.int64), width


def _check_label_range(labels: np.ndarray, n_classes: int, where: str, why: str = "") -> None:
    if labels.size and int(labels.max()) >= n_classes:
        i = int(np.argmax(labels >= n_classes))
        raise DataError(f"label {int(labels[i])} {where} (row {i}) is out of range for "
                        f"{n_classes} classes{why}")


# ---------------------------------------------------------------------------- sources
class ArraySource:
    """One split (X, y): in memory (:class:`InMemorySource`) or streamed (:class:`StreamedSource`).

    ``n`` samples of ``n_features`` features (X flattened to ``(n, d)``); ``labels`` holds the
    int64 class ids (``-1`` where the file has no labels: ``has_labels`` False); ``classes`` the
    class names found in the file, or None; ``name`` says where it comes from.
    """

    n: int
    n_features: int
    feature_shape: tuple[int, ...]
    labels: np.ndarray
    has_labels: bool
    classes: list[str] | None
    name: str
    in_memory: bool

    def __init__(self) -> None:
        self._stats: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        kind = "in memory" if self.in_memory else "streamed"
        return f"<{type(self).__name__} {self.name}: n={self.n}, d={self.n_features}, {kind}>"

    def batches(self, batch_size: int, shuffle: bool = False,
                rng: np.random.Generator | None = None,
                drop_last: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(X float32 (b, d) raw, y int64 (b,))``; every batch is a fresh array.

        Without ``shuffle``: file order. With it, a fresh order drawn from ``rng`` (None: a fresh
        unseeded generator, not reproducible); the same ``rng`` state gives the same batches.
        Every sample comes exactly once per pass; the last batch is smaller unless ``drop_last``.
        """
        raise NotImplementedError

    def feature_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-feature mean and (population, ddof=0) std, float64 ``(d,)``, in one pass (cached).

        Chunks are reduced in float64 (two-pass within a chunk) and merged with Chan's formula.
        """
        if self._stats is None:
            count, mean, m2 = 0, np.zeros(self.n_features), np.zeros(self.n_features)
            for chunk in self._chunks_for_stats():
                c = chunk.astype(np.float64)
                m = c.shape[0]
                cmean = c.mean(axis=0)
                c -= cmean
                np.square(c, out=c)
                cm2 = c.sum(axis=0)
                del c
                total = count + m
                delta = cmean - mean
                mean = mean + delta * (m / total)
                m2 = m2 + cm2 + delta * delta * (count * m / total)
                count = total
            self._stats = (mean, np.sqrt(m2 / max(count, 1)))
        return self._stats[0].copy(), self._stats[1].copy()

    def _chunks_for_stats(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def class_counts(self, n_classes: int) -> np.ndarray:
        """Samples per class, int64 ``(n_classes,)``; DataError if a label is >= n_classes."""
        if not self.has_labels:
            raise DataError(f"{self.name} has no labels")
        _check_label_range(self.labels, n_classes, f"in {self.name}")
        return np.bincount(self.labels, minlength=n_classes).astype(np.int64)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(X float32 (n, d), y int64 (n,))`` held in memory (not copies); streamed: DataError."""
        raise DataError(f"{self.name} is streamed (larger than the memory budget); use batches()")


class InMemorySource(ArraySource):
    """A split held in memory: X float32 ``(n, d)`` C-contiguous, labels int64 ``(n,)``."""

    in_memory = True

    def __init__(self, X: np.ndarray, labels: np.ndarray, name: str = "arrays",
                 classes: list[str] | None = None, has_labels: bool = True,
                 feature_shape: tuple[int, ...] | None = None) -> None:
        super().__init__()
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 2:
            X = X.reshape(X.shape[0], -1)
        if len(labels) != X.shape[0]:
            raise DataError(f"X has {X.shape[0]} samples but y has {len(labels)} ({name})")
        self.X, self.labels = X, np.ascontiguousarray(labels, dtype=np.int64)
        self.n, self.n_features = int(X.shape[0]), int(X.shape[1])
        self.feature_shape = feature_shape if feature_shape is not None else (self.n_features,)
        self.name, self.classes, self.has_labels = name, classes, has_labels

    def batches(self, batch_size: int, shuffle: bool = False,
                rng: np.random.Generator | None = None,
                drop_last: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        b = _check_batch_size(batch_size)
        if shuffle:
            order = (rng if rng is not None else np.random.default_rng()).permutation(self.n)
        stop = self.n - self.n % b if drop_last else self.n
        for i in range(0, stop, b):
            if shuffle:
                idx = order[i:i + b]
                yield self.X[idx], self.labels[idx]
            else:
                yield self.X[i:i + b].copy(), self.labels[i:i + b].copy()

    def _chunks_for_stats(self) -> Iterator[np.ndarray]:
        rows = max(1, _STATS_CHUNK_BYTES // (8 * self.n_features))
        for i in range(0, self.n, rows):
            yield self.X[i:i + rows]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return self.X, self.labels


Segment = tuple[str, int, int]     # (X dataset path in the file, first row, stop row)


class StreamedSource(ArraySource):
    """A split read from the HDF5 file in contiguous slabs, within ``memory_budget`` bytes.

    ``segments`` are ``(x_path, start, stop)`` row ranges; the labels (8 bytes a sample) are held
    in memory and count against the budget. ``batches(shuffle=True)`` shuffles the slab order,
    fills a buffer with whole slabs, and yields batches drawn in a random order from the buffer;
    the rows left over (fewer than a batch) stay for the next fill. ``read_hook``, when set, is
    called with ``(x_path, start, stop)`` before every read (tests use it); ``peak_bytes`` is the
    most the reader has planned to hold at once (labels + buffers + slab + one batch).
    """

    in_memory = False

    def __init__(self, path: str | os.PathLike[str], segments: Sequence[Segment],
                 labels: np.ndarray, feature_shape: tuple[int, ...], x_dtype: np.dtype,
                 memory_budget: int, name: str, classes: list[str] | None = None,
                 has_labels: bool = True) -> None:
        super().__init__()
        self.path = str(path)
        self.segments = [(str(k), int(a), int(b)) for k, a, b in segments if b > a]
        self.labels = np.ascontiguousarray(labels, dtype=np.int64)
        self.feature_shape = tuple(int(s) for s in feature_shape)
        self.n = int(sum(b - a for _, a, b in self.segments))
        self.n_features = int(np.prod(self.feature_shape, dtype=np.int64))
        self.x_dtype = np.dtype(x_dtype)
        self.memory_budget = int(memory_budget)
        self.name, self.classes, self.has_labels = name, classes, has_labels
        self.read_hook: Callable[[str, int, int], None] | None = None
        self.peak_bytes = 0
        self._dsets: dict[int, tuple[h5py.File, dict[str, h5py.Dataset]]] = {}
        # HDF5 converts integer and float types straight into the float32 buffer; anything else
        # (bool enums) is read raw and then cast, which needs a temporary.
        self._direct = self.x_dtype.kind in "iuf"
        if len(self.labels) != self.n:
            raise DataError(f"X has {self.n} samples but y has {len(self.labels)} ({name})")

    # -- planning
    def _raw_row(self) -> int:
        return 0 if self._direct else self.n_features * self.x_dtype.itemsize

    def _avail(self, fixed: int, what: str) -> int:
        avail = self.memory_budget - self.labels.nbytes - fixed
        if avail <= 0:
            raise DataError(f"memory budget of {self.memory_budget} bytes is too small to stream "
                            f"{self.name} ({what}; labels alone take {self.labels.nbytes})")
        return avail

    def plan(self, batch_size: int, shuffle: bool) -> tuple[int, int]:
        """``(buffer rows, slab rows)`` for ``batches``: the buffer holds ~4 slabs or more."""
        b = _check_batch_size(batch_size)
        row = 4 * self.n_features + 8                     # float32 X row + int64 label
        avail = self._avail(2 * b * row, f"batch size {b}")  # a yielded batch + leftover move
        per_row = row + (8 if shuffle else 0)              # + the buffer's permutation entry
        cap0 = avail // (per_row + self._raw_row())
        if cap0 - (b - 1) < 1:
            need = self.memory_budget + (b - cap0) * (per_row + self._raw_row())
            raise DataError(f"memory budget of {self.memory_budget} bytes is too small to stream "
                            f"{self.name} with batch size {b} (needs about {need})")
        slab = max(1, min(_SLAB_BYTES // (4 * self.n_features), (cap0 - (b - 1)) // 4))
        cap = min((avail - slab * self._raw_row()) // per_row, self.n)
        return max(cap, min(self.n, b - 1 + slab)), slab

    def _slabs(self, rows: int) -> list[tuple[str, int, int, int]]:
        """``(x_path, start, stop, label_offset)`` for slabs of at most ``rows`` rows."""
        out, off = [], 0
        for key, a, z in self.segments:
            for s in range(a, z, rows):
                e = min(s + rows, z)
                out.append((key, s, e, off))
                off += e - s
        return out

    # -- reading
    @contextlib.contextmanager
    def _open(self) -> Iterator[h5py.File]:
        f = _open_h5(self.path)
        try:
            yield f
        finally:
            self._dsets.pop(id(f), None)
            f.close()

    def _read(self, f: h5py.File, key: str, a: int, z: int, dest: np.ndarray) -> None:
        """Rows ``a:z`` of ``key`` into float32 ``dest`` ``(z - a, d)``; NaN/inf is a DataError."""
        if self.read_hook is not None:
            self.read_hook(key, a, z)
        cache = self._dsets.get(id(f))
        if cache is None or cache[0] is not f:
            cache = self._dsets[id(f)] = (f, {})
        ds = cache[1].get(key)
        if ds is None:
            ds = cache[1][key] = f[key]
        m = z - a
        try:
            if self._direct:
                ds.read_direct(dest.reshape((m,) + ds.shape[1:]), np.s_[a:z])
            else:
                np.copyto(dest, ds[a:z].reshape(m, -1), casting="unsafe")
        except (OSError, ValueError, TypeError) as e:
            raise DataError(f"cannot read rows {a}:{z} of {key} in {_name(self.path)}: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        bad = _finite_rows(dest) if self.x_dtype.kind == "f" else -1
        if bad >= 0:
            raise DataError(f"X has NaN or inf: {_name(self.path)}:{key} row {a + bad}")

    def _note(self, nbytes: int) -> None:
        self.peak_bytes = max(self.peak_bytes, int(nbytes))

    def batches(self, batch_size: int, shuffle: bool = False,
                rng: np.random.Generator | None = None,
                drop_last: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        b = _check_batch_size(batch_size)
        if shuffle and rng is None:
            rng = np.random.default_rng()
        cap, slab_rows = self.plan(b, shuffle)
        d = self.n_features
        slabs = self._slabs(slab_rows)
        order = rng.permutation(len(slabs)) if shuffle else np.arange(len(slabs))  # type: ignore[union-attr]
        row = 4 * d + 8
        self._note(self.labels.nbytes + cap * (row + (8 if shuffle else 0))
                   + slab_rows * self._raw_row() + 2 * b * row)
        xbuf = np.empty((cap, d), dtype=np.float32)
        ybuf = np.empty(cap, dtype=np.int64)
        fill = 0

        def drain(final: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
            nonlocal fill
            idx = rng.permutation(fill) if shuffle else None  # type: ignore[union-attr]
            full = fill - fill % b
            for s in range(0, full, b):
                if idx is not None:
                    sel = idx[s:s + b]
                    yield xbuf[sel], ybuf[sel]
                else:
                    yield xbuf[s:s + b].copy(), ybuf[s:s + b].copy()
            r = fill - full
            if final:
                if r and not drop_last:
                    sel = idx[full:] if idx is not None else slice(full, fill)
                    yield xbuf[sel].copy(), ybuf[sel].copy()
                fill = 0
            elif r:
                sel = idx[full:] if idx is not None else slice(full, fill)
                xbuf[:r] = xbuf[sel]
                ybuf[:r] = ybuf[sel]
                fill = r
            else:
                fill = 0

        with self._open() as f:
            for i in order:
                key, a, z, off = slabs[int(i)]
                m = z - a
                if fill + m > cap:
                    yield from drain(final=False)
                self._read(f, key, a, z, xbuf[fill:fill + m])
                ybuf[fill:fill + m] = self.labels[off:off + m]
                fill += m
            yield from drain(final=True)

    def _chunks_for_stats(self) -> Iterator[np.ndarray]:
        d = self.n_features
        per_row = 4 * d + 8 * d + self._raw_row()      # float32 chunk + float64 working copy
        rows = max(1, min(_SLAB_BYTES // (4 * d), self._avail(0, "feature stats") // per_row))
        if self._avail(0, "feature stats") < per_row:
            raise DataError(f"memory budget of {self.memory_budget} bytes is too small to read "
                            f"one row of {self.name}")
        rows = min(rows, self.n)
        self._note(self.labels.nbytes + rows * per_row)
        buf = np.empty((rows, d), dtype=np.float32)
        with self._open() as f:
            for key, a, z, _ in self._slabs(rows):
                dest = buf[:z - a]
                self._read(f, key, a, z, dest)
                yield dest


# ---------------------------------------------------------------------------- standardizer
def _array_module(x: Any) -> Any:
    mod = type(x).__module__.split(".")[0]
    if mod == "cupy":
        import cupy

        return cupy
    return np


class Standardizer:
    """Input standardization fitted on the training set: ``(X - mean) / std`` in float32.

    ``mean`` and ``std`` are float32 ``(d,)`` host arrays (population std, ddof=0; a std of 0,
    a constant feature, is replaced by 1). ``apply`` works on NumPy or CuPy arrays.
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean = np.ascontiguousarray(mean, dtype=np.float32).reshape(-1)
        std = np.ascontiguousarray(std, dtype=np.float32).reshape(-1).copy()
        if self.mean.shape != std.shape:
            raise DataError(f"standardizer mean {self.mean.shape} and std {std.shape} differ")
        std[std == 0] = 1
        self.std = std
        self._device: dict[int, tuple[Any, Any]] = {}

    @classmethod
    def fit(cls, source: ArraySource) -> Standardizer:
        """Fit on ``source`` (one streamed pass; it also checks X for NaN / inf)."""
        mean, std = source.feature_stats()
        return cls(mean, std)

    @property
    def n_features(self) -> int:
        return int(self.mean.shape[0])

    def apply(self, X: Any, out: Any | None = None) -> Any:
        """float32 ``(X - mean) / std`` for X ``(b, d)``; into ``out`` (may be ``X``) if given."""
        xp = _array_module(X)
        if xp is np:
            mean, std = self.mean, self.std
        else:
            dev = int(xp.cuda.Device().id)
            if dev not in self._device:
                self._device[dev] = (xp.asarray(self.mean), xp.asarray(self.std))
            mean, std = self._device[dev]
        if X.shape[-1] != self.mean.shape[0]:
            raise DataError(f"data has {X.shape[-1]} features but the standardizer was fitted "
                            f"on {self.mean.shape[0]}")
        if out is None:
            out = xp.empty(X.shape, dtype=xp.float32)
        xp.subtract(X, mean, out=out, dtype=xp.float32)
        xp.divide(out, std, out=out)
        return out

    def __repr__(self) -> str:
        return f"Standardizer(d={self.n_features})"


# ---------------------------------------------------------------------------- files and keys
def resolve_data_path(data: str | os.PathLike[str]) -> pathlib.Path:
    """``"digits"`` (a bundled name) -> the packaged file; else the path, absolute. DataError if
    there is no such file."""
    s = str(data)
    if s in BUNDLED_DATASETS:
        p = pathlib.Path(str(importlib.resources.files("gpunet") / "datasets"
                             / BUNDLED_DATASETS[s]))
        if not p.is_file():
            raise DataError(f"bundled dataset {s!r} is missing from the installation ({p})")
        return p
    p = pathlib.Path(s).expanduser().resolve()
    if not p.exists():
        hint = f" (bundled datasets: {', '.join(BUNDLED_DATASETS)})" if not p.suffix else ""
        raise DataError(f"data file not found: {s}{hint}")
    if not p.is_file():
        raise DataError(f"data path is not a file: {s}")
    return p


def _open_h5(path: str | os.PathLike[str]) -> h5py.File:
    """Open read-only; DataError for a file that is missing, not HDF5 or unreadable."""
    p = str(path)
    if not os.path.isfile(p):
        raise DataError(f"data file not found: {p}")
    try:
        ok = h5py.is_hdf5(p)
    except OSError:
        ok = False
    if not ok:
        raise DataError(f"not an HDF5 file: {p}")
    try:
        return h5py.File(p, "r")
    except OSError as e:
        raise DataError(f"cannot open {p}: {str(e).splitlines()[0]}") from None


def _dataset_paths(f: h5py.File, limit: int = 30) -> list[str]:
    out: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            out.append(name)

    f.visititems(visit)
    if len(out) > limit:
        return out[:limit] + [f"... ({len(out) - limit} more)"]
    return out


def _keys_msg(f: h5py.File) -> str:
    keys = _dataset_paths(f)
    return f"keys present: {', '.join(keys)}" if keys else "the file has no datasets"


def _has_ds(g: h5py.Group, key: str) -> bool:
    return key in g and isinstance(g[key], h5py.Dataset)


@dataclass
class _Part:
    """Where one split lives: the X and y dataset paths (y None when absent and optional)."""

    x: str
    y: str | None


def _join(group: str, key: str) -> str:
    return f"{group}/{key}" if group else key


def _detect(f: h5py.File, group: str, x_key: str | None, y_key: str | None,
            pairs: Sequence[tuple[str, str]] = KEY_PAIRS, require_y: bool = True,
            twin: bool = False) -> _Part | None:
    """The (X, y) datasets inside ``group`` (``""``: the root), or None when no pair is there.

    With overrides the keys must exist (DataError listing the keys present); ``twin`` lets an
    override ``train_set_*`` find ``test_set_*`` (the course's test file).
    """
    g = f[group] if group else f
    where = f"group {group!r} of {_name(f.filename)}" if group else _name(f.filename)

    def need(key: str) -> str:
        if _has_ds(g, key):
            return key
        if twin and key.startswith("train_set_") and _has_ds(g, "test_" + key[6:]):
            return "test_" + key[6:]
        raise DataError(f"key {key!r} not found in {where}; {_keys_msg(f)}")

    if x_key is not None or y_key is not None:
        xk = need(x_key) if x_key is not None else next(
            (a for a, _ in pairs if _has_ds(g, a)), None)
        yk = need(y_key) if y_key is not None else next(
            (b for _, b in pairs if _has_ds(g, b)), None)
        if xk is None:
            raise DataError(f"no X key found in {where} (tried {', '.join(a for a, _ in pairs)}); "
                            f"{_keys_msg(f)}")
        if yk is None and require_y:
            raise DataError(f"no labels key found in {where} (tried "
                            f"{', '.join(dict.fromkeys(b for _, b in pairs))}); {_keys_msg(f)}")
        return _Part(_join(group, xk), _join(group, yk) if yk else None)
    for a, b in pairs:
        if _has_ds(g, a) and _has_ds(g, b):
            return _Part(_join(group, a), _join(group, b))
    if not require_y:
        for a, _ in pairs:
            if _has_ds(g, a):
                return _Part(_join(group, a), None)
    return None


def _no_keys(f: h5py.File, group: str) -> DataError:
    where = f"group {group!r} of {_name(f.filename)}" if group else _name(f.filename)
    tried = ", ".join(f"{a}/{b}" for a, b in KEY_PAIRS)
    return DataError(f"no X/y keys found in {where} (tried {tried}); {_keys_msg(f)}; "
                     "use --x-key/--y-key")


def _find_parts(f: h5py.File, x_key: str | None, y_key: str | None,
                require_y: bool = True) -> tuple[dict[str, _Part], bool]:
    """``{"train": part, "val"?: part, "test"?: part}`` and whether test is the same as train."""
    parts: dict[str, _Part] = {}
    for s in SPLITS:
        if s in f and isinstance(f[s], h5py.Group):
            p = _detect(f, s, x_key, y_key, require_y=require_y, twin=(s == "test"))
            if p is None:
                raise _no_keys(f, s)
            parts[s] = p
    same = False
    if "train" not in parts:
        main = _detect(f, "", x_key, y_key, KEY_PAIRS[:-1], require_y=require_y)
        course_test = None
        if x_key is None and y_key is None:
            course_test = _detect(f, "", None, None, KEY_PAIRS[-1:], require_y=require_y)
        elif x_key is not None and x_key.startswith("train_set_"):
            tw = "test_" + x_key[6:]
            ty = "test_" + y_key[6:] if y_key and y_key.startswith("train_set_") else None
            if _has_ds(f, tw) and (ty is None or _has_ds(f, ty)):
                course_test = _Part(tw, ty)
        if main is None and course_test is not None:
            main, same = course_test, True
        if main is None:
            raise _no_keys(f, "")
        parts["train"] = main
        if "test" not in parts and course_test is not None:
            parts["test"] = course_test
    return parts, same


def _class_names(f: h5py.File, part: _Part) -> list[str] | None:
    """Names from attribute ``classes`` (y, X, group, file) or a dataset ``list_classes``."""
    group = part.x.rsplit("/", 1)[0] if "/" in part.x else ""
    objs: list[Any] = [f[part.y]] if part.y else []
    objs += [f[part.x], f[group] if group else f, f]
    for o in objs:
        if "classes" in o.attrs:
            return _decode_names(o.attrs["classes"])
    for g in ([f[group]] if group else []) + [f]:
        if _has_ds(g, "list_classes"):
            return _decode_names(g["list_classes"][()])
    return None


@dataclass
class _PartData:
    """A part read and checked: labels (int64), one-hot width, feature shape, dtype, n."""

    part: _Part
    labels: np.ndarray
    onehot: int
    feature_shape: tuple[int, ...]
    dtype: np.dtype
    n: int
    has_labels: bool


def _check_part(f: h5py.File, part: _Part) -> _PartData:
    """Check X's dtype and shape, read and check the labels."""
    ds = f[part.x]
    fname = _name(f.filename)
    if not _is_numeric(ds.dtype):
        raise DataError(f"X {fname}:{part.x} must be numeric, got dtype {ds.dtype}")
    if ds.ndim == 0:
        raise DataError(f"X {fname}:{part.x} is a scalar; expected shape (n, ...)")
    n = int(ds.shape[0])
    fshape = tuple(int(s) for s in ds.shape[1:])
    if n == 0:
        raise DataError(f"empty dataset: {fname}:{part.x} has 0 samples")
    if int(np.prod(fshape)) == 0:
        raise DataError(f"X {fname}:{part.x} has no features (shape {ds.shape})")
    if part.y is None:
        return _PartData(part, np.full(n, -1, np.int64), 0, fshape, ds.dtype, n, False)
    yds = f[part.y]
    where = f"{fname}:{part.y}"
    if yds.ndim == 2 and yds.shape[0] == n and yds.shape[1] > 1 and n > 1_000_000:
        # large one-hot: convert in row chunks
        outs, width = [], 0
        for a in range(0, n, 1_000_000):
            lab, width = normalize_labels(yds[a:a + 1_000_000], min(n - a, 1_000_000), where)
            outs.append(lab)
        labels = np.concatenate(outs)
    else:
        try:
            y = yds[()]
        except (OSError, TypeError, ValueError) as e:
            raise DataError(f"cannot read labels {where}: {str(e).splitlines()[0]}") from None
        labels, width = normalize_labels(y, n, where)
    return _PartData(part, labels, width, fshape, ds.dtype, n, True)


# ---------------------------------------------------------------------------- splits
def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(r for r in ranges if r[1] > r[0]):
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def holdout_ranges(n: int, val_split: float, seed: int
                   ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """``(train row ranges, val row ranges)`` for holding out ``val_split`` of ``n`` rows.

    See the module docstring: seeded contiguous blocks, ``min(n, 1024)`` of them; depends only on
    ``(n, val_split, seed)``.
    """
    if not 0 <= val_split < 1:
        raise ConfigError(f"val_split must be in [0, 1), got {val_split}")
    if val_split == 0:
        return [(0, n)], []
    n_val = max(1, int(round(n * val_split)))
    if n_val >= n:
        raise DataError(f"val_split {val_split} of {n} samples leaves no training samples")
    nb = min(n, _VAL_BLOCKS)
    bounds = (np.arange(nb + 1, dtype=np.int64) * n) // nb
    rng = np.random.default_rng([int(seed), _VAL_TAG])
    val: list[tuple[int, int]] = []
    left = n_val
    for blk in rng.permutation(nb):
        a, b = int(bounds[blk]), int(bounds[blk + 1])
        take = min(b - a, left)
        val.append((a, a + take))
        left -= take
        if left == 0:
            break
    val = _merge(val)
    train, pos = [], 0
    for a, b in val:
        train.append((pos, a))
        pos = b
    train.append((pos, n))
    return _merge(train), val


def _make_source(f: h5py.File, path: pathlib.Path, pd: _PartData,
                 ranges: list[tuple[int, int]] | None, memory_budget: int, name: str,
                 classes: list[str] | None) -> ArraySource:
    """A source over ``ranges`` of one part (None: all rows)."""
    return _make_multi(f, path, [(pd, ranges)], memory_budget, name, classes)


def _make_multi(f: h5py.File, path: pathlib.Path,
                items: list[tuple[_PartData, list[tuple[int, int]] | None]],
                memory_budget: int, name: str, classes: list[str] | None) -> ArraySource:
    segs: list[Segment] = []
    labs: list[np.ndarray] = []
    fshape = items[0][0].feature_shape
    d = int(np.prod(fshape))
    for pd, ranges in items:
        if int(np.prod(pd.feature_shape)) != d:
            raise DataError(f"{pd.part.x} has {int(np.prod(pd.feature_shape))} features but "
                            f"{items[0][0].part.x} has {d}")
        for a, b in (ranges if ranges is not None else [(0, pd.n)]):
            segs.append((pd.part.x, a, b))
            labs.append(pd.labels[a:b])
    labels = np.concatenate(labs) if labs else np.zeros(0, np.int64)
    n = len(labels)
    if n == 0:
        raise DataError(f"empty dataset: {name} has 0 samples")
    has_labels = all(pd.has_labels for pd, _ in items)
    dtype = items[0][0].dtype if len({pd.dtype for pd, _ in items}) == 1 else np.dtype("f8")
    if n * d * 4 > memory_budget:
        return StreamedSource(path, segs, labels, fshape, dtype, memory_budget, name, classes,
                              has_labels)
    # in memory: read each range straight into the float32 array (HDF5 converts the type)
    src = StreamedSource(path, segs, labels, fshape, dtype, max(memory_budget, 1), name, classes,
                         has_labels)
    X = np.empty((n, d), dtype=np.float32)
    pos = 0
    for key, a, b in segs:
        src._read(f, key, a, b, X[pos:pos + b - a])
        pos += b - a
    return InMemorySource(X, labels, name, classes, has_labels, fshape)


@dataclass
class Dataset:
    """The splits of one training run and what describes them.

    ``val_source``: ``"group"`` (a ``val`` group in the file), ``"file"`` (``val=FILE``),
    ``"split"`` (held out by ``val_split``), ``"none"``. ``classes`` are names, or
    ``["0", "1", ...]``; ``x_key`` / ``y_key`` are the keys used for the training split.
    """

    train: ArraySource
    val: ArraySource | None
    test: ArraySource | None
    n_features: int
    n_classes: int
    classes: list[str]
    path: str
    x_key: str
    y_key: str
    val_source: str
    val_split: float = 0.0
    seed: int = 0
    feature_shape: tuple[int, ...] = ()


def _n_classes(names: list[str] | None, pds: list[tuple[_PartData, str]]) -> int:
    if names is not None:
        for pd, where in pds:
            if pd.has_labels:
                _check_label_range(pd.labels, len(names), where,
                                   f" (the file names {len(names)} classes)")
        return len(names)
    top = max((int(pd.labels.max()) + 1 if pd.has_labels else 0) for pd, _ in pds)
    return max([top] + [pd.onehot for pd, _ in pds])


def open_dataset(data: str | os.PathLike[str], x_key: str | None = None,
                 y_key: str | None = None, val: str | os.PathLike[str] | None = None,
                 val_split: float = 0.1, seed: int = 0,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET) -> Dataset:
    """Open a training dataset: train, validation and test splits, checked.

    Validation comes from ``val`` (a file: its ``val`` group if present, else its data), else a
    ``val`` group, else ``val_split`` of the training part (see :func:`holdout_ranges`), else
    none. The test split is the ``test`` group (or the course's ``test_set_x/test_set_y`` beside
    a training pair), else None.
    """
    path = resolve_data_path(data)
    with _open_h5(path) as f:
        parts, same = _find_parts(f, x_key, y_key)
        pds = {s: _check_part(f, p) for s, p in parts.items()}
        names = _class_names(f, parts["train"])
        checked: list[tuple[_PartData, str]] = [(pd, f"in {_name(path)}:{pd.part.y}")
                                                for s, pd in pds.items()]
        val_file_src: ArraySource | None = None
        if val is not None:
            with _open_h5(resolve_data_path(val)) as vf:
                has_val = "val" in vf and isinstance(vf["val"], h5py.Group)
            val_file_src = load_split(val, "val" if has_val else "all", x_key, y_key,
                                      val_split=0.0, memory_budget=memory_budget)
        n_classes = _n_classes(names, checked)
        if val_file_src is not None and val_file_src.has_labels:
            if names is not None:
                _check_label_range(val_file_src.labels, len(names), f"in {val_file_src.name}",
                                   f" (the file names {len(names)} classes)")
            n_classes = max(n_classes, int(val_file_src.labels.max()) + 1)
        if n_classes < 2:
            raise DataError(f"{_name(path)} has a single class (label 0); a classifier needs "
                            "at least 2")
        classes = names if names is not None else [str(i) for i in range(n_classes)]
        tr = pds["train"]
        if val is not None:
            val_source, train_rows, val_src = "file", None, None
        elif "val" in pds:
            val_source, train_rows, val_src = "group", None, None
        elif val_split > 0:
            val_source = "split"
            train_rows, val_rows = holdout_ranges(tr.n, val_split, seed)
        else:
            val_source, train_rows = "none", None
            holdout_ranges(tr.n, val_split, seed)   # checks the range
        fname = _name(path)
        train = _make_source(f, path, tr, train_rows, memory_budget, f"{fname}:train",
                             names)
        if val_source == "file":
            val_src = val_file_src
        elif val_source == "group":
            val_src = _make_source(f, path, pds["val"], None, memory_budget, f"{fname}:val",
                                   names)
        elif val_source == "split":
            val_src = _make_source(f, path, tr, val_rows, memory_budget, f"{fname}:val",
                                   names)
        else:
            val_src = None
        test = None
        if "test" in pds and not same:
            test = _make_source(f, path, pds["test"], None, memory_budget, f"{fname}:test",
                                names)
    for s in (val_src, test):
        if s is not None and s.n_features != train.n_features:
            raise DataError(f"{s.name} has {s.n_features} features but {train.name} has "
                            f"{train.n_features}")
    return Dataset(train=train, val=val_src, test=test, n_features=train.n_features,
                   n_classes=n_classes, classes=classes, path=str(path),
                   x_key=parts["train"].x.rsplit("/", 1)[-1],
                   y_key=(parts["train"].y or "").rsplit("/", 1)[-1], val_source=val_source,
                   val_split=float(val_split) if val_source == "split" else 0.0, seed=int(seed),
                   feature_shape=tr.feature_shape)


def load_split(data: str | os.PathLike[str], split: str = "test", x_key: str | None = None,
               y_key: str | None = None, val_split: float = 0.1, seed: int = 0,
               memory_budget: int = DEFAULT_MEMORY_BUDGET, labels: bool = True) -> ArraySource:
    """One split for eval / predict: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.

    ``"train"`` / ``"val"`` without a ``val`` group are the rows :func:`open_dataset` uses for
    the same ``val_split`` and ``seed``; ``"all"`` is every part of the file (train, val, test
    groups, in that order). With ``labels=False`` a file of X only is accepted (labels -1).
    """
    if split not in ("train", "val", "test", "all"):
        raise ConfigError(f"unknown split {split!r}: use train, val, test or all")
    path = resolve_data_path(data)
    fname = _name(path)
    with _open_h5(path) as f:
        parts, same = _find_parts(f, x_key, y_key, require_y=labels)
        names = _class_names(f, parts["train"])
        name = f"{fname}:{split}"
        if split == "all":
            order = ["train"] + [s for s in ("val", "test") if s in parts and not
                                 (s == "test" and same)]
            pds = [_check_part(f, parts[s]) for s in order]
            src = _make_multi(f, path, [(pd, None) for pd in pds], memory_budget, name, names)
        elif split == "test":
            if "test" not in parts:
                raise DataError(f"{fname} has no test split (no 'test' group or "
                                "test_set_x/test_set_y); use split 'all' for the whole file")
            src = _make_source(f, path, _check_part(f, parts["test"]), None, memory_budget,
                               name, names)
        elif split == "val" and "val" in parts:
            src = _make_source(f, path, _check_part(f, parts["val"]), None, memory_budget,
                               name, names)
        else:
            pd = _check_part(f, parts["train"])
            if "val" in parts or val_split == 0:
                if split == "val":
                    raise DataError(f"{fname} has no val split (no 'val' group and val_split "
                                    "is 0)")
                rows = None
            else:
                tr_rows, va_rows = holdout_ranges(pd.n, val_split, seed)
                rows = tr_rows if split == "train" else va_rows
            src = _make_source(f, path, pd, rows, memory_budget, name, names)
    if names is not None and src.has_labels:
        _check_label_range(src.labels, len(names), f"in {src.name}",
                           f" (the file names {len(names)} classes)")
    return src


def validate(data: str | os.PathLike[str], x_key: str | None = None, y_key: str | None = None,
             memory_budget: int = DEFAULT_MEMORY_BUDGET) -> Dataset:
    """Open with ``val_split=0`` and read every split once (NaN / inf checked); DataError if bad."""
    ds = open_dataset(data, x_key, y_key, val_split=0.0, memory_budget=memory_budget)
    for s in (ds.train, ds.val, ds.test):
        if s is not None:
            s.feature_stats()
    return ds


# ---------------------------------------------------------------------------- writing files
def _write_atomic(out: str | os.PathLike[str], write: Callable[[h5py.File], None],
                  force: bool) -> pathlib.Path:
    """Write an .h5 through a temporary file in the same folder, then ``os.replace``."""
    p = pathlib.Path(out).expanduser().resolve()
    if p.exists() and not force:
        raise DataError(f"{out} already exists (use --force to overwrite)")
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(tmp, "w") as f:
            write(f)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, p)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"cannot write {out}: {e.strerror or str(e).splitlines()[0]}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return p


def _check_xy(X: np.ndarray, y: np.ndarray, where: str,
              classes: list[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """Check arrays about to be written: numeric finite X, labels normalized to int64 (n,)."""
    X = np.asarray(X)
    if not _is_numeric(X.dtype):
        raise DataError(f"X {where} must be numeric, got dtype {X.dtype}")
    if X.ndim == 0 or X.shape[0] == 0:
        raise DataError(f"empty dataset: X {where} has no samples")
    if X.ndim == 1:
        X = X[:, None]
    if X.dtype.kind == "f":
        bad = _finite_rows(X.reshape(X.shape[0], -1))
        if bad >= 0:
            raise DataError(f"X {where} has NaN or inf (row {bad})")
    labels, width = normalize_labels(y, X.shape[0], where)
    if classes is not None:
        _check_label_range(labels, len(classes), where, f" ({len(classes)} class names)")
    return X, labels


def _write_splits(splits: dict[str, tuple[np.ndarray, np.ndarray]],
                  attrs: dict[str, Any], grouped: bool) -> Callable[[h5py.File], None]:
    def write(f: h5py.File) -> None:
        for k, v in attrs.items():
            f.attrs[k] = v
        for s, (X, y) in splits.items():
            g = f.create_group(s) if grouped else f
            kw: dict[str, Any] = {"compression": "gzip"} if X.nbytes > 1 << 16 else {}
            g.create_dataset("X", data=X, **kw)
            g.create_dataset("y", data=y.astype(np.int64))
    return write


def _summary(path: pathlib.Path, splits: dict[str, tuple[np.ndarray, np.ndarray]],
             classes: list[str] | None) -> dict[str, Any]:
    return {"path": str(path),
            "splits": {s: {"n": int(X.shape[0]), "x_shape": list(X.shape), "x_dtype": str(X.dtype)}
                       for s, (X, y) in splits.items()},
            "classes": classes}


def make_synthetic(kind: str, out: str | os.PathLike[str], n: int = 1000, classes: int = 3,
                   features: int = 2, noise: float | None = None, seed: int = 0,
                   test_fraction: float = 0.2, force: bool = False) -> dict[str, Any]:
    """Write a synthetic classification set to ``out`` (groups ``train`` / ``test``, X float32).

    ``blobs``: one Gaussian of std ``noise`` (default 1.0) per class around a center drawn
    uniformly in [-10, 10]^features. ``spirals``: ``classes`` interleaved arms in the plane
    (radius 0..1, 4 radians of turn, angle jitter of std ``noise``, default 0.2); with
    ``features > 2`` the plane is embedded by a random orthonormal map and every feature gets
    Gaussian noise of std ``noise / 10``. Classes are balanced (n // classes each, the
    remainder to the first ones); the test split is stratified. Returns a summary.
    """
    if kind not in ("blobs", "spirals"):
        raise ConfigError(f"unknown kind {kind!r}: use blobs or spirals")
    if classes < 2:
        raise ConfigError(f"classes must be at least 2, got {classes}")
    if features < (2 if kind == "spirals" else 1):
        raise ConfigError(f"features must be at least {2 if kind == 'spirals' else 1} for {kind}")
    if n < 2 * classes:
        raise ConfigError(f"n must be at least 2 per class ({2 * classes}), got {n}")
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    noise = (1.0 if kind == "blobs" else 0.2) if noise is None else float(noise)
    if noise < 0:
        raise ConfigError(f"noise must be >= 0, got {noise}")
    rng = np.random.default_rng(seed)
    counts = [n // classes + (1 if k < n % classes else 0) for k in range(classes)]
    Xs, ys = [], []
    if kind == "blobs":
        centers = rng.uniform(-10, 10, size=(classes, features))
        for k, m in enumerate(counts):
            Xs.append(centers[k] + noise * rng.standard_normal((m, features)))
            ys.append(np.full(m, k))
    else:
        q = np.linalg.qr(rng.standard_normal((features, 2)))[0].T  # (2, features) orthonormal
        for k, m in enumerate(counts):
            r = np.linspace(0.0, 1.0, m)
            t = 2 * np.pi * k / classes + 4 * r + noise * rng.standard_normal(m)
            pts = np.stack([r * np.sin(t), r * np.cos(t)], axis=1)
            x = pts if features == 2 else pts @ q + (noise / 10) * rng.standard_normal(
                (m, features))
            Xs.append(x)
            ys.append(np.full(m, k))
    X = np.concatenate(Xs).astype(np.float32)
    y = np.concatenate(ys).astype(np.int64)
    test_mask = np.zeros(len(y), dtype=bool)
    for k in range(classes):
        idx = np.flatnonzero(y == k)
        m = max(1, int(round(len(idx) * test_fraction)))
        test_mask[rng.permutation(idx)[:m]] = True
    perm_tr = rng.permutation(np.flatnonzero(~test_mask))
    perm_te = rng.permutation(np.flatnonzero(test_mask))
    splits = {"train": (X[perm_tr], y[perm_tr]), "test": (X[perm_te], y[perm_te])}
    attrs = {"generator": f"gpunet data make --kind {kind}", "kind": kind, "seed": int(seed),
             "noise": noise, "classes": [str(k) for k in range(classes)]}
    p = _write_atomic(out, _write_splits(splits, attrs, grouped=True), force)
    return _summary(p, splits, attrs["classes"])


_NPZ_SPLIT_KEYS = {s: ([f"x_{s}", f"X_{s}"], [f"y_{s}"]) for s in SPLITS}


def import_npz(src: str | os.PathLike[str], out: str | os.PathLike[str],
               x_key: str | None = None, y_key: str | None = None,
               classes: list[str] | None = None, force: bool = False) -> dict[str, Any]:
    """Convert an ``.npz`` (loaded with ``allow_pickle=False``) to an .h5 at ``out``.

    Layout: ``x_train``/``y_train`` (also ``X_train``; and ``_val``, ``_test``) become groups
    ``train`` / ``val`` / ``test``; otherwise one pair found by the usual key order (or
    ``x_key`` / ``y_key``) becomes root ``X`` / ``y``. X keeps its dtype and shape; labels are
    written int64 ``(n,)``. Class names: ``classes``, else an array ``classes`` or
    ``list_classes`` in the file.
    """
    sp = pathlib.Path(src).expanduser()
    if not sp.is_file():
        raise DataError(f"file not found: {src}")
    try:
        npz = np.load(sp, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"cannot read {src} as .npz: {str(e).splitlines()[0]}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"{src} is a single .npy array, not an .npz archive of named arrays")
    with npz:
        keys = list(npz.files)

        def get(k: str) -> np.ndarray:
            try:
                return npz[k]
            except ValueError as e:
                if "pickle" in str(e):
                    raise DataError(f"{src}: array {k!r} is a pickled object array; refusing "
                                    "it (allow_pickle=False)") from None
                raise DataError(f"{src}: cannot read array {k!r}: {e}") from None
            except (OSError, zipfile.BadZipFile, EOFError) as e:
                raise DataError(f"{src}: cannot read array {k!r}: {e}") from None

        def missing() -> DataError:
            return DataError(f"no X/y arrays found in {src} (tried x_train/y_train, "
                             f"{', '.join(f'{a}/{b}' for a, b in KEY_PAIRS)}); "
                             f"keys present: {', '.join(keys) or 'none'}")

        pairs: dict[str, tuple[str, str]] = {}
        if x_key is not None or y_key is not None:
            for k in (x_key, y_key):
                if k is not None and k not in keys:
                    raise DataError(f"key {k!r} not found in {src}; keys present: "
                                    f"{', '.join(keys) or 'none'}")
            xk = x_key or next((a for a, _ in KEY_PAIRS if a in keys), None)
            yk = y_key or next((b for _, b in KEY_PAIRS if b in keys), None)
            if xk is None or yk is None:
                raise missing()
            pairs[""] = (xk, yk)
        else:
            for s, (xs, ys) in _NPZ_SPLIT_KEYS.items():
                xk = next((k for k in xs if k in keys), None)
                yk = next((k for k in ys if k in keys), None)
                if xk and yk:
                    pairs[s] = (xk, yk)
            if pairs and "train" not in pairs:
                raise DataError(f"{src} has {', '.join(pairs)} arrays but no x_train/y_train")
            if not pairs:
                found = next(((a, b) for a, b in KEY_PAIRS if a in keys and b in keys), None)
                if found is None:
                    raise missing()
                pairs[""] = found
        if classes is None:
            for k in ("classes", "list_classes"):
                if k in keys:
                    classes = _decode_names(get(k))
                    break
        splits = {}
        for s, (xk, yk) in pairs.items():
            X, y = _check_xy(get(xk), get(yk), f"{_name(sp)}:{xk}/{yk}", classes)
            splits[s or "all"] = (X, y)
    attrs: dict[str, Any] = {"source": _name(sp), "generator": "gpunet data import"}
    if classes is not None:
        attrs["classes"] = list(classes)
    grouped = "" not in pairs
    p = _write_atomic(out, _write_splits(splits, attrs, grouped), force)
    return _summary(p, splits, classes)


_LABEL_NAMES = ("label", "labels", "y", "target", "class")


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def import_csv(src: str | os.PathLike[str], out: str | os.PathLike[str],
               label_column: str | int | None = None, delimiter: str | None = None,
               header: bool | None = None, classes: list[str] | None = None,
               force: bool = False) -> dict[str, Any]:
    """Convert a CSV (one sample a row) to an .h5 with root ``X`` float32 ``(n, d)`` and ``y``.

    ``label_column``: a column name or index (negative counts from the end); default the column
    named label / labels / y / target / class, else the last one. ``header``: None detects it
    (a first row with text where the second row has numbers). ``delimiter``: default ``,``
    (tab for ``.tsv``). Non-numeric labels are class names, numbered in sorted order (or in the
    order of ``classes``). The whole file is parsed in memory.
    """
    sp = pathlib.Path(src).expanduser()
    if not sp.is_file():
        raise DataError(f"file not found: {src}")
    delim = delimiter or ("\t" if sp.suffix.lower() == ".tsv" else ",")
    try:
        with open(sp, newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.reader(fh, delimiter=delim) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read {src} as CSV: {str(e).splitlines()[0]}") from None
    if not rows:
        raise DataError(f"empty dataset: {src} has no rows")
    if header is None:
        header = len(rows) > 1 and any(
            not _is_number(a) and _is_number(b) for a, b in zip(rows[0], rows[1], strict=False))
    names = [c.strip() for c in rows[0]] if header else None
    body = rows[1:] if header else rows
    if not body:
        raise DataError(f"empty dataset: {src} has a header but no rows")
    ncol = len(rows[0])
    if ncol < 2:
        raise DataError(f"{src} has {ncol} column; need features and a label column")
    for i, r in enumerate(body):
        if len(r) != ncol:
            raise DataError(f"{src} line {i + 1 + bool(header)} has {len(r)} columns, "
                            f"expected {ncol}")
    if label_column is None:
        lc = next((names.index(c) for c in _LABEL_NAMES if names and c in names), ncol - 1)
    elif isinstance(label_column, int) or str(label_column).lstrip("-").isdigit():
        lc = int(label_column)
        if not -ncol <= lc < ncol:
            raise DataError(f"label column {lc} is out of range for {ncol} columns")
        lc %= ncol
    else:
        if names is None or label_column not in names:
            raise DataError(f"label column {label_column!r} not found in {src}; columns: "
                            f"{', '.join(names) if names else '(no header)'}")
        lc = names.index(str(label_column))
    feat_cols = [j for j in range(ncol) if j != lc]
    X = np.empty((len(body), len(feat_cols)), dtype=np.float32)
    for i, r in enumerate(body):
        for jj, j in enumerate(feat_cols):
            try:
                X[i, jj] = float(r[j])
            except ValueError:
                col = names[j] if names else str(j)
                raise DataError(f"{src} line {i + 1 + bool(header)}, column {col!r}: "
                                f"{r[j]!r} is not a number") from None
    raw = [r[lc].strip() for r in body]
    if all(_is_number(v) for v in raw):
        y = np.array([float(v) for v in raw])
    else:
        if classes is None:
            classes = sorted(set(raw))
        index = {c: k for k, c in enumerate(classes)}
        unknown = next((v for v in raw if v not in index), None)
        if unknown is not None:
            raise DataError(f"label {unknown!r} in {src} is not one of the classes "
                            f"{', '.join(classes)}")
        y = np.array([index[v] for v in raw], dtype=np.int64)
    X, labels = _check_xy(X, y, _name(sp), classes)
    attrs: dict[str, Any] = {"source": _name(sp), "generator": "gpunet data import"}
    if classes is not None:
        attrs["classes"] = list(classes)
    if names is not None:
        attrs["feature_names"] = [names[j] for j in feat_cols]
    splits = {"all": (X, labels)}
    p = _write_atomic(out, _write_splits(splits, attrs, grouped=False), force)
    return _summary(p, splits, classes)


def inspect_file(data: str | os.PathLike[str], x_key: str | None = None,
                 y_key: str | None = None) -> dict[str, Any]:
    """Describe an .h5: attributes, datasets (key, shape, dtype), detected splits and keys, class
    counts. A file that cannot be opened raises DataError; a detection problem is reported in
    ``"error"`` (the inventory is still returned). JSON-serializable.
    """
    path = resolve_data_path(data)
    info: dict[str, Any] = {"path": str(path), "bytes": path.stat().st_size, "attrs": {},
                            "datasets": [], "splits": {}, "classes": None, "n_classes": None,
                            "val_source": None, "error": None}
    with _open_h5(path) as f:
        info["attrs"] = {k: _jsonable(v) for k, v in f.attrs.items()}

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                info["datasets"].append({"key": name, "shape": list(obj.shape),
                                         "dtype": str(obj.dtype)})

        f.visititems(visit)
        try:
            parts, same = _find_parts(f, x_key, y_key)
            names = _class_names(f, parts["train"])
            pds = {s: _check_part(f, p) for s, p in parts.items()}
            n_classes = _n_classes(names, [(pd, f"in {pd.part.y}") for pd in pds.values()])
            info["classes"] = names if names is not None else [str(i) for i in range(n_classes)]
            info["n_classes"] = n_classes
            info["val_source"] = "group" if "val" in pds else "split"
            for s, pd in pds.items():
                info["splits"][s] = {
                    "x_key": pd.part.x, "y_key": pd.part.y, "n": pd.n,
                    "n_features": int(np.prod(pd.feature_shape)),
                    "x_shape": list(f[pd.part.x].shape), "x_dtype": str(pd.dtype),
                    "y_shape": list(f[pd.part.y].shape) if pd.part.y else None,
                    "labels": ("one-hot" if pd.onehot else "class ids"),
                    "class_counts": np.bincount(pd.labels, minlength=n_classes).tolist(),
                    "same_as_train": bool(same and s == "test"),
                }
        except DataError as e:
            info["error"] = str(e)
    json.dumps(info)  # guarantees the promise above
    return info
