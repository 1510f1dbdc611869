"""What became of a gradient-descent run: converged, collapsed, exploded or unconverged.

Karakida et al. 2019, §3.4 (Fig. 2) counts a run as exploded when its final loss
exceeds 10³. Everything else is not one kind of run: above the learning-rate
limit 2/λ_max (eq. (23)) a ReLU student may also *collapse*, every unit of a
hidden layer inactive on every input, its output constant, its loss stuck at the
loss of the best constant output. This module classifies a run from its final
loss, its trained output and its loss history, with stated criteria:

* ``exploded``: final loss > ``explode_at`` (10³) or not finite (the paper's rule);
* ``collapsed``: finite, not converged, and the output constant across samples, by
  either detector (recorded in ``collapse_detector``):
  ``"dead-units"`` — some hidden layer has every unit at exactly zero on all T inputs
  (then the output is exactly constant), or
  ``"output-variance"`` — Σ_k Var_t f_k ≤ 10⁻¹² · Σ_k Var_t y_k (constant to about six
  digits relative to the labels);
* ``converged``: final loss ≤ 0.1 · min(E(θ_0), E_const), a decade below both the initial
  loss and E_const = (1/2T) Σ_t |y(t) − ȳ|², the loss of the best constant output
  (so a collapsed run, stuck at E_const, never counts as converged, and neither does a
  run that has only fitted the mean of the labels);
* ``unconverged``: the rest (finite, output not constant, loss not a decade down,
  e.g. a small η that has not finished in the steps given).

The loss history gives the catapult signature (Lewkowycz et al. 2020, cited as the
mechanism by which runs above 2/λ_max(init) converge): ``loss_rose`` (the loss exceeded
its initial value at some step) and ``monotone`` (no step increased it by more than
10⁻⁹ · E(θ_0), a tolerance for the round-off of a loss that has reached ~10⁻³⁰).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from normfield.core.activations import get_activation
from normfield.core.normalize import center

__all__ = ["OUTCOMES", "CONVERGED_FRACTION", "CONSTANT_OUTPUT_VARIANCE", "MONOTONE_TOLERANCE", "constant_loss",
           "output_diagnostics", "loss_shape", "classify_run"]

#: The outcome classes of one run, in the order they are decided (exploded first).
OUTCOMES = ("exploded", "collapsed", "converged", "unconverged")

#: Converged: final loss at most this fraction of min(initial loss, constant-output loss).
CONVERGED_FRACTION = 0.1

#: Output-variance detector: Σ Var_t f ≤ this · Σ Var_t y means a constant output.
CONSTANT_OUTPUT_VARIANCE = 1e-12

#: A step "increases" the loss when it adds more than this times the initial loss.
MONOTONE_TOLERANCE = 1e-9


def constant_loss(y: torch.Tensor) -> float:
    """E_const = (1/2T) Σ_t Σ_k (y_k(t) − ȳ_k)²: the squared loss of the best constant output.

    Args:
        y: labels, shape (T, C).
    """
    yc = center(y.to(torch.float64), 0)
    return float((yc * yc).sum() / (2 * y.shape[0]))


def output_diagnostics(params: Sequence[tuple[torch.Tensor, torch.Tensor]], X: torch.Tensor, y: torch.Tensor, *,
                       activation: Any = "relu", norm: str = "none") -> dict[str, float]:
    """Dead units and output variance of one trained student (Karakida eq. (1), f = u^L or centred u^L).

    Args:
        params: ``[(W_l (M_l, M_{l−1}), b_l (M_l,))]`` of one student.
        X: inputs (T, M_0); y: labels (T, C).
        activation: the hidden activation; norm: ``"none"`` or ``"last-mean"`` (eq. (15)).

    Returns:
        ``dead_unit_fraction``: the largest, over hidden layers, fraction of units whose
        activation is exactly 0 on all T inputs (NaN for a network without hidden layer);
        ``all_dead_layer``: 1.0 if some hidden layer is entirely dead, else 0.0;
        ``output_var_ratio``: Σ_k Var_t f_k / Σ_k Var_t y_k (biased variances; NaN if f is
        not finite).
    """
    act = get_activation(activation)
    with torch.no_grad():
        h = X
        dead = []
        for W, b in params[:-1]:
            h = act.fn(h @ W.T + b)
            dead.append(float((h == 0).all(dim=0).double().mean()))
        W, b = params[-1]
        f = h @ W.T + b
        if norm == "last-mean":
            f = center(f, 0)
        fc, yc = center(f.to(torch.float64), 0), center(y.to(torch.float64), 0)
        vf, vy = float((fc * fc).mean(dim=0).sum()), float((yc * yc).mean(dim=0).sum())
    ratio = vf / vy if (math.isfinite(vf) and vy > 0) else (math.nan if not math.isfinite(vf) else math.inf)
    return {"dead_unit_fraction": max(dead) if dead else math.nan,
            "all_dead_layer": float(any(d == 1.0 for d in dead)), "output_var_ratio": ratio}


def loss_shape(history: np.ndarray) -> dict[str, Any]:
    """Shape of one loss trajectory E(θ_0), E(θ_1), … (NaN entries after a stop are ignored).

    Returns:
        ``loss_rose``: E(θ_s) > E(θ_0) for some s ≥ 1; ``monotone``: every step changes the
        loss by at most +``MONOTONE_TOLERANCE``·E(θ_0); ``peak_loss_ratio``: max_s E(θ_s) / E(θ_0)
        (inf once the loss overflowed).
    """
    h = np.asarray(history, dtype=np.float64)
    h = h[~np.isnan(h)]
    if h.size == 0:
        return {"loss_rose": False, "monotone": True, "peak_loss_ratio": math.nan}
    e0 = h[0]
    rose = bool((h[1:] > e0).any())
    steps = np.diff(h)
    monotone = bool(np.all(np.isfinite(h)) and not (steps > MONOTONE_TOLERANCE * abs(e0)).any())
    peak = float(np.max(np.where(np.isfinite(h), h, np.inf)) / e0) if e0 > 0 else math.nan
    return {"loss_rose": rose, "monotone": monotone, "peak_loss_ratio": peak}


def classify_run(final_loss: float, initial_loss: float, const_loss: float, *, all_dead_layer: bool,
                 output_var_ratio: float, explode_at: float = 1e3) -> tuple[str, str]:
    """``(outcome, collapse_detector)`` of one run by the criteria in the module docstring.

    ``collapse_detector`` is ``"dead-units"``, ``"output-variance"``, ``"both"`` or ``""``
    (not collapsed).
    """
    if not math.isfinite(final_loss) or final_loss > explode_at:
        return "exploded", ""
    if final_loss <= CONVERGED_FRACTION * min(initial_loss, const_loss):
        return "converged", ""
    by_var = bool(output_var_ratio <= CONSTANT_OUTPUT_VARIANCE)
    fired = [name for name, hit in (("dead-units", bool(all_dead_layer)), ("output-variance", by_var)) if hit]
    if fired:
        return "collapsed", fired[0] if len(fired) == 1 else "both"
    return "unconverged", ""
