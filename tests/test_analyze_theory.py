"""``nf.analyze(..., theory=True)``: the prediction beside the measurement, wired through analyze."""

import numpy as np
import pytest
import torch

import normfield as nf
from normfield.analyze.theory import attach_theory


def _net(width=64):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, width), torch.nn.BatchNorm1d(width), torch.nn.ReLU(),
                               torch.nn.Linear(width, 2)).double()


def test_theory_keyword_equals_attach_theory():
    net = _net()
    x = torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    res = nf.analyze(net, x, theory=True, k=1)
    ref = attach_theory(nf.analyze(net, x, k=1), net, x)
    # same model, same batch, same seeds: the two routes give the same frame, entry for entry
    np.testing.assert_allclose(res.theory["predicted"].to_numpy(float), ref.theory["predicted"].to_numpy(float),
                               rtol=1e-12, equal_nan=True)
    lam = res.theory.set_index("quantity").loc["lambda_max"]
    assert lam["measured"] == pytest.approx(res.lambda_max, rel=1e-12)
    assert lam["predicted"] == pytest.approx(res.prediction.lambda_max, rel=1e-12)
    d = res.to_dict()
    assert [r["quantity"] for r in d["theory"]][:1] == ["lambda_max"]
    assert "theory" not in nf.analyze(net, x, k=1).to_dict()


def test_theory_refuses_a_data_set():
    net = _net(16)
    x = torch.randn(4, 6, dtype=torch.float64)
    with pytest.raises(nf.NormfieldError, match="theory"):
        nf.analyze(net, [x, x], theory=True)
