"""Whole data sets: the pooled curvature F = (1/N) Σ_b J_bᵀ Λ_b J_b and the per-batch spread.

Brute force: each batch's full Jacobian by plain autograd (train-mode BatchNorm1d over that batch
only, as in training), the per-batch Fishers formed explicitly and summed. Dense per-batch routes are
exact to round-off (1e-10 relative allowed); the pooled λ_max comes from Lanczos with the residual
stopping rule, so it lies within its reported error of the brute-force eigenvalue.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from brute import explicit_fisher, explicit_jacobian
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import normfield as nf
from normfield.analyze import CurvatureOperator
from normfield.analyze.pooled import spread
from normfield.errors import NormfieldError

DT = torch.float64
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).to(DT)


def _data(N=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, 4, generator=g, dtype=DT), torch.randint(0, 3, (N,), generator=g)


def _batch_fisher(model, x, loss):
    """J_bᵀ Λ_b J_b (un-normalised) of one batch, formed explicitly."""
    out, J = explicit_jacobian(model, (x,))
    return explicit_fisher(out, J, loss) * out.shape[0]


@pytest.mark.parametrize("loss", ["mse", "cross-entropy"])
def test_pooled_fisher_against_the_sum_of_per_batch_fishers(loss):
    model = _model()
    x, _ = _data()
    parts = [x[:8], x[8:16], x[16:]]
    F = sum(_batch_fisher(model, b, loss) for b in parts) / len(x)
    w = np.linalg.eigvalsh(F)[::-1]
    res = nf.analyze(model, parts, loss=loss, layers="none", k=3, tol=1e-10)
    assert (res.samples, res.batches) == (24, 3)
    f = res.fisher
    assert np.all(np.abs(f.eigenvalues - w[:3]) <= f.eigenvalue_errors + 1e-12 * w[0])
    # the per-batch traces are exact (dense duals), so the pooled trace is exact too
    assert f.trace == pytest.approx(np.trace(F), rel=1e-10) and f.trace_stderr == 0
    # the operator itself, column by column, against the explicit pooled matrix
    op = CurvatureOperator.build(model, parts, loss=loss)
    M = np.stack([op.matvec(e) for e in np.eye(op.dim)], 1)
    np.testing.assert_allclose(M, F, rtol=0, atol=1e-12 * w[0])
    assert op.products == 2 * 3 * op.dim
    # per-batch rows against analyzing each batch on its own
    assert list(res.per_batch.columns[:4]) == ["batch", "samples", "lambda_max", "trace"]
    for i, b in enumerate(parts):
        one = nf.analyze(model, b, loss=loss, layers="none", k=1)
        row = res.per_batch.iloc[i]
        assert (row.batch, row.samples) == (i, len(b))
        assert row.lambda_max == pytest.approx(one.lambda_max, rel=1e-10)
        assert row.trace == pytest.approx(one.fisher.trace, rel=1e-10)
    # batch norm couples the samples within a batch only: pooling is not one batch of 24
    whole = nf.analyze(model, x, loss=loss, layers="none", k=1)
    assert abs(whole.lambda_max - f.lambda_max) > 1e-3 * f.lambda_max


def test_dataloader_pairs_and_max_batches():
    model = _model(seed=2)
    x, y = _data(N=40, seed=3)
    loader = DataLoader(TensorDataset(x, y), batch_size=10)
    res = nf.analyze(model, loader, layers="none", k=1, max_batches=3)  # (x, y) pairs: y is not an input
    ref = nf.analyze(model, [x[:10], x[10:20], x[20:30]], layers="none", k=1)
    assert (res.batches, res.samples) == (3, 30)
    assert res.lambda_max == pytest.approx(ref.lambda_max, rel=1e-9)
    via = nf.analyze(model, loader, layers="none", k=1, max_batches=3, batch_inputs=lambda b: b[0])
    assert via.lambda_max == pytest.approx(ref.lambda_max, rel=1e-9)
    # the Hessian over a loader takes its targets from the pairs: Σ_b (T_b/N) H_b, checked by its trace
    h = nf.analyze(model, loader, loss="hessian", layers="none", k=1, max_batches=2, probes=30, seed=2)
    assert h.curvature == "hessian-cross-entropy" and h.lambda_min is not None and h.batches == 2
    assert len(h.per_batch) == 2
    op = CurvatureOperator.build(model, loader, loss="hessian", max_batches=2)
    v = np.random.default_rng(0).standard_normal(op.dim)
    parts = [CurvatureOperator.build(model, x[i:i + 10], loss="hessian", targets=y[i:i + 10]) for i in (0, 10)]
    np.testing.assert_allclose(op.matvec(v), 0.5 * parts[0].matvec(v) + 0.5 * parts[1].matvec(v), rtol=1e-12,
                               atol=1e-14)


def test_per_batch_spread_is_a_student_t_interval():
    """Two batches: t_{0.975, 1} = tan(0.475 π) (the Cauchy quantile), so the half-width is tan(0.475π)·s/√2."""
    m, h = spread(np.array([1.0, 3.0]))
    assert m == 2.0
    assert h == pytest.approx(math.tan(0.475 * math.pi) * math.sqrt(2.0) / math.sqrt(2), rel=1e-12)
    assert math.isnan(spread(np.array([1.0]))[1])
    res = nf.analyze(_model(seed=4), [_data(seed=5)[0][:8], _data(seed=6)[0][:8]], layers="none", k=1)
    s = res.per_batch_spread()
    assert s["lambda_max"]["mean"] == pytest.approx(res.per_batch.lambda_max.mean())
    assert res.to_dict()["per_batch_spread"]["trace"]["ci95"] == pytest.approx(s["trace"]["ci95"])


def test_bad_data_sets():
    model = _model()
    x, _ = _data()
    with pytest.raises(NormfieldError, match="empty") as e:
        nf.analyze(model, [])
    assert e.value.argument == "inputs"
    with pytest.raises(NormfieldError, match="empty"):
        nf.analyze(model, DataLoader(TensorDataset(x[:0]), batch_size=4))
    with pytest.raises(NormfieldError, match=r"batch 1: its shapes disagree.*\(T, 5\) but batch 0 has \(T, 4\)"):
        nf.analyze(model, [x[:8], torch.randn(8, 5, dtype=DT)])
    with pytest.raises(NormfieldError, match="inputs batch 2: batch size 1 under train-mode batch norm"):
        nf.analyze(model, [x[:8], x[8:16], x[16:17]])
    nf.analyze(model, [x[:8], x[16:17]], mode="eval", layers="none", k=1)  # eval mode: fine
    with pytest.raises(NormfieldError, match="what_if"):
        nf.analyze(model, [x[:8], x[8:16]], what_if="last-mean")
    with pytest.raises(NormfieldError, match="batch 1 has none"):
        nf.analyze(model, [(x[:8], torch.zeros(8, dtype=torch.long)), x[8:16]], loss="hessian")
    with pytest.raises(NormfieldError, match="max_batches"):
        nf.analyze(model, [x[:8]], max_batches=0)
