"""Activation registry.

Every activation is an :class:`Activation`: a torch callable, its derivative
(closed form where known, autograd otherwise), a float64 NumPy view for
quadrature, flags that the theory needs (positive homogeneity, sign), and,
where they exist, its closed-form Gaussian kernels
(:class:`normfield.core.closed_forms.ClosedForms`) and its decomposition
``σ = s·x + t·relu(x)`` (positively homogeneous activations). The kernel
routines of :mod:`normfield.core.kernels` read these attributes; nothing
dispatches on the name.

Names: ``relu``, ``leaky_relu`` (parameter ``slope``), ``tanh``, ``erf``,
``gelu``, ``silu``, ``sigmoid``, ``sin``, ``selu``, ``identity``; or any
user-supplied torch callable via :func:`get_activation`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from normfield.core.closed_forms import ClosedForms, erf_forms, identity_forms, leaky_relu_forms, sin_forms
from normfield.errors import NormfieldError

__all__ = ["Activation", "get_activation", "list_activations", "ActivationLike"]

Fn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Activation:
    """A pointwise activation σ.

    Attributes:
        name: registry name (``"custom"`` for user callables).
        fn: σ as a torch function, elementwise, any shape/dtype/device.
        deriv: σ' as a torch function, or ``None`` to use autograd.
        params: extra parameters (e.g. ``{"slope": 0.1}`` for leaky_relu).
        homogeneous: σ(a x) = a σ(x) for all a > 0 (relu, leaky_relu, identity).
        nonnegative: σ(x) >= 0 everywhere (relu, sigmoid, ...).
        smooth: σ is C^∞ (quadrature converges spectrally).
        closed: closed-form Gaussian kernels, or ``None`` (quadrature).
        linear_parts: ``(s, t)`` with ``σ(x) = s·x + t·relu(x)`` for the
            positively homogeneous registry activations (relu ``(0, 1)``, leaky
            relu ``(a, 1 − a)``, identity ``(1, 0)``), else ``None``.
        np_fn, np_deriv: float64 NumPy versions of σ and σ' (the torch route
            costs ~20x more per quadrature node), or ``None`` to go through torch.
    """

    name: str
    fn: Fn
    deriv: Fn | None = None
    params: dict = field(default_factory=dict)
    homogeneous: bool = False
    nonnegative: bool = False
    smooth: bool = True
    closed: ClosedForms | None = field(default=None, repr=False, compare=False)
    linear_parts: tuple[float, float] | None = None
    np_fn: Callable[[np.ndarray], np.ndarray] | None = field(default=None, repr=False, compare=False)
    np_deriv: Callable[[np.ndarray], np.ndarray] | None = field(default=None, repr=False, compare=False)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        """σ'(x), closed form if known, else elementwise autograd."""
        if self.deriv is not None:
            return self.deriv(x)
        with torch.enable_grad():
            xx = x.detach().clone().requires_grad_(True)
            y = self.fn(xx)
            (g,) = torch.autograd.grad(y.sum(), xx)
        return g.detach()

    def numpy(self, x: np.ndarray) -> np.ndarray:
        """σ(x) evaluated in float64 on a NumPy array."""
        return self.fn(torch.as_tensor(np.asarray(x, dtype=np.float64))).numpy()

    def numpy_derivative(self, x: np.ndarray) -> np.ndarray:
        """σ'(x) evaluated in float64 on a NumPy array."""
        return self.derivative(torch.as_tensor(np.asarray(x, dtype=np.float64))).numpy()

    def numpy_pair(self) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]:
        """``(σ, σ')`` as float64 NumPy functions (the fast versions where defined)."""
        return (self.np_fn or self.numpy, self.np_deriv or self.numpy_derivative)

    @property
    def label(self) -> str:
        if self.params:
            inner = ",".join(f"{k}={v}" for k, v in self.params.items())
            return f"{self.name}({inner})"
        return self.name

    def __reduce__(self):  # registry activations pickle by name (process pools, Dask)
        if self.name in _REGISTRY:
            return (_rebuild, (self.name, tuple(sorted(self.params.items()))))
        return (
            Activation,
            (self.name, self.fn, self.deriv, self.params, self.homogeneous, self.nonnegative, self.smooth,
             self.closed, self.linear_parts, self.np_fn, self.np_deriv),
        )


def _rebuild(name: str, items: tuple) -> "Activation":
    return get_activation(name, **dict(items))


_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_SQRT2 = math.sqrt(2.0)


def _np_leaky(a: float):
    return (lambda x: np.where(x > 0, x, a * x), lambda x: np.where(x > 0, 1.0, a))


def _relu() -> Activation:
    f, d = _np_leaky(0.0)
    return Activation(
        "relu", torch.relu, lambda x: (x > 0).to(x.dtype), homogeneous=True, nonnegative=True, smooth=False,
        closed=leaky_relu_forms(0.0), linear_parts=(0.0, 1.0), np_fn=f, np_deriv=d,
    )


def _leaky_relu(slope: float = 0.01) -> Activation:
    s = float(slope)
    if not math.isfinite(s):
        raise NormfieldError(f"slope must be finite, got {slope!r}", argument="slope")
    f, d = _np_leaky(s)
    return Activation(
        "leaky_relu",
        lambda x: torch.where(x > 0, x, s * x),
        lambda x: torch.where(x > 0, torch.ones_like(x), torch.full_like(x, s)),
        params={"slope": s},
        homogeneous=True,
        nonnegative=s == 0.0,
        smooth=s == 1.0,
        closed=leaky_relu_forms(s),
        linear_parts=(s, 1.0 - s),
        np_fn=f,
        np_deriv=d,
    )


