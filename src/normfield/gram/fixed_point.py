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
``1_n`` (multiplicity 1) and ``λ_2 = b*(1 − c*)`` on ``1_n^⊥`` (multiplicity
``n − 1``). Both are computed without cancellation at any ``n`` (``n = 10⁹``
included), never as ``b* + (n−1)·off`` of rounded entries:

* homogeneous σ = s·x + t·relu(x): ``Σ_i u_i = 0`` removes the linear part
  from ``1ᵀσ(u)``, so ``λ_1 = t² (1 + (n−1) J(c))/2`` and
  ``λ_2 = (s² + st)·n/(n−1) + t² (1 − J(c))/2`` with ``c = −1/(n−1)`` (S.70);
* any σ: write ``σ(x) = m + a x + β (x² − 1) + φ(x)`` with ``m = E σ(u_1)``,
  ``a = E[σ(u_1) u_1]`` and ``β = E[σ(u_1)(u_1² − 1)]/v`` (``v = E(u_1² − 1)² =
  2(n−2)/(n+1)``), so that φ is orthogonal to ``1, x, x² − 1`` under the
  one-coordinate law. On the sphere ``Σ u_i = 0`` and ``Σ u_i² = n`` exactly,
  hence ``1ᵀσ(u) = n m + Σ φ(u_i)`` and the cross moments of the parts vanish:
  ``λ_1 = n m² + E φ(u_1)² + (n−1) E[φ(u_1)φ(u_2)]`` and
  ``λ_2 = (a² + β² v)·n/(n−1) + E φ(u_1)² − E[φ(u_1)φ(u_2)]``, where
  ``(n−1) E[φφ] = O(1/n)``: no large terms cancel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

import numpy as np

from normfield.core.activations import Activation, ActivationLike, get_activation
from normfield.core.gaussian import sphere_pair_expectation
from normfield.core.kernels import arccos_kernel, kernel
from normfield.core.validation import check_choice, check_int, check_memory
from normfield.errors import NormfieldError

__all__ = ["FixedPoint", "fixed_point"]

#: ``FixedPoint.to_dict()["eigenvalues"]`` lists all n eigenvalues up to this batch
#: size and is ``None`` above it (``eigenvalue_pairs`` always holds the spectrum).
EXPAND_MAX = 10_000


