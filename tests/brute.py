"""Brute-force curvature of small models, formed explicitly: the independent route the analysis is
checked against (``tests/test_analyze_curvature.py``, ``_inputs.py``, ``_loader.py``)."""

from __future__ import annotations

import numpy as np
import torch


def explicit_jacobian(model, args, kwargs=None):
    """(out at θ, J of shape (out.numel(), P)) by torch.autograd.functional.jacobian, train-mode BN over
    the batch, on copies of the buffers (the model's running statistics are not touched)."""
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone() for p in model.parameters())
    bufs = {n: b.detach().clone() for n, b in model.named_buffers()}

    def f(*ps):
        return torch.func.functional_call(model, {**{n: b.clone() for n, b in bufs.items()}, **dict(zip(names, ps))},
                                          args, kwargs or {})

    out = f(*params).detach()
    Js = torch.autograd.functional.jacobian(f, params)
    return out, torch.cat([j.reshape(out.numel(), -1) for j in Js], dim=1)


def explicit_fisher(out, J, loss: str) -> np.ndarray:
    """The Fisher formed explicitly (P × P): ``"mse"``: JᵀJ/T (Karakida et al. 2019, eq. (8));
    ``"cross-entropy"``: (1/(T·S)) Σ_{t,s} J_tsᵀ (diag p − p pᵀ) J_ts with p the softmax over the LAST
    axis of the output (S positions between batch and classes)."""
    if loss == "mse":
        return (J.T @ J).numpy() / out.shape[0]
    C = out.shape[-1]
    rows = out.reshape(-1, C)
    p = torch.softmax(rows, -1)
    Lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    Jr = J.reshape(rows.shape[0], C, -1)
    return (torch.einsum("rcp,rcd,rdq->pq", Jr, Lam, Jr) / rows.shape[0]).numpy()
