"""gpunet.data: key detection, label shapes, splits, streaming within the budget, errors."""

from __future__ import annotations

import gc
import importlib
import importlib.resources
import inspect
import pathlib
import sys
import tracemalloc

import h5py
import numpy as np
import pytest

import gpunet.data as D
from gpunet.errors import ConfigError, DataError

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def write(path, attrs=None, **arrays):
    """Write ``arrays`` (keys may be ``group/name``) to ``path``; return str(path)."""
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f[k] = v
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    return str(path)


def xy(n=40, d=3, classes=3, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((n, d)) * 10).astype(dtype)
    y = np.arange(n) % classes
    return X, y


def all_xy(src, b=7):
    xs, ys = zip(*src.batches(b), strict=True)
    return np.concatenate(xs), np.concatenate(ys)


# ------------------------------------------------------------------ detection
@pytest.mark.parametrize("xk,yk", D.KEY_PAIRS)
def test_each_key_pair_is_detected(tmp_path, xk, yk):
    X, y = xy()
    p = write(tmp_path / "d.h5", **{xk: X, yk: y})
    ds = D.open_dataset(p, val_split=0)
    assert (ds.x_key, ds.y_key) == (xk, yk)
    Xr, yr = ds.train.arrays()
    np.testing.assert_array_equal(Xr, X)
    np.testing.assert_array_equal(yr, y)


def test_detection_order_prefers_earlier_pair(tmp_path):
    X, y = xy()
    p = write(tmp_path / "d.h5", features=X[:, :2], labels=y, X=X, y=y)
    ds = D.open_dataset(p, val_split=0)
    assert (ds.x_key, ds.y_key, ds.n_features) == ("X", "y", 3)


def test_overrides(tmp_path):
    X, y = xy()
    p = write(tmp_path / "d.h5", X=X, y=y, images=X[:, :2], target=y)
    ds = D.open_dataset(p, x_key="images", y_key="target", val_split=0)
    assert (ds.x_key, ds.y_key, ds.n_features) == ("images", "target", 2)
    ds = D.open_dataset(p, x_key="images", val_split=0)   # y still detected
    assert (ds.x_key, ds.y_key) == ("images", "y")


def test_groups_with_keys_detected_inside(tmp_path):
    X, y = xy(60)
    p = write(tmp_path / "g.h5", **{"train/X": X[:40], "train/y": y[:40],
                                    "val/features": X[40:50], "val/labels": y[40:50],
                                    "test/data": X[50:], "test/label": y[50:]})
    ds = D.open_dataset(p)
    assert ds.val_source == "group"
    assert (ds.train.n, ds.val.n, ds.test.n) == (40, 10, 10)
    np.testing.assert_array_equal(ds.test.arrays()[0], X[50:])
    np.testing.assert_array_equal(D.load_split(p, "val").arrays()[1], y[40:50])
    allsrc = D.load_split(p, "all")
    np.testing.assert_array_equal(allsrc.arrays()[0], X)


def test_course_files(tmp_path):
    """The course's cat files: uint8 (m, 64, 64, 3) images, labels (1, m), list_classes bytes."""
    rng = np.random.default_rng(0)
    Xtr = rng.integers(0, 256, (20, 4, 4, 3), dtype=np.uint8)
    ytr = (np.arange(20) % 2).reshape(1, 20)
    Xte = rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
    yte = (np.arange(6) % 2).reshape(1, 6)
    names = np.array([b"non-cat", b"cat"])
    tr = write(tmp_path / "train_cat.h5", train_set_x=Xtr, train_set_y=ytr, list_classes=names)
    te = write(tmp_path / "test_cat.h5", test_set_x=Xte, test_set_y=yte, list_classes=names)
    ds = D.open_dataset(tr, val=te)
    assert ds.classes == ["non-cat", "cat"] and ds.n_classes == 2
    assert ds.n_features == 48 and ds.val_source == "file" and ds.test is None
    np.testing.assert_array_equal(ds.train.arrays()[0], Xtr.reshape(20, -1).astype(np.float32))
    np.testing.assert_array_equal(ds.val.arrays()[1], yte[0])
    t = D.load_split(te, "test")     # the test file alone: its pair is the test split
    assert t.n == 6 and t.classes == ["non-cat", "cat"]
    # a test file used for training: the data, not also a test split
    assert D.open_dataset(te, val_split=0).test is None
    # both pairs in one file: train_set_* is train, test_set_* is test; overrides find the twin
    both = write(tmp_path / "both.h5", train_set_x=Xtr, train_set_y=ytr, test_set_x=Xte,
                 test_set_y=yte)
    ds = D.open_dataset(both, val_split=0)
    assert (ds.train.n, ds.test.n, ds.x_key) == (20, 6, "train_set_x")
    assert D.load_split(both, "test", x_key="train_set_x", y_key="train_set_y").n == 6


