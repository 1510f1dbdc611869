"""Core: activations, Gaussian integrals, validation, linear algebra."""

from normfield.core.activations import Activation, get_activation, list_activations
from normfield.core.gaussian import (
    QuadratureResult,
    gaussian_expectation,
    gaussian_pair_expectation,
    sphere_pair_expectation,
)
from normfield.core.kernels import arccos_kernel, derivative_kernel, has_closed_form, kernel, mean_activation

__all__ = [
    # activations
    "Activation",
    "get_activation",
    "list_activations",
    # Gaussian integrals (quadrature with error estimates)
    "QuadratureResult",
    "gaussian_expectation",
    "gaussian_pair_expectation",
    "sphere_pair_expectation",
    # kernels E[σσ], E[σ'σ'], E[σ] (closed forms + quadrature)
    "kernel",
    "derivative_kernel",
    "mean_activation",
    "has_closed_form",
    "arccos_kernel",
]
