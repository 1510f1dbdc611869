"""Tests of normfield.gram.spectra: Marchenko–Pastur law, KS distance, outliers, spectral distance."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from normfield.errors import NormfieldError
from normfield.gram.spectra import (
    bulk_deviation,
    count_outliers,
    ks_distance,
    mp_cdf,
    mp_pdf,
    mp_quantile,
    mp_singular_cdf,
    mp_singular_pdf,
    mp_support,
    spectral_distance,
)


@pytest.mark.parametrize("gamma", [0.02, 0.25, 1.0, 3.0])
def test_mp_cdf_quadrature_matches_adaptive_integration_of_pdf(gamma):
    # Two independent routes: the cdf's Gauss–Legendre (θ-substitution) vs scipy.quad of the
    # closed-form density. quad's own error estimate is < 1e-9 here; we allow 1e-8.
    a, b = mp_support(gamma)
    atom = max(0.0, 1 - 1 / gamma)
    for x in np.linspace(a, b, 7)[1:]:
        ref = atom + integrate.quad(lambda t: mp_pdf(t, gamma), a, x, limit=200, epsabs=1e-12)[0]
        assert float(mp_cdf(x, gamma)) == pytest.approx(ref, abs=1e-8)
    assert float(mp_cdf(b * 1.01, gamma)) == pytest.approx(1.0, abs=1e-12)


def test_mp_law_matches_wishart_monte_carlo():
    # Eigenvalues of XᵀX/d, X d×n i.i.d. N(0,1), pooled over R draws. With m = R·n pooled values,
    # a KS statistic of an i.i.d. sample exceeds 1.95/√m with prob ≈ 1e-3; eigenvalues of one
    # matrix repel each other (less variable than i.i.d.), and the finite-n edge correction is
    # O(n^{-2/3}) in the edges, i.e. O(n^{-1}) in probability mass, so we allow 1.95/√m + 1/n.
    rng = np.random.default_rng(0)
    d, n, R = 400, 100, 20
    X = rng.standard_normal((R, d, n))
    ev = np.linalg.eigvalsh(X.transpose(0, 2, 1) @ X / d).ravel()
    D = ks_distance(ev, lambda x: mp_cdf(x, n / d))
    assert D < 1.95 / math.sqrt(ev.size) + 1 / n, D
    # the same statistic rejects a wrong gamma
    assert ks_distance(ev, lambda x: mp_cdf(x, 2 * n / d)) > 0.1


def test_ks_distance_equals_scipy():
    x = np.random.default_rng(3).standard_normal(57)
    assert ks_distance(x, stats.norm.cdf) == pytest.approx(stats.kstest(x, "norm").statistic, rel=1e-12)


@pytest.mark.parametrize("gamma", [0.02, 0.2])
def test_singular_law_is_the_change_of_variables(gamma):
    # t = √λ / c with c = √(median λ): the median of t is 1, the pdf integrates to 1 and is the
    # derivative of the cdf (central differences, error O(h²) ~ 1e-8 relative).
    assert float(mp_singular_cdf(1.0, gamma)) == pytest.approx(0.5, abs=1e-10)
    c = math.sqrt(mp_quantile(0.5, gamma))
    lo, hi = (math.sqrt(v) / c for v in mp_support(gamma))
    assert integrate.quad(lambda s: mp_singular_pdf(s, gamma), lo, hi, limit=200)[0] == pytest.approx(1, abs=1e-8)
    s, h = np.linspace(lo, hi, 9)[1:-1], 1e-5
    num = (mp_singular_cdf(s + h, gamma) - mp_singular_cdf(s - h, gamma)) / (2 * h)
    np.testing.assert_allclose(num, mp_singular_pdf(s, gamma), rtol=1e-6)


def test_count_outliers_finds_a_planted_spike():
    # Covariance I + θ 11ᵀ/n with θ = 5 ≫ √γ (above the BBP threshold): exactly one spike.
    rng = np.random.default_rng(1)
    d, n = 1000, 20
    C = np.linalg.cholesky(np.eye(n) + 5 * np.ones((n, n)) / n)
    X = rng.standard_normal((50, d, n)) @ C.T
    s = np.sqrt(np.linalg.eigvalsh(X.transpose(0, 2, 1) @ X / d))
    assert np.all(count_outliers(s, n / d) == 1) and np.all(count_outliers(s, n / d, side="upper") == 1)
    # a planted low spike (covariance I − 0.9 11ᵀ/n): one outlier below the bulk
    Cl = np.linalg.cholesky(np.eye(n) - 0.9 * np.ones((n, n)) / n)
    Xl = rng.standard_normal((50, d, n)) @ Cl.T
    sl = np.sqrt(np.linalg.eigvalsh(Xl.transpose(0, 2, 1) @ Xl / d))
    assert np.all(count_outliers(sl, n / d, side="lower") == 1) and np.all(count_outliers(sl, n / d) == 1)
    X0 = rng.standard_normal((50, d, n))  # no spike: (almost) never an outlier
    s0 = np.sqrt(np.linalg.eigvalsh(X0.transpose(0, 2, 1) @ X0 / d))
    assert count_outliers(s0, n / d).sum() == 0


def test_hoffman_wielandt_and_bulk():
    rng = np.random.default_rng(2)
    A = rng.standard_normal((200, 6, 6))
    A = A + A.transpose(0, 2, 1)
    B = rng.standard_normal((200, 6, 6))
    B = A + 0.3 * (B + B.transpose(0, 2, 1))
    sd = spectral_distance(A, B)
    assert np.all(sd <= np.linalg.norm(A - B, axis=(-2, -1)) * (1 + 1e-12))
    assert spectral_distance(A[0], A[0]) == pytest.approx(0.0, abs=1e-12)
    ev = np.array([5.0, 1.1, 0.9, 1.0])
    assert bulk_deviation(ev, 1.0) == pytest.approx(0.1)
    assert bulk_deviation(ev, 1.0, skip_top=0) == pytest.approx(4.0)


def test_bad_gamma():
    with pytest.raises(NormfieldError, match="gamma"):
        mp_pdf(1.0, 0.0)
    with pytest.raises(NormfieldError, match="gamma"):
        mp_singular_cdf(1.0, 2.0)
