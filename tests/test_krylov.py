"""Tests of normfield.core.krylov against dense eigendecompositions and random-matrix theory.

Matrices: dense random spectra (exact reference by ``numpy.linalg.eigvalsh``) and a
Marchenko–Pastur bulk plus planted spikes (a Wishart matrix W = X Xᵀ/N with aspect ratio
γ = n/N, plus Σ ℓ_i u_i u_iᵀ), the shape of a Fisher/NTK spectrum. Tolerances come from
the methods' theory: Lanczos' error estimates and the Kaniel–Paige–Saad rate, the exactness
of Gauss quadrature, and the central limit theorem for the stochastic trace estimators.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from normfield.core.krylov import deflated_trace, deflated_trace_blocked, hutchpp, lanczos, ritz_errors, slq
from normfield.errors import NormfieldError


def _mp_spikes(n=400, gamma=0.5, spikes=(12.0, 9.0, 7.0), seed=0):
    rng = np.random.default_rng(seed)
    N = int(n / gamma)
    X = rng.standard_normal((n, N))
    A = X @ X.T / N
    U, _ = np.linalg.qr(rng.standard_normal((n, len(spikes))))
    A = A + (U * np.asarray(spikes)) @ U.T
    return 0.5 * (A + A.T)


def _random_spectrum(n, lam, seed):
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return (Q * lam) @ Q.T


@pytest.mark.parametrize("tol", [1e-4, 1e-8, 1e-12])
def test_lanczos_reaches_the_requested_accuracy_on_mp_plus_spikes(tol):
    A = _mp_spikes()
    ref = np.linalg.eigvalsh(A)[::-1]
    r = lanczos(lambda v: A @ v, A.shape[0], 3, tol=tol, seed=1)
    assert r.converged and r.stopped == "converged"
    err = np.abs(r.eigenvalues - ref[:3])
    # the error estimate is at most tol·θ_1 and the true error is below it (up to round-off)
    assert np.all(r.errors <= tol * r.eigenvalues[0])
    assert np.all(err <= tol * ref[0] + 1e-13 * ref[0])
    # Kaniel–Paige–Saad: λ_1 − θ_1 <= (λ_1 − λ_n) (tan∠(v0, u_1) / T_{m−1}(1 + 2ρ))², ρ = (λ1−λ2)/(λ2−λn).
    # With tan² ~ n (a random start) the steps needed are m ≈ 1 + acosh(sqrt(n·spread/tol))/acosh(1+2ρ);
    # three wanted eigenvalues take a few more, so allow 3 times that plus 10.
    rho = (ref[0] - ref[1]) / (ref[1] - ref[-1])
    m_kps = 1 + math.acosh(math.sqrt(A.shape[0] * (ref[0] - ref[-1]) / (tol * ref[0]))) / math.acosh(1 + 2 * rho)
    assert r.products <= 3 * m_kps + 10


def test_lanczos_basis_is_orthonormal_and_tridiagonalises():
    A = _mp_spikes(n=200, seed=3)
    r = lanczos(lambda v: A @ v, 200, 2, tol=1e-10, seed=2)
    Q = r.basis
    assert np.allclose(Q @ Q.T, np.eye(len(Q)), atol=1e-12)
    T = Q @ A @ Q.T
    Tm = np.diag(r.alpha) + np.diag(r.beta, 1) + np.diag(r.beta, -1)
    assert np.allclose(T, Tm, atol=1e-10 * r.eigenvalues[0])
    V = r.eigenvectors
    assert np.allclose(V.T @ V, np.eye(2), atol=1e-10)
    assert np.linalg.norm(A @ V[:, 0] - r.eigenvalues[0] * V[:, 0]) <= 1e-4 * r.eigenvalues[0]


@pytest.mark.parametrize("how", ["converged", "budget", "max_steps"])
def test_lanczos_relation_holds_with_the_returned_residual(how):
    """A Qᵀ = Qᵀ T_m + r e_mᵀ with the returned residual r, however the run ended, so that A is known
    on the Krylov space without another product (round-off: float64 products of norm ~12)."""
    A = _mp_spikes(n=200, seed=4)
    calls = [0]

    def mv(v):
        calls[0] += 1
        return A @ v

    kw = {"converged": {}, "budget": {"stop": lambda: calls[0] >= 9}, "max_steps": {"max_steps": 7}}[how]
    r = lanczos(mv, 200, 2, tol=1e-10, seed=5, **kw)
    assert r.stopped == how
    Q, m = r.basis, len(r.alpha)
    Tm = np.diag(r.alpha) + np.diag(r.beta, 1) + np.diag(r.beta, -1)
    e = np.zeros(m)
    e[-1] = 1.0
    assert np.allclose(A @ Q.T, Q.T @ Tm + np.outer(r.residual, e), atol=1e-12 * np.abs(A).sum(1).max())
    assert np.allclose(Q @ r.residual, 0.0, atol=1e-12 * (np.linalg.norm(r.residual) + 1))


def test_lanczos_degenerate_cluster_small_operator_and_budget():
    n = 150
    lam = np.concatenate([[5.0, 5.0, 4.999], np.linspace(0, 1, n - 3)])
    A = _random_spectrum(n, lam, 4)
    r = lanczos(lambda v: A @ v, n, 3, tol=1e-10, seed=0)
    assert np.allclose(r.eigenvalues, [5.0, 5.0, 4.999], rtol=1e-9, atol=0)
    # an operator smaller than the steps: the Krylov space is the whole space, Ritz values exact
    B = _random_spectrum(6, np.arange(6.0), 5)
    rb = lanczos(lambda v: B @ v, 6, 6, tol=1e-12)
    assert np.allclose(rb.eigenvalues, np.arange(6.0)[::-1], atol=1e-12) and rb.products <= 6
    # a budget of 5 products ends early and says so; the estimate is honest about its error
    A2 = _mp_spikes(n=300, spikes=(3.0,), seed=6)
    used = [0]

    def mv(v):
        used[0] += 1
        return A2 @ v

    rs = lanczos(mv, 300, 1, tol=1e-12, stop=lambda: used[0] >= 5)
    assert rs.products == used[0] == 5 and rs.stopped == "budget" and not rs.converged
    true = np.linalg.eigvalsh(A2)[-1]
    assert abs(rs.eigenvalues[0] - true) <= rs.errors[0] * (1 + 1e-9) + 1e-12
    with pytest.raises(NormfieldError, match="tol"):
        lanczos(lambda v: v, 5, 1, tol=0)


def test_ritz_error_estimates():
    # Kato–Temple: r²/gap where it is smaller than r; r alone when there is no other Ritz value
    assert ritz_errors(np.array([2.0]), np.array([0.1]))[0] == pytest.approx(0.1)
    # the gap to a neighbour counts only beyond the neighbour's own residual: δ_1 = 1 − 0.5, δ_2 = 1 − 0.1
    e = ritz_errors(np.array([2.0, 1.0]), np.array([0.1, 0.5]))
    assert e[0] == pytest.approx(0.01 / 0.5) and e[1] == pytest.approx(0.25 / 0.9)
    # a neighbour whose residual covers θ_i leaves the bare residual
    assert ritz_errors(np.array([2.0, 1.0]), np.array([0.1, 1.5]))[0] == pytest.approx(0.1)


@pytest.mark.parametrize("seed", range(5))
def test_converged_means_converged_with_a_cluster_of_outliers(seed):
    """C near-equal leading eigenvalues over a bulk (the Fisher of a C-output network: ten outliers
    within 0.5 % of each other, as measured on a CIFAR ResNet-18). Early in the run the top Ritz value
    sits alone far above the bulk's Ritz values, so a gap estimate r²/δ is tiny long before the cluster
    is resolved; the residual rule must not stop there. Every reported value has an eigenvalue within
    its reported error (Kahan), and once tol·λ_max is below half the gap λ_1 − λ_2 (0.5 here), the top
    Ritz value is λ_max to tol."""
    rng = np.random.default_rng(seed)
    n = 400
    lam = np.concatenate([[350.0], 349.5 - rng.uniform(0, 1.3, 9), rng.uniform(2.0, 40.0, n - 10)])
    U, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = (U * lam) @ U.T
    for tol in (1e-3, 3e-4, 1e-4, 1e-6):
        r = lanczos(lambda v: A @ v, n, 3, tol=tol, seed=seed, max_steps=200)
        assert r.converged and np.all(r.errors <= tol * r.eigenvalues[0])
        dist = np.abs(r.eigenvalues[:, None] - lam[None, :]).min(axis=1)
        assert np.all(dist <= r.errors * (1 + 1e-9) + 1e-10)
        if tol * 350.0 < 0.25:
            assert abs(r.eigenvalues[0] - 350.0) <= tol * 350.0


def test_slq_moments_are_gauss_exact_and_unbiased_on_mp():
    A = _mp_spikes(n=300, gamma=0.25, spikes=(6.0,), seed=7)
    n, m, probes = 300, 8, 30
    nodes, w, used = slq(lambda v: A @ v, n, probes=probes, steps=m, seed=3)
    assert used == probes * m and w.sum() == pytest.approx(1.0, abs=1e-12)
    # per probe, the Gauss rule is exact for degree <= 2m−1: its moments are z^T A^j z / n
    rng = np.random.default_rng(3)
    per = []
    for _ in range(probes):
        z = rng.choice([-1.0, 1.0], size=n) / math.sqrt(n)
        per.append([z @ np.linalg.matrix_power(A, j) @ z for j in (1, 2, 3)])
    per = np.asarray(per)
    for j, col in zip((1, 2, 3), per.T):
        assert np.sum(w * nodes ** j) == pytest.approx(col.mean(), rel=1e-9)
        # and the probe mean estimates tr(A^j)/n: CLT, 4 standard errors
        exact = np.trace(np.linalg.matrix_power(A, j)) / n
        assert abs(col.mean() - exact) <= 4 * col.std(ddof=1) / math.sqrt(probes)
    # Marchenko–Pastur: mean 1, second moment 1 + γ; the spike ℓ adds ℓ/n and (ℓ² + 2ℓ)/n
    # (uᵀWu ≈ 1); fluctuations of a Wishart moment are O(1/n), probes add 4 standard errors
    assert np.sum(w * nodes) == pytest.approx(1 + 6.0 / n, abs=0.02)
    assert np.sum(w * nodes ** 2) == pytest.approx(1.25 + 48.0 / n, abs=0.05)
    # the top node is a Ritz value: never above λ_max
    assert nodes.max() <= np.linalg.eigvalsh(A)[-1] * (1 + 1e-12)


def test_trace_estimators_against_the_exact_trace():
    A = _mp_spikes(n=300, spikes=(40.0, 30.0), seed=8)
    n, tr = 300, float(np.trace(A))
    hp = hutchpp(lambda v: A @ v, n, 60, seed=1)
    assert hp.products == 60 and hp.stderr > 0
    assert abs(hp.value - tr) <= 4 * hp.stderr
    r = lanczos(lambda v: A @ v, n, 2, tol=1e-8, seed=0)
    est = deflated_trace(lambda z: float(z @ A @ z), n, r.basis, float(r.alpha.sum()), rtol=0.01, seed=2)
    assert est.stderr <= 0.01 * est.value * (1 + 1e-12) and est.probes >= 8
    assert abs(est.value - tr) <= 4 * est.stderr
    # deflation by the Lanczos basis removes the spikes from the variance: fewer probes than plain Hutchinson
    plain = deflated_trace(lambda z: float(z @ A @ z), n, None, 0.0, rtol=0.01, seed=2)
    assert abs(plain.value - tr) <= 4 * plain.stderr
    assert est.probes < plain.probes


def test_deflated_trace_is_the_mean_of_its_projected_rademacher_probes():
    """Against the estimator written out: the same Rademacher draws, projected off the basis, their
    quadratic forms averaged and added to tr(QᵀAQ); the standard error is their sample standard deviation
    over √probes; with blocks of one (deflated_trace) and of many the same probes give the same value."""
    A = _mp_spikes(n=200, seed=3)
    r = lanczos(lambda v: A @ v, 200, 3, tol=1e-6, seed=0)
    t_in = float(np.sum(r.alpha))
    seq = deflated_trace(lambda z: float(z @ A @ z), 200, r.basis, t_in, rtol=0.01, seed=5)
    rng = np.random.default_rng(5)
    vals = []
    for _ in range(seq.probes):
        z = rng.choice([-1.0, 1.0], size=200)
        z = z - r.basis.T @ (r.basis @ z)
        vals.append(float(z @ A @ z))
    assert seq.value == pytest.approx(t_in + np.mean(vals), rel=1e-12)
    assert seq.stderr == pytest.approx(np.std(vals, ddof=1) / math.sqrt(len(vals)), rel=1e-9)
    assert seq.stderr <= 0.01 * seq.value and (seq.probes == 8 or
                                               np.std(vals[:-1], ddof=1) / math.sqrt(len(vals) - 1)
                                               > 0.01 * (t_in + np.mean(vals[:-1])))
    blk = deflated_trace_blocked(lambda Z: np.einsum("bi,ij,bj->b", Z, A, Z), 200, r.basis, t_in,
                                 rtol=0.01, min_probes=seq.probes, max_probes=seq.probes, block=16, seed=5)
    assert blk.probes == seq.probes and blk.value == pytest.approx(seq.value, rel=1e-12)


@pytest.mark.parametrize("block", [4, 16, 64])
def test_blocked_deflated_trace_reaches_its_standard_error(block):
    """Against the dense trace: within 4 reported standard errors (seeded), with the standard error at most
    rtol of the trace, and no more than one block beyond the sequential stopping count."""
    A = _mp_spikes(n=300, seed=4)
    exact = float(np.trace(A))
    r = lanczos(lambda v: A @ v, 300, 2, tol=1e-6, seed=0)
    calls = []

    def qb(Z):
        calls.append(len(Z))
        return np.einsum("bi,ij,bj->b", Z, A, Z)

    est = deflated_trace_blocked(qb, 300, r.basis, float(np.sum(r.alpha)), rtol=0.002, block=block, seed=2,
                                 max_probes=10_000)
    seq = deflated_trace(lambda z: float(z @ A @ z), 300, r.basis, float(np.sum(r.alpha)), rtol=0.002, seed=2,
                         max_probes=10_000)
    assert est.stderr <= 0.002 * est.value
    assert abs(est.value - exact) <= 4 * est.stderr
    assert sum(calls) == est.probes and max(calls) <= block
    assert seq.probes <= est.probes <= seq.probes + block
    assert len(calls) < est.probes or block == 1 or est.probes <= 8


def test_blocked_deflated_trace_without_basis_is_unbiased():
    A = _random_spectrum(80, np.linspace(0.1, 3.0, 80), seed=9)
    vals = [deflated_trace_blocked(lambda Z: np.einsum("bi,ij,bj->b", Z, A, Z), 80, None, 0.0, min_probes=16,
                                   max_probes=16, block=8, seed=s).value for s in range(200)]
    # each estimate has variance 2‖A‖_F²/16 minus the diagonal part; their mean is within 4 of its standard errors
    assert abs(np.mean(vals) - np.trace(A)) <= 4 * np.std(vals, ddof=1) / math.sqrt(len(vals))


def test_blocked_deflated_trace_offset_targets_the_shifted_trace():
    """With offset c, the standard error reaches rtol·(tr A − c) and tr A − c is within 4 of them (dense check)."""
    A = _mp_spikes(n=300, seed=6)
    exact = float(np.trace(A))
    c = 0.6 * exact
    est = deflated_trace_blocked(lambda Z: np.einsum("bi,ij,bj->b", Z, A, Z), 300, None, 0.0, rtol=0.01, block=8,
                                 seed=1, max_probes=100_000, offset=c)
    plain = deflated_trace_blocked(lambda Z: np.einsum("bi,ij,bj->b", Z, A, Z), 300, None, 0.0, rtol=0.01, block=8,
                                   seed=1, max_probes=100_000)
    assert est.stderr <= 0.01 * (est.value - c)
    assert abs(est.value - exact) <= 4 * est.stderr
    assert est.probes > plain.probes
