"""The float64 references every backend test compares with: the textbook formulas of
gpunet/backend/base.py (docs/architecture.md, "Conventions"), evaluated in float64 from the
same float32 inputs, and the error measures the tests use.

One module for all the tests (``test_backend``, ``test_numpy_fastpath``,
``test_kernels_emulated``, ``test_cupy_backend``), written independently of gpunet's code.
"""

from __future__ import annotations

import numpy as np

TOL = 1e-5


def relerr(got, want) -> float:
    """max |got - want| / max |want| (max-norm relative error; 0 when both are all zero)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    diff = float(np.max(np.abs(got - want))) if want.size else 0.0
    if not np.all(np.isfinite(got)):
        return float("inf")
    return diff / scale if scale > 0 else diff


def bn_train(x, gamma, beta, rm, rv, momentum, eps, relu=False):
    """``(y, mean, invstd, new_running_mean, new_running_var)`` by a float64 two-pass (eps and
    momentum rounded to float32 first, as the kernels receive them)."""
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    mean = x.mean(axis=0)
    var = ((x - mean) ** 2).mean(axis=0)
    invstd = 1.0 / np.sqrt(var + np.float64(np.float32(eps)))
    y = (x - mean) * invstd * np.float64(gamma) + np.float64(beta)
    if relu:
        y = np.maximum(y, 0)
    m = float(np.float32(momentum))
    rm2 = (1 - m) * np.float64(rm) + m * mean
    rv2 = (1 - m) * np.float64(rv) + m * var * n / (n - 1)
    return y, mean, invstd, rm2, rv2


def bn_infer(x, gamma, beta, rm, rv, eps, relu):
    x = np.asarray(x, np.float64)
    scale = np.float64(gamma) / np.sqrt(np.float64(rv) + np.float64(np.float32(eps)))
    y = (x - np.float64(rm)) * scale + np.float64(beta)
    return np.maximum(y, 0) if relu else y


def bn_backward(dy, x, gamma, mean, invstd, y=None):
    """``(dx, dgamma, dbeta)`` given the forward's ``mean`` / ``invstd`` (the exact float64
    ones from ``bn_train``, or an implementation's saved ones), with the gradient masked by
    ``y > 0`` when ``y`` (a fused-ReLU output) is given."""
    dy, x = np.asarray(dy, np.float64), np.asarray(x, np.float64)
    mean, invstd, gamma = (np.asarray(a, np.float64) for a in (mean, invstd, gamma))
    n = x.shape[0]
    g = dy * (np.asarray(y) > 0) if y is not None else dy
    xhat = (x - mean) * invstd
    dbeta = g.sum(axis=0)
    dgamma = (g * xhat).sum(axis=0)
    dx = gamma * invstd / n * (n * g - dbeta - xhat * dgamma)
    return dx, dgamma, dbeta


def softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def softmax_ce(z, labels, weights=None):
    """``(loss, dlogits)``."""
    z = np.asarray(z, np.float64)
    n = z.shape[0]
    rows = np.arange(n)
    zs = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(zs).sum(axis=1))
    nll = lse - zs[rows, labels]
    p = softmax(z)
    p[rows, labels] -= 1
    if weights is None:
        return nll.mean(), p / n
    w = np.asarray(weights, np.float64)[labels]
    total = w.sum()
    return (w * nll).sum() / total, p * (w / total)[:, None]


def _decayed(w, g, decay, mask):
    if not decay:
        return g
    if mask is None:
        return g + decay * w
    return g + decay * np.asarray(mask, np.float64) * w


def sgd(w, g, lr, decay=0.0, mask=None):
    w, g = np.float64(w), np.float64(g)
    return w - lr * _decayed(w, g, decay, mask)


def momentum(w, g, v, lr, beta, decay=0.0, mask=None):
    w, g, v = np.float64(w), np.float64(g), np.float64(v)
    g = _decayed(w, g, decay, mask)
    v = beta * v + (1 - beta) * g
    return w - lr * v, v


def rmsprop(w, g, s, lr, beta2, eps, decay=0.0, mask=None):
    w, g, s = np.float64(w), np.float64(g), np.float64(s)
    g = _decayed(w, g, decay, mask)
    s = beta2 * s + (1 - beta2) * g * g
    return w - lr * g / (np.sqrt(s) + eps), s


def adam(w, g, m, v, lr, beta1, beta2, eps, step, decay=0.0, mask=None):
    w, g, m, v = np.float64(w), np.float64(g), np.float64(m), np.float64(v)
    g = _decayed(w, g, decay, mask)
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    mh = m / (1 - beta1**step)
    vh = v / (1 - beta2**step)
    return w - lr * mh / (np.sqrt(vh) + eps), m, v


def bn_backward_scales(dy, x, gamma, mean, invstd, y=None):
    """Magnitudes of the terms summed into ``(dx, dgamma, dbeta)``, elementwise / per column.

    The backward cancels by design (for n = 2, dx is ~0 exactly), so its float32 error is
    measured against the size of what was summed, not against the result:
    ``|gamma invstd / n| (n |g| + |dbeta| + |x_hat| |dgamma|)``, ``sum |g x_hat|``, ``sum |g|``.
    """
    dy, x = np.asarray(dy, np.float64), np.asarray(x, np.float64)
    mean, invstd, gamma = (np.asarray(a, np.float64) for a in (mean, invstd, gamma))
    n = x.shape[0]
    g = np.abs(dy * (np.asarray(y) > 0) if y is not None else dy)
    xhat = np.abs((x - mean) * invstd)
    sdb = g.sum(axis=0)
    sdg = (g * xhat).sum(axis=0)
    _, dgamma, dbeta = bn_backward(dy, x, gamma, mean, invstd, y)
    sdx = np.abs(gamma * invstd / n) * (n * g + np.abs(dbeta) + xhat * np.abs(dgamma))
    return sdx, sdg, sdb


def scaled_err(got, want, scale) -> float:
    """max |got - want| / max scale."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if not np.all(np.isfinite(got)):
        return float("inf")
    s = float(np.max(scale))
    d = float(np.max(np.abs(got - want)))
    return d / s if s > 0 else d


