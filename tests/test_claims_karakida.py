"""Karakida et al. claims: registered, runnable end to end at smoke scale with the numbers smoke
scale decides (closed-form constants, the exact zero of layer norm with two outputs), and at quick
scale (``-m heavy``) the PASS verdict with its key numbers."""

import math

import pytest

from normfield.claims.registry import ClaimContext, all_claims, get_claim, import_errors

IDS = ["K-thm2.2", "K-fig1", "K-thm3.3", "K-eq19", "K-thm3.1", "K-thm3.4", "K-thm4.1", "K-figS1"]

# relu (σ_w², σ_b²) = (2, 0), L = 3, α_l = 1: κ1 = 3/2 and κ2 in closed form from the arc-cosine
# kernels (eqs. (5)–(7), (11); see tests/test_fisher_theory.py::test_relu_kappas_closed_form)
_C = 1 / math.pi
_J = (math.sqrt(1 - _C * _C) + (math.pi - math.acos(_C)) * _C) / math.pi
_JD = (math.pi - math.acos(_C)) / (2 * math.pi)
RELU_KAPPA2 = 0.5 * (2 * _JD * _C + _J)


def test_all_registered():
    assert "karakida" not in import_errors()
    ids = {c.id for c in all_claims()}
    assert set(IDS) <= ids
    for i in IDS:
        spec = get_claim(i)
        assert spec.paper == "Karakida et al. 2019" and spec.reference and spec.statement


def _run(cid, scale, tmp_path):
    return get_claim(cid).func(ClaimContext(scale=scale, out_dir=tmp_path, progress=False))


@pytest.mark.parametrize("cid", IDS)
def test_claim_runs_at_smoke_scale(cid, tmp_path):
    res = _run(cid, "smoke", tmp_path)
    assert res.verdict in ("PASS", "FAIL")  # smoke sizes are too small for most verdicts
    assert res.measured and res.expected and res.settings
    assert res.figures and all(p.exists() and p.stat().st_size > 1000 for p in res.figures)
    for name, df in res.data.items():
        assert len(df) > 0 and "seed" in df.columns, name
    m = res.measured
    # numbers any scale decides: the theorems' constants (closed forms) and exact identities
    if cid == "K-thm2.2":
        assert m["relu"]["kappa1"] == pytest.approx(1.5, rel=1e-12)
        assert m["relu"]["kappa2"] == pytest.approx(RELU_KAPPA2, rel=1e-10)
    if cid == "K-fig1":  # ρα(κ1 − κ2) with ρ = 1, α = 2
        assert m["relu"]["lower_bound"] == pytest.approx(2 * (1.5 - RELU_KAPPA2), rel=1e-10)
    if cid == "K-thm3.3":
        assert m["relu"]["kappa1_minus_kappa2"] == pytest.approx(1.5 - RELU_KAPPA2, rel=1e-10)
    if cid == "K-thm3.4":  # relu on the BN sphere: q̂_t,BN = E[relu(ū)²] = 1/2 exactly
        assert m["relu"]["qhat_t_bn"] == pytest.approx(0.5, rel=1e-12)
    if cid == "K-thm4.1":  # C = 2 under layer norm: F* = 0 identically (App. E remark)
        assert m["C=2"]["max_abs_dual_over_unnormalized"] < 1e-12


def test_fisher_cell_is_seeded():
    from normfield.fisher.cells import fisher_cell

    cell = {"activation": "relu", "sw2": 2.0, "sb2": 0.0, "depth": 3, "alphas": [1.0] * 3, "outputs": 1,
            "samples": 6, "width": 12, "norms": ["none", "last-mean"], "seed": 5}
    a, b = fisher_cell(dict(cell)), fisher_cell(dict(cell))
    assert a == b and [r["norm_used"] for r in a] == ["none", "last-mean"]
    assert a[1]["lambda_max"] < a[0]["lambda_max"]


def test_claim_seeds_are_the_positional_blocks():
    # cell i of block b (one per claim part) has seed 100000·seed + 1000·b + i
    from normfield.fisher.cells import FisherSweep
    from normfield.fisher.networks import MLPConfig

    s = FisherSweep(MLPConfig("relu", 2.0, 0.0, 3, 10, None, 1, 4), grid=({"width": 10}, {"width": 20}), seeds=3,
                    norms=("none",), seed_block=21)
    assert [c["seed"] for c in s.cells(2)] == [221000 + i for i in range(6)]
    assert [c["width"] for c in s.cells(0)] == [10, 10, 10, 20, 20, 20]
    plain = FisherSweep(MLPConfig("relu", 2.0, 0.0, 3, 10, None, 1, 4), seeds=3)
    assert [c["seed"] for c in plain.cells(4)] == [4, 5, 6]


# Key numbers of the quick-scale run (base seed 0, --workers 1).  They depend on the seeds, the
# sizes and the exact dual only, so they agree to round-off (~1e-13 relative, the BLAS kernel's
# summation order) on every machine; 1e-8 relative leaves room for that and catches any change.
QUICK = {
    "K-thm2.2": {("relu", "lambda_max_over_theory_at_M_max"): 1.002262510667208,
                 ("tanh", "loglog_slope_lambda_max"): 0.9617191872696382},
    "K-fig1": {("relu", "slope_without"): 0.997323746970045,
               ("tanh", "slope_with_mean_subtraction"): 0.05964039418085965},
    "K-thm3.3": {("relu", "m_lambda_over_theory_at_M_max"): 0.9840640352144523},
    "K-eq19": {("relu", "m_lambda_over_theory_at_M_max"): 1.0009141562466137,
               ("tanh", "loglog_slope_lambda_max"): 0.09719558300121132},
    "K-thm3.1": {("relu", "loglog_slope_one_minus_cos"): -0.8668560413169856},
    "K-thm3.4": {("relu", "loglog_slope_lambda_max"): 0.8955768141420812,
                 ("sigmoid", "lambda_max_over_bound_at_M_max"): 1.0087428385598047},
    "K-thm4.1": {("C=3", "loglog_slope_lambda_max_over_alpha_sqrt_s"): 0.9838169558061464,
                 ("C=3", "m_lambda_over_theory_at_M_max"): 1.0028852162342758},
    "K-figS1": {("relu", "loglog_slope_std"): -0.39771745490115323,
                ("tanh", "loglog_slope_std"): -0.4877492863525457},
}


@pytest.mark.heavy
@pytest.mark.parametrize("cid", IDS)
def test_claim_passes_at_quick_scale(cid, tmp_path):
    # ~3 min for all eight on 2 shared cores; run with -m heavy
    res = _run(cid, "quick", tmp_path)
    assert res.verdict == "PASS", (res.measured, res.notes)
    for (part, key), value in QUICK[cid].items():
        assert res.measured[part][key] == pytest.approx(value, rel=1e-8, abs=1e-12), (part, key)
