"""The one implementation of mean subtraction and normalization used everywhere.

Every placement of normalization in both papers reduces to two operations on a
tensor along one axis:

* centring, ``u − mean(u)`` (Karakida et al. 2019, eq. (14): last-layer mean
  subtraction; Joudaki et al. 2023, eq. (1): the centring half of BN), and
* standardisation, ``(u − mean(u)) / sqrt(mean((u − mean(u))²))`` with the
  *biased* variance and no ε (Karakida eqs. (14), (21), (25); Joudaki eq. (1)).

The axis says which normalization it is: the sample axis for batch norm
(statistics over the batch, so samples are coupled), the unit axis for layer
norm (statistics per sample). The floating-point operations are written once,
here, so that every engine (networks, Fisher routes, the batched lr-grid
trainer, ``nf.analyze``) computes bit-for-bit the same numbers.
"""

from __future__ import annotations

import torch

__all__ = ["center", "standardize"]


def center(u: torch.Tensor, dim: int) -> torch.Tensor:
    """``u − mean(u, dim)`` (keepdim); shape unchanged."""
    return u - u.mean(dim=dim, keepdim=True)


def standardize(u: torch.Tensor, dim: int) -> torch.Tensor:
    """``c / sqrt(mean(c², dim))`` with ``c = center(u, dim)``: biased variance, no ε.

    Batch norm is ``standardize(u, 0)`` for ``u`` of shape (T, M) (samples first);
    layer norm is ``standardize(u, 1)``. A constant slice gives 0/0 = NaN: callers
    that can meet one check for it and raise a clear error.
    """
    c = center(u, dim)
    return c / torch.sqrt((c * c).mean(dim=dim, keepdim=True))
