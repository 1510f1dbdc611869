"""Tests of normfield.analyze: the Fisher/NTK dual of any module and per-layer Gram diagnostics.

Tiers: (1) exact identities against brute-force autograd Jacobians (float64,
tolerance from rounding: entries are sums of O(P) products of O(1) terms, so
errors are ~P·eps·max|F*| ≈ 1e-13 relative; we allow 1e-10); (2) independent
routes (Lanczos vs dense eigvalsh, Hutchinson vs exact trace, normfield's MLP
Fisher engine, curvlinops' GGN); (3) the model is returned untouched; (4) bad input.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import normfield as nf
from normfield.analyze.ntk import fisher_ntk
from normfield.analyze._functional import model_state_guard
from normfield.errors import NormfieldError

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- small models as data (a seed, a builder, an input shape) -------------------------------
class Residual(nn.Module):
    """A torchvision-style basic block: conv-BN-ReLU-conv-BN + identity, ReLU."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


def _mlp_bn():
    return nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 6), nn.BatchNorm1d(6),
                         nn.Tanh(), nn.Linear(6, 3))


def _mlp_ln():
    return nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 3))


def _conv_bn():
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 4 * 4, 2))


def _resnet():
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), Residual(2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))


CASES = [
    dict(id="mlp-bn", build=_mlp_bn, shape=(5,), T=6),
    dict(id="mlp-ln", build=_mlp_ln, shape=(5,), T=5),
    dict(id="conv-bn", build=_conv_bn, shape=(2, 4, 4), T=4),
    dict(id="resnet", build=_resnet, shape=(1, 4, 4), T=4),
]


def _make(case, seed=0):
    torch.manual_seed(seed)
    model = case["build"]().to(DT)
    # non-trivial affine/bias so every parameter matters
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.3)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(case["T"], *case["shape"], generator=g, dtype=DT)
    return model, x


def _brute_jacobian(model, x, names=None, center=False):
    """J (T·C × P) by torch.autograd.functional.jacobian on a flat parameter vector."""
    params = {n: p for n, p in model.named_parameters() if names is None or n in names}
    flat = torch.cat([p.detach().reshape(-1) for p in params.values()])

    def f(v):
        d, i = {}, 0
        for n, p in params.items():
            d[n] = v[i:i + p.numel()].reshape(p.shape)
            i += p.numel()
        out = torch.func.functional_call(model, d, (x,))
        out = out.reshape(out.shape[0], -1)
        if center:
            out = out - out.mean(0, keepdim=True)
        return out.reshape(-1)

    m = copy.deepcopy(model)  # the brute force may touch running stats: use a copy
    model_saved = model
    model = m
    with model_state_guard(m):
        J = torch.autograd.functional.jacobian(f, flat)
    model = model_saved
    return J


def _state(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [m.training for m in model.modules()],
            [None if p.grad is None else p.grad.clone() for p in model.parameters()],
            [p.requires_grad for p in model.parameters()])


def _assert_same_state(model, before):
    sd, flags, grads, rg = before
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), f"{k} changed"
    assert [m.training for m in model.modules()] == flags
    for p, g in zip(model.parameters(), grads):
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    assert [p.requires_grad for p in model.parameters()] == rg
    for m in model.modules():
        assert not m._forward_hooks, "a hook was left behind"


# -- tier 1: exact against brute force ----------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_dense_dual_matches_brute_force_jacobian(case):
    model, x = _make(case)
    before = _state(model)
    res = nf.analyze(model, x, method="dense", k=3, what_if="last-mean", layers="none")
    _assert_same_state(model, before)
    J = _brute_jacobian(model, x)
    T = x.shape[0]
    Fb = (J @ J.T / T).numpy()
    w = np.linalg.eigvalsh(Fb)[::-1]
    scale = w[0]
    assert res.parameters == J.shape[1]
    assert np.allclose(res.fisher.spectrum, w, rtol=0, atol=1e-10 * scale)
    assert res.lambda_max == pytest.approx(w[0], rel=1e-10)
    assert res.m_lambda == pytest.approx(np.trace(Fb) / J.shape[1], rel=1e-10)
    # last-layer mean subtraction (Karakida eq. 15) = centering J over samples, per output
    Jc = _brute_jacobian(model, x, center=True)
    wc = np.linalg.eigvalsh((Jc @ Jc.T / T).numpy())[::-1]
    lm = res.what_if["last-mean"]
    assert np.allclose(lm.spectrum, wc, rtol=0, atol=1e-10 * scale)
    assert lm.trace == pytest.approx(float((Jc ** 2).sum()) / T, rel=1e-10)


