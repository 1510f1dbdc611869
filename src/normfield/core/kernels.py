"""Gaussian kernels of activations: closed forms where they exist, quadrature otherwise.

For ``(u, v) ~ N(0, [[q11, q12], [q12, q22]])`` and an activation σ:

* :func:`kernel` ``= E[σ(u) σ(v)]`` (Karakida et al. 2019, eq. (5): ``I_φ[a, b]``
  is ``kernel(φ, a, a, b)``; Joudaki et al. 2023, eq. (3) without BN),
* :func:`derivative_kernel` ``= E[σ'(u) σ'(v)]`` (Karakida et al. 2019, eq. (7):
  ``I_φ'``),
* :func:`mean_activation` ``= E[σ(√q z)]`` (the "Gaussian mean" of Karakida's
  Definition 2.1).

Closed forms (relu, leaky relu, erf, sin, identity; formulas in
:mod:`normfield.core.closed_forms`) are carried by the activation object
(``Activation.closed``).
Every other activation (tanh, gelu, silu, sigmoid, selu, custom callables) goes
through :mod:`normfield.core.gaussian` (~1e-15).
"""

from __future__ import annotations


import numpy as np

from normfield.core.activations import Activation, ActivationLike, get_activation, list_activations
from normfield.core.closed_forms import arccos_kernel
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


def has_closed_form(activation: ActivationLike) -> bool:
    """Whether :func:`kernel` and friends have a closed form for this activation."""
    return get_activation(activation).closed is not None


def _closed_names() -> str:
    return ", ".join(a for a in list_activations() if get_activation(a).closed is not None)


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
    if method == "closed" and act.closed is None:
        raise NormfieldError(
            f"method='closed': no closed form for {act.label}; closed forms exist for "
            f"{_closed_names()} (use method='auto' or 'quad')",
            argument="method",
        )
    if method == "auto":
        return "closed" if act.closed is not None else "quad"
    return method


def _numpy_pair(act: Activation):
    """Float64 NumPy ``(σ, σ')`` of an activation (:meth:`Activation.numpy_pair`)."""
    return act.numpy_pair()


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
    val = act.closed.kernel(q11, q22, q12, _sqrt_prod(q11, q22), c)
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
    val = act.closed.derivative_kernel(q11, q22, q12, _sqrt_prod(q11, q22), c)
    val = np.asarray(val, dtype=np.float64)
    return QuadratureResult(val, np.zeros_like(val)) if return_error else val


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
    val = act.closed.mean(q)
    val = np.asarray(val, dtype=np.float64)
    return QuadratureResult(val, np.zeros_like(val)) if return_error else val
