"""Each infinite-width layer against its own finite-width module at growing width.

For a composition ``net`` ending in the layer under test, ``finite_kernels``
averages ``H Hᵀ/n`` and the per-unit NTK over independent networks of width
``n``. Its deviation from the prediction is ``D_n = bias_n + noise_n`` with
``bias_n = b/n`` (the law-of-large-numbers correction of the Gram matrices is
``O(1/n)``) and ``noise_n`` of standard error ``SE_n`` (measured over the nets).
With two widths ``n1 < n2``: ``‖bias_{n1}‖ <= ‖D_{n1}‖ + 4‖SE_{n1}‖`` (4σ), so
``‖bias_{n2}‖ <= (n1/n2)(‖D_{n1}‖ + 4‖SE_{n1}‖)`` and the check is

    ‖D_{n2}‖ <= 4‖SE_{n2}‖ + (n1/n2)(‖D_{n1}‖ + 4‖SE_{n1}‖) + stated error,

Frobenius norms (the Frobenius norm of a Gaussian matrix with entry SEs s_ij
exceeds 4‖s‖_F with negligible probability). A prediction off by δ fails once
δ exceeds about (4‖SE_{n2}‖ + 4(n1/n2)‖SE_{n1}‖)/(1 − n1/n2).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from normfield.errors import NormfieldError
from normfield.infinite import (
    Activation,
    BatchNorm,
    Dense,
    Identity,
    LayerNorm,
    MeanSubtract,
    Residual,
    RMSNorm,
    Serial,
    input_state,
    kernel,
)
from normfield.infinite.simulate import finite_kernels


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one thread


def _x(T=4, d=6, seed=0):
    return np.random.default_rng(seed).standard_normal((T, d))


def _check_limit(make, x, widths, nets, seed=0, tol=1e-3):
    """The two-width check of the module docstring, for nngp and ntk; returns the relative deviations."""
    devs = {}
    meas = {}
    for n in widths:
        net = make(n)
        pred = kernel(net, x, seed=seed, tol=tol)
        fk = finite_kernels(net, x, nets=nets, seed=seed + n)
        meas[n] = (pred, fk)
    (p1, f1), (p2, f2) = meas[widths[0]], meas[widths[1]]
    ratio = widths[0] / widths[1]
    for name in ("nngp", "ntk"):
        D1 = np.linalg.norm(getattr(f1, name) - getattr(p1, name))
        S1 = np.linalg.norm(getattr(f1, name + "_se"))
        D2 = np.linalg.norm(getattr(f2, name) - getattr(p2, name))
        S2 = np.linalg.norm(getattr(f2, name + "_se"))
        # + rounding: float64 sums of at most n2 terms, relative error <= n2 · 2.2e-16
        bound = 4 * S2 + ratio * (D1 + 4 * S1) + p2.error + widths[1] * 2.2e-16 * np.linalg.norm(getattr(p2, name))
        assert D2 <= bound, (name, D2, bound, D1, S1, S2)
        devs[name] = D2 / np.linalg.norm(getattr(p2, name))
    return devs


# (id, composition of width n); the last layer is the one under test
CASES = {
    "dense-standard": lambda n: Serial(Dense(n, sw2=1.5, sb2=0.3)),
    "dense-ntk": lambda n: Serial(Dense(n, sw2=1.5, sb2=0.3, parametrization="ntk"), Activation("relu"),
                                  Dense(n, sw2=2.0, parametrization="ntk")),
    "relu": lambda n: Serial(Dense(n, sb2=0.1), Activation("relu")),
    "bn-train-relu": lambda n: Serial(Dense(n), BatchNorm(), Activation("relu"), Dense(n)),
    "bn-train-tanh": lambda n: Serial(Dense(n), BatchNorm(), Activation("tanh")),
    "bn-eval": lambda n: Serial(Dense(n), BatchNorm(mode="eval", running_mean=np.linspace(-0.2, 0.3, n),
                                                  running_var=np.linspace(0.5, 2.0, n),
                                                  weight=np.linspace(0.5, 1.5, n), bias=0.1),
                                Activation("relu")),
    "layernorm": lambda n: Serial(Dense(n, sb2=0.2), Activation("relu"), Dense(n), LayerNorm(), Activation("tanh")),
    "rmsnorm": lambda n: Serial(Dense(n), Activation("relu"), RMSNorm(), Dense(n)),
    "mean-subtract": lambda n: Serial(Dense(n), Activation("relu"), MeanSubtract(), Identity()),
    "residual": lambda n: Serial(Dense(n), Activation("relu"),
                                 Residual(Serial(Dense(n, sb2=0.1), Activation("relu"))), Activation("relu")),
    # both paths read the same Gaussian: x + relu(x), evaluated jointly (NTK through both paths)
    "residual-shared": lambda n: Serial(Dense(n, sb2=0.2), Residual(Activation("relu")), Activation("tanh")),
}
LIGHT = ["bn-train-relu", "layernorm", "residual", "residual-shared"]


@pytest.mark.parametrize("case", LIGHT)
def test_layer_converges_to_finite_width(case):
    # tol: the stated error enters the bound, so a loose target keeps the check valid and fast
    devs = _check_limit(CASES[case], _x(), (64, 256), nets=6, tol=0.05)
    assert all(np.isfinite(v) for v in devs.values())


@pytest.mark.heavy
@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_converges_to_finite_width_heavy(case):
    devs = _check_limit(CASES[case], _x(T=5, seed=1), (128, 1024), nets=24)
    # at width 1024 the relative deviation is O(1/sqrt(1024 * 24)) ~ 1e-2 times the chain's gain
    assert max(devs.values()) < 0.1, devs


def test_dense_exact_identity():
    # Dense on the input: Σ = sw2 x xᵀ/d + sb2, Θ = d x xᵀ/d + 11ᵀ (standard), written out
    x = _x()
    res = kernel([Dense(7, sw2=1.5, sb2=0.3)], x)
    K = x @ x.T / x.shape[1]
    np.testing.assert_allclose(res.nngp, 1.5 * K + 0.3, rtol=1e-14)
    np.testing.assert_allclose(res.ntk, x.shape[1] * K + 1.0, rtol=1e-14)
    res = kernel([Dense(7, sw2=1.5, sb2=0.3, parametrization="ntk")], x)
    np.testing.assert_allclose(res.ntk, 1.5 * K + 0.3, rtol=1e-14)
    assert res.error < 1e-12 and res.states[0][1].width == 7


def test_modules_match_the_layers():
    g = torch.Generator().manual_seed(0)
    net = Serial(Dense(5), BatchNorm(), Activation("leaky_relu:0.1"), LayerNorm(), RMSNorm(), MeanSubtract(),
                 Residual(Dense(5)), BatchNorm(mode="eval", running_var=2.0))
    mod = net.module(3, generator=g)
    assert isinstance(mod, torch.nn.Sequential) and len(mod) == 8
    mod.eval()  # the batch norms keep their own mode
    assert mod[1].training and not mod[7].training
    assert abs(float(mod[2].negative_slope) - 0.1) < 1e-15
    x = torch.randn(4, 3, generator=g, dtype=torch.float64)
    y = mod(x)
    assert y.shape == (4, 5) and y.dtype == torch.float64
    # train BN output of the first block is centred over the batch
    h = mod[1](mod[0](x))
    assert float(h.detach().mean(0).abs().max()) < 1e-12
    assert net.out_width(3) == 5


def test_bad_inputs_name_the_argument():
    with pytest.raises(NormfieldError) as e:
        kernel([Dense(3)], np.array([[1.0, np.nan]]))
    assert e.value.argument == "x"
    with pytest.raises(NormfieldError) as e:
        kernel([Dense(3), BatchNorm()], np.ones((1, 4)))
    assert e.value.argument == "x" and "batch" in str(e.value)
    with pytest.raises(NormfieldError) as e:
        kernel([Residual(Dense(3))], _x())
    assert e.value.argument == "branch"
    with pytest.raises(NormfieldError) as e:
        Activation("swishy")
    assert e.value.argument == "activation"
    with pytest.raises(NormfieldError) as e:
        Dense(0)
    assert e.value.argument == "width"
    with pytest.raises(NormfieldError) as e:
        BatchNorm(mode="eval", running_var=-1.0, eps=0.0)
    assert e.value.argument == "running_var"
    with pytest.raises(NormfieldError) as e:
        kernel([BatchNorm(mode="eval", running_mean=np.zeros(3))], _x())
    assert e.value.argument == "running_mean"
    with pytest.raises(NormfieldError) as e:
        BatchNorm(running_mean=0.0)
    assert e.value.argument == "running_mean"
    with pytest.raises(NormfieldError) as e:
        input_state(_x(), tol=0.0)
    assert e.value.argument == "tol"
