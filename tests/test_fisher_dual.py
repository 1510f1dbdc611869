"""The reversed FIM F* = RᵀR (Karakida et al. 2019, (S.1)–(S.3)): every route against a
brute-force autograd Jacobian of the full-batch output, the spectrum, and refusals."""

import math

import numpy as np
import pytest
import torch

from normfield.errors import NormfieldError
from normfield.experiments.fisher import fisher_spectrum
from normfield.fisher.dual import FAST_NORMS, fisher_dual
from normfield.fisher.networks import NORMS, MLPConfig, init_mlp, mlp_forward, sample_inputs


def brute_jacobian(params, X, cfg):
    """J (CT × P), row k·T + t = ∇θ f_k(t), by torch.autograd.functional.jacobian of the whole
    batch (so batch statistics are differentiated exactly)."""
    flat = tuple(p for Wb in params for p in Wb)

    def f(*ps):
        pr = [(ps[2 * i], ps[2 * i + 1]) for i in range(len(ps) // 2)]
        return mlp_forward(pr, X, cfg).T.reshape(-1)

    J = torch.autograd.functional.jacobian(f, flat)
    return torch.cat([j.reshape(j.shape[0], -1) for j in J], 1).numpy()


def small_case(norm, act, C=3, T=5, seed=1):
    cfg = MLPConfig(act, 2.0, 0.5, 3, 7, (1.0, 1.3, 0.9), C, T, norm)
    return cfg, init_mlp(cfg, seed), sample_inputs(cfg, seed + 100)


# float64 round-off on entries that are sums of ~P = 200 products is ~1e-14 relative;
# 1e-10 leaves four orders of margin while any formula error (a missing bias term, a
# wrong projection, a missed cross-sample derivative) is O(1).
TOL = 1e-10


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("act", ["relu", "tanh", "gelu"])
def test_every_route_matches_brute_force(norm, act):
    cfg, p, X = small_case(norm, act)
    J = brute_jacobian(p, X, cfg)
    Fb = J @ J.T / X.shape[0]
    scale = np.abs(Fb).max()
    routes = ["general"] + (["fast"] if norm in FAST_NORMS else [])
    for route in routes:
        r = fisher_dual(p, X, cfg, route=route)
        assert r.route == route
        np.testing.assert_array_equal(r.dual, r.dual.T)  # symmetric by construction on every route
        assert np.abs(r.dual - Fb).max() <= TOL * scale, route
        assert r.trace == pytest.approx((J ** 2).sum() / X.shape[0], rel=TOL)
        assert r.m_lambda == pytest.approx(r.trace / cfg.parameters, rel=1e-14)
        assert r.parameters == J.shape[1]
        assert r.lambda_max == pytest.approx(np.linalg.eigvalsh(Fb)[-1], rel=1e-9)


def test_general_route_chunked_equals_unchunked():
    cfg, p, X = small_case("middle-bn", "relu", C=2, T=6)
    a = fisher_dual(p, X, cfg, route="general").dual
    b = fisher_dual(p, X, cfg, route="general", chunk=5).dual
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * np.abs(a).max())


@pytest.mark.parametrize("norm", ["middle-bn", "layer"])
@pytest.mark.parametrize("chunk,store", [(1, 1), (2, 4), (5, 5), (3, 7), (12, 12)])
def test_general_route_factor_blocks_equal_unchunked(norm, chunk, store):
    # the stored-factor path (all CT = 12 outputs at once) against the recompute fallback
    # (store < CT: blocks of `store` outputs kept, later outputs recomputed in VJP batches of
    # `chunk`); the same sums in a different order, so agreement to round-off (~1e-15)
    from normfield.fisher.dual_general import _dual_general

    cfg, p, X = small_case(norm, "tanh", C=3, T=4)
    a = _dual_general(p, X, cfg).numpy()
    b = _dual_general(p, X, cfg, chunk=chunk, store=store).numpy()
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-12 * np.abs(a).max())
    # exact symmetry is guaranteed by construction (each Gram block is one triangle, mirrored;
    # off-diagonal blocks are written with their transposes), on every BLAS kernel
    np.testing.assert_array_equal(b, b.T)
    np.testing.assert_array_equal(a, a.T)


