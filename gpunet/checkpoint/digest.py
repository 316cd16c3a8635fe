"""The whole-checkpoint digest (docs/architecture.md, "Checkpoint format").

SHA-256 over, in order: the root attributes other than ``digest`` itself (``gpunet_format``,
``format_version``, ``gpunet_version``) as one line of canonical JSON (below) and ``\\n``; then
for every
dataset in the file, sorted by its path (``metadata``, ``model/...``, ``optimizer/...``,
``standardizer/...``), the header ``<len(path)>:<path> <dtype> <shape> <nbytes>\\n`` (dtype as
NumPy writes it, ``<f4`` or ``|u1``; shape as comma-separated integers) followed by the
array's bytes, little-endian, C order. The ``metadata`` dataset is the canonical JSON text of
every attribute (``json.dumps(..., sort_keys=True, separators=(",", ":"),
ensure_ascii=True)``), so the digest covers every array with its name, dtype and shape, and
every attribute. It is stored as the root attribute ``digest`` = ``"sha256:<64 hex digits>"``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

PREFIX = "sha256:"


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, ASCII only (NaN and infinities as Python's JSON writes them)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=True).encode("ascii")


def digest(attrs: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> str:
    """``"sha256:<hex>"`` of the root attributes ``attrs`` and ``{dataset path: array}`` (see
    the module docstring)."""
    h = hashlib.sha256(canonical_json(dict(attrs)) + b"\n")
    for path in sorted(arrays):
        a = np.ascontiguousarray(arrays[path])
        shape = ",".join(str(s) for s in a.shape)
        h.update(f"{len(path)}:{path} {a.dtype.str} {shape} {a.nbytes}\n".encode())
        h.update(memoryview(a).cast("B"))
    return PREFIX + h.hexdigest()
