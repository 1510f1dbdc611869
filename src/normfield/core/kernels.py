"""Gaussian kernels of activations: closed forms where they exist, quadrature otherwise.

For ``(u, v) ~ N(0, [[q11, q12], [q12, q22]])`` and an activation σ:

* :func:`kernel` ``= E[σ(u) σ(v)]`` (Karakida et al. 2019, eq. (5): ``I_φ[a, b]``
  is ``kernel(φ, a, a, b)``; Joudaki et al. 2023, eq. (3) without BN),
* :func:`derivative_kernel` ``= E[σ'(u) σ'(v)]`` (Karakida et al. 2019, eq. (7):
  ``I_φ'``),
* :func:`mean_activation` ``= E[σ(√q z)]`` (the "Gaussian mean" of Karakida's
  Definition 2.1).

Closed forms (``c = q12/√(q11 q22)``, ``J(c) = (√(1−c²) + (π − arccos c) c)/π``):

* relu: ``E[σσ] = √(q11 q22) J(c)/2`` (arc-cosine kernel of order 1, Cho & Saul 2009),
  ``E[σ'σ'] = (π − arccos c)/(2π)`` (order 0), ``E[σ] = √(q/2π)``.
* leaky_relu, slope s (σ = s x + (1−s) relu x, and ``E[u relu(v)] = q12/2``):
  ``E[σσ] = s q12 + (1−s)² √(q11 q22) J(c)/2``,
  ``E[σ'σ'] = s + (1−s)² (π − arccos c)/(2π)``, ``E[σ] = (1−s)√(q/2π)``.
* erf (Williams 1997): ``E[σσ] = (2/π) arcsin(2 q12/√((1+2q11)(1+2q22)))``,
  ``E[σ'σ'] = (4/π)/√((1+2q11)(1+2q22) − 4 q12²)``, ``E[σ] = 0``.
* sin: ``E[σσ] = e^{−(q11+q22)/2} sinh q12``, ``E[σ'σ'] = e^{−(q11+q22)/2} cosh q12``.
* identity: ``q12``, ``1``, ``0``.

Every other activation (tanh, gelu, silu, sigmoid, selu, custom callables) goes
through :mod:`normfield.core.gaussian` (~1e-15).
"""

from __future__ import annotations

import math

import numpy as np

from normfield.core.activations import Activation, ActivationLike, get_activation
from normfield.core.gaussian import (
    QuadratureResult,
    _as_float_array,
    _corr_angle,
    _sqrt_prod,
    gaussian_expectation,
    gaussian_pair_expectation,
)
from normfield.core.validation import check_choice
from normfield.errors import NormfieldError

__all__ = [
    "kernel",
    "derivative_kernel",
    "mean_activation",
    "has_closed_form",
    "arccos_kernel",
]

_CLOSED = ("relu", "leaky_relu", "erf", "sin", "identity")


def arccos_kernel(c) -> np.ndarray:
    """``J(c) = (√(1−c²) + (π − arccos c) c)/π`` (normalised arc-cosine kernel,
    Karakida et al. 2019, S.70), elementwise; ``J(1) = 1``."""
    c = np.clip(np.asarray(c, dtype=np.float64), -1.0, 1.0)
    return (np.sqrt(1.0 - c * c) + (math.pi - np.arccos(c)) * c) / math.pi


def has_closed_form(activation: ActivationLike) -> bool:
    """Whether :func:`kernel` and friends have a closed form for this activation."""
    return get_activation(activation).name in _CLOSED


def _prep(q11, q22, q12):
    q11 = _as_float_array("q11", q11)
    q22 = _as_float_array("q22", q22)
    q12 = _as_float_array("q12", q12)
    q11, q22, q12 = np.broadcast_arrays(q11, q22, q12)
    _corr_angle(q11, q22, q12)  # validates
    prod = _sqrt_prod(q11, q22)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.where(prod > 0, q12 / np.where(prod > 0, prod, 1.0), 0.0)
    return q11, q22, q12, np.clip(c, -1.0, 1.0)


def _method(act: Activation, method: str) -> str:
    check_choice("method", method, ("auto", "closed", "quad"))
    if method == "closed" and act.name not in _CLOSED:
        raise NormfieldError(
            f"method='closed': no closed form for {act.label}; closed forms exist for "
            f"{', '.join(_CLOSED)} (use method='auto' or 'quad')",
            argument="method",
        )
    if method == "auto":
        return "closed" if act.name in _CLOSED else "quad"
    return method


