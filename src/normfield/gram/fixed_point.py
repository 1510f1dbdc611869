"""The batch-norm fixed point G* (Joudaki et al. 2023, eq. 10 = Karakida et al. 2019, S.66–S.70).

Batch normalization maps each row ``h ∈ R^n`` (one unit across the batch) to
``√n M h/‖M h‖`` (``M = I − 11ᵀ/n``): a point of the sphere of radius ``√n``
in the subspace orthogonal to ``1_n``. When the input Gram matrix is
exchangeable (``G = a I + b 11ᵀ``), ``M h ~ N(0, a M)`` is isotropic in that
subspace and the image is *uniform* on the sphere, so the mean-field map
(eq. 3) sends it to

    G* = E[σ(u) σ(u)ᵀ] = b* ((1 − c*) I + c* 11ᵀ),   u ~ Unif(sphere),

whatever ``a > 0``: G* is a fixed point (and, for the activations studied by
Yang et al. 2019, the attracting one). ``b* = E[σ(u_1)²]`` and the
off-diagonal entry ``b* c* = E[σ(u_1) σ(u_2)]`` are computed exactly for any
activation and any ``n >= 2`` from the one- and two-coordinate marginals of
the uniform law (:func:`normfield.core.gaussian.sphere_pair_expectation`).

For positively homogeneous σ (relu, leaky relu, identity) the radius of a
Gaussian factorises out: if ``g ~ N(0, M)`` then ``g = ‖g‖ u/√n`` with
``‖g‖`` independent of ``u`` and ``E‖g‖² = n − 1``, so
``E[σ(u_i) σ(u_j)] = n/(n−1) · E[σ(g_i) σ(g_j)]``, a 2-D Gaussian kernel with
variance ``(n−1)/n`` and covariance ``−1/n``. For relu this is Karakida's
S.70: ``b* = 1/2``, off-diagonal ``J(−1/(n−1))/2``.

Eigenvalues (Joudaki et al., after eq. 10): ``λ_1 = b*(1 + (n−1)c*)`` on
``1_n`` and ``λ_2 = … = λ_n = b*(1 − c*)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from normfield.core.activations import Activation, ActivationLike, get_activation
from normfield.core.gaussian import sphere_pair_expectation
from normfield.core.kernels import _numpy_pair, kernel
from normfield.core.validation import check_choice, check_int, check_memory
from normfield.errors import NormfieldError

__all__ = ["FixedPoint", "fixed_point"]

#: An eigenvalue below this fraction (times n) of the largest is reported as 0
#: and makes κ(G*) infinite (round-off of b* + (n−1)·off is ~n·1e-16).
_SINGULAR_RTOL = 1e-12


@dataclass(frozen=True, eq=False)
class FixedPoint:
    """The BN mean-field fixed point ``G* = b*((1 − c*) I + c* 11ᵀ)``.

    Attributes:
        activation: activation label (e.g. ``"relu"``, ``"leaky_relu(slope=0.2)"``).
        batch: batch size n.
        diagonal: ``b* = G*_ii`` (Karakida's ``q̂_{t,BN}``, S.68).
        off_diagonal: ``G*_ij = b* c*`` for i ≠ j (Karakida's ``q̂_{st,BN}``, S.69).
        eigenvalues: shape (n,), largest first, multiplicities expanded:
            ``b*(1 + (n−1)c*)`` once and ``b*(1 − c*)`` n−1 times.
        condition_number: ``λ_max/λ_min``; ``inf`` when G* is singular (e.g.
            identity: ``G* 1 = 0``; see ``singular``).
        method: ``"closed"`` (homogeneous activations) or ``"quad"``.
        error: quadrature error estimate of the entries (0 for closed forms).
        eigenvalue_ones: ``b*(1 + (n−1)c*)``, eigenvector ``1_n``.
        eigenvalue_rest: ``b*(1 − c*)``, multiplicity ``n − 1`` (vectors ⊥ ``1_n``).
    """

    activation: str
    batch: int
    diagonal: float
    off_diagonal: float
    eigenvalues: np.ndarray = field(repr=False)
    condition_number: float
    method: str = "closed"
    error: float = 0.0
    eigenvalue_ones: float = math.nan
    eigenvalue_rest: float = math.nan

    @property
    def c_star(self) -> float:
        """``c* = G*_12 / G*_11`` (the correlation of eq. 10)."""
        return self.off_diagonal / self.diagonal

    @property
    def singular(self) -> bool:
        """True when ``λ_min`` is 0 (to round-off): κ(G*) is infinite."""
        return not math.isfinite(self.condition_number)

    @property
    def matrix(self) -> np.ndarray:
        """G* as an (n, n) float64 array."""
        n = self.batch
        G = np.full((n, n), self.off_diagonal)
        np.fill_diagonal(G, self.diagonal)
        return G

    def to_dict(self) -> dict[str, Any]:
        """The CLI's JSON object (``eigenvalues`` largest first)."""
        return {
            "activation": self.activation,
            "batch": self.batch,
            "diagonal": self.diagonal,
            "off_diagonal": self.off_diagonal,
            "c_star": self.c_star,
            "eigenvalues": [float(v) for v in self.eigenvalues],
            "eigenvalue_ones": self.eigenvalue_ones,
            "eigenvalue_rest": self.eigenvalue_rest,
            "condition_number": self.condition_number,
            "singular": self.singular,
            "method": self.method,
            "error": self.error,
        }


def _entries_closed(act: Activation, n: int) -> tuple[float, float]:
    # Homogeneous σ: E_sphere[σ(u_i)σ(u_j)] = n/(n−1) E[σ(g_i)σ(g_j)], g ~ N(0, M)
    q = (n - 1) / n
    diag = n / (n - 1) * float(kernel(act, q, q, q))
    off = n / (n - 1) * float(kernel(act, q, q, -1.0 / n))
    return diag, off


@lru_cache(maxsize=512)
def _cached(name: str, params: tuple, n: int, method: str) -> tuple[float, float, float]:
    return _compute(get_activation(name, **dict(params)), n, method)


def _compute(act: Activation, n: int, method: str) -> tuple[float, float, float]:
    if method == "closed":
        d, o = _entries_closed(act, n)
        return d, o, 0.0
    f = _numpy_pair(act)[0]
    d = sphere_pair_expectation(f, f, n, same=True)
    o = sphere_pair_expectation(f, f, n)
    return float(d.value), float(o.value), float(max(d.error, o.error))


def fixed_point(activation: ActivationLike, batch: int, *, method: str = "auto") -> FixedPoint:
    """The BN fixed point G* of the mean-field Gram map, exact for any activation.

    Joudaki et al. 2023, eq. (10); Karakida et al. 2019, S.66–S.70 (with
    ``σ_w²`` immaterial: BN removes the scale). See the module docstring for
    the derivation.

    Args:
        activation: name (``"relu"``, ``"leaky_relu:0.2"``, ``"tanh"``, …),
            :class:`Activation` or torch callable.
        batch: batch size ``n >= 2``.
        method: ``"auto"`` (closed form for positively homogeneous activations,
            sphere-marginal quadrature otherwise), ``"closed"`` or ``"quad"``.

    Returns:
        :class:`FixedPoint` (entries, eigenvalues largest first, κ(G*)).

    Raises:
        NormfieldError: ``batch < 2`` (BN of one sample is undefined),
            unknown activation, or ``method="closed"`` for a non-homogeneous one.

    Example:
        >>> fp = fixed_point("relu", 4)
        >>> round(fp.diagonal, 12), round(fp.off_diagonal, 6)
        (0.5, 0.084748)
    """
    act = get_activation(activation)
    n = check_int("batch", batch, minimum=2)
    check_choice("method", method, ("auto", "closed", "quad"))
    check_memory("batch", 8.0 * n, hint=f"FixedPoint.eigenvalues holds batch={n} floats; use a smaller batch")
    homog = act.homogeneous and act.name in ("relu", "leaky_relu", "identity")
    if method == "closed" and not homog:
        raise NormfieldError(
            f"method='closed' needs a positively homogeneous activation (relu, leaky_relu, identity), "
            f"got {act.label}; use method='auto' or 'quad'",
            argument="method",
        )
    m = "closed" if (method == "auto" and homog) else ("quad" if method == "auto" else method)
    if act.name.startswith("custom"):
        d, o, err = _compute(act, n, m)
    else:
        d, o, err = _cached(act.name, tuple(sorted(act.params.items())), n, m)
    if not (math.isfinite(d) and math.isfinite(o)):
        raise NormfieldError(
            f"activation {act.label}: E[σ(u)²] over the BN sphere is not finite for batch {n}",
            argument="activation",
        )
    lam1 = d + (n - 1) * o
    lam2 = d - o
    top = max(abs(lam1), abs(lam2))
    thr = _SINGULAR_RTOL * n * top
    lam1 = 0.0 if abs(lam1) <= thr else lam1
    lam2 = 0.0 if abs(lam2) <= thr else lam2
    eig = np.array([lam1] + [lam2] * (n - 1), dtype=np.float64)
    eig = np.sort(eig)[::-1].copy()
    eig.setflags(write=False)
    lo = eig[-1]
    kappa = math.inf if lo <= 0.0 else float(eig[0] / lo)
    return FixedPoint(act.label, n, d, o, eig, kappa, m, err, lam1, lam2)
