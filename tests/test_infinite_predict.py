"""nf.predict: a torch model translated into infinite-width kernel layers, against a direct kernel of the
same layers (exact) and against nf.analyze's measurements on wide random nets (statistical)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

import normfield as nf
from normfield.errors import NormfieldError
from normfield.infinite import Activation, BatchNorm, Dense, LayerNorm, Residual, Serial, kernel
from normfield.infinite.predict import predict
from normfield.infinite.translate import translate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _x(T=6, d=8, seed=123):
    return torch.randn(T, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _mlp(width, *, norm=None, act=nn.ReLU, d=8, C=1, seed=0):
    torch.manual_seed(seed)
    layers = [nn.Linear(d, width)]
    for i in range(2):
        if norm == "bn":
            layers.append(nn.BatchNorm1d(width))
        layers += [act(), nn.Linear(width, width if i == 0 else C)]
    return nn.Sequential(*layers).double()


class Block(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.ln = nn.LayerNorm(w)
        self.fc1 = nn.Linear(w, w)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(w, w)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(self.ln(x))))


class PreLN(nn.Module):
    def __init__(self, w, d=8, C=1, blocks=2):
        super().__init__()
        self.inp = nn.Linear(d, w)
        self.blocks = nn.Sequential(*[Block(w) for _ in range(blocks)])
        self.out = nn.Linear(w, C)

    def forward(self, x):
        return self.out(self.blocks(self.inp(x)))


class TwoPaths(nn.Module):
    """``torch.add(short(h), branch(h))`` with a Linear shortcut and a functional relu."""

    def __init__(self, w, d=8):
        super().__init__()
        self.inp = nn.Linear(d, w)
        self.short = nn.Linear(w, w)
        self.branch = nn.Sequential(nn.Linear(w, w), nn.Tanh(), nn.Linear(w, w))
        self.out = nn.Linear(w, 2)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        return self.out(torch.add(self.short(h), self.branch(h)))


# -- translation -------------------------------------------------------------------------------------------


def test_sequential_translates_to_its_layers_with_instance_variances():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(8, 32), nn.BatchNorm1d(32, eps=1e-3), nn.LeakyReLU(0.2),
                        nn.Sequential(nn.Dropout(0.0), nn.Linear(32, 16, bias=False), nn.Identity()),
                        nn.GELU(), nn.Linear(16, 3)).double()
    tr = translate(net, _x().reshape(6, 2, 4))
    assert tr.flatten_input and tr.output_width == 3
    assert [type(l).__name__ for l in tr.layers] == ["Dense", "BatchNorm", "Activation", "Dense", "Activation",
                                                     "Dense"]
    assert [lf.name for lf in tr.leaves] == ["1", "2", "3", "4.1", "5", "6"]
    d0, bn, lrelu, d1, gelu, d2 = tr.layers
    W = net[1].weight.detach()
    # σ_w² = fan_in·mean(W²) written as Σ W²/fan_out: the same number by another route
    assert d0.sw2 == pytest.approx(float((W ** 2).sum() / W.shape[0]), rel=1e-12)
    b = net[1].bias.detach()
    assert d0.sb2 == pytest.approx(float(b.var(unbiased=False) + b.mean() ** 2),
                                   rel=1e-10)
    assert (d0.width, d1.width, d2.width) == (32, 16, 3) and not d1.bias and d1.sb2 == 0.0
    assert bn.mode == "train" and bn.eps == 1e-3 and bn.affine
    assert lrelu.act.name == "leaky_relu" and lrelu.act.params["slope"] == pytest.approx(0.2)
    assert gelu.act.name == "gelu"


def test_init_states_the_variances():
    net = _mlp(16)
    tr = translate(net, _x(), init={"sw2": 2.0, "sb2": 0.0})
    assert all(l.sw2 == 2.0 and l.sb2 == 0.0 for l in tr.layers if isinstance(l, Dense))
    tr = translate(net, _x(), init={"2": {"sw2": 1.5}})
    dense = [l for l in tr.layers if isinstance(l, Dense)]
    assert dense[1].sw2 == 1.5 and dense[0].sw2 != 1.5
    with pytest.raises(NormfieldError, match="'7' is not a Linear"):
        translate(net, _x(), init={"7": {"sw2": 1.0}})
    with pytest.raises(NormfieldError, match="init"):
        translate(net, _x(), init={"sw2": -1.0})


def test_eval_batch_norm_carries_running_statistics():
    net = _mlp(16, norm="bn")
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
        net[1].weight.uniform_(0.5, 1.5)
    net.eval()
    bn = translate(net, _x()).layers[1]
    assert bn.mode == "eval"
    np.testing.assert_array_equal(bn.table[:, 0], net[1].weight.detach().numpy())
    np.testing.assert_array_equal(bn.table[:, 2], net[1].running_mean.numpy())
    np.testing.assert_array_equal(bn.table[:, 3], net[1].running_var.numpy())


def test_fx_residual_models_translate_to_residual_layers():
    tr = translate(PreLN(16).double(), _x())
    assert [type(l).__name__ for l in tr.layers] == ["Dense", "Residual", "Residual", "Dense"]
    res = tr.layers[1]
    assert res.shortcut is None
    assert [type(l).__name__ for l in res.branch.layers] == ["LayerNorm", "Dense", "Activation", "Dense"]
    assert [lf.name for lf in tr.leaves][:5] == ["inp", "blocks.0.ln", "blocks.0.fc1", "blocks.0.act", "blocks.0.fc2"]
    torch.manual_seed(0)
    tr = translate(TwoPaths(16).double(), _x())
    assert [type(l).__name__ for l in tr.layers] == ["Dense", "Activation", "Residual", "Dense"]
    res = tr.layers[2]
    assert [type(l).__name__ for l in res.shortcut.layers] == ["Dense"]
    assert [type(l).__name__ for l in res.branch.layers] == ["Dense", "Activation", "Dense"]
    assert not tr.leaves[1].hooked  # torch.relu is no module: nf.analyze measures no Gram there


def test_predict_is_the_kernel_of_the_translated_layers():
    """Exactness of the translation: the same layers written by hand, with σ² computed here, give the same
    kernels to round-off (the same deterministic routes run)."""
    net = _mlp(64, norm="bn")
    x = _x()
    p = predict(net, x)
    lin = [m for m in net if isinstance(m, nn.Linear)]

    def dense(m):
        W, b = m.weight.detach(), m.bias.detach()
        return Dense(m.out_features, sw2=float(W.pow(2).sum() / m.out_features), sb2=float(b.pow(2).mean()))

    ref = kernel([dense(lin[0]), BatchNorm(), Activation("relu"), dense(lin[1]), BatchNorm(),
                  Activation("relu"), dense(lin[2])], x.numpy())
    np.testing.assert_allclose(p.ntk, ref.ntk, rtol=1e-10)
    np.testing.assert_allclose(p.nngp, ref.nngp, rtol=1e-10)
    T = x.shape[0]
    assert p.lambda_max == pytest.approx(np.linalg.eigvalsh(ref.ntk)[-1] / T, rel=1e-10)
    assert p.trace == pytest.approx(np.trace(ref.ntk) / T, rel=1e-10)  # C = 1
    assert p.m_lambda == pytest.approx(p.trace / sum(q.numel() for q in net.parameters()), rel=1e-12)
    # each hooked layer's Gram is the state after that layer
    states = dict(ref.states)
    np.testing.assert_allclose(p.grams["2"], states["2.Activation"].nngp, rtol=1e-10)
    np.testing.assert_allclose(p.grams["4"], states["4.BatchNorm"].nngp, rtol=1e-10)
    net2 = PreLN(32).double()
    p2 = predict(net2, x)
    d = lambda m: Dense(m.out_features, sw2=float(m.weight.detach().pow(2).sum() / m.out_features),  # noqa: E731
                        sb2=float(m.bias.detach().pow(2).mean()))
    blocks = [Residual(Serial(LayerNorm(), d(b.fc1), Activation("relu"), d(b.fc2))) for b in net2.blocks]
    ref2 = kernel([d(net2.inp), *blocks, d(net2.out)], x.numpy())
    np.testing.assert_allclose(p2.ntk, ref2.ntk, rtol=1e-10)
    np.testing.assert_allclose(p2.grams["blocks.1.fc2"], dict(ref2.states)["2.branch.3.Dense"].nngp, rtol=1e-10)


def test_prediction_has_analyze_names_and_json():
    net = _mlp(32, norm="bn")
    x = _x()
    p = predict(net, x)
    r = nf.analyze(net, x, fisher=False)
    assert set(p.grams) == set(r.grams)
    shared = [c for c in r.layers.columns if c in p.layers.columns]
    assert {"layer", "type", "features", "condition_number", "top_fraction", "effective_rank"} <= set(shared)
    assert list(p.layers.layer) == list(r.layers.layer)
    d = p.to_dict()
    assert {"lambda_max", "m_lambda", "trace", "lr_bound", "error", "within_tol", "layers", "ntk"} <= set(d)
    assert d["lr_bound"] == pytest.approx(2 / p.lambda_max)


# -- refusals and flags --------------------------------------------------------------------------------------


def test_refusals_name_the_module():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 1)).double()
    with pytest.raises(NormfieldError, match=r"0 \(Conv2d\).*supported: Linear"):
        predict(net, torch.randn(4, 1, 4, 4, dtype=torch.float64))
    net = nn.Sequential(nn.Linear(8, 8), nn.Softplus(), nn.Linear(8, 1)).double()
    with pytest.raises(NormfieldError, match=r"1 \(Softplus\)"):
        predict(net, _x())
    net = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.Linear(8, 1)).double()
    with pytest.raises(NormfieldError, match=r"1 \(Dropout\).*training mode"):
        predict(net, _x())
    lin = nn.Linear(8, 8)
    with pytest.raises(NormfieldError, match="called twice"):
        predict(nn.Sequential(lin, nn.ReLU(), lin).double(), _x())


def test_refusals_of_the_batch():
    net = _mlp(16, norm="bn")
    with pytest.raises(NormfieldError, match="batch size 1"):
        predict(net, _x(T=1))
    x = _x()
    x[2, 3] = float("nan")
    with pytest.raises(NormfieldError, match="non-finite"):
        predict(net, x)
    net.eval()  # running statistics: one sample is fine
    assert predict(net, _x(T=1)).samples == 1


def test_error_above_tol_is_flagged_not_silent():
    """tanh after train-mode batch norm goes through the quasi-Monte Carlo route, whose stated error cannot
    reach 1e-9 within its point cap: the result says so."""
    net = _mlp(16, norm="bn", act=nn.Tanh)
    with pytest.warns(RuntimeWarning, match="exceeds tol"):
        p = predict(net, _x(T=4), tol=1e-9)
    assert not p.within_tol and p.error > 1e-9 and p.flags
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert predict(_mlp(16, norm="bn"), _x(T=4)).within_tol  # the exact route


# -- against nf.analyze on wide nets --------------------------------------------------------------------------


@pytest.mark.parametrize("norm", [None, "bn"])
def test_predicted_lambda_max_and_grams_match_measured_on_wide_nets(norm):
    """Width n = 1024, T = 8, S = 4 seeds (nets), one batch.

    Each seed gives a measured λ_max (nf.analyze) and the prediction for that instance's σ_w², σ_b². The
    relative differences d_s = measured/predicted − 1 are independent across seeds; their mean is within
    t_{0.995, S−1}·SE (SE from the seed spread, Student t for the estimated spread) of the finite-width bias,
    which is O(1/n) (the NTK's mean moves by O(1/n), Hanin & Nica 2020, and λ_max's convexity gap is of the
    order of its variance, O(1/n)); 1/√n bounds c/n for any constant c <= √n = 32, so the tolerance is
    t·SE + 1/√n (3 % here). The layer Grams the same way, entrywise: ‖mean_s ΔG‖_F <= t·‖SE‖_F + ‖G‖_F/√n.
    """
    n, S = 1024, 4
    x = _x(T=8, d=16)
    t = stats.t.ppf(0.995, S - 1)
    ratios, dG, Gp = [], {}, {}
    for s in range(S):
        net = _mlp(n, norm=norm, d=16, seed=s)
        r = nf.analyze(net, x, k=1)
        p = predict(net, x)
        ratios.append(r.lambda_max / p.lambda_max - 1)
        for key in p.grams:
            if p.layers.set_index("layer").loc[key, "features"] >= n:  # hidden layers (the output has C units)
                dG.setdefault(key, []).append(r.grams[key] - p.grams[key])
                Gp[key] = p.grams[key]
    d = np.array(ratios)
    se = d.std(ddof=1) / math.sqrt(S)
    assert abs(d.mean()) <= t * se + 1 / math.sqrt(n), (d, se)
    assert len(dG) >= 4
    for key, diffs in dG.items():
        D = np.stack(diffs)
        se_F = np.linalg.norm(D.std(axis=0, ddof=1) / math.sqrt(S))
        assert np.linalg.norm(D.mean(axis=0)) <= t * se_F + np.linalg.norm(Gp[key]) / math.sqrt(n), key