@dataclass(frozen=True, eq=False)
class FixedPoint:
    """The BN mean-field fixed point ``G* = b*((1 − c*) I + c* 11ᵀ)``.

    Attributes:
        activation: activation label (e.g. ``"relu"``, ``"leaky_relu(slope=0.2)"``).
        batch: batch size n.
        diagonal: ``b* = G*_ii`` (Karakida's ``q̂_{t,BN}``, S.68).
        off_diagonal: ``G*_ij = b* c*`` for i ≠ j (Karakida's ``q̂_{st,BN}``, S.69).
        condition_number: ``λ_max/λ_min`` from the two eigenvalues; ``inf`` when
            ``λ_min`` is 0 within its error (e.g. identity: ``G* 1 = 0``; see ``singular``).
        method: ``"closed"`` (homogeneous activations) or ``"quad"``.
        error: quadrature error estimate of the entries (0 for closed forms).
        eigenvalue_ones: ``b*(1 + (n−1)c*)``, eigenvector ``1_n`` (multiplicity 1).
        eigenvalue_rest: ``b*(1 − c*)``, multiplicity ``n − 1`` (vectors ⊥ ``1_n``).
        eigenvalue_error: error estimate of the eigenvalues, the larger of the two (0 for closed forms).
    """

    activation: str
    batch: int
    diagonal: float
    off_diagonal: float
    condition_number: float
    method: str = "closed"
    error: float = 0.0
    eigenvalue_ones: float = math.nan
    eigenvalue_rest: float = math.nan
    eigenvalue_error: float = 0.0

    @property
    def c_star(self) -> float:
        """``c* = G*_12 / G*_11`` (the correlation of eq. 10)."""
        return self.off_diagonal / self.diagonal

    @property
    def singular(self) -> bool:
        """True when ``λ_min`` is 0 (within its error): κ(G*) is infinite."""
        return not math.isfinite(self.condition_number)

    @property
    def eigenvalue_pairs(self) -> tuple[tuple[float, int], ...]:
        """The spectrum as ``(value, multiplicity)`` pairs, largest value first:
        ``b*(1 + (n−1)c*)`` once and ``b*(1 − c*)`` ``n − 1`` times (one pair if equal)."""
        one, rest, n = self.eigenvalue_ones, self.eigenvalue_rest, self.batch
        if one == rest:
            return ((one, n),)
        return tuple(sorted([(one, 1), (rest, n - 1)], key=lambda p: -p[0]))

    @cached_property
    def eigenvalues(self) -> np.ndarray:
        """All n eigenvalues, largest first (read-only, shape (n,)); prefer
        :attr:`eigenvalue_pairs` for large n."""
        check_memory("batch", 8.0 * self.batch,
                     hint=f"FixedPoint.eigenvalues holds batch={self.batch} floats; use eigenvalue_pairs")
        eig = np.concatenate([np.full(m, v, dtype=np.float64) for v, m in self.eigenvalue_pairs])
        eig.setflags(write=False)
        return eig

    @property
    def matrix(self) -> np.ndarray:
        """G* as an (n, n) float64 array."""
        n = self.batch
        check_memory("batch", 8.0 * n * n, hint=f"G* as a matrix holds batch²={n * n} floats")
        G = np.full((n, n), self.off_diagonal)
        np.fill_diagonal(G, self.diagonal)
        return G

    def to_dict(self) -> dict[str, Any]:
        """The CLI's JSON object.

        ``eigenvalues`` lists all n eigenvalues, largest first, for ``n <=``
        :data:`EXPAND_MAX` and is ``None`` above; ``eigenvalue_pairs`` gives the
        spectrum as ``[value, multiplicity]`` pairs at every n.
        """
        return {
            "activation": self.activation,
            "batch": self.batch,
            "diagonal": self.diagonal,
            "off_diagonal": self.off_diagonal,
            "c_star": self.c_star,
            "eigenvalues": [float(v) for v in self.eigenvalues] if self.batch <= EXPAND_MAX else None,
            "eigenvalue_pairs": [[float(v), int(m)] for v, m in self.eigenvalue_pairs],
            "eigenvalue_ones": self.eigenvalue_ones,
            "eigenvalue_rest": self.eigenvalue_rest,
            "eigenvalue_error": self.eigenvalue_error,
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


def _eigen_closed(parts: tuple[float, float], n: int) -> tuple[float, float]:
    """``(λ_1, λ_2)`` of G* for σ = s·x + t·relu(x) (module docstring), a few ulps at any n."""
    s, t = parts
    J = float(arccos_kernel(-1.0 / (n - 1)))
    lam1 = t * t * (1.0 + (n - 1) * J) / 2.0
    lam2 = (s * s + s * t) * (n / (n - 1)) + t * t * (1.0 - J) / 2.0
    return lam1, lam2


def _eigen_quad(f, n: int) -> tuple[float, float, float, float]:
    """``(λ_1, λ_2, error of λ_1, error of λ_2)`` of G* for any σ by the orthogonal split of the module docstring."""
    if n == 2:  # the sphere is ±(1, −1): λ_1 = (σ(1) + σ(−1))²/2, λ_2 = (σ(1) − σ(−1))²/2
        p, q = (float(v) for v in f(np.array([1.0, -1.0])))
        return 0.5 * (p + q) ** 2, 0.5 * (p - q) ** 2, 0.0, 0.0
    one = sphere_pair_expectation(f, None, n, same=True)
    m, e_m = float(one.value), float(one.error)
    lin = sphere_pair_expectation(f, lambda x: x, n, same=True)
    a, e_a = float(lin.value), float(lin.error)
    v = 2.0 * (n - 2) / (n + 1)  # E(u_1² − 1)² = 3(n−1)/(n+1) − 1 (u_1²/(n−1) ~ Beta(1/2, (n−2)/2))
    sq = sphere_pair_expectation(f, lambda x: x * x - 1.0, n, same=True)
    beta, e_b = float(sq.value) / v, float(sq.error) / v

    def phi(x: np.ndarray) -> np.ndarray:
        return f(x) - m - a * x - beta * (x * x - 1.0)

    dd = sphere_pair_expectation(phi, phi, n, same=True)
    oo = sphere_pair_expectation(phi, phi, n)
    d_phi, o_phi = float(dd.value), float(oo.value)
    lam1 = n * m * m + d_phi + (n - 1) * o_phi
    lam2 = (a * a + beta * beta * v) * (n / (n - 1)) + d_phi - o_phi
    e_d, e_o = float(dd.error), float(oo.error)
    err1 = 2.0 * n * abs(m) * e_m + e_d + (n - 1) * e_o
    err2 = (2.0 * abs(a) * e_a + 2.0 * abs(beta) * v * e_b) * (n / (n - 1)) + e_d + e_o
    return float(lam1), float(lam2), float(err1), float(err2)


@lru_cache(maxsize=512)
def _cached(name: str, params: tuple, n: int, method: str) -> tuple[float, ...]:
    return _compute(get_activation(name, **dict(params)), n, method)


def _compute(act: Activation, n: int, method: str) -> tuple[float, ...]:
    """``(b*, off-diagonal, entry error, λ_1, λ_2, error of λ_1, error of λ_2)``."""
    if method == "closed":
        d, o = _entries_closed(act, n)
        lam1, lam2 = _eigen_closed(act.linear_parts, n)
        return d, o, 0.0, lam1, lam2, 0.0, 0.0
    f = act.numpy_pair()[0]
    d = sphere_pair_expectation(f, f, n, same=True)
    o = sphere_pair_expectation(f, f, n)
    lam1, lam2, e1, e2 = _eigen_quad(f, n)
    return float(d.value), float(o.value), float(max(d.error, o.error)), lam1, lam2, e1, e2


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
        :class:`FixedPoint` (entries, the two eigenvalues with multiplicities, κ(G*)).

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
    homog = act.linear_parts is not None
    if method == "closed" and not homog:
        raise NormfieldError(
            f"method='closed' needs a positively homogeneous activation (relu, leaky_relu, identity), "
            f"got {act.label}; use method='auto' or 'quad'",
            argument="method",
        )
    m = "closed" if (method == "auto" and homog) else ("quad" if method == "auto" else method)
    if act.name.startswith("custom"):
        d, o, err, lam1, lam2, e1, e2 = _compute(act, n, m)
    else:
        d, o, err, lam1, lam2, e1, e2 = _cached(act.name, tuple(sorted(act.params.items())), n, m)
    if not all(math.isfinite(x) for x in (d, o, lam1, lam2)):
        raise NormfieldError(
            f"activation {act.label}: E[σ(u)²] over the BN sphere is not finite for batch {n}",
            argument="activation",
        )
    # G* is PSD: an eigenvalue within its error estimate of 0 is 0 (identity: λ_1 = 0 exactly)
    lam1 = 0.0 if lam1 <= e1 else lam1
    lam2 = 0.0 if lam2 <= e2 else lam2
    lo, hi = min(lam1, lam2), max(lam1, lam2)
    kappa = math.inf if lo <= 0.0 else hi / lo
    return FixedPoint(act.label, n, d, o, kappa, m, err, lam1, lam2, max(e1, e2))
