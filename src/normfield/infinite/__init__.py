"""Infinite-width kernels (NNGP and NTK) of normalized compositions, with the batch coupled.

A composition of layers (Dense, activations, batch norm in train or eval mode,
layer/RMS norm, mean subtraction, residual sums) maps the input batch's kernel
state to the per-unit law of every layer at infinite width (:mod:`.state`), with
exact moments where closed forms exist and a replicated quasi-Monte Carlo route
with a stated error otherwise (:mod:`.expect`). Each layer carries its
finite-width torch module (``layer.module(fan_in)``) so that theory and
simulation are tested against each other.

Example:
    >>> import numpy as np
    >>> from normfield.infinite import Dense, Activation, BatchNorm, kernel
    >>> x = np.random.default_rng(0).standard_normal((4, 8))
    >>> res = kernel([Dense(64), BatchNorm(), Activation("relu"), Dense(1)], x)
    >>> res.ntk.shape
    (4, 4)
"""

from normfield.infinite.compose import KernelResult, Residual, Serial, kernel, serial
from normfield.infinite.layers import (
    Activation,
    BatchNorm,
    Dense,
    Identity,
    Layer,
    LayerNorm,
    MeanSubtract,
    RMSNorm,
)
from normfield.infinite.simulate import FiniteKernels, finite_kernels
from normfield.infinite.state import KernelState, input_state

__all__ = [
    # state
    "KernelState",
    "input_state",
    # layers
    "Layer",
    "Dense",
    "Activation",
    "BatchNorm",
    "LayerNorm",
    "RMSNorm",
    "MeanSubtract",
    "Identity",
    # composition
    "Residual",
    "Serial",
    "serial",
    "kernel",
    "KernelResult",
    # finite-width check
    "finite_kernels",
    "FiniteKernels",
]
