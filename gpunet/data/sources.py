"""Sources: one split's samples, given out in batches within a memory budget.

Conventions (docs/architecture.md, "Data files"):

- Batches are ``(X float32 (b, d), y int64 (b,))``: X flattened to ``(b, d)`` and *raw* (not
  standardized: see :class:`gpunet.data.Standardizer`); labels are class ids ``0..C-1``, or
  ``-1`` where the file has none. Every batch is a fresh array.
- Memory: a split whose float32 X (``n * d * 4`` bytes) fits ``memory_budget``
  (:data:`DEFAULT_MEMORY_BUDGET`, 2 GiB, unless given) is read once into memory
  (:class:`InMemorySource`); a larger one is streamed from the file in contiguous slabs
  (:class:`StreamedSource`: ``ds[a:b]``-style reads only, never fancy-index lists), and
  everything the streaming reader holds (its labels, its shuffle buffer, one slab, the batch it
  yields) stays within the budget; only fixed scratch outside it remains (NumPy's per-operation
  ufunc buffers of at most 64 KiB, h5py's small objects). The budget applies to each split on
  its own.
- Every open checks where the file's data lives (:mod:`gpunet.data.storage`): a streamed
  source re-checks links and virtual sources on every pass, with the ``allow_external``
  setting it was made with.
- A streamed source reopens the file for every pass, so sources survive ``fork``.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Sequence

import h5py
import numpy as np

from ..errors import DataError
from .checks import _check_batch_size, _finite_rows, _name
from .files import _allowed, _open_h5
from .labels import _check_label_range

#: bytes; a split whose float32 X is larger than this is streamed from the file
DEFAULT_MEMORY_BUDGET: int = 2 * 1024**3
_SLAB_BYTES = 16 * 1024**2          # float32 bytes of one streamed slab, at most
_STATS_CHUNK_BYTES = 8 * 1024**2    # float64 working bytes of one feature_stats chunk (in memory)

Segment = tuple[str, int, int]     # (X dataset path in the file, first row, stop row)


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


class _BatchBuffer:
    """The streaming reader's buffer: whole slabs are appended at ``fill``; ``drain`` yields the
    full batches it holds, in a random order when it has an ``rng``, and keeps the rows left over
    (fewer than a batch) at its start for the next fill, or yields them last when ``final``."""

    def __init__(self, cap: int, d: int, batch_size: int, rng: np.random.Generator | None,
                 drop_last: bool) -> None:
        self.x = np.empty((cap, d), dtype=np.float32)
        self.y = np.empty(cap, dtype=np.int64)
        self.cap, self.b, self.rng, self.drop_last = cap, batch_size, rng, drop_last
        self.fill = 0

    def drain(self, final: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        fill, b = self.fill, self.b
        idx = self.rng.permutation(fill) if self.rng is not None else None
        full = fill - fill % b
        for s in range(0, full, b):
            if idx is not None:
                sel = idx[s:s + b]
                yield self.x[sel], self.y[sel]
            else:
                yield self.x[s:s + b].copy(), self.y[s:s + b].copy()
        r = fill - full
        rest = idx[full:] if idx is not None else slice(full, fill)
        if final:
            if r and not self.drop_last:
                yield self.x[rest].copy(), self.y[rest].copy()
            self.fill = 0
        elif r:
            self.x[:r] = self.x[rest]
            self.y[:r] = self.y[rest]
            self.fill = r
        else:
            self.fill = 0


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
                 has_labels: bool = True, allow_external: bool = False) -> None:
        super().__init__()
        self.path = str(path)
        # captured now: a pass may run in another thread (docs/architecture.md, "Data files")
        self.allow_external = _allowed(allow_external)
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

    def _note(self, nbytes: int) -> None:
        self.peak_bytes = max(self.peak_bytes, int(nbytes))

    # -- reading
    @contextlib.contextmanager
    def _open(self) -> Iterator[h5py.File]:
        f = _open_h5(self.path, self.allow_external)
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

    def read_all(self, f: h5py.File) -> np.ndarray:
        """Every row, in order, as float32 ``(n, d)`` from the open file ``f`` (checked as
        ``batches`` checks; the result is outside the budget)."""
        X = np.empty((self.n, self.n_features), dtype=np.float32)
        pos = 0
        for key, a, b in self.segments:
            self._read(f, key, a, b, X[pos:pos + b - a])
            pos += b - a
        return X

    def batches(self, batch_size: int, shuffle: bool = False,
                rng: np.random.Generator | None = None,
                drop_last: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        b = _check_batch_size(batch_size)
        if shuffle and rng is None:
            rng = np.random.default_rng()
        cap, slab_rows = self.plan(b, shuffle)
        slabs = self._slabs(slab_rows)
        order = rng.permutation(len(slabs)) if shuffle else np.arange(len(slabs))  # type: ignore[union-attr]
        row = 4 * self.n_features + 8
        self._note(self.labels.nbytes + cap * (row + (8 if shuffle else 0))
                   + slab_rows * self._raw_row() + 2 * b * row)
        buf = _BatchBuffer(cap, self.n_features, b, rng if shuffle else None, drop_last)
        with self._open() as f:
            for i in order:
                key, a, z, off = slabs[int(i)]
                m = z - a
                if buf.fill + m > cap:
                    yield from buf.drain(final=False)
                self._read(f, key, a, z, buf.x[buf.fill:buf.fill + m])
                buf.y[buf.fill:buf.fill + m] = self.labels[off:off + m]
                buf.fill += m
            yield from buf.drain(final=True)

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


def _source(f: h5py.File, path: str | os.PathLike[str], segments: Sequence[Segment],
            labels: np.ndarray, feature_shape: tuple[int, ...], x_dtype: np.dtype,
            memory_budget: int, name: str, classes: list[str] | None,
            has_labels: bool, allow_external: bool = False) -> ArraySource:
    """The rows ``segments`` of the open file ``f``: read into memory when their float32 X
    (``n * d * 4`` bytes) fits ``memory_budget``, else a :class:`StreamedSource`."""
    d = math.prod(feature_shape)
    if len(labels) * d * 4 > memory_budget:
        return StreamedSource(path, segments, labels, feature_shape, x_dtype, memory_budget,
                              name, classes, has_labels, allow_external)
    # in memory: read each range straight into the float32 array (HDF5 converts the type)
    reader = StreamedSource(path, segments, labels, feature_shape, x_dtype,
                            max(memory_budget, 1), name, classes, has_labels, allow_external)
    return InMemorySource(reader.read_all(f), labels, name, classes, has_labels,
                          feature_shape)
