"""Which curvature: the loss a model is trained with, and the matrix :func:`normfield.analyze` measures.

Names (``res.curvature``, JSON key ``curvature``):

=========================  ==========================================================================
``fisher-mse``             F = (1/T) Σ_t J_tᵀ J_t = JᵀJ/T, the Fisher of a unit-variance Gaussian
                           likelihood summed over the C outputs (Karakida, Akaho & Amari 2019,
                           eq. (8)); also the Gauss–Newton matrix of L = (1/2T) Σ_t ‖f_t − y_t‖².
                           Dual: F* = JJᵀ/T (T·C × T·C). The default, ``loss="mse"``.
``fisher-cross-entropy``   F = (1/(T·S)) Σ_{t,s} J_tsᵀ (diag p_ts − p_ts p_tsᵀ) J_ts, the Fisher of
                           the categorical likelihood = the generalised Gauss–Newton matrix of the
                           mean softmax cross-entropy (Martens 2020, JMLR 21, §9.2); p_ts is the
                           softmax over the C classes (the last axis of the output) at position s
                           of sample t (S positions: the axes between batch and classes, 1 for a
                           classifier). No labels enter. Dual: B J Jᵀ Bᵀ/(T·S) with the fixed
                           per-row factor B of :class:`normfield.analyze._functional.Whiten`.
                           ``loss="cross-entropy"``.
``hessian-cross-entropy``  ∇²_θ L of L = mean over samples and positions of the cross-entropy of
                           integer ``targets`` (shape (T, *positions)).
``hessian-mse``            ∇²_θ L of L = (1/2T) Σ_t ‖f_t − y_t‖² with float ``targets`` of the
                           output's shape: its Gauss–Newton part is exactly ``fisher-mse``.
=========================  ==========================================================================

``loss="hessian"`` picks ``hessian-cross-entropy`` for integer targets and ``hessian-mse`` for
float ones. Both losses are normalised so that the Hessian's Gauss–Newton part equals the Fisher of
the same name (the Hessian is the Fisher plus the residual term Σ (∂L/∂f)·∇²f).
"""

from __future__ import annotations

import torch

from normfield.errors import NormfieldError

__all__ = ["LOSSES", "CURVATURES", "curvature_name", "is_hessian", "cross_entropy_shape", "hessian_loss"]

#: Accepted ``loss=`` values.
LOSSES = ("mse", "cross-entropy", "hessian", "hessian-mse", "hessian-cross-entropy")
#: Curvature names, with a one-line description each (used in tables).
CURVATURES = {
    "fisher-mse": "Fisher of the squared loss, F = J^T J / T (Karakida et al. 2019)",
    "fisher-cross-entropy": "Fisher of softmax cross-entropy = its GGN, F = J^T (diag p - p p^T) J / (T S)",
    "hessian-mse": "Hessian of the squared loss sum_t |f_t - y_t|^2 / (2T)",
    "hessian-cross-entropy": "Hessian of the mean softmax cross-entropy",
}


def is_hessian(loss: str) -> bool:
    """True for the ``hessian*`` losses."""
    return loss.startswith("hessian")


def curvature_name(loss: str, targets: torch.Tensor | None = None) -> str:
    """The curvature name of ``loss=`` (see the module docstring); ``targets`` decides ``"hessian"``."""
    if loss not in LOSSES:
        raise NormfieldError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}", argument="loss")
    if loss == "mse":
        return "fisher-mse"
    if loss == "cross-entropy":
        return "fisher-cross-entropy"
    if loss == "hessian":
        if targets is None:
            raise NormfieldError("loss='hessian' needs targets=: integer class labels (cross-entropy) or float "
                                 "regression targets (squared loss)", argument="targets")
        return "hessian-mse" if targets.is_floating_point() else "hessian-cross-entropy"
    return loss


def cross_entropy_shape(logits: torch.Tensor, *, selects_columns: bool = False) -> tuple[int, int, int]:
    """(T, S, C) of a cross-entropy output: T samples, S positions (the middle axes), C classes (last axis).

    Raises:
        NormfieldError: one class (the softmax of a single logit is constant), or column selection
            on an output with positions.
    """
    T, C = int(logits.shape[0]), int(logits.shape[-1]) if logits.dim() >= 2 else 1
    if selects_columns:
        if logits.dim() > 2:
            raise NormfieldError("outputs: a column selection with loss='cross-entropy' needs a (T, C) output; "
                                 "pick the logits with outputs=lambda out: ... instead", argument="outputs")
        return T, 1, C
    S = int(logits[0].numel()) // max(C, 1)
    if logits.dim() < 2 or C < 2:
        raise NormfieldError(
            f"loss: cross-entropy needs at least 2 classes on the last axis of the output, got shape "
            f"{tuple(logits.shape)}; a one-column output has a constant softmax (its Fisher is zero): use "
            "loss='mse', or a two-class output", argument="loss")
    return T, S, C


def hessian_loss(curvature: str, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The scalar loss whose Hessian ``hessian-*`` measures (see the module docstring).

    Args:
        curvature: ``"hessian-mse"`` or ``"hessian-cross-entropy"``.
        out: the picked output, shape (T, ..., C) (cross-entropy: the class axis last).
        targets: (T, ...) integer labels (cross-entropy), or floats of ``out``'s shape (or its (T, C)
            flattening) for the squared loss.
    """
    T = int(out.shape[0])
    if curvature == "hessian-cross-entropy":
        C = int(out.shape[-1])
        if tuple(targets.shape) != tuple(out.shape[:-1]):
            raise NormfieldError(f"targets: integer labels must have shape {tuple(out.shape[:-1])} (the output "
                                 f"{tuple(out.shape)} without its class axis), got {tuple(targets.shape)}",
                                 argument="targets")
        return torch.nn.functional.cross_entropy(out.reshape(-1, C), targets.reshape(-1).long(), ignore_index=-(2**62))
    if targets.numel() != out.numel():
        raise NormfieldError(f"targets: float targets must have the output's {out.numel() // T} values per sample, "
                             f"got shape {tuple(targets.shape)}", argument="targets")
    return 0.5 * (out.reshape(T, -1) - targets.reshape(T, -1).to(out.dtype)).pow(2).sum() / T
