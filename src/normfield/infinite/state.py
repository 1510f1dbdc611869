"""The kernel state of an infinite-width layer: per-unit law, NNGP, NTK and the error so far.

**Per-unit law.** At infinite width every unit ``i`` of a layer's features
``x_i ∈ R^T`` (one value per sample of the batch of ``T``) has the same law and
distinct units are independent (Neal 1996; Lee et al. 2018; for train-mode batch
norm the batch is coupled inside each unit, Yang et al. 2019, Joudaki et al. 2023,
eq. 3). The law is represented as a *map of independent components*:

* a **component** is one independent per-unit source: a Gaussian ``h ~ N(0, Σ)``
  (the output of a Dense layer, with its per-unit NTK ``Θ``), or the *empirical*
  law of the input's ``d`` coordinates (``x[:, j]``, ``j`` uniform on ``1..d``);
* an **expression** (:class:`Leaf`, :class:`OpNode`, :class:`SumNode`) says how
  the unit's features are computed from the components: per-unit operations
  (activations, batch norm over the batch, affine maps) and sums (residuals).

Everything the next Dense layer needs is three moments of the expression
(:mod:`normfield.infinite.expect`): ``nngp = E[x xᵀ]`` (uncentred, T×T),
``mean = E[x]`` (T,) and ``ntk`` (T×T), the per-unit NTK summed over every
parameter so far (``E[J Θ Jᵀ]`` of the components plus the per-unit
parameters of the operations).

**Replicates and the stated error.** Quasi-Monte Carlo moments are computed
``R = REPLICATES`` times with independently scrambled sequences, and every
later layer is computed once per replicate from that replicate's own moments,
so the ``R`` results of the last layer are independent and identically
distributed estimates of the whole chain. The value is their mean and the
stated error is ``3·‖SE‖_F`` (standard error over replicates, Frobenius norm,
the larger of nngp's and ntk's) plus the deterministic quadrature errors of the
closed forms (of order 1e-13, added without propagation factor). Errors of
earlier layers are therefore carried end to end, not assumed away. When no
quasi-Monte Carlo step occurred all replicates coincide and the error is the
quadrature part alone.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from normfield.core.validation import check_finite_array
from normfield.errors import NormfieldError

__all__ = [
    "REPLICATES",
    "Component",
    "Leaf",
    "OpNode",
    "SumNode",
    "Moments",
    "KernelState",
    "input_state",
    "new_key",
]

#: number of independent replicates of every quasi-Monte Carlo estimate
REPLICATES = 16

_KEYS = itertools.count(1)


def new_key() -> int:
    """A fresh component key (components are told apart by key, never by value)."""
    return next(_KEYS)


@dataclass(frozen=True, eq=False)
class Component:
    """One independent per-unit source.

    Attributes:
        key: unique id.
        kind: ``"gauss"`` (``h ~ N(0, Σ)``) or ``"empirical"`` (a uniformly chosen input coordinate).
        cov: (R, T, T) ``Σ`` per replicate (for ``"empirical"``: ``x xᵀ/d``, equal over replicates).
        ntk: (R, T, T) per-unit NTK ``Θ`` per replicate (zeros for ``"empirical"``).
        samples: (d, T) the input's coordinates (``x.T``) for ``"empirical"``, else ``None``.
        qerr: deterministic (quadrature) Frobenius error of ``cov`` and ``ntk``.
    """

    key: int
    kind: str
    cov: np.ndarray = field(repr=False)
    ntk: np.ndarray = field(repr=False)
    samples: np.ndarray | None = field(default=None, repr=False)
    qerr: float = 0.0


class Leaf:
    """The expression ``x = component[key]``."""

    __slots__ = ("key", "mom")

    def __init__(self, key: int) -> None:
        self.key = key
        self.mom: Moments | None = None

    def keys(self) -> frozenset[int]:
        return frozenset((self.key,))

    def __repr__(self) -> str:
        return f"Leaf({self.key})"


class OpNode:
    """The expression ``x = op(child)`` for a per-unit operation (:mod:`normfield.infinite.ops`)."""

    __slots__ = ("op", "child", "mom")

    def __init__(self, op: Any, child: "Expr") -> None:
        self.op = op
        self.child = child
        self.mom: Moments | None = None

    def keys(self) -> frozenset[int]:
        return self.child.keys()

    def __repr__(self) -> str:
        return f"{type(self.op).__name__}({self.child!r})"


class SumNode:
    """The expression ``x = Σ children`` (a residual sum)."""

    __slots__ = ("children", "mom")

    def __init__(self, children: tuple["Expr", ...]) -> None:
        self.children = tuple(children)
        self.mom: Moments | None = None

    def keys(self) -> frozenset[int]:
        return frozenset().union(*(c.keys() for c in self.children))

    def __repr__(self) -> str:
        return "Sum(" + ", ".join(repr(c) for c in self.children) + ")"


Expr = Leaf | OpNode | SumNode
"""An expression node; ``node.mom`` caches its :class:`Moments` once computed."""


@dataclass(frozen=True, eq=False)
class Moments:
    """Per-replicate moments of an expression.

    Attributes:
        nngp: (R, T, T) ``E[x xᵀ]``.
        mean: (R, T) ``E[x]``.
        ntk: (R, T, T) per-unit NTK.
        qerr: deterministic (quadrature) Frobenius error accumulated so far.
        points: quasi-Monte Carlo points per replicate used by the last step (0 for exact steps).
    """

    nngp: np.ndarray
    mean: np.ndarray
    ntk: np.ndarray
    qerr: float = 0.0
    points: int = 0


def _se_frobenius(a: np.ndarray) -> float:
    """``‖SE‖_F`` over the replicate axis 0 (0 when all replicates coincide)."""
    if a.shape[0] < 2:
        return 0.0
    se = a.std(axis=0, ddof=1) / math.sqrt(a.shape[0])
    return float(np.linalg.norm(se))


@dataclass(frozen=True, eq=False)
class KernelState:
    """The per-unit law of one layer's features at infinite width (module docstring).

    Attributes:
        T: batch size.
        width: number of units of this layer (the next layer's fan-in).
        components: key -> :class:`Component`, every component the expression reads.
        expr: the expression of a unit's features in the components.
        moments: per-replicate moments of ``expr``.
        seed: base seed of the quasi-Monte Carlo steps.
        tol: target stated Frobenius error of each quasi-Monte Carlo step.
        step: number of layers applied since the input (salts the seeds).

    Properties ``nngp`` (T, T), ``mean`` (T,), ``ntk`` (T, T) are replicate means;
    ``error`` is the stated absolute Frobenius error of nngp and ntk (the larger).
    """

    T: int
    width: int
    components: Mapping[int, Component] = field(repr=False)
    expr: Any = field(repr=False)
    moments: Moments = field(repr=False)
    seed: int = 0
    tol: float = 1e-3
    step: int = 0

    @property
    def nngp(self) -> np.ndarray:
        """(T, T) ``E[x_i x_iᵀ]``, the batch Gram ``H Hᵀ/d`` at infinite width."""
        return _sym(self.moments.nngp.mean(axis=0))

    @property
    def mean(self) -> np.ndarray:
        """(T,) ``E[x_i]``."""
        return self.moments.mean.mean(axis=0)

    @property
    def ntk(self) -> np.ndarray:
        """(T, T) per-unit NTK ``Σ_θ ∂x_i(t)/∂θ ∂x_i(s)/∂θ`` over every parameter so far."""
        return _sym(self.moments.ntk.mean(axis=0))

    @property
    def error(self) -> float:
        """Stated absolute Frobenius error: ``3‖SE‖_F`` over replicates (the larger of nngp
        and ntk) plus the quadrature errors."""
        m = self.moments
        return 3.0 * max(_se_frobenius(m.nngp), _se_frobenius(m.ntk)) + m.qerr

    @property
    def nngp_error(self) -> float:
        """Stated absolute Frobenius error of ``nngp`` alone."""
        return 3.0 * _se_frobenius(self.moments.nngp) + self.moments.qerr

    @property
    def ntk_error(self) -> float:
        """Stated absolute Frobenius error of ``ntk`` alone."""
        return 3.0 * _se_frobenius(self.moments.ntk) + self.moments.qerr

    @property
    def relative_errors(self) -> tuple[float, float]:
        """``(nngp_error/‖nngp‖_F, ntk_error/‖ntk‖_F)`` (0 for a zero kernel with zero error)."""
        def rel(e: float, a: np.ndarray) -> float:
            n = float(np.linalg.norm(a))
            return e / n if n > 0 else (0.0 if e == 0 else math.inf)
        return rel(self.nngp_error, self.nngp), rel(self.ntk_error, self.ntk)

    @property
    def replicates(self) -> int:
        return int(self.moments.nngp.shape[0])

    def derive(self, *, width: int, components: Mapping[int, Component], expr: Any,
               moments: Moments) -> "KernelState":
        """The next state (same batch, seed and tolerance; one step further)."""
        return KernelState(self.T, int(width), dict(components), expr, moments, self.seed, self.tol,
                           self.step + 1)


def _sym(a: np.ndarray) -> np.ndarray:
    return 0.5 * (a + a.T)


def input_state(x: Any, *, tol: float = 1e-3, seed: int = 0) -> KernelState:
    """The state of the input batch: the empirical law of its ``d`` coordinates.

    ``nngp = x xᵀ/d``, ``mean = x.mean(1)``, ``ntk = 0`` exactly (the input has no
    parameters); an operation applied to it is an exact finite average over the
    ``d`` coordinates.

    Args:
        x: (T, d) array or tensor, finite.
        tol: target stated error of the quasi-Monte Carlo steps (> 0).
        seed: base seed (non-negative int).

    Raises:
        NormfieldError: ``x`` not 2-D, empty or not finite; bad ``tol`` or ``seed``.
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise NormfieldError(f"x must be a (T, d) array of numbers: {e}", argument="x") from None
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise NormfieldError(f"x must be a non-empty (T, d) array (batch first), got shape {arr.shape}",
                             argument="x")
    check_finite_array("x", arr)
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
        raise NormfieldError(f"tol must be a finite number > 0, got {tol!r}", argument="tol")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise NormfieldError(f"seed must be a non-negative int, got {seed!r}", argument="seed")
    T, d = arr.shape
    gram = arr @ arr.T / d
    R = REPLICATES
    K = np.broadcast_to(gram, (R, T, T)).copy()
    zero = np.zeros((R, T, T))
    comp = Component(new_key(), "empirical", K, zero, samples=np.ascontiguousarray(arr.T))
    mom = Moments(K, np.broadcast_to(arr.mean(axis=1), (R, T)).copy(), zero.copy())
    return KernelState(T, d, {comp.key: comp}, Leaf(comp.key), mom, int(seed), float(tol), 0)