def test_keep_dual_entries_match_brute_force():
    model, x = _make(CASES[0])
    from normfield.analyze._functional import ModelFunction, select_parameters

    with model_state_guard(model):
        fn = ModelFunction.build(model, x, select_parameters(model, None), dtype=DT, device=torch.device("cpu"))
        spec = fisher_ntk(fn, method="dense", keep_dual=True, chunk=5)  # chunk not dividing T·C
    J = _brute_jacobian(model, x)
    Fb = (J @ J.T / x.shape[0]).numpy()
    assert np.max(np.abs(spec.dual - Fb)) <= 1e-10 * np.max(np.abs(Fb))


def test_parameter_subset_and_frozen_parameters():
    model, x = _make(CASES[0])
    model[0].weight.requires_grad_(False)  # frozen: analyzed w.r.t. the others
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    res = nf.analyze(model, x, method="dense", layers="none")
    J = _brute_jacobian(model, x, names=names)
    assert res.parameters == J.shape[1] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert res.lambda_max == pytest.approx(np.linalg.eigvalsh((J @ J.T).numpy() / x.shape[0])[-1], rel=1e-10)
    res2 = nf.analyze(model, x, parameters=["6.*"], method="dense", layers="none")
    assert res2.parameters == 6 * 3 + 3


# -- tier 2: independent routes --------------------------------------------------------------
def test_lanczos_matches_dense_and_hutchinson_is_unbiased():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 20), nn.BatchNorm1d(20), nn.ReLU(), nn.Linear(20, 4)).to(DT)
    x = torch.randn(30, 6, dtype=DT)
    d = nf.analyze(model, x, method="dense", k=4, layers="none")
    l_ = nf.analyze(model, x, method="lanczos", k=4, layers="none", trace="exact")
    # ARPACK tol=1e-10 bounds the Ritz-value error relative to the eigenvalue
    assert np.allclose(l_.eigenvalues, d.eigenvalues, rtol=1e-8, atol=0)
    assert l_.m_lambda == pytest.approx(d.m_lambda, rel=1e-10)
    h = nf.analyze(model, x, method="lanczos", k=4, layers="none", trace="hutchinson", probes=40, seed=1)
    # Hutchinson mean of 40 iid probes: CLT, 4 standard errors (two-sided p ~ 6e-5; seeded)
    assert abs(h.fisher.trace - d.fisher.trace) <= 4 * h.fisher.trace_stderr
    assert h.fisher.trace_stderr > 0


def test_float32_agrees_with_float64():
    model, x = _make(CASES[2])
    r64 = nf.analyze(model, x, method="dense", layers="none")
    r32 = nf.analyze(model, x, method="dense", layers="none", dtype="float32")
    # float32 rounding (eps ~ 6e-8) accumulated over O(100) terms: 1e-4 relative is generous
    assert r32.lambda_max == pytest.approx(r64.lambda_max, rel=1e-4)
    assert r32.settings["dtype"] == "float32"
    assert next(model.parameters()).dtype == DT  # model not cast


def _karakida_module(params, act, norm):
    """The paper's MLP (Karakida eq. 1) as an nn.Module; full-batch BN with biased std, eps negligible."""
    layers = []
    L = len(params)
    for l, (W, b) in enumerate(params, start=1):
        lin = nn.Linear(W.shape[1], W.shape[0]).to(DT)
        with torch.no_grad():
            lin.weight.copy_(W)
            lin.bias.copy_(b)
        layers.append(lin)
        if l < L:
            if norm == "middle-bn":
                layers.append(nn.BatchNorm1d(W.shape[0], affine=False, eps=1e-30).to(DT))  # eps>0 required; 1e-30 is below rounding
            layers.append({"relu": nn.ReLU, "tanh": nn.Tanh}[act]())
    return nn.Sequential(*layers)