def test_general_plan_follows_the_allocation_cap(monkeypatch):
    # factors of all CT outputs stored when they fit under NORMFIELD_MAX_BYTES, else blocks of a
    # multiple of the VJP batch; the result is the same either way (T = 9 > M_0 + 1 = 8 for the
    # first layer: the factor there is [H, 1] itself, not the QR one)
    from normfield.fisher.dual_general import _dual_general, _factor_widths, _general_plan, dual_memory_bytes

    cfg = MLPConfig("relu", 2.0, 0.5, 3, 7, None, 2, 9, "middle-bn")
    p, X = init_mlp(cfg, 3), sample_inputs(cfg, 4)
    n = 18
    assert _factor_widths(cfg, 9) == [(8, 7), (8, 7), (8, 2)]
    assert _general_plan(cfg, 9, 8, chunk=4) == (4, n)
    full = _dual_general(p, X, cfg, chunk=4).numpy()
    J = brute_jacobian(p, X, cfg)
    np.testing.assert_allclose(full, J @ J.T / 9, rtol=0, atol=TOL * np.abs(full).max())
    per_row = 8 * (8 * 7 + 8 * 7 + 8 * 2)
    base = dual_memory_bytes(cfg, 9, "general", 8, chunk=4)
    monkeypatch.setenv("NORMFIELD_MAX_BYTES", str(int(base + 5 * per_row)))
    assert _general_plan(cfg, 9, 8, chunk=4) == (4, 8)  # 4 + 5 rows fit -> 9, rounded down to 2 batches
    part = _dual_general(p, X, cfg, chunk=4).numpy()
    np.testing.assert_allclose(part, full, rtol=0, atol=1e-12 * np.abs(full).max())
    monkeypatch.setenv("NORMFIELD_MAX_BYTES", str(int(base)))
    assert _general_plan(cfg, 9, 8, chunk=4) == (4, 4)  # the least: one stored and one streamed batch


def test_fim_eigenvalues_equal_dual_eigenvalues():
    # the P×P FIM F = RRᵀ and the dual RᵀR share their non-zero eigenvalues (S.3)
    cfg, p, X = small_case("last-bn", "tanh", C=2, T=4)
    J = brute_jacobian(p, X, cfg)
    F = J.T @ J / X.shape[0]
    r = fisher_dual(p, X, cfg, k=8)
    top = np.sort(np.linalg.eigvalsh(F))[::-1][:8]
    np.testing.assert_allclose(r.eigenvalues, top, rtol=1e-9, atol=1e-11 * top[0])


def test_lanczos_matches_dense():
    cfg = MLPConfig("relu", 2.0, 0.1, 3, 40, None, 2, 60, "none")
    p, X = init_mlp(cfg, 0), sample_inputs(cfg, 1)
    d = fisher_dual(p, X, cfg, k=4, eig="dense")
    l = fisher_dual(p, X, cfg, k=4, eig="lanczos")
    assert l.eig_method == "lanczos" and d.eig_method == "dense"
    np.testing.assert_allclose(l.eigenvalues, d.eigenvalues, rtol=1e-8)


def test_top_cosine_against_explicit_parameter_space():
    # Thm 3.1: cos between the FIM's top eigenvector (P-space, explicit eigh of F = JᵀJ/T)
    # and E[∇θ f] = mean_t ∇θ f(t); the engine computes it in the dual.
    cfg, p, X = small_case("none", "relu", C=1, T=6)
    J = brute_jacobian(p, X, cfg)
    F = J.T @ J / X.shape[0]
    w, V = np.linalg.eigh(F)
    v = V[:, -1]
    g = J.mean(0)
    cos = abs(v @ g) / np.linalg.norm(g)
    r = fisher_dual(p, X, cfg)
    assert r.top_cosine == pytest.approx(cos, rel=1e-8)


