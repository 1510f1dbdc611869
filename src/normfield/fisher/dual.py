"""The empirical Fisher engine: the reversed FIM ``F* = RᵀR`` (CT × CT).

Karakida et al. 2019 (eq. (8), (S.1)–(S.3)) define the empirical FIM
``F = Σ_k (1/T) Σ_t ∇θ f_k(t) ∇θ f_k(t)ᵀ = R Rᵀ`` with the P × CT matrix
``R = [∇θ f_1 ... ∇θ f_C]/√T`` (column ``(k, t)`` at index ``k·T + t``).  The
reversed FIM ``F* = RᵀR`` has the same non-zero eigenvalues; we never form the
P × P matrix.  :func:`fisher_dual` picks a route by the placement
(:mod:`normfield.fisher.placements`):

* **fast** (:mod:`normfield.fisher.dual_fast`; ``none``, ``last-mean``, ``last-bn``): hand-derived
  backward signals, then the placement's projection of the un-normalized dual.
* **general** (:mod:`normfield.fisher.dual_general`; every placement, the only exact one for
  ``middle-bn`` and ``layer``): automatic differentiation, per sample where the samples meet only
  in the output map, else full-batch.
* **matrix-free** (:mod:`normfield.fisher.dual_matrixfree`): Lanczos on ``v ↦ J(Jᵀv)/T`` without
  storing ``F*``.

Every route is tested against a brute-force autograd Jacobian of the full-batch output; the
stored routes' ``F*`` is exactly symmetric (:func:`normfield.fisher.products.gram`).
"""

from __future__ import annotations

from typing import Sequence

import torch

from normfield.core.validation import check_choice, check_finite_array, check_int, check_memory
from normfield.errors import NormfieldError
from normfield.fisher.dual_fast import _dual_fast
from normfield.fisher.dual_general import _dual_general, _dual_separable, dual_memory_bytes
from normfield.fisher.dual_matrixfree import _fisher_matrix_free
from normfield.fisher.networks import MLPConfig, Params, _forward, check_params
from normfield.fisher.placements import FAST_NORMS, get_placement
from normfield.fisher.result import FisherResult, _finish

__all__ = ["FisherResult", "fisher_dual", "fisher_dual_variants", "dual_memory_bytes", "FAST_NORMS"]


