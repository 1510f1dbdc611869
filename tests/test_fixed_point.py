"""The BN fixed point G*: closed forms, the general route, spectrum, a direct
simulation of one BN layer, and refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

import normfield as nf
from normfield.errors import NormfieldError

ALL = ["relu", "leaky_relu:0.2", "identity", "tanh", "erf", "gelu", "silu", "sigmoid", "sin", "selu"]


def J(x: float) -> float:
    return (math.sqrt(1 - x * x) + (math.pi - math.acos(x)) * x) / math.pi


@pytest.mark.parametrize("n", [2, 3, 4, 7, 16, 100, 1000])
def test_relu_is_karakida_S70(n):
    fp = nf.fixed_point("relu", n)
    assert fp.diagonal == pytest.approx(0.5, abs=1e-15)
    assert fp.off_diagonal == pytest.approx(0.5 * J(-1 / (n - 1)), abs=1e-15)


@pytest.mark.parametrize("act", ["relu", "leaky_relu:0.2", "leaky_relu:3", "identity"])
@pytest.mark.parametrize("n", [2, 3, 4, 9, 64])
def test_homogeneous_closed_form_equals_sphere_quadrature(act, n):
    c = nf.fixed_point(act, n, method="closed")
    q = nf.fixed_point(act, n, method="quad")
    assert q.diagonal == pytest.approx(c.diagonal, abs=1e-13)
    assert q.off_diagonal == pytest.approx(c.off_diagonal, abs=1e-13)


@pytest.mark.parametrize("act", ALL)
def test_batch_two_is_the_two_point_sphere(act):
    # n = 2: BN maps every row to ±(1, -1) with probability 1/2 each
    a = nf.get_activation(act)
    s = a.numpy(np.array([1.0, -1.0]))
    fp = nf.fixed_point(act, 2)
    assert fp.diagonal == pytest.approx(0.5 * (s[0] ** 2 + s[1] ** 2), abs=1e-15)
    assert fp.off_diagonal == pytest.approx(s[0] * s[1], abs=1e-15)


@pytest.mark.parametrize("act", ALL)
def test_spectrum_and_condition_number(act):
    n = 6
    fp = nf.fixed_point(act, n)
    ev = np.linalg.eigvalsh(fp.matrix)[::-1]
    assert np.allclose(np.sort(fp.eigenvalues)[::-1], fp.eigenvalues)  # largest first
    assert np.allclose(ev, fp.eigenvalues, atol=1e-13)
    b, c = fp.diagonal, fp.c_star
    assert fp.eigenvalue_ones == pytest.approx(b * (1 + (n - 1) * c), abs=1e-13)
    assert fp.eigenvalue_rest == pytest.approx(b * (1 - c), abs=1e-13)
    assert fp.matrix @ np.ones(n) == pytest.approx(fp.eigenvalue_ones * np.ones(n), abs=1e-13)
    if fp.singular:
        assert fp.condition_number == math.inf
    else:
        assert fp.condition_number == pytest.approx(ev[0] / ev[-1], rel=1e-10)


def test_identity_is_singular():
    # BN output rows sum to 0, so with identity activation G*·1 = 0 (κ = inf)
    for n in (2, 3, 10):
        fp = nf.fixed_point("identity", n)
        assert fp.singular and fp.condition_number == math.inf
        assert fp.eigenvalues[-1] == 0.0
        assert fp.to_dict()["eigenvalues"][-1] == 0.0
    # odd activations at n = 2: σ(-1) = -σ(1) so G* = σ(1)² [[1, -1], [-1, 1]]
    assert nf.fixed_point("tanh", 2).singular


def test_one_bn_layer_simulation():
    # Direct simulation of one BN layer of width d: rows h_r ~ N(0, I_n) i.i.d.,
    # x = σ(BN(h)), Gram G = xᵀx/d. E[G] = G* exactly (BN(h_r) is uniform on the
    # sphere), so (G_ij − G*_ij)/se_ij is N(0,1) by the CLT over d = 100k rows
    # (bounded summands). 3 activations × 10 entries (i <= j, n = 4) = 30 scores,
    # Bonferroni at family level 1e-3 → |z| < 4.15.
    n, d = 4, 100_000
    zt = float(norm.isf(1e-3 / (2 * 30)))
    gen = torch.Generator().manual_seed(7)
    for act in ("tanh", "gelu", "selu"):
        a = nf.get_activation(act)
        h = torch.randn(d, n, generator=gen, dtype=torch.float64)
        y = h - h.mean(1, keepdim=True)
        x = a(y / y.pow(2).mean(1, keepdim=True).sqrt()).numpy()
        outer = x[:, :, None] * x[:, None, :]
        G = outer.mean(0)
        se = outer.std(0, ddof=1) / math.sqrt(d)
        iu = np.triu_indices(n)
        z = (G - nf.fixed_point(act, n).matrix)[iu] / se[iu]
        assert np.abs(z).max() < zt, (act, z)


def test_independent_of_input_scale_and_exchangeable_input():
    # any exchangeable input a I + b 11ᵀ (a > 0) maps to G* through the exact BN map
    n = 5
    fp = nf.fixed_point("relu", n)
    for a, b in ((1.0, 0.0), (0.3, 2.0), (7.0, 0.5)):
        G = a * np.eye(n) + b * np.ones((n, n))
        assert np.allclose(nf.gram_map(G, "relu"), fp.matrix, atol=1e-14)


def test_to_dict_contract():
    d = nf.fixed_point("leaky_relu:0.2", 3).to_dict()
    for k in ("activation", "batch", "diagonal", "off_diagonal", "eigenvalues", "condition_number"):
        assert k in d
    assert d["batch"] == 3 and len(d["eigenvalues"]) == 3
    assert d["eigenvalues"] == sorted(d["eigenvalues"], reverse=True)


def test_custom_callable():
    fp = nf.fixed_point(lambda x: torch.tanh(x), 5)
    assert fp.diagonal == pytest.approx(nf.fixed_point("tanh", 5).diagonal, abs=1e-15)


def test_refusals():
    with pytest.raises(NormfieldError, match="batch"):
        nf.fixed_point("relu", 1)
    with pytest.raises(NormfieldError, match="batch"):
        nf.fixed_point("relu", 2.5)
    with pytest.raises(NormfieldError, match="activation"):
        nf.fixed_point("nope", 4)
    with pytest.raises(NormfieldError, match="method"):
        nf.fixed_point("tanh", 4, method="closed")
    with pytest.raises(NormfieldError, match="method"):
        nf.fixed_point("tanh", 4, method="fast")