def test_measured_backward_order_parameters_are_sums_of_deltas():
    # q̃^l_{M,st} = Σ_i δ^l_i(s) δ^l_i(t) with δ^l = ∂u^L_1/∂u^l (S.4), by autograd per sample
    cfg, p, X = small_case("none", "tanh", C=2, T=4)
    r = fisher_dual(p, X, cfg)
    op = r.order_parameters.set_index("layer")
    # δ^1(t) for output 1: gradient of u^L_1(t) w.r.t. u^1(t)
    W1, b1 = p[0]
    deltas = []
    for t in range(4):
        u1 = (X[t] @ W1.T + b1).clone().requires_grad_(True)
        h = cfg.act(u1)
        u2 = h @ p[1][0].T + p[1][1]
        out = cfg.act(u2) @ p[2][0].T + p[2][1]
        (g,) = torch.autograd.grad(out[0], u1)
        deltas.append(g)
    D = torch.stack(deltas)
    Q = (D @ D.T).numpy()
    assert op.loc[1, "qtilde_st_01"] == pytest.approx(Q[0, 1], rel=1e-12)
    assert op.loc[1, "qtilde_t"] == pytest.approx(np.diag(Q).mean(), rel=1e-12)
    qhat = (X @ X.T).numpy() / X.shape[1]
    assert op.loc[1, "qhat_t"] == pytest.approx(np.diag(qhat).mean(), rel=1e-12)


def test_layer_norm_with_two_outputs_vanishes():
    # C = 2: ū_1 = −ū_2 and σ = |ū_1|, so f = ±1 whatever θ and F* = 0 (App. E remark)
    cfg, p, X = small_case("layer", "relu", C=2, T=4)
    r = fisher_dual(p, X, cfg)
    scale = fisher_dual(p, X, cfg.replace(norm="none")).dual.max()
    assert np.abs(r.dual).max() <= 1e-12 * scale


def test_last_bn_with_two_samples_vanishes():
    cfg, p, X = small_case("last-bn", "tanh", C=2, T=2)
    r = fisher_dual(p, X, cfg, route="fast")
    scale = fisher_dual(p, X, cfg.replace(norm="none")).dual.max()
    assert np.abs(r.dual).max() <= 1e-12 * scale


def test_float32_close_to_float64():
    cfg = MLPConfig("tanh", 3.0, 0.64, 3, 30, None, 1, 20, "last-bn")
    p64, X64 = init_mlp(cfg, 5), sample_inputs(cfg, 6)
    p32 = [(W.float(), b.float()) for W, b in p64]
    a = fisher_dual(p64, X64, cfg)
    b = fisher_dual(p32, X64.float(), cfg)
    # float32 rounding ~6e-8 per op, amplified by ~1/σ_k² and sums of ~10^3 terms: 1e-3 is loose
    assert b.lambda_max == pytest.approx(a.lambda_max, rel=1e-3)
    assert b.m_lambda == pytest.approx(a.m_lambda, rel=1e-3)


def test_fisher_spectrum_is_seeded_and_tidy():
    cfg = MLPConfig("relu", 2.0, 0.0, 3, 20, None, 1, 10, "last-mean")
    a = fisher_spectrum(cfg, seeds=3, seed=4)
    b = fisher_spectrum(cfg, seeds=3, seed=4)
    assert list(a["seed"]) == [4, 5, 6]
    np.testing.assert_array_equal(a["lambda_max"].to_numpy(), b["lambda_max"].to_numpy())
    assert {"lambda_max", "m_lambda", "parameters"} <= set(a.columns)


def test_refusals():
    cfg, p, X = small_case("middle-bn", "relu")
    with pytest.raises(NormfieldError, match="route='fast'"):
        fisher_dual(p, X, cfg, route="fast")
    with pytest.raises(NormfieldError, match="route"):
        fisher_dual(p, X, cfg, route="slow")
    with pytest.raises(NormfieldError, match="X must have shape"):
        fisher_dual(p, X[:, :3], cfg)


