"""Gaussian quadrature: exact moments, closed forms, an independent Cartesian
trapezoid route, the BN-sphere marginals, and refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate
from scipy.special import erf

from normfield.core.gaussian import (
    gaussian_expectation,
    gaussian_pair_expectation,
    sphere_pair_expectation,
)
from normfield.errors import NormfieldError

relu = lambda x: np.maximum(x, 0.0)  # noqa: E731
QS = np.array([1e-4, 0.1, 1.0, 4.0, 100.0, 1e4])


def test_1d_moments_exact_for_all_variances():
    # E x² = q, E x⁴ = 3q², E|x| = √(2q/π), E relu(x) = √(q/2π): polynomial and kink at 0
    for f, exact in (
        (lambda x: x**2, QS),
        (lambda x: x**4, 3 * QS**2),
        (np.abs, np.sqrt(2 * QS / math.pi)),
        (relu, np.sqrt(QS / (2 * math.pi))),
        (lambda x: erf(x) ** 2, (2 / math.pi) * np.arcsin(2 * QS / (1 + 2 * QS))),
    ):
        v, e = gaussian_expectation(f, QS, return_error=True)
        rel = np.abs(v - exact) / np.abs(exact)
        assert rel.max() < 1e-13, rel
        # the error estimate bounds the actual error up to round-off (~1e-14 relative)
        assert np.all(np.abs(v - exact) <= e + 1e-14 * np.abs(exact))
    # an oscillating integrand: E cos(√q z) = e^{-q/2}; absolute accuracy (|cos| <= 1).
    # At q = 100 the answer (2e-22) is the cancellation of O(1) terms: ~1e-13 absolute.
    q = QS[QS <= 4]
    assert np.abs(gaussian_expectation(np.cos, q) - np.exp(-q / 2)).max() < 1e-14
    assert abs(gaussian_expectation(np.cos, 100.0)) < 1e-12


def test_1d_vectorised_shapes():
    q = np.array([[0.5, 1.0], [2.0, 3.0]])
    assert gaussian_expectation(lambda x: x**2, q).shape == (2, 2)
    assert np.ndim(gaussian_expectation(lambda x: x**2, 2.0)) == 0


@pytest.mark.parametrize("c", [-1.0, -0.999999, -0.5, 0.0, 0.3, 0.9, 0.999999, 1.0])
def test_2d_closed_forms_across_correlations(c):
    q11, q22 = 2.0, 0.5
    q12 = c * math.sqrt(q11 * q22)
    s = math.sqrt(q11 * q22)
    cases = [
        (lambda x: x, lambda x: x, q12),  # E uv
        (lambda x: x**2, lambda x: x**2, q11 * q22 + 2 * q12**2),  # Isserlis
        (relu, relu, s / (2 * math.pi) * (math.sqrt(1 - c * c) + (math.pi - math.acos(c)) * c)),
        (erf, erf, 2 / math.pi * math.asin(2 * q12 / math.sqrt((1 + 2 * q11) * (1 + 2 * q22)))),
        (np.sin, np.sin, math.exp(-(q11 + q22) / 2) * math.sinh(q12)),
        (lambda x: (x > 0) * 1.0, lambda x: (x > 0) * 1.0, (math.pi - math.acos(c)) / (2 * math.pi)),
    ]
    for f, g, exact in cases:
        v, e = gaussian_pair_expectation(f, g, q11, q22, q12, return_error=True)
        scale = max(1.0, abs(exact))
        assert abs(v - exact) < 1e-13 * scale, (c, exact, v)
        assert e < 1e-8 * scale  # conservative: bounds the coarse rule (radial step 2/5)


def _cartesian_trapezoid(f, g, q11, q22, q12, h=0.04, Z=12.0):
    """Independent route: 2-D trapezoid on z ∈ [-Z, Z]² for
    u = √q11 z1, v = √q22 (c z1 + s z2). For integrands analytic in a strip of
    half-width a (a = π/(2√q) for tanh) the error is ~exp(-2πa/h) < 1e-17 here,
    and the Gaussian tail beyond 12 is < 1e-31."""
    z = np.arange(-Z, Z + h / 2, h)
    w = h * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    c = q12 / math.sqrt(q11 * q22)
    s = math.sqrt(max(1 - c * c, 0.0))
    U = math.sqrt(q11) * z[:, None]
    V = math.sqrt(q22) * (c * z[:, None] + s * z[None, :])
    return float(w @ (f(U) * g(V)) @ w)


@pytest.mark.parametrize(
    "name,fn",
    [
        ("tanh", np.tanh),
        ("sigmoid", lambda x: 1 / (1 + np.exp(-x))),
        ("gelu", lambda x: 0.5 * x * (1 + erf(x / math.sqrt(2)))),
        ("silu", lambda x: x / (1 + np.exp(-x))),
    ],
)
def test_2d_smooth_matches_independent_trapezoid(name, fn):
    for q11, q22, c in ((1.0, 1.0, 0.5), (3.0, 0.7, -0.7), (0.2, 2.0, 0.95)):
        q12 = c * math.sqrt(q11 * q22)
        ref = _cartesian_trapezoid(fn, fn, q11, q22, q12)
        v = float(gaussian_pair_expectation(fn, fn, q11, q22, q12))
        assert abs(v - ref) < 1e-12 * max(1.0, abs(ref)), (name, q11, q22, c, v - ref)


def test_2d_zero_variance_reduces_to_1d():
    v = gaussian_pair_expectation(np.tanh, lambda x: np.cos(x) + 2.0, 0.0, 1.5, 0.0)
    ref = math.tanh(0.0) * 0 + 0.0  # tanh(0) = 0
    assert abs(v - ref) < 1e-15
    v = gaussian_pair_expectation(lambda x: x + 1.0, np.cos, 0.0, 1.5, 0.0)
    assert abs(v - math.exp(-0.75)) < 1e-14


def test_2d_vectorised_matches_scalar_calls():
    q11 = np.array([0.5, 1.0, 2.0])
    q22 = np.array([1.0, 1.0, 3.0])
    q12 = np.array([0.1, -0.9, 2.0])
    vec = gaussian_pair_expectation(np.tanh, np.tanh, q11, q22, q12)
    for i in range(3):
        assert vec[i] == pytest.approx(float(gaussian_pair_expectation(np.tanh, np.tanh, q11[i], q22[i], q12[i])), abs=1e-15)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 10, 100, 1000])
def test_sphere_relu_matches_karakida_S70(n):
    x = -1.0 / (n - 1)
    J = (math.sqrt(1 - x * x) + (math.pi - math.acos(x)) * x) / math.pi
    d, ed = sphere_pair_expectation(relu, relu, n, same=True)
    o, eo = sphere_pair_expectation(relu, relu, n)
    assert abs(d - 0.5) < 1e-14 and abs(o - 0.5 * J) < 1e-14


@pytest.mark.parametrize("n", [2, 3, 5, 9, 40])
def test_sphere_moments_exact(n):
    # Σ u_i = 0 and ‖u‖² = n with exchangeability: E u1² = 1, E u1u2 = -1/(n-1);
    # E u1⁴ = 3n²/((n-1)(n+1)) · ((n-1)/n)² ... checked through the 1-coordinate
    # marginal u1 = √(n-1) x, x² ~ Beta(1/2, (n-2)/2): E x⁴ = 3/((n-1)(n+1)).
    sq = lambda x: x * x  # noqa: E731
    assert float(sphere_pair_expectation(sq, None, n, same=False).value) == pytest.approx(1.0, abs=1e-14)
    assert float(sphere_pair_expectation(lambda x: x, lambda x: x, n).value) == pytest.approx(-1 / (n - 1), abs=1e-14)
    if n >= 3:
        e4 = float(sphere_pair_expectation(lambda x: x**4, None, n).value)
        assert e4 == pytest.approx((n - 1) ** 2 * 3 / ((n - 1) * (n + 1)), rel=1e-13)


@pytest.mark.parametrize("n", [4, 5, 7, 12])
def test_sphere_diagonal_matches_one_coordinate_density(n):
    # independent route: scipy adaptive quadrature of the density ∝ (1-x²)^((n-4)/2)
    f = lambda x: np.tanh(math.sqrt(n - 1) * x) ** 2  # noqa: E731
    w = lambda x: (1 - x * x) ** ((n - 4) / 2)  # noqa: E731
    num = integrate.quad(lambda x: f(x) * w(x), -1, 1, epsabs=1e-14, epsrel=1e-13, limit=200)[0]
    den = integrate.quad(w, -1, 1, epsabs=1e-14, epsrel=1e-13, limit=200)[0]
    v = float(sphere_pair_expectation(np.tanh, np.tanh, n, same=True).value)
    assert v == pytest.approx(num / den, rel=1e-11)


def test_sphere_offdiagonal_matches_monte_carlo():
    # uniform on the BN sphere: √n·Mz/‖Mz‖ with z ~ N(0, I_n). N = 100k draws;
    # the z-score of the mean is N(0,1) by the CLT (bounded summands); 4 scores,
    # Bonferroni at 1e-4 → |z| < 4.3.
    rng = np.random.default_rng(1)
    for n in (3, 4, 7, 20):
        z = rng.standard_normal((100_000, n))
        y = z - z.mean(1, keepdims=True)
        u = math.sqrt(n) * y / np.linalg.norm(y, axis=1, keepdims=True)
        prod = np.tanh(u[:, 0]) * np.tanh(u[:, 1])
        m, se = prod.mean(), prod.std() / math.sqrt(len(prod))
        v = float(sphere_pair_expectation(np.tanh, np.tanh, n).value)
        assert abs(m - v) / se < 4.3, n


def test_refusals():
    with pytest.raises(NormfieldError, match="q"):
        gaussian_expectation(np.tanh, -1.0)
    with pytest.raises(NormfieldError, match="q"):
        gaussian_expectation(np.tanh, float("nan"))
    with pytest.raises(NormfieldError, match="q11"):
        gaussian_pair_expectation(np.tanh, np.tanh, -1.0, 1.0, 0.0)
    with pytest.raises(NormfieldError, match="q12"):
        gaussian_pair_expectation(np.tanh, np.tanh, 1.0, 1.0, 1.5)
