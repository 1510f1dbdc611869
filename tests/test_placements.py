"""Normalization placements as objects: every placement's simulation against its theorem, the
typed predictions, the dispatch (checks, routes, projections) and the refusals."""

import math

import numpy as np
import pytest
import torch

from normfield.errors import NormfieldError
from normfield.experiments.fisher import fisher_spectrum, theory_over_seeds
from normfield.fisher.dual import fisher_dual
from normfield.fisher.networks import MLPConfig, init_mlp, sample_inputs
from normfield.fisher.placements import FAST_NORMS, NORMS, PLACEMENTS, get_placement
from normfield.fisher.theory import Prediction, average_predictions, fisher_theory

# One case per placement, inside the theorem's regime and small enough for a test.  ``equal``:
# quantities the theorem predicts asymptotically exactly; their seed-mean ratio to the prediction
# must be within 4 standard errors of the mean (measured spread; false-failure odds ~1e-4) plus the
# finite-size bias named in ``bias`` (relative): O(1/M) terms dropped by the theorems ((S.31):
# λ_max of Thm 3.3 has an O(√M) correction against O(M/T), i.e. T/√M relative; the exact trace under
# last-layer BN carries (1 − 2/T), i.e. 2/T).  ``lower``: λ_max must be above the asymptotic lower
# bound (constants c1 >= 0 set to 0) on the seed mean.
CASES = {
    "none": dict(cfg=("relu", 2.0, 0.1, 3, 200, None, 2, 8), seeds=4, equal=("m_lambda", "lambda_max"),
                 bias=lambda M, T: 3 / M + 1 / math.sqrt(M)),
    "last-mean": dict(cfg=("relu", 2.0, 0.1, 3, 300, None, 1, 4), seeds=4, equal=("m_lambda", "lambda_max"),
                      bias=lambda M, T: 3 / M + T / math.sqrt(M)),
    "last-bn": dict(cfg=("tanh", 3.0, 0.64, 3, 100, None, 2, 100), seeds=3, equal=("m_lambda",),
                    lower=True, bias=lambda M, T: 3 / M + 2 / T),
    "middle-bn": dict(cfg=("relu", 2.0, 0.1, 3, 120, None, 1, 6), seeds=3, equal=(), lower=True,
                      bias=lambda M, T: 0.0),
    "layer": dict(cfg=("tanh", 3.0, 0.64, 3, 150, None, 4, 6), seeds=4, equal=("m_lambda",), lower=True,
                  bias=lambda M, T: 5 / M),
}


def test_every_placement_has_a_case():
    assert set(CASES) == set(NORMS) == set(PLACEMENTS)


@pytest.mark.parametrize("norm", NORMS)
def test_simulation_matches_theorem(norm):
    case = CASES[norm]
    cfg = MLPConfig(*case["cfg"], norm)
    df = fisher_spectrum(cfg, seeds=case["seeds"], seed=11)
    stats_cols = [c for c in ("Q1", "Q2", "eta1", "eta2", "eta3") if c in df.columns]
    preds = [fisher_theory(cfg, {c: float(r[c]) for c in stats_cols}) for _, r in df.iterrows()]
    assert all(p.theorem == cfg.placement.theorem_name for p in preds)
    M, T = cfg.width, cfg.samples
    for q in case["equal"]:
        x = np.array([getattr(r, q) / getattr(p, q) for r, p in zip(df.itertuples(), preds)])
        tol = 4 * x.std(ddof=1) / math.sqrt(len(x)) + case["bias"](M, T)
        assert abs(x.mean() - 1) < tol, (q, x, tol)
    if case.get("lower"):
        lower = np.array([p.lambda_max_lower for p in preds])
        assert df["lambda_max"].mean() >= lower.mean()
    avg = theory_over_seeds(cfg, df)
    assert avg.theorem == preds[0].theorem
    for q in ("m_lambda", "lambda_max", "lambda_max_lower", "lambda_max_upper"):
        if getattr(avg, q) is not None:
            assert getattr(avg, q) == pytest.approx(np.mean([getattr(p, q) for p in preds]), rel=1e-12)


