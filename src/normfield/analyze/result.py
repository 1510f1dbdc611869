"""The result of :func:`normfield.analyze`: Fisher/NTK statistics and per-layer Gram diagnostics."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from normfield.analyze.ntk import FisherSpectrum

__all__ = ["AnalysisResult"]


@dataclass
class AnalysisResult:
    """Normalization diagnostics of one model on one batch.

    Attributes:
        fisher: eigenvalue statistics of the Fisher F = JᵀJ/T via F* = JJᵀ/T
            (Karakida et al. 2019, eqs. (8), (10)); ``None`` if not computed.
        layers: tidy DataFrame, one row per hooked layer call: the batch Gram
            G = H Hᵀ/d of its output (Joudaki et al. 2023, eq. (2)), its
            spectrum, conditioning, rank-collapse indicators and the distance
            to the batch-norm fixed point G* (Joudaki et al. 2023, eq. (10))
            where it applies. See :func:`normfield.analyze.hooks.layer_gram_rows`.
        grams: the Gram matrices, shape (n, n) each, keyed like ``layers.layer``.
        what_if: alternative Fisher statistics by name; ``"last-mean"`` is the
            same model with last-layer mean subtraction f̄ = f − E_batch[f]
            (Karakida et al. 2019, eq. (15), Thm 3.3).
        settings: how the analysis ran (dtype, device, mode, method, loss, curvature, batches, ...).
        per_batch: one row per batch (``batch``, ``samples``, ``lambda_max``, ``trace``,
            ``trace_stderr``, ``products``): each batch's own curvature F_b; for a data set the
            pooled ``fisher`` is F = Σ_b (T_b/N) F_b (:mod:`normfield.analyze.pooled`). ``None``
            without the curvature.
        theory: with ``analyze(..., theory=True)``, one row per number that has an infinite-width
            prediction (:func:`normfield.analyze.theory.compare`: quantity, layer, measured,
            predicted, ratio, distance); ``prediction`` the
            :class:`~normfield.infinite.predict.KernelPrediction` itself.
    """

    fisher: FisherSpectrum | None
    layers: pd.DataFrame
    grams: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    what_if: dict[str, FisherSpectrum] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    per_batch: pd.DataFrame | None = None
    theory: pd.DataFrame | None = None
    prediction: Any = field(default=None, repr=False)

    # -- what was measured ----------------------------------------------------------
    @property
    def curvature(self) -> str:
        """Which matrix: ``"fisher-mse"``, ``"fisher-cross-entropy"``, ``"hessian-mse"`` or
        ``"hessian-cross-entropy"`` (:data:`normfield.analyze.losses.CURVATURES`)."""
        return self.settings.get("curvature", "fisher-mse")

    @property
    def samples(self) -> int:
        """N, the samples analyzed (over every batch)."""
        return int(self.settings.get("samples", 0))

    @property
    def batches(self) -> int:
        """How many batches (1 for one batch)."""
        return int(self.settings.get("batches", 1))

    @property
    def lambda_min(self) -> float | None:
        """Smallest eigenvalue of a Hessian (``None`` for a Fisher, which is positive semi-definite)."""
        return self._need_fisher().lambda_min

    def per_batch_spread(self) -> dict[str, dict[str, float]]:
        """Mean and 95 % confidence half-width (Student's t over the batches) of each batch's
        ``lambda_max`` and ``trace``: ``{"lambda_max": {"mean", "ci95"}, "trace": {...}}``."""
        from normfield.analyze.pooled import spread

        if self.per_batch is None or not len(self.per_batch):
            return {}
        out = {}
        for col in ("lambda_max", "trace"):
            m, h = spread(self.per_batch[col].to_numpy())
            out[col] = {"mean": m, "ci95": h}
        return out

    # -- the headline numbers ------------------------------------------------------
    def _need_fisher(self) -> FisherSpectrum:
        if self.fisher is None:
            from normfield.errors import NormfieldError

            raise NormfieldError("the Fisher was not computed (fisher=False); re-run analyze with fisher=True",
                                 argument="fisher")
        return self.fisher

    @property
    def lambda_max(self) -> float:
        """Largest Fisher eigenvalue λ_max."""
        return self._need_fisher().lambda_max

    @property
    def m_lambda(self) -> float:
        """Mean Fisher eigenvalue m_λ = tr(F*)/P."""
        return self._need_fisher().m_lambda

    @property
    def parameters(self) -> int:
        """P, the number of differentiated parameters."""
        return self._need_fisher().parameters

    @property
    def eigenvalues(self) -> np.ndarray:
        """Top-k Fisher eigenvalues, shape (k,), largest first."""
        return self._need_fisher().eigenvalues

    @property
    def lr_bound(self) -> float:
        """2/λ_max: gradient descent on the squared loss is unstable above it (Karakida et al. 2019, eq. (23))."""
        return self._need_fisher().lr_bound

    def what_if_ratio(self, name: str = "last-mean") -> float:
        """λ_max(with ``name``) / λ_max(as given)."""
        return self.what_if[name].lambda_max / self.lambda_max

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON-able dict (what ``normfield analyze --json`` prints); NaN -> None, ±inf -> "inf"."""
        d: dict[str, Any] = {}
        if self.fisher is not None:
            d.update({
                "lambda_max": self.fisher.lambda_max,
                "m_lambda": self.fisher.m_lambda,
                "parameters": self.fisher.parameters,
                "eigenvalues": [float(x) for x in self.fisher.eigenvalues],
                "lr_bound": self.fisher.lr_bound,
                "fisher": self.fisher.to_dict(),
            })
        d["layers"] = [
            {k: (None if isinstance(v, float) and math.isnan(v) else
                 (v.item() if isinstance(v, np.generic) else v)) for k, v in r.items()}
            for r in self.layers.to_dict(orient="records")
        ]
        if self.what_if:
            d["what_if"] = {}
            for k, v in self.what_if.items():
                w = v.to_dict()
                w.pop("spectrum", None)
                if self.fisher is not None and self.fisher.lambda_max > 0:
                    w["lambda_max_ratio"] = v.lambda_max / self.fisher.lambda_max
                    w["m_lambda_ratio"] = v.m_lambda / self.fisher.m_lambda if self.fisher.m_lambda else None
                d["what_if"][k] = w
        d["curvature"] = self.curvature
        d["samples"] = self.samples
        d["batches"] = self.batches
        if self.fisher is not None and self.fisher.lambda_min is not None:
            d["lambda_min"] = self.fisher.lambda_min
        if self.per_batch is not None:
            d["per_batch"] = self.per_batch.to_dict(orient="records")
            d["per_batch_spread"] = {k: {n: (None if math.isnan(x) else x) for n, x in v.items()}
                                     for k, v in self.per_batch_spread().items()}  # one batch: no interval
        if self.theory is not None:
            from normfield.analyze.theory import theory_records

            d["theory"] = theory_records(self.theory)
        d["settings"] = dict(self.settings)
        from normfield.jsonable import jsonable  # strict JSON: inf -> "inf"

        return jsonable(d)

    def summary(self) -> str:
        """A short human-readable summary."""
        lines = []
        if self.fisher is not None:
            f = self.fisher
            what = "Fisher/NTK" if self.curvature == "fisher-mse" else self.curvature
            lines.append(f"{what} over T={f.samples} samples x C={f.outputs} outputs, P={f.parameters} parameters "
                         f"({f.method}, {f.products} Jacobian products)" +
                         (f", {self.batches} batches" if self.batches > 1 else ""))
            if f.lambda_min is not None:
                lines.append(f"  lambda_min = {f.lambda_min:.6g}")
            lines.append(f"  lambda_max = {f.lambda_max:.6g}   m_lambda = {f.m_lambda:.6g}   lr bound 2/lambda_max = "
                         f"{f.lr_bound:.6g}")
            for k, v in self.what_if.items():
                lines.append(f"  what-if {k}: lambda_max = {v.lambda_max:.6g} (x{v.lambda_max / f.lambda_max:.3g}), "
                             f"m_lambda = {v.m_lambda:.6g}, lr bound = {v.lr_bound:.6g}")
        return "\n".join(lines)
