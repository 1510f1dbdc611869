"""Tests of the finite-width Gram chain simulator (normfield.gram.chain)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from normfield.errors import NormfieldError
from normfield.gram.chain import psd_sqrt, simulate_chain
from normfield.gram.measure import gram_chain, summarize_chain


# --- tier 1: exact identities -------------------------------------------------------------------

@pytest.mark.parametrize("engine", ["fast", "explicit"])
def test_bn_identity_exact_invariants(engine):
    # Under BN every row of φ(h) has mean 0 and mean square 1, so with σ = identity
    # trace(G_l) = (1/d) Σ_rows ‖φ(row)‖² = n and G_l 1 = 0 exactly (to rounding), at every layer.
    # G_l is then singular, which the fast engine must handle (symmetric square root).
    r = simulate_chain("identity", 40, 5, 6, seeds=3, engine=engine, seed=1)
    G = r.grams
    np.testing.assert_allclose(np.trace(G, axis1=-2, axis2=-1), 5.0, rtol=1e-12)
    np.testing.assert_allclose(G @ np.ones(5), 0.0, atol=1e-12)


def test_ln_identity_unit_diagonal():
    # Under LN every column of φ(h) has mean 0 and mean square 1 over the d units: diag(G) = 1.
    r = simulate_chain("identity", 30, 4, 3, seeds=2, norm="ln", seed=2)
    np.testing.assert_allclose(np.diagonal(r.grams, axis1=-2, axis2=-1), 1.0, rtol=1e-12)


def test_layer0_is_the_input_gram_and_singular_values():
    rng = np.random.default_rng(0)
    h0 = rng.standard_normal((25, 4))
    r = simulate_chain("identity", 25, 4, 0, norm="none", inputs=h0, singular_values=True)
    np.testing.assert_allclose(r.grams[0, 0], h0.T @ h0 / 25, rtol=1e-12)
    np.testing.assert_allclose(r.singular_values[0, 0], np.linalg.svd(h0, compute_uv=False), rtol=1e-10)


def test_psd_sqrt_factors_singular_and_regular():
    rng = np.random.default_rng(1)
    A = rng.standard_normal((3, 6, 6))
    G = torch.as_tensor(A @ A.transpose(0, 2, 1))
    M = torch.eye(6, dtype=torch.float64) - 1.0 / 6  # centring projector: singular
    B = torch.stack([G[0], M, G[2]])
    C = psd_sqrt(B)
    torch.testing.assert_close(C @ C.transpose(-1, -2), B, rtol=0, atol=1e-12)


def test_seeded_reproducible_and_independent_of_batching():
    a = simulate_chain("tanh", 50, 4, 5, seeds=3, seed=7)
    b = simulate_chain("tanh", 50, 4, 5, seeds=3, seed=7)
    c = simulate_chain("tanh", 50, 4, 5, seeds=1, seed=7)
    d = simulate_chain("tanh", 50, 4, 5, seeds=3, seed=8)
    np.testing.assert_array_equal(a.grams, b.grams)
    # seed 0's random stream does not depend on K; the batched products over K seeds may split
    # their reductions differently from a single product (BLAS threading), so round-off only
    np.testing.assert_allclose(a.grams[:1], c.grams, rtol=1e-12, atol=1e-14)
    assert not np.allclose(a.grams[:, -1], d.grams[:, -1])
    g = torch.Generator().manual_seed(3)
    e = simulate_chain("tanh", 50, 4, 5, seeds=2, seed=g)
    assert e.grams.shape == (2, 6, 4, 4)


def test_record_layers_and_float32():
    r = simulate_chain("relu", 64, 5, 8, seeds=2, record_layers=[0, 4, 8], dtype="float32")
    assert list(r.layers) == [0, 4, 8] and r.grams.shape == (2, 3, 5, 5)
    # BN + relu: diag(G) = mean of relu(φ)^2 per sample, finite and positive; float32 rounding ~1e-6
    assert np.all(np.isfinite(r.grams)) and np.all(np.diagonal(r.grams, axis1=-2, axis2=-1) > 0)


# --- tier 2: the one-step law of both engines ---------------------------------------------------

@pytest.mark.parametrize("engine", ["fast", "explicit"])
def test_one_step_mean_is_the_input_gram(engine):
    # Without normalization and with σ = identity, E[G_1 | h_0] = G_0 for both engines
    # (rows of h_1 are N(0, G_0)). Each entry of G_1 has variance (G_ii G_jj + G_ij²)/d per seed,
    # so the K-seed mean has sd sqrt((G_ii G_jj + G_ij²)/(dK)); the CLT holds (dK = 12800
    # summands). We allow 4.5 sd per entry: with 4x4 = 16 entries the false-alarm rate is
    # <= 16 * 6.8e-6 ≈ 1e-4 (Bonferroni).
    rng = np.random.default_rng(5)
    d, n, K = 64, 4, 200
    h0 = rng.standard_normal((d, n)) + 0.5 * rng.standard_normal((d, 1))
    r = simulate_chain("identity", d, n, 1, seeds=K, norm="none", engine=engine, inputs=h0, seed=11)
    G0 = r.grams[0, 0]
    mean = r.grams[:, 1].mean(0)
    sd = np.sqrt((np.outer(np.diag(G0), np.diag(G0)) + G0 ** 2) / (d * K))
    assert np.all(np.abs(mean - G0) <= 4.5 * sd), (mean - G0) / sd


def _stats(grams_last: np.ndarray, ref: np.ndarray) -> list[np.ndarray]:
    return [grams_last[:, 0, 1], np.linalg.norm(grams_last - ref, axis=(-2, -1)),
            np.linalg.eigvalsh(grams_last)[:, -1]]


@pytest.mark.parametrize("activation, norm", [("identity", "bn"), ("tanh", "ln"), ("relu", "none")])
def test_engines_same_law_other_norms(activation, norm):
    # As below, for the singular-G* route (BN + identity: symmetric square root), layer norm and no
    # normalization. Three KS tests at 1e-3/3 each: false-alarm rate <= 1e-3 per case.
    d, n, L, K = 40, 4, 3, 250
    fast = simulate_chain(activation, d, n, L, seeds=K, norm=norm, engine="fast", seed=101).grams[:, -1]
    expl = simulate_chain(activation, d, n, L, seeds=K, norm=norm, engine="explicit", seed=201).grams[:, -1]
    ref = np.concatenate([fast, expl]).mean(0)
    pvals = [stats.ks_2samp(a, b).pvalue for a, b in zip(_stats(fast, ref), _stats(expl, ref))]
    assert min(pvals) > 1e-3 / 3, pvals


@pytest.mark.parametrize("engine", ["fast", "explicit"])
@pytest.mark.parametrize("activation, norm", [("relu", "bn"), ("identity", "bn"), ("tanh", "none")])
def test_one_layer_mean_is_the_mean_field_map(engine, activation, norm):
    # Independent routes: given G_0, the rows of h_1 are i.i.d. N(0, G_0) and φ acts row by row
    # (BN) or not at all, so E[G_1 | h_0] = 𝒢(G_0) exactly at any width (Joudaki et al. eq. 3), computed
    # by the foundation module's exact routes (BN: relu/identity 1-D integral; none: 2-D kernels).
    # Tolerance: the K-seed mean of each entry has sd s_ij/√K (s_ij the sample sd over seeds;
    # K = 400, so the CLT and the plug-in sd are accurate); 4.5 sd per entry, n² = 16 entries:
    # false-alarm rate <= 16 × 6.8e-6 ≈ 1e-4.
    from normfield.gram.meanfield import gram_map

    rng = np.random.default_rng(9)
    d, n, K = 30, 4, 400
    h0 = rng.standard_normal((d, n)) + 0.8 * rng.standard_normal((d, 1)) * np.array([1.0, 0.5, -0.3, 0.0])
    r = simulate_chain(activation, d, n, 1, seeds=K, norm=norm, engine=engine, inputs=h0, seed=21)
    target = gram_map(r.grams[0, 0], activation, norm=norm)
    G1 = r.grams[:, 1]
    sd = G1.std(0, ddof=1) / np.sqrt(K)
    assert np.all(np.abs(G1.mean(0) - target) <= 4.5 * sd + 1e-12), (G1.mean(0) - target) / sd


def _engines_ks(activation, d, n, L, K, *, seeds):
    """G_L of K seeded chains from each engine; the two-sample KS p-values of the three statistics
    of :func:`_stats` against the pooled mean. Returns (fast G_L, pooled mean, p-values)."""
    fast = simulate_chain(activation, d, n, L, seeds=K, engine="fast", seed=seeds[0]).grams[:, -1]
    expl = simulate_chain(activation, d, n, L, seeds=K, engine="explicit", seed=seeds[1]).grams[:, -1]
    ref = np.concatenate([fast, expl]).mean(0)
    return fast, ref, [stats.ks_2samp(a, b).pvalue for a, b in zip(_stats(fast, ref), _stats(expl, ref))]


def test_fast_and_explicit_engines_have_the_same_law():
    # Two-sample Kolmogorov–Smirnov tests on three statistics of G_L (an off-diagonal entry, the
    # distance to the pooled mean, the top eigenvalue) for K = 300 seeded chains per engine.
    # Each test is run at level 1e-3/3 (Bonferroni), so the false-alarm rate of this test is
    # <= 1e-3 if the engines agree in law; seeds are fixed, so the outcome is deterministic.
    d, n, L, K = 48, 4, 3, 300
    fast, ref, pvals = _engines_ks("relu", d, n, L, K, seeds=(100, 200))
    assert min(pvals) > 1e-3 / 3, pvals
    # power: the same test must reject a wrong law (explicit engine at width d/4, whose
    # fluctuations are twice as large)
    wrong = simulate_chain("relu", d // 4, n, L, seeds=K, engine="explicit", seed=300).grams[:, -1]
    pw = [stats.ks_2samp(a, b).pvalue for a, b in zip(_stats(fast, ref), _stats(wrong, ref))]
    assert min(pw) < 1e-3 / 3, pw


# --- measurements ---------------------------------------------------------------------------------

def test_gram_chain_frame_and_summary():
    df = gram_chain("relu", 100, 4, 5, seeds=6, mean_field=False, spectrum=True)
    assert {"seed", "layer", "metric", "value", "activation", "width", "batch", "norm"} <= set(df.columns)
    kappa = df[df.metric == "condition_number"]
    e1 = df[df.metric == "eig_1"].value.to_numpy()
    e4 = df[df.metric == "eig_4"].value.to_numpy()
    np.testing.assert_allclose(kappa.value.to_numpy(), e1 / e4, rtol=1e-12)
    s = summarize_chain(df)
    row = s[(s.metric == "eig_1") & (s.layer == 5)].iloc[0]
    vals = df[(df.metric == "eig_1") & (df.layer == 5)].value.to_numpy()
    assert row["mean"] == pytest.approx(vals.mean()) and row["q95"] == pytest.approx(np.quantile(vals, 0.95))


def test_distance_to_mean_field_is_the_trajectory_from_each_g0():
    from normfield.gram.meanfield import mean_field_trajectory

    r = simulate_chain("relu", 100, 4, 5, seeds=2, inputs="degenerate", seed=4)
    df = gram_chain("relu", 100, 4, 5, result=r, mean_field=True)
    got = df[df.metric == "dist_mean_field"].sort_values(["seed", "layer"]).value.to_numpy().reshape(2, 6)
    for k in range(2):
        traj = mean_field_trajectory(r.grams[k, 0], "relu", 5)
        np.testing.assert_allclose(got[k], np.linalg.norm(r.grams[k] - traj, axis=(-2, -1)), rtol=1e-12)
    assert got[0, 0] == 0.0


def test_distance_to_fixed_point_uses_exact_gstar():
    from normfield.gram.fixed_point import fixed_point
    df = gram_chain("tanh", 200, 5, 4, seeds=3, mean_field=False)
    r = simulate_chain("tanh", 200, 5, 4, seeds=3)
    Gs = fixed_point("tanh", 5).matrix
    got = df[df.metric == "dist_fixed_point"].sort_values(["seed", "layer"]).value.to_numpy()
    np.testing.assert_allclose(got, np.linalg.norm(r.grams - Gs, axis=(-2, -1)).ravel(), rtol=1e-12)


# --- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(batch=1), "batch"),
    (dict(width=0), "width"),
    (dict(depth=-1), "depth"),
    (dict(norm="bogus"), "norm"),
    (dict(engine="slow"), "engine"),
    (dict(dtype="float16"), "dtype"),
    (dict(seeds=0), "seeds"),
])
def test_bad_sizes(kwargs, match):
    base = dict(activation="relu", width=10, batch=3, depth=2)
    base.update(kwargs)
    with pytest.raises(NormfieldError, match=match):
        simulate_chain(**base)


def test_constant_row_named_and_eps_suggested():
    h0 = np.random.default_rng(0).standard_normal((6, 4))
    h0[3] = 2.0
    with pytest.raises(NormfieldError, match=r"row 3.*eps"):
        simulate_chain("relu", 6, 4, 2, inputs=h0)
    r = simulate_chain("relu", 6, 4, 2, inputs=h0, eps=1e-5)  # the suggested fix works
    assert np.all(np.isfinite(r.grams))


def test_nonfinite_and_misshapen_h0():
    h0 = np.ones((6, 4))
    h0[2, 1] = np.nan
    with pytest.raises(NormfieldError, match="NaN"):
        simulate_chain("relu", 6, 4, 2, inputs=h0)
    with pytest.raises(NormfieldError, match="shape"):
        simulate_chain("relu", 6, 4, 2, inputs=np.ones((5, 4)))


def test_explicit_engine_refuses_before_allocating():
    with pytest.raises(NormfieldError, match="fast"):
        simulate_chain("relu", 10**6, 10, 2, engine="explicit")


def test_mean_field_from_switches_to_gstar_within_monte_carlo_error():
    # tanh + BN by plain Monte Carlo (method="mc"): Monte Carlo steps until the trajectory is within
    # 3 standard errors (Frobenius) of G*, then the exact G*.
    from normfield.gram.measure import mean_field_from
    from normfield.gram.fixed_point import fixed_point
    from normfield.gram.meanfield import gram_map
    from normfield.core.activations import get_activation

    act = get_activation("tanh")
    G0 = simulate_chain("tanh", 200, 4, 0, seed=3).grams[0, 0]
    traj = mean_field_from(G0, act, 12, "bn", method="mc", samples=20_000, seed=5)
    Gs = fixed_point("tanh", 4).matrix
    np.testing.assert_array_equal(traj[1], gram_map(G0, act, norm="bn", method="mc", samples=20_000, seed=6))
    hit = [l for l in range(13) if np.array_equal(traj[l], Gs)]
    assert hit and hit == list(range(hit[0], 13))  # once G*, G* to the end
    assert np.linalg.norm(traj[hit[0] - 1] - Gs) < np.linalg.norm(G0 - Gs)


def test_singular_values_are_of_the_raw_uncentred_h():
    # The BN fast path centres the n×n factor, but recorded singular values must be those of the
    # raw h_l, whose rows are N(0, G_{l-1}): s_max²/d estimates λ_max(G_{l-1}) (relu: the 1_n spike,
    # which centring would remove) with relative sd ≈ √(2/d) = 3% at d = 2000; we allow 15% (5 sd).
    r = simulate_chain("relu", 2000, 6, 3, seeds=4, singular_values=True, seed=8)
    s_top = r.singular_values[:, 3, 0]
    lam = np.linalg.eigvalsh(r.grams[:, 2])[:, -1]
    np.testing.assert_allclose(s_top ** 2 / 2000, lam, rtol=0.15)


@pytest.mark.heavy
def test_engines_same_law_heavy():
    # Larger version of the two-sample test (d = 256, n = 8, depth 5, K = 600 per engine), same
    # statistics and Bonferroni level: false-alarm rate <= 1e-3.
    d, n, L, K = 256, 8, 5, 600
    _, _, pvals = _engines_ks("tanh", d, n, L, K, seeds=(1000, 2000))
    assert min(pvals) > 1e-3 / 3, pvals
