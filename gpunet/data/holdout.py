"""Held-out validation: which rows of the training part ``val_split`` sets aside.

The ``n`` rows are cut into ``min(n, 1024)`` contiguous blocks of equal size (+-1 row); blocks
are drawn in a random order from ``numpy.random.default_rng([seed, 0x76616C])`` and taken until
``round(n * val_split)`` rows (at least 1) are held out (the last block drawn may be taken in
part, from its start). With ``n <= 1024`` this is a seeded random choice of rows; for larger
``n`` it is a seeded choice of short contiguous runs, so a streamed split is read with
contiguous slabs only. The choice depends on ``(n, val_split, seed)`` alone, never on the memory
budget, so training, eval and predict agree on the held-out rows whether the data was in memory
or streamed (docs/architecture.md, "Data files").
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, DataError

_VAL_BLOCKS = 1024
_VAL_TAG = 0x76616C                 # "val": keeps the split stream apart from other seeded streams


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted non-empty ranges, the ones that touch joined."""
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

    Seeded contiguous blocks, ``min(n, 1024)`` of them (see this module's docstring); depends only
    on ``(n, val_split, seed)``. Ranges are ``(start, stop)``, sorted, merged where they touch.
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
