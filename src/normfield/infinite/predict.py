"""``nf.predict``: the infinite-width prediction of what ``nf.analyze`` measures on a model.

The model is translated into kernel layers (:mod:`normfield.infinite.translate`) at its own widths,
parametrization and initial variances, and the batch's per-unit law is carried through them
(:func:`normfield.infinite.kernel`). From the output's per-unit NNGP and NTK (T×T):

* the Fisher/NTK dual F* = J Jᵀ/T of the C outputs (Karakida et al. 2019, eq. (8)) is, to leading
  order in width, ``F* ≈ (Θ_f ⊗ I_C)/T`` (distinct output units are independent with the same law,
  so the cross-output blocks vanish and every diagonal block is the per-unit NTK Θ_f; Jacot et al.
  2018, Thm 1, with train-mode batch norm coupling the batch inside each unit). Hence

      λ_max(F*) = λ_max(Θ_f)/T,   tr F* = C·tr(Θ_f)/T,   m_λ = tr F*/P   (Karakida et al. 2019, eq. (10)),

  and the learning-rate bound 2/λ_max (eq. (23)), P being every parameter with ``requires_grad``
  (what ``nf.analyze`` differentiates);
* every layer ``nf.analyze`` hooks gets its predicted batch Gram, the state's uncentred NNGP
  ``E[x xᵀ]``: the infinite-width value of G = H Hᵀ/d (Joudaki et al. 2023, eq. (2)), with the same
  conditioning diagnostics as the measured one.

Numbers are never silent: the kernel's stated error comes with the result, and one above ``tol``
makes ``within_tol`` False with a warning.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from normfield.errors import NormfieldError
from normfield.infinite.translate import Translation, translate

__all__ = ["KernelPrediction", "predict", "leaf_labels"]


@dataclass
class KernelPrediction:
    """The infinite-width prediction for one model on one batch.

    Attributes:
        nngp: (T, T) output NNGP E[f fᵀ] per output unit.
        ntk: (T, T) output per-unit NTK Θ_f in the model's own (standard) parametrization.
        mean: (T,) E[f] per output unit.
        lambda_max: λ_max(F*) = λ_max(Θ_f)/T.
        trace: tr F* = C·tr(Θ_f)/T.
        m_lambda: tr F*/P.
        parameters: P, the parameters with ``requires_grad``.
        samples: T.  outputs: C.
        error: the kernel's stated absolute Frobenius error of nngp and ntk (output layer).
        tol: the tolerance asked for; ``within_tol`` is ``error <= tol·max(1, ‖Θ_f‖_F, ‖K_f‖_F)``.
        grams: predicted batch Gram per hooked layer, keyed like ``nf.analyze``'s ``res.grams``.
        layers: DataFrame, one row per hooked layer: ``layer, module, type, call, batch, features`` and
            :func:`normfield.analyze.hooks.gram_diagnostics` of the predicted Gram, plus ``error``: the
            state's stated error (the larger of its NNGP's and its NTK's, absolute Frobenius).
        flags: what the caller should know (an error above tol, frozen parameters ...).
        translation: the kernel layers the model became.
        seconds: wall time.
    """

    nngp: np.ndarray
    ntk: np.ndarray
    mean: np.ndarray
    lambda_max: float
    trace: float
    m_lambda: float
    parameters: int
    samples: int
    outputs: int
    error: float
    tol: float
    within_tol: bool
    grams: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    layers: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)
    flags: list[str] = field(default_factory=list)
    translation: Translation | None = field(default=None, repr=False)
    seconds: float = 0.0

    @property
    def lr_bound(self) -> float:
        """2/λ_max (Karakida et al. 2019, eq. (23))."""
        return 2.0 / self.lambda_max if self.lambda_max > 0 else math.inf

    @property
    def eigenvalues(self) -> np.ndarray:
        """Eigenvalues of Θ_f/T, largest first (each an eigenvalue of F* with multiplicity C), shape (T,)."""
        return np.linalg.eigvalsh(self.ntk)[::-1] / self.samples

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON-able dict (``normfield predict --json``); NaN -> None, ±inf -> "inf"."""
        from normfield.jsonable import jsonable

        d = {
            "lambda_max": self.lambda_max, "m_lambda": self.m_lambda, "trace": self.trace,
            "lr_bound": self.lr_bound, "parameters": self.parameters, "samples": self.samples,
            "outputs": self.outputs, "eigenvalues": [float(v) for v in self.eigenvalues],
            "error": self.error, "tol": self.tol, "within_tol": bool(self.within_tol), "flags": list(self.flags),
            "nngp": self.nngp.tolist(), "ntk": self.ntk.tolist(),
            "layers": [{k: (None if isinstance(v, float) and math.isnan(v) else
                            (v.item() if isinstance(v, np.generic) else v)) for k, v in r.items()}
                       for r in self.layers.to_dict(orient="records")],
            "kernel_layers": [] if self.translation is None else [
                {"module": lf.name, "type": lf.type, "kernel": type(lf.layer).__name__}
                for lf in self.translation.leaves],
            "seconds": self.seconds,
        }
        return jsonable(d)

    def summary(self) -> str:
        """A short human-readable summary."""
        s = (f"infinite-width prediction over T={self.samples} samples x C={self.outputs} outputs, "
             f"P={self.parameters} parameters\n  lambda_max = {self.lambda_max:.6g}   m_lambda = {self.m_lambda:.6g}"
             f"   lr bound 2/lambda_max = {self.lr_bound:.6g}\n  stated error {self.error:.3g} (tol {self.tol:g})")
        return s + "".join(f"\n  flag: {f}" for f in self.flags)


