"""Claim X-byom at smoke scale (exercises the code path; verdicts at this scale mean nothing)."""

from __future__ import annotations

import numpy as np
import torch

from normfield.claims.byom import digits_batch, make_digits_convnet
from normfield.claims.registry import ClaimContext, get_claim


def test_digits_convnet_and_batch_are_seeded():
    x1, x2 = digits_batch(5, 3), digits_batch(5, 3)
    assert x1.shape == (5, 1, 8, 8) and x1.dtype == torch.float64 and torch.equal(x1, x2)
    m1, m2 = make_digits_convnet(4, bn=True, seed=1), make_digits_convnet(4, bn=True, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert m1(x1).shape == (5, 10)
    # He-normal: per-layer weight variance 2/fan_in within the sampling error of the layer's entries
    w = make_digits_convnet(32, bn=False, seed=0)[2].weight
    rel = float(w.detach().var()) / (2.0 / (32 * 9))
    assert abs(rel - 1) < 5 * np.sqrt(2 / w.numel())  # var of a sample variance: 2σ⁴/N


def test_byom_claim_smoke(tmp_path):
    ctx = ClaimContext(scale="smoke", out_dir=tmp_path, progress=False)
    res = get_claim("X-byom").func(ctx)
    assert res.verdict in ("PASS", "FAIL")
    m = res.measured
    assert len(m["plain_lambda_max"]) == len(m["widths"]) == 2
    assert set(m["checks"]) >= {"bn_lambda_max_above_thm34_bound", "last_mean_lowers_lambda_max"}
    # exact inequality (the last layer's block of F*), holds at any scale
    assert m["checks"]["bn_lambda_max_above_thm34_bound"]
    assert not res.data["widths"].empty and not res.data["depths"].empty
    assert all(p.exists() for p in res.figures)