_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_SQRT2 = math.sqrt(2.0)


def _numpy_pair(act: Activation):
    """Float64 NumPy versions ``(σ, σ')`` of registry activations (the torch
    route costs ~20x more per node); ``tests/test_kernels.py`` checks them
    against the torch definitions. Custom callables use the torch route."""
    from scipy.special import erf as _erf, expit

    name = act.name
    if name == "tanh":
        return np.tanh, lambda x: 1.0 - np.tanh(x) ** 2
    if name == "erf":
        return _erf, lambda x: (2.0 / math.sqrt(math.pi)) * np.exp(-x * x)
    if name == "gelu":
        return (
            lambda x: 0.5 * x * (1.0 + _erf(x / _SQRT2)),
            lambda x: 0.5 * (1.0 + _erf(x / _SQRT2)) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi),
        )
    if name == "silu":
        return (lambda x: x * expit(x), lambda x: expit(x) * (1.0 + x * (1.0 - expit(x))))
    if name == "sigmoid":
        return expit, lambda x: expit(x) * (1.0 - expit(x))
    if name == "sin":
        return np.sin, np.cos
    if name == "selu":
        return (
            lambda x: _SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(np.minimum(x, 0.0))),
            lambda x: _SELU_SCALE * np.where(x > 0, 1.0, _SELU_ALPHA * np.exp(np.minimum(x, 0.0))),
        )
    if name in ("relu", "leaky_relu"):
        a = _leaky_slope(act)
        return (lambda x: np.where(x > 0, x, a * x), lambda x: np.where(x > 0, 1.0, a))
    if name == "identity":
        return (lambda x: x, lambda x: np.ones_like(x))
    return act.numpy, act.numpy_derivative


def _quad_pair(fn, q11, q22, q12):
    """E[fn(u) fn(v)] by quadrature; the diagonal case ``q11 = q22 = q12``
    (u = v) uses the cheaper 1-D rule on ``fn²``."""
    same = (q11 == q22) & (q12 == q11)
    if not np.any(same):
        return gaussian_pair_expectation(fn, fn, q11, q22, q12, return_error=True)
    val = np.empty(q11.shape)
    err = np.empty(q11.shape)
    v1, e1 = gaussian_expectation(lambda x: fn(x) ** 2, q11[same], return_error=True)
    val[same], err[same] = v1, e1
    rest = ~same
    if np.any(rest):
        v2, e2 = gaussian_pair_expectation(fn, fn, q11[rest], q22[rest], q12[rest], return_error=True)
        val[rest], err[rest] = v2, e2
    return QuadratureResult(val, err)


def _leaky_slope(act: Activation) -> float:
    return float(act.params.get("slope", 0.0)) if act.name == "leaky_relu" else 0.0


def kernel(activation: ActivationLike, q11, q22, q12, *, method: str = "auto", return_error: bool = False):
    """``E[σ(u) σ(v)]`` for ``(u, v) ~ N(0, [[q11, q12], [q12, q22]])``.

    Karakida et al. 2019, eq. (5) (``I_σ[a, b] = kernel(σ, a, a, b)``);
    closed forms in the module docstring.

    Args:
        activation: name, :class:`Activation` or torch callable.
        q11, q22: variances >= 0; ``q12`` with ``|q12| <= √(q11 q22)``;
            broadcastable shapes ``(...)``.
        method: ``"auto"`` (closed form if known, else quadrature),
            ``"closed"`` or ``"quad"``.
        return_error: also return an error estimate (0 for closed forms).

    Returns:
        float64 array of the broadcast shape ``(...)`` (or ``(value, error)``).

    Raises:
        NormfieldError: negative variance, ``|q12| > √(q11 q22)``, unknown
            activation, or ``method="closed"`` without a closed form.
    """
    act = get_activation(activation)
    q11, q22, q12, c = _prep(q11, q22, q12)
    m = _method(act, method)
    if m == "quad":
        res = _quad_pair(_numpy_pair(act)[0], q11, q22, q12)
        return res if return_error else res.value
    s = _sqrt_prod(q11, q22)
    if act.name == "relu":
        val = 0.5 * s * arccos_kernel(c)
    elif act.name == "leaky_relu":
        a = _leaky_slope(act)
        val = a * q12 + (1.0 - a) ** 2 * 0.5 * s * arccos_kernel(c)
    elif act.name == "erf":
        val = (2.0 / math.pi) * np.arcsin(np.clip(2.0 * q12 / np.sqrt((1.0 + 2.0 * q11) * (1.0 + 2.0 * q22)), -1, 1))
    elif act.name == "sin":
        val = np.exp(-0.5 * (q11 + q22)) * np.sinh(q12)
    else:  # identity
        val = q12.copy()
    val = np.asarray(val, dtype=np.float64)
    return QuadratureResult(val, np.zeros_like(val)) if return_error else val