@pytest.mark.parametrize("norm,act", [("none", "relu"), ("middle-bn", "tanh"), ("last-mean", "relu")])
def test_matches_the_fisher_engine_on_the_papers_mlps(norm, act):
    cfg = nf.MLPConfig(activation=act, sw2=2.0, sb2=0.5, depth=3, width=12, outputs=2, samples=10, norm=norm)
    params = nf.init_mlp(cfg, 0)
    X = nf.sample_inputs(cfg, 1)
    ref = nf.fisher_dual(params, X, cfg, k=5, eig="dense")
    model = _karakida_module(params, act, "none" if norm == "last-mean" else norm)
    res = nf.analyze(model, X, method="dense", k=5, layers="none",
                     what_if="last-mean" if norm == "last-mean" else None, what_if_k=5)
    ours = res.what_if["last-mean"] if norm == "last-mean" else res.fisher
    assert ours.parameters == ref.parameters
    assert np.allclose(ours.eigenvalues, ref.eigenvalues, rtol=0, atol=1e-10 * ref.lambda_max)
    assert ours.m_lambda == pytest.approx(ref.m_lambda, rel=1e-10)


def test_matches_curvlinops_ggn():
    """Peer oracle: curvlinops' GGN of the summed squared loss is 2 JᵀJ, so JᵀJ/T = GGN/(2T)."""
    curvlinops = pytest.importorskip("curvlinops", reason="curvlinops-for-pytorch not installed (test extra)")
    model, x = _make(CASES[2])
    res = nf.analyze(model, x, method="dense", layers="none", k=6)
    m = copy.deepcopy(model)
    params = [p for p in m.parameters() if p.requires_grad]
    y = torch.zeros(x.shape[0], 2, dtype=DT)
    P = sum(p.numel() for p in params)
    with model_state_guard(m):  # train-mode BN without running-stat updates (torch.func forbids them)
        op = curvlinops.GGNLinearOperator(m, nn.MSELoss(reduction="sum"), params, [(x, y)],
                                          check_deterministic=False)
        G = op @ torch.eye(P, dtype=DT)
    G = np.asarray(G.detach().cpu().numpy() if hasattr(G, "detach") else G, dtype=np.float64)
    w = np.linalg.eigvalsh(0.5 * (G + G.T))[::-1][:6] / (2 * x.shape[0])
    assert np.allclose(res.eigenvalues, w, rtol=0, atol=1e-9 * w[0])


# -- tier 3: the model comes back untouched --------------------------------------------------
@pytest.mark.parametrize("mode", ["as-is", "train", "eval"])
def test_model_returned_exactly(mode):
    model, x = _make(CASES[3])
    model.train()
    model[3].bn2.eval()  # mixed flags must survive
    model(x).sum().backward()  # existing grads must survive
    with torch.no_grad():
        model(x)  # running stats away from init
    before = _state(model)
    nf.analyze(model, x, mode=mode, method="lanczos", k=2, what_if="last-mean", trace="hutchinson", probes=3)
    _assert_same_state(model, before)
    assert model[1].num_batches_tracked.item() == 2


def test_mode_eval_uses_running_statistics():
    model, x = _make(CASES[0])
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
    r_eval = nf.analyze(model, x, mode="eval", method="dense", layers="none")
    ev = copy.deepcopy(model).eval()
    J = _brute_jacobian(ev, x)
    assert r_eval.lambda_max == pytest.approx(np.linalg.eigvalsh((J @ J.T).numpy() / x.shape[0])[-1], rel=1e-10)
    assert model.training


# -- Gram diagnostics ----------------------------------------------------------------------
def test_layer_grams_match_direct_computation():
    model, x = _make(CASES[0])
    res = nf.analyze(model, x, fisher=False)
    assert list(res.layers.layer) == ["0", "1", "2", "3", "4", "5", "6"]
    with torch.no_grad(), model_state_guard(model):
        h = model[0](x)
        h = model[1](h)
    G = (h @ h.T / h.shape[1]).numpy()
    assert np.allclose(res.grams["1"], G, atol=1e-12)
    row = res.layers.set_index("layer").loc["1"]
    assert row.lambda_max == pytest.approx(np.linalg.eigvalsh(G)[-1], rel=1e-12)
    assert res.fisher is None
    with pytest.raises(NormfieldError, match="fisher=True"):
        res.lambda_max
    sel = nf.analyze(model, x, fisher=False, layers=["1", "4"])
    assert list(sel.layers.layer) == ["1", "4"]
    by_type = nf.analyze(model, x, fisher=False, layers=(nn.ReLU, nn.Tanh))
    assert list(by_type.layers.type) == ["ReLU", "Tanh"]


