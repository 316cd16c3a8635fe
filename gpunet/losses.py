"""Softmax and the fused softmax cross-entropy (loss and gradient in one call)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import Array, Backend, get_backend


def backend_of(x: Any) -> Backend:
    """The backend an array lives on: NumPy arrays -> cpu, CuPy arrays -> gpu:<its device>."""
    if isinstance(x, np.ndarray) or not hasattr(x, "__cuda_array_interface__"):
        return get_backend("cpu")
    return get_backend(f"gpu:{x.device.id}")


def softmax(logits: Array, backend: Backend | str | None = None) -> Array:
    """Row softmax of (n, C) logits: ``exp(z - max z) / sum exp(z - max z)``."""
    be = get_backend(backend) if backend is not None else backend_of(logits)
    return be.softmax(be.asarray(logits))


def softmax_cross_entropy(
    logits: Array,
    labels: Array,
    class_weights: Array | None = None,
    backend: Backend | str | None = None,
) -> tuple[Array, Array]:
    """Mean cross-entropy of (n, C) logits against (n,) integer labels, and its gradient.

    ``loss = mean_i(logsumexp(z_i) - z_i[y_i])`` (weighted mean ``sum w[y_i] l_i / sum w[y_i]``
    with ``class_weights``, as PyTorch's ``cross_entropy``); ``dlogits = (softmax - onehot) / n``
    (rows scaled by ``w[y_i] / sum w[y_i]`` with weights). The row max is subtracted first,
    so logits of +-1e4 stay finite. Returns ``(loss, dlogits)``; ``float(loss)`` for a number.
    """
    be = get_backend(backend) if backend is not None else backend_of(logits)
    logits = be.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (n, classes), got shape {logits.shape}")
    n, c = logits.shape
    if n == 0:
        raise ValueError("softmax_cross_entropy of an empty batch")
    labels = be.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= c:
        raise ValueError(f"labels must be in [0, {c - 1}], got values in [{lo}, {hi}]")
    if class_weights is not None:
        class_weights = be.asarray(class_weights, dtype=logits.dtype)
        if class_weights.shape != (c,):
            raise ValueError(f"class_weights must have shape ({c},), got {class_weights.shape}")
    return be.softmax_cross_entropy(logits, labels, class_weights)
