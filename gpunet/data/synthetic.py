"""Synthetic classification sets (``gpunet data make``): blobs and spirals, seeded.

The file has groups ``train`` and ``test`` (a stratified split), X float32 ``(n, features)``,
y int64 class ids, and the attributes ``generator``, ``kind``, ``seed``, ``noise`` and
``classes`` (``"0"``, ``"1"``, ...) (docs/architecture.md, "Data files"). The same arguments give
the same file.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import ConfigError
from .writing import _write_file


def _check_args(kind: str, n: int, classes: int, features: int, noise: float | None,
                test_fraction: float) -> float:
    """ConfigError for a bad argument; returns the noise (its default filled in)."""
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
    if not 0 <= noise <= 1e6:
        raise ConfigError(f"noise must be in 0..1e6, got {noise}")
    if n > 2**40 or features > 2**31 - 1:
        raise ConfigError(f"n (at most 2**40) or features (at most 2**31 - 1) too large: "
                          f"{n}, {features}")
    return noise


def _blobs(rng: np.random.Generator, counts: list[int], features: int,
           noise: float) -> list[np.ndarray]:
    """Per class: ``counts[k]`` points, Gaussian of std ``noise`` around a center in
    [-10, 10]^features."""
    centers = rng.uniform(-10, 10, size=(len(counts), features))
    return [centers[k] + noise * rng.standard_normal((m, features)) for k, m in enumerate(counts)]


def _spirals(rng: np.random.Generator, counts: list[int], features: int,
             noise: float) -> list[np.ndarray]:
    """Per class: one arm of radius 0..1 turning 4 radians, angle jitter of std ``noise``; with
    ``features > 2`` embedded by a random orthonormal map plus noise of std ``noise / 10``."""
    classes = len(counts)
    q = np.linalg.qr(rng.standard_normal((features, 2)))[0].T  # (2, features) orthonormal
    out = []
    for k, m in enumerate(counts):
        r = np.linspace(0.0, 1.0, m)
        t = 2 * np.pi * k / classes + 4 * r + noise * rng.standard_normal(m)
        pts = np.stack([r * np.sin(t), r * np.cos(t)], axis=1)
        out.append(pts if features == 2 else pts @ q + (noise / 10) * rng.standard_normal(
            (m, features)))
    return out


def _stratified(rng: np.random.Generator, X: np.ndarray, y: np.ndarray, classes: int,
                test_fraction: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train", "test"}``: per class ``max(1, round(count * test_fraction))`` rows to test,
    each split in a random order."""
    test_mask = np.zeros(len(y), dtype=bool)
    for k in range(classes):
        idx = np.flatnonzero(y == k)
        m = max(1, int(round(len(idx) * test_fraction)))
        test_mask[rng.permutation(idx)[:m]] = True
    perm_tr = rng.permutation(np.flatnonzero(~test_mask))
    perm_te = rng.permutation(np.flatnonzero(test_mask))
    return {"train": (X[perm_tr], y[perm_tr]), "test": (X[perm_te], y[perm_te])}


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
    noise = _check_args(kind, n, classes, features, noise, test_fraction)
    if not 0 <= seed <= 2**63 - 1:
        raise ConfigError(f"seed must be in 0..2**63 - 1, got {seed}")
    rng = np.random.default_rng(seed)
    counts = [n // classes + (1 if k < n % classes else 0) for k in range(classes)]
    Xs = (_blobs if kind == "blobs" else _spirals)(rng, counts, features, noise)
    X = np.concatenate(Xs).astype(np.float32)
    y = np.concatenate([np.full(m, k) for k, m in enumerate(counts)]).astype(np.int64)
    splits = _stratified(rng, X, y, classes, test_fraction)
    attrs = {"generator": f"gpunet data make --kind {kind}", "kind": kind, "seed": int(seed),
             "noise": noise, "classes": [str(k) for k in range(classes)]}
    return _write_file(out, splits, attrs, grouped=True, force=force, classes=attrs["classes"])
