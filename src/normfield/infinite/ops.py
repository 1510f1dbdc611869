"""Per-unit operations of the infinite-width expressions: the map of one unit's features.

Each operation acts on one unit's features ``x ∈ R^T`` (one value per sample).
It is given twice, side by side:

* ``torch_fn(x, theta, row, rep)``: the map on a block of draws ``x`` (N, T) in
  float64, with its per-unit trainable scalars ``theta`` (N, P) (their gradients
  enter the NTK) and, for operations with per-unit coefficients, the coefficient
  ``row`` (N, k) of the unit drawn; used by the quasi-Monte Carlo route
  (:mod:`normfield.infinite.expect`), differentiated by ``torch.func.jvp``;
* ``linear(m)``: for operations that are affine in ``x``, the exact moments of
  the output from the moments of the input (``None`` for nonlinear operations).

Operations:

* :class:`ActOp` ``y = σ(x)`` elementwise.
* :class:`BNTrainOp` train-mode batch norm over the batch (Ioffe & Szegedy 2015,
  Alg. 1; Joudaki et al. 2023, eq. 1 with ε): ``z = M x/√(‖M x‖²/T + ε)``
  (``M = I − 11ᵀ/T``, biased variance as in ``torch.nn.BatchNorm1d``),
  ``y = γ z + β`` with ``γ = 1, β = 0`` at initialisation.
* :class:`BNEvalOp` eval-mode batch norm, a per-unit affine map with per-unit
  coefficients ``y = w (x − μ)/√(v + ε) + b`` (``μ, v`` the running statistics);
  over units ``(w, b, μ, v)`` is drawn from the empirical law of the given arrays,
  independent of ``x`` (the arrays are fixed, the units exchangeable).
* :class:`AffineOp` ``y = γ (A x + c) + β`` with a deterministic (T×T) ``A``
  and (T,) ``c`` per replicate: mean subtraction ``A = M`` (Karakida et al. 2019,
  eq. 15), layer norm ``A = diag(1/√(v_t + ε))``, ``c = −A m`` and RMS norm
  ``A = diag(1/√(E[x_t²] + ε))`` (statistics over units: deterministic at
  infinite width by the law of large numbers).

Exact moment maps (``K = E[x xᵀ]``, ``m = E[x]``, ``Θ`` the per-unit NTK, ``1``
the all-ones vector). For ``y = γ z + β``, ``z = A x + c``:
``K_y = A K Aᵀ + A m cᵀ + c mᵀ Aᵀ + c cᵀ``, ``m_y = A m + c``,
``Θ_y = A Θ Aᵀ + [γ] K_y + [β] 11ᵀ`` (``∂y/∂γ = z``, ``∂y/∂β = 1``; the per-unit
parameters are distinct per unit, so their NTK adds). For eval batch norm with
``a = w s``, ``c = b − a μ``, ``s = 1/√(v + ε)``, expectations over units:
``K_y = E[a²] K + E[ac](m1ᵀ + 1mᵀ) + E[c²] 11ᵀ``, ``m_y = E[a] m + E[c] 1``,
``Θ_y = E[a²] Θ + [affine](E[s²]K − E[s²μ](m1ᵀ + 1mᵀ) + E[s²μ²]11ᵀ + 11ᵀ)``.
The statistics of layer/RMS norm are averages over infinitely many units, so
their parameter derivatives contribute to a unit's NTK only through
``O(1/width)`` terms (each unit moves them by ``1/width``; the cross-unit terms
have zero mean): at infinite width the normalisation is a fixed affine map.
"""

from __future__ import annotations

import numpy as np
import torch

from normfield.core.activations import Activation
from normfield.infinite.state import Moments

__all__ = ["UnitOp", "ActOp", "BNTrainOp", "BNEvalOp", "AffineOp"]