def test_gram_diagnostics_special_cases():
    n = 6
    iso = nf.gram_diagnostics(np.eye(n))
    assert iso["condition_number"] == pytest.approx(1.0)
    assert iso["effective_rank"] == pytest.approx(n)
    assert iso["top_fraction"] == pytest.approx(1 / n)
    assert not iso["collapsed"]
    one = nf.gram_diagnostics(np.ones((n, n)))
    assert one["collapsed"] and one["top_fraction"] == pytest.approx(1.0)
    assert one["effective_rank"] == pytest.approx(1.0) and math.isinf(one["condition_number"])
    assert one["mean_cosine"] == pytest.approx(1.0)


def test_distance_to_bn_fixed_point():
    from normfield.gram.fixed_point import fixed_point

    # one BatchNorm1d→ReLU layer: the column is exactly ‖G − G*‖_F/‖G*‖_F with G* from nf.fixed_point
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 256), nn.BatchNorm1d(256), nn.ReLU()).to(DT)
    x = torch.randn(5, 8, dtype=DT)
    res = nf.analyze(model, x, fisher=False)
    row = res.layers.set_index("layer").loc["2"]  # the ReLU after BatchNorm1d
    Gs = np.asarray(fixed_point("relu", 5).matrix)
    assert row.fixed_point == "relu" and bool(row.fixed_point_exact)
    assert row.dist_fixed_point == pytest.approx(np.linalg.norm(res.grams["2"] - Gs) / np.linalg.norm(Gs), rel=1e-12)
    assert np.isnan(res.layers.set_index("layer").loc["1"].dist_fixed_point)


def test_deep_bn_chain_approaches_fixed_point():
    """Joudaki et al. 2023, Thm 1: a deep BN-ReLU MLP's Gram concentrates near G*.

    Tolerance: at width d each Gram entry is an average of d terms σ(x)σ(y) with
    variance <= E[σ⁴] = 3/2·E[σ²]² ≈ 0.5 (ReLU, unit-variance inputs), so its
    standard deviation is ~sqrt(0.5/d) = 0.022 at d = 1024; over the n² = 16
    entries ‖G − G*‖_F ≈ 4·0.022 = 0.09 against ‖G*‖_F = 1.25 (diag 0.5, off
    0.218): an expected relative distance ≈ 0.07 once the chain has mixed. We
    average the last 6 layers and allow 0.15 (2x); the first layer, fed by
    Gaussian inputs, is not at the fixed point.
    """
    from normfield.gram.fixed_point import fixed_point

    torch.manual_seed(1)
    d, n, L = 1024, 4, 12
    layers = [nn.Linear(8, d, bias=False)]
    for _ in range(L):
        layers += [nn.BatchNorm1d(d), nn.ReLU(), nn.Linear(d, d, bias=False)]
    layers += [nn.BatchNorm1d(d), nn.ReLU()]
    model = nn.Sequential(*layers).to(DT)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0, 1 / math.sqrt(m.in_features))
    res = nf.analyze(model, torch.randn(n, 8, dtype=DT), fisher=False, layers=(nn.ReLU,))
    assert res.layers.fixed_point.eq("relu").all()
    assert res.layers.dist_fixed_point.iloc[-6:].mean() < 0.15


