"""Activation registry: names, parameters, closed-form derivatives vs autograd, pickling."""

import pickle

import pytest
import torch

import normfield as nf
from normfield.core.activations import Activation


@pytest.mark.parametrize("name", nf.list_activations())
def test_closed_form_derivative_matches_autograd(name):
    act = nf.get_activation(name)
    x = torch.linspace(-3, 3, 601, dtype=torch.float64)
    x = x[x.abs() > 1e-9]  # kinks at 0 have no derivative
    auto = Activation("auto", act.fn).derivative(x)
    torch.testing.assert_close(act.derivative(x), auto, rtol=1e-12, atol=1e-12)


def test_leaky_relu_parameters_including_negative_slope():
    assert nf.get_activation("leaky_relu:0.2").params == {"slope": 0.2}
    assert nf.get_activation("leaky_relu:-0.5").params == {"slope": -0.5}
    assert nf.get_activation("leaky-relu", slope=0.3).params == {"slope": 0.3}
    # slope 1 is the identity
    x = torch.randn(50, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(nf.get_activation("leaky_relu:1")(x), x, rtol=0, atol=0)


@pytest.mark.parametrize("bad", ["relux", "tanh:2", "leaky_relu:abc", 3])
def test_bad_activation_names_the_argument(bad):
    with pytest.raises(nf.NormfieldError, match="activation"):
        nf.get_activation(bad)


def test_pickle_roundtrip_keeps_parameters():
    a = pickle.loads(pickle.dumps(nf.get_activation("leaky_relu:0.2")))
    assert a.params == {"slope": 0.2} and a.name == "leaky_relu"


def test_user_callable_uses_autograd():
    act = nf.get_activation(torch.tanh)
    x = torch.tensor([0.3, -1.2], dtype=torch.float64)
    torch.testing.assert_close(act.derivative(x), 1 - torch.tanh(x) ** 2)
