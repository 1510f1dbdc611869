"""The matrix-free route: the FIM's spectrum without storing the CT × CT dual.

Lanczos (:func:`normfield.core.krylov.top_eigenpairs`) on ``v ↦ J(Jᵀv)/T`` — one full-batch
VJP and one JVP per product — and the exact trace ``tr F* = Σ_n ‖∇θ f_n‖²/T`` from chunked
VJPs (Karakida et al. 2019, (S.1)–(S.3)).  Memory ``O(P + L·T·M + chunk·(T·M + M²))``, never
``O((CT)²)``; any placement.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from normfield.core.jacobian import gram_matvec
from normfield.core.krylov import lanczos
from normfield.core.validation import check_memory
from normfield.errors import NormfieldError
from normfield.fisher.dual_general import _general_chunk
from normfield.fisher.networks import MLPConfig, Params, _forward
from normfield.fisher.result import FisherResult

__all__ = ["MATRIX_FREE_MAX_FLOPS", "_matrix_free", "_fisher_matrix_free"]

#: The matrix-free route refuses when its exact trace would cost more than this (hours on a CPU).
MATRIX_FREE_MAX_FLOPS = 5e13


def _matrix_free(params: Params, X: torch.Tensor, config: MLPConfig, *, k: int, seed: int,
                 chunk: int | None, vectors: bool) -> tuple[float, np.ndarray, np.ndarray | None, dict]:
    """λ's of ``F*`` by Lanczos on ``v ↦ J(Jᵀv)/T`` (one VJP + one JVP of the full
    batch per product) and the exact trace ``Σ_n ‖∇θ f_n‖²/T`` from chunked VJPs; memory
    O(P + L·T·M + chunk·(T·M + M²)), never O((CT)²)."""
    from torch.func import vjp, vmap

    T = X.shape[0]
    n = config.outputs * T
    names = [f"{kind}{l}" for l in range(len(params)) for kind in ("W", "b")]
    theta = {name: p for name, p in zip(names, (p for Wb in params for p in Wb))}

    def f(th: dict[str, torch.Tensor]) -> torch.Tensor:
        pr = [(th[f"W{l}"], th[f"b{l}"]) for l in range(len(params))]
        return _forward(pr, X, config).T.reshape(-1)

    _, gram, _op = gram_matvec(f, theta, scale=1.0 / T)

    def matvec(v: np.ndarray) -> np.ndarray:
        vt = torch.as_tensor(np.ascontiguousarray(v), dtype=X.dtype, device=X.device)
        return gram(vt).detach().cpu().double().numpy()

    res = lanczos(matvec, n, min(k, n), tol=1e-10, seed=seed)
    # exact trace: ∂f_n/∂W^l = D^nᵀ H_{l-1}, ∂f_n/∂b^l = D^nᵀ 1 with D^n = ∂f_n/∂U^l (T × M_l)
    sizes = config.layer_sizes
    cache: dict = {}
    with torch.no_grad():
        _forward(params, X, config, cache=cache)
    Bs = [torch.cat([H, torch.ones(T, 1, dtype=X.dtype, device=X.device)], 1) for H in cache["inputs"]]
    zeros = [torch.zeros(T, m, dtype=X.dtype, device=X.device) for m in sizes[1:]]

    def f_of_E(*Es: torch.Tensor) -> torch.Tensor:
        return _forward(params, X, config, perturb=Es).T.reshape(-1)

    _, vjp_E = vjp(f_of_E, *zeros)
    B = chunk or _general_chunk(config, T)
    trace = 0.0
    for i0 in range(0, n, B):
        b = min(B, n - i0)
        cot = torch.zeros(b, n, dtype=X.dtype, device=X.device)
        cot[torch.arange(b), torch.arange(i0, i0 + b)] = 1.0
        for D, Bl in zip(vmap(vjp_E)(cot), Bs):
            trace += float((torch.matmul(D.transpose(1, 2), Bl) ** 2).sum())
    return trace / T, res.eigenvalues, res.eigenvectors if vectors else None, {"matvecs": res.products}


def _fisher_matrix_free(params: Params, X: torch.Tensor, config: MLPConfig, *, k: int, vectors: bool, seed: int,
                        chunk: int | None) -> FisherResult:
    """:class:`FisherResult` of the matrix-free route (``dual``, ``top_cosine`` and
    ``order_parameters`` are ``None``); refuses before allocating when memory or the exact
    trace's cost (:data:`MATRIX_FREE_MAX_FLOPS`) would be too large."""
    T = X.shape[0]
    sizes = config.layer_sizes
    per = X.element_size() * (config.parameters * 4 + 4 * T * sum(sizes)
                              + 3 * (chunk or _general_chunk(config, T)) * (T + max(sizes)) * max(sizes))
    check_memory("fisher_dual(route='matrix-free')", per, hint="use fewer samples T or a smaller width")
    n = config.outputs * T
    flops = 4.0 * n * T * sum(sizes[l] * (sizes[l - 1] + 1) for l in range(1, len(sizes)))
    if flops > MATRIX_FREE_MAX_FLOPS:
        raise NormfieldError(
            f"route='matrix-free': the exact trace needs one full-batch backward pass per output "
            f"(~{flops:.1e} flops for CT = {n}, T = {T}), over the {MATRIX_FREE_MAX_FLOPS:.0e} limit; use fewer "
            "samples T or outputs C", argument="route")
    trace, evals, evecs, info = _matrix_free(params, X, config, k=k, seed=seed, chunk=chunk, vectors=vectors)
    with torch.no_grad():
        cache: dict = {}
        _forward(params, X, config, cache=cache)
        stats: dict[str, Any] = config.placement.output_stats(cache["uL"])
    stats["matvecs"] = info["matvecs"]
    return FisherResult(
        lambda_max=float(max(evals[0], 0.0)), m_lambda=trace / config.parameters, parameters=config.parameters,
        trace=trace, eigenvalues=np.asarray(evals, dtype=np.float64), eigenvectors=evecs if vectors else None,
        dual=None, route="matrix-free", eig_method="lanczos", top_cosine=None, order_parameters=None,
        output_stats=stats, config=config)
