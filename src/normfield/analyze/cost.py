"""Accuracy targets, budgets and the product meter of :func:`normfield.analyze`.

The unit of cost is one Jacobian product over the whole batch (a VJP or a
JVP; each costs about one backward pass). A product of the Fisher/NTK dual F*
is two. Defaults aim at a stated accuracy rather than at a fixed number of
steps:

* λ_max and the top-k eigenvalues to a relative error of 1e-4 in float32 and
  1e-8 in float64 (:data:`DEFAULT_TOL`; float32 products carry ~1e-7 relative
  round-off, so 1e-4 is well above their noise floor);
* tr F* to ±1 %, reported as value ± standard error: the standard error of
  the stochastic estimate is brought to 1 % (:data:`DEFAULT_TRACE_RTOL`; pass
  ``trace_rtol=0.005`` for ±1 % at two standard errors, at about four times the
  probes); the trace is exact instead when that is cheaper (T·C VJPs <= the
  Lanczos run).
  Hutchinson probes are quadratic forms ‖Jᵀz‖² (one VJP each, no JVP),
  evaluated in blocks of up to 16 (one vmapped VJP per block on a GPU, a loop
  of VJPs on the CPU: :meth:`normfield.core.jacobian.JacobianOperator.vjp_batched`); with
  ``what_if="last-mean"`` the estimate of tr F* is brought to 1 % of
  tr F̄* = tr F* − Σ_k ‖Jᵀu_k‖²/T, so the projected trace costs C VJPs more
  (the same C VJPs warm-start the variant's Lanczos run:
  :func:`normfield.analyze.ntk.projected_ritz`); each variant gets its λ_max
  unless ``what_if_k`` asks for more.
  Products are counted per vector (a batched VJP of b rows counts b): on a
  compute-bound CPU a batched row costs about as much as a single VJP (twice as
  much on a ViT, whence the loop there), on GPUs much less.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

import torch

from normfield.errors import NormfieldError

__all__ = ["DEFAULT_TOL", "DEFAULT_TRACE_RTOL", "Budget", "ProductMeter", "default_tol", "parse_budget"]

#: Default relative accuracy of the Lanczos eigenvalues, by analysis dtype.
DEFAULT_TOL = {torch.float32: 1e-4, torch.float64: 1e-8}
#: Default target standard error of a stochastic trace, relative to the trace.
DEFAULT_TRACE_RTOL = 0.01


def default_tol(dtype: torch.dtype) -> float:
    """:data:`DEFAULT_TOL` for ``dtype``."""
    return DEFAULT_TOL.get(dtype, 1e-8)


class Budget:
    """A limit in products and/or seconds.

    Attributes:
        products: at most this many Jacobian products (None: no limit).
        seconds: at most this many seconds of wall time (None: no limit).
    """

    def __init__(self, products: int | None = None, seconds: float | None = None) -> None:
        self.products, self.seconds = products, seconds

    def __repr__(self) -> str:
        parts = ([f"{self.products} products"] if self.products is not None else []) + (
            [f"{self.seconds:g} s"] if self.seconds is not None else [])
        return "Budget(" + ", ".join(parts or ["unlimited"]) + ")"

    def to_dict(self) -> dict[str, Any]:
        return {"products": self.products, "seconds": self.seconds}


def parse_budget(budget: Any) -> Budget | None:
    """``None``, an int (products), ``"30s"`` / ``"2.5 s"`` (seconds), ``"200"`` (products), a
    :class:`Budget`, or a dict ``{"products": int, "seconds": float}``."""
    if budget is None or isinstance(budget, Budget):
        return budget
    bad = NormfieldError(f"budget must be a number of products (int), a time like '30s', or "
                         f"{{'products': n, 'seconds': s}}, got {budget!r}", argument="budget")
    if isinstance(budget, bool):
        raise bad
    if isinstance(budget, int):
        if budget < 2:
            raise NormfieldError(f"budget must allow at least 2 products, got {budget}", argument="budget")
        return Budget(products=budget)
    if isinstance(budget, str):
        m = re.fullmatch(r"\s*([0-9.eE+]+)\s*(s|sec|seconds?)?\s*", budget)
        if not m:
            raise bad
        try:
            v = float(m.group(1))
        except ValueError:
            raise bad from None
        if m.group(2):
            if not (v > 0 and math.isfinite(v)):
                raise bad
            return Budget(seconds=v)
        if v != int(v):
            raise bad
        return parse_budget(int(v))
    if isinstance(budget, dict) and set(budget) <= {"products", "seconds"}:
        p, s = budget.get("products"), budget.get("seconds")
        if p is not None and (not isinstance(p, int) or isinstance(p, bool) or p < 2):
            raise bad
        if s is not None and not (isinstance(s, (int, float)) and s > 0 and math.isfinite(s)):
            raise bad
        return Budget(p, None if s is None else float(s))
    raise bad


class ProductMeter:
    """Counts Jacobian products across one analysis, shows them as a bar, enforces the budget.

    ``stop()`` (for :mod:`normfield.core.krylov`) is True once the budget is spent.
    """

    def __init__(self, budget: Budget | None = None, *, progress: bool = False, desc: str = "F* products") -> None:
        self.budget = budget
        self.start = time.monotonic()
        self.offset = 0
        self.source = None
        self.exhausted = False
        self._bar = None
        if progress:
            from tqdm.auto import tqdm

            total = budget.products if budget is not None else None
            self._bar = tqdm(total=total, desc=desc, unit="product", leave=False)

    def bind(self, source) -> None:
        """Count the products of ``source`` (an object with a ``products`` attribute) from now on."""
        self.offset = self.count
        self.source, self._base = source, int(source.products)

    @property
    def count(self) -> int:
        """Products so far."""
        if self.source is None:
            return self.offset
        return self.offset + int(self.source.products) - self._base

    def tick(self) -> None:
        """Bring the bar up to date."""
        if self._bar is not None:
            self._bar.n = self.count
            self._bar.refresh()

    def stop(self) -> bool:
        self.tick()
        b = self.budget
        if b is None:
            return False
        if (b.products is not None and self.count >= b.products) or (
                b.seconds is not None and time.monotonic() - self.start >= b.seconds):
            self.exhausted = True
        return self.exhausted

    def remaining(self) -> int | None:
        """Products left in the budget (None: no product limit)."""
        if self.budget is None or self.budget.products is None:
            return None
        return max(0, self.budget.products - self.count)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
