"""The curvature of a loss: the cross-entropy Fisher (GGN) and the loss Hessian, one operator.

Tiers: (1) brute force — the full Jacobian (or Hessian) by plain autograd on small float64 models
with train-mode BatchNorm1d, the matrix formed explicitly, its eigenvalues and trace against
``nf.analyze`` and :class:`CurvatureOperator`; (2) a peer oracle (curvlinops' GGN); (3) the
operator's bookkeeping (product counts, warm starts, the what-if variant's products); (4) bad input.

Tolerances: the dense routes are exact up to float64 round-off in a P ≈ 100 problem (eigvalsh of
a ~100×100 matrix built from O(1) entries: backward error ~1e-15·‖F‖, we allow 1e-10·λ_max). The
Lanczos route stops on Kahan's residual bound, so each eigenvalue lies within its reported error
``eigenvalue_errors`` (plus round-off) of a true one.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from brute import explicit_fisher, explicit_jacobian
from torch import nn

import normfield as nf
from normfield.analyze import Accuracy, CurvatureOperator
from normfield.errors import NormfieldError

DT = torch.float64
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _mlp_bn(d=5, h=7, c=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), nn.BatchNorm1d(h), nn.Tanh(), nn.Linear(h, c)).to(DT)


def _x(T=12, d=5, seed=1):
    return torch.randn(T, d, generator=torch.Generator().manual_seed(seed), dtype=DT)


def test_cross_entropy_fisher_against_the_explicit_matrix():
    model, x = _mlp_bn(), _x()
    out, J = explicit_jacobian(model, (x,))
    F = explicit_fisher(out, J, "cross-entropy")
    w = np.linalg.eigvalsh(F)[::-1]
    dense = nf.analyze(model, x, loss="cross-entropy", method="dense", layers="none", k=4)
    assert dense.curvature == "fisher-cross-entropy" and dense.fisher.curvature == "fisher-cross-entropy"
    n = len(dense.fisher.spectrum)
    np.testing.assert_allclose(dense.fisher.spectrum, w[:n], rtol=0, atol=1e-10 * w[0])
    assert np.all(np.abs(w[n:]) <= 1e-10 * w[0])  # rank(F) <= T·C: the rest of F's spectrum is zero
    assert dense.fisher.trace == pytest.approx(np.trace(F), rel=1e-10)
    lz = nf.analyze(model, x, loss="cross-entropy", method="lanczos", trace="exact", layers="none", k=3)
    assert np.all(np.abs(lz.eigenvalues - w[:3]) <= lz.fisher.eigenvalue_errors + 1e-12 * w[0])
    assert lz.fisher.trace == pytest.approx(np.trace(F), rel=1e-10)
    # not the squared-loss Fisher: the loss factor matters
    assert abs(nf.analyze(model, x, method="dense", layers="none").lambda_max - w[0]) > 0.1 * w[0]


def test_cross_entropy_softmax_is_per_position():
    """A (T, S, C) output: the GGN of the token-level cross-entropy (mean over positions) uses the softmax over
    the C classes at each position, not over S·C."""

    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.bn = nn.Linear(3, 6), nn.BatchNorm1d(6)

        def forward(self, x):  # x (T, S, 3) -> (T, S, 5)
            h = self.lin(x)
            return torch.tanh(self.bn(h.transpose(1, 2)).transpose(1, 2)) @ self.W

    torch.manual_seed(3)
    model = Seq().to(DT)
    model.W = nn.Parameter(torch.randn(6, 5, dtype=DT))
    x = torch.randn(6, 4, 3, dtype=DT)
    out, J = explicit_jacobian(model, (x,))
    F = explicit_fisher(out, J, "cross-entropy")
    res = nf.analyze(model, x, loss="cross-entropy", method="dense", layers="none")
    assert res.lambda_max == pytest.approx(np.linalg.eigvalsh(F)[-1], rel=1e-10)
    assert res.fisher.trace == pytest.approx(np.trace(F), rel=1e-10)
    wrong = explicit_fisher(out.reshape(6, 1, -1), J, "cross-entropy")  # one softmax over the 20 = S·C logits
    assert abs(np.trace(wrong) - np.trace(F)) > 0.05 * np.trace(F)


def test_cross_entropy_fisher_matches_curvlinops_ggn():
    """Peer oracle: curvlinops' GGN of CrossEntropyLoss(reduction='mean') is (1/T) Σ_t J_tᵀ Λ_t J_t. Compared
    on a model without batch norm: curvlinops runs its own forward passes in training mode and would update
    or use running statistics of a train-mode BN, which the comparison must avoid."""
    curvlinops = pytest.importorskip("curvlinops", reason="curvlinops-for-pytorch not installed (test extra)")
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(5, 9), nn.Tanh(), nn.Linear(9, 4)).to(DT)
    x = _x(T=10)
    res = nf.analyze(model, x, loss="cross-entropy", method="dense", layers="none", k=5)
    params = [p for p in model.parameters()]
    P = sum(p.numel() for p in params)
    y = torch.zeros(x.shape[0], dtype=torch.long)  # the GGN of cross-entropy does not depend on the labels
    op = curvlinops.GGNLinearOperator(model, nn.CrossEntropyLoss(), params, [(x, y)], check_deterministic=False)
    G = op @ torch.eye(P, dtype=DT)
    G = np.asarray(G.detach().numpy() if hasattr(G, "detach") else G, dtype=np.float64)
    w = np.linalg.eigvalsh(0.5 * (G + G.T))[::-1][:5]
    np.testing.assert_allclose(res.eigenvalues, w, rtol=0, atol=1e-10 * w[0])


def _hessian_matrix(model, x, loss_fn):
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone() for p in model.parameters())
    bufs = {n: b.detach().clone() for n, b in model.named_buffers()}

    def L(*ps):
        return loss_fn(torch.func.functional_call(model, {**{n: b.clone() for n, b in bufs.items()},
                                                          **dict(zip(names, ps))}, (x,)))

    H = torch.autograd.functional.hessian(L, params)
    sizes = [p.numel() for p in params]
    o = np.cumsum([0] + sizes)
    M = np.zeros((o[-1], o[-1]))
    for i in range(len(params)):
        for j in range(len(params)):
            M[o[i]:o[i + 1], o[j]:o[j + 1]] = H[i][j].reshape(sizes[i], sizes[j]).numpy()
    return 0.5 * (M + M.T)


@pytest.mark.parametrize("kind", ["cross-entropy", "mse"])
def test_hessian_extremes_against_autograd_hessian(kind):
    model, x = _mlp_bn(seed=2), _x(T=10, seed=3)
    g = torch.Generator().manual_seed(4)
    if kind == "cross-entropy":
        y = torch.randint(0, 4, (10,), generator=g)
        M = _hessian_matrix(model, x, lambda out: nn.functional.cross_entropy(out, y))
    else:
        y = torch.randn(10, 4, generator=g, dtype=DT)
        M = _hessian_matrix(model, x, lambda out: 0.5 * (out - y).pow(2).sum() / 10)
    w = np.linalg.eigvalsh(M)
    assert w[0] < 0 < w[-1]  # indefinite: the test can tell λ_min from 0
    dense = nf.analyze(model, x, loss="hessian", targets=y, layers="none", k=2)  # P = 88 <= dense_max
    assert dense.fisher.method.startswith("dense") and dense.curvature == f"hessian-{kind}"
    np.testing.assert_allclose(dense.fisher.spectrum, w[::-1], rtol=0, atol=1e-10 * w[-1])
    assert dense.lambda_min == pytest.approx(w[0], rel=1e-10)
    assert dense.fisher.trace == pytest.approx(np.trace(M), abs=1e-10 * w[-1])
    res = nf.analyze(model, x, loss="hessian", targets=y, layers="none", k=2, probes=40, seed=1, method="lanczos")
    assert res.curvature == f"hessian-{kind}"
    f = res.fisher
    assert np.all(np.abs(f.eigenvalues - w[::-1][:2]) <= f.eigenvalue_errors + 1e-10 * w[-1])
    assert abs(res.lambda_min - w[0]) <= f.lambda_min_error + 1e-10 * w[-1]
    # Hutchinson with 40 probes on the deflated complement: within 4 standard errors (seeded)
    assert abs(f.trace - np.trace(M)) <= 4 * f.trace_stderr + 1e-10
    assert json.loads(json.dumps(res.to_dict()))["lambda_min"] == pytest.approx(res.lambda_min)


def test_operator_counts_products_and_warm_starts_after_refresh():
    model, x = _mlp_bn(seed=6), _x(T=16, seed=7)
    op = CurvatureOperator.build(model, x, loss="cross-entropy")
    assert (op.space, op.dim, op.curvature) == ("dual", 16 * 4, "fisher-cross-entropy")
    v = np.random.default_rng(0).standard_normal(op.dim)
    op.matvec(v)
    assert op.products == 2  # one VJP, one JVP
    cold = op.lanczos(1, 1e-10, seed=1)
    with torch.no_grad():  # a small training step: the operator at a nearby point
        for p in model.parameters():
            p.mul_(1.001)
    spent = op.products
    op.refresh()
    before = op.products
    assert before == spent  # one meter across refreshes
    warm = op.lanczos(1, 1e-10, warm=True, seed=1)
    fresh = CurvatureOperator.build(model, x, loss="cross-entropy").lanczos(1, 1e-10, seed=1)
    assert warm.eigenvalues[0] == pytest.approx(fresh.eigenvalues[0], rel=1e-9)
    assert (op.products - before) / 2 < fresh.products and warm.products < cold.products
    pooled = CurvatureOperator.build(model, [x[:8], x[8:]], loss="cross-entropy")
    assert (pooled.space, pooled.dim) == ("parameter", pooled.parameters)
    pooled.matvec(np.ones(pooled.dim))
    assert pooled.products == 2 * 2  # a JVP and a VJP per batch


def test_last_mean_products_are_counted_where_they_are_spent():
    model, x = _mlp_bn(seed=8), _x(T=24, seed=9)
    lz = nf.analyze(model, x, method="lanczos", what_if="last-mean", layers="none", k=2)
    w = lz.what_if["last-mean"]
    assert w.products > 0 and "UᵀF*U" in w.note
    assert lz.fisher.products + w.products == lz.settings["products"]
    d = nf.analyze(model, x, method="dense", what_if="last-mean", layers="none", k=2)
    assert d.what_if["last-mean"].products == 0 and "no product" in d.to_dict()["what_if"]["last-mean"]["note"]
    # the cross-entropy variant is the Fisher of the centred model, against brute force
    ce = nf.analyze(model, x, loss="cross-entropy", method="dense", what_if="last-mean", layers="none")
    out, J = explicit_jacobian(model, (x,))
    T = x.shape[0]
    Pi = torch.eye(T, dtype=DT) - 1.0 / T
    Jc = torch.einsum("ts,scp->tcp", Pi, J.reshape(T, 4, -1)).reshape(T * 4, -1)
    Fc = explicit_fisher(Pi @ out, Jc, "cross-entropy")
    assert ce.what_if["last-mean"].lambda_max == pytest.approx(np.linalg.eigvalsh(Fc)[-1], rel=1e-10)
    assert ce.what_if["last-mean"].products > 0


def test_accuracy_object_and_keywords():
    model, x = _mlp_bn(seed=10), _x(T=12, seed=11)
    a = nf.analyze(model, x, accuracy=Accuracy(k=3, tol=1e-9), method="lanczos", trace="exact", layers="none")
    b = nf.analyze(model, x, k=3, tol=1e-9, method="lanczos", trace="exact", layers="none")
    assert len(a.eigenvalues) == 3 and np.array_equal(a.eigenvalues, b.eigenvalues)
    c = nf.analyze(model, x, accuracy=Accuracy(k=3), k=2, layers="none")  # the keyword wins
    assert len(c.eigenvalues) == 2 and c.settings["k"] == 2
    for bad in ({"tol": 2.0}, {"trace": "nope"}, {"k": 0}, {"budget": "soon"}, {"probes": 1}):
        with pytest.raises(NormfieldError, match=next(iter(bad))):
            Accuracy(**bad)
    with pytest.raises(NormfieldError, match="accuracy"):
        nf.analyze(model, x, accuracy={"k": 3})


def test_bad_curvature_input():
    model, x = _mlp_bn(), _x()
    one = nn.Sequential(nn.Linear(5, 1)).to(DT)
    with pytest.raises(NormfieldError, match="one-column output") as e:
        nf.analyze(one, x, loss="cross-entropy")
    assert e.value.argument == "loss"
    with pytest.raises(NormfieldError, match="loss must be one of"):
        nf.analyze(model, x, loss="nll")
    with pytest.raises(NormfieldError, match="targets"):
        nf.analyze(model, x, loss="hessian")
    with pytest.raises(NormfieldError, match="labels must have shape"):
        nf.analyze(model, x, loss="hessian", targets=torch.zeros(12, 2, dtype=torch.long))


def test_json_and_table_say_which_curvature():
    from normfield.cli.analyze import render

    model, x = _mlp_bn(), _x()
    before = copy.deepcopy(model.state_dict())
    res = nf.analyze(model, x, loss="cross-entropy", layers="none")
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert d["per_batch_spread"]["lambda_max"]["ci95"] is None  # one batch: no interval
    assert d["curvature"] == d["fisher"]["curvature"] == d["settings"]["curvature"] == "fisher-cross-entropy"
    d["model"] = "m"
    assert "curvature: fisher-cross-entropy" in render(d)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_cli_loss_option(capsys):
    from pathlib import Path

    from normfield.cli import main

    example = str(Path(__file__).resolve().parents[1] / "examples" / "resnet_block.py")
    args = ["analyze", f"{example}:make_model", "--input-shape", "3,4,4", "--batch", "4", "--factory-kwargs",
            '{"width": 2, "classes": 3}', "--layers", "none", "--k", "2", "--loss", "cross-entropy"]
    assert main(args + ["--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["curvature"] == "fisher-cross-entropy" and d["settings"]["loss"] == "cross-entropy"
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "curvature: fisher-cross-entropy" in out and "Fisher of softmax cross-entropy" in out
