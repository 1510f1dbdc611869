"""Training claims (K-fig2, J-fig6/7/8) run end to end at smoke scale (verdicts mean nothing here)."""

import math

import pytest

from normfield.claims import all_claims


pytestmark = pytest.mark.usefixtures("one_torch_thread")


IDS = ["K-fig2", "J-fig6", "J-fig7", "J-fig8"]


def test_registered():
    ids = {c.id for c in all_claims()}
    assert set(IDS) <= ids


@pytest.fixture(scope="module")
def results(run_smoke_claims):
    return run_smoke_claims(IDS, "claims")


@pytest.mark.parametrize("cid", IDS)
def test_runs_and_reports(results, cid, check_claim_reported):
    check_claim_reported(results[cid])


def test_k_fig2_numbers_are_consistent(results):
    m = results["K-fig2"].measured
    c = m["confusion_none"]
    df = results["K-fig2"].data["lr_grid"]
    assert sum(c[k] for k in ("above_exploded", "above_stable", "below_exploded", "below_stable")) == \
        int((df["norm"] == "none").sum())
    assert c["well_below_total"] <= c["below_exploded"] + c["below_stable"]
    # the theory line (Thm 2.2) at α = 2: λ_max = 2((T−1)/T κ2 + κ1/T) M, κ's positive → η ∝ 1/M
    th = m["eta_theory"]["none"]
    ws = sorted(th, key=int)
    assert th[ws[0]] / th[ws[1]] == pytest.approx(int(ws[1]) / int(ws[0]), rel=1e-12)


def test_bn_claims_share_one_run(results):
    a = results["J-fig6"].data["bn_metrics"]
    b = results["J-fig8"].data["bn_metrics"]
    assert a is b  # memoised: the three claims read one pair of training runs
    m = results["J-fig7"].measured
    assert 0 <= m["entropy_init_noBN"] <= m["log2_C"] and math.isfinite(m["mean_field_entropy_init_BN"])
