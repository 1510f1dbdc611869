"""Core: activations, Gaussian integrals, validation, linear algebra."""

from normfield.core.activations import Activation, get_activation, list_activations

__all__ = ["Activation", "get_activation", "list_activations"]
