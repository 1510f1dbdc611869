"""Inputs as users have them: positional tuples, keyword dicts (token ids and masks), loaders' pairs.

Each model is checked against the brute-force Fisher of the same call (plain autograd Jacobian of
``model(*args, **kwargs)``, float64, exact dense route: 1e-10 relative).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from brute import explicit_fisher, explicit_jacobian
from torch import nn

import normfield as nf
from normfield.analyze.data import as_batches
from normfield.errors import NormfieldError

DT = torch.float64
pytestmark = pytest.mark.usefixtures("one_torch_thread")


class TinyLM(nn.Module):
    """(input_ids (T, S) long, attention_mask (T, S)) -> logits (T, S, V); refuses cast ids."""

    def __init__(self, vocab=7, d=6):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.mix = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, input_ids, attention_mask=None):
        assert input_ids.dtype == torch.long, "token ids must stay integers"
        h = self.emb(input_ids)
        m = attention_mask.to(h.dtype)[..., None]
        ctx = (h * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)  # masked mean over the sequence
        return self.head(self.norm(torch.tanh(self.mix(h + ctx))))


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 5), nn.Linear(2, 5)
        self.bn = nn.BatchNorm1d(5)
        self.out = nn.Linear(5, 3)

    def forward(self, u, v, scale=1.0):
        return self.out(torch.relu(self.bn(self.a(u) + self.b(v)))) * scale


def _brute_fisher(model, args, kwargs, ce):
    out, J = explicit_jacobian(model, args, kwargs)
    return explicit_fisher(out, J, "cross-entropy" if ce else "mse")


def test_dict_inputs_of_a_token_model_with_a_per_position_softmax():
    torch.manual_seed(0)
    model = TinyLM().to(DT)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 7, (4, 5), generator=g)
    mask = torch.ones(4, 5, dtype=torch.long)
    mask[:, -1] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    F = _brute_fisher(model, (), batch, ce=True)
    res = nf.analyze(model, batch, loss="cross-entropy", method="dense", layers="none")
    assert res.fisher.outputs == 5 * 7 and res.samples == 4
    assert res.lambda_max == pytest.approx(np.linalg.eigvalsh(F)[-1], rel=1e-10)
    assert res.fisher.trace == pytest.approx(np.trace(F), rel=1e-10)
    # a loader of dict batches: two of them, pooled
    two = nf.analyze(model, [batch, {"input_ids": ids.flip(0), "attention_mask": mask}], loss="cross-entropy",
                     layers="none", k=1)
    assert two.batches == 2 and len(two.per_batch) == 2


def test_tuple_inputs_are_positional_arguments():
    torch.manual_seed(2)
    model = TwoInputs().to(DT)
    g = torch.Generator().manual_seed(3)
    u, v = torch.randn(9, 3, generator=g, dtype=DT), torch.randn(9, 2, generator=g, dtype=DT)
    F = _brute_fisher(model, (u, v), {}, ce=False)
    res = nf.analyze(model, (u, v), method="dense", layers="none")
    assert res.lambda_max == pytest.approx(np.linalg.eigvalsh(F)[-1], rel=1e-10)
    # float32 arrays are cast to the analysis dtype, non-tensor arguments pass through
    scaled = nf.analyze(model, (u.float().numpy(), v, 2.0), method="dense", layers="none")
    assert scaled.lambda_max == pytest.approx(4 * res.lambda_max, rel=1e-6)


def test_batching_rules():
    x, y = torch.randn(6, 3, dtype=DT), torch.arange(6)
    kw = dict(dtype=DT, device=torch.device("cpu"))
    (b,), single = as_batches((x, y), **kw)  # a tuple at the top is ONE batch's positional arguments
    assert single and len(b.args) == 2 and b.targets is None
    (b,), single = as_batches([(x, y)], **kw)  # in a data set: an (inputs, targets) pair
    assert not single and len(b.args) == 1 and torch.equal(b.targets, y)
    (b,), _ = as_batches([(x, x)], **kw)  # the second element is not 1-D: two arguments
    assert len(b.args) == 2 and b.targets is None
    (b,), _ = as_batches([{"input_ids": y[:, None], "m": x}], **kw)
    assert b.kwargs["input_ids"].dtype == torch.long and b.kwargs["m"].dtype == DT and b.size == 6
    (b,), _ = as_batches([(x, y)], batch_inputs=lambda e: {"u": e[0]}, targets=lambda e: e[1], **kw)
    assert list(b.kwargs) == ["u"] and torch.equal(b.targets, y)
    with pytest.raises(NormfieldError, match="disagree on the batch size"):
        as_batches((x, x[:4]), **kw)
    with pytest.raises(NormfieldError, match="inputs must be a tensor"):
        as_batches("text", **kw)
    with pytest.raises(NormfieldError, match="batch_inputs"):
        as_batches(x, batch_inputs=3, **kw)
    with pytest.raises(NormfieldError, match="targets"):
        as_batches([x], targets=y, **kw)
