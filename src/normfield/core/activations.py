"""Activation registry.

Every activation is an :class:`Activation`: a torch callable, its derivative
(closed form where known, autograd otherwise), a float64 NumPy view for
quadrature, and flags that the theory needs (positive homogeneity, sign).
Gaussian kernels (closed forms and quadrature) live in
:mod:`normfield.core.kernels` and dispatch on ``Activation.name``.

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
    """

    name: str
    fn: Fn
    deriv: Fn | None = None
    params: dict = field(default_factory=dict)
    homogeneous: bool = False
    nonnegative: bool = False
    smooth: bool = True

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
            (self.name, self.fn, self.deriv, self.params, self.homogeneous, self.nonnegative, self.smooth),
        )


def _rebuild(name: str, items: tuple) -> "Activation":
    return get_activation(name, **dict(items))


_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _relu() -> Activation:
    return Activation(
        "relu", torch.relu, lambda x: (x > 0).to(x.dtype), homogeneous=True, nonnegative=True, smooth=False
    )


def _leaky_relu(slope: float = 0.01) -> Activation:
    s = float(slope)
    if not math.isfinite(s):
        raise NormfieldError(f"slope must be finite, got {slope!r}", argument="slope")
    return Activation(
        "leaky_relu",
        lambda x: torch.where(x > 0, x, s * x),
        lambda x: torch.where(x > 0, torch.ones_like(x), torch.full_like(x, s)),
        params={"slope": s},
        homogeneous=True,
        nonnegative=s == 0.0,
        smooth=s == 1.0,
    )


def _tanh() -> Activation:
    return Activation("tanh", torch.tanh, lambda x: 1.0 - torch.tanh(x) ** 2)


def _erf() -> Activation:
    return Activation("erf", torch.erf, lambda x: (2.0 / math.sqrt(math.pi)) * torch.exp(-x * x))


def _gelu() -> Activation:
    def d(x: torch.Tensor) -> torch.Tensor:
        cdf = 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))
        pdf = torch.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
        return cdf + x * pdf

    return Activation("gelu", lambda x: torch.nn.functional.gelu(x), d)


def _silu() -> Activation:
    def d(x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(x)
        return s * (1.0 + x * (1.0 - s))

    return Activation("silu", torch.nn.functional.silu, d)


def _sigmoid() -> Activation:
    def d(x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(x)
        return s * (1.0 - s)

    return Activation("sigmoid", torch.sigmoid, d, nonnegative=True)


def _sin() -> Activation:
    return Activation("sin", torch.sin, torch.cos)


def _selu() -> Activation:
    def f(x: torch.Tensor) -> torch.Tensor:
        return _SELU_SCALE * torch.where(x > 0, x, _SELU_ALPHA * torch.expm1(torch.clamp(x, max=0.0)))

    def d(x: torch.Tensor) -> torch.Tensor:
        return _SELU_SCALE * torch.where(
            x > 0, torch.ones_like(x), _SELU_ALPHA * torch.exp(torch.clamp(x, max=0.0))
        )

    return Activation("selu", f, d, smooth=False)


def _identity() -> Activation:
    return Activation("identity", lambda x: x, torch.ones_like, homogeneous=True)


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
