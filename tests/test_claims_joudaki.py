"""Smoke-scale runs of the Joudaki et al. claims (code paths; verdicts at smoke scale mean nothing)."""

from __future__ import annotations

import numpy as np
import pytest

from normfield.claims.registry import ClaimContext, all_claims, run_claims

IDS = ["J-fig1", "J-fig2", "J-fig3", "J-fig4", "J-prop4", "J-fig5"]


def test_all_joudaki_claims_registered():
    ids = {c.id for c in all_claims()}
    assert set(IDS) <= ids


@pytest.fixture(scope="module")
def results(run_smoke_claims):
    return run_smoke_claims(IDS, "jrep", seed=0)


@pytest.mark.parametrize("cid", IDS)
def test_claim_runs_and_reports(results, cid, check_claim_reported):
    r = results[cid]
    check_claim_reported(r, min_figure_bytes=1000)
    df = next(iter(r.data.values()))
    assert {"run", "layer", "metric", "value", "activation"} <= set(df.columns)


def test_fig1_data_is_tidy_and_reproducible(results, tmp_path):
    ctx = ClaimContext(scale="smoke", out_dir=tmp_path, progress=False, seed=0)
    again = run_claims(["J-fig1"], ctx)[0]
    a, b = results["J-fig1"].data["J-fig1"], again.data["J-fig1"]
    np.testing.assert_array_equal(a.value.to_numpy(), b.value.to_numpy())


def test_prop4_hoffman_wielandt_always_holds(results):
    # an exact inequality, so it must hold at any scale
    for act in ("relu", "tanh"):
        assert results["J-prop4"].measured[act]["hoffman_wielandt_holds_all_runs"] is True
