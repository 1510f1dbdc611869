"""The general route to the reversed FIM: automatic differentiation (torch.func), every placement.

Two exact routes (Karakida et al. 2019, (S.1)–(S.3)), tested against each other and against a
brute-force Jacobian:

* :func:`_dual_separable` — placements whose samples meet only in the output map
  (:attr:`Placement.separable <normfield.fisher.placements.Placement.separable>`): per-sample
  Jacobians and the exact Jacobian of the output map.
* :func:`_dual_general` — full-batch vector–Jacobian products, so the coupling of samples
  through hidden batch statistics ((S.56)–(S.60)) is differentiated exactly: for every output
  ``n = (k, t)``, ``D^n_l = ∂f_n/∂U^l`` (T × M_l) and ``∂f_n/∂W^l = D^nᵀ H_{l-1}``,
  ``∂f_n/∂b^l = D^nᵀ 1``, so

      F*_{nm} = (1/T) Σ_l ⟨Rᵀ_l D^n_l, Rᵀ_l D^m_l⟩_F,   H_{l-1}H_{l-1}ᵀ + 1 = R_l R_lᵀ,

  one syrk-like product of the stored per-output factors per layer.  Cost ``O(CT · L T M²)``
  flops; the fast route's is ``O(L M² T + L M T² C²)``, so the general/fast ratio grows like ``C·T``.

Memory is planned before allocating (:func:`dual_memory_bytes`, :func:`_general_plan`).
"""

from __future__ import annotations

import torch

from normfield.errors import NormfieldError
from normfield.fisher.networks import MLPConfig, Params, _forward
from normfield.fisher.products import factor_product, gram, sample_factor

__all__ = ["dual_memory_bytes", "_dual_general", "_dual_separable", "_general_plan", "_factor_widths",
           "_general_chunk"]

def dual_memory_bytes(config: MLPConfig, T: int | None = None, route: str = "fast", itemsize: int = 8,
                      chunk: int | None = None) -> float:
    """Rough peak memory of building ``F*`` (bytes), used to refuse before allocating.

    For the general route this is the least it needs (one VJP batch of ``chunk`` outputs, one stored
    and one streamed block of their factors); the factors of more outputs are stored as the
    allocation cap allows (:func:`_general_plan`)."""
    T = config.samples if T is None else T
    C = config.outputs
    sizes = config.layer_sizes
    n = C * T
    acts = sum(T * m for m in sizes)  # forward inputs kept
    weights = sum(sizes[l] * (sizes[l - 1] + 1) for l in range(1, len(sizes)))
    if route == "fast":
        big = 3 * n * n + 2 * C * T * max(sizes[1:]) + T * T
    elif config.placement.separable:  # per-sample Jacobians, F̃, N and N F̃ Nᵀ (_dual_separable)
        big = 4 * n * n + n * sum(sizes[1:]) + 2 * n * max(sizes[1:]) + T * T
    else:
        B = max(1, min(n, chunk or _general_batch(config, T, itemsize)))
        factor = sum(r * m for r, m in _factor_widths(config, T))
        big = 3 * n * n + B * (4 * T * sum(sizes[1:]) + 2 * factor + n) + T * sum(sizes[:-1])
    return float(itemsize * (acts + weights + big))


