"""Training claims (K-fig2-line, K-fig2-mean, J-fig6/7/8): end to end at smoke scale, verdicts at quick scale."""

import math

import numpy as np
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


# -- the verdicts, at the scale that decides them (smoke is too small: widths 8/16, 20 GD steps,
#    a 32-wide BN net whose 128-row Gram is rank-deficient) ---------------------------------------


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    from normfield.claims.registry import ClaimContext, run_claims

    ctx = ClaimContext(scale="quick", out_dir=tmp_path_factory.mktemp("claims-quick"), progress=False)
    return {r.id: r for r in run_claims(IDS, ctx)}


@pytest.mark.heavy
def test_k_fig2_line_quick_is_a_measured_catapult_fail(quick):
    r = quick["K-fig2-line"]
    m = r.measured
    assert r.verdict == "FAIL" and r.failure == "not-reproduced"
    assert m["well_below_exploded"] == 0 and m["well_below_total"] > 0
    assert m["fraction_above_exploded_two_widest"] < 0.9 and m["converged_above_line"] > 0
    # runs stop converging above the line, at every width
    assert all(v > 1.0 for v in m["stop_converging_factor"].values())
    # catapult: every converged run above the line ended less sharp than it started, most below 2/η
    df = r.data["lr_grid"]
    cat = df[(df["norm"] == "none") & (df["lr"] > df["eta_emp"]) & (df["outcome"] == "converged")]
    assert (cat["lambda_max_end"] < cat["lambda_max"]).all()
    assert m["converged_above_line_eta_lambda_end_median"] <= 2.0
    assert m["converged_above_line_loss_rose"] >= 0.8 * m["converged_above_line"]
    assert m["below_line_monotone"] >= 0.9 * m["below_line_not_exploded"]
    # 2/λ_max at init follows Thm 2.2 (finite-width corrections of tens of percent at M = 32)
    for w, emp in m["eta_emp_2_over_lambda_max"].items():
        assert 0.7 <= emp / m["eta_theory"][w] <= 1.4
    # a collapsed run sits at the constant-output loss
    coll = df[df["outcome"] == "collapsed"]
    np.testing.assert_allclose(coll["final_loss"] / coll["constant_loss"], 1.0, rtol=1e-6)


@pytest.mark.heavy
def test_k_fig2_mean_quick_passes_with_a_check_that_has_power(quick):
    r = quick["K-fig2-mean"]
    m = r.measured
    assert r.verdict == "PASS"
    res = m["slope_resolution"]
    assert abs(m["slope_logeta_logM_mean_subtraction"]) <= res
    assert m["slope_logeta_logM_none"] < -res  # the same widths resolve the no-normalization slope
    ratios = m["converged_lr_ratio_mean_over_none"]
    assert ratios[max(ratios)] > 1.0 and all(v >= 1.0 for v in ratios.values())


@pytest.mark.heavy
def test_j_fig6_7_8_quick_pass(quick):
    s6 = quick["J-fig6"].measured["log_eig_std"]
    assert quick["J-fig6"].verdict == "PASS"
    last = max(int(k.rsplit("epoch", 1)[1]) for k in s6)
    for ep in (0, last):
        assert s6[f"BN_epoch{ep}"] < 0.5 * s6[f"noBN_epoch{ep}"]
    m7 = quick["J-fig7"].measured
    assert quick["J-fig7"].verdict == "PASS"
    assert abs(m7["entropy_init_BN_mean"] - m7["mean_field_entropy_init_BN"]) <= m7["tolerance"]
    assert m7["entropy_init_noBN_mean"] <= 0.5 and m7["entropy_init_BN_mean_over_log2_C"] > 0.6
    m8 = quick["J-fig8"].measured
    assert quick["J-fig8"].verdict == "PASS"
    assert m8["epochs_BN_drop_larger"] == m8["epochs"] > 0 and m8["loss_drop_BN"] > 10 * m8["loss_drop_noBN"]
