"""The moments of :mod:`normfield.infinite.expect`: closed forms against the quasi-Monte Carlo route.

Every exact route (pointwise closed forms, exact batch norm, affine maps, sums of
independent terms, exact averages over the input's coordinates) is checked
against the general route on the same expression, and the general route's
stated error (``3‖SE‖_F`` over 8 independent scramblings) is checked to cover
the actual error. Seeds are fixed, so each check is one deterministic draw of a
3σ bound; several seeds are used where the honesty itself is the claim.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from normfield.core.activations import get_activation
from normfield.gram.bn_map import bn_map_cv
from normfield.infinite import Activation, BatchNorm, Dense, LayerNorm, MeanSubtract, Residual, Serial, kernel
from normfield.infinite.expect import evaluate, general_route
from normfield.infinite.ops import ActOp, BNTrainOp
from normfield.infinite.state import OpNode, SumNode


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one thread


def _x(T=4, d=6, seed=0):
    return np.random.default_rng(seed).standard_normal((T, d))


def _stated(m):
    se = lambda a: np.linalg.norm(a.std(0, ddof=1) / np.sqrt(a.shape[0]))  # noqa: E731
    return 3 * se(m.nngp), 3 * se(m.ntk)


def _compare(state, node_fn, seed=1, tol=1e-3):
    """(|general − exact|_F, stated) for nngp and ntk of node_fn(state.expr)."""
    g = general_route(node_fn(state.expr), state.components, seed=seed, tol=tol)
    e = evaluate(node_fn(state.expr), state.components, seed=0, tol=tol)
    sn, sk = _stated(g)
    dn = np.linalg.norm(g.nngp.mean(0) - e.nngp[0])
    dk = np.linalg.norm(g.ntk.mean(0) - e.ntk[0])
    return dn, sn + e.qerr, dk, sk + e.qerr


@pytest.mark.parametrize("act", ["relu", "tanh", "erf"])
@pytest.mark.parametrize("seed", [1, 2])
def test_pointwise_closed_form_vs_general(act, seed):
    st = kernel([Dense(8, sb2=0.2)], _x()).state
    a = get_activation(act)
    dn, sn, dk, sk = _compare(st, lambda e: OpNode(ActOp(a), e), seed=seed)
    assert dn <= sn and dk <= sk, (dn, sn, dk, sk)
    assert sn < 1e-2 and sk < 0.5  # the route did converge towards the target


@pytest.mark.parametrize("act", ["relu", "identity", "leaky_relu:0.2"])
def test_exact_batch_norm_vs_general(act):
    # exact BN (+ homogeneous σ) with γ, β in the NTK, against the polar quasi-Monte Carlo route
    st = kernel([Dense(8, sb2=0.1), BatchNorm()], _x(T=5)).state
    bn = st.expr  # OpNode(BN, Leaf); fresh nodes below so that no cached moments are reused
    a = get_activation(act)
    dn, sn, dk, sk = _compare(st, lambda e: OpNode(ActOp(a), OpNode(bn.op, bn.child)), seed=3, tol=0.1)
    assert dn <= sn and dk <= sk, (dn, sn, dk, sk)


def test_batch_norm_nngp_vs_bn_map_cv():
    # independent route for BN + tanh (ε = 0): the polynomial control variate of gram.bn_map
    x = _x(T=5)
    res = kernel([Dense(16, bias=False, parametrization="ntk"), BatchNorm(eps=0.0, affine=False),
                  Activation("tanh")], x, tol=3e-3)
    G = kernel([Dense(16, bias=False, parametrization="ntk")], x).nngp
    ref, err, _ = bn_map_cv(get_activation("tanh"), G, tol=1e-3, seed=0)
    assert np.linalg.norm(res.nngp - ref) <= res.error + err


def test_layer_norm_closed_form_vs_general():
    st = kernel([Dense(8, sb2=0.2), Activation("relu"), Dense(8), LayerNorm()], _x()).state
    dn, sn, dk, sk = _compare(st, lambda e: OpNode(ActOp(get_activation("tanh")), e), seed=4, tol=0.05)
    assert dn <= sn and dk <= sk, (dn, sn, dk, sk)


def test_train_bn_annihilates_the_constant_mode():
    # J 1 = 0 for train-mode BN: the propagated NTK and the features are orthogonal to 1
    # (exactly per draw on the general route, so to rounding; the exact route to its error)
    one = np.ones(5)
    st = kernel([Dense(8), BatchNorm(affine=False)], _x(T=5)).state
    assert abs(one @ st.ntk @ one) <= st.error + 1e-10 * np.abs(st.ntk).max()
    assert np.abs(st.nngp @ one).max() <= st.error + 1e-10
    node = OpNode(BNTrainOp(1e-5, False), st.expr.child)
    g = general_route(node, st.components, seed=0, tol=1.0)
    assert abs(one @ g.ntk.mean(0) @ one) < 1e-10 * np.abs(g.ntk).max()
    # with γ, β the β-gradient adds exactly 11ᵀ along 1 (1ᵀ11ᵀ1 = T²)
    st2 = kernel([Dense(8), BatchNorm()], _x(T=5)).state
    assert abs(one @ st2.ntk @ one - 25.0) <= st2.error + 1e-9


def test_input_average_is_exact():
    # an activation on the input is the finite average over its d coordinates
    x = _x(T=3, d=7)
    res = kernel([Activation("tanh")], x)
    y = np.tanh(x)
    np.testing.assert_allclose(res.nngp, y @ y.T / 7, rtol=1e-13)
    np.testing.assert_allclose(res.mean, y.mean(1), rtol=1e-13)
    assert res.error < 1e-15 and not res.ntk.any()  # replicates coincide: the spread is rounding
    # batch norm of the input: per coordinate over the batch, written out
    res = kernel([BatchNorm(affine=False, eps=1e-3)], x)
    c = x - x.mean(0)
    z = c / np.sqrt((c * c).mean(0) + 1e-3)
    np.testing.assert_allclose(res.nngp, z @ z.T / 7, rtol=1e-12, atol=1e-14)


def test_eval_bn_and_mean_subtract_exact_vs_general():
    n = 8
    net = [Dense(n, sb2=0.3), Activation("relu"),
           BatchNorm(mode="eval", running_mean=np.linspace(0.0, 0.5, n), running_var=np.linspace(0.5, 1.5, n),
                     weight=np.linspace(0.8, 1.2, n), bias=np.linspace(-0.1, 0.1, n))]
    st = kernel(net, _x()).state
    op = st.expr.op
    dn, sn, dk, sk = _compare(kernel(net[:2], _x()).state, lambda e: OpNode(op, e), seed=5)
    assert dn <= sn and dk <= sk, (dn, sn, dk, sk)
    ms = kernel(net[:2] + [MeanSubtract()], _x())
    M = np.eye(4) - 0.25
    pre = kernel(net[:2], _x())
    np.testing.assert_allclose(ms.nngp, M @ pre.nngp @ M, atol=1e-13)
    np.testing.assert_allclose(ms.ntk, M @ pre.ntk @ M, atol=1e-11)


def test_residual_sum_exact_vs_general():
    # relu features + a fresh branch: the cross term m_s m_bᵀ + m_b m_sᵀ is exact, the NTKs add
    net = [Dense(8, sb2=0.1), Activation("relu"), Residual(Serial(Dense(8), Activation("relu")))]
    res = kernel(net, _x())
    st = res.state
    s_mean = res.states[1][1].mean
    b = res.states[-2][1]
    cross = np.outer(s_mean, b.mean) + np.outer(b.mean, s_mean)
    np.testing.assert_allclose(res.nngp, res.states[1][1].nngp + b.nngp + cross, atol=1e-12)
    assert np.abs(cross).max() > 0.05  # the cross term matters here
    g = general_route(SumNode(st.expr.children), st.components, seed=6, tol=1e-3)
    sn, sk = _stated(g)
    assert np.linalg.norm(g.nngp.mean(0) - res.nngp) <= sn + res.error
    assert np.linalg.norm(g.ntk.mean(0) - res.ntk) <= sk + res.error


def test_stated_error_carries_through_layers():
    # a quasi-Monte Carlo step followed by exact layers: the replicate spread propagates,
    # and the stated error covers the distance to the same chain computed with a much smaller error
    x = _x(T=5)
    net = [Dense(8), BatchNorm(), Activation("tanh"), Dense(8), Activation("relu")]
    coarse = kernel(net, x, tol=0.3, seed=1)
    fine = kernel(net, x, tol=0.03, seed=2)
    assert coarse.states[2][1].error > 0 and coarse.error > 0
    d = max(np.linalg.norm(coarse.nngp - fine.nngp), np.linalg.norm(coarse.ntk - fine.ntk))
    assert d <= coarse.error + fine.error, (d, coarse.error, fine.error)


def test_eval_bn_on_the_input_pairs_units_with_their_coefficients():
    # on the input, unit j is coordinate j and carries its own running statistics: an exact
    # average over j, written out (the module computes the same), not an independent draw
    T, d = 4, 5
    x = _x(T=T, d=d)
    rm, rv = np.linspace(-0.5, 0.5, d), np.linspace(0.5, 2.0, d)
    w, b = np.linspace(0.5, 1.5, d), np.linspace(-0.2, 0.2, d)
    layer = BatchNorm(mode="eval", running_mean=rm, running_var=rv, weight=w, bias=b, eps=1e-5)
    res = kernel([layer, Activation("tanh")], x)
    y = np.tanh(w * (x - rm) / np.sqrt(rv + 1e-5) + b)
    np.testing.assert_allclose(res.nngp, y @ y.T / d, rtol=1e-12)
    # NTK: the per-unit parameters w_j, b_j: ∂y/∂w = σ'·x̂, ∂y/∂b = σ'
    xhat = (x - rm) / np.sqrt(rv + 1e-5)
    dy = 1.0 - y * y
    ntk = ((dy * xhat) @ (dy * xhat).T + dy @ dy.T) / d
    np.testing.assert_allclose(res.ntk, ntk, rtol=1e-12)
    with torch.no_grad():
        out = layer.module(d).eval()(torch.as_tensor(x))
    np.testing.assert_allclose(np.tanh(out.numpy()), y, rtol=1e-12)
