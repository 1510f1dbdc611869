"""Theory of Karakida et al. 2019: closed forms against the quadrature-based order parameters,
regimes and refusals, and the predictions against the exact dual of finite networks."""

import math

import numpy as np
import pytest
import torch

from normfield.errors import NormfieldError
from normfield.experiments.fisher import fisher_spectrum
from normfield.fisher.dual import fisher_dual
from normfield.fisher.networks import MLPConfig, init_mlp
from normfield.fisher.theory import (
    fisher_theory,
    kappas,
    layer_norm_order_parameters,
    theory_last_bn,
    theory_layer_norm,
    theory_mean_subtraction,
    theory_middle_bn,
    theory_no_norm,
)


def J(c):
    """Arc-cosine kernel: E[relu(u)relu(v)] = q J(c)/2 for unit-correlation c and variance q."""
    return (math.sqrt(1 - c * c) + (math.pi - math.acos(c)) * c) / math.pi


def Jd(c):
    """E[relu'(u) relu'(v)] for correlation c."""
    return (math.pi - math.acos(c)) / (2 * math.pi)


def test_relu_kappas_closed_form():
    # relu, (σ_w², σ_b²) = (2, 0), L = 3, α_l = 1 (Fig. 1): eqs. (5)–(7) in closed form give
    # q̂^l_t = 1, q̃^l_t = 1, q̂^1_st = 1/π, q̂^2_st = J(1/π), q̃^2_st = 2 Jd(1/π), q̃^1_st = q̃^2_st/2
    cfg = MLPConfig("relu", 2.0, 0.0, 3, 100, None, 1, 10)
    k = kappas(cfg)
    c = 1 / math.pi
    k2 = 0.5 * (2 * Jd(c) * (1 / math.pi) + J(c))
    assert k["kappa1"] == pytest.approx(1.5, rel=1e-12)
    assert k["kappa2"] == pytest.approx(k2, rel=1e-10)
    assert k["alpha"] == 2.0


def test_formulas_and_regimes():
    cfg = MLPConfig("relu", 2.0, 0.0, 3, 400, None, 2, 1)
    th = theory_no_norm(cfg)
    assert th.lambda_max == pytest.approx(th.alpha * th.kappa1 * 400)  # T = 1: ακ1M
    assert th.m_lambda == pytest.approx(th.kappa1 * 2 / 400)
    ms = theory_mean_subtraction(cfg.replace(samples=5))
    assert ms.lambda_max is not None and "fixed" in ms.regime
    assert ms.lambda_max == pytest.approx(2 * (1.5 - th.kappa2) * 400 / 5)
    big = theory_mean_subtraction(cfg.replace(samples=400))
    assert big.lambda_max_lower is not None and big.lambda_max_lower == pytest.approx(2 * (1.5 - th.kappa2))
    bn = theory_last_bn(cfg.replace(samples=400), [1.0, 1.0])
    assert bn.lambda_max_lower == pytest.approx(big.lambda_max_lower)  # σ_k = 1 reduces to Thm 3.3
    assert bn.m_lambda * 400 == pytest.approx(2 * (1.5 - th.kappa2))


def test_layer_norm_order_parameters_closed_form():
    # (S.74), (S.87) for relu (2, 0), L = 3: v^1 = 2, v^2 = v^3 = 1, c^1 = 0, c^2 = 2 q̂^1_st = 1/π;
    # q̂^1_st = 1/(2π), q̂^2_st = J(1/π)/2, q̃^2 = (1, 2 Jd(1/π)), q̃^1 = (1/2, q̃^2_st/4)
    cfg = MLPConfig("relu", 2.0, 0.0, 3, 10, None, 3, 4, "layer")
    lo = layer_norm_order_parameters(cfg)
    qt2 = 2 * Jd(1 / math.pi)
    k2 = 0.5 * (qt2 * 1 / (2 * math.pi) + J(1 / math.pi) / 2)
    assert lo["kappa1_prime"] == pytest.approx(0.75, rel=1e-12)
    assert lo["kappa2_prime"] == pytest.approx(k2, rel=1e-10)


