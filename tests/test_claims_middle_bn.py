"""Claim X-middle-bn: its two routes to the infinite-width λ_max against each other and against the
package's kernel run directly, its statistics on synthetic data, the claim at smoke scale, and its
quick-scale verdict (heavy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("normfield.infinite", reason="normfield.infinite is not importable")

from normfield.claims.middle_bn import (  # noqa: E402
    _fit_limit,
    _rate,
    _rate_ok,
    karakida_limit_inputs,
    limit_from_kernel,
    middle_bn_layers,
    middle_bn_symmetric,
)
from normfield.errors import NormfieldError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("T, depth", [(6, 3), (10, 3), (6, 2), (6, 4)])
def test_sphere_route_equals_exact_bn_kernel_for_relu(T, depth):
    """relu: the sphere route (1-D/2-D sphere quadrature, G*) and the package's exact train-mode BN
    kernel (Laplace reduction, nested exp-sinh rule) are independent; they agree within the sum of
    their stated errors, both ≲ 1e-6 relative."""
    M = 64
    k = limit_from_kernel("relu", 2.0, 0.0, T, [M], depth=depth)[0]
    s = middle_bn_symmetric("relu", 2.0, T, M, depth=depth)
    for key in ("lambda_over_M", "centred_over_M", "ones_over_M"):
        assert abs(k[key] - s[key]) <= k["error_over_M"] + s["error_over_M"] + 1e-13, key
    assert k["error_over_M"] < 1e-5 * k["lambda_over_M"] and s["error_over_M"] < 1e-8 * s["lambda_over_M"]


def test_ntk_is_affine_in_the_width():
    """ntk_M = M·A + 11ᵀ (module docstring): A read off the kernel at W = 48 predicts the kernel run
    directly at M = 16 (exact relu route; tolerance the two stated errors)."""
    from normfield.infinite import kernel

    T, M = 6, 16
    pred = limit_from_kernel("relu", 2.0, 0.1, T, [M, 48])[0]
    res = kernel(middle_bn_layers("relu", 2.0, 0.1, M), karakida_limit_inputs(T, M))
    lam = float(np.linalg.eigvalsh(res.ntk)[-1]) / (T * M)
    assert abs(lam - pred["lambda_over_M"]) <= pred["error_over_M"] * 3 + res.error / (T * M) + 1e-13
    # the readout bias is the only width-independent part: entries of ntk − 11ᵀ are ∝ M
    res2 = kernel(middle_bn_layers("relu", 2.0, 0.1, 2 * M), karakida_limit_inputs(T, 2 * M))
    np.testing.assert_allclose(res2.ntk - 1.0, 2 * (res.ntk - 1.0), rtol=1e-8, atol=0)


def test_sphere_route_is_above_the_readout_block():
    """ntk/M = G* + σ_w² E[JΘJᵀ]/M + 11ᵀ/M with E[JΘJᵀ] PSD (``M − zzᵀ/T`` is a projector), so the
    eigenvalue along 1 is at least the readout block's 1ᵀG*1/T², the Thm 3.4 bound (eq. (22))."""
    from normfield.gram.fixed_point import fixed_point

    T = 10
    fp = fixed_point("relu", T)
    s = middle_bn_symmetric("relu", 2.0, T, 1000)
    bound = ((T - 1) / T * fp.off_diagonal + fp.diagonal / T)
    assert s["ones_over_M"] >= bound and s["lambda_over_M"] >= s["ones_over_M"]


def test_refusals():
    with pytest.raises(NormfieldError, match="width"):
        karakida_limit_inputs(10, 8)
    with pytest.raises(NormfieldError, match="T must be >= 4"):
        middle_bn_symmetric("relu", 2.0, 3, 100)
    with pytest.raises(NormfieldError, match="depth"):
        middle_bn_symmetric("relu", 2.0, 6, 100, depth=1)
    x = karakida_limit_inputs(4, 9)
    np.testing.assert_allclose(x @ x.T / 9, np.eye(4), atol=1e-15)


def test_statistics_on_synthetic_errors():
    """The fit recovers L exactly from noiseless L + c M^{-1/2}; the bootstrap rate of a seeded synthetic
    error c M^{-1/2}(1 + 0.2 g), 8 seeds, is −1/2 within its stated SE rules (and a flat error fails)."""
    w = np.array([250.0, 500.0, 1000.0, 2000.0])
    L, se, c = _fit_limit(w, 0.2 + 3.0 * w ** -0.5, np.full(4, 1e-3), 0.5)
    assert abs(L - 0.2) < 1e-12 and abs(c - 3.0) < 1e-10 and se > 0
    rng = np.random.default_rng(7)
    groups = [(int(m), 4.0 * m ** -0.5 * (1 + 0.2 * rng.standard_normal(8))) for m in w]
    p, p_se = _rate(groups, "mean", seed=1)
    # SE of the slope: per-width relative SE 0.2/√8 ≈ 0.07 over a log-width spread Σ(x − x̄)² ≈ 1.2 gives
    # ≈ 0.065; 4 SE ≈ 0.26
    assert abs(p + 0.5) < 0.26 and 0.02 < p_se < 0.2 and _rate_ok(p, p_se)
    flat = [(int(m), 0.1 * (1 + 0.2 * rng.standard_normal(8))) for m in w]
    assert not _rate_ok(*_rate(flat, "mean", seed=2))


def test_claim_smoke_returns_numbers(claim_result, check_claim_reported):
    r = claim_result("X-middle-bn")
    check_claim_reported(r)
    assert r.paper == "normfield" and r.id == "X-middle-bn"
    for key in ("relu T=6", "tanh T=6"):
        m = r.measured[key]
        assert m["widths"] == [16, 32] and len(m["rel_error_seed_mean"]) == 2
        assert m["lambda_over_M_exact"] > 0 and math.isfinite(m["extrapolated_ratio"])
        # the routes agree within their stated errors at any scale (the exact statement of the claim)
        assert m["checks"]["kernel_matches_sphere_route"]
        assert m["top_eigenspace"].startswith("centred")
    assert r.measured["relu T=6"]["checks"]["exact_above_thm34_bound"]
    assert "thm34_bound_over_M" not in r.measured["tanh T=6"]
    assert set(r.data) == {"finite", "limit", "summary"}


def test_claim_is_listed_apart_from_the_papers():
    from normfield.claims.registry import all_claims

    specs = {s.id: s for s in all_claims()}
    assert specs["X-middle-bn"].paper == "normfield" and specs["X-middle-bn"].order > specs["K-thm3.4"].order


@pytest.mark.heavy
def test_claim_quick_scale_verdict_and_numbers(claim_result, expect_claim):
    """Quick scale decides the claim: PASS, every check; the exact values are deterministic (relu exact
    route, tanh seeded quasi-Monte Carlo), the finite-width numbers are seeded."""
    r = claim_result("X-middle-bn", scale="quick")
    expect_claim(r, "PASS")
    relu, tanh = r.measured["relu T=10"], r.measured["tanh T=10"]
    assert all(r.measured["checks"].values())
    assert relu["lambda_over_M_exact"] == pytest.approx(0.204866, abs=3e-6)
    assert tanh["sphere_lambda_over_M"] == pytest.approx(0.183410, abs=1e-6)
    # the seed-mean rates, with their bootstrap SEs (≈ 0.1): within 3 SE + 0.1 of −1/2
    for m in (relu, tanh):
        assert abs(m["rate_seed_mean_error"] + 0.5) <= 3 * m["rate_seed_mean_error_se"] + 0.1