def leaf_labels(layers: Sequence[Any]) -> dict[int, str]:
    """The label :func:`normfield.infinite.kernel` gives the state after each leaf of ``layers``.

    ``kernel`` composes the list as one ``Serial``: the i-th layer under prefix ``"i."``, a residual's
    shortcut under ``"shortcut."`` and its branch under ``"branch."``, a leaf as ``prefix + label``.

    Returns:
        {id(leaf layer): label}.
    """
    from normfield.infinite import Residual, Serial

    out: dict[int, str] = {}

    def walk(layer: Any, prefix: str) -> None:
        if isinstance(layer, Serial):
            for i, lay in enumerate(layer.layers):
                walk(lay, f"{prefix}{i}.")
        elif isinstance(layer, Residual):
            if layer.shortcut is not None:
                walk(layer.shortcut, f"{prefix}shortcut.")
            walk(layer.branch, f"{prefix}branch.")
        else:
            out[id(layer)] = f"{prefix}{layer.label}"

    for i, lay in enumerate(layers):
        walk(lay, f"{i}.")
    return out


def _as_batch(inputs: Any) -> torch.Tensor:
    if isinstance(inputs, np.ndarray):
        inputs = torch.from_numpy(inputs)
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
        raise NormfieldError("inputs must be a floating-point tensor or NumPy array of shape (T, ...)",
                             argument="inputs")
    if inputs.dim() < 2 or inputs.shape[0] < 1:
        raise NormfieldError(f"inputs must have shape (T, d) or (T, ...) with T >= 1, got {tuple(inputs.shape)}",
                             argument="inputs")
    if not bool(torch.isfinite(inputs).all()):
        bad = int((~torch.isfinite(inputs)).sum())
        raise NormfieldError(f"inputs has {bad} non-finite value(s) (NaN or inf); pass a finite batch",
                             argument="inputs")
    return inputs.detach()