# ------------------------------------------------------------------ labels
@pytest.mark.parametrize("shape", ["n", "n1", "1n", "onehot", "float", "bool"])
def test_label_shapes(tmp_path, shape):
    X, y = xy(30, classes=3)
    yy = {"n": y, "n1": y[:, None], "1n": y[None, :], "onehot": np.eye(3, dtype=np.float32)[y],
          "float": y.astype(np.float64), "bool": (y > 0)}[shape]
    p = write(tmp_path / "d.h5", X=X, y=yy)
    src = D.load_split(p, "all")
    expect = (y > 0).astype(np.int64) if shape == "bool" else y
    np.testing.assert_array_equal(src.labels, expect)
    assert src.labels.dtype == np.int64


def test_onehot_width_sets_n_classes(tmp_path):
    X, y = xy(30, classes=3)
    p = write(tmp_path / "d.h5", X=X, y=np.eye(5)[y])
    assert D.open_dataset(p).n_classes == 5


def test_x_any_dtype_and_extra_dims(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (12, 2, 3, 2), dtype=np.uint8)
    y = np.arange(12) % 2
    p = write(tmp_path / "d.h5", X=X, y=y)
    ds = D.open_dataset(p, val_split=0)
    Xr = ds.train.arrays()[0]
    assert Xr.dtype == np.float32 and Xr.shape == (12, 12) and ds.feature_shape == (2, 3, 2)
    np.testing.assert_array_equal(Xr, X.reshape(12, -1))
    xb, yb = next(ds.train.batches(5))
    assert xb.dtype == np.float32 and yb.dtype == np.int64 and xb.shape == (5, 12)
    p2 = write(tmp_path / "e.h5", X=np.arange(8, dtype=np.int16), y=np.arange(8) % 2)
    assert D.open_dataset(p2, val_split=0).n_features == 1        # (n,) X is one feature


@pytest.mark.parametrize("where", ["file", "y", "X", "list"])
def test_class_names(tmp_path, where):
    X, y = xy(12, classes=3)
    names = ["ant", "bee", "cat"]
    if where == "list":
        p = write(tmp_path / "d.h5", X=X, y=y, list_classes=np.array([n.encode() for n in names]))
    else:
        p = write(tmp_path / "d.h5", attrs={"classes": names} if where == "file" else None,
                  X=X, y=y)
        if where != "file":
            with h5py.File(p, "a") as f:
                f[where].attrs["classes"] = names
    ds = D.open_dataset(p)
    assert ds.classes == names and ds.n_classes == 3


def test_names_widen_n_classes_and_default_names(tmp_path):
    X, y = xy(12, classes=2)
    p = write(tmp_path / "d.h5", attrs={"classes": ["a", "b", "c", "d"]}, X=X, y=y)
    assert D.open_dataset(p).n_classes == 4
    p2 = write(tmp_path / "e.h5", X=X, y=y)
    assert D.open_dataset(p2).classes == ["0", "1"]


def test_n_classes_is_max_over_splits(tmp_path):
    X, y = xy(40, classes=3)
    yt = y.copy()
    yt[-1] = 6
    p = write(tmp_path / "d.h5", **{"train/X": X, "train/y": y, "test/X": X, "test/y": yt})
    ds = D.open_dataset(p, val_split=0)
    assert ds.n_classes == 7
    assert ds.train.class_counts(7).tolist() == [14, 13, 13, 0, 0, 0, 0]


