"""The accuracy knobs of :func:`normfield.analyze` as one frozen object.

``analyze(model, x, accuracy=Accuracy(tol=1e-6, trace_rtol=0.005))``; every field is also a keyword
of ``analyze`` itself (``analyze(model, x, tol=1e-6)``), which overrides the object's field.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from normfield.analyze.cost import DEFAULT_TRACE_RTOL, Budget, default_tol, parse_budget
from normfield.core.validation import check_choice, check_int
from normfield.errors import NormfieldError

__all__ = ["Accuracy", "resolve_accuracy"]


@dataclass(frozen=True)
class Accuracy:
    """How accurately (and at what cost) the curvature statistics are computed.

    Attributes:
        tol: relative accuracy of the Lanczos eigenvalues: each has an eigenvalue within
            tol·|λ_max| (Kahan's residual bound); ``None``: 1e-4 in float32, 1e-8 in float64.
        trace: ``"exact"`` (T·C VJPs), ``"hutchinson"`` (deflated by the Lanczos basis, with a
            standard error) or ``"auto"`` (exact when no dearer than the Lanczos run).
        probes: Hutchinson probes (``None``: adaptive, until the standard error is ``trace_rtol``).
        trace_rtol: target standard error of a stochastic trace, relative to it (0.01: ±1 %).
        budget: products (int), seconds (``"30s"``), a dict or a :class:`normfield.analyze.cost.Budget`
            for the curvature part; when it runs out the answers say how accurate they are.
        k: leading eigenvalues to report.
        what_if_k: leading eigenvalues of each ``what_if`` variant.
        dense_max: largest dual size T·C for the automatic dense route.
        chunk: Jacobian rows per vmapped product (``None``: about 128 MiB of rows).
    """

    tol: float | None = None
    trace: str = "auto"
    probes: int | None = None
    trace_rtol: float = DEFAULT_TRACE_RTOL
    budget: Budget | Any = None
    k: int = 5
    what_if_k: int = 1
    dense_max: int = 256
    chunk: int | None = None

    def __post_init__(self) -> None:
        if self.tol is not None and not (isinstance(self.tol, (int, float)) and not isinstance(self.tol, bool)
                                         and 0 < self.tol < 1):
            raise NormfieldError(f"tol must be a number in (0, 1), got {self.tol!r}", argument="tol")
        check_choice("trace", self.trace, ["auto", "exact", "hutchinson"])
        if self.probes is not None:
            check_int("probes", self.probes, minimum=2)
        if not (isinstance(self.trace_rtol, (int, float)) and self.trace_rtol > 0 and math.isfinite(self.trace_rtol)):
            raise NormfieldError(f"trace_rtol must be a positive number, got {self.trace_rtol!r}",
                                 argument="trace_rtol")
        object.__setattr__(self, "budget", parse_budget(self.budget))
        check_int("k", self.k, minimum=1)
        check_int("what_if_k", self.what_if_k, minimum=1)
        check_int("dense_max", self.dense_max, minimum=1)
        if self.chunk is not None:
            check_int("chunk", self.chunk, minimum=1)

    def tol_for(self, dtype: torch.dtype) -> float:
        """``tol``, or the default of ``dtype``."""
        return default_tol(dtype) if self.tol is None else float(self.tol)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["budget"] = None if self.budget is None else self.budget.to_dict()
        return d


def resolve_accuracy(accuracy: Accuracy | None, **overrides: Any) -> Accuracy:
    """``accuracy`` (default :class:`Accuracy()`) with the keywords that are not ``None`` put in."""
    if accuracy is not None and not isinstance(accuracy, Accuracy):
        raise NormfieldError(f"accuracy must be a normfield.analyze.Accuracy, got {type(accuracy).__name__}",
                             argument="accuracy")
    base = accuracy or Accuracy()
    unknown = set(overrides) - {f.name for f in dataclasses.fields(Accuracy)}
    if unknown:
        raise NormfieldError(f"unknown accuracy setting {sorted(unknown)[0]!r}", argument="accuracy")
    changes = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(base, **changes) if changes else base