@pytest.mark.parametrize("norm", NORMS)
def test_forward_steps_and_routes(norm):
    p = get_placement(norm)
    assert p.name == norm and get_placement(p) is p
    assert p.fast == (norm in FAST_NORMS)
    u = torch.randn(5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(p.output(u), p.batch_output(p.per_sample_output(u)), rtol=0, atol=0)
    assert p.has_batch_output == (not torch.equal(p.batch_output(u), u))
    if not p.fast:
        with pytest.raises(NormfieldError, match="route='general'"):
            p.project(torch.eye(20, dtype=torch.float64), u)


def test_projection_is_the_dual_of_the_normalized_output():
    # the fast route's projection (last-mean (S.20), last-bn (S.48)) against the general route,
    # which differentiates the normalized output itself; round-off (1e-10 of the scale)
    cfg = MLPConfig("tanh", 2.0, 0.5, 3, 9, None, 3, 6)
    params, X = init_mlp(cfg, 1), sample_inputs(cfg, 2)
    for norm in ("last-mean", "last-bn"):
        c = cfg.replace(norm=norm)
        a = fisher_dual(params, X, c, route="fast").dual
        b = fisher_dual(params, X, c, route="general").dual
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-10 * np.abs(b).max())
        np.testing.assert_array_equal(a, a.T)


def test_typed_prediction_and_flat_view():
    cfg = MLPConfig("relu", 2.0, 0.0, 3, 400, None, 1, 400, "last-mean")
    th = fisher_theory(cfg)
    assert isinstance(th, Prediction) and th.theorem == "Thm 3.3" and th.lambda_max is None
    assert th.reference == "Karakida et al. 2019, Thm 3.3, eq. (16), (18)"
    d = th.to_dict()
    assert set(d) == {"m_lambda", "lambda_max_lower", "lambda_max_upper", "kappa1", "kappa2", "alpha", "rho",
                      "regime", "reference"}
    assert d["rho"] == 1.0 and d["lambda_max_lower"] == th.lambda_max_lower
    two = average_predictions([th, th])
    assert two.lambda_max_lower == pytest.approx(th.lambda_max_lower, rel=1e-15)
    with pytest.raises(NormfieldError, match="at least one"):
        average_predictions([])


@pytest.mark.parametrize("cfg, needle, arg", [
    (MLPConfig("relu", 2.0, 0.0, 3, 10, None, 2, 4, "layer"), "exactly zero", "outputs"),
    (MLPConfig("relu", 2.0, 0.0, 3, 10, None, 1, 2, "last-bn"), "exactly zero", "samples"),
])
def test_spectrum_of_a_vanishing_fim_is_refused(cfg, needle, arg):
    # the dual can be built (it is zero; tests/test_fisher_dual.py), the spectrum sweep refuses
    with pytest.raises(NormfieldError, match=needle) as e:
        fisher_spectrum(cfg)
    assert e.value.argument == arg


def test_config_checks_come_from_the_placement():
    with pytest.raises(NormfieldError, match="depth must be >= 2") as e:
        MLPConfig("relu", 2.0, 0.0, 1, 10, None, 1, 4, "middle-bn")
    assert e.value.argument == "depth"
    with pytest.raises(NormfieldError, match="hidden widths") as e:
        MLPConfig("relu", 2.0, 0.0, 3, 10, (1.0, 0.1, 1.0), 3, 4, "layer")
    with pytest.raises(NormfieldError, match="X must hold"):
        cfg = MLPConfig("relu", 2.0, 0.0, 3, 10, None, 1, 4, "last-mean")
        fisher_dual(init_mlp(cfg, 0), torch.zeros(1, 10, dtype=torch.float64), cfg)