# -- tier 4: bad input --------------------------------------------------------------------
def test_bad_inputs():
    model, x = _make(CASES[0])

    class DictOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(5, 2).to(DT)

        def forward(self, x):
            h = self.lin(x)
            return {"a": h, "b": 2 * h}

    with pytest.raises(NormfieldError, match="outputs=lambda"):
        nf.analyze(DictOut(), x)
    with pytest.raises(NormfieldError, match="no field 'c'"):
        nf.analyze(DictOut(), x, outputs="c")
    ok = nf.analyze(DictOut(), x, outputs=lambda o: o["a"], layers="none")
    assert ok.fisher.outputs == 2
    assert nf.analyze(DictOut(), x, outputs="b", layers="none").lambda_max == pytest.approx(4 * ok.lambda_max)
    with pytest.raises(NormfieldError, match="batch size 1 under train-mode batch norm"):
        nf.analyze(model, x[:1])
    nf.analyze(model, x[:1], mode="eval", layers="none")  # eval mode: fine
    frozen = copy.deepcopy(model).requires_grad_(False)
    with pytest.raises(NormfieldError, match="requires grad"):
        nf.analyze(frozen, x)
    with pytest.raises(NormfieldError, match="matches no parameter"):
        nf.analyze(model, x, parameters="nope*")
    with pytest.raises(NormfieldError, match="mode must be one of"):
        nf.analyze(model, x, mode="training")
    with pytest.raises(NormfieldError, match="what_if"):
        nf.analyze(model, x, what_if="last-bn")
    with pytest.raises(NormfieldError, match="what_if_k"):
        nf.analyze(model, x, what_if="last-mean", what_if_k=0)
    with pytest.raises(NormfieldError, match="torch.nn.Module"):
        nf.analyze(lambda t: t, x)
    with pytest.raises(NormfieldError, match="inputs must be a tensor"):
        nf.analyze(model, [[1.0] * 5] * 3)
    bad = x.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(NormfieldError, match="NaN"):
        nf.analyze(model, bad)
    with pytest.raises(NormfieldError, match="no CUDA|cpu or cuda"):
        nf.analyze(model, x, device="cuda" if not torch.cuda.is_available() else "tpu")
    with pytest.raises(NormfieldError, match="dtype"):
        nf.analyze(model, x, dtype="float16")
    with pytest.raises(NormfieldError, match="layers"):
        nf.analyze(model, x, layers=["nope"])
    drop = nn.Sequential(nn.Linear(5, 4), nn.Dropout(0.5), nn.Linear(4, 2)).to(DT)
    with pytest.raises(NormfieldError, match="dropout"):
        nf.analyze(drop, x)
    assert nf.analyze(drop, x, mode="eval", layers="none").parameters == 5 * 4 + 4 + 4 * 2 + 2
    assert drop.training
    with pytest.raises(NormfieldError, match="failed for inputs of shape"):
        nf.analyze(model, torch.randn(4, 3, dtype=DT))


def test_batch_that_does_not_fit(monkeypatch):
    model, x = _make(CASES[0])
    before = _state(model)
    monkeypatch.setenv("NORMFIELD_MAX_BYTES", "2000")
    with pytest.raises(NormfieldError, match="smaller batch"):
        nf.analyze(model, x)
    _assert_same_state(model, before)


def test_to_dict_is_json():
    import json

    model, x = _make(CASES[2])
    res = nf.analyze(model, x, what_if="last-mean", k=3)
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert d["lambda_max"] == pytest.approx(res.lambda_max)
    assert d["lr_bound"] == pytest.approx(2 / res.lambda_max)
    assert len(d["eigenvalues"]) == 3 and d["eigenvalues"][0] >= d["eigenvalues"][-1]
    assert d["what_if"]["last-mean"]["lambda_max_ratio"] == pytest.approx(res.what_if_ratio())
    assert len(d["layers"]) == len(res.layers)
    assert "lambda_max" in res.summary()


def test_lanczos_top_on_a_clustered_spectrum():
    """Lanczos (full reorthogonalisation) against eigvalsh on a matrix with a near-degenerate top cluster,
    like F* with C outputs (C eigenvalues ∝ M). Kahan's bound: each Ritz value is within the residual
    tol·θ_1 of an eigenvalue, so 1e-9 relative suffices at tol=1e-10 (the cluster gap is 1e-3)."""
    from normfield.analyze.ntk import lanczos_top

    rng = np.random.default_rng(0)
    n = 300
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = np.concatenate([[100.0, 99.9, 99.8], rng.uniform(0, 5, n - 3)])
    A = (Q * lam) @ Q.T
    w, V, steps, ok = lanczos_top(lambda v: A @ v, n, 3, tol=1e-10, seed=1)
    assert ok and steps < n
    assert np.allclose(w, [100.0, 99.9, 99.8], rtol=1e-9, atol=0)
    assert np.allclose(V.T @ V, np.eye(3), atol=1e-8)


