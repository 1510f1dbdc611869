"""The fast route to the reversed FIM: hand-derived backward signals (Karakida et al. 2019).

From forward inputs ``H_{l-1}`` (T × M_{l-1}) and per-output backward signals ``Δ_l``
(CT × M_l, ``Δ_l[(k,t), i] = ∂u^L_k(t)/∂u^l_i(t)``, eq. (4)),

    F*_{un} = (1/T) Σ_l (Δ_l Δ_lᵀ) ⊙ (1_{C×C} ⊗ (H_{l-1} H_{l-1}ᵀ + 1)),

(the ``+1`` is the bias gradient; (S.8)–(S.9)).  The output placements that have a projection
of this un-normalized dual (:attr:`Placement.fast <normfield.fisher.placements.Placement.fast>`:
``none``, ``last-mean``, ``last-bn``) then apply it (:meth:`Placement.project`).  Cost
``O(L M² T + L M T² C²)``.  Every Gram product is :func:`~normfield.fisher.products.gram`
(exactly symmetric), so ``F*_{un}`` is exactly symmetric.
"""

from __future__ import annotations

import pandas as pd
import torch

from normfield.fisher.networks import MLPConfig, Params
from normfield.fisher.products import gram

__all__ = ["_dual_fast"]


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
