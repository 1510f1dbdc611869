"""Batched Jacobian products used by the cost-saving paths of ``nf.analyze``, against independent routes.

References: the Jacobian by brute-force autograd (``torch.autograd.functional.jacobian``) and the dense
F* of the same model (exact to round-off); stochastic traces within 4 reported standard errors (seeded).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import normfield as nf
from normfield.analyze._functional import ModelFunction, select_parameters
from normfield.analyze.ntk import _operator

DT = torch.float64
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(seed=0, width=16, c=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, width), nn.BatchNorm1d(width), nn.Tanh(), nn.Linear(width, c)).to(DT)


def _x(T=30, seed=1):
    return torch.randn(T, 5, generator=torch.Generator().manual_seed(seed), dtype=DT)


def _brute_jacobian(model, x):
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone() for p in model.parameters())

    def f(*ps):
        return torch.func.functional_call(model, dict(zip(names, ps)), (x,)).reshape(-1)

    model.train()
    Js = torch.autograd.functional.jacobian(f, params)
    return torch.cat([j.reshape(j.shape[0], -1) for j in Js], dim=1)


def test_sq_norm_vjp_batched_matches_brute_force_and_the_single_product():
    model, x = _model(), _x()
    J = _brute_jacobian(model, x)
    fn = ModelFunction.build(model, x, select_parameters(model, None), dtype=DT, device=x.device)
    op, T, C = _operator(fn)
    U = torch.randn(7, op.n, generator=torch.Generator().manual_seed(2), dtype=DT)
    got = op.sq_norm_vjp_batched(U)
    ref = ((U @ J) ** 2).sum(1).numpy() / T
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=0)
    np.testing.assert_allclose(got, [op.sq_norm_vjp(u) for u in U], rtol=1e-12, atol=0)
    assert op.products == 7 + 7


@pytest.mark.parametrize("what_if", [(), "last-mean"])
def test_blocked_hutchinson_trace_against_the_dense_dual(what_if):
    model, x = _model(), _x(T=200)
    dense = nf.analyze(model, x, method="dense", k=2, layers="none", what_if=what_if or None, dense_max=10_000)
    h = nf.analyze(model, x, method="lanczos", k=2, layers="none", trace="hutchinson", seed=4, trace_rtol=0.02,
                   what_if=what_if or None)
    pairs = [(h.fisher, dense.fisher)] + ([(h.what_if["last-mean"], dense.what_if["last-mean"])] if what_if else [])
    for f, d in pairs:
        if f.trace_stderr == 0:  # the estimator would need more probes than T·C: exact instead
            assert f.trace == pytest.approx(d.trace, rel=1e-10)
        else:
            assert f.trace_stderr <= 0.02 * f.trace * (1 + 1e-12)
            assert abs(f.trace - d.trace) <= 4 * f.trace_stderr
        assert f.lambda_max == pytest.approx(d.lambda_max, rel=1e-8)
    if what_if and h.fisher.trace_stderr > 0:
        # the main estimate was brought to rtol of tr F̄*, so F̄*'s trace costs only the C mean-part VJPs
        w = h.what_if["last-mean"]
        assert "minus its mean part" in w.method
        assert w.trace_stderr == h.fisher.trace_stderr