def _outer_sym(m: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``m vᵀ + v mᵀ`` batched over the leading replicate axis: (R, T), (R, T) -> (R, T, T)."""
    return np.einsum("rt,rs->rts", m, v) + np.einsum("rt,rs->rts", v, m)


class UnitOp:
    """Base of the per-unit operations (module docstring).

    Attributes:
        n_params: number of per-unit trainable scalars (their tangents are unit vectors).
        table: (n_units, k) per-unit coefficients drawn with the unit, or ``None``.
        is_linear: affine in ``x`` (``linear`` gives the exact moments).
    """

    n_params: int = 0
    table: np.ndarray | None = None
    is_linear: bool = False

    def torch_fn(self, x: torch.Tensor, theta: torch.Tensor, row: torch.Tensor | None, rep: int) -> torch.Tensor:
        raise NotImplementedError

    def theta0(self, row: torch.Tensor | None, n: int) -> torch.Tensor:
        """(n, n_params) values of the per-unit parameters at the draws."""
        return torch.zeros((n, 0), dtype=torch.float64)

    def linear(self, m: Moments) -> Moments | None:
        """Exact output moments for affine operations; ``None`` otherwise."""
        return None


class ActOp(UnitOp):
    """``y = σ(x)`` elementwise."""

    def __init__(self, act: Activation) -> None:
        self.act = act

    def torch_fn(self, x, theta, row, rep):
        return self.act.fn(x)

    def __repr__(self) -> str:
        return f"ActOp({self.act.label})"


def _gamma_beta(n: int, gamma: bool, beta: bool) -> torch.Tensor:
    cols = ([torch.ones(n, dtype=torch.float64)] if gamma else []) + (
        [torch.zeros(n, dtype=torch.float64)] if beta else [])
    return torch.stack(cols, dim=1) if cols else torch.zeros((n, 0), dtype=torch.float64)


def _apply_gamma_beta(z: torch.Tensor, theta: torch.Tensor, gamma: bool, beta: bool) -> torch.Tensor:
    j = 0
    if gamma:
        z = z * theta[:, j:j + 1]
        j += 1
    if beta:
        z = z + theta[:, j:j + 1]
    return z


class BNTrainOp(UnitOp):
    """Train-mode batch norm over the batch, ``y = γ M x/√(‖M x‖²/T + ε) + β``."""

    def __init__(self, eps: float, affine: bool) -> None:
        self.eps = float(eps)
        self.affine = bool(affine)
        self.n_params = 2 if affine else 0

    def torch_fn(self, x, theta, row, rep):
        c = x - x.mean(dim=1, keepdim=True)
        z = c / torch.sqrt((c * c).mean(dim=1, keepdim=True) + self.eps)
        return _apply_gamma_beta(z, theta, self.affine, self.affine)

    def theta0(self, row, n):
        return _gamma_beta(n, self.affine, self.affine)

    def __repr__(self) -> str:
        return f"BNTrainOp(eps={self.eps}, affine={self.affine})"


class BNEvalOp(UnitOp):
    """Eval-mode batch norm ``y = w (x − μ)/√(v + ε) + b`` with per-unit ``(w, b, μ, v)``.

    Args:
        table: (n_units, 4) columns ``w, b, μ, v`` (one row when all are scalars).
        eps: ε >= 0 (``v + ε > 0`` checked by the layer).
        affine: whether ``w, b`` are trainable (their gradients enter the NTK).
        paired: key of the input's empirical component when the units are the input's own
            coordinates (unit j carries row j of the table), else ``None`` (rows independent of x).
    """

    is_linear = True

    def __init__(self, table: np.ndarray, eps: float, affine: bool, paired: int | None = None) -> None:
        self.table = np.asarray(table, dtype=np.float64)
        self.eps = float(eps)
        self.affine = bool(affine)
        self.n_params = 2 if affine else 0
        self.paired = paired if self.table.shape[0] > 1 else None
        # paired with the input's coordinates, the coefficients are not independent of x: no moment shortcut
        self.is_linear = self.paired is None

    def torch_fn(self, x, theta, row, rep):
        xhat = (x - row[:, 2:3]) / torch.sqrt(row[:, 3:4] + self.eps)
        if self.affine:
            return theta[:, 0:1] * xhat + theta[:, 1:2]
        return row[:, 0:1] * xhat + row[:, 1:2]

    def theta0(self, row, n):
        if not self.affine:
            return torch.zeros((n, 0), dtype=torch.float64)
        return row[:, 0:2].clone()

    def linear(self, m: Moments) -> Moments:
        w, b, mu, v = self.table.T
        s = 1.0 / np.sqrt(v + self.eps)
        a = w * s
        c = b - a * mu
        K, mean, Th = m.nngp, m.mean, m.ntk
        R, T = mean.shape
        ones = np.ones((R, T))
        one11 = np.ones((T, T))
        nngp = np.mean(a * a) * K + np.mean(a * c) * _outer_sym(mean, ones) + np.mean(c * c) * one11
        mean_y = np.mean(a) * mean + np.mean(c)
        ntk = np.mean(a * a) * Th
        if self.affine:
            ntk = ntk + np.mean(s * s) * K - np.mean(s * s * mu) * _outer_sym(mean, ones) \
                + (np.mean(s * s * mu * mu) + 1.0) * one11
        return Moments(nngp, mean_y, ntk, m.qerr)

    def __repr__(self) -> str:
        return f"BNEvalOp(units={self.table.shape[0]}, eps={self.eps}, affine={self.affine})"


class AffineOp(UnitOp):
    """``y = γ (A x + c) + β`` with deterministic ``A`` (R, T, T) and ``c`` (R, T) per replicate.

    Args:
        A: (R, T, T) matrices.
        c: (R, T) offsets.
        gamma, beta: whether the per-unit scale / shift are trainable parameters.
        name: what it implements (``"mean_subtract"``, ``"layer_norm"``, ``"rms_norm"``).
    """

    is_linear = True

    def __init__(self, A: np.ndarray, c: np.ndarray, *, gamma: bool, beta: bool, name: str) -> None:
        self.A = np.asarray(A, dtype=np.float64)
        self.c = np.asarray(c, dtype=np.float64)
        self.gamma = bool(gamma)
        self.beta = bool(beta)
        self.n_params = int(gamma) + int(beta)
        self.name = name
        self._tA = torch.as_tensor(self.A)
        self._tc = torch.as_tensor(self.c)

    def torch_fn(self, x, theta, row, rep):
        z = x @ self._tA[rep].T + self._tc[rep]
        return _apply_gamma_beta(z, theta, self.gamma, self.beta)

    def theta0(self, row, n):
        return _gamma_beta(n, self.gamma, self.beta)

    def linear(self, m: Moments) -> Moments:
        A, c = self.A, self.c
        AK = np.einsum("rij,rjk,rlk->ril", A, m.nngp, A)
        Am = np.einsum("rij,rj->ri", A, m.mean)
        K = AK + np.einsum("ri,rj->rij", Am, c) + np.einsum("ri,rj->rij", c, Am) + np.einsum("ri,rj->rij", c, c)
        ntk = np.einsum("rij,rjk,rlk->ril", A, m.ntk, A)
        if self.gamma:
            ntk = ntk + K
        if self.beta:
            ntk = ntk + 1.0
        return Moments(K, Am + c, ntk, m.qerr)

    def __repr__(self) -> str:
        return f"AffineOp({self.name})"