def _tanh() -> Activation:
    return Activation("tanh", torch.tanh, lambda x: 1.0 - torch.tanh(x) ** 2,
                      np_fn=np.tanh, np_deriv=lambda x: 1.0 - np.tanh(x) ** 2)


def _erf() -> Activation:
    from scipy.special import erf as _erf_np

    return Activation("erf", torch.erf, lambda x: (2.0 / math.sqrt(math.pi)) * torch.exp(-x * x),
                      closed=erf_forms(), np_fn=_erf_np,
                      np_deriv=lambda x: (2.0 / math.sqrt(math.pi)) * np.exp(-x * x))


def _gelu() -> Activation:
    from scipy.special import erf as _erf_np

    def d(x: torch.Tensor) -> torch.Tensor:
        cdf = 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))
        pdf = torch.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
        return cdf + x * pdf

    return Activation(
        "gelu", lambda x: torch.nn.functional.gelu(x), d,
        np_fn=lambda x: 0.5 * x * (1.0 + _erf_np(x / _SQRT2)),
        np_deriv=lambda x: 0.5 * (1.0 + _erf_np(x / _SQRT2)) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi),
    )


def _silu() -> Activation:
    from scipy.special import expit

    def d(x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(x)
        return s * (1.0 + x * (1.0 - s))

    return Activation("silu", torch.nn.functional.silu, d, np_fn=lambda x: x * expit(x),
                      np_deriv=lambda x: expit(x) * (1.0 + x * (1.0 - expit(x))))


def _sigmoid() -> Activation:
    from scipy.special import expit

    def d(x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(x)
        return s * (1.0 - s)

    return Activation("sigmoid", torch.sigmoid, d, nonnegative=True, np_fn=expit,
                      np_deriv=lambda x: expit(x) * (1.0 - expit(x)))


def _sin() -> Activation:
    return Activation("sin", torch.sin, torch.cos, closed=sin_forms(), np_fn=np.sin, np_deriv=np.cos)


def _selu() -> Activation:
    def f(x: torch.Tensor) -> torch.Tensor:
        return _SELU_SCALE * torch.where(x > 0, x, _SELU_ALPHA * torch.expm1(torch.clamp(x, max=0.0)))

    def d(x: torch.Tensor) -> torch.Tensor:
        return _SELU_SCALE * torch.where(
            x > 0, torch.ones_like(x), _SELU_ALPHA * torch.exp(torch.clamp(x, max=0.0))
        )

    return Activation(
        "selu", f, d, smooth=False,
        np_fn=lambda x: _SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(np.minimum(x, 0.0))),
        np_deriv=lambda x: _SELU_SCALE * np.where(x > 0, 1.0, _SELU_ALPHA * np.exp(np.minimum(x, 0.0))),
    )


def _identity() -> Activation:
    return Activation("identity", lambda x: x, torch.ones_like, homogeneous=True, closed=identity_forms(),
                      linear_parts=(1.0, 0.0), np_fn=lambda x: x, np_deriv=lambda x: np.ones_like(x))


_REGISTRY: dict[str, Callable[..., Activation]] = {
    "relu": _relu,
    "leaky_relu": _leaky_relu,
    "tanh": _tanh,
    "erf": _erf,
    "gelu": _gelu,
    "silu": _silu,
    "sigmoid": _sigmoid,
    "sin": _sin,
    "selu": _selu,
    "identity": _identity,
    "linear": _identity,
}

ActivationLike = Any  # str | Activation | Callable[[Tensor], Tensor]


def list_activations() -> list[str]:
    """Names accepted by :func:`get_activation` (``linear`` is an alias of ``identity``)."""
    return sorted(k for k in _REGISTRY if k != "linear")


def get_activation(act: ActivationLike, **params: Any) -> Activation:
    """Resolve an activation by name, pass through an :class:`Activation`, or
    wrap a user torch callable (derivative by autograd, kernels by quadrature).

    ``"leaky_relu:0.2"`` is accepted as shorthand for ``leaky_relu`` with slope 0.2.

    Raises:
        NormfieldError: unknown name (the message lists the accepted names).
    """
    if isinstance(act, Activation):
        return act
    if isinstance(act, str):
        name, sep, arg = act.strip().lower().partition(":")
        name = name.replace("-", "_")
        if sep:
            if name != "leaky_relu":
                raise NormfieldError(
                    f"activation {act!r}: only leaky_relu takes a parameter (leaky_relu:SLOPE)",
                    argument="activation",
                )
            try:
                params = {"slope": float(arg), **params}
            except ValueError:
                raise NormfieldError(
                    f"activation {act!r}: slope must be a number", argument="activation"
                ) from None
        if name not in _REGISTRY:
            raise NormfieldError(
                f"unknown activation {act!r}; accepted: {', '.join(list_activations())} "
                "(or a torch callable)",
                argument="activation",
            )
        try:
            return _REGISTRY[name](**params)
        except TypeError as e:
            raise NormfieldError(f"activation {name!r}: bad parameters {params}: {e}", argument="activation") from None
    if callable(act):
        name = getattr(act, "__name__", "custom")
        return Activation(f"custom:{name}", act, None, smooth=False)
    raise NormfieldError(
        f"activation must be a name ({', '.join(list_activations())}) or a torch callable, got {type(act).__name__}",
        argument="activation",
    )
