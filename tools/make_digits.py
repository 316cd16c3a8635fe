"""Build gpunet/datasets/digits.h5 from scikit-learn's bundled copy of the UCI optical digits.

Run once, by hand: ``pip install scikit-learn && python tools/make_digits.py``. scikit-learn is
not a dependency of gpunet; the file it writes is committed and ships as package data.

The data: 1,797 8x8 images of handwritten digits (pixels are counts 0..16 of on-pixels in 4x4
blocks of a 32x32 bitmap), 10 classes; scikit-learn's copy is the test part of the UCI set.
Layout written: groups ``train`` and ``test``, each with ``X`` uint8 (n, 64) and ``y`` uint8
(n,), rows in the original order; a stratified 80/20 split (per class, a NumPy
``default_rng(0)`` permutation of that class's rows; ``round(0.2 * count)`` go to test);
attribute ``classes`` = "0".."9" and attribution attributes.
"""

from __future__ import annotations

import os
import pathlib
import sys

import h5py
import numpy as np

OUT = pathlib.Path(__file__).resolve().parent.parent / "gpunet" / "datasets" / "digits.h5"

ATTRS = {
    "title": "Optical Recognition of Handwritten Digits",
    "source": 'UCI Machine Learning Repository, "Optical Recognition of Handwritten Digits"',
    "authors": "E. Alpaydin, C. Kaynak",
    "year": "1998",
    "doi": "10.24432/C50P49",
    "url": "https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits",
    "license": "CC BY 4.0",
    "citation": "Alpaydin, E. & Kaynak, C. (1998). Optical Recognition of Handwritten Digits "
                "[Dataset]. UCI Machine Learning Repository. https://doi.org/10.24432/C50P49",
    "description": "1,797 8x8 images of handwritten digits, pixel values 0..16 (on-pixel counts "
                   "of 4x4 blocks of 32x32 bitmaps); scikit-learn's copy (the UCI test part)",
    "split": "stratified 80/20: per class, numpy default_rng(0) permutation, round(0.2*count) "
             "to test; rows in original order",
    "generator": "tools/make_digits.py (from sklearn.datasets.load_digits)",
}


def main(out: pathlib.Path = OUT) -> None:
    from sklearn.datasets import load_digits

    d = load_digits()
    X = np.asarray(d.data)
    y = np.asarray(d.target)
    assert X.shape == (1797, 64) and X.min() >= 0 and X.max() <= 16
    assert np.array_equal(X, np.round(X))
    X = X.astype(np.uint8)
    y = y.astype(np.uint8)
    rng = np.random.default_rng(0)
    test = np.zeros(len(y), dtype=bool)
    for k in range(10):
        idx = np.flatnonzero(y == k)
        test[rng.permutation(idx)[: int(round(0.2 * len(idx)))]] = True
    tmp = out.with_name(out.name + ".tmp")
    with h5py.File(tmp, "w", track_order=True) as f:
        for k, v in ATTRS.items():
            f.attrs[k] = v
        f.attrs["classes"] = [str(k) for k in range(10)]
        for name, mask in (("train", ~test), ("test", test)):
            g = f.create_group(name)
            kw = {"compression": "gzip", "compression_opts": 9, "shuffle": True,
                  "track_times": False}
            g.create_dataset("X", data=X[mask], **kw)
            g.create_dataset("y", data=y[mask], **kw)
    os.replace(tmp, out)
    print(f"wrote {out}: train {int((~test).sum())}, test {int(test.sum())}, "
          f"{out.stat().st_size} bytes")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
