"""Batch norm followed by a polynomial (:mod:`normfield.infinite.bn_poly`) and the fused
quasi-Monte Carlo route with its control variate (:mod:`normfield.infinite.qmc_bn`).

``bn_polynomial`` is checked against Monte Carlo with autograd Jacobians (no formula shared),
against ``bn_exact`` for p(z) = z, and against identities of batch norm's output (Σ z_t = 0,
Σ z_t² = T at ε = 0). The fused route is checked to reproduce the general route's numbers on the
same draws, and its control variate to agree with the plain estimate within the stated errors
while lowering them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from normfield.core.activations import get_activation
from normfield.infinite.bn_exact import bn_homogeneous
from normfield.infinite.bn_poly import bn_polynomial, hermite_fit
from normfield.infinite.expect import polynomial_control
from normfield.infinite.ops import ActOp, BNTrainOp
from normfield.infinite.qmc import general_route
from normfield.infinite.qmc_bn import bn_activation_route
from normfield.infinite.state import Component, Leaf, OpNode, new_key

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _psd(T, rank, seed):
    X = np.random.default_rng(seed).standard_normal((T, rank))
    return X @ X.T / rank


def _mc(Sigma, Theta, coef, eps, n, seed):
    """Per-batch means of (K, mean, JΘJᵀ, Gγ, Gβ) over n draws, with autograd Jacobians."""
    T = Sigma.shape[0]
    c = torch.as_tensor(coef)
    d = torch.as_tensor(np.polynomial.polynomial.polyder(coef))
    poly = lambda z, k: sum(k[a] * z**a for a in range(len(k)))  # noqa: E731

    def f(h):
        y = h - h.mean()
        return poly(y / torch.sqrt((y * y).mean() + eps), c)

    g = torch.Generator().manual_seed(seed)
    L = torch.as_tensor(np.linalg.cholesky(Sigma + 1e-12 * np.eye(T)))
    Th = torch.as_tensor(Theta)
    out = []
    for _ in range(10):
        h = torch.randn(n // 10, T, generator=g, dtype=torch.float64) @ L.T
        y = h - h.mean(1, keepdim=True)
        z = y / torch.sqrt((y * y).mean(1, keepdim=True) + eps)
        x, dp = poly(z, c), poly(z, d)
        J = torch.func.vmap(torch.func.jacrev(f))(h)
        out.append([(x.T @ x / len(x)).numpy(), x.mean(0).numpy(),
                    torch.einsum("nik,kl,njl->ij", J, Th, J).numpy() / len(x),
                    ((dp * z).T @ (dp * z) / len(x)).numpy(), (dp.T @ dp / len(x)).numpy()])
    return [np.array([o[k] for o in out]) for k in range(5)]


def test_bn_polynomial_against_monte_carlo():
    T, eps = 5, 0.05
    Sigma, Theta = _psd(T, 4, 0) + 0.2 * np.eye(T), _psd(T, 6, 1)
    coef = np.array([0.1, 1.0, 0.2, -0.3, 0.05])
    ex = bn_polynomial(Sigma, Theta, coef, eps=eps)
    assert ex["error"] < 1e-8
    for key, batches in zip(["K", "mean", "JTJ", "Gg", "Gb"], _mc(Sigma, Theta, coef, eps, 200_000, seed=0)):
        m, se = batches.mean(0), batches.std(0, ddof=1) / np.sqrt(len(batches))
        # 5 standard errors per entry (t with 9 dof: ~1e-3 two-sided per entry, ~150 entries in all)
        assert np.all(np.abs(ex[key] - m) <= 5.5 * se + 1e-12), (key, np.max(np.abs(ex[key] - m) / se))


def test_bn_polynomial_identity_is_bn_exact():
    T = 7
    Sigma, Theta = _psd(T, 5, 2) + 0.1, _psd(T, 7, 3)
    ex = bn_polynomial(Sigma, Theta, [0.0, 1.0], eps=1e-3)
    K, JTJ, mean, err = bn_homogeneous(Sigma, Theta, "identity", eps=1e-3)
    assert np.abs(ex["K"] - K).max() <= 1e-9 * np.abs(K).max()
    assert np.abs(ex["JTJ"] - JTJ).max() <= 1e-9 * np.abs(JTJ).max()
    assert np.abs(ex["mean"]).max() < 1e-12 and np.abs(ex["Gb"] - 1.0).max() < 1e-12  # p' = 1
    np.testing.assert_allclose(ex["Gg"], K, rtol=1e-9, atol=1e-12)  # p'(z) z = z


def test_bn_polynomial_output_identities():
    # at ε = 0: Σ_t z_t = 0 (so K 1 = 0 for p = z) and Σ_t z_t² = T (so Σ mean = T, Σ K = T² for p = z²)
    T = 6
    Sigma = _psd(T, 5, 4)
    lin = bn_polynomial(Sigma, Sigma, [0.0, 1.0], eps=0.0, ntk=False)
    assert np.abs(lin["K"] @ np.ones(T)).max() < 1e-10
    sq = bn_polynomial(Sigma, Sigma, [0.0, 0.0, 1.0], eps=0.0, ntk=False)
    assert abs(sq["mean"].sum() - T) < 1e-9 and abs(sq["K"].sum() - T * T) < 1e-8
    const = bn_polynomial(Sigma, Sigma, [0.7], eps=0.0)
    assert np.allclose(const["K"], 0.49) and np.allclose(const["mean"], 0.7) and np.abs(const["JTJ"]).max() == 0


def test_hermite_fit():
    ident = hermite_fit(get_activation("identity"), 9)
    np.testing.assert_allclose(ident, np.eye(10)[1], atol=1e-12)  # a polynomial is its own projection
    th = hermite_fit(get_activation("tanh"), 13)
    assert np.abs(th[0::2]).max() < 1e-14 * np.abs(th).max() * 10  # odd σ, odd projection
    g = np.linspace(-2, 2, 41)
    assert np.abs(np.polynomial.polynomial.polyval(g, th) - np.tanh(g)).max() < 2e-2


def _component(T, R, seed):
    S, Th = _psd(T, 3, seed) + 0.2, _psd(T, T, seed + 1)
    k = new_key()
    return k, Component(k, "gauss", np.repeat(S[None], R, 0), np.repeat(Th[None], R, 0))


@pytest.mark.parametrize("affine", [False, True])
def test_fused_route_is_the_general_route(affine):
    # same seed, same draws: the Jacobian written out equals the jvp route to rounding
    k, comp = _component(T=6, R=4, seed=0)
    bn, act = BNTrainOp(1e-3, affine), get_activation("tanh")
    g = general_route(OpNode(ActOp(act), OpNode(bn, Leaf(k))), {k: comp}, seed=3, tol=1.0, start=1024, cap=1024)
    f = bn_activation_route(act, bn, comp, seed=3, tol=1.0, start=1024, cap=1024)
    for a, b in [(g.nngp, f.nngp), (g.mean, f.mean), (g.ntk, f.ntk)]:
        assert np.abs(a - b).max() <= 1e-12 * max(1.0, np.abs(a).max())


@pytest.mark.parametrize("act", ["tanh", "gelu"])
def test_control_variate_agrees_and_lowers_the_error(act):
    k, comp = _component(T=8, R=16, seed=5)
    bn, a = BNTrainOp(1e-5, True), get_activation(act)
    plain = bn_activation_route(a, bn, comp, seed=11, tol=1e-9, start=4096, cap=4096)
    ctl = bn_activation_route(a, bn, comp, seed=12, tol=1e-9, start=4096, cap=4096,
                              control=polynomial_control(a, bn, comp))

    def stated(m, key):
        v = getattr(m, key)
        return 3 * np.linalg.norm(v.std(0, ddof=1) / np.sqrt(v.shape[0])), v.mean(0)

    for key in ("nngp", "ntk"):
        (ep, vp), (ec, vc) = stated(plain, key), stated(ctl, key)
        # independent seeds: the difference is within the two stated errors (each 3 standard errors)
        assert np.linalg.norm(vp - vc) <= np.hypot(ep, ec), (key, np.linalg.norm(vp - vc), ep, ec)
        assert ec <= ep / 4, (key, ep, ec)  # measured 10-20x at degree 13; 4x leaves room for the seed
