"""gpunet behaves as PyTorch's BatchNorm1d, cross_entropy, Adam and RMSprop on the same inputs.

torch (CPU build) is in the dev extra; the comparisons run in float32 on both sides and agree to
float32 rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import host

import gpunet as gn
from gpunet.layers import BatchNorm

torch.set_num_threads(1)


def close(a, b, tol=2e-5):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.abs(a - b).max() <= tol * max(np.abs(b).max(), 1e-6), np.abs(a - b).max()


@pytest.mark.parametrize("relu", [False, True])
def test_batchnorm_matches_batchnorm1d(be, rng, relu):
    c, momentum = 19, 0.1
    ours = BatchNorm(c, momentum=momentum, eps=1e-5, backend=be)
    ref = torch.nn.BatchNorm1d(c, momentum=momentum, eps=1e-5)
    gamma = rng.uniform(0.5, 2, c).astype(np.float32)
    beta = rng.standard_normal(c).astype(np.float32)
    ours.params["gamma"][...] = be.asarray(gamma)
    ours.params["beta"][...] = be.asarray(beta)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(gamma))
        ref.bias.copy_(torch.from_numpy(beta))
    for step in range(4):  # several training steps: running statistics accumulate
        n = 5 + 3 * step
        x = (rng.standard_normal((n, c)) * 3 + 2).astype(np.float32)
        dy = rng.standard_normal((n, c)).astype(np.float32)
        xt = torch.from_numpy(x).requires_grad_(True)
        yt = ref(xt)
        if relu:
            yt = torch.relu(yt)
        yt.backward(torch.from_numpy(dy))
        y = ours.forward(be.asarray(x), training=True, relu=relu)
        close(host(be, y), yt.detach().numpy())
        dx = ours.backward(be.asarray(dy))
        close(host(be, dx), xt.grad.numpy(), tol=5e-5)
        close(host(be, ours.grads["gamma"]), ref.weight.grad.numpy())
        close(host(be, ours.grads["beta"]), ref.bias.grad.numpy())
        ref.weight.grad = ref.bias.grad = None
        close(host(be, ours.running_mean), ref.running_mean.numpy())
        close(host(be, ours.running_var), ref.running_var.numpy())
    ref.eval()
    x = rng.standard_normal((7, c)).astype(np.float32)
    close(host(be, ours.forward(be.asarray(x), training=False)),
          ref(torch.from_numpy(x)).detach().numpy())


@pytest.mark.parametrize("weighted", [False, True])
def test_softmax_cross_entropy_matches_torch(be, rng, weighted):
    n, c = 37, 11
    z = (rng.standard_normal((n, c)) * 5).astype(np.float32)
    z[0] = 1e4  # an all-equal, huge row
    z[1, 3] = -1e4
    y = rng.integers(0, c, n)
    w = rng.uniform(0.1, 3, c).astype(np.float32) if weighted else None
    zt = torch.from_numpy(z).requires_grad_(True)
    lt = torch.nn.functional.cross_entropy(
        zt, torch.from_numpy(y), weight=None if w is None else torch.from_numpy(w))
    lt.backward()
    loss, dz = gn.losses.softmax_cross_entropy(be.asarray(z), be.asarray(y), w, backend=be)
    assert abs(float(loss) - lt.item()) <= 2e-6 * abs(lt.item())
    close(host(be, dz), zt.grad.numpy())


class _Flat:
    """The minimum an optimizer needs: flat params/grads on a backend, a decay mask."""

    def __init__(self, be, w, mask):
        self.backend = be
        self.params = be.asarray(w.copy())
        self.grads = be.zeros(w.shape)
        self.decay_mask = be.asarray(mask)


def _run_against_torch(be, rng, make_ours, make_torch, decay):
    size = 333
    w0 = rng.standard_normal(size).astype(np.float32)
    mask = (rng.random(size) < 0.6).astype(np.float32)
    flat = _Flat(be, w0, mask)
    ours = make_ours(flat)
    # torch: decayed and non-decayed parameters as two groups, as a user would set them up
    pd = torch.nn.Parameter(torch.from_numpy(w0[mask == 1].copy()))
    pn = torch.nn.Parameter(torch.from_numpy(w0[mask == 0].copy()))
    opt = make_torch([{"params": [pd], "weight_decay": decay},
                      {"params": [pn], "weight_decay": 0.0}])
    for _ in range(6):
        g = rng.standard_normal(size).astype(np.float32)
        flat.grads[...] = be.asarray(g)
        ours.step()
        pd.grad = torch.from_numpy(g[mask == 1].copy())
        pn.grad = torch.from_numpy(g[mask == 0].copy())
        opt.step()
    got = host(be, flat.params)
    close(got[mask == 1], pd.detach().numpy(), tol=1e-5)
    close(got[mask == 0], pn.detach().numpy(), tol=1e-5)


@pytest.mark.parametrize("decay", [0.0, 0.05])
def test_adam_matches_torch(be, rng, decay):
    _run_against_torch(
        be, rng,
        lambda m: gn.optim.Adam(m, lr=3e-2, beta1=0.8, beta2=0.99, eps=1e-8,
                                weight_decay=decay),
        lambda groups: torch.optim.Adam(groups, lr=3e-2, betas=(0.8, 0.99), eps=1e-8),
        decay,
    )


@pytest.mark.parametrize("decay", [0.0, 0.05])
def test_rmsprop_matches_torch(be, rng, decay):
    _run_against_torch(
        be, rng,
        lambda m: gn.optim.RMSprop(m, lr=1e-2, beta2=0.9, eps=1e-8, weight_decay=decay),
        lambda groups: torch.optim.RMSprop(groups, lr=1e-2, alpha=0.9, eps=1e-8),
        decay,
    )


@pytest.mark.parametrize("decay", [0.0, 0.05])
def test_sgd_matches_torch(be, rng, decay):
    _run_against_torch(
        be, rng,
        lambda m: gn.optim.SGD(m, lr=0.1, weight_decay=decay),
        lambda groups: torch.optim.SGD(groups, lr=0.1),
        decay,
    )