# ------------------------------------------------------------------ errors, one line each
def _err(fn, *a, **kw) -> str:
    with pytest.raises(DataError) as e:
        fn(*a, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_error_missing_file(tmp_path):
    assert _err(D.open_dataset, str(tmp_path / "nope.h5")).startswith("data file not found")
    assert "bundled datasets: digits" in _err(D.resolve_data_path, "digitz")


def test_error_not_hdf5(tmp_path):
    p = tmp_path / "x.h5"
    p.write_text("hello")
    assert _err(D.open_dataset, str(p)).startswith("not an HDF5 file")
    q = tmp_path / "trunc.h5"
    X, y = xy(2000, 8)
    write(q, X=X, y=y)
    q.write_bytes(q.read_bytes()[:3000])
    assert "trunc.h5" in _err(D.open_dataset, str(q))


def test_error_missing_keys_lists_keys(tmp_path):
    X, y = xy()
    p = write(tmp_path / "d.h5", images=X, target=y)
    msg = _err(D.open_dataset, p)
    assert msg.startswith("no X/y keys found in d.h5") and "keys present: images, target" in msg
    msg = _err(D.open_dataset, p, x_key="pixels", y_key="target")
    assert msg == "key 'pixels' not found in d.h5; keys present: images, target"
    g = write(tmp_path / "g.h5", **{"train/X": X, "train/y": y, "test/X": X})
    assert "group 'test'" in _err(D.open_dataset, g)


def test_error_length_mismatch(tmp_path):
    X, y = xy(40)
    p = write(tmp_path / "d.h5", X=X, y=y[:39])
    assert _err(D.open_dataset, p) == "X has 40 samples but labels d.h5:y have 39"


def test_error_empty(tmp_path):
    p = write(tmp_path / "d.h5", X=np.zeros((0, 3), np.float32), y=np.zeros(0, np.int64))
    assert _err(D.open_dataset, p) == "empty dataset: d.h5:X has 0 samples"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_error_nonfinite_x(tmp_path, bad):
    X, y = xy(100, 4)
    X[57, 2] = bad
    p = write(tmp_path / "d.h5", X=X, y=y)
    assert _err(D.open_dataset, p) == "X has NaN or inf: d.h5:X row 57"     # in memory: at open
    ds = D.open_dataset(p, val_split=0, memory_budget=1500)                # streamed: when read
    assert not ds.train.in_memory
    assert _err(D.Standardizer.fit, ds.train) == "X has NaN or inf: d.h5:X row 57"
    assert _err(lambda: list(ds.train.batches(8))) == "X has NaN or inf: d.h5:X row 57"


def test_error_labels(tmp_path):
    X, y = xy(10)
    cases = [
        (y - 1, "labels d.h5:y must be >= 0: found -1 at row 0"),
        (y + 0.5, "labels d.h5:y must be integers: found 0.5 at row 0"),
        (np.where(y == 1, np.nan, y), "labels d.h5:y must be integers: found nan at row 1"),
        (np.ones((10, 3)), "labels d.h5:y shaped (10, 3) are not one-hot (each row one 1)"),
        (np.zeros((10, 2, 2)), "labels d.h5:y have shape (10, 2, 2); expected (n,), (n, 1), "
                               "(1, n) or one-hot (n, C)"),
        (np.array([b"a"] * 10), "labels d.h5:y must be numeric class ids, got dtype |S1"),
    ]
    for yy, msg in cases:
        p = write(tmp_path / "d.h5", X=X, y=yy)
        assert _err(D.open_dataset, p) == msg
    p = write(tmp_path / "d.h5", attrs={"classes": ["a", "b"]}, X=X, y=y)
    assert _err(D.open_dataset, p) == ("label 2 in d.h5:y (row 2) is out of range for 2 classes "
                                       "(the file names 2 classes)")
    src = D.load_split(write(tmp_path / "e.h5", X=X, y=y), "all")
    assert _err(src.class_counts, 2) == "label 2 in e.h5:all (row 2) is out of range for 2 classes"


def test_error_misc(tmp_path):
    X, y = xy(10)
    p = write(tmp_path / "d.h5", X=np.array([b"abc"] * 10), y=y)
    assert _err(D.open_dataset, p) == "X d.h5:X must be numeric, got dtype |S3"
    p = write(tmp_path / "d.h5", X=X, y=np.zeros(10))
    assert "single class" in _err(D.open_dataset, p)
    p = write(tmp_path / "d.h5", **{"train/X": X, "train/y": y, "test/X": X[:, :2],
                                    "test/y": y})
    assert _err(D.open_dataset, p) == "d.h5:test has 2 features but d.h5:train has 3"
    p = write(tmp_path / "d.h5", X=X, y=y)
    assert "no test split" in _err(D.load_split, p, "test")
    assert "no val split" in _err(D.load_split, p, "val", val_split=0)
    with pytest.raises(ConfigError):
        D.open_dataset(p, val_split=1.0)
    with pytest.raises(ConfigError):
        D.load_split(p, "everything")


def test_labels_optional_for_predict(tmp_path):
    X, _ = xy(10)
    p = write(tmp_path / "d.h5", X=X)
    src = D.load_split(p, "all", labels=False)
    assert src.n == 10 and not src.has_labels and (src.labels == -1).all()
    assert "no X/y keys" in _err(D.load_split, p, "all")


# ------------------------------------------------------------------ splits
def test_val_split_deterministic_and_disjoint(tmp_path):
    X, y = xy(500, 8)
    X[:, 0] = np.arange(500)                    # row ids
    p = write(tmp_path / "d.h5", X=X, y=y)
    a = D.open_dataset(p, val_split=0.2, seed=7)
    b = D.open_dataset(p, val_split=0.2, seed=7)
    c = D.open_dataset(p, val_split=0.2, seed=8)
    ids = lambda s: s.arrays()[0][:, 0].astype(int)   # noqa: E731
    assert a.val.n == 100 and a.train.n == 400 and a.val_source == "split"
    np.testing.assert_array_equal(ids(a.val), ids(b.val))
    assert not np.array_equal(ids(a.val), ids(c.val))
    assert sorted(np.concatenate([ids(a.train), ids(a.val)]).tolist()) == list(range(500))
    # load_split gives the same rows, whatever the budget
    for budget in (D.DEFAULT_MEMORY_BUDGET, 8000):
        np.testing.assert_array_equal(all_xy(D.load_split(p, "val", val_split=0.2, seed=7,
                                                          memory_budget=budget))[0][:, 0],
                                      ids(a.val))
        np.testing.assert_array_equal(all_xy(D.load_split(p, "train", val_split=0.2, seed=7,
                                                          memory_budget=budget))[0][:, 0],
                                      ids(a.train))
    assert D.open_dataset(p, val_split=0).val is None


def test_holdout_ranges_large_n_are_contiguous_blocks():
    tr, va = D.holdout_ranges(1_000_000, 0.1, 0)
    assert sum(b - a for a, b in va) == 100_000
    assert sum(b - a for a, b in tr) == 900_000
    assert len(va) <= 103 and min(b - a for a, b in va[:-1] + va[1:]) >= 1
    rows = np.zeros(1_000_000, bool)
    for a, b in va:
        rows[a:b] = True
    assert rows[:500_000].sum() > 30_000 and rows[500_000:].sum() > 30_000   # spread out


# ------------------------------------------------------------------ streaming
@pytest.fixture
def big(tmp_path):
    """2,000 x (4, 4) uint8, labels 0..4; row id recoverable from X[:, :2]."""
    rng = np.random.default_rng(1)
    X = rng.integers(0, 256, (2000, 4, 4), dtype=np.uint8)
    X[:, 0, 0] = np.arange(2000) % 256
    X[:, 0, 1] = np.arange(2000) // 256
    y = rng.integers(0, 5, 2000)
    return write(tmp_path / "big.h5", X=X, y=y), X.reshape(2000, -1).astype(np.float32), y


def _ids(Xb):
    return (Xb[:, 0] + 256 * Xb[:, 1]).astype(np.int64)


def test_streamed_equals_in_memory(big):
    p, X, y = big
    mem = D.open_dataset(p, val_split=0.1, seed=3)
    st = D.open_dataset(p, val_split=0.1, seed=3, memory_budget=30_000)
    assert mem.train.in_memory and not st.train.in_memory
    for a, b in ((mem.train, st.train), (mem.val, st.val)):
        Xa, ya = a.arrays()
        Xb, yb = all_xy(b, 13)
        np.testing.assert_array_equal(Xa, Xb)
        np.testing.assert_array_equal(ya, yb)
        ma, sa = a.feature_stats()
        mb, sb = b.feature_stats()
        np.testing.assert_allclose(ma, mb, rtol=1e-12)
        np.testing.assert_allclose(sa, sb, rtol=1e-12)


def test_streamed_shuffle_covers_every_sample_once_within_budget(big):
    p, X, y = big
    budget = 30_000
    src = D.load_split(p, "train", val_split=0.1, seed=3, memory_budget=budget)
    assert not src.in_memory
    reads = []
    src.read_hook = lambda k, a, b: reads.append((k, a, b))
    seen = []
    for epoch in range(2):
        rng = np.random.default_rng(epoch)
        ids = np.concatenate([_ids(xb) for xb, yb in src.batches(32, shuffle=True, rng=rng)])
        assert sorted(ids.tolist()) == sorted(_ids(all_xy(src)[0]).tolist())   # exactly once
        seen.append(ids)
    assert not np.array_equal(seen[0], seen[1])
    again = np.concatenate([_ids(xb) for xb, _ in
                            src.batches(32, shuffle=True, rng=np.random.default_rng(0))])
    np.testing.assert_array_equal(seen[0], again)          # deterministic given rng state
    # labels travel with their rows
    for xb, yb in src.batches(32, shuffle=True, rng=np.random.default_rng(4)):
        np.testing.assert_array_equal(yb, y[_ids(xb)])
    # the reader reads contiguous slabs only (slab order shuffled), and plans within the budget
    reads.clear()
    list(src.batches(32, shuffle=True, rng=np.random.default_rng(9)))
    slab = src.plan(32, True)[1]
    assert all(k == "X" and 0 < b - a <= slab for k, a, b in reads)
    assert len(reads) >= src.n // slab and reads != sorted(reads)
    assert src.peak_bytes <= budget and slab * 16 * 4 < budget // 4


def test_streaming_memory_measured(tmp_path):
    """tracemalloc: a pass allocates no more than the budget, plus fixed overheads (NumPy's ufunc
    buffers of 8192 elements, h5py's small objects), here under 96 KiB."""
    rng = np.random.default_rng(0)
    p = write(tmp_path / "m.h5", X=rng.integers(0, 256, (20_000, 32), dtype=np.uint8),
              y=rng.integers(0, 10, 20_000))           # X as float32: 2.56 MB
    budget = 800_000
    src = D.load_split(p, "all", memory_budget=budget)
    assert not src.in_memory
    list(src.batches(128))                         # warm caches
    peaks = []
    for run in ("shuffled", "in order", "feature_stats"):
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            if run == "feature_stats":
                src._stats = None
                src.feature_stats()
            else:
                for _ in src.batches(128, shuffle=run == "shuffled",
                                     rng=np.random.default_rng(0)):
                    pass
            peaks.append(tracemalloc.get_traced_memory()[1] - base)
        finally:
            tracemalloc.stop()
    assert src.peak_bytes <= budget
    assert max(peaks) <= budget - src.labels.nbytes + 96 * 1024, peaks


def test_drop_last_and_batch_sizes(big):
    p, X, y = big
    for budget in (D.DEFAULT_MEMORY_BUDGET, 30_000):
        src = D.load_split(p, "all", memory_budget=budget)
        for shuffle in (False, True):
            sizes = [len(yb) for _, yb in src.batches(60, shuffle=shuffle,
                                                        rng=np.random.default_rng(0))]
            assert sum(sizes) == 2000 and sizes[-1] == 20 and set(sizes[:-1]) == {60}
            sizes = [len(yb) for _, yb in src.batches(60, shuffle=shuffle, drop_last=True,
                                                        rng=np.random.default_rng(0))]
            assert set(sizes) == {60} and sum(sizes) == 1980


def test_budget_too_small_is_an_error(big):
    p, X, y = big
    src = D.load_split(p, "all", memory_budget=20_000)
    assert "too small" in _err(lambda: list(src.batches(2000)))


def test_batches_are_fresh_arrays(big):
    p, X, y = big
    src = D.load_split(p, "all")
    xb, _ = next(src.batches(10))
    xb[:] = -1
    np.testing.assert_array_equal(next(src.batches(10))[0], X[:10])


# ------------------------------------------------------------------ standardizer
def test_standardizer_matches_numpy(tmp_path):
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((300, 5)) * [1, 10, 1e-2, 0, 3] + [0, 1e4, 5, 7, -2]).astype(
        np.float32)
    y = np.arange(300) % 2
    p = write(tmp_path / "d.h5", X=X, y=y)
    for budget in (D.DEFAULT_MEMORY_BUDGET, 3000):
        src = D.load_split(p, "all", memory_budget=budget)
        st = D.Standardizer.fit(src)
        X64 = X.astype(np.float64)
        std = X64.std(axis=0)
        np.testing.assert_allclose(st.mean, X64.mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(st.std, np.where(std == 0, 1, std), rtol=1e-5)
        assert st.mean.dtype == st.std.dtype == np.float32 and st.std[3] == 1
        Z = st.apply(X)
        assert Z.dtype == np.float32
        np.testing.assert_allclose(Z, ((X - st.mean) / st.std), rtol=1e-6)
        out = X.copy()
        assert st.apply(out, out=out) is out
        np.testing.assert_array_equal(out, Z)
        assert "features" in _err(st.apply, X[:, :3])


# ------------------------------------------------------------------ bundled digits
def test_digits_bundled():
    p = D.resolve_data_path("digits")
    assert p.is_file() and p.name == "digits.h5"
    ds = D.open_dataset("digits")
    assert ds.n_features == 64 and ds.n_classes == 10 and ds.classes == [str(i) for i in range(10)]
    assert ds.train.n + ds.val.n + ds.test.n == 1797 and ds.val_source == "split"
    assert ds.test.n == 359
    with h5py.File(p, "r") as f:
        assert f["train/X"].dtype == np.uint8 and f.attrs["license"] == "CC BY 4.0"
        assert "Alpaydin" in f.attrs["authors"]
    Xt, yt = ds.test.arrays()
    assert Xt.max() <= 16 and Xt.min() >= 0
    counts = ds.test.class_counts(10)
    assert counts.min() >= 35 and counts.max() <= 37               # stratified


def test_validate(big):
    p, X, y = big
    ds = D.validate(p)
    assert ds.train.n == 2000


# ------------------------------------------------------------------ make / import / inspect
def test_make_synthetic(tmp_path):
    for kind in ("blobs", "spirals"):
        out = tmp_path / f"{kind}.h5"
        info = D.make_synthetic(kind, out, n=300, classes=3, features=4, seed=1)
        ds = D.open_dataset(str(out))
        assert (ds.n_features, ds.n_classes, ds.train.n + ds.val.n, ds.test.n) == (4, 3, 240, 60)
        assert info["splits"]["test"]["n"] == 60
        D.make_synthetic(kind, tmp_path / "b.h5", n=300, classes=3, features=4, seed=1,
                         force=True)
        with h5py.File(out) as f, h5py.File(tmp_path / "b.h5") as g:     # same seed, same data
            np.testing.assert_array_equal(f["train/X"][()], g["train/X"][()])
    assert "already exists" in _err(D.make_synthetic, "blobs", out)
    with pytest.raises(ConfigError):
        D.make_synthetic("moons", tmp_path / "m.h5")


def test_import_npz(tmp_path):
    X, y = xy(30)
    src = tmp_path / "a.npz"
    np.savez(src, x_train=X[:20], y_train=y[:20], x_test=X[20:], y_test=y[20:],
             classes=np.array(["a", "b", "c"]))
    D.import_npz(src, tmp_path / "a.h5")
    ds = D.open_dataset(str(tmp_path / "a.h5"))
    assert ds.classes == ["a", "b", "c"] and ds.test.n == 10
    flat = tmp_path / "f.npz"
    np.savez(flat, features=X, labels=np.eye(3)[y])
    D.import_npz(flat, tmp_path / "f.h5")
    np.testing.assert_array_equal(D.load_split(str(tmp_path / "f.h5"), "all").labels, y)
    pk = tmp_path / "p.npz"
    np.savez(pk, X=np.array([{"a": 1}] * 3, dtype=object), y=np.zeros(3))
    assert "pickled object array" in _err(D.import_npz, pk, tmp_path / "p.h5")
    assert not (tmp_path / "p.h5").exists()
    bad = tmp_path / "bad.npz"
    bad.write_text("nope")
    assert _err(D.import_npz, bad, tmp_path / "b.h5").startswith("cannot read")
    np.savez(tmp_path / "k.npz", a=X, b=y)
    assert "keys present: a, b" in _err(D.import_npz, tmp_path / "k.npz", tmp_path / "k.h5")
    X[0, 0] = np.nan
    np.savez(tmp_path / "n.npz", X=X, y=y)
    assert "NaN or inf" in _err(D.import_npz, tmp_path / "n.npz", tmp_path / "n.h5")


def test_import_csv(tmp_path):
    src = tmp_path / "iris.csv"
    src.write_text("a,b,species\n1,2,setosa\n3,4,virginica\n5,6.5,setosa\n")
    D.import_csv(src, tmp_path / "i.h5")
    s = D.load_split(str(tmp_path / "i.h5"), "all")
    assert s.classes == ["setosa", "virginica"]
    np.testing.assert_array_equal(s.labels, [0, 1, 0])
    np.testing.assert_array_equal(s.arrays()[0], [[1, 2], [3, 4], [5, 6.5]])
    nh = tmp_path / "nh.csv"
    nh.write_text("0,1,2\n1,3,4\n")
    D.import_csv(nh, tmp_path / "nh.h5", label_column=0)
    s = D.load_split(str(tmp_path / "nh.h5"), "all")
    np.testing.assert_array_equal(s.labels, [0, 1])
    np.testing.assert_array_equal(s.arrays()[0], [[1, 2], [3, 4]])
    bad = tmp_path / "bad.csv"
    bad.write_text("a,label\n1,0\nx,1\n")
    assert _err(D.import_csv, bad, tmp_path / "b.h5") == \
        f"{bad} line 3, column 'a': 'x' is not a number"
    bad.write_text("a,label\n1,0\n2\n")
    assert "line 3 has 1 columns, expected 2" in _err(D.import_csv, bad, tmp_path / "b.h5")
    bad.write_text("a,label\n1,0.5\n2,1\n")
    assert "must be integers" in _err(D.import_csv, bad, tmp_path / "b.h5")
    assert "not found" in _err(D.import_csv, src, tmp_path / "c.h5", label_column="kind")


def test_inspect_file(tmp_path):
    info = D.inspect_file("digits")
    assert info["splits"]["train"]["n"] == 1438 and info["n_classes"] == 10
    assert info["splits"]["test"]["class_counts"][0] == 36 and info["error"] is None
    X, y = xy()
    p = write(tmp_path / "d.h5", images=X, target=y)
    info = D.inspect_file(p)
    assert [d["key"] for d in info["datasets"]] == ["images", "target"]
    assert info["error"].startswith("no X/y keys")
    assert D.inspect_file(p, x_key="images", y_key="target")["splits"]["train"]["n"] == 40


def test_val_file_uses_its_val_group_else_all(tmp_path):
    X, y = xy(30)
    tr = write(tmp_path / "tr.h5", X=X, y=y)
    flat = write(tmp_path / "v.h5", X=X[:5], y=np.array([0, 1, 2, 3, 0]))
    ds = D.open_dataset(tr, val=flat)
    assert (ds.val_source, ds.val.n, ds.train.n, ds.n_classes) == ("file", 5, 30, 4)
    grouped = write(tmp_path / "g.h5", **{"train/X": X, "train/y": y, "val/X": X[:4],
                                          "val/y": y[:4]})
    assert D.open_dataset(tr, val=grouped).val.n == 4


# ------------------------------------------------------------------ the package and its files
#: every name ``gpunet.data`` offered as one module, and what imports it from there
OLD_ALL = ["DEFAULT_MEMORY_BUDGET", "ArraySource", "Dataset", "Standardizer", "InMemorySource",
           "StreamedSource", "resolve_data_path", "open_dataset", "load_split", "validate",
           "make_synthetic", "import_npz", "import_csv", "inspect_file", "BUNDLED_DATASETS"]
ALSO_IMPORTED = ["KEY_PAIRS", "SPLITS", "Segment", "holdout_ranges", "normalize_labels",
                 "DataError", "ConfigError"]


def test_package_exports_what_the_module_did():
    assert sorted(D.__all__) == sorted(OLD_ALL + ["allow_external_data"])  # issue 12
    for name in OLD_ALL + ALSO_IMPORTED:
        assert hasattr(D, name), name
    assert D.DEFAULT_MEMORY_BUDGET == 2 * 1024**3
    assert D.DataError is DataError and D.ConfigError is ConfigError
    # each name is the one object its module defines (no stale copy in the package)
    for mod, name in [("splits", "open_dataset"), ("splits", "load_split"),
                      ("sources", "StreamedSource"), ("sources", "DEFAULT_MEMORY_BUDGET"),
                      ("standardize", "Standardizer"), ("files", "resolve_data_path"),
                      ("holdout", "holdout_ranges"), ("inspect", "inspect_file")]:
        assert getattr(importlib.import_module(f"gpunet.data.{mod}"), name) is getattr(D, name)
    # the default budget is the one the readers use
    assert inspect.signature(D.open_dataset).parameters["memory_budget"].default == \
        D.DEFAULT_MEMORY_BUDGET
    assert inspect.signature(D.load_split).parameters["memory_budget"].default == \
        D.DEFAULT_MEMORY_BUDGET


def test_pyproject_ships_every_package_and_the_bundled_data():
    root = pathlib.Path(__file__).resolve().parent.parent
    cfg = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "gpunet").rglob(
        "__init__.py")}
    assert found <= listed, found - listed
    assert "gpunet.data" in listed
    (pattern,) = cfg["package-data"]["gpunet"]
    shipped = sorted(p.name for p in (root / "gpunet").glob(pattern))
    assert shipped == sorted(D.BUNDLED_DATASETS.values())
    p = D.resolve_data_path("digits")
    assert p == pathlib.Path(str(importlib.resources.files("gpunet") / "datasets" / "digits.h5"))


