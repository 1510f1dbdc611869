"""Spectra of Gram matrices and hidden representations.

* The Marchenko–Pastur (MP) law of the eigenvalues of ``XᵀX/d`` for a
  ``d×n`` matrix ``X`` with i.i.d. N(0, σ²) entries, ratio ``γ = n/d``
  (Marchenko & Pastur 1967), which Joudaki et al. 2023 (§6.1, Fig. 5,
  Appendix B) compare with the singular values of ``h_l``;
* the law of the *singular values* ``s = √λ`` (the right variable for
  Fig. 5), optionally normalised by its median as in the paper's figure;
* the Kolmogorov–Smirnov distance of a sample to a CDF, spike/outlier
  detection above the MP edge;
* the spectral distance ``√Σ(λ_i(A) − λ_i(B))²`` of Corollary 3, bounded by
  ``‖A − B‖_F`` (Hoffman–Wielandt inequality).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy import optimize

from normfield.core.validation import check_float, check_int
from normfield.errors import NormfieldError

__all__ = [
    "mp_support",
    "mp_pdf",
    "mp_cdf",
    "mp_quantile",
    "mp_singular_pdf",
    "mp_singular_cdf",
    "ks_distance",
    "count_outliers",
    "outlier_mask",
    "spectral_distance",
    "bulk_deviation",
]


def _gamma(gamma: float) -> float:
    return check_float("gamma", gamma, minimum=0.0, strict_min=True)


def mp_support(gamma: float, sigma2: float = 1.0) -> tuple[float, float]:
    """Edges ``(a, b) = σ²(1 ∓ √γ)²`` of the MP continuous part.

    Args:
        gamma: ratio n/d > 0.
        sigma2: entry variance σ² > 0.
    """
    g = _gamma(gamma)
    s2 = check_float("sigma2", sigma2, minimum=0.0, strict_min=True)
    return s2 * (1 - math.sqrt(g)) ** 2, s2 * (1 + math.sqrt(g)) ** 2


def mp_pdf(x: np.ndarray, gamma: float, sigma2: float = 1.0) -> np.ndarray:
    """Density of the continuous part of the MP law.

    ``f(x) = √((b − x)(x − a)) / (2π σ² γ x)`` on ``[a, b]`` (Marchenko &
    Pastur 1967); it integrates to ``min(1, 1/γ)``, the rest being an atom
    at 0 when γ > 1.

    Args:
        x: eigenvalues, any shape.
        gamma: n/d.
        sigma2: σ².

    Returns:
        Density, same shape as ``x``.
    """
    a, b = mp_support(gamma, sigma2)
    x = np.asarray(x, dtype=np.float64)
    inside = (x > a) & (x < b)
    xs = np.where(inside, x, 0.5 * (a + b))
    f = np.sqrt(np.clip((b - xs) * (xs - a), 0, None)) / (2 * math.pi * sigma2 * gamma * xs)
    return np.where(inside, f, 0.0)


# Gauss–Legendre nodes on [0, 1], cached by order
_GL: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _gl(order: int) -> tuple[np.ndarray, np.ndarray]:
    if order not in _GL:
        t, w = np.polynomial.legendre.leggauss(order)
        _GL[order] = (0.5 * (t + 1), 0.5 * w)
    return _GL[order]


def mp_cdf(x: np.ndarray, gamma: float, sigma2: float = 1.0, *, order: int = 64) -> np.ndarray:
    """CDF of the MP law (with its atom ``max(0, 1 − 1/γ)`` at 0).

    Computed by Gauss–Legendre quadrature after ``x = m − r cos θ`` (m = σ²(1+γ),
    r = 2σ²√γ), which turns the square-root edges into the smooth integrand
    ``r² sin²θ / (2π σ² γ (m − r cos θ))`` on ``[0, θ(x)]`` (spectral accuracy).

    Args:
        x: points, any shape.
        gamma: n/d.
        sigma2: σ².
        order: quadrature order.

    Returns:
        CDF values, same shape as ``x``.
    """
    a, b = mp_support(gamma, sigma2)
    x = np.asarray(x, dtype=np.float64)
    m, r = sigma2 * (1 + gamma), 2 * sigma2 * math.sqrt(gamma)
    theta = np.arccos(np.clip((m - np.clip(x, a, b)) / r, -1, 1))  # 0 at a, π at b
    t, w = _gl(order)
    tt = theta[..., None] * t  # (..., order)
    integrand = r * r * np.sin(tt) ** 2 / (2 * math.pi * sigma2 * gamma * (m - r * np.cos(tt)))
    cont = theta * (integrand @ w)
    atom = max(0.0, 1.0 - 1.0 / gamma)
    return np.where(x < 0, 0.0, atom + cont)


def mp_quantile(p: float, gamma: float, sigma2: float = 1.0) -> float:
    """The ``p``-quantile of the MP law (root of the CDF by Brent's method)."""
    p = check_float("p", p, minimum=0.0, maximum=1.0)
    a, b = mp_support(gamma, sigma2)
    atom = max(0.0, 1.0 - 1.0 / gamma)
    if p <= atom:
        return 0.0
    if p >= 1.0:
        return b
    return float(optimize.brentq(lambda x: float(mp_cdf(x, gamma, sigma2)) - p, a, b, xtol=1e-14 * b))


def _singular_scale(gamma: float, normalize: str | None) -> float:
    if normalize is None:
        return 1.0
    if normalize == "median":
        if gamma > 1:
            raise NormfieldError("median normalisation needs gamma <= 1 (no atom at 0)", argument="gamma")
        return math.sqrt(mp_quantile(0.5, gamma))
    raise NormfieldError(f"normalize must be 'median' or None, got {normalize!r}", argument="normalize")


def mp_singular_pdf(s: np.ndarray, gamma: float, *, normalize: str | None = "median") -> np.ndarray:
    """Density of ``t = √λ / c`` with λ ~ MP(γ, σ²=1) and ``c`` = the median of √λ.

    Singular values of ``X/√d`` are ``√λ``; the paper's Fig. 5 divides them
    by their median so that the law is scale free. By change of variables
    ``f_t(t) = f_λ((c t)²) · 2 c² t``.

    Args:
        s: points.
        gamma: n/d (<= 1 for the median normalisation).
        normalize: ``"median"`` or None (c = 1).
    """
    c = _singular_scale(_gamma(gamma), normalize)
    s = np.asarray(s, dtype=np.float64)
    return mp_pdf((c * s) ** 2, gamma) * 2 * c * c * np.abs(s)


def mp_singular_cdf(s: np.ndarray, gamma: float, *, normalize: str | None = "median") -> np.ndarray:
    """CDF of the (median-normalised) MP singular value, ``F_λ((c s)²)``."""
    c = _singular_scale(_gamma(gamma), normalize)
    s = np.asarray(s, dtype=np.float64)
    return np.where(s < 0, 0.0, mp_cdf((c * np.clip(s, 0, None)) ** 2, gamma))


def ks_distance(samples: np.ndarray, cdf: Callable[[np.ndarray], np.ndarray]) -> float:
    """One-sample Kolmogorov–Smirnov distance ``sup_x |F_m(x) − F(x)|``.

    Args:
        samples: 1-D sample of size m >= 1.
        cdf: vectorised continuous CDF.
    """
    x = np.sort(np.asarray(samples, dtype=np.float64).ravel())
    m = check_int("samples (size)", x.size, minimum=1)
    F = cdf(x)
    i = np.arange(1, m + 1)
    return float(max(np.max(i / m - F), np.max(F - (i - 1) / m)))


def outlier_mask(values: np.ndarray, gamma: float, *, tol: float = 0.25) -> np.ndarray:
    """Mask of median-normalised singular values outside the MP bulk.

    A value is an outlier (a spike, e.g. the 1_n direction: above the bulk
    for relu, below it for tanh whose G* has c* < 0) when
    ``s/median(s) > (1 + tol) s₊`` or ``s/median(s) < (1 − tol) s₋``, with
    ``s₊, s₋ = √b/c, √a/c`` the median-normalised MP edges. ``tol`` leaves
    room for the finite-n edge fluctuation (Tracy–Widom, relative size
    O(n^{-2/3})).

    Args:
        values: ``(..., n)`` positive singular values (any order).
        gamma: n/d (<= 1).
        tol: relative margin beyond the edges.

    Returns:
        Boolean array of the shape of ``values``.
    """
    c = _singular_scale(_gamma(gamma), "median")
    a, b = mp_support(gamma)
    lo, hi = math.sqrt(a) / c, math.sqrt(b) / c
    v = np.asarray(values, dtype=np.float64)
    t = v / np.median(v, axis=-1, keepdims=True)
    return (t > (1 + tol) * hi) | (t < (1 - tol) * lo)


def count_outliers(values: np.ndarray, gamma: float, *, tol: float = 0.25, side: str = "both") -> np.ndarray:
    """Number of singular values outside the MP bulk (see :func:`outlier_mask`).

    Args:
        values: ``(..., n)`` singular values.
        gamma: n/d.
        tol: relative margin beyond the edges.
        side: ``"both"``, ``"upper"`` (spikes above) or ``"lower"`` (below).

    Returns:
        Integer counts of shape ``values.shape[:-1]``.
    """
    v = np.asarray(values, dtype=np.float64)
    mask = outlier_mask(v, gamma, tol=tol)
    if side == "both":
        return mask.sum(axis=-1)
    above = v > np.median(v, axis=-1, keepdims=True)
    if side == "upper":
        return (mask & above).sum(axis=-1)
    if side == "lower":
        return (mask & ~above).sum(axis=-1)
    raise NormfieldError(f"side must be both, upper or lower, got {side!r}", argument="side")


def spectral_distance(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``√Σ_i (λ_i(A) − λ_i(B))²`` with both spectra sorted (Joudaki et al. Cor. 3).

    For symmetric A, B the Hoffman–Wielandt inequality gives
    ``spectral_distance(A, B) <= ‖A − B‖_F``.

    Args:
        A, B: ``(..., n, n)`` symmetric (broadcastable).

    Returns:
        ``(...)`` distances.
    """
    la = np.linalg.eigvalsh(np.asarray(A, dtype=np.float64))
    lb = np.linalg.eigvalsh(np.asarray(B, dtype=np.float64))
    return np.sqrt(((la - lb) ** 2).sum(axis=-1))


def bulk_deviation(eigenvalues: np.ndarray, center: float, *, skip_top: int = 1) -> np.ndarray:
    """Largest ``|λ_i − center|`` over the bulk, i.e. all but the ``skip_top`` largest.

    Proposition 4 of Joudaki et al.: n − O(1) eigenvalues of G_l lie within
    O(√(n/d)) of ``b*(1 − c*)``.

    Args:
        eigenvalues: ``(..., n)``.
        center: b*(1 − c*).
        skip_top: number of top eigenvalues excluded (the O(1) outliers).
    """
    ev = np.sort(np.asarray(eigenvalues, dtype=np.float64), axis=-1)
    bulk = ev[..., : ev.shape[-1] - skip_top] if skip_top > 0 else ev
    return np.abs(bulk - center).max(axis=-1)
