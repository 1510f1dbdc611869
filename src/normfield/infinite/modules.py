"""Finite-width torch counterparts of the infinite-width layers (``layer.module(fan_in)``).

Each module takes a batch ``(T, fan_in)`` (samples first) and is initialised
with the law its layer assumes, so that its batch Gram ``H Hᵀ/width`` and its
per-unit NTK converge to the layer's kernel state as the width grows (the tests
of :mod:`normfield.infinite` check exactly this).

* :func:`dense_module`: ``nn.Linear`` with ``W ~ N(0, σ_w²/fan_in)``,
  ``b ~ N(0, σ_b²)`` (standard parametrization), or :class:`NTKLinear`
  (``W, b ~ N(0, 1)`` scaled in the forward pass by ``σ_w/√fan_in`` and ``σ_b``).
* :func:`activation_module`: the torch module of a registry activation
  (``nn.ReLU``, ``nn.Tanh``, …) or :class:`ActivationModule` around its function.
* :class:`PinnedBatchNorm1d`: ``nn.BatchNorm1d`` whose train/eval mode is fixed
  at construction (``.train()``/``.eval()`` on the enclosing model leave it),
  so that the module computes what its layer describes.
* :class:`MeanSubtractModule`, :class:`ResidualModule`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from normfield.core.activations import Activation

__all__ = ["NTKLinear", "dense_module", "ActivationModule", "activation_module", "PinnedBatchNorm1d",
           "MeanSubtractModule", "ResidualModule"]


class NTKLinear(nn.Module):
    """``y = (σ_w/√fan_in) W x + σ_b b`` with ``W, b ~ N(0, 1)`` (NTK parametrization, Jacot et al. 2018, eq. 1)."""

    def __init__(self, fan_in: int, width: int, *, sw2: float, sb2: float, bias: bool,
                 generator: torch.Generator | None, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(width, fan_in, generator=generator, dtype=dtype))
        self.bias = nn.Parameter(torch.randn(width, generator=generator, dtype=dtype)) if bias else None
        self.w_scale = math.sqrt(sw2 / fan_in)
        self.b_scale = math.sqrt(sb2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ (self.w_scale * self.weight).T
        if self.bias is not None:
            y = y + self.b_scale * self.bias
        return y


def dense_module(fan_in: int, width: int, *, sw2: float, sb2: float, bias: bool, parametrization: str,
                 generator: torch.Generator | None, dtype: torch.dtype) -> nn.Module:
    """The finite Dense layer (module docstring)."""
    if parametrization == "ntk":
        return NTKLinear(fan_in, width, sw2=sw2, sb2=sb2, bias=bias, generator=generator, dtype=dtype)
    lin = nn.Linear(fan_in, width, bias=bias, dtype=dtype)
    with torch.no_grad():
        lin.weight.copy_(math.sqrt(sw2 / fan_in) * torch.randn(width, fan_in, generator=generator, dtype=dtype))
        if bias:
            lin.bias.copy_(math.sqrt(sb2) * torch.randn(width, generator=generator, dtype=dtype))
    return lin


class ActivationModule(nn.Module):
    """``σ`` of an :class:`~normfield.core.activations.Activation` as a module."""

    def __init__(self, act: Activation) -> None:
        super().__init__()
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act.fn(x)

    def extra_repr(self) -> str:
        return self.act.label


def activation_module(act: Activation) -> nn.Module:
    """A torch module computing ``σ`` (torch's own module where one exists)."""
    table = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "silu": nn.SiLU, "selu": nn.SELU,
             "identity": nn.Identity}
    if act.name == "leaky_relu":
        return nn.LeakyReLU(act.params["slope"])
    if act.name == "gelu":
        return nn.GELU()
    if act.name in table:
        return table[act.name]()
    return ActivationModule(act)


class PinnedBatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` in a fixed mode: ``"train"`` normalises over the batch with the biased
    variance (Ioffe & Szegedy 2015, Alg. 1), ``"eval"`` applies the running statistics."""

    def __init__(self, num_features: int, *, eps: float, affine: bool, mode: str, dtype: torch.dtype) -> None:
        # train mode keeps no running statistics: always the batch's, and nothing mutated in a forward pass
        super().__init__(num_features, eps=eps, affine=affine, track_running_stats=mode == "eval", dtype=dtype)
        self.pinned_mode = mode
        super().train(mode == "train")

    def train(self, mode: bool = True) -> "PinnedBatchNorm1d":  # noqa: D102 - the mode stays pinned
        return self


class MeanSubtractModule(nn.Module):
    """``x − mean over the batch`` (Karakida et al. 2019, eq. 15)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(dim=0, keepdim=True)


class ResidualModule(nn.Module):
    """``shortcut(x) + branch(x)``."""

    def __init__(self, branch: nn.Module, shortcut: nn.Module) -> None:
        super().__init__()
        self.branch = branch
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.branch(x)


def set_eval_statistics(bn: PinnedBatchNorm1d, table: np.ndarray) -> None:
    """Copy the per-unit ``(w, b, μ, v)`` of an eval-mode batch norm (rows broadcast to the units)."""
    n = bn.num_features
    full = np.broadcast_to(table, (n, 4)) if table.shape[0] == 1 else table
    t = torch.as_tensor(np.ascontiguousarray(full), dtype=bn.running_mean.dtype)
    with torch.no_grad():
        bn.running_mean.copy_(t[:, 2])
        bn.running_var.copy_(t[:, 3])
        if bn.affine:
            bn.weight.copy_(t[:, 0])
            bn.bias.copy_(t[:, 1])
