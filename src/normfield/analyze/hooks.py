"""Per-layer batch Gram diagnostics of any module, by forward hooks.

For a hooked layer with output H of shape (n, ...) flattened to (n, d), the
batch Gram matrix is (Joudaki et al. 2023, eq. (2), with samples as rows)

    G = H Hᵀ / d                                                    (n × n).

For an activation σ applied directly to the output of a batch-norm layer at
its initial affine (γ = 1, β = 0), the mean-field theory predicts that G is
close to the batch-norm fixed point G*(σ, n) of Joudaki et al. 2023, eq. (10)
(the Gram of σ(BN(h)), whose chain G_{l+1} = E[σ(BN h) σ(BN h)ᵀ] converges to
it; Theorem 1 bounds ‖G_l − G*‖_F). For ``BatchNorm1d`` on (n, d) inputs the
standardisation is per feature as in the paper; for convolutional batch norm
it is per channel over samples and positions, so the comparison is only
approximate (flagged in the ``fixed_point`` column).

Rank collapse (Joudaki et al. 2023, §1: without normalization G_l tends to a
rank-one matrix) is measured by the top fraction λ_1(G)/tr(G) (1 = rank one,
1/n = isotropic) and the effective rank exp(H(λ/Σλ)) (Roy & Vetterli 2007).
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from normfield.core.gram_summary import gram_diagnostics  # re-exported: nf.gram_diagnostics
from normfield.core.torch_layers import DEFAULT_LAYER_TYPES, activation_name_of  # re-exported
from normfield.errors import NormfieldError

__all__ = ["DEFAULT_LAYER_TYPES", "gram_diagnostics", "activation_name_of", "select_layers", "layer_gram_rows"]

def select_layers(model: nn.Module, layers: Any) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs to hook.

    Args:
        layers: ``"auto"`` (:data:`DEFAULT_LAYER_TYPES`), ``None``/``"none"``
            (no layer), a tuple of module types, or a list of names / glob
            patterns of ``model.named_modules()``.
    """
    named = [(n, m) for n, m in model.named_modules() if n]
    if layers is None or (isinstance(layers, str) and layers == "none"):
        return []
    if isinstance(layers, str) and layers == "auto":
        return [(n, m) for n, m in named if isinstance(m, DEFAULT_LAYER_TYPES)]
    if isinstance(layers, type):
        layers = (layers,)
    if isinstance(layers, tuple) and all(isinstance(t, type) for t in layers):
        return [(n, m) for n, m in named if isinstance(m, layers)]
    if isinstance(layers, str):
        layers = [layers]
    out = []
    for pat in layers:
        if not isinstance(pat, str):
            raise NormfieldError(f"layers must be 'auto', 'none', module types or names; got {pat!r}",
                                 argument="layers")
        hits = [(n, m) for n, m in named if n == pat or fnmatch.fnmatchcase(n, pat)]
        if not hits:
            raise NormfieldError(
                f"layers: {pat!r} matches no sub-module; known: {', '.join(n for n, _ in named[:20])}"
                + (" ..." if len(named) > 20 else ""), argument="layers")
        out.extend(h for h in hits if h not in out)
    return out


def _fixed_point_matrix(activation: str, n: int) -> np.ndarray | None:
    from normfield.gram.fixed_point import fixed_point  # G* of Joudaki et al. 2023, eq. (10)

    return np.asarray(fixed_point(activation, n).matrix, dtype=np.float64)


def layer_gram_rows(
    model: nn.Module,
    run_forward,
    layers: Any = "auto",
    *,
    collapse_threshold: float = 0.9,
    keep_grams: bool = True,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Run one forward pass with hooks and summarise every hooked layer's Gram.

    Args:
        model: the module whose sub-modules are hooked (hooks removed afterwards).
        run_forward: zero-argument callable running the model on the batch
            (already guarded so no state changes).
        layers: see :func:`select_layers`.

    Returns:
        (tidy DataFrame, one row per hooked call, in execution order, with
        columns ``layer`` (module name, ``name#i`` for its i-th re-use), ``module, type, call,
        batch, features`` + :func:`gram_diagnostics` +
        ``fixed_point`` (activation name or ``""``), ``fixed_point_exact``
        (per-feature batch norm), ``dist_fixed_point`` (‖G − G*‖_F/‖G*‖_F);
        and the Gram matrices keyed by ``layer``).
    """
    chosen = select_layers(model, layers)
    rows: list[dict[str, Any]] = []
    grams: dict[str, np.ndarray] = {}
    bn_out: dict[int, tuple[nn.Module, torch.Tensor]] = {}
    calls: dict[str, int] = {}
    gstar_cache: dict[tuple[str, int], np.ndarray | None] = {}
    handles = []

    def watch_bn(mod, inp, out):
        if isinstance(out, torch.Tensor):
            bn_out[id(out)] = (mod, out)

    def make_hook(name: str):
        def hook(mod, inp, out):
            if not isinstance(out, torch.Tensor) or out.dim() < 1 or out.shape[0] < 1:
                return
            c = calls.get(name, 0)
            calls[name] = c + 1
            H = out.detach().reshape(out.shape[0], -1).double()
            n, d = H.shape
            G = (H @ H.T / d).cpu().numpy()
            key = name if c == 0 else f"{name}#{c}"
            row: dict[str, Any] = {"layer": key, "module": name, "type": type(mod).__name__, "call": c, "features": d,
                                   "batch": n}
            row.update(gram_diagnostics(G, collapse_threshold=collapse_threshold))
            row.update({"fixed_point": "", "fixed_point_exact": False, "dist_fixed_point": math.nan})
            act = activation_name_of(mod)
            x = inp[0] if inp else None
            src = bn_out.get(id(x)) if isinstance(x, torch.Tensor) else None
            if act is not None and src is not None and src[1] is x and n >= 2:
                bn = src[0]
                identity_affine = (not bn.affine) or (
                    bool(torch.all(bn.weight == 1)) and bool(torch.all(bn.bias == 0)))
                batch_stats = bn.training or bn.running_mean is None
                if identity_affine and batch_stats:
                    gkey = (act, n)
                    if gkey not in gstar_cache:
                        gstar_cache[gkey] = _fixed_point_matrix(act, n)
                    Gs = gstar_cache[gkey]
                    if Gs is not None:
                        row["fixed_point"] = act
                        row["fixed_point_exact"] = isinstance(bn, nn.BatchNorm1d) and x.dim() == 2
                        row["dist_fixed_point"] = float(np.linalg.norm(G - Gs) / np.linalg.norm(Gs))
            rows.append(row)
            if keep_grams:
                grams[key] = G

        return hook

    try:
        for n, m in model.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                handles.append(m.register_forward_hook(watch_bn))
        for name, m in chosen:
            handles.append(m.register_forward_hook(make_hook(name)))
        with torch.no_grad():
            run_forward()
    finally:
        for h in handles:
            h.remove()
    cols = ["layer", "module", "type", "call", "batch", "features", "mean_diag", "mean_offdiag", "mean_cosine",
            "lambda_max", "lambda_min", "condition_number", "effective_rank", "top_fraction", "collapsed",
            "fixed_point", "fixed_point_exact", "dist_fixed_point"]
    return pd.DataFrame(rows, columns=cols), grams
