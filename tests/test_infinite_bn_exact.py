"""Exact infinite-width train-mode batch norm (NNGP and NTK, homogeneous σ) against independent routes:
the mean-field Gram map's exp-sinh route, the fixed point G*, closed forms on the exchangeable law,
symmetry identities of the relu family, Monte Carlo with autograd Jacobians, and a finer rule."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.stats import chi2

from normfield.core.activations import get_activation
from normfield.errors import NormfieldError
from normfield.gram.fixed_point import fixed_point
from normfield.gram.meanfield import gram_map
from normfield.infinite.bn_exact import bn_homogeneous

ACTS = ["relu", "leaky_relu:0.2", "identity"]


def _psd(T: int, seed: int, k: int | None = None) -> np.ndarray:
    X = np.random.default_rng(seed).standard_normal((T, k or T + 2))
    return X @ X.T / X.shape[1]


def _monte_carlo(Sigma, Theta, act, eps, N, seed):
    """Plain Monte Carlo: h ~ N(0, Σ), u ~ N(0, Θ) independent; x = σ(BN(h)) and Ju by forward-mode
    autograd, so E[(Ju)(Ju)ᵀ] = E[J Θ Jᵀ]. Returns {name: (mean, standard error)} per entry."""
    g = torch.Generator().manual_seed(seed)
    T = Sigma.shape[0]

    def factor(G):
        lam, U = np.linalg.eigh(G)
        return torch.tensor(U * np.sqrt(np.clip(lam, 0.0, None)))

    Ls, Lt = factor(Sigma), factor(Theta)
    a = get_activation(act)

    def f(h):
        y = h - h.mean(1, keepdim=True)
        return a(y / torch.sqrt((y * y).mean(1, keepdim=True) + eps))

    sums = {k: [0.0, 0.0] for k in ("K", "JTJ", "mean")}
    for start in range(0, N, 100_000):
        b = min(100_000, N - start)
        h = torch.randn(b, T, generator=g, dtype=torch.float64) @ Ls.T
        u = torch.randn(b, T, generator=g, dtype=torch.float64) @ Lt.T
        x, ju = torch.func.jvp(f, (h,), (u,))
        for name, v in (("K", x[:, :, None] * x[:, None, :]), ("JTJ", ju[:, :, None] * ju[:, None, :]),
                        ("mean", x)):
            sums[name][0] = sums[name][0] + v.sum(0)
            sums[name][1] = sums[name][1] + (v * v).sum(0)
    out = {}
    for name, (s1, s2) in sums.items():
        m = s1 / N
        var = (s2 / N - m * m) * N / (N - 1)
        out[name] = (m.numpy(), torch.sqrt(var.clamp(min=0.0) / N).numpy())
    return out


def _check_mc(T, act, eps, N, seed, ntk=True, Sigma=None):
    Sigma = _psd(T, seed) if Sigma is None else Sigma
    Theta = _psd(T, seed + 100, T + 3)
    K, JTJ, mean, err = bn_homogeneous(Sigma, Theta, act, eps=eps, ntk=ntk)
    mc = _monte_carlo(Sigma, Theta, act, eps, N, seed + 7)
    # Each MC entry is a mean of N i.i.d. draws, so (exact − mc)/se is ≈ N(0, 1) (CLT; exact is exact to
    # err ≤ 1e-11 ≪ se). 5 standard errors: two-sided tail 5.7e-7 per entry; over all ≤ 3·(2·64 + 8)
    # entries of the light tests (Bonferroni) a false failure has probability < 3e-4 (≤ 2e-3 heavy).
    # identity's mean is exactly 0 (se 0): compared absolutely against the stated error.
    assert err < 1e-11
    for name, val in (("K", K), ("JTJ", JTJ), ("mean", mean)):
        if name == "JTJ" and not ntk:
            continue
        m, se = mc[name]
        pos = se > 0
        assert np.all(np.abs(val - m)[~pos] <= 10 * err + 1e-15), name
        z = np.abs(val - m)[pos] / se[pos]
        assert z.max() < 5.0, (name, float(z.max()))


# Light tier: one case per activation and ε regime. The CLT needs E[(JΘJᵀ)²] ~ E[s⁻⁴] finite: at ε = 0 that
# holds for rank(MΣM) ≥ 5 (T ≥ 6), at T = 5 it diverges only logarithmically (ε = 1e-5 caps it at
# O(log 1/ε)); at T = 3 (rank 2) it is O(1/ε), so JTJ is compared there only for ε large.
@pytest.mark.parametrize("T,act,eps,ntk", [
    (5, "relu", 1e-5, True), (8, "leaky_relu:0.2", 0.0, True), (3, "identity", 0.5, True),
    (8, "relu", 0.5, True), (3, "relu", 1e-5, False),
])
def test_matches_monte_carlo(T, act, eps, ntk):
    _check_mc(T, act, eps, 100_000, 10 * T, ntk)


def test_repeated_samples_match_monte_carlo():
    # Two equal samples make ρ = 1 for that pair at every node (angles recomputed from unit vectors).
    X = np.random.default_rng(5).standard_normal((6, 8))
    X[4] = X[1]
    _check_mc(6, "relu", 1e-5, 100_000, 9, Sigma=X @ X.T / 8)


def test_two_samples_relu_never_both_active():
    # T = 2: y_1 = −y_2, so relu'(y_1) relu'(y_2) = 0 and σ(z_1)σ(z_2) = 0: off-diagonals vanish exactly.
    K, J, m, err = bn_homogeneous(np.array([[2.0, 0.3], [0.3, 1.0]]), np.eye(2), "relu", eps=1e-5)
    assert abs(K[0, 1]) <= err and abs(J[0, 1]) <= err and err < 1e-10


@pytest.mark.heavy
@pytest.mark.parametrize("T", [3, 5, 8])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("eps", [0.0, 1e-5, 0.5])
def test_matches_monte_carlo_full(T, act, eps):
    # T = 3: the NTK is infinite at ε = 0 and its Monte Carlo variance is O(1/ε) at ε = 1e-5: K and mean only.
    _check_mc(T, act, eps, 1_000_000, 10 * T + 1, ntk=(T > 3 or eps >= 0.5))


@pytest.mark.parametrize("T", [3, 5, 8])
@pytest.mark.parametrize("act", ACTS)
def test_nngp_matches_meanfield_gram_map(T, act):
    # gram_map(norm="bn") is E[σ(√T Mh/‖Mh‖)^{⊗2}] = K at ε = 0 (√T y/‖y‖ = y/s); both are exp-sinh
    # rules of one integral with stated errors ≤ 1e-13, so 1e-12 leaves room for rounding only.
    Sigma = _psd(T, T)
    K, _, _, err = bn_homogeneous(Sigma, None, act, eps=0.0, ntk=False)
    G, gerr = gram_map(Sigma, act, norm="bn", method="exact", return_error=True)
    assert err + gerr < 1e-12
    assert np.abs(K - G).max() <= 1e-12


@pytest.mark.parametrize("T", [4, 7])
@pytest.mark.parametrize("act", ["relu", "leaky_relu:-0.5", "identity"])
def test_exchangeable_nngp_is_fixed_point(T, act):
    # Σ = cM + b11ᵀ: BN(h) is uniform on the BN sphere, so K = G* (Joudaki et al. 2023, eq. 10) at ε = 0.
    M = np.eye(T) - 1.0 / T
    K, _, mean, err = bn_homogeneous(2.5 * M + 0.7, None, act, eps=0.0, ntk=False)
    assert np.abs(K - fixed_point(act, T).matrix).max() <= 1e-12 + err


def _radial(f, c: float, r: int, T: int) -> float:
    """E[f(ρ²)], ρ² = ‖y‖²/T with ‖y‖²/c ~ χ²_r (scipy quadrature, an independent route)."""
    val, _ = integrate.quad(lambda q: f(c * q / T) * chi2.pdf(q, r), 0, np.inf, epsabs=1e-14, epsrel=1e-13,
                            limit=200)
    return val


@pytest.mark.parametrize("eps", [0.0, 1e-5, 0.5])
def test_exchangeable_identity_closed_form(eps):
    # Σ = cM: y = ρ√T ŷ with ŷ uniform on the unit sphere of range(M) (dim r = T − 1) independent of ρ.
    # s² = ρ² + ε, P = I − κ ŷŷᵀ with κ = ρ²/s², and for A = MΘM: E[ŷŷᵀ] = M/r,
    # E[ŷŷᵀAŷŷᵀ] = (2A + tr(A) M)/(r(r+2)) (fourth moments of the uniform sphere). Hence
    # K = T E[κ] M/r and JTJ = E[1/s²] A − 2E[κ/s²] A/r + E[κ²/s²] (2A + tr(A) M)/(r(r+2)).
    T, c = 6, 1.7
    r = T - 1
    M = np.eye(T) - 1.0 / T
    Theta = _psd(T, 5)
    A = M @ Theta @ M
    K, JTJ, mean, err = bn_homogeneous(c * M, Theta, "identity", eps=eps)
    e_k = _radial(lambda q: q / (q + eps), c, r, T)
    e1 = _radial(lambda q: 1.0 / (q + eps), c, r, T)
    e2 = _radial(lambda q: q / (q + eps) ** 2, c, r, T)
    e3 = _radial(lambda q: q * q / (q + eps) ** 3, c, r, T)
    K_ref = T * e_k * M / r
    J_ref = e1 * A - 2 * e2 * A / r + e3 * (2 * A + np.trace(A) * M) / (r * (r + 2))
    # scipy's quad is accurate to ~1e-13 relative here; entries are O(1).
    assert np.abs(K - K_ref).max() <= 1e-11 + err
    assert np.abs(JTJ - J_ref).max() <= 1e-11 + err
    assert np.all(mean == 0.0)


@pytest.mark.parametrize("eps", [0.0, 0.3])
@pytest.mark.parametrize("a", [0.2, -0.5, 2.0])
def test_leaky_is_identity_plus_relu(a, eps):
    # h and −h have one law, s is even, relu(−y) = relu(y) − y and relu'(−y) = 1 − relu'(y) a.s.; so
    # E[z relu(z)ᵀ + relu(z) zᵀ] = E[zzᵀ] and E[J_id Θ J_reluᵀ + J_relu Θ J_idᵀ] = E[J_id Θ J_idᵀ].
    # With σ_a = a x + (1 − a) relu x this gives, for any slope a:
    # K_a = a K_id + (1−a)² K_relu, JTJ_a = a JTJ_id + (1−a)² JTJ_relu, mean_a = (1−a) mean_relu.
    T = 6
    Sigma, Theta = _psd(T, 1), _psd(T, 2)
    Ka, Ja, ma, ea = bn_homogeneous(Sigma, Theta, f"leaky_relu:{a}", eps=eps)
    Ki, Ji, _, ei = bn_homogeneous(Sigma, Theta, "identity", eps=eps)
    Kr, Jr, mr, er = bn_homogeneous(Sigma, Theta, "relu", eps=eps)
    tol = ea + abs(a) * ei + (1 - a) ** 2 * er
    assert np.abs(Ka - (a * Ki + (1 - a) ** 2 * Kr)).max() <= tol
    assert np.abs(Ja - (a * Ji + (1 - a) ** 2 * Jr)).max() <= tol
    assert np.abs(ma - (1 - a) * mr).max() <= tol


@pytest.mark.parametrize("eps", [0.0, 1e-5, 0.5])
def test_identity_invariants(eps):
    # identity: J = (1/s) P M with M1 = 0 and P1 = 1 (yᵀ1 = 0), so J1 = 0 and Jᵀ1 = 0 pointwise:
    # JTJ·1 = 0 and K·1 = 0 (to rounding); at ε = 0, tr K = E[‖z‖²] = T exactly; below T for ε > 0.
    T = 7
    K, JTJ, mean, err = bn_homogeneous(_psd(T, 3), _psd(T, 4), "identity", eps=eps)
    one = np.ones(T)
    scale = np.abs(JTJ).max()
    assert np.abs(JTJ @ one).max() <= 1e-13 * T * scale
    assert np.abs(K @ one).max() <= 1e-13 * T
    if eps == 0.0:
        assert abs(np.trace(K) - T) <= T * err + 1e-12
    else:
        assert np.trace(K) < T


@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_relu_diagonal_is_half_the_identity_diagonal(eps):
    # J_relu = D J_id with D = diag(1(z > 0)) and h ↦ −h (same law) maps D to I − D a.s. while J_id and
    # z_t² stay put: (J_relu Θ J_reluᵀ)_tt = 1(z_t > 0)(J_id Θ J_idᵀ)_tt and relu(z_t)² = 1(z_t > 0) z_t²,
    # so diag K_relu = diag K_id / 2 and diag JTJ_relu = diag JTJ_id / 2 for every ε (tr K_relu = T/2 at ε = 0).
    T = 7
    Sigma, Theta = _psd(T, 50), _psd(T, 51)
    Kr, Jr, _, er = bn_homogeneous(Sigma, Theta, "relu", eps=eps)
    Ki, Ji, _, ei = bn_homogeneous(Sigma, Theta, "identity", eps=eps)
    assert np.abs(np.diag(Kr) - np.diag(Ki) / 2).max() <= er + ei / 2
    assert np.abs(np.diag(Jr) - np.diag(Ji) / 2).max() <= er + ei / 2


@pytest.mark.parametrize("act", ACTS)
def test_constant_directions_of_theta_do_not_matter(act):
    # J1 = 0 for every σ (J ends in M), so Θ + a11ᵀ + 1vᵀ + v1ᵀ has the same JTJ.
    T = 5
    Sigma, Theta = _psd(T, 8), _psd(T, 9)
    # Θ = BBᵀ; (B + 1wᵀ)(B + 1wᵀ)ᵀ = Θ + 1vᵀ + v1ᵀ + |w|² 11ᵀ with v = Bw, and stays PSD.
    B = np.linalg.cholesky(Theta)
    w = np.random.default_rng(0).standard_normal(T)
    Bw = B + np.outer(np.ones(T), w)
    _, J1, _, e1 = bn_homogeneous(Sigma, Theta, act)
    _, J2, _, e2 = bn_homogeneous(Sigma, Bw @ Bw.T, act)
    assert np.abs(J1 - J2).max() <= e1 + e2 + 1e-13


@pytest.mark.parametrize("act", ACTS)
def test_scaling(act):
    # BN of √c·h with ε' = cε equals BN of h with ε (s scales by √c), and J = ∂x/∂h scales by 1/√c:
    # K(cΣ, cε) = K(Σ, ε), mean likewise, JTJ(cΣ, Θ, cε) = JTJ(Σ, Θ, ε)/c.
    T, c = 6, 4.0
    Sigma, Theta = _psd(T, 11), _psd(T, 12)
    K1, J1, m1, e1 = bn_homogeneous(Sigma, Theta, act, eps=0.2)
    K2, J2, m2, e2 = bn_homogeneous(c * Sigma, Theta, act, eps=0.2 * c)
    assert np.abs(K1 - K2).max() <= e1 + e2
    assert np.abs(m1 - m2).max() <= e1 + e2
    assert np.abs(J1 - c * J2).max() <= e1 + c * e2


@pytest.mark.parametrize("T,eps", [(5, 0.0), (9, 1e-5), (32, 0.1)])
def test_stated_error_bounds_finer_rule(T, eps):
    # A loose tolerance stops the nested rule early; its stated error must bound the distance to the
    # finest rule (h = 1/256).
    Sigma, Theta = _psd(T, 20 + T), _psd(T, 21 + T)
    K, J, m, err, parts = bn_homogeneous(Sigma, Theta, "relu", eps=eps, rtol=1e-6, return_parts=True)
    Kf, Jf, mf, errf, partsf = bn_homogeneous(Sigma, Theta, "relu", eps=eps, rtol=0.0, return_parts=True)
    assert parts["level"] < partsf["level"]
    assert err >= errf
    diff = max(np.abs(K - Kf).max(), np.abs(J - Jf).max(), np.abs(m - mf).max())
    assert diff <= err
    assert errf < 1e-11
    # refine=1: the same stopping level plus one (doubled nodes)
    Kd, Jd, md, errd, partsd = bn_homogeneous(Sigma, Theta, "relu", eps=eps, rtol=1e-6, refine=1,
                                              return_parts=True)
    assert partsd["level"] == parts["level"] + 1 and partsd["nodes"] > parts["nodes"]
    assert max(np.abs(K - Kd).max(), np.abs(J - Jd).max(), np.abs(m - md).max()) <= err


def test_ntk_false_gives_same_nngp_and_zero_ntk():
    T = 6
    Sigma, Theta = _psd(T, 30), _psd(T, 31)
    K1, J1, m1, _ = bn_homogeneous(Sigma, Theta, "relu", ntk=True)
    K2, J2, m2, _ = bn_homogeneous(Sigma, None, "relu", ntk=False)
    assert np.array_equal(J2, np.zeros((T, T)))
    assert np.abs(K1 - K2).max() <= 1e-14 and np.abs(m1 - m2).max() <= 1e-14
    assert np.linalg.eigvalsh(J1)[0] >= -1e-12 and np.linalg.eigvalsh(K1)[0] >= -1e-12


def test_parts_sum_to_ntk():
    T = 6
    K, J, m, err, parts = bn_homogeneous(_psd(T, 40), _psd(T, 41), "leaky_relu:0.1", return_parts=True)
    assert np.abs(sum(parts["jtj_terms"]) - J).max() <= 1e-14 * np.abs(J).max()
    assert parts["nodes"] > 0 and parts["rounding"] <= err


@pytest.mark.parametrize("kwargs,argument", [
    (dict(Sigma=np.eye(3), Theta=np.eye(3), activation="tanh"), "activation"),
    (dict(Sigma=np.eye(3), Theta=np.eye(3), activation="relu", eps=0.0), "eps"),
    (dict(Sigma=np.eye(4), Theta=np.eye(3), activation="relu"), "Theta"),
    (dict(Sigma=np.eye(4), Theta=None, activation="relu"), "Theta"),
    (dict(Sigma=np.ones((1, 1)), Theta=np.ones((1, 1)), activation="relu"), "Sigma"),
    (dict(Sigma=np.ones((4, 4)), Theta=np.eye(4), activation="relu"), "Sigma"),
    (dict(Sigma=-np.eye(4), Theta=np.eye(4), activation="relu"), "Sigma"),
    (dict(Sigma=np.eye(4), Theta=np.eye(4), activation="relu", eps=-1.0), "eps"),
])
def test_refusals(kwargs, argument):
    Sigma, Theta, act = kwargs.pop("Sigma"), kwargs.pop("Theta"), kwargs.pop("activation")
    with pytest.raises(NormfieldError) as e:
        bn_homogeneous(Sigma, Theta, act, **kwargs)
    assert e.value.argument == argument


def test_zero_centred_variance_refused_only_at_the_kink():
    # sample 0 equals the batch mean (Σ = diag(0, 1, 1, 1) after centring has S_00 > 0, so build it
    # directly): h_0 = mean of the others.
    T = 4
    L = np.eye(T)
    L[0] = [0.0, 1 / 3, 1 / 3, 1 / 3]
    Sigma = L @ L.T
    with pytest.raises(NormfieldError) as e:
        bn_homogeneous(Sigma, np.eye(T), "relu")
    assert e.value.argument == "Sigma"
    K, J, m, err = bn_homogeneous(Sigma, np.eye(T), "identity")
    assert np.all(np.isfinite(J)) and abs(K[0, 0]) <= 1e-12
