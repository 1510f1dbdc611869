"""Fits of the Theorem 1 shape and of log–log slopes, with confidence intervals.

Joudaki et al. 2023, eq. (9) (Theorem 1 with κ(G*) = O(1))::

    ‖G_l − G*‖_F = O((1 − α)^{l/2} + n/√d)

:func:`fit_theorem1` fits ``E‖G_l − G*‖_F ≈ c1 (1 − α)^{l/2} + c2 n/√d`` to
per-seed distance curves and reports α — the mixing rate of Assumption 1,
measured rather than chosen — with a confidence interval.
:func:`loglog_slope` fits ``log E[y] = a + s log x`` (Fig. 3: s = −½ in d;
Fig. 4: the growth exponent in n).

Confidence intervals come from either the delta method (weighted least
squares with the seed-to-seed standard errors as weights, widened by the
Birge ratio √(χ²/dof) when the model does not describe the data within its
noise), or a bootstrap over seeds (whole trajectories resampled, the fit
redone; percentile interval).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import optimize, stats

from normfield.core.validation import check_choice, check_float, check_int
from normfield.errors import NormfieldError

__all__ = ["Theorem1Fit", "SlopeFit", "fit_theorem1", "loglog_slope", "theorem1_curve"]


@dataclass(frozen=True)
class Theorem1Fit:
    """Fit of ``c1 (1 − α)^{l/2} + c2 n/√d`` (Joudaki et al. eq. 9).

    Attributes:
        alpha: mixing rate α in (0, 1].
        alpha_ci: ``(low, high)`` confidence interval at ``level``.
        c1: transient amplitude; c1_ci its interval.
        c2: plateau constant, plateau = c2 n/√d; c2_ci its interval.
        plateau: c2 n / √d.
        chi2_dof: χ²/dof of the weighted fit at the seed-mean curve.
        r2: coefficient of determination of the fit to the mean curve.
        level: confidence level; method: ``"delta"`` or ``"bootstrap"``.
    """

    alpha: float
    alpha_ci: tuple[float, float]
    c1: float
    c1_ci: tuple[float, float]
    c2: float
    c2_ci: tuple[float, float]
    plateau: float
    chi2_dof: float
    r2: float
    level: float
    method: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SlopeFit:
    """``log E[y] = intercept + slope · log x`` with a confidence interval.

    Attributes:
        slope, intercept: fitted values.
        slope_ci: ``(low, high)`` at ``level``.
        slope_se: standard error (delta method, Birge-widened).
        chi2_dof: χ²/dof of the weighted fit.
        level, method: as in :class:`Theorem1Fit`.
    """

    slope: float
    intercept: float
    slope_ci: tuple[float, float]
    slope_se: float
    chi2_dof: float
    level: float
    method: str

    def contains(self, value: float) -> bool:
        return self.slope_ci[0] <= value <= self.slope_ci[1]

    def to_dict(self) -> dict:
        return asdict(self)


def theorem1_curve(layers: np.ndarray, alpha: float, c1: float, c2: float, n: int, d: int) -> np.ndarray:
    """``c1 (1 − α)^{l/2} + c2 n/√d`` (Joudaki et al. eq. 9)."""
    layers = np.asarray(layers, dtype=np.float64)
    return c1 * (1.0 - alpha) ** (layers / 2) + c2 * n / math.sqrt(d)


def _curve_stats(Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    K = Y.shape[0]
    mean = Y.mean(axis=0)
    sem = Y.std(axis=0, ddof=1) / math.sqrt(K)
    floor = 1e-12 * max(float(np.abs(mean).max()), 1e-300)
    return mean, np.maximum(sem, floor)


def _fit_t1(l: np.ndarray, y: np.ndarray, s: np.ndarray, scale: float):
    """Weighted LSQ of y ≈ c1 r^l + p; returns params (c1, r, p), covariance, chi2/dof."""
    p0 = max(float(y[-1]), 0.0)
    c10 = max(float(y[0] - p0), 1e-6)
    r0 = 0.5
    if y[0] > p0 and y[min(1, len(y) - 1)] > p0 and len(y) > 1:
        ratio = (y[1] - p0) / (y[0] - p0)
        if 0 < ratio < 1:
            r0 = float(ratio ** (1.0 / max(l[1] - l[0], 1)))
    r0 = min(max(r0, 0.05), 0.95)

    def resid(th):
        c1, r, p = th
        return (c1 * r ** l + p - y) / s

    res = optimize.least_squares(resid, [c10, r0, p0], bounds=([0, 0, 0], [np.inf, 1 - 1e-9, np.inf]),
                                 x_scale=[max(c10, 1e-3), 0.1, max(p0, 1e-3)], method="trf")
    dof = max(len(y) - 3, 1)
    chi2 = float(np.sum(res.fun ** 2)) / dof
    J = res.jac
    try:
        cov = np.linalg.pinv(J.T @ J) * max(1.0, chi2)
    except np.linalg.LinAlgError:  # pragma: no cover
        cov = np.full((3, 3), np.nan)
    return res.x, cov, chi2


def fit_theorem1(
    layers: Sequence[int],
    distances: np.ndarray,
    *,
    batch: int,
    width: int,
    level: float = 0.90,
    method: str = "bootstrap",
    n_boot: int = 200,
    seed: int = 0,
) -> Theorem1Fit:
    """Fit the Theorem 1 shape ``c1 (1 − α)^{l/2} + c2 n/√d`` to distance curves.

    Args:
        layers: ``(L,)`` layer indices.
        distances: ``(K, L)`` per-seed ‖G_l − G*‖_F (K >= 2 seeds).
        batch: n; width: d (they only scale c2).
        level: confidence level of the intervals.
        method: ``"bootstrap"`` (seeds resampled, ``n_boot`` refits) or ``"delta"``.
        n_boot: bootstrap replicates.
        seed: bootstrap seed.

    Returns:
        :class:`Theorem1Fit`.
    """
    l = np.asarray(layers, dtype=np.float64)
    Y = np.asarray(distances, dtype=np.float64)
    if Y.ndim != 2 or Y.shape[1] != l.size or Y.shape[0] < 2 or l.size < 4:
        raise NormfieldError(
            f"distances must have shape (seeds >= 2, layers >= 4) matching layers ({l.size}), got {Y.shape}",
            argument="distances")
    level = check_float("level", level, minimum=0.5, maximum=0.999)
    method = check_choice("method", method, ("bootstrap", "delta"))
    n = check_int("batch", batch, minimum=1)
    d = check_int("width", width, minimum=1)
    unit = n / math.sqrt(d)
    mean, sem = _curve_stats(Y)
    (c1, r, p), cov, chi2 = _fit_t1(l, mean, sem, unit)
    alpha, c2 = 1 - r * r, p / unit
    pred = c1 * r ** l + p
    ss_tot = float(np.sum((mean - mean.mean()) ** 2))
    r2 = 1 - float(np.sum((mean - pred) ** 2)) / ss_tot if ss_tot > 0 else float("nan")
    z = stats.norm.ppf(0.5 + level / 2)
    if method == "delta":
        se_c1, se_r, se_p = np.sqrt(np.clip(np.diag(cov), 0, None))
        se_a = 2 * r * se_r
        a_ci = (max(alpha - z * se_a, 0.0), min(alpha + z * se_a, 1.0))
        c1_ci = (c1 - z * se_c1, c1 + z * se_c1)
        c2_ci = ((p - z * se_p) / unit, (p + z * se_p) / unit)
    else:
        rng = np.random.default_rng(seed)
        K = Y.shape[0]
        boots = np.empty((n_boot, 3))
        for b in range(n_boot):
            Yb = Y[rng.integers(0, K, K)]
            mb, sb = _curve_stats(Yb)
            (bc1, br, bp), _, _ = _fit_t1(l, mb, sb, unit)
            boots[b] = (1 - br * br, bc1, bp / unit)
        q = [100 * (0.5 - level / 2), 100 * (0.5 + level / 2)]
        a_ci = tuple(float(v) for v in np.percentile(boots[:, 0], q))
        c1_ci = tuple(float(v) for v in np.percentile(boots[:, 1], q))
        c2_ci = tuple(float(v) for v in np.percentile(boots[:, 2], q))
    return Theorem1Fit(alpha=float(alpha), alpha_ci=tuple(map(float, a_ci)), c1=float(c1),
                       c1_ci=tuple(map(float, c1_ci)), c2=float(c2), c2_ci=tuple(map(float, c2_ci)),
                       plateau=float(p), chi2_dof=chi2, r2=float(r2), level=level, method=method)


def _wls_slope(lx: np.ndarray, ly: np.ndarray, sy: np.ndarray) -> tuple[float, float, float, float]:
    w = 1.0 / sy ** 2
    A = np.stack([np.ones_like(lx), lx], axis=1)
    AtWA = A.T @ (A * w[:, None])
    coef = np.linalg.solve(AtWA, A.T @ (w * ly))
    resid = (ly - A @ coef) / sy
    dof = max(lx.size - 2, 1)
    chi2 = float(resid @ resid) / dof
    cov = np.linalg.inv(AtWA) * max(1.0, chi2)
    return float(coef[1]), float(coef[0]), float(math.sqrt(cov[1, 1])), chi2


def loglog_slope(
    x: Sequence[float],
    samples: Sequence[np.ndarray],
    *,
    level: float = 0.90,
    method: str = "delta",
    n_boot: int = 500,
    seed: int = 0,
) -> SlopeFit:
    """Slope of ``log E[y]`` against ``log x``, with a confidence interval.

    The log of each sample mean has standard error ≈ sem/mean (delta
    method); the weighted least-squares slope's standard error is widened by
    the Birge ratio √(χ²/dof) when the points scatter more than their noise
    (e.g. curvature at small d). ``method="bootstrap"`` resamples the
    samples within each x independently and refits.

    Args:
        x: ``(P,)`` positive abscissae, P >= 2 (>= 3 for a meaningful CI).
        samples: P arrays of positive samples of y (>= 2 each).
        level: confidence level.
        method: ``"delta"`` or ``"bootstrap"``.
        n_boot, seed: bootstrap replicates and seed.
    """
    xs = np.asarray(x, dtype=np.float64)
    if xs.ndim != 1 or xs.size < 2 or np.any(xs <= 0) or len(samples) != xs.size:
        raise NormfieldError("x must be >= 2 positive values, one sample array per value", argument="x")
    samp = [np.asarray(s, dtype=np.float64).ravel() for s in samples]
    if any(s.size < 2 or np.any(s <= 0) or not np.all(np.isfinite(s)) for s in samp):
        raise NormfieldError("samples: each needs >= 2 positive finite values", argument="samples")
    level = check_float("level", level, minimum=0.5, maximum=0.999)
    method = check_choice("method", method, ("delta", "bootstrap"))
    lx = np.log(xs)

    def stats_of(ss):
        m = np.array([s.mean() for s in ss])
        se = np.array([s.std(ddof=1) / math.sqrt(s.size) for s in ss]) / m
        return np.log(m), np.maximum(se, 1e-12)

    ly, sy = stats_of(samp)
    slope, icpt, se, chi2 = _wls_slope(lx, ly, sy)
    if method == "delta":
        dof = max(xs.size - 2, 1)
        tq = stats.t.ppf(0.5 + level / 2, dof) if chi2 > 1 else stats.norm.ppf(0.5 + level / 2)
        ci = (slope - tq * se, slope + tq * se)
    else:
        rng = np.random.default_rng(seed)
        bs = np.empty(n_boot)
        for b in range(n_boot):
            ss = [s[rng.integers(0, s.size, s.size)] for s in samp]
            lyb, syb = stats_of(ss)
            bs[b] = _wls_slope(lx, lyb, syb)[0]
        ci = tuple(np.percentile(bs, [100 * (0.5 - level / 2), 100 * (0.5 + level / 2)]))
    return SlopeFit(slope=slope, intercept=icpt, slope_ci=(float(ci[0]), float(ci[1])), slope_se=se,
                    chi2_dof=chi2, level=level, method=method)
