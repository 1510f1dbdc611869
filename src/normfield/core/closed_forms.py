"""Closed-form Gaussian kernels of the activations that have them.

For ``(u, v) ~ N(0, [[q11, q12], [q12, q22]])``, ``s = √(q11 q22)`` and
``c = q12/s`` (0 when s = 0), and ``J(c) = (√(1−c²) + (π − arccos c) c)/π``:

* relu (arc-cosine kernels of order 1 and 0, Cho & Saul 2009; Karakida et
  al. 2019, S.70): ``E[σσ] = s J(c)/2``, ``E[σ'σ'] = (π − arccos c)/(2π)``,
  ``E[σ] = √(q/2π)``.
* leaky_relu, slope a (σ = a x + (1−a) relu x and ``E[u relu(v)] = q12/2``):
  ``E[σσ] = a q12 + (1−a)² s J(c)/2``, ``E[σ'σ'] = a + (1−a)² (π − arccos c)/(2π)``,
  ``E[σ] = (1−a)√(q/2π)``.
* erf (Williams 1997): ``E[σσ] = (2/π) arcsin(2 q12/√((1+2q11)(1+2q22)))``,
  ``E[σ'σ'] = (4/π)/√((1+2q11)(1+2q22) − 4 q12²)``, ``E[σ] = 0``.
* sin: ``E[σσ] = e^{−(q11+q22)/2} sinh q12``, ``E[σ'σ'] = e^{−(q11+q22)/2} cosh q12``, ``E[σ] = 0``.
* identity: ``q12``, ``1``, ``0``.

Each activation of :mod:`normfield.core.activations` that has closed forms
carries a :class:`ClosedForms` built here; :mod:`normfield.core.kernels`
calls it and falls back to quadrature otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["ClosedForms", "arccos_kernel", "leaky_relu_forms", "erf_forms", "sin_forms", "identity_forms"]

Arr = np.ndarray


def arccos_kernel(c) -> np.ndarray:
    """``J(c) = (√(1−c²) + (π − arccos c) c)/π`` (normalised arc-cosine kernel,
    Karakida et al. 2019, S.70), elementwise; ``J(1) = 1``."""
    c = np.clip(np.asarray(c, dtype=np.float64), -1.0, 1.0)
    return (np.sqrt(1.0 - c * c) + (math.pi - np.arccos(c)) * c) / math.pi


@dataclass(frozen=True)
class ClosedForms:
    """Closed-form Gaussian kernels of one activation (arrays of one broadcast shape).

    Attributes:
        kernel: ``(q11, q22, q12, s, c) -> E[σ(u)σ(v)]``.
        derivative_kernel: ``(q11, q22, q12, s, c) -> E[σ'(u)σ'(v)]``.
        mean: ``q -> E[σ(√q z)]``.
    """

    kernel: Callable[[Arr, Arr, Arr, Arr, Arr], Arr]
    derivative_kernel: Callable[[Arr, Arr, Arr, Arr, Arr], Arr]
    mean: Callable[[Arr], Arr]


def _deg_relu_deriv(a: float, q11: Arr, q22: Arr) -> Arr:
    """E[σ'(u)σ'(v)] when a variance vanishes: the variable sits at the kink, where σ'(0) = a
    (torch's convention); E[σ'(v)] = (1 + a)/2 for a non-degenerate v."""
    e1 = np.where(q11 > 0, 0.5 * (1.0 + a), a)
    e2 = np.where(q22 > 0, 0.5 * (1.0 + a), a)
    return e1 * e2


def leaky_relu_forms(a: float) -> ClosedForms:
    """relu (``a = 0``) and leaky relu of slope ``a``."""
    a = float(a)
    relu = a == 0.0

    def k(q11, q22, q12, s, c):
        if relu:
            return 0.5 * s * arccos_kernel(c)
        return a * q12 + (1.0 - a) ** 2 * 0.5 * s * arccos_kernel(c)

    def dk(q11, q22, q12, s, c):
        deg = (q11 == 0) | (q22 == 0)
        p = (math.pi - np.arccos(np.clip(c, -1, 1))) / (2.0 * math.pi)
        val = a + (1.0 - a) ** 2 * p
        return np.where(deg, _deg_relu_deriv(a, q11, q22), val)

    def mean(q):
        return (1.0 - a) * np.sqrt(q / (2.0 * math.pi))

    return ClosedForms(k, dk, mean)


def _zero_mean(q):
    return np.zeros_like(q)


def erf_forms() -> ClosedForms:
    def k(q11, q22, q12, s, c):
        return (2.0 / math.pi) * np.arcsin(np.clip(2.0 * q12 / np.sqrt((1.0 + 2.0 * q11) * (1.0 + 2.0 * q22)), -1, 1))

    def dk(q11, q22, q12, s, c):
        det = (1.0 + 2.0 * q11) * (1.0 + 2.0 * q22) - 4.0 * q12 * q12
        return (4.0 / math.pi) / np.sqrt(det)

    return ClosedForms(k, dk, _zero_mean)


def sin_forms() -> ClosedForms:
    def k(q11, q22, q12, s, c):
        return np.exp(-0.5 * (q11 + q22)) * np.sinh(q12)

    def dk(q11, q22, q12, s, c):
        return np.exp(-0.5 * (q11 + q22)) * np.cosh(q12)

    return ClosedForms(k, dk, _zero_mean)


def identity_forms() -> ClosedForms:
    def k(q11, q22, q12, s, c):
        return q12.copy()

    def dk(q11, q22, q12, s, c):
        return np.ones_like(q12)

    return ClosedForms(k, dk, _zero_mean)
