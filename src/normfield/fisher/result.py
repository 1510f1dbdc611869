"""The result of one reversed-FIM build and the spectrum glue shared by every route.

:class:`FisherResult` holds ``F* = RᵀR`` (CT × CT) and its spectrum statistics (Karakida
et al. 2019, eq. (8), (S.1)–(S.3)); :func:`_finish` turns an exact dual into one (dense or
Lanczos eigenpairs, ``m_λ = tr(F*)/P``, the Thm 3.1 cosine).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from normfield.core.krylov import top_eigenpairs
from normfield.errors import NormfieldError
from normfield.fisher.networks import MLPConfig

__all__ = ["FisherResult", "DENSE_EIG_MAX"]

#: Above this CT, λ_max and the top-k come from Lanczos (ARPACK) instead of a dense eigensolver
#: (dense eigh is O(n³) and already ~5 s at n = 2000 on 2 cores; Lanczos needs a few dozen O(n²) products).
DENSE_EIG_MAX = 1000


@dataclass
class FisherResult:
    """The reversed FIM of one network on one batch, and its spectrum.

    Attributes:
        lambda_max: largest eigenvalue of the FIM (= of ``F*``).
        m_lambda: mean eigenvalue ``tr(F*)/P`` over all ``P`` eigenvalues of the FIM.
        parameters: ``P``, the exact number of parameters.
        trace: ``tr(F*) = tr(F)``.
        eigenvalues: top-``k`` eigenvalues, shape ``(k,)``, largest first.
        eigenvectors: matching eigenvectors of ``F*``, shape ``(CT, k)`` (or ``None``).
        dual: ``F*`` itself, float64 ndarray ``(CT, CT)`` (or ``None`` if not kept).
        route: ``"fast"`` or ``"general"``.
        eig_method: ``"dense"`` or ``"lanczos"``.
        top_cosine: cosine between the top eigenvector of the FIM and the span of
            ``E[∇θ f_k]`` (Thm 3.1); ``None`` when that span is null (e.g. mean-subtracted).
        order_parameters: measured per-layer order parameters (fast route):
            ``layer, qhat_t, qhat_st, qtilde_t, qtilde_st, qtilde_st_01`` with
            ``qtilde`` of output 1 ((S.4)) and ``qhat`` of the layer's input.
        output_stats: measured output statistics the theory needs:
            ``sigma`` (C,) for ``last-bn`` (eq. (14)); ``eta1, eta2, eta3`` for ``layer``
            (Appendix E.2.2).
        config: the settings.
    """

    lambda_max: float
    m_lambda: float
    parameters: int
    trace: float
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray | None
    dual: np.ndarray | None
    route: str
    eig_method: str
    top_cosine: float | None
    order_parameters: pd.DataFrame | None
    output_stats: dict[str, Any]
    config: MLPConfig

    def to_dict(self) -> dict[str, Any]:
        """Scalars and small arrays, JSON-able."""
        return {
            "lambda_max": self.lambda_max,
            "m_lambda": self.m_lambda,
            "parameters": self.parameters,
            "trace": self.trace,
            "eigenvalues": [float(v) for v in self.eigenvalues],
            "route": self.route,
            "eig_method": self.eig_method,
            "top_cosine": self.top_cosine,
            "output_stats": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.output_stats.items()},
            "config": self.config.to_dict(),
        }

def _spectrum(Fn: np.ndarray, k: int, eig: str, seed: int, vectors: bool = True) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Top-``k`` eigenpairs of the symmetric PSD ``Fn``, largest first.

    Dense: ``torch.linalg.eigh``/``eigvalsh`` (LAPACK through torch's thread pool).  Lanczos:
    ARPACK through :func:`normfield.core.krylov.top_eigenpairs` with torch matrix-vector products.
    """
    n = Fn.shape[0]
    k = min(k, n)
    method = eig
    if eig == "auto":
        method = "dense" if n <= DENSE_EIG_MAX else "lanczos"
    Ft = torch.from_numpy(Fn)
    if method == "dense" or k >= n - 1:
        if vectors:
            w, V = torch.linalg.eigh(Ft)
            return w.numpy()[::-1][:k].copy(), V.numpy()[:, ::-1][:, :k].copy(), "dense"
        return torch.linalg.eigvalsh(Ft).numpy()[::-1][:k].copy(), None, "dense"
    r = top_eigenpairs(lambda v: (Ft @ torch.from_numpy(np.ascontiguousarray(v))).numpy(), n, k, seed=seed,
                       vectors=vectors)
    return r.eigenvalues, r.eigenvectors, r.method


def _top_cosine(Fn: np.ndarray, lam: float, u: np.ndarray, C: int, T: int) -> float | None:
    """Cosine between the FIM's top eigenvector ``R u/√λ`` and span{E[∇θ f_k]} (Thm 3.1).

    With ``N = [ν_1..ν_C]`` (ν_k = 1_T/√T on block k, (S.13)), ``E[∇θ f_k] = R ν_k``;
    ``cos² = λ (Nᵀu)ᵀ (Nᵀ F* N)⁻¹ (Nᵀu)``.
    """
    N = np.zeros((C * T, C))
    for k in range(C):
        N[k * T:(k + 1) * T, k] = 1.0 / math.sqrt(T)
    G = N.T @ Fn @ N
    scale = max(float(np.trace(Fn)) / (C * T), 1e-300)
    if np.linalg.eigvalsh(G).min() <= 1e-9 * scale or lam <= 0:
        return None
    a = N.T @ u
    c2 = float(lam * a @ np.linalg.solve(G, a))
    return math.sqrt(min(max(c2, 0.0), 1.0))

def _finish(F: torch.Tensor, order: pd.DataFrame | None, stats: dict, config: MLPConfig, route: str, *,
            k: int, eig: str, vectors: bool, keep_dual: bool, seed: int) -> FisherResult:
    T = F.shape[0] // config.outputs
    C = config.outputs
    Fn = F.detach().to(device="cpu", dtype=torch.float64).numpy()
    Fn = 0.5 * (Fn + Fn.T)  # exact identity on the (exactly symmetric) routes' output
    if not np.all(np.isfinite(Fn)):
        raise NormfieldError(
            "the Fisher dual is not finite: an activation or normalization overflowed or divided by a "
            "zero batch/layer variance (e.g. a constant unit); lower sw2/sb2 or change the activation",
            argument="params")
    trace = float(np.trace(Fn))
    P = config.parameters
    evals, evecs, method = _spectrum(Fn, k, eig, seed, vectors)
    lam = float(max(evals[0], 0.0))
    cos = None
    if vectors and evecs is not None and config.placement.mean_gradient_direction:
        cos = _top_cosine(Fn, lam, evecs[:, 0], C, T)
    return FisherResult(
        lambda_max=lam,
        m_lambda=trace / P,
        parameters=P,
        trace=trace,
        eigenvalues=np.asarray(evals, dtype=np.float64),
        eigenvectors=evecs if vectors else None,
        dual=Fn if keep_dual else None,
        route=route,
        eig_method=method,
        top_cosine=cos,
        order_parameters=order,
        output_stats=stats,
        config=config,
    )
