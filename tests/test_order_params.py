"""Order parameters and κ's (Karakida et al. 2019, eqs. 5–7, 11): exact special
cases, routes, bookkeeping of layer indices, finite wide nets, refusals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import t as student_t

import normfield as nf
from normfield.claims.foundation import wide_net_cell
from normfield.errors import NormfieldError


@pytest.mark.parametrize("L", [2, 3, 5, 10])
def test_relu_critical_closed_values(L):
    # relu with σ_w² = 2, σ_b² = 0: q̂_t = q_t/2 = 1 and ∫φ'² = 1/2 so q̃_t = 1 in every layer;
    # κ1 = Σ_{l=1}^{L} 1·1/α with α = L − 1.
    op = nf.order_parameters("relu", 2.0, 0.0, L)
    lay = op.layers
    assert np.allclose(lay.qhat_t[:L], 1.0, atol=1e-15)
    assert np.allclose(lay.qtilde_t[1:], 1.0, atol=1e-15)
    assert op.alpha == L - 1
    assert op.kappa1 == pytest.approx(L / (L - 1), rel=1e-14)


def test_relu_first_layers_by_hand():
    # q̂^1_st = I_relu[2, 0] = (2/2π)·J(0)·π... = 2·(1/(2π)) = 1/π; q̃^2_st = 2·I_relu'[q^2, q^2_st]
    op = nf.order_parameters("relu", 2.0, 0.0, 3)
    lay = op.layers.set_index("layer")
    assert lay.loc[1, "qhat_st"] == pytest.approx(1 / math.pi, rel=1e-14)
    c2 = lay.loc[2, "q_st"] / lay.loc[2, "q_t"]
    assert lay.loc[2, "q_st"] == pytest.approx(2 / math.pi, rel=1e-14)
    assert lay.loc[2, "qtilde_st"] == pytest.approx(2 * (math.pi - math.acos(c2)) / (2 * math.pi), rel=1e-14)
    assert lay.loc[1, "qtilde_st"] == pytest.approx(lay.loc[2, "qtilde_st"] * 2 * 0.25, rel=1e-14)  # c1 = 0


def test_boundary_values_and_columns():
    op = nf.order_parameters("tanh", 1.5, 0.1, 4)
    lay = op.layers
    assert list(lay.columns) == ["layer", "q_t", "q_st", "qhat_t", "qhat_st", "qtilde_t", "qtilde_st"]
    assert lay.qhat_t[0] == 1.0 and lay.qhat_st[0] == 0.0  # eq. (3) inputs
    assert lay.qtilde_t[4] == 1.0 and lay.qtilde_st[4] == 1.0  # linear output
    assert math.isnan(lay.q_t[0]) and math.isnan(lay.qhat_t[4]) and math.isnan(lay.qtilde_t[0])


def test_kappas_recomputed_from_layers_with_unequal_widths():
    # bookkeeping of eq. (11): κ1 = Σ_{l=1}^{L} α_{l-1}/α q̃^l_t q̂^{l-1}_t, α = Σ_{l=1}^{L-1} α_l α_{l-1}
    alphas = [2.0, 0.5, 1.5, 1.0]
    op = nf.order_parameters("gelu", 1.7, 0.3, 4, alphas)
    lay = op.layers
    alpha = 0.5 * 2.0 + 1.5 * 0.5 + 1.0 * 1.5
    assert op.alpha == pytest.approx(alpha)
    k1 = sum(alphas[l - 1] / alpha * lay.qtilde_t[l] * lay.qhat_t[l - 1] for l in range(1, 5))
    k2 = sum(alphas[l - 1] / alpha * lay.qtilde_st[l] * lay.qhat_st[l - 1] for l in range(1, 5))
    assert op.kappa1 == pytest.approx(k1, rel=1e-15) and op.kappa2 == pytest.approx(k2, rel=1e-15)
    # order parameters themselves do not depend on widths
    base = nf.order_parameters("gelu", 1.7, 0.3, 4)
    assert np.allclose(base.layers.drop(columns="layer").fillna(-1), lay.drop(columns="layer").fillna(-1))


@pytest.mark.parametrize("act,sw2,sb2", [("relu", 2.0, 0.0), ("relu", 1.3, 0.5), ("erf", 3.0, 0.64),
                                          ("leaky_relu:0.2", 1.5, 0.1), ("sin", 1.2, 0.2)])
def test_quadrature_route_equals_closed_route(act, sw2, sb2):
    a = nf.order_parameters(act, sw2, sb2, 6, method="closed")
    b = nf.order_parameters(act, sw2, sb2, 6, method="quad")
    cols = ["qhat_t", "qhat_st", "qtilde_t", "qtilde_st"]
    x, y = a.layers[cols].to_numpy(), b.layers[cols].to_numpy()
    ok = ~np.isnan(x)
    assert np.abs(x[ok] - y[ok]).max() < 1e-12 * np.abs(x[ok]).max()
    assert abs(a.kappa1 - b.kappa1) < 1e-12 * a.kappa1 and abs(a.kappa2 - b.kappa2) < 1e-12 * a.kappa1


def test_centered_network_has_zero_kappa2():
    op = nf.order_parameters("tanh", 1.5, 0.0, 4)
    assert op.centered and abs(op.kappa2) < 1e-15 and op.kappa1 > 0
    assert not nf.order_parameters("tanh", 1.5, 0.1, 4).centered
    assert not nf.order_parameters("relu", 2.0, 0.0, 4).centered  # relu has a non-zero Gaussian mean


@pytest.mark.parametrize("i,act,sw2,sb2", [(0, "relu", 2.0, 0.0), (1, "tanh", 3.0, 0.64)])
def test_kappas_match_finite_wide_nets(i, act, sw2, sb2):
    # Independent route: explicit random MLPs (width M = 400, L = 3, T = 8 inputs),
    # κ̂ from exact per-sample gradients. The mean of R = 8 independent nets is
    # t-distributed (R − 1 dof) around κ + O(1/M); 2 scores per test, Bonferroni at 1e-3.
    R, M = 8, 400
    rows = [wide_net_cell({"activation": act, "sw2": sw2, "sb2": sb2, "depth": 3, "width": M,
                           "samples": 8, "seed": 1000 * i + r})[0] for r in range(R)]
    op = nf.order_parameters(act, sw2, sb2, 3)
    tt = float(student_t.isf(1e-3 / 4, df=R - 1))
    for key, th in (("kappa1_net", op.kappa1), ("kappa2_net", op.kappa2)):
        v = np.array([r[key] for r in rows])
        tval = (v.mean() - th) / (v.std(ddof=1) / math.sqrt(R))
        assert abs(tval) < tt, (act, key, v.mean(), th)


def test_kappas_match_finite_nets_with_unequal_widths():
    # Same independent route with widths M_l = α_l M, α = (2, 0.5, 1.5): checks the
    # α_{l-1}/α weights of eq. (11) and α = Σ_{l=1}^{L-1} α_l α_{l-1} (using α_l instead
    # of α_{l-1} changes κ1 by > 20% here, ~10 standard errors of the mean over
    # R = 16 nets, whose threshold t_15 (Bonferroni 1e-3 over 2 scores) is ~4.6).
    R, M, alphas = 16, 400, [2.0, 0.5, 1.5]
    rows = [wide_net_cell({"activation": "gelu", "sw2": 1.7, "sb2": 0.3, "depth": 3, "width": M,
                           "alphas": alphas, "samples": 4, "seed": 77 + r})[0] for r in range(R)]
    op = nf.order_parameters("gelu", 1.7, 0.3, 3, alphas)
    lay, a = op.layers, alphas + [1.0]
    shifted = sum(a[l] / op.alpha * lay.qtilde_t[l] * lay.qhat_t[l - 1] for l in range(1, 4))  # α_l for α_{l-1}
    assert abs(shifted - op.kappa1) > 0.2 * op.kappa1  # the test has power against that slip
    tt = float(student_t.isf(1e-3 / 4, df=R - 1))
    for key, th in (("kappa1_net", op.kappa1), ("kappa2_net", op.kappa2)):
        v = np.array([r[key] for r in rows])
        tval = (v.mean() - th) / (v.std(ddof=1) / math.sqrt(R))
        assert abs(tval) < tt, (key, v.mean(), th)


def test_to_dict_is_json():
    d = nf.order_parameters("relu", 2.0, 0.1, 3).to_dict()
    s = json.dumps(d)  # no NaN
    assert "NaN" not in s
    assert {"kappa1", "kappa2", "alpha", "layers"} <= set(d)
    assert {"q_t", "q_st", "qhat_t", "qhat_st", "qtilde_t", "qtilde_st"} <= set(d["layers"][1])


def test_refusals():
    with pytest.raises(NormfieldError, match="depth"):
        nf.order_parameters("relu", 2.0, 0.0, 1)
    with pytest.raises(NormfieldError, match="sw2"):
        nf.order_parameters("relu", 0.0, 0.0, 3)
    with pytest.raises(NormfieldError, match="sb2"):
        nf.order_parameters("relu", 2.0, -1.0, 3)
    with pytest.raises(NormfieldError, match="alphas"):
        nf.order_parameters("relu", 2.0, 0.0, 3, [1.0, 1.0])
    with pytest.raises(NormfieldError, match="alphas"):
        nf.order_parameters("relu", 2.0, 0.0, 3, [1.0, -1.0, 1.0])
    with pytest.raises(NormfieldError, match="activation"):
        nf.order_parameters("nope", 2.0, 0.0, 3)
    with pytest.raises(NormfieldError, match="overflow"):
        nf.order_parameters("identity", 1e200, 0.0, 5)