def test_memory_refused_before_allocating(monkeypatch):
    monkeypatch.setenv("NORMFIELD_MAX_BYTES", str(2**20))
    cfg = MLPConfig("relu", 2.0, 0.0, 2, 10, None, 1, 600)
    p, X = init_mlp(cfg, 0), sample_inputs(cfg, 1)
    with pytest.raises(NormfieldError, match="fewer samples"):
        fisher_dual(p, X, cfg)


def test_wide_relu_matches_thm22_statistically():
    # Thm 2.2 at M = T = 200, relu (2, 0), L = 3: κ1 = 3/2 and κ2 = (q̃²_st q̂¹_st + q̂²_st)/2 in
    # closed form (arc-cosine kernels).  Over n seeds the tolerance is 4 standard errors of the
    # mean (measured spread) plus the O(1/M) finite-width bias (bias gradients, P = αM² + O(M)),
    # taken as 3/M relative.
    M = T = 200
    J1 = lambda c: (math.sqrt(1 - c * c) + (math.pi - math.acos(c)) * c) / math.pi  # noqa: E731
    c = 1 / math.pi
    k1 = 1.5
    k2 = 0.5 * ((math.pi - math.acos(c)) / (2 * math.pi) * 2 * (1 / math.pi) + J1(c))
    cfg = MLPConfig("relu", 2.0, 0.0, 3, M, None, 1, T, "none")
    df = fisher_spectrum(cfg, seeds=6, seed=0)
    n = len(df)
    lam = df["lambda_max"].to_numpy() / (2 * M * (k2 + (k1 - k2) / T))
    m = df["m_lambda"].to_numpy() * M / k1
    for x in (lam, m):
        tol = 4 * x.std(ddof=1) / math.sqrt(n) + 3 / M
        assert abs(x.mean() - 1) < tol, (x.mean(), tol)


@pytest.mark.parametrize("norm", ["none", "last-bn", "middle-bn", "layer"])
def test_matrix_free_route_matches_dense(norm):
    # Lanczos on v ↦ J(Jᵀv)/T (full reorthogonalisation, tol 1e-10) and the trace from chunked VJPs, against the
    # stored dual: eigenvalues to 1e-8 relative, trace to round-off.
    cfg, p, X = small_case(norm, "tanh", C=3, T=6)
    a = fisher_dual(p, X, cfg, k=3)
    b = fisher_dual(p, X, cfg, route="matrix-free", k=3, chunk=5)
    assert b.dual is None and b.route == "matrix-free"
    np.testing.assert_allclose(b.eigenvalues, a.eigenvalues, rtol=1e-8)
    assert b.trace == pytest.approx(a.trace, rel=1e-12)
    assert b.m_lambda == pytest.approx(a.m_lambda, rel=1e-12)


@pytest.mark.parametrize("norm", ["none", "last-mean", "last-bn", "layer"])
@pytest.mark.parametrize("C", [1, 3])
def test_separable_route_equals_full_batch_route(norm, C):
    """Two independent torch.func routes: per-sample Jacobians + the exact output-map Jacobian
    (_dual_separable) against full-batch VJPs that treat every sample as coupled (_dual_general).
    Same sums in another order: agreement to round-off, bounded by 1e-12 relative in float64."""
    from normfield.fisher.dual_general import _dual_general, _dual_separable

    cfg, p, X = small_case(norm, "tanh", C=C + 3 if norm == "layer" else C, T=7)  # layer norm: C >= 3
    a = _dual_separable(p, X, cfg).numpy()
    b = _dual_general(p, X, cfg).numpy()
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * np.abs(b).max())


def test_separable_route_refuses_middle_bn():
    from normfield.fisher.dual_general import _dual_separable

    cfg, p, X = small_case("middle-bn", "relu", C=1, T=5)
    with pytest.raises(NormfieldError, match="norm"):
        _dual_separable(p, X, cfg)