def ulp_err(got, want, scale) -> float:
    """max over elements of ``|got - want| / scale`` (``scale`` per element, e.g. the
    magnitudes of ``optimizer_step``)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float((np.abs(got - want) / np.maximum(scale, 1e-30)).max())


# ------------------------------------------------------------------ optimizers, step by step
#: the hyperparameters ``optimizer_step`` uses
OPT_HYPER = {"momentum": {"beta": 0.9}, "rmsprop": {"beta2": 0.99, "eps": 1e-8},
             "adam": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}}


def optimizer_step(opt, w, g, s1, s2, lr, step, decay, mask, scales=None):
    """One step of ``opt`` (``OPT_HYPER``) on float64 ``(w, s1, s2)`` (the states an update
    does not use pass through), and, per element, the magnitude each result is summed from:
    the same formulas with every term made positive (``scales``: the previous step's, or None
    on the first). A float32 result can't be closer to the truth than a few ulps of that
    magnitude, whatever cancellation leaves of the result itself, so that is what errors are
    measured against (``ulp_err``). Returns ``((w, s1, s2), (|w|, |s1|, |s2|))``."""
    w, g, s1, s2 = (np.asarray(a, np.float64) for a in (w, g, s1, s2))
    aw, as1, as2 = (np.abs(a) for a in (w, s1, s2)) if scales is None else scales
    ag = _decayed(aw, np.abs(g), decay, mask)
    if opt == "sgd":
        w, aw = sgd(w, g, lr, decay, mask), aw + lr * ag
    elif opt == "momentum":
        beta = OPT_HYPER["momentum"]["beta"]
        w, s1 = momentum(w, g, s1, lr, beta, decay, mask)
        as1 = beta * as1 + (1 - beta) * ag
        aw = aw + lr * as1
    elif opt == "rmsprop":
        beta2, eps = OPT_HYPER["rmsprop"]["beta2"], OPT_HYPER["rmsprop"]["eps"]
        w, s1 = rmsprop(w, g, s1, lr, beta2, eps, decay, mask)
        as1 = beta2 * as1 + (1 - beta2) * ag * ag
        aw = aw + lr * ag / (np.sqrt(s1) + eps)
    else:
        h = OPT_HYPER["adam"]
        b1, b2, eps = h["beta1"], h["beta2"], h["eps"]
        w, s1, s2 = adam(w, g, s1, s2, lr, b1, b2, eps, step, decay, mask)
        as1 = b1 * as1 + (1 - b1) * ag
        as2 = b2 * as2 + (1 - b2) * ag * ag
        aw = aw + lr * (as1 / (1 - b1**step)) / (np.sqrt(s2 / (1 - b2**step)) + eps)
    return (w, s1, s2), (aw, as1, as2)
