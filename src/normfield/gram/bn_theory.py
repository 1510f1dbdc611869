"""Mean-field law of the predicted-class entropy of a BN-MLP at initialization (Joudaki et al. 2023, §6.2).

At the BN fixed point G* = b*((1 − c*) I + c* 11ᵀ) (Joudaki eq. (10),
:func:`normfield.gram.fixed_point.fixed_point`) the readout's logits are a shared
class offset plus independent per-sample noise; the class frequencies of their
argmax, and so the entropy of Fig. 7, follow by one-dimensional quadrature over
the draw of the readout.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from normfield.core.validation import check_int
from normfield.errors import NormfieldError

__all__ = ["class_probabilities_theory", "entropy_at_init_theory"]


def class_probabilities_theory(a: np.ndarray, ratio: float, *, nodes: int = 80) -> np.ndarray:
    """P(argmax_c (√ratio·a_c + e_c) = c) for e ~ N(0, I_C), by Gauss–Hermite quadrature.

    p_c = ∫ φ(t) Π_{c'≠c} Φ(t + √ratio (a_c − a_c')) dt (condition on e_c = t).

    Args:
        a: class offsets, shape (R, C) (R independent draws).
        ratio: variance of the shared offset over that of the per-sample noise.
        nodes: quadrature order; the integrand is smooth, so the error falls
            geometrically (80 nodes: below 1e-10 for ratio <= 10, checked in the tests).

    Returns:
        ndarray (R, C), rows summing to 1 up to the quadrature error.
    """
    from numpy.polynomial.hermite_e import hermegauss
    from scipy.special import log_ndtr

    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    R, C = a.shape
    t, w = hermegauss(nodes)
    logw = np.log(w / math.sqrt(2 * math.pi))
    out = np.empty((R, C))
    k = math.sqrt(max(ratio, 0.0))
    block = max(1, int(4e6 // (C * C * nodes)))
    for s in range(0, R, block):
        d = k * (a[s:s + block, :, None] - a[s:s + block, None, :])  # (r, C, C'): a_c − a_c'
        lp = log_ndtr(t[None, None, None, :] + d[..., None])  # (r, C, C', Q)
        idx = np.arange(C)
        lp[:, idx, idx, :] = 0.0  # c' = c excluded
        tot = lp.sum(axis=2) + logw  # (r, C, Q)
        m = tot.max(axis=2, keepdims=True)
        out[s:s + block] = np.exp(m[..., 0]) * np.exp(tot - m).sum(axis=2)
    return out


def entropy_at_init_theory(activation: Any, batch: int, num_classes: int, width: int, *,
                           draws: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean-field predicted-class entropy of a BN-MLP at initialization (Joudaki et al. 2023, §6.2).

    At the BN fixed point (Joudaki eq. (10), :func:`normfield.gram.fixed_point.fixed_point`)
    the penultimate features of a batch have Gram G* = b*((1 − c*) I + c* 11ᵀ): a shared
    mean direction of squared norm b*c* per unit and independent parts of b*(1 − c*).
    A readout row w_c ~ U(±1/√d) with bias b_c ~ U(±1/√d) therefore gives logits
    z_ic ∝ √(b*c* + 1/d)·a_c + √(b*(1 − c*))·e_ic, with a_c, e_ic i.i.d. N(0, 1)
    (CLT over the d units). The class frequencies are p_c(a) =
    :func:`class_probabilities_theory` and the entropy H(a) = −Σ p_c log2 p_c is random
    through the draw of the readout a; this returns its law's mean and spread.

    Args:
        activation: hidden activation (``"relu"``).
        batch: n, the batch size of the batch statistics.
        num_classes: C.
        width: d (the readout's fan-in, for the bias term).
        draws: Monte Carlo draws of a.
        seed: seeds the draws.

    Returns:
        ``{"mean", "sd", "stderr", "ratio", "log2_C"}``: E[H], its standard deviation over
        initializations, the Monte Carlo standard error of the mean (sd/√draws), and the
        offset-to-noise variance ratio.
    """
    from normfield.gram.fixed_point import fixed_point

    C = check_int("num_classes", num_classes, minimum=2)
    d = check_int("width", width, minimum=1)
    draws = check_int("draws", draws, minimum=2)
    fp = fixed_point(activation, check_int("batch", batch, minimum=2))
    shared = float(fp.off_diagonal) + 1.0 / d
    noise = float(fp.diagonal - fp.off_diagonal)
    if noise <= 0:
        raise NormfieldError(f"activation: the BN fixed point of {activation!r} has no per-sample variance "
                             f"(G* is rank one); the entropy is 0", argument="activation")
    ratio = shared / noise
    a = np.random.default_rng(seed).standard_normal((draws, C))
    p = np.clip(class_probabilities_theory(a, ratio), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        H = -np.where(p > 0, p * np.log2(p), 0.0).sum(axis=1)
    sd = float(H.std(ddof=1))
    return {"mean": float(H.mean()), "sd": sd, "stderr": sd / math.sqrt(draws), "ratio": ratio,
            "log2_C": math.log2(C)}
