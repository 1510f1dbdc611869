"""The two-eigenvalue structure of G* at any batch size (Joudaki et al. 2023, after eq. 10):
closed forms against high-precision arithmetic, the general route against the Gaussian limit,
no spurious singularity at huge n, and a JSON of constant size."""

from __future__ import annotations

import json
import math

import mpmath
import pytest

import normfield as nf
from normfield.cli import main
from normfield.core.gaussian import gaussian_expectation
from normfield.gram.fixed_point import EXPAND_MAX


def _relu_exact(n: int) -> tuple[float, float]:
    """λ_1 = b*(1+(n−1)c*), λ_2 = b*(1−c*) for relu (S.70: b* = 1/2, b*c* = J(−1/(n−1))/2), 50 digits."""
    with mpmath.workdps(50):
        c = mpmath.mpf(-1) / (n - 1)
        J = (mpmath.sqrt(1 - c * c) + (mpmath.pi - mpmath.acos(c)) * c) / mpmath.pi
        off = J / 2
        return float(mpmath.mpf(1) / 2 + (n - 1) * off), float(mpmath.mpf(1) / 2 - off)


@pytest.mark.parametrize("n", [2, 3, 10, 1000, 10**7, 10**9])
def test_relu_eigenvalues_and_condition_number_match_the_formula(n):
    fp = nf.fixed_point("relu", n)
    l1, l2 = _relu_exact(n)
    # a handful of ulps: the closed forms have no cancellation
    assert fp.eigenvalue_ones == pytest.approx(l1, rel=1e-14)
    assert fp.eigenvalue_rest == pytest.approx(l2, rel=1e-14)
    assert not fp.singular
    assert fp.condition_number == pytest.approx(l1 / l2, rel=1e-13)
    assert fp.eigenvalue_pairs == ((fp.eigenvalue_ones, 1), (fp.eigenvalue_rest, n - 1)) or n == 2


def test_relu_condition_number_at_ten_million():
    # the value of κ(G*) = b*(1+(n−1)c*)/(b*(1−c*)) at n = 10⁷: ≈ 4.669e6
    assert nf.fixed_point("relu", 10**7).condition_number == pytest.approx(4.669421993e6, rel=1e-9)


@pytest.mark.parametrize("act", ["leaky_relu:0.2", "leaky_relu:3", "identity"])
@pytest.mark.parametrize("n", [10**7, 10**9])
def test_homogeneous_eigenvalues_at_huge_n(act, n):
    # σ = s x + t relu x: λ_1 = t² λ_1(relu) (Σu_i = 0), λ_2 = (s² + st) n/(n−1) + t² λ_2(relu)
    a = nf.get_activation(act)
    s, t = a.linear_parts
    l1, l2 = _relu_exact(n)
    fp = nf.fixed_point(act, n)
    assert fp.eigenvalue_ones == pytest.approx(t * t * l1, rel=1e-14, abs=0.0)
    assert fp.eigenvalue_rest == pytest.approx((s * s + s * t) * n / (n - 1) + t * t * l2, rel=1e-14)
    assert fp.singular == (act == "identity")


@pytest.mark.parametrize("n", [10**7, 10**9])
def test_relu_general_route_matches_closed_form_at_huge_n(n):
    c = nf.fixed_point("relu", n, method="closed")
    q = nf.fixed_point("relu", n, method="quad")
    assert q.eigenvalue_ones == pytest.approx(c.eigenvalue_ones, rel=1e-12)
    assert q.eigenvalue_rest == pytest.approx(c.eigenvalue_rest, rel=1e-12)
    assert abs(q.eigenvalue_ones - c.eigenvalue_ones) <= max(q.eigenvalue_error, 1e-12 * c.eigenvalue_ones)


