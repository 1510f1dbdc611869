"""Training claims (K-fig2-line, K-fig2-mean, J-fig6/7/8): end to end at smoke scale, verdicts at quick scale."""

import math

import pytest

from normfield.claims import all_claims


pytestmark = pytest.mark.usefixtures("one_torch_thread")


IDS = ["K-fig2-line", "K-fig2-mean", "J-fig6", "J-fig7", "J-fig8"]


def test_registered():
    from normfield.claims.registry import aliases, expand_ids

    ids = {c.id for c in all_claims()}
    assert set(IDS) <= ids
    assert aliases()["K-fig2"] == ("K-fig2-line", "K-fig2-mean")
    assert expand_ids(["K-fig2"]) == ["K-fig2-line", "K-fig2-mean"]


@pytest.fixture(scope="module")
def results(run_smoke_claims):
    return run_smoke_claims(IDS, "claims")


@pytest.mark.parametrize("cid", IDS)
def test_runs_and_reports(results, cid, check_claim_reported):
    check_claim_reported(results[cid])


def test_k_fig2_numbers_are_consistent(results):
    line, mean = results["K-fig2-line"], results["K-fig2-mean"]
    assert line.data["lr_grid"] is mean.data["lr_grid"]  # one grid, memoised, read by both claims
    m = line.measured
    df = line.data["lr_grid"]
    none = df[df["norm"] == "none"]
    assert sum(m["outcomes_above_line"].values()) + sum(m["outcomes_below_line"].values()) == len(none)
    assert set(df["outcome"]) <= {"converged", "collapsed", "exploded", "unconverged"}
    assert m["well_below_total"] <= sum(m["outcomes_below_line"].values())
    # the theory line (Thm 2.2) at α = 2: λ_max = 2((T−1)/T κ2 + κ1/T) M, κ's positive → η ∝ 1/M
    th = m["eta_theory"]
    ws = sorted(th, key=int)
    assert th[ws[0]] / th[ws[1]] == pytest.approx(int(ws[1]) / int(ws[0]), rel=1e-12)
    assert line.verdict in ("PASS", "FAIL") and len(line.figures) == 2 and len(mean.figures) == 1


def test_bn_claims_share_one_run(results):
    a = results["J-fig6"].data["bn_metrics"]
    b = results["J-fig8"].data["bn_metrics"]
    assert a is b  # memoised: the three claims read one pair of training runs
    m = results["J-fig7"].measured
    assert 0 <= m["entropy_init_noBN"] <= m["log2_C"] and math.isfinite(m["mean_field_entropy_init_BN"])
