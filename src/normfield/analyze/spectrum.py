"""Eigenvalue statistics of the Fisher F = JᵀJ/T of a model, via its dual F* = JJᵀ/T
(Karakida, Akaho & Amari 2019, eqs. (8), (10), (23))."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FisherSpectrum"]


@dataclass
class FisherSpectrum:
    """Eigenvalue statistics of the Fisher F = JᵀJ/T via its dual F* = JJᵀ/T.

    Attributes:
        lambda_max: largest eigenvalue of F (= of F*).
        m_lambda: mean eigenvalue of F, tr(F*)/P (Karakida et al. 2019, eq. (10)).
        trace: tr(F*) = ‖J‖_F² / T.
        trace_stderr: standard error of ``trace`` (0 when exact).
        parameters: P, the number of differentiated parameters.
        samples: T.
        outputs: C (outputs per sample).
        eigenvalues: top-k eigenvalues, shape (k,), largest first.
        eigenvalue_errors: estimated absolute errors of ``eigenvalues`` (Lanczos
            route), shape (k,); ``None`` on the dense route (exact to round-off).
        converged: every eigenvalue reached the requested tolerance (False when a
            budget or the step limit ended the iteration first).
        route: how the Jacobian products were formed (:data:`normfield.core.jacobian.ROUTES`).
        stopped: why Lanczos ended (``converged``, ``invariant``, ``max_steps``, ``budget``; ``""`` if dense).
        curvature: which matrix (:data:`normfield.analyze.losses.CURVATURES`): ``"fisher-mse"``
            (F = JᵀJ/T), ``"fisher-cross-entropy"``, ``"hessian-mse"``, ``"hessian-cross-entropy"``.
        lambda_min: smallest eigenvalue (the Hessians, which can be indefinite); ``None`` otherwise.
        lambda_min_error: its residual bound.
        note: how the numbers were obtained where the columns do not say it (e.g. products reused).
        method: ``"dense"`` or ``"lanczos"`` (+ how the trace was obtained).
        products: Jacobian products used (one VJP or one JVP each).
        spectrum: every eigenvalue of F*, shape (T·C,), largest first (dense
            route only; ``None`` otherwise).
        dual: F*, shape (T·C, T·C), when asked for (dense route only).
        density_nodes, density_weights: the spectral density of F* as a discrete
            measure (weights sum to 1, each eigenvalue of F* has mass 1/(T·C)):
            exact (every eigenvalue, weight 1/(T·C)) on the dense route, stochastic
            Lanczos quadrature (:func:`normfield.core.krylov.slq`) on the Lanczos route; ``None``
            unless asked for.
    """

    lambda_max: float
    m_lambda: float
    trace: float
    trace_stderr: float
    parameters: int
    samples: int
    outputs: int
    eigenvalues: np.ndarray
    method: str
    products: int
    spectrum: np.ndarray | None = None
    dual: np.ndarray | None = field(default=None, repr=False)
    density_nodes: np.ndarray | None = field(default=None, repr=False)
    density_weights: np.ndarray | None = field(default=None, repr=False)
    eigenvalue_errors: np.ndarray | None = None
    converged: bool = True
    route: str = ""
    stopped: str = ""
    curvature: str = "fisher-mse"
    lambda_min: float | None = None
    lambda_min_error: float | None = None
    note: str = ""

    @property
    def lambda_max_rel_error(self) -> float:
        """Bound on the relative error of ``lambda_max``: its Ritz residual over λ_max (an eigenvalue
        lies that close; 0 on the dense route; see :func:`normfield.core.krylov.lanczos`)."""
        if self.eigenvalue_errors is None or not len(self.eigenvalue_errors):
            return 0.0
        return float(self.eigenvalue_errors[0]) / max(abs(self.lambda_max), 1e-300)

    def density(self, bins: int = 50, *, log: bool = False):
        """Histogram of the spectral density of F*: tidy DataFrame (``left, right, mass``).

        Args:
            bins: number of bins over [0, λ_max] (or log-spaced over the positive nodes if ``log``).
        """
        import pandas as pd

        from normfield.errors import NormfieldError

        if self.density_nodes is None:
            raise NormfieldError("the spectral density was not computed; call analyze(..., density=True)",
                                 argument="density")
        x, w = np.clip(self.density_nodes, 0, None), self.density_weights
        hi = max(float(x.max()), 1e-300) * (1 + 1e-12)
        if log:
            pos = x[x > 0]
            lo = float(pos.min()) if pos.size else hi * 1e-12
            edges = np.geomspace(lo, hi, bins + 1)
        else:
            edges = np.linspace(0.0, hi, bins + 1)
        mass, _ = np.histogram(x, bins=edges, weights=w)
        return pd.DataFrame({"left": edges[:-1], "right": edges[1:], "mass": mass})

    @property
    def lr_bound(self) -> float:
        """2/λ_max, the largest stable gradient-descent learning rate (Karakida et al. 2019, eq. (23))."""
        return 2.0 / self.lambda_max if self.lambda_max > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        d = {
            "lambda_max": self.lambda_max,
            "m_lambda": self.m_lambda,
            "trace": self.trace,
            "trace_stderr": self.trace_stderr,
            "parameters": self.parameters,
            "samples": self.samples,
            "outputs": self.outputs,
            "eigenvalues": [float(x) for x in self.eigenvalues],
            "lr_bound": self.lr_bound,
            "method": self.method,
            "products": self.products,
            "lambda_max_rel_error": self.lambda_max_rel_error,
            "eigenvalue_rel_errors": (None if self.eigenvalue_errors is None else
                                      [float(e) / max(abs(self.lambda_max), 1e-300) for e in self.eigenvalue_errors]),
            "trace_rel_stderr": self.trace_stderr / abs(self.trace) if self.trace else None,
            "converged": bool(self.converged),
            "route": self.route,
            "stopped": self.stopped,
            "curvature": self.curvature,
        }
        if self.lambda_min is not None:
            d["lambda_min"] = self.lambda_min
            d["lambda_min_error"] = self.lambda_min_error
        if self.note:
            d["note"] = self.note
        if self.spectrum is not None:
            d["spectrum"] = [float(x) for x in self.spectrum]
        if self.density_nodes is not None:
            d["density"] = {"nodes": [float(x) for x in self.density_nodes],
                            "weights": [float(x) for x in self.density_weights]}
        return d