@pytest.mark.parametrize(
    "cfg, call, needle",
    [
        (MLPConfig("relu", 2.0, 0.0, 3, 10, None, 2, 4, "layer"), lambda c: theory_layer_norm(c, (1, 1, 1)),
         "exactly zero"),
        (MLPConfig("tanh", 2.0, 0.0, 3, 10, None, 1, 4), theory_no_norm, "centered"),
        (MLPConfig("tanh", 2.0, 0.1, 3, 10, None, 1, 4, "middle-bn"), theory_middle_bn, "non-negative"),
        (MLPConfig("relu", 2.0, 0.1, 3, 10, None, 1, 4, "last-bn"), lambda c: fisher_theory(c), "sigma"),
        (MLPConfig("relu", 2.0, 0.1, 3, 10, None, 1, 2, "last-bn"), lambda c: theory_last_bn(c, [1.0]),
         "vanishes"),
        (MLPConfig("relu", 2.0, 0.1, 3, 10, None, 2, 4, "last-bn"), lambda c: theory_last_bn(c, [1.0]),
         "sigma"),
    ],
)
def test_outside_the_regime_is_refused(cfg, call, needle):
    with pytest.raises(NormfieldError, match=needle):
        call(cfg)


def test_thm34_bound_from_bn_order_parameters():
    # One batch-normalized hidden layer (L = 2) fed with exactly orthogonal inputs (XXᵀ/M_0 = I,
    # i.e. q̂^0_st = 0 as in the theory): each unit's normalized pre-activation is then exactly
    # uniform on the BN sphere and independent across units.  The last-layer part of the dual
    # gives λ_max >= νᵀF*_Lν = M_1 mean_i g_i + 1, g_i = (Σ_t φ(ū_i(t)))²/T², whose expectation is
    # M_1((T−1)/T q̂_st,BN + q̂_t,BN/T) (S.67).  Tolerance: 5 standard errors of the unit average.
    T, M = 6, 3000
    cfg = MLPConfig("relu", 2.0, 0.3, 2, M, (0.01, 1.0), 1, T, "middle-bn")
    g = torch.Generator().manual_seed(0)
    params = init_mlp(cfg, g)
    Q, _ = torch.linalg.qr(torch.randn(cfg.input_dim, T, generator=g, dtype=torch.float64))
    X = Q.T * math.sqrt(cfg.input_dim)
    r = fisher_dual(params, X, cfg)
    W, b = params[0]
    u = X @ W.T + b
    ub = (u - u.mean(0)) / (u - u.mean(0)).pow(2).mean(0).sqrt()
    gi = (torch.relu(ub).sum(0) / T) ** 2
    nu_F_nu = M * gi.mean().item() + 1.0
    assert r.lambda_max >= nu_F_nu * (1 - 1e-12)
    th = theory_middle_bn(cfg)
    se = gi.std().item() / math.sqrt(M)
    assert abs(gi.mean().item() - th.lambda_max_lower / M) < 5 * se


def test_thm41_mean_eigenvalue_matches_measurement():
    # m_λ ∼ (C−2) η1 κ'1/M with η1 measured.  Over n seeds: 4 standard errors of the mean
    # (measured spread) + the O(1/M) terms dropped in (S.84)/(S.85), taken as 5/M relative.
    cfg = MLPConfig("tanh", 3.0, 0.64, 3, 150, None, 4, 6, "layer")
    df = fisher_spectrum(cfg, seeds=4, seed=1)
    ratios = []
    for _, row in df.iterrows():
        th = theory_layer_norm(cfg, {k: row[k] for k in ("eta1", "eta2", "eta3")})
        ratios.append(row["m_lambda"] / th.m_lambda)
        assert th.lambda_max_lower > 0
    x = np.array(ratios)
    tol = 4 * x.std(ddof=1) / math.sqrt(len(x)) + 5 / cfg.width
    assert abs(x.mean() - 1) < tol, (x, tol)


def test_thm33_fixed_T_mean_eigenvalue():
    # Thm 3.3 (16): m_λ ∼ (1 − 1/T)(κ1 − κ2)C/M; seeds and tolerance as above.
    cfg = MLPConfig("relu", 2.0, 0.0, 3, 300, None, 1, 4, "last-mean")
    th = theory_mean_subtraction(cfg)
    df = fisher_spectrum(cfg, seeds=6, seed=2)
    x = df["m_lambda"].to_numpy() / th.m_lambda
    tol = 4 * x.std(ddof=1) / math.sqrt(len(x)) + 3 / cfg.width
    assert abs(x.mean() - 1) < tol, (x, tol)