def derivative_kernel(
    activation: ActivationLike, q11, q22, q12, *, method: str = "auto", return_error: bool = False
):
    """``E[σ'(u) σ'(v)]`` for ``(u, v) ~ N(0, [[q11, q12], [q12, q22]])``.

    Karakida et al. 2019, eq. (7) (``I_σ'[a, b] = derivative_kernel(σ, a, a, b)``
    and ``∫Du σ'(√q u)² = derivative_kernel(σ, q, q, q)``).

    Args and returns as :func:`kernel`. For relu the derivative at 0 is
    immaterial (a null set) unless a variance is 0; then ``σ'(0) = 0``
    (torch's convention) is used consistently by closed form and quadrature.
    """
    act = get_activation(activation)
    q11, q22, q12, c = _prep(q11, q22, q12)
    m = _method(act, method)
    if m == "quad":
        res = _quad_pair(_numpy_pair(act)[1], q11, q22, q12)
        return res if return_error else res.value
    deg = (q11 == 0) | (q22 == 0)
    if act.name in ("relu", "leaky_relu"):
        a = _leaky_slope(act)
        p = (math.pi - np.arccos(np.clip(c, -1, 1))) / (2.0 * math.pi)
        val = a + (1.0 - a) ** 2 * p
        # a variance of 0 puts u (or v) at the kink, where σ'(0) = slope (torch convention)
        val = np.where(deg, _deg_relu_deriv(a, q11, q22), val)
    elif act.name == "erf":
        det = (1.0 + 2.0 * q11) * (1.0 + 2.0 * q22) - 4.0 * q12 * q12
        val = (4.0 / math.pi) / np.sqrt(det)
    elif act.name == "sin":
        val = np.exp(-0.5 * (q11 + q22)) * np.cosh(q12)
    else:
        val = np.ones_like(q12)
    val = np.asarray(val, dtype=np.float64)
    return QuadratureResult(val, np.zeros_like(val)) if return_error else val


def _deg_relu_deriv(a: float, q11: np.ndarray, q22: np.ndarray) -> np.ndarray:
    """E[σ'(u)σ'(v)] when a variance vanishes: σ'(0) = a (σ'(x>0) = 1)."""
    # u ≡ 0 → σ'(u) = a;  E[σ'(v)] = (1 + a)/2 if q22 > 0 else a
    e1 = np.where(q11 > 0, 0.5 * (1.0 + a), a)
    e2 = np.where(q22 > 0, 0.5 * (1.0 + a), a)
    return e1 * e2


def mean_activation(activation: ActivationLike, q, *, method: str = "auto", return_error: bool = False):
    """``E[σ(√q z)]``, ``z ~ N(0, 1)`` (the Gaussian mean of Karakida et al. 2019,
    Definition 2.1), vectorised over ``q`` (shape ``(...)``)."""
    act = get_activation(activation)
    q = _as_float_array("q", q)
    if np.any(q < 0):
        raise NormfieldError("q (a variance) must be >= 0", argument="q")
    m = _method(act, method)
    if m == "quad":
        res = gaussian_expectation(_numpy_pair(act)[0], q, return_error=True)
        return res if return_error else res.value
    if act.name in ("relu", "leaky_relu"):
        val = (1.0 - _leaky_slope(act)) * np.sqrt(q / (2.0 * math.pi))
    else:  # erf, sin, identity are odd
        val = np.zeros_like(q)
    val = np.asarray(val, dtype=np.float64)
    return QuadratureResult(val, np.zeros_like(val)) if return_error else val
