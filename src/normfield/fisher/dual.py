"""The empirical Fisher engine: the reversed FIM ``F* = RᵀR`` (CT × CT).

Karakida et al. 2019 (eq. (8), (S.1)–(S.3)) define the empirical FIM
``F = Σ_k (1/T) Σ_t ∇θ f_k(t) ∇θ f_k(t)ᵀ = R Rᵀ`` with the P × CT matrix
``R = [∇θ f_1 ... ∇θ f_C]/√T`` (column ``(k, t)`` at index ``k·T + t``).  The
reversed FIM ``F* = RᵀR`` has the same non-zero eigenvalues; we never form the
P × P matrix.

Two routes build ``F*`` exactly:

* **fast** (``none``, ``last-mean``, ``last-bn``): from forward inputs ``H_{l-1}``
  (T × M_{l-1}) and per-output backward signals ``Δ_l`` (CT × M_l,
  ``Δ_l[(k,t), i] = ∂u^L_k(t)/∂u^l_i(t)``, eq. (4)),

      F*_{un} = (1/T) Σ_l (Δ_l Δ_lᵀ) ⊙ (1_{C×C} ⊗ (H_{l-1} H_{l-1}ᵀ + 1)),

  (the ``+1`` is the bias gradient; (S.8)–(S.9)), then the output projections:
  mean subtraction ``(I_C ⊗ G) F* (I_C ⊗ G)`` with ``G = I − 11ᵀ/T`` (S.18)–(S.20);
  batch norm ``D Π F* Π D`` with ``Π_k = G − n_k n_kᵀ``, ``n_k = ū_k/(√T σ_k)``,
  ``D = diag(1/σ_k)`` — the symmetric form of ``Q F*_{L,mBN}`` of (S.46)–(S.48),
  which has the same non-zero eigenvalues because ``Q(k,k) = Π_k/σ_k²`` restricted
  to the centred subspace is a scaled projector.  Cost ``O(L M² T + L M T² C²)``.
* **general** (every placement; the only one for ``middle-bn`` and ``layer``):
  full-batch vector–Jacobian products with :mod:`torch.func`.  The whole batch
  goes through the network at once, so the coupling of samples through batch
  statistics ((S.56)–(S.60)) is differentiated exactly.  For every output
  ``n = (k, t)`` we obtain ``D^n_l = ∂f_n/∂U^l`` (T × M_l, all samples) and use
  ``∂f_n/∂W^l = D^nᵀ H_{l-1}``, ``∂f_n/∂b^l = D^nᵀ 1``, so

      F*_{nm} = (1/T) Σ_l Σ_{ab} (D^n_l D^mᵀ_l)_{ab} (H_{l-1}H_{l-1}ᵀ + 1)_{ab}
              = (1/T) Σ_l ⟨Rᵀ_l D^n_l, Rᵀ_l D^m_l⟩_F,   H_{l-1}H_{l-1}ᵀ + 1 = R_l R_lᵀ,

  with ``R_l`` of ``r = min(T, M_{l-1}+1)`` columns, so ``F*`` is one syrk-like product of the stored
  per-output factors per layer.  Cost ``O(CT · L T M²)`` flops (one full-batch backward pass per
  output: with samples coupled, ``D^n_l`` is dense over all T samples); the fast route's is
  ``O(L M² T + L M T² C²)``, so the general/fast ratio grows like ``C·T``.

Both are tested against a brute-force autograd Jacobian of the full-batch output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from normfield.core.linalg import top_eigenpairs
from normfield.core.validation import check_choice, check_finite_array, check_int, check_memory
from normfield.errors import NormfieldError
from normfield.fisher.products import factor_product, gram, sample_factor
from normfield.fisher.networks import MLPConfig, Params, _forward, check_params, init_mlp, sample_inputs

__all__ = ["FisherResult", "fisher_dual", "fisher_dual_variants", "fisher_spectrum", "config_cell", "dual_memory_bytes", "FAST_NORMS"]

#: The matrix-free route refuses when its exact trace would cost more than this (hours on a CPU).
MATRIX_FREE_MAX_FLOPS = 5e13

#: Placements the fast route handles.
FAST_NORMS = ("none", "last-mean", "last-bn")

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


# -- helpers -----------------------------------------------------------------------------

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
    elif config.norm in SEPARABLE_NORMS:  # per-sample Jacobians, F̃, N and N F̃ Nᵀ (_dual_separable)
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


# -- fast route --------------------------------------------------------------------------

def _dual_fast(params: Params, X: torch.Tensor, config: MLPConfig) -> tuple[torch.Tensor, pd.DataFrame, torch.Tensor]:
    """Un-normalized ``F*`` (CT × CT), measured order parameters, and ``u^L`` (T × C)."""
    act = config.act
    T = X.shape[0]
    C = config.outputs
    L = len(params)
    n = C * T
    with torch.no_grad():
        inputs = [X]
        dphi = []
        h = X
        for l, (W, b) in enumerate(params, start=1):
            u = h @ W.T + b
            if l < L:
                dphi.append(act.derivative(u))
                h = act(u)
                inputs.append(h)
                del u
        uL = u
        F = torch.zeros(n, n, dtype=X.dtype, device=X.device)
        F4 = F.view(C, T, C, T)
        rows = []
        # layer L: Δ_L[(k,t), i] = δ_ki (the output is linear in u^L)
        A = gram(inputs[L - 1])
        qhat = (A.diagonal().mean().item(), _offdiag_mean(A)) if T > 1 else (A.diagonal().mean().item(), float("nan"))
        A += 1.0
        for k in range(C):
            F4[k, :, k, :] += A
        rows.append({"layer": L, "qhat_t": qhat[0] / inputs[L - 1].shape[1],
                     "qhat_st": qhat[1] / inputs[L - 1].shape[1],
                     "qtilde_t": 1.0, "qtilde_st": 1.0, "qtilde_st_01": 1.0})
        del A
        inputs[L - 1] = None  # type: ignore[call-overload]
        if L > 1:
            WL = params[L - 1][0]  # (C, M_{L-1})
            Delta = dphi[L - 2].unsqueeze(0) * WL.unsqueeze(1)  # (C, T, M_{L-1})
            for l in range(L - 1, 0, -1):
                Dm = Delta.reshape(n, -1)
                DD = gram(Dm)
                A = gram(inputs[l - 1])
                m_in = inputs[l - 1].shape[1]
                q00 = DD[:T, :T]
                rows.append({
                    "layer": l,
                    "qhat_t": A.diagonal().mean().item() / m_in,
                    "qhat_st": _offdiag_mean(A) / m_in if T > 1 else float("nan"),
                    "qtilde_t": q00.diagonal().mean().item(),
                    "qtilde_st": _offdiag_mean(q00) if T > 1 else float("nan"),
                    "qtilde_st_01": q00[0, 1].item() if T > 1 else float("nan"),
                })
                A += 1.0
                DD.view(C, T, C, T).mul_(A.view(1, T, 1, T))
                F4 += DD.view(C, T, C, T)
                del DD, A
                inputs[l - 1] = None  # type: ignore[call-overload]
                if l > 1:
                    Delta = (Delta @ params[l - 1][0]) * dphi[l - 2].unsqueeze(0)
            del Delta
        F /= T
    order = pd.DataFrame(rows).sort_values("layer").reset_index(drop=True)
    return F, order, uL


def _offdiag_mean(A: torch.Tensor) -> float:
    T = A.shape[0]
    return ((A.sum() - A.diagonal().sum()) / (T * (T - 1))).item()


def _project_last(F: torch.Tensor, uL: torch.Tensor, norm: str) -> tuple[torch.Tensor, dict[str, Any]]:
    """Apply the output normalization to an un-normalized ``F*`` in place.

    ``last-mean``: ``(I_C ⊗ G) F* (I_C ⊗ G)`` ((S.20)).  ``last-bn``: ``D Π F* Π D`` (see module doc;
    (S.43)–(S.48)).  Returns the projected matrix and the output statistics.
    """
    T, C = uL.shape
    stats: dict[str, Any] = {}
    if norm == "none":
        return F, stats
    F4 = F.view(C, T, C, T)
    F4 -= F4.mean(dim=1, keepdim=True)
    F4 -= F4.mean(dim=3, keepdim=True)
    if norm == "last-bn":
        ubar = uL - uL.mean(dim=0, keepdim=True)
        sigma = torch.sqrt((ubar * ubar).mean(dim=0))  # (C,)
        nvec = (ubar / (math.sqrt(T) * sigma)).T  # (C, T), unit columns
        # (I - n_k n_kᵀ) X (I - n_k' n_k'ᵀ) block by block, vectorised over k, k'
        left = torch.einsum("kt,ktjs->kjs", nvec, F4)  # n_kᵀ X_{kk'}: (C, C, T)
        F4 -= nvec.view(C, T, 1, 1) * left.view(C, 1, C, T)
        right = torch.einsum("ktjs,js->ktj", F4, nvec)  # X_{kk'} n_k': (C, T, C)
        F4 -= right.view(C, T, C, 1) * nvec.view(1, 1, C, T)
        s = 1.0 / sigma
        F4 *= s.view(C, 1, 1, 1) * s.view(1, 1, C, 1)
        stats["sigma"] = sigma.detach().cpu().numpy().astype(np.float64)
    return 0.5 * (F + F.T), stats


# -- general route -----------------------------------------------------------------------

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


#: Placements whose hidden layers treat every sample separately: the samples meet only in the
#: output normalization (eq. 13, 15) or nowhere (``none``; ``layer``, eq. 24, normalizes each sample
#: over its neurons).  The general route differentiates these per sample and then applies the exact
#: Jacobian of the output map (:func:`_dual_separable`); ``middle-bn`` (eq. 20) couples the samples
#: inside the network and takes the full-batch route (:func:`_dual_general`).
SEPARABLE_NORMS = ("none", "last-mean", "last-bn", "layer")

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
    from dataclasses import replace

    from torch.func import jacrev, vmap

    from normfield.fisher.networks import _batch_norm

    norm = config.norm
    if norm not in SEPARABLE_NORMS:
        raise NormfieldError(f"norm={norm} couples samples inside the network; use the full-batch route",
                             argument="norm")
    T = X.shape[0]
    C = config.outputs
    n = C * T
    sizes = config.layer_sizes
    inner = replace(config, norm="layer" if norm == "layer" else "none")

    def g(x: torch.Tensor, *es: torch.Tensor) -> torch.Tensor:
        return _forward(params, x[None], inner, perturb=[e[None] for e in es])[0]  # (C,)

    zeros = [torch.zeros(m, dtype=X.dtype, device=X.device) for m in sizes[1:]]
    jac = vmap(jacrev(g, argnums=tuple(range(1, len(zeros) + 1))), in_dims=(0,) + (None,) * len(zeros))
    cache: dict = {}
    with torch.no_grad():
        _forward(params, X, inner, cache=cache)
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
    if norm in ("last-mean", "last-bn"):
        def out_map(v: torch.Tensor) -> torch.Tensor:
            u = v.reshape(C, T).T
            u = u - u.mean(dim=0, keepdim=True) if norm == "last-mean" else _batch_norm(u)
            return u.T.reshape(-1)

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


# -- matrix-free route ---------------------------------------------------------------------

def _matrix_free(params: Params, X: torch.Tensor, config: MLPConfig, *, k: int, seed: int,
                 chunk: int | None, vectors: bool) -> tuple[float, np.ndarray, np.ndarray | None, dict]:
    """λ's of ``F*`` by Lanczos on ``v ↦ J(Jᵀv)/T`` (one VJP + one JVP of the full
    batch per product) and the exact trace ``Σ_n ‖∇θ f_n‖²/T`` from chunked VJPs; memory
    O(P + L·T·M + chunk·(T·M + M²)), never O((CT)²)."""
    from torch.func import jvp, vjp, vmap

    T = X.shape[0]
    n = config.outputs * T
    flat = tuple(p for Wb in params for p in Wb)

    def f(*ps: torch.Tensor) -> torch.Tensor:
        pr = [(ps[2 * i], ps[2 * i + 1]) for i in range(len(ps) // 2)]
        return _forward(pr, X, config).T.reshape(-1)

    _, vjp_fn = vjp(f, *flat)

    def matvec(v: np.ndarray) -> np.ndarray:
        vt = torch.as_tensor(np.ascontiguousarray(v), dtype=X.dtype, device=X.device)
        _, out = jvp(f, flat, vjp_fn(vt))
        return (out / T).detach().cpu().double().numpy()

    res = top_eigenpairs(matvec, n, min(k, n), seed=seed, vectors=vectors, tol=1e-10)
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
    return trace / T, res.eigenvalues, res.eigenvectors, {"matvecs": res.matvecs}


# -- spectrum ----------------------------------------------------------------------------

def _spectrum(Fn: np.ndarray, k: int, eig: str, seed: int, vectors: bool = True) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Top-``k`` eigenpairs of the symmetric PSD ``Fn``, largest first.

    Dense: ``torch.linalg.eigh``/``eigvalsh`` (LAPACK through torch's thread pool).  Lanczos:
    ARPACK through :func:`normfield.core.linalg.top_eigenpairs` with torch matrix-vector products.
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


def _layer_output_stats(uL: torch.Tensor) -> dict[str, Any]:
    """η1, η2, η3 of Karakida et al. Appendix E.2.2 from the last layer's LN statistics.

    σ(t)² = Σ_k ū_k(t)²/C with ū = u^L − mean_k u^L; η1 = mean_t σ⁻², η2 = mean_t σ⁻⁴,
    η3² = (1/T²) Σ_{t,t'} g(t,t')²/(σ(t)²σ(t')²), g(t,t') = Σ_a ū_a(t)ū_a(t')/(C σ(t)σ(t')).
    """
    ubar = uL - uL.mean(dim=1, keepdim=True)
    C = uL.shape[1]
    s2 = (ubar * ubar).mean(dim=1)  # (T,)
    nrm = ubar / torch.sqrt(s2).unsqueeze(1)
    g = (nrm @ nrm.T) / C
    w = 1.0 / s2
    eta3sq = ((g * g) * w.view(-1, 1) * w.view(1, -1)).mean()
    return {"eta1": float(w.mean()), "eta2": float((w * w).mean()), "eta3": float(torch.sqrt(eta3sq))}


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
    norm = config.norm
    if route == "auto":
        route = "fast" if norm in FAST_NORMS else "general"
    if route == "fast" and norm not in FAST_NORMS:
        raise NormfieldError(
            f"route='fast' handles norm in {', '.join(FAST_NORMS)} only; norm={norm} couples samples "
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
        F, stats = _project_last(F, uL, norm)
    else:
        F = (_dual_separable(params, X, config) if norm in SEPARABLE_NORMS
             else _dual_general(params, X, config, chunk=chunk))
        order = None
        stats = {}
        with torch.no_grad():
            cache: dict = {}
            out = _forward(params, X, config, cache=cache)
            uL = cache["uL"]
            if norm == "last-bn":
                ub = uL - uL.mean(0, keepdim=True)
                stats["sigma"] = torch.sqrt((ub * ub).mean(0)).cpu().numpy().astype(np.float64)
            if norm == "layer":
                stats.update(_layer_output_stats(uL))
    return _finish(F, order, stats, config, route, k=k, eig=eig, vectors=vectors, keep_dual=keep_dual, seed=seed)


def _fisher_matrix_free(params: Params, X: torch.Tensor, config: MLPConfig, *, k: int, vectors: bool, seed: int,
                        chunk: int | None) -> FisherResult:
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
    stats: dict[str, Any] = {}
    with torch.no_grad():
        cache: dict = {}
        _forward(params, X, config, cache=cache)
        uL = cache["uL"]
        if config.norm == "last-bn":
            ub = uL - uL.mean(0, keepdim=True)
            stats["sigma"] = torch.sqrt((ub * ub).mean(0)).cpu().numpy().astype(np.float64)
        if config.norm == "layer":
            stats.update(_layer_output_stats(uL))
    stats["matvecs"] = info["matvecs"]
    return FisherResult(
        lambda_max=float(max(evals[0], 0.0)), m_lambda=trace / config.parameters, parameters=config.parameters,
        trace=trace, eigenvalues=np.asarray(evals, dtype=np.float64), eigenvectors=evecs if vectors else None,
        dual=None, route="matrix-free", eig_method="lanczos", top_cosine=None, order_parameters=None,
        output_stats=stats, config=config)


def _finish(F: torch.Tensor, order: pd.DataFrame | None, stats: dict, config: MLPConfig, route: str, *,
            k: int, eig: str, vectors: bool, keep_dual: bool, seed: int) -> FisherResult:
    T = F.shape[0] // config.outputs
    C = config.outputs
    norm = config.norm
    Fn = F.detach().to(device="cpu", dtype=torch.float64).numpy()
    Fn = 0.5 * (Fn + Fn.T)
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
    if vectors and evecs is not None and norm in ("none", "middle-bn"):
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
    base = config.replace(norm="none")
    check_params(params, X, base)
    T = X.shape[0]
    if T < 2 and any(nm != "none" for nm in norms):
        raise NormfieldError("X must hold >= 2 samples for last-mean/last-bn", argument="X")
    n = config.outputs * T
    check_memory("fisher_dual", dual_memory_bytes(base, T, "fast", X.element_size()) + 8 * n * n,
                 hint=f"the dual F* is {n}×{n}; use fewer samples T or outputs C")
    F0, order, uL = _dual_fast(params, X, base)
    out = {}
    for i, nm in enumerate(norms):
        F = F0 if i == len(norms) - 1 else F0.clone()
        F, stats = _project_last(F, uL, nm)
        out[nm] = _finish(F, order, stats, config.replace(norm=nm), "fast", k=k, eig=eig, vectors=vectors,
                          keep_dual=keep_dual, seed=seed)
    return out


_CONFIG_FIELDS = ("activation", "sw2", "sb2", "depth", "width", "alphas", "outputs", "samples", "norm")


def config_cell(config: MLPConfig) -> dict[str, Any]:
    """The settings of ``config`` as flat JSON-able sweep-cell entries."""
    act = config.activation
    if not isinstance(act, str):
        a = config.act
        if a.name.startswith("custom"):
            raise NormfieldError("sweeps need a named activation (custom callables do not pickle by name)",
                                 argument="activation")
        act = a.name if not a.params else f"{a.name}:{a.params.get('slope')}"
    return {"activation": act, "sw2": config.sw2, "sb2": config.sb2, "depth": config.depth,
            "width": config.width, "alphas": list(config.alphas), "outputs": config.outputs,  # type: ignore[arg-type]
            "samples": config.samples, "norm": config.norm}


def _spectrum_cell(cell: dict) -> list[dict]:
    """Sweep cell: one random network + inputs → one row of spectrum statistics."""
    cfg = MLPConfig(**{f: cell[f] for f in _CONFIG_FIELDS})
    dtype = getattr(torch, cell.get("dtype", "float64"))
    device = cell.get("device", "cpu")
    g = torch.Generator().manual_seed(int(cell["seed"]))
    params = init_mlp(cfg, g, dtype, device)
    X = sample_inputs(cfg, g, dtype, device)
    res = fisher_dual(params, X, cfg, route=cell.get("route", "auto"), k=int(cell.get("k", 1)),
                      keep_dual=False, vectors=bool(cell.get("vectors", False)), seed=int(cell["seed"]))
    row = {"lambda_max": res.lambda_max, "m_lambda": res.m_lambda, "parameters": res.parameters,
           "trace": res.trace, "route": res.route, "top_cosine": res.top_cosine}
    for key, v in res.output_stats.items():
        if isinstance(v, np.ndarray):
            row["Q1"] = float(np.sum(v ** -2.0))
            row["Q2"] = float(np.sum(v ** -4.0))
        else:
            row[key] = v
    if res.order_parameters is not None:
        op = res.order_parameters
        for _, r in op.iterrows():
            l = int(r["layer"])
            row[f"qtilde_st_01_l{l}"] = float(r["qtilde_st_01"])
            row[f"qtilde_st_l{l}"] = float(r["qtilde_st"])
    return [row]


def fisher_spectrum(
    config: MLPConfig,
    *,
    seeds: int = 1,
    seed: int = 0,
    dtype: str = "float64",
    device: str = "cpu",
    route: str = "auto",
    vectors: bool = False,
    progress: bool = False,
) -> pd.DataFrame:
    """λ_max, m_λ (and output statistics) over ``seeds`` independent networks and input batches.

    Seed ``seed + i`` draws network ``i`` and then its inputs from one generator.

    Returns:
        Tidy DataFrame, one row per seed: ``seed, lambda_max, m_lambda, parameters, trace, route,
        top_cosine`` (+ ``Q1, Q2`` for last-bn, ``eta1..3`` for layer, measured ``qtilde`` columns
        on the fast route) and the config columns.
    """
    from normfield.runner import run_sweep

    seeds = check_int("seeds", seeds, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    check_choice("dtype", dtype, ["float64", "float32"])
    check_choice("route", route, ["auto", "fast", "general", "matrix-free"])
    # refuse before any allocation (weights, inputs, the CT×CT dual)
    item = 8 if dtype == "float64" else 4
    check_memory("init_mlp", 2.0 * item * config.parameters,
                 hint=f"the network has {config.parameters:,} parameters; use a smaller width")
    n = config.outputs * config.samples
    if route != "matrix-free":
        r = route if route != "auto" else ("fast" if config.norm in FAST_NORMS else "general")
        check_memory("fisher_dual", dual_memory_bytes(config, route=r, itemsize=item),
                     hint=f"the dual F* is {n}×{n}; use route='matrix-free' (--route matrix-free: Lanczos "
                     "without storing F*) or fewer samples T / outputs C")
    cells = [{**config_cell(config), "seed": seed + i, "dtype": dtype, "route": route, "vectors": vectors}
             for i in range(seeds)]
    df = run_sweep(_spectrum_cell, cells, name="fisher-spectrum", progress=progress, device=device)
    return df
