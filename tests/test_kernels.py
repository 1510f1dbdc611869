"""Kernels E[σσ], E[σ'σ'], E[σ]: closed forms vs quadrature, quadrature vs
Monte Carlo, NumPy fast paths vs the torch definitions, refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

import normfield as nf
from normfield.core.kernels import arccos_kernel
from normfield.core.kernels import _numpy_pair
from normfield.errors import NormfieldError

CLOSED = ["relu", "leaky_relu:0.2", nf.get_activation("leaky_relu", slope=-0.5), "erf", "sin", "identity"]


def _grid():
    qs = [0.0, 0.3, 2.5]
    cs = [-1.0, -0.99, -0.5, 0.0, 0.5, 0.99, 1.0]
    g = np.array([(a, b, c * math.sqrt(a * b)) for a in qs for b in qs for c in cs])
    return g[:, 0], g[:, 1], g[:, 2]


@pytest.mark.parametrize("act", CLOSED)
def test_closed_forms_match_quadrature(act):
    q11, q22, q12 = _grid()
    for fn in (nf.kernel, nf.derivative_kernel):
        cl = fn(act, q11, q22, q12, method="closed")
        qd = fn(act, q11, q22, q12, method="quad")
        # scale: √(E σ(u)² E σ(v)²) (Cauchy–Schwarz bound of the kernel), or 1
        scale = np.sqrt(np.abs(fn(act, q11, q11, q11)) * np.abs(fn(act, q22, q22, q22)))
        err = np.abs(cl - qd) / np.maximum(scale, 1.0)
        assert err.max() < 1e-12, (act, fn.__name__, err.max())
    q = np.array([0.0, 0.1, 1.0, 7.0])
    assert np.abs(nf.mean_activation(act, q, method="closed") - nf.mean_activation(act, q, method="quad")).max() < 1e-13


def test_leaky_relu_special_slopes():
    q11, q22, q12 = _grid()
    # slope 1 is the identity; slope 0 is relu
    assert np.allclose(nf.kernel("leaky_relu:1", q11, q22, q12), q12, atol=1e-15, rtol=0)
    assert np.allclose(nf.derivative_kernel("leaky_relu:1", q11, q22, q12), 1.0, atol=1e-15, rtol=0)
    assert np.allclose(nf.kernel("leaky_relu:0", q11, q22, q12), nf.kernel("relu", q11, q22, q12), atol=1e-15)


def test_known_values():
    # relu at equal variance and c = 0: q/(2π); derivative kernel at c = 0: 1/4
    assert float(nf.kernel("relu", 2.0, 2.0, 0.0)) == pytest.approx(2.0 / (2 * math.pi), rel=1e-15)
    assert float(nf.derivative_kernel("relu", 1.0, 3.0, 0.0)) == pytest.approx(0.25, rel=1e-15)
    assert float(nf.kernel("relu", 2.0, 2.0, 2.0)) == pytest.approx(1.0, rel=1e-15)  # E relu² = q/2
    assert float(arccos_kernel(1.0)) == pytest.approx(1.0, abs=1e-15)
    assert float(arccos_kernel(-1.0)) == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("name", nf.list_activations())
def test_numpy_fast_paths_match_torch_definitions(name):
    act = nf.get_activation(name if name != "leaky_relu" else "leaky_relu:0.3")
    f, df = _numpy_pair(act)
    x = np.linspace(-9, 9, 2001)
    x = x[x != 0.0]
    assert np.allclose(f(x), act.numpy(x), rtol=2e-15, atol=2e-15)
    assert np.allclose(df(x), act.numpy_derivative(x), rtol=2e-15, atol=2e-15)


# Quadrature vs Monte Carlo for activations without a closed form.
# Each estimate is a mean of N = 100k i.i.d. products with finite variance, so
# (mc − quad)/se is N(0,1) up to O(N^-1/2) (CLT). 5 activations × 2 covariances ×
# 3 quantities = 30 scores: Bonferroni at family level 1e-3 gives z < 4.15.
MC_ACTS = ["tanh", "gelu", "silu", "sigmoid", "selu"]
Z_TOL = float(norm.isf(1e-3 / (2 * 30)))


@pytest.mark.parametrize("i,act", list(enumerate(MC_ACTS)))
def test_quadrature_matches_monte_carlo(i, act):
    a = nf.get_activation(act)
    gen = torch.Generator().manual_seed(100 + i)
    N = 100_000
    for q11, q22, c in ((1.0, 1.0, 0.6), (2.0, 0.5, -0.8)):
        q12 = c * math.sqrt(q11 * q22)
        z = torch.randn(N, 2, generator=gen, dtype=torch.float64)
        u = math.sqrt(q11) * z[:, 0]
        v = math.sqrt(q22) * (c * z[:, 0] + math.sqrt(1 - c * c) * z[:, 1])
        for vals, th in (
            (a(u) * a(v), nf.kernel(a, q11, q22, q12)),
            (a.derivative(u) * a.derivative(v), nf.derivative_kernel(a, q11, q22, q12)),
            (a(u), nf.mean_activation(a, q11)),
        ):
            m, se = float(vals.mean()), float(vals.std() / math.sqrt(N))
            assert abs(m - float(th)) / se < Z_TOL, (act, q11, q22, c, m, float(th), se)


def test_custom_callable_uses_quadrature():
    k_custom = nf.kernel(lambda x: torch.tanh(x), 1.3, 0.4, 0.5)
    k_name = nf.kernel("tanh", 1.3, 0.4, 0.5)
    assert float(k_custom) == pytest.approx(float(k_name), abs=1e-15)
    dk = nf.derivative_kernel(lambda x: torch.tanh(x), 1.3, 0.4, 0.5)  # autograd derivative
    assert float(dk) == pytest.approx(float(nf.derivative_kernel("tanh", 1.3, 0.4, 0.5)), abs=1e-14)


def test_error_estimates_returned_and_small():
    v, e = nf.kernel("tanh", [0.5, 1.0, 4.0], 1.0, 0.3, return_error=True)
    assert v.shape == (3,) and np.all(e >= 0) and np.all(e < 1e-9)
    v, e = nf.kernel("relu", 1.0, 1.0, 0.3, return_error=True)
    assert float(e) == 0.0


def test_refusals():
    with pytest.raises(NormfieldError, match="activation"):
        nf.kernel("nope", 1.0, 1.0, 0.0)
    with pytest.raises(NormfieldError, match="q11"):
        nf.kernel("relu", -1.0, 1.0, 0.0)
    with pytest.raises(NormfieldError, match="q12"):
        nf.kernel("tanh", 1.0, 1.0, 2.0)
    with pytest.raises(NormfieldError, match="method"):
        nf.kernel("tanh", 1.0, 1.0, 0.0, method="closed")
    with pytest.raises(NormfieldError, match="method"):
        nf.derivative_kernel("relu", 1.0, 1.0, 0.0, method="exact")
    with pytest.raises(NormfieldError, match="q"):
        nf.mean_activation("relu", -0.1)
    with pytest.raises(NormfieldError):
        nf.kernel("relu", float("inf"), 1.0, 0.0)
