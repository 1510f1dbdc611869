"""Finite-width measurement of a layer composition: the simulation its kernel state predicts.

For ``nets`` independently initialised copies of ``layer.module(d)`` on the
batch ``x`` (T, d), each with output ``H`` (T, n), this measures

* the batch Gram ``H Hᵀ/n`` (the per-unit NNGP averaged over the n units);
* the per-unit NTK averaged over units, ``(1/n) Σ_i J_i J_iᵀ`` (``J_i`` = T × P
  Jacobian of unit i w.r.t. all parameters), estimated without forming J: with
  a Rademacher vector ``r`` over units, ``g_t = Σ_i r_i ∂f_i(t)/∂θ`` (T VJPs)
  gives ``E_r[g gᵀ] = Σ_i J_i J_iᵀ`` (Hutchinson's identity, Hutchinson 1990):
  unbiased, with a probe noise from the cross-unit NTK that is ``O(1/√n)``
  relative, like the finite-width fluctuation itself,

and returns their mean over nets and its standard error. As ``n → ∞`` the
mean converges to the layer's ``kernel(...).nngp`` / ``.ntk``: a bias
``O(1/n)`` (the Gram's law-of-large-numbers correction) plus a net-to-net
spread ``O(1/√(n · nets))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.func import functional_call, vjp, vmap

from normfield.core.seeding import derive_seed
from normfield.core.validation import check_int
from normfield.infinite.layers import Layer
from normfield.infinite.state import input_state

__all__ = ["FiniteKernels", "finite_kernels"]


@dataclass(frozen=True)
class FiniteKernels:
    """Seed-averaged finite-width kernels.

    Attributes:
        nngp, nngp_se: (T, T) mean over nets of ``H Hᵀ/n`` and its standard error.
        ntk, ntk_se: (T, T) mean over nets of the per-unit NTK and its standard error.
        width: output width n.
        nets: number of networks.
    """

    nngp: np.ndarray
    nngp_se: np.ndarray
    ntk: np.ndarray
    ntk_se: np.ndarray
    width: int
    nets: int


def finite_kernels(layer: Layer, x: Any, *, nets: int = 16, seed: int = 0, probes: int = 2) -> FiniteKernels:
    """Measure NNGP and NTK of ``layer.module(d)`` over ``nets`` seeds (module docstring).

    Args:
        layer: the composition.
        x: (T, d) inputs.
        nets: number of independent networks (>= 2).
        seed: base seed; network ``k`` uses ``derive_seed(seed, k)``.
        probes: Rademacher probes of the NTK per network.
    """
    nets = check_int("nets", nets, minimum=2)
    probes = check_int("probes", probes, minimum=1)
    xs = input_state(x)  # validates x
    xt = torch.as_tensor(np.asarray(xs.components[xs.expr.key].samples.T), dtype=torch.float64)
    T, d = xt.shape
    grams, ntks = [], []
    for k in range(nets):
        gen = torch.Generator().manual_seed(derive_seed(seed, k) % 2**63)
        mod = layer.module(d, generator=gen, dtype=torch.float64)
        params = {n: p.detach() for n, p in mod.named_parameters()}
        H = mod(xt).detach()
        n = H.shape[1]
        grams.append((H @ H.T / n).numpy())
        if not params:
            ntks.append(np.zeros((T, T)))
            continue

        def f(p):
            return functional_call(mod, p, (xt,))

        _, pull = vjp(f, params)
        acc = np.zeros((T, T))
        for _ in range(probes):
            r = (torch.randint(0, 2, (n,), generator=gen) * 2 - 1).to(torch.float64)
            cot = torch.eye(T, dtype=torch.float64)[:, :, None] * r[None, None, :]  # (T, T, n)
            (g,) = vmap(pull)(cot)
            flat = torch.cat([v.reshape(T, -1) for v in g.values()], dim=1)
            acc += (flat @ flat.T).numpy()
        ntks.append(acc / probes / n)
    G = np.array(grams)
    N = np.array(ntks)
    se = lambda a: a.std(axis=0, ddof=1) / math.sqrt(a.shape[0])  # noqa: E731
    return FiniteKernels(G.mean(0), se(G), N.mean(0), se(N), int(H.shape[1]), nets)
