"""The finite-width measurement against the explicit Jacobian.

``finite_kernels`` estimates the per-unit NTK ``(1/n) Σ_i J_i J_iᵀ`` with Rademacher
probes over units: ``g = Σ_i r_i J_i``, ``E_r[g gᵀ] = Σ_i J_i J_iᵀ``. The error of
one probe is ``Σ_{i≠j} r_i r_j J_i J_jᵀ``, of variance ``Σ_{i<j} (B_ij)²`` per entry
with ``B_ij = J_i J_jᵀ + J_j J_iᵀ`` (the products ``r_i r_j`` of distinct pairs are
uncorrelated, variance 1); the test's tolerance is 4 standard deviations of the
mean over probes and nets, computed from the explicit Jacobians.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import functional_call, jacrev

from normfield.core.seeding import derive_seed
from normfield.infinite import Activation, BatchNorm, Dense, Serial, finite_kernels


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one thread


def test_finite_kernels_against_explicit_jacobian():
    x = np.random.default_rng(0).standard_normal((3, 4))
    net = Serial(Dense(5), BatchNorm(), Activation("tanh"), Dense(3))
    nets, probes = 2, 50
    fk = finite_kernels(net, x, nets=nets, seed=7, probes=probes)
    xt = torch.as_tensor(x)
    exact, var = [], []
    grams = []
    for k in range(nets):
        gen = torch.Generator().manual_seed(derive_seed(7, k) % 2**63)
        mod = net.module(4, generator=gen)
        params = {n: p.detach() for n, p in mod.named_parameters()}
        H = mod(xt).detach()
        grams.append((H @ H.T / 3).numpy())
        jac = jacrev(lambda p: functional_call(mod, p, (xt,)))(params)
        J = torch.cat([v.reshape(3, 3, -1) for v in jac.values()], dim=2).numpy()  # (T, n, P)
        Ji = np.transpose(J, (1, 0, 2))  # (n, T, P)
        exact.append(np.einsum("itp,isp->ts", Ji, Ji) / 3)
        v = np.zeros((3, 3))
        for i in range(3):
            for j in range(i + 1, 3):
                B = Ji[i] @ Ji[j].T + Ji[j] @ Ji[i].T
                v += (B / 3) ** 2
        var.append(v / probes)
    np.testing.assert_allclose(fk.nngp, np.mean(grams, axis=0), rtol=1e-12)
    sd = np.sqrt(np.sum(var, axis=0)) / nets
    assert np.all(np.abs(fk.ntk - np.mean(exact, axis=0)) <= 4 * sd + 1e-12), (fk.ntk, np.mean(exact, axis=0), sd)
    assert np.abs(sd).max() > 0  # the probes do carry noise here: the check is not vacuous
