"""Random MLPs (Karakida et al. 2019, eq. (1)–(3), (13)–(15), (20)–(25)): sizes, seeding,
and each normalization placement against torch's own functional layers."""

import math

import pytest
import torch
import torch.nn.functional as Fnn

from normfield.errors import NormfieldError
from normfield.fisher.networks import NORMS, MLPConfig, init_mlp, mlp_forward, sample_inputs


def _reference_forward(params, X, cfg):
    """Independent route: torch.nn.functional layers (batch_norm/layer_norm with eps=1e-200, i.e. none)."""
    act = cfg.act
    h = X
    L = len(params)
    for l, (W, b) in enumerate(params, start=1):
        u = Fnn.linear(h, W, b)
        if l < L:
            if cfg.norm == "middle-bn":
                u = Fnn.batch_norm(u, None, None, training=True, eps=1e-200)
            elif cfg.norm == "layer":
                u = Fnn.layer_norm(u, (u.shape[1],), eps=1e-200)
            h = act(u)
    if cfg.norm == "last-mean":
        u = u - u.mean(0)
    elif cfg.norm == "last-bn":
        u = Fnn.batch_norm(u, None, None, training=True, eps=1e-200)
    elif cfg.norm == "layer":
        u = Fnn.layer_norm(u, (u.shape[1],), eps=1e-200)
    return u


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_forward_matches_torch_functional(norm, act):
    cfg = MLPConfig(act, 2.0, 0.3, 3, 9, (1.0, 1.5, 0.8), 4, 6, norm)
    p = init_mlp(cfg, 3)
    X = sample_inputs(cfg, 4)
    f = mlp_forward(p, X, cfg)
    assert f.shape == (6, 4) and f.dtype == torch.float64
    torch.testing.assert_close(f, _reference_forward(p, X, cfg), rtol=1e-12, atol=1e-12)


def test_normalized_outputs_have_their_statistics():
    base = dict(activation="relu", sw2=2.0, sb2=0.5, depth=3, width=8, outputs=3, samples=7)
    p = init_mlp(MLPConfig(**base), 0)
    X = sample_inputs(MLPConfig(**base), 1)
    f = mlp_forward(p, X, MLPConfig(**base, norm="last-mean"))
    assert f.mean(0).abs().max() < 1e-13
    f = mlp_forward(p, X, MLPConfig(**base, norm="last-bn"))
    assert f.mean(0).abs().max() < 1e-13 and ((f * f).mean(0) - 1).abs().max() < 1e-13
    f = mlp_forward(p, X, MLPConfig(**base, norm="layer"))
    assert f.mean(1).abs().max() < 1e-13 and ((f * f).mean(1) - 1).abs().max() < 1e-13


def test_sizes_and_exact_parameter_count():
    cfg = MLPConfig("relu", 2.0, 0.0, 4, 10, (0.5, 1.0, 2.0, 1.5), 3, 5)
    assert cfg.widths == (5, 10, 20, 15) and cfg.layer_sizes == (5, 10, 20, 15, 3)
    p = init_mlp(cfg, 0)
    assert cfg.parameters == sum(W.numel() + b.numel() for W, b in p)
    assert cfg.alpha == pytest.approx(1.0 * 0.5 + 2.0 * 1.0 + 1.5 * 2.0)


def test_seeding_and_dtype_device_independence():
    cfg = MLPConfig("tanh", 3.0, 0.64, 3, 12, None, 2, 4)
    a, b = init_mlp(cfg, 7), init_mlp(cfg, 7)
    c = init_mlp(cfg, 8)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])
    f32 = init_mlp(cfg, 7, dtype=torch.float32)
    assert f32[0][0].dtype == torch.float32
    torch.testing.assert_close(f32[0][0].double(), a[0][0], rtol=1e-7, atol=1e-7)
    g = torch.Generator().manual_seed(7)
    assert torch.equal(init_mlp(cfg, g)[0][0], a[0][0])


def test_weight_and_bias_variances():
    # W^l_ij ~ N(0, σ_w²/M_{l-1}); for n i.i.d. Gaussians the sample variance has relative
    # standard deviation √(2/n); we allow 5 of those (false-failure probability < 1e-6).
    cfg = MLPConfig("relu", 3.0, 0.5, 2, 300, (1.0, 1.0), 200, 2)
    (W1, b1), (W2, b2) = init_mlp(cfg, 11)
    n = W1.numel()
    assert abs((W1 ** 2).mean().item() * 300 / 3.0 - 1) < 5 * math.sqrt(2 / n)
    nb = b1.numel() + b2.numel()
    vb = (torch.cat([b1, b2]) ** 2).mean().item()
    assert abs(vb / 0.5 - 1) < 5 * math.sqrt(2 / nb)


@pytest.mark.parametrize(
    "kwargs, arg",
    [
        (dict(sw2=-1.0), "sw2"),
        (dict(sb2=-0.1), "sb2"),
        (dict(width=0), "width"),
        (dict(depth=0), "depth"),
        (dict(outputs=0), "outputs"),
        (dict(norm="batch"), "norm"),
        (dict(norm="last-mean", samples=1), "samples"),
        (dict(norm="last-bn", samples=1), "samples"),
        (dict(norm="middle-bn", samples=1), "samples"),
        (dict(norm="layer", outputs=1), "outputs"),
        (dict(alphas=(1.0, 1.0)), "alphas"),
        (dict(alphas=(1.0, 0.01, 1.0)), "width"),
        (dict(activation="nope"), "activation"),
    ],
)
def test_bad_config_raises_normfield_error(kwargs, arg):
    base = dict(activation="relu", sw2=2.0, sb2=0.0, depth=3, width=10, outputs=3, samples=4)
    base.update(kwargs)
    with pytest.raises(NormfieldError) as e:
        MLPConfig(**base)
    assert e.value.argument == arg


def test_forward_rejects_mismatched_shapes():
    cfg = MLPConfig("relu", 2.0, 0.0, 2, 5, None, 1, 3)
    p = init_mlp(cfg, 0)
    with pytest.raises(NormfieldError, match="X must have shape"):
        mlp_forward(p, torch.zeros(3, 4, dtype=torch.float64), cfg)
    with pytest.raises(NormfieldError, match="params"):
        mlp_forward(p[:1], torch.zeros(3, 5, dtype=torch.float64), cfg)
    with pytest.raises(NormfieldError, match="seed"):
        init_mlp(cfg, -1)