def _gaussian_residual(f) -> float:
    """E[φ(z)²] for z ~ N(0,1) and φ = f minus its projection on 1, z, z² − 1 (the n → ∞ limit of
    λ_1 − n m²: the CLT for Σφ(u_i)/√n given Σu_i = 0 and Σu_i² = n)."""
    m = float(gaussian_expectation(f, 1.0))
    a = float(gaussian_expectation(lambda x: f(x) * x, 1.0))
    b = float(gaussian_expectation(lambda x: f(x) * (x * x - 1), 1.0)) / 2.0
    return float(gaussian_expectation(lambda x: (f(x) - m - a * x - b * (x * x - 1)) ** 2, 1.0))


@pytest.mark.parametrize("act", ["tanh", "sin", "erf"])
def test_odd_activation_ones_eigenvalue_is_stable_at_huge_n(act):
    # odd σ: m = 0 and λ_1 = b*(1+(n−1)c*) is O(1) while (n−1)·off is O(1): the naive sum of rounded
    # entries loses ~n·1e-17; the split keeps λ_1 within O(1/n) of its Gaussian limit.
    f = nf.get_activation(act).numpy_pair()[0]
    lim = _gaussian_residual(f)
    for n in (10**7, 10**9):
        fp = nf.fixed_point(act, n)
        assert fp.eigenvalue_ones == pytest.approx(lim, rel=1e-6), n
        assert fp.eigenvalue_error < 1e-6
        assert not fp.singular
    # and at moderate n the split agrees with the entries
    fp = nf.fixed_point(act, 12)
    assert fp.eigenvalue_ones == pytest.approx(fp.diagonal + 11 * fp.off_diagonal, abs=1e-12)
    assert fp.eigenvalue_rest == pytest.approx(fp.diagonal - fp.off_diagonal, abs=1e-12)


@pytest.mark.parametrize("act", ["sigmoid", "gelu", "silu", "selu"])
def test_eigenvalues_agree_with_entries(act):
    for n in (3, 4, 17, 300):
        fp = nf.fixed_point(act, n)
        lam1 = fp.diagonal + (n - 1) * fp.off_diagonal
        assert fp.eigenvalue_ones == pytest.approx(lam1, rel=1e-11, abs=1e-12)
        assert fp.eigenvalue_rest == pytest.approx(fp.diagonal - fp.off_diagonal, rel=1e-11, abs=1e-12)


def test_huge_batch_json_is_small_and_not_singular(capsys):
    assert main(["fixed-point", "--activation", "relu", "--batch", "10000000", "--json"]) == 0
    out = capsys.readouterr().out
    assert len(out) < 2000
    d = json.loads(out)
    assert d["singular"] is False and d["eigenvalues"] is None
    assert d["condition_number"] == pytest.approx(4.669421993e6, rel=1e-9)
    (v1, m1), (v2, m2) = d["eigenvalue_pairs"]
    assert (m1, m2) == (1, 10**7 - 1) and v1 == d["eigenvalue_ones"] and v2 == d["eigenvalue_rest"]
    assert main(["fixed-point", "--activation", "relu", "--batch", "10000000"]) == 0
    assert "singular" not in capsys.readouterr().out


def test_small_batch_json_keeps_the_full_list(capsys):
    n = EXPAND_MAX
    assert main(["fixed-point", "--activation", "tanh", "--batch", str(n), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert len(d["eigenvalues"]) == n and d["eigenvalues"] == sorted(d["eigenvalues"], reverse=True)
    (v1, m1), (v2, m2) = d["eigenvalue_pairs"]
    assert m1 + m2 == n and d["eigenvalues"][0] == v1 and d["eigenvalues"][-1] == v2


def test_eigenvalues_expand_the_pairs():
    fp = nf.fixed_point("sigmoid", 7)
    ev = fp.eigenvalues
    assert ev.shape == (7,) and not ev.flags.writeable
    assert list(ev) == [v for v, m in fp.eigenvalue_pairs for _ in range(m)]
    assert math.isfinite(fp.condition_number) and fp.condition_number == pytest.approx(ev[0] / ev[-1], rel=1e-15)
