"""Karakida et al. claims: registered, and runnable end to end at smoke scale (verdicts at
smoke scale mean nothing; quick-scale verdicts are in the report and docs/fisher.md)."""

import pytest

from normfield.claims.registry import ClaimContext, all_claims, get_claim, import_errors

IDS = ["K-thm2.2", "K-fig1", "K-thm3.3", "K-eq19", "K-thm3.1", "K-thm3.4", "K-thm4.1", "K-figS1"]


def test_all_registered():
    assert "karakida" not in import_errors()
    ids = {c.id for c in all_claims()}
    assert set(IDS) <= ids
    for i in IDS:
        spec = get_claim(i)
        assert spec.paper == "Karakida et al. 2019" and spec.reference and spec.statement


@pytest.mark.parametrize("cid", IDS)
def test_claim_runs_at_smoke_scale(cid, tmp_path):
    ctx = ClaimContext(scale="smoke", out_dir=tmp_path, progress=False)
    res = get_claim(cid).func(ctx)
    assert res.verdict in ("PASS", "FAIL")
    assert res.measured and res.expected and res.settings
    assert res.figures and all(p.exists() and p.stat().st_size > 1000 for p in res.figures)
    for name, df in res.data.items():
        assert len(df) > 0 and "seed" in df.columns, name


def test_fisher_cell_is_seeded():
    from normfield.fisher.cells import fisher_cell

    cell = {"activation": "relu", "sw2": 2.0, "sb2": 0.0, "depth": 3, "alphas": [1.0] * 3, "outputs": 1,
            "samples": 6, "width": 12, "norms": ["none", "last-mean"], "seed": 5}
    a, b = fisher_cell(dict(cell)), fisher_cell(dict(cell))
    assert a == b and [r["norm_used"] for r in a] == ["none", "last-mean"]
    assert a[1]["lambda_max"] < a[0]["lambda_max"]


@pytest.mark.heavy
@pytest.mark.parametrize("cid", IDS)
def test_claim_passes_at_quick_scale(cid, tmp_path):
    # ~40–100 s for all eight on 2 shared cores; run with -m heavy
    ctx = ClaimContext(scale="quick", out_dir=tmp_path, progress=False)
    res = get_claim(cid).func(ctx)
    assert res.verdict == "PASS", (res.measured, res.notes)