def _general_chunk(config: MLPConfig, T: int) -> int:
    """Outputs per vmapped VJP batch so one batch of D stays under ~256 MiB."""
    per = 8 * T * sum(config.layer_sizes[1:]) * 3
    return int(max(1, min(config.outputs * T, (256 * 2**20) // max(per, 1))))


#: Largest single batched-cotangent tensor (b, T, M_l) of the general route's VJP batches.  Kept
#: under glibc's largest mmap threshold (32 MiB) so the backward pass's temporaries are reused from
#: the heap instead of being mapped and page-faulted afresh for every batch (measured at M = T = 400,
#: middle-bn, 1 thread: 3.7 s of system time in 8.1 s wall with 43 MB tensors, 0.4 s in 5.2 s at 16 MiB).
GENERAL_BATCH_BYTES = 16 * 2**20


def _general_batch(config: MLPConfig, T: int, itemsize: int = 8) -> int:
    """Outputs per vmapped VJP batch of the general route (see :data:`GENERAL_BATCH_BYTES`)."""
    per = itemsize * T * max(config.layer_sizes[1:])
    return int(max(1, min(_general_chunk(config, T), GENERAL_BATCH_BYTES // max(per, 1))))


def _factor_widths(config: MLPConfig, T: int) -> list[tuple[int, int]]:
    """``(r_l, M_l)`` of the per-output factor ``Rᵀ_l D^n_l`` of each layer (see :func:`_dual_general`)."""
    sizes = config.layer_sizes
    return [(min(T, sizes[l - 1] + 1), sizes[l]) for l in range(1, len(sizes))]


def _general_plan(config: MLPConfig, T: int, itemsize: int = 8, chunk: int | None = None,
                  store: int | None = None) -> tuple[int, int]:
    """``(B, S)``: outputs per vmapped VJP batch, and outputs whose factors are stored at once.

    The factors of all ``CT`` outputs take ``CT · Σ_l r_l M_l`` numbers; ``S = CT`` (one VJP pass
    per output) when they fit under the allocation cap of :func:`normfield.core.validation.check_memory`
    (``NORMFIELD_MAX_BYTES``) on top of :func:`dual_memory_bytes`, else the largest multiple of ``B``
    that does (the rows after each stored block are then recomputed, see :func:`_dual_general`)."""
    from normfield.core.validation import _max_bytes

    n = config.outputs * T
    B = max(1, min(n, chunk or _general_batch(config, T, itemsize)))
    if store is None:
        per_row = itemsize * sum(r * m for r, m in _factor_widths(config, T))
        budget = _max_bytes() - dual_memory_bytes(config, T, "general", itemsize, chunk=B)
        store = B + int(max(budget, 0) // max(per_row, 1))
    S = min(n, max(B, int(store)))
    if S < n:
        S = max(B, (S // B) * B)
    return B, S


#: Bytes of one per-sample Jacobian batch (T_b, C, M_l) of the separable general route.
SEPARABLE_BATCH_BYTES = 16 * 2**20


def _dual_separable(params: Params, X: torch.Tensor, config: MLPConfig) -> torch.Tensor:
    """``F*`` of a network whose samples interact only through the output normalization.

    Generic automatic differentiation (torch.func), no hand-derived backward recursion: with the
    per-sample map ``g(x, e_1..e_L) = u^L(x)`` (pre-activation perturbations ``e_l``, layer norm
    inside ``g`` when ``norm='layer'``) and the batch output map ``f = n(u^L)`` (identity, mean
    subtraction eq. 15, batch norm eq. 13, or identity after the per-sample layer norm eq. 24),

        D_l[t] = ∂g(x_t)/∂e_l            (C × M_l, ``jacrev`` vmapped over the samples),
        F̃[(k,t),(k',s)] = Σ_l ⟨D_l[t]_k, D_l[s]_{k'}⟩ (H_{l-1}H_{l-1}ᵀ + 1)_{ts}   (Karakida (S.1)–(S.3)),
        F* = N F̃ Nᵀ / T,   N = ∂ vec n(u^L) / ∂ vec u^L   (CT × CT, ``jacrev``; index k·T + t).

    Exact (same numbers as the full-batch route :func:`_dual_general` to round-off, tested) and
    ≈ C·T times cheaper than it, because a sample's cotangent is one row, not T rows.  Cost
    O(C·T·M²·L) for the Jacobians, O(C²T²·M·L) for F̃ and O((CT)³) for the projection.
    """
    from torch.func import jacrev, vmap

    placement = config.placement
    if not placement.separable:
        raise NormfieldError(f"norm={placement.name} couples samples inside the network; use the full-batch "
                             "route", argument="norm")
    T = X.shape[0]
    C = config.outputs
    n = C * T
    sizes = config.layer_sizes

    def g(x: torch.Tensor, *es: torch.Tensor) -> torch.Tensor:
        return _forward(params, x[None], config, perturb=[e[None] for e in es], per_sample=True)[0]  # (C,)

    zeros = [torch.zeros(m, dtype=X.dtype, device=X.device) for m in sizes[1:]]
    jac = vmap(jacrev(g, argnums=tuple(range(1, len(zeros) + 1))), in_dims=(0,) + (None,) * len(zeros))
    cache: dict = {}
    with torch.no_grad():
        _forward(params, X, config, cache=cache, per_sample=True)
    uL = cache["uL"]
    Ks = []
    for H in cache["inputs"]:
        K = gram(H)
        K += 1.0
        Ks.append(K)
    tb = max(1, min(T, SEPARABLE_BATCH_BYTES // max(1, X.element_size() * C * max(sizes[1:]) * 4)))
    Ds: list[list[torch.Tensor]] = [[] for _ in zeros]
    for t0 in range(0, T, tb):
        for l, D in enumerate(jac(X[t0:t0 + tb], *zeros)):  # each (t_b, C, M_l)
            Ds[l].append(D.detach())
    F = torch.zeros(n, n, dtype=X.dtype, device=X.device)
    for Dl, K in zip(Ds, Ks):
        G = torch.cat(Dl).permute(1, 0, 2).reshape(n, -1)  # row k·T + t
        F += gram(G) * K.repeat(C, C)
        del G
    if placement.has_batch_output:
        def out_map(v: torch.Tensor) -> torch.Tensor:
            return placement.batch_output(v.reshape(C, T).T).T.reshape(-1)

        N = jacrev(out_map)(uL.detach().T.reshape(-1))  # (CT, CT)
        F = N @ F @ N.T
    F /= T
    return 0.5 * (F + F.T)


def _dual_general(params: Params, X: torch.Tensor, config: MLPConfig, chunk: int | None = None,
                  store: int | None = None) -> torch.Tensor:
    """``F*`` by full-batch VJPs with respect to the pre-activations (torch.func).

    Karakida et al. 2019 (S.1)–(S.3) with ``∂f_n/∂W^l = D^nᵀ H_{l-1}``, ``∂f_n/∂b^l = D^nᵀ 1``,
    ``D^n_l = ∂f_n/∂U^l`` (T × M_l, dense over the samples when they are coupled, (S.56)–(S.60)):

        F*_{nm} = (1/T) Σ_l Σ_{ab} (D^n_l D^mᵀ_l)_{ab} K_{ab} = (1/T) Σ_l ⟨Rᵀ_l D^n_l, Rᵀ_l D^m_l⟩_F,

    with ``K = H_{l-1}H_{l-1}ᵀ + 1 = R_l R_lᵀ`` (:func:`~normfield.fisher.products.sample_factor`).  Each output's cotangents
    come from one vmapped full-batch backward pass (``chunk`` outputs at a time); its compact factor
    ``Rᵀ_l D^n_l`` (r_l × M_l, ``r_l = min(T, M_{l-1}+1)``) is stored and ``F* = Σ_l G_l G_lᵀ / T``
    is one syrk-like product per layer.  When the factors of all outputs do not fit under the
    allocation cap (:func:`_general_plan`; ``store`` overrides the number of stored rows), they are
    stored ``S`` outputs at a time and the later outputs are recomputed against each stored block
    (``CT·(CT/S + 1)/2`` backward passes instead of ``CT``).
    """
    from torch.func import vjp, vmap

    T = X.shape[0]
    C = config.outputs
    n = C * T
    sizes = config.layer_sizes
    cache: dict = {}
    zeros = [torch.zeros(T, m, dtype=X.dtype, device=X.device) for m in sizes[1:]]

    def f_of_E(*Es: torch.Tensor) -> torch.Tensor:
        return _forward(params, X, config, perturb=Es).T.reshape(-1)  # index k·T + t

    with torch.no_grad():
        _forward(params, X, config, cache=cache)
        Rts = [sample_factor(H) for H in cache["inputs"]]  # Rᵀ_l: (r_l, T)
    del cache
    _, vjp_fn = vjp(f_of_E, *zeros)
    B, S = _general_plan(config, T, X.element_size(), chunk, store)
    widths = [(Rt.shape[0], m) for Rt, m in zip(Rts, sizes[1:])]
    batched = vmap(vjp_fn)

    def factors_into(out: list[torch.Tensor], i0: int, b: int) -> None:
        """Rows ``[i0, i0+b)`` of every layer's factor, written into ``out[l][:b]`` (b, r_l, M_l)."""
        cot = torch.zeros(b, n, dtype=X.dtype, device=X.device)  # seeds e_n (b × CT: negligible next to D)
        cot[torch.arange(b, device=X.device), torch.arange(i0, i0 + b, device=X.device)] = 1.0
        Ds = batched(cot)  # each (b, T, M_l)
        del cot
        for G, D, Rt in zip(out, Ds, Rts):
            factor_product(Rt, D, G[:b])  # Rᵀ_l D^n_l

    F = torch.empty(n, n, dtype=X.dtype, device=X.device)
    stream = [torch.empty(min(B, n), r, m, dtype=X.dtype, device=X.device) for r, m in widths] if S < n else []
    for I0 in range(0, n, S):
        I1 = min(n, I0 + S)
        s = I1 - I0
        GI = [torch.empty(s, r, m, dtype=X.dtype, device=X.device) for r, m in widths]
        for i0 in range(I0, I1, B):
            b = min(B, I1 - i0)
            factors_into([G[i0 - I0:] for G in GI], i0, b)
        flat = [G.reshape(s, -1) for G in GI]
        diag = gram(flat[0])
        for A in flat[1:]:
            diag += gram(A)
        F[I0:I1, I0:I1] = diag
        del diag
        for j0 in range(I1, n, B):  # recomputed rows (only when the factors do not all fit)
            b = min(B, n - j0)
            factors_into(stream, j0, b)
            blk = sum(Gj[:b].reshape(b, -1) @ A.T for Gj, A in zip(stream, flat))
            F[j0:j0 + b, I0:I1] = blk
            F[I0:I1, j0:j0 + b] = blk.T
        del GI, flat
    F /= T
    return F
