"""Claim X-byom: the code path at smoke scale, the verdict and its numbers at quick scale (heavy)."""

from __future__ import annotations

import numpy as np
import pytest
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


def test_byom_smoke_checks_that_hold_at_any_scale(tmp_path):
    """The checks that are exact statements (not large-width ones) hold at smoke scale too."""
    ctx = ClaimContext(scale="smoke", out_dir=tmp_path, progress=False)
    m = get_claim("X-byom").func(ctx).measured
    assert m["checks"]["last_mean_lowers_lambda_max"] and all(r < 1 for r in m["last_mean_ratio"])
    assert m["widths"] == [2, 4]


@pytest.mark.heavy
def test_byom_claim_quick_scale_verdict_and_numbers(tmp_path):
    """Quick scale decides X-byom as paper scale does: PASS, every check, slopes inside the band."""
    ctx = ClaimContext(scale="quick", out_dir=tmp_path, progress=False)
    res = get_claim("X-byom").func(ctx)
    m = res.measured
    assert res.verdict == "PASS", res.notes
    assert m["widths"] == [16, 32, 64, 128] and all(m["checks"].values())
    for key in ("slope_plain_lambda_max", "slope_bn_lambda_max", "slope_plain_trace"):
        assert 0.75 <= m[key] <= 1.25, key
    # measured at quick scale (seeds 0-7); λ_max to a 1e-4 residual, whose true error r²/gap is far
    # smaller, so the λ_max slopes are stable to ~1e-6
    assert m["slope_plain_lambda_max"] == pytest.approx(0.83169, abs=1e-4)
    assert m["slope_bn_lambda_max"] == pytest.approx(0.89214, abs=1e-4)
    # a 4-probe Hutchinson trace, seeded, deflated by the Lanczos basis (so it moves with the basis)
    assert m["slope_plain_trace"] == pytest.approx(1.00592, abs=1e-3)
