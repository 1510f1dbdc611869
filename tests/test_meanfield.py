"""The mean-field Gram map (Joudaki et al. 2023, eq. 3): exact routes vs Monte
Carlo, the fixed point, convergence, equivariance, PSD outputs, refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

import normfield as nf
from normfield.gram.meanfield import gram_map_mc
from normfield.errors import NormfieldError
from normfield.gram.meanfield import _bn_exact_homogeneous


def _random_gram(n: int, seed: int, k: int = 8) -> np.ndarray:
    A = np.random.default_rng(seed).standard_normal((n, k))
    return A @ A.T / k


# Exact routes vs Monte Carlo. Each MC entry is a mean of N i.i.d. bounded-variance
# products; (exact − mc)/se is N(0,1) by the CLT. Scores per test are listed and
# Bonferroni-corrected at family level 1e-3.
@pytest.mark.parametrize("act", ["relu", "leaky_relu:0.3", "identity"])
def test_bn_exact_route_matches_monte_carlo(act):
    n = 5
    G = _random_gram(n, 3)
    ex, err = nf.gram_map(G, act, return_error=True)
    assert err < 1e-12
    mc, se = gram_map_mc(G, act, samples=100_000, seed=11)
    iu = np.triu_indices(n)
    zt = float(norm.isf(1e-3 / (2 * len(iu[0]))))  # 15 scores
    assert np.abs((ex - mc)[iu] / se[iu]).max() < zt


@pytest.mark.parametrize("norm_", ["none", "ln"])
def test_none_and_ln_exact_match_monte_carlo(norm_):
    n = 4
    G = _random_gram(n, 5) + 0.2 * np.eye(n)
    ex = nf.gram_map(G, "tanh", norm=norm_)
    mc, se = gram_map_mc(G, "tanh", norm=norm_, samples=100_000, seed=2)
    iu = np.triu_indices(n)
    zt = float(norm.isf(1e-3 / (2 * len(iu[0]))))  # 10 scores
    assert np.abs((ex - mc)[iu] / se[iu]).max() < zt


def test_ln_is_scale_invariant_and_none_is_kernel():
    G = _random_gram(4, 6) + 0.1 * np.eye(4)
    D = np.diag([0.5, 2.0, 3.0, 1.0])
    assert np.allclose(nf.gram_map(D @ G @ D, "gelu", norm="ln"), nf.gram_map(G, "gelu", norm="ln"), atol=1e-14)
    out = nf.gram_map(G, "erf", norm="none")
    assert out[0, 1] == pytest.approx(float(nf.kernel("erf", G[0, 0], G[1, 1], G[0, 1])), abs=1e-15)


@pytest.mark.parametrize("act", ["relu", "leaky_relu:0.1", "identity"])
def test_fixed_point_is_fixed_by_the_exact_route(act):
    # run the general exact BN route (not the exchangeable shortcut) at G*
    for n in (3, 6):
        Gs = nf.fixed_point(act, n).matrix
        out, err = _bn_exact_homogeneous(nf.get_activation(act), Gs)
        assert np.abs(out - Gs).max() < 1e-13


def test_fixed_point_is_fixed_for_tanh_by_monte_carlo():
    n = 4
    Gs = nf.fixed_point("tanh", n).matrix
    mc, se = gram_map_mc(Gs, "tanh", samples=100_000, seed=3)
    iu = np.triu_indices(n)
    zt = float(norm.isf(1e-3 / (2 * len(iu[0]))))  # 10 scores
    assert np.abs((mc - Gs)[iu] / se[iu]).max() < zt


@pytest.mark.parametrize("act", ["relu", "leaky_relu:0.2"])
def test_trajectory_from_non_exchangeable_start_converges_to_G_star(act):
    n = 5
    G0 = _random_gram(n, 9, k=3)  # rank 3: far from exchangeable
    T = nf.mean_field_trajectory(G0, act, 40)
    assert T.shape == (41, n, n) and np.array_equal(T[0], G0)
    Gs = nf.fixed_point(act, n).matrix
    dist = np.linalg.norm(T - Gs, axis=(1, 2))
    assert dist[0] > 0.1 and dist[-1] < 1e-6
    assert dist[40] < dist[20] < dist[10] < dist[1]


def test_permutation_equivariance():
    n = 5
    G = _random_gram(n, 4) + 0.1 * np.eye(n)
    P = np.eye(n)[[3, 0, 4, 1, 2]]
    for act, norm_ in (("relu", "bn"), ("leaky_relu:0.2", "bn"), ("tanh", "none"), ("gelu", "ln")):
        a = nf.gram_map(P @ G @ P.T, act, norm=norm_)
        b = P @ nf.gram_map(G, act, norm=norm_) @ P.T
        assert np.abs(a - b).max() < 1e-13, (act, norm_)


def test_batch_two_bn_is_always_G_star():
    G = np.array([[2.0, 0.3], [0.3, 0.5]])
    for act in ("tanh", "gelu", "relu"):
        assert np.allclose(nf.gram_map(G, act), nf.fixed_point(act, 2).matrix, atol=1e-15)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=6),
    rank=st.integers(min_value=1, max_value=6),
    seed=st.integers(min_value=0, max_value=10_000),
    act=st.sampled_from(["relu", "leaky_relu:0.2", "identity", "tanh"]),
    norm_=st.sampled_from(["bn", "none", "ln"]),
)
def test_outputs_are_psd(n, rank, seed, act, norm_):
    A = np.random.default_rng(seed).standard_normal((n, rank))
    G = A @ A.T + 1e-3 * np.eye(n)
    if norm_ == "bn" and act == "tanh":
        out = nf.gram_map(G, act, norm=norm_, samples=2_000, seed=seed)  # MC: average of PSD outer products
    else:
        out = nf.gram_map(G, act, norm=norm_)
    assert np.allclose(out, out.T, atol=1e-14)
    ev = np.linalg.eigvalsh(out)
    assert ev[0] >= -1e-12 * max(1.0, ev[-1])


def test_mc_is_seeded():
    G = _random_gram(3, 1)
    a = gram_map_mc(G, "tanh", samples=5_000, seed=4)
    b = gram_map_mc(G, "tanh", samples=5_000, seed=4)
    c = gram_map_mc(G, "tanh", samples=5_000, seed=5)
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[0], c[0])


def test_refusals():
    good = np.eye(3)
    with pytest.raises(NormfieldError, match="G"):
        nf.gram_map(np.ones((1, 1)), "relu")  # n < 2 under BN
    with pytest.raises(NormfieldError, match="G"):
        nf.gram_map(np.diag([1.0, -1.0, 1.0]), "relu")  # negative variance
    with pytest.raises(NormfieldError, match="positive semi-definite"):
        nf.gram_map(np.array([[1.0, 2.0], [2.0, 1.0]]), "relu")
    with pytest.raises(NormfieldError, match="square"):
        nf.gram_map(np.ones((2, 3)), "relu")
    with pytest.raises(NormfieldError, match="symmetric"):
        nf.gram_map(np.array([[1.0, 0.5], [0.0, 1.0]]), "relu")
    with pytest.raises(NormfieldError, match="activation"):
        nf.gram_map(good, "nope")
    with pytest.raises(NormfieldError, match="norm"):
        nf.gram_map(good, "relu", norm="group")
    with pytest.raises(NormfieldError, match="zero standard deviation"):
        nf.gram_map(np.ones((3, 3)), "relu")  # identical samples
    with pytest.raises(NormfieldError, match="layer norm"):
        nf.gram_map(np.diag([1.0, 0.0, 1.0]), "relu", norm="ln")
    with pytest.raises(NormfieldError, match="method"):
        nf.gram_map(_random_gram(3, 2), "tanh", method="exact")
    with pytest.raises(NormfieldError, match="NaN"):
        nf.gram_map(np.array([[1.0, np.nan], [np.nan, 1.0]]), "relu")
    with pytest.raises(NormfieldError, match="depth"):
        nf.mean_field_trajectory(good, "relu", -1)
    with pytest.raises(NormfieldError, match="samples"):
        gram_map_mc(good, "relu", samples=1)
    with pytest.raises(NormfieldError, match="device"):
        gram_map_mc(good, "relu", device="tpu")
    # one sample is fine without batch statistics
    assert nf.gram_map(np.ones((1, 1)), "relu", norm="none")[0, 0] == pytest.approx(0.5)