def test_slq_is_gauss_quadrature_and_density_histograms():
    """SLQ with m steps integrates vᵀ A^j v exactly for j <= 2m−1 (Golub & Meurant, Thm 6.2)."""
    from normfield.analyze.ntk import slq_density

    rng = np.random.default_rng(2)
    n, m = 60, 6
    B = rng.standard_normal((n, n))
    A = B @ B.T / n
    nodes, weights, used = slq_density(lambda v: A @ v, n, probes=1, steps=m, seed=5)
    assert used == m and weights.sum() == pytest.approx(1.0, abs=1e-12)
    v = np.random.default_rng(5).choice([-1.0, 1.0], size=n) / np.sqrt(n)  # the same probe
    for j in range(2 * m):
        exact = v @ np.linalg.matrix_power(A, j) @ v
        assert np.sum(weights * nodes ** j) == pytest.approx(exact, rel=1e-9)
    model, x = _make(CASES[0])
    d = nf.analyze(model, x, method="dense", layers="none", density=True)
    h = d.fisher.density(bins=10)
    assert h.mass.sum() == pytest.approx(1.0) and len(h) == 10
    lz = nf.analyze(model, x, method="lanczos", layers="none", density=True, k=1)
    # first moment of the SLQ measure = Hutchinson estimate of tr(F*)/n: exact only in expectation;
    # the top edge of the measure is a Ritz value, so it cannot exceed λ_max
    assert lz.fisher.density_nodes.max() <= d.lambda_max * (1 + 1e-8)
    assert lz.fisher.density(bins=5, log=True).mass.sum() == pytest.approx(1.0)
    with pytest.raises(NormfieldError, match="density=True"):
        nf.analyze(model, x, layers="none").fisher.density()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    model, x = _make(CASES[3])
    cpu = nf.analyze(model, x, method="dense", what_if="last-mean")
    gpu = nf.analyze(model, x, method="dense", what_if="last-mean", device="cuda")
    assert gpu.settings["device"].startswith("cuda")
    assert gpu.lambda_max == pytest.approx(cpu.lambda_max, rel=1e-9)
    assert np.allclose(gpu.layers.lambda_max, cpu.layers.lambda_max, rtol=1e-9)
    assert next(model.parameters()).device.type == "cpu"


def test_layer_grams_equal_in_law_to_the_gram_chain_engine():
    """Joudaki et al. eq. (1)-(2) built from nn.Modules (BatchNorm1d -> ReLU -> Linear N(0, 1/d)) has the
    same law as the Gram-chain engine's explicit simulation (normfield.gram.chain): compare the mean,
    over K independent seeds each, of the layer-L distance to G* (and of the mean cosine). Two-sample
    z-test: |m1 - m2| <= 4 sqrt(s1²/K + s2²/K) (two-sided p ~ 6e-5 under equality; seeded)."""
    from normfield.gram.chain import simulate_chain
    from normfield.gram.fixed_point import fixed_point

    d, n, L, K = 128, 4, 6, 24
    r = simulate_chain("relu", d, n, L, seeds=K, norm="bn", engine="explicit", seed=0)
    Gs = np.asarray(fixed_point("relu", n).matrix)

    def stats(G):
        c = G / np.sqrt(np.outer(np.diag(G), np.diag(G)))
        return np.linalg.norm(G - Gs) / np.linalg.norm(Gs), c[~np.eye(n, dtype=bool)].mean()

    theirs = np.array([stats(r.grams[k, -1]) for k in range(K)])
    ours = []
    for k in range(K):
        torch.manual_seed(100 + k)
        layers = [nn.BatchNorm1d(d, eps=1e-30), nn.ReLU()]
        for _ in range(L):
            lin = nn.Linear(d, d, bias=False)
            nn.init.normal_(lin.weight, 0.0, 1 / math.sqrt(d))
            layers += [lin, nn.BatchNorm1d(d, eps=1e-30), nn.ReLU()]
        model = nn.Sequential(*layers).to(DT)
        h0 = torch.randn(n, d, dtype=DT)  # the engine's "gaussian" input h0 (d, n), transposed
        res = nf.analyze(model, h0, fisher=False, layers=(nn.ReLU,))
        assert len(res.layers) == L + 1
        ours.append(stats(res.grams[res.layers.layer.iloc[-1]]))
    ours = np.array(ours)
    for j in range(2):
        se = math.sqrt(ours[:, j].var(ddof=1) / K + theirs[:, j].var(ddof=1) / K)
        assert abs(ours[:, j].mean() - theirs[:, j].mean()) <= 4 * se