# ------------------------------------------------------------------ writing .h5 atomically
def _temps(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_writes_go_through_fileio(tmp_path, monkeypatch):
    import gpunet.data.writing as W
    import gpunet.fileio

    calls = []

    def spy(path, write):
        calls.append(path)
        return gpunet.fileio.atomic_write(path, write)

    monkeypatch.setattr(W, "atomic_write", spy)
    out = tmp_path / "sub" / "s.h5"                     # the folder is created
    info = D.make_synthetic("blobs", out, n=60)
    assert calls == [out.resolve()] and info["path"] == str(out.resolve())
    src = tmp_path / "a.csv"
    src.write_text("a,label\n1,0\n2,1\n")
    D.import_csv(src, tmp_path / "a.h5")
    X, y = xy(12)
    np.savez(tmp_path / "a.npz", X=X, y=y)
    D.import_npz(tmp_path / "a.npz", tmp_path / "b.h5")
    assert calls[1:] == [(tmp_path / "a.h5").resolve(), (tmp_path / "b.h5").resolve()]
    assert _temps(tmp_path) == [] and _temps(tmp_path / "sub") == []


def test_failed_write_leaves_the_target_and_no_temporary(tmp_path):
    from gpunet.data.writing import _write_atomic

    out = tmp_path / "d.h5"
    D.make_synthetic("blobs", out, n=60, seed=1)
    before = out.read_bytes()

    def half(f):
        f["X"] = np.zeros(3)
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        _write_atomic(out, half, force=True)
    assert out.read_bytes() == before and _temps(tmp_path) == []

    def fails(f):
        raise OSError(28, "No space left on device")

    with pytest.raises(DataError, match=r"^cannot write .*d\.h5: No space left on device$"):
        _write_atomic(out, fails, force=True)
    assert out.read_bytes() == before and _temps(tmp_path) == []
    assert "already exists (use --force" in _err(_write_atomic, out, fails, force=False)
    # a file where a folder should be: a DataError, not a traceback
    msg = _err(D.make_synthetic, "blobs", out / "x.h5", n=60)
    assert msg.startswith(f"cannot write {out / 'x.h5'}: ")
    assert out.read_bytes() == before