def fisher_dual(
    params: Params,
    X: torch.Tensor,
    config: MLPConfig,
    *,
    route: str = "auto",
    k: int = 10,
    eig: str = "auto",
    keep_dual: bool = True,
    vectors: bool = True,
    seed: int = 0,
    chunk: int | None = None,
) -> FisherResult:
    """Build the reversed FIM ``F* = RᵀR`` exactly and return its spectrum statistics.

    Karakida et al. 2019, eq. (8) and (S.1)–(S.3): ``F = (1/T) Σ_t Σ_k ∇θ f_k(t) ∇θ f_k(t)ᵀ``;
    ``F*`` (CT × CT) has the same non-zero eigenvalues.  ``m_λ = tr(F*)/P`` with the exact ``P``
    (Thm 2.2 and its normalized variants), ``λ_max`` its largest eigenvalue.

    Args:
        params: ``[(W^l, b^l)]`` from :func:`~normfield.fisher.networks.init_mlp` (float64 or float32,
            any device).
        X: inputs, shape ``(T, M_0)``.
        config: the settings; ``config.norm`` selects the placement.
        route: ``"auto"`` (fast where it applies, else general), ``"fast"``, ``"general"`` (torch.func
            automatic differentiation: per sample plus the exact output-map Jacobian for ``none``,
            ``last-mean``, ``last-bn``, ``layer`` — :func:`_dual_separable`; full-batch for ``middle-bn``,
            whose hidden BN couples the samples — :func:`_dual_general`), or
            ``"matrix-free"`` (any placement: Lanczos on ``v ↦ J(Jᵀv)/T`` by full-batch VJP/JVP and the
            exact trace from chunked VJPs; ``F*`` is never stored, for CT too large for memory;
            ``dual``, ``top_cosine`` and ``order_parameters`` are then ``None``).
        k: how many leading eigenvalues to return.
        eig: ``"auto"`` (dense up to CT = 1000, else Lanczos), ``"dense"`` or ``"lanczos"``.
        keep_dual: keep ``F*`` in the result.
        vectors: compute top eigenvectors (and the Thm 3.1 cosine).
        seed: seeds the Lanczos start vector.
        chunk: outputs per VJP batch in the full-batch general route (``middle-bn``) and the
            matrix-free route (default: each batched
            cotangent tensor under 16 MiB in the general route, ~256 MiB per batch in the matrix-free one).

    Returns:
        :class:`FisherResult`.

    Raises:
        NormfieldError: shapes do not match ``config``; ``route="fast"`` for ``middle-bn``/``layer``;
            ``F*`` would not fit in memory (refused before allocating, suggesting fewer samples).
    """
    check_params(params, X, config)
    route = check_choice("route", route, ["auto", "fast", "general", "matrix-free"])
    eig = check_choice("eig", eig, ["auto", "dense", "lanczos"])
    k = check_int("k", k, minimum=1)
    placement = config.placement
    if route == "auto":
        route = "fast" if placement.fast else "general"
    if route == "fast" and not placement.fast:
        raise NormfieldError(
            f"route='fast' handles norm in {', '.join(FAST_NORMS)} only; norm={placement.name} couples samples "
            "inside the network: use route='general' (or 'auto')", argument="route")
    T = X.shape[0]
    C = config.outputs
    n = C * T
    check_finite_array("X", X)
    if route == "matrix-free":
        return _fisher_matrix_free(params, X, config, k=k, vectors=vectors, seed=seed, chunk=chunk)
    check_memory("fisher_dual", dual_memory_bytes(config, T, route, X.element_size()),
                 hint=f"the dual F* is {n}×{n}; use route='matrix-free' (Lanczos on F*v = J(Jᵀv)/T, "
                 "no (CT)² storage) or fewer samples T / outputs C")
    if route == "fast":
        F, order, uL = _dual_fast(params, X, config)
        F = placement.project(F, uL)
    else:
        F = (_dual_separable(params, X, config) if placement.separable
             else _dual_general(params, X, config, chunk=chunk))
        order = None
        with torch.no_grad():
            cache: dict = {}
            _forward(params, X, config, cache=cache)
            uL = cache["uL"]
    with torch.no_grad():
        stats = placement.output_stats(uL)
    return _finish(F, order, stats, config, route, k=k, eig=eig, vectors=vectors, keep_dual=keep_dual, seed=seed)

def fisher_dual_variants(
    params: Params,
    X: torch.Tensor,
    config: MLPConfig,
    norms: Sequence[str] = FAST_NORMS,
    *,
    k: int = 1,
    eig: str = "auto",
    vectors: bool = False,
    keep_dual: bool = False,
    seed: int = 0,
) -> dict[str, FisherResult]:
    """One fast-route build of the un-normalized ``F*`` projected for several output placements.

    The same network and inputs under ``none``, ``last-mean`` (S.20) and ``last-bn`` (S.48): the
    hidden layers are identical, only the output projection differs (Fig. 1 compares exactly this).

    Returns:
        ``{norm: FisherResult}`` for each of ``norms`` (a subset of :data:`FAST_NORMS`).
    """
    for nm in norms:
        check_choice("norms", nm, FAST_NORMS)
    placements = [get_placement(nm) for nm in norms]
    base = config.replace(norm="none")
    check_params(params, X, base)
    T = X.shape[0]
    for placement in placements:
        placement.check_samples(T, "X")
    n = config.outputs * T
    check_memory("fisher_dual", dual_memory_bytes(base, T, "fast", X.element_size()) + 8 * n * n,
                 hint=f"the dual F* is {n}×{n}; use fewer samples T or outputs C")
    F0, order, uL = _dual_fast(params, X, base)
    out = {}
    for nm, placement in zip(norms, placements):
        with torch.no_grad():
            F = placement.project(F0, uL)
            stats = placement.output_stats(uL)
        out[nm] = _finish(F, order, stats, config.replace(norm=nm), "fast", k=k, eig=eig, vectors=vectors,
                          keep_dual=keep_dual, seed=seed)
    return out
