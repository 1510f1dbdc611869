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


def _outliers_along_the_means(T=40, C=4, seed=0):
    """A Fisher-like dual: a Wishart bulk plus C outliers along u_k = (1_T ⊗ e_k)/√T."""
    n = T * C
    X = np.random.default_rng(seed).standard_normal((n, 3 * n))
    U = np.zeros((C, T, C))
    U[np.arange(C), :, np.arange(C)] = 1 / np.sqrt(T)
    U = U.reshape(C, n).T
    F = X @ X.T / (3 * n) + U @ np.diag(np.linspace(40, 37, C)) @ U.T
    return 0.5 * (F + F.T), U


def test_projected_ritz_is_rayleigh_ritz_of_the_centred_dual():
    """Ritz pairs of Π F* Π from a finished run on F*, by the Lanczos relation and UᵀF*U only, against
    Π F* Π applied explicitly: orthonormal, in the range of Π, diagonalising it, below its λ_max."""
    from normfield.analyze.ntk import projected_ritz
    from normfield.core import krylov

    T, C = 40, 4
    F, U = _outliers_along_the_means(T, C)
    P = np.eye(T * C) - U @ U.T
    Fb = P @ F @ P
    lz = krylov.lanczos(lambda v: F @ v, T * C, 3, tol=1e-4, seed=1)
    th, Y = projected_ritz(lz, U.T @ F @ U, T, C)
    assert 0 < len(th) <= len(lz.alpha) and np.all(np.diff(th) <= 0)
    assert np.allclose(Y.T @ Y, np.eye(len(th)), atol=1e-10)
    assert np.abs(U.T @ Y).max() <= 1e-12
    assert np.allclose(Y.T @ Fb @ Y, np.diag(th), atol=1e-10 * th[0])
    assert th[0] <= np.linalg.eigvalsh(Fb)[-1] * (1 + 1e-12)


def test_warm_started_variant_reaches_the_dense_lambda_max():
    """Lanczos on Π F* Π from the warm start converges to the dense λ_max (residual rule, 1e-8)."""
    from normfield.analyze.ntk import warm_start
    from normfield.core import krylov

    T, C = 40, 4
    F, U = _outliers_along_the_means(T, C, seed=2)
    P = np.eye(T * C) - U @ U.T
    Fb = P @ F @ P
    lz = krylov.lanczos(lambda v: F @ v, T * C, 3, tol=1e-4, seed=3)
    v0 = warm_start(lz, U.T @ F @ U, T, C, 2, seed=4)
    assert np.abs(U.T @ v0).max() <= 1e-12
    res = krylov.lanczos(lambda v: Fb @ v, T * C, 2, tol=1e-8, v0=v0)
    w = np.linalg.eigvalsh(Fb)[::-1]
    assert res.converged
    assert np.all(np.abs(res.eigenvalues - w[:2]) <= res.errors + 1e-12 * w[0])