def predict(
    model: nn.Module,
    inputs: torch.Tensor | np.ndarray,
    *,
    init: Any = None,
    tol: float = 1e-3,
    seed: int = 0,
    outputs: Callable[[Any], torch.Tensor] | Sequence[int] | None = None,
) -> KernelPrediction:
    """Infinite-width prediction of ``nf.analyze``'s numbers for ``model`` on ``inputs``.

    Args:
        model: an ``nn.Sequential`` or a ``torch.fx``-traceable module of Linear, BatchNorm1d (train or eval),
            LayerNorm, RMSNorm, activations, Flatten, Identity, Dropout (p=0 or eval) and residual sums.
        inputs: the batch, shape (T, d) (or (T, ...) when the model flattens it first), finite.
        init: the variances of the Linear layers, instead of reading them from the instance:
            ``{"sw2": 2.0, "sb2": 0.0}`` for every Linear, or ``{"0": {"sw2": 2.0}, ...}`` per module name.
            Default: σ_w² = fan_in·mean(W²), σ_b² = mean(b²) of each instance.
        tol: target stated error of the kernel (absolute Frobenius, relative to max(1, ‖Θ_f‖_F, ‖K_f‖_F)).
        seed: seeds the kernel's quasi-Monte Carlo steps.
        outputs: ``None`` (all C outputs) or a sequence of output columns to keep (their number is C).

    Returns:
        :class:`KernelPrediction`.

    Raises:
        NormfieldError: a module without a kernel (named); a batch of one under train-mode batch norm;
            non-finite inputs; dropout in training mode; a bad ``init`` or ``tol``.
    """
    from normfield.core.gram_summary import gram_diagnostics  # the measured route's own summary of a Gram
    from normfield.infinite import kernel

    t0 = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise NormfieldError(f"model must be a torch.nn.Module, got {type(model).__name__}", argument="model")
    if not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise NormfieldError(f"tol must be a number in (0, 1), got {tol!r}", argument="tol")
    x = _as_batch(inputs).to(torch.float64)
    T = int(x.shape[0])
    batch_bn = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                and (m.training or (m.running_mean is None and m.running_var is None))]
    if batch_bn and T < 2:
        raise NormfieldError(f"inputs: batch size 1 under train-mode batch norm ({batch_bn[0]}): batch statistics "
                             "of one sample are degenerate; pass at least 2 samples, or call model.eval()",
                             argument="inputs")
    ref = next((p for p in model.parameters() if p.is_floating_point()), None)
    tr = translate(model, x if ref is None else x.to(dtype=ref.dtype, device=ref.device), init=init)
    C = tr.output_width
    if outputs is not None:
        if callable(outputs) or isinstance(outputs, str):
            raise NormfieldError("outputs: nf.predict takes None or a sequence of output columns", argument="outputs")
        cols = list(outputs)
        if not cols or any(not isinstance(c, int) or not 0 <= c < C for c in cols):
            raise NormfieldError(f"outputs must be column indices in [0, {C}), got {outputs!r}", argument="outputs")
        C = len(cols)
    x2 = x.reshape(T, -1)
    kres = kernel(list(tr.layers), x2.cpu().numpy(), tol=tol, seed=seed)
    states = dict(kres.states)
    labels = leaf_labels(tr.layers)
    nngp, ntk, mean, err = kres.nngp, kres.ntk, kres.mean, float(kres.error)
    rows, grams, calls = [], {}, {}
    for lf in tr.leaves:
        if not lf.hooked:
            continue
        st = states[labels[id(lf.layer)]]
        c = calls.get(lf.name, 0)
        calls[lf.name] = c + 1
        key = lf.name if c == 0 else f"{lf.name}#{c}"
        G = np.asarray(st.nngp, dtype=np.float64)
        grams[key] = G
        row = {"layer": key, "module": lf.name, "type": lf.type, "call": c, "batch": T, "features": int(st.width)}
        row.update(gram_diagnostics(G))
        row["error"] = float(st.error)
        rows.append(row)
    P = sum(p.numel() for p in model.parameters() if p.requires_grad)
    flags = []
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    if frozen:
        flags.append(f"{frozen} parameters have requires_grad=False: the predicted NTK differentiates every "
                     "parameter, nf.analyze only the trainable ones")
    if P == 0:
        raise NormfieldError("model: no parameter requires grad", argument="model")
    w = np.linalg.eigvalsh(ntk)
    scale = max(1.0, float(np.linalg.norm(ntk)), float(np.linalg.norm(nngp)))
    within = bool(err <= tol * scale)
    if not within:
        msg = (f"the kernel's stated error {err:.3g} exceeds tol {tol:g} x {scale:.3g}: the prediction is "
               "less accurate than asked")
        flags.append(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
    lam = float(w[-1]) / T
    trace = C * float(np.trace(ntk)) / T
    cols_ = ["layer", "module", "type", "call", "batch", "features", "mean_diag", "mean_offdiag", "mean_cosine",
             "lambda_max", "lambda_min", "condition_number", "effective_rank", "top_fraction", "collapsed", "error"]
    return KernelPrediction(
        nngp=nngp, ntk=ntk, mean=np.asarray(mean), lambda_max=lam, trace=trace, m_lambda=trace / P, parameters=P,
        samples=T, outputs=C, error=err, tol=float(tol), within_tol=within, grams=grams,
        layers=pd.DataFrame(rows, columns=cols_), flags=flags, translation=tr, seconds=time.perf_counter() - t0)
