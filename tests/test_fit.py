"""Tests of normfield.gram.fit: the Theorem 1 shape fit and log–log slopes with CIs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from normfield.errors import NormfieldError
from normfield.gram.fit import fit_theorem1, loglog_slope, theorem1_curve


def test_theorem1_fit_recovers_noiseless_parameters():
    l = np.arange(1, 21)
    y = theorem1_curve(l, 0.35, 2.0, 0.4, 10, 1000)
    Y = y + 1e-9 * np.random.default_rng(0).standard_normal((5, 20))
    f = fit_theorem1(l, Y, batch=10, width=1000, method="delta")
    assert f.alpha == pytest.approx(0.35, abs=1e-6)
    assert f.c1 == pytest.approx(2.0, abs=1e-6) and f.c2 == pytest.approx(0.4, abs=1e-6)
    assert f.r2 == pytest.approx(1.0, abs=1e-9)


def test_theorem1_delta_ci_coverage():
    # Coverage of the 90% delta-method interval for α over R = 120 synthetic replications
    # (K = 20 seeds, Gaussian noise). The number covering is Binomial(120, 0.9) if the interval is
    # calibrated: mean 108, sd 3.3. We accept 96..120 (>= 3.6 sd below; a too-wide interval is
    # not an error of this kind), false-alarm rate ≈ 2e-4. Seeded.
    rng = np.random.default_rng(1)
    l = np.arange(1, 21)
    truth = theorem1_curve(l, 0.4, 1.5, 0.3, 10, 1000)
    covered = 0
    for _ in range(120):
        Y = truth + 0.05 * rng.standard_normal((20, l.size))
        f = fit_theorem1(l, Y, batch=10, width=1000, method="delta")
        covered += f.alpha_ci[0] <= 0.4 <= f.alpha_ci[1]
    assert covered >= 96, covered


def test_theorem1_bootstrap_agrees_with_delta():
    # Two routes to the same interval: on well-behaved data the bootstrap and delta-method
    # widths agree to within the bootstrap's own Monte Carlo error (~ 1/√(2·200) ≈ 5% of the
    # width for the percentile endpoints), we allow a factor 1.5.
    rng = np.random.default_rng(2)
    l = np.arange(1, 21)
    Y = theorem1_curve(l, 0.4, 1.5, 0.3, 10, 1000) + 0.05 * rng.standard_normal((30, l.size))
    fd = fit_theorem1(l, Y, batch=10, width=1000, method="delta")
    fb = fit_theorem1(l, Y, batch=10, width=1000, method="bootstrap", n_boot=200)
    wd = fd.alpha_ci[1] - fd.alpha_ci[0]
    wb = fb.alpha_ci[1] - fb.alpha_ci[0]
    assert 1 / 1.5 < wb / wd < 1.5, (wd, wb)
    assert fb.alpha == fd.alpha


def test_loglog_slope_exact_power_law_and_coverage():
    x = np.array([50, 100, 200, 500, 1000.0])
    rng = np.random.default_rng(3)
    exact = [x_ ** -0.5 * (1 + 1e-9 * rng.standard_normal(10)) for x_ in x]
    assert loglog_slope(x, exact).slope == pytest.approx(-0.5, abs=1e-8)
    # coverage of the 90% CI over 200 replications: Binomial(200, .9) mean 180, sd 4.2;
    # accept >= 165 (3.5 sd below), false-alarm ≈ 2e-4.
    hits = 0
    for _ in range(200):
        s = [x_ ** -0.5 * np.exp(0.2 * rng.standard_normal(20)) for x_ in x]
        hits += loglog_slope(x, s).contains(-0.5)
    assert hits >= 165, hits


def test_loglog_slope_bootstrap_route():
    x = np.array([10, 20, 30, 40, 50.0])
    rng = np.random.default_rng(4)
    s = [x_ ** 1.0 * np.exp(0.1 * rng.standard_normal(40)) for x_ in x]
    fd, fb = loglog_slope(x, s), loglog_slope(x, s, method="bootstrap", n_boot=300)
    assert fd.contains(1.0) and fb.contains(1.0)
    assert fb.slope == fd.slope


def test_bad_input():
    with pytest.raises(NormfieldError, match="distances"):
        fit_theorem1([1, 2, 3], np.ones((3, 3)), batch=2, width=10)
    with pytest.raises(NormfieldError, match="x"):
        loglog_slope([1.0], [np.ones(3)])
    with pytest.raises(NormfieldError, match="samples"):
        loglog_slope([1.0, 2.0], [np.ones(3), -np.ones(3)])
