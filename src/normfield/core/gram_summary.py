"""Spectral summary of one batch Gram matrix: conditioning and rank collapse.

The batch Gram G = H Hᵀ/d of a layer's output H (n samples × d units; Joudaki et al. 2023,
eq. (2), samples as rows) is summarised by its spectrum: the condition number λ_1/λ_n, the top
fraction λ_1/tr(G) (1 = rank one, 1/n = isotropic; Joudaki et al. 2023, §1: without
normalization G_l tends to rank one) and the effective rank exp(H(λ/Σλ)) (Roy & Vetterli 2007).
One function serves the measured Grams (:mod:`normfield.analyze.hooks`) and the predicted ones
(:mod:`normfield.infinite.predict`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["gram_diagnostics"]


def gram_diagnostics(G: np.ndarray, *, collapse_threshold: float = 0.9) -> dict[str, Any]:
    """Spectral summary of one batch Gram matrix.

    Args:
        G: shape (n, n), symmetric PSD, float64.
        collapse_threshold: ``collapsed`` is λ_1/tr(G) >= this.

    Returns:
        dict with mean_diag, mean_offdiag, mean_cosine (mean off-diagonal
        G_ij/sqrt(G_ii G_jj)), lambda_max, lambda_min, condition_number
        (inf when λ_min <= 1e-12·λ_max), effective_rank, top_fraction, collapsed.
    """
    n = G.shape[0]
    w = np.linalg.eigvalsh(0.5 * (G + G.T))[::-1]
    tr = float(np.trace(G))
    d = np.sqrt(np.clip(np.diag(G), 1e-300, None))
    C = G / np.outer(d, d)
    off = ~np.eye(n, dtype=bool)
    wp = np.clip(w, 0, None)
    p = wp / max(wp.sum(), 1e-300)
    ent = -float(np.sum(p[p > 0] * np.log(p[p > 0])))
    lmin = float(w[-1])
    cond = float(w[0] / lmin) if lmin > 1e-12 * max(float(w[0]), 1e-300) else math.inf
    top = float(w[0] / tr) if tr > 0 else math.nan
    return {
        "mean_diag": float(np.mean(np.diag(G))),
        "mean_offdiag": float(G[off].mean()) if n > 1 else math.nan,
        "mean_cosine": float(C[off].mean()) if n > 1 else math.nan,
        "lambda_max": float(w[0]),
        "lambda_min": lmin,
        "condition_number": cond,
        "effective_rank": math.exp(ent),
        "top_fraction": top,
        "collapsed": bool(top >= collapse_threshold) if tr > 0 else True,
    }
