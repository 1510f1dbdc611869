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
def results(tmp_path_factory):
    ctx = ClaimContext(scale="smoke", out_dir=tmp_path_factory.mktemp("jrep"), progress=False, seed=0)
    return {r.id: r for r in run_claims(IDS, ctx)}


@pytest.mark.parametrize("cid", IDS)
def test_claim_runs_and_reports(results, cid):
    r = results[cid]
    assert "crashed" not in r.notes, r.notes
    assert r.verdict in ("PASS", "FAIL") and r.measured and r.expected
    assert r.figures and all(p.exists() and p.stat().st_size > 1000 for p in r.figures)
    assert r.data and all(len(df) > 0 for df in r.data.values())
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
