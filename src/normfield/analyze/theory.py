"""Measured beside predicted: ``nf.analyze``'s numbers next to the infinite-width kernel's.

:func:`compare` joins an :class:`~normfield.analyze.AnalysisResult` (measured at the model's finite
widths) and a :class:`~normfield.infinite.predict.KernelPrediction` (the same model at infinite width,
:func:`normfield.infinite.predict.predict`) into one tidy frame, one row per quantity that has both:

* ``lambda_max``, ``trace``, ``m_lambda``, ``lr_bound`` of F* = J Jᵀ/T (Karakida et al. 2019, eqs. (8),
  (10), (23)); the prediction is F* ≈ (Θ_f ⊗ I_C)/T, exact to leading order in width;
* per hooked layer, the batch Gram G = H Hᵀ/d (Joudaki et al. 2023, eq. (2)): the row ``gram`` holds
  ‖G‖_F measured and predicted and, in ``distance``, ‖G_measured − G_predicted‖_F; the rows
  ``condition_number`` and ``top_fraction`` compare its conditioning.

``ratio`` is measured/predicted; ``features`` is the layer's width d. A measured Gram entry is an
average over the d units, so it fluctuates by O(1/√d) around its infinite-width value and ``distance``
is O(T/√d): small for hidden layers, O(1) for an output of a few units (one draw of the law).

:func:`attach_theory` runs the prediction on the same batch, in the same module mode as the analysis,
and sets ``result.theory`` (the frame) and ``result.prediction``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["compare", "attach_theory", "THEORY_COLUMNS", "theory_records", "plot_theory_conditioning"]

#: Columns of the comparison frame.
THEORY_COLUMNS = ["quantity", "layer", "features", "measured", "predicted", "ratio", "distance", "rel_distance"]


def _ratio(m: float, p: float) -> float:
    if not (math.isfinite(m) and math.isfinite(p)) or p == 0:
        return math.nan
    return m / p


def compare(result: Any, prediction: Any) -> pd.DataFrame:
    """The measured-vs-predicted frame (module docstring).

    Args:
        result: an ``AnalysisResult`` (its ``fisher`` may be ``None``: then only the layer rows).
        prediction: a ``KernelPrediction`` of the same model and batch.

    Returns:
        DataFrame with :data:`THEORY_COLUMNS`; ``distance``/``rel_distance``
        (‖ΔG‖_F and ‖ΔG‖_F/‖G_pred‖_F)
        only on the ``gram`` rows (NaN elsewhere).
    """
    rows: list[dict[str, Any]] = []

    def add(q: str, layer: str, m: float, p: float, dist: float = math.nan, rel: float = math.nan,
            features: int | None = None) -> None:
        rows.append({"quantity": q, "layer": layer, "features": features, "measured": float(m),
                     "predicted": float(p), "ratio": _ratio(float(m), float(p)), "distance": dist, "rel_distance": rel})

    f = getattr(result, "fisher", None)
    if f is not None:
        add("lambda_max", "", f.lambda_max, prediction.lambda_max)
        add("trace", "", f.trace, prediction.trace)
        add("m_lambda", "", f.m_lambda, prediction.m_lambda)
        add("lr_bound", "", f.lr_bound, prediction.lr_bound)
    pl = prediction.layers.set_index("layer") if len(prediction.layers) else None
    for r in result.layers.to_dict(orient="records"):
        key = r["layer"]
        if key not in prediction.grams or key not in result.grams or pl is None:
            continue
        Gm, Gp = np.asarray(result.grams[key], float), prediction.grams[key]
        if Gm.shape != Gp.shape:
            continue
        dist = float(np.linalg.norm(Gm - Gp))
        d = int(r["features"])
        add("gram", key, float(np.linalg.norm(Gm)), float(np.linalg.norm(Gp)), dist,
            dist / max(float(np.linalg.norm(Gp)), 1e-300), d)
        add("condition_number", key, r["condition_number"], pl.loc[key, "condition_number"], features=d)
        add("top_fraction", key, r["top_fraction"], pl.loc[key, "top_fraction"], features=d)
    return pd.DataFrame(rows, columns=THEORY_COLUMNS)


def theory_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The frame as JSON-able records (NaN -> None)."""
    def clean(k: str, v: Any) -> Any:
        if isinstance(v, float) and math.isnan(v):
            return None
        return int(v) if k == "features" else v

    return [{k: clean(k, v) for k, v in r.items()} for r in frame.to_dict(orient="records")]


def attach_theory(result: Any, model: Any, inputs: Any, **predict_kwargs: Any) -> Any:
    """Predict ``model`` on ``inputs`` at infinite width and set ``result.theory`` and ``result.prediction``.

    The prediction runs with the module mode the analysis used (``result.settings["mode"]``: train-mode
    batch norm uses batch statistics, eval mode the running ones); the model comes back untouched.

    Args:
        result: the ``AnalysisResult`` of ``nf.analyze(model, inputs, ...)``.
        model, inputs: the same model and batch.
        **predict_kwargs: passed to :func:`normfield.infinite.predict.predict` (``init``, ``tol``, ``seed``).

    Returns:
        ``result``, with ``theory`` (:func:`compare`'s frame) and ``prediction`` set.

    Raises:
        NormfieldError: what :func:`~normfield.infinite.predict.predict` refuses (a module without a
            kernel, named; a batch of one under train-mode batch norm; non-finite inputs).
    """
    from normfield.analyze._functional import model_state_guard
    from normfield.infinite.predict import predict

    mode = (getattr(result, "settings", None) or {}).get("mode", "as-is")
    with model_state_guard(model, mode):
        pred = predict(model, inputs, **predict_kwargs)
    f = getattr(result, "fisher", None)
    if f is not None and f.parameters != pred.parameters:
        pred.flags.append(f"the analysis differentiated {f.parameters} parameters, the prediction all "
                          f"{pred.parameters} trainable ones: λ_max, trace and m_λ compare different F*")
    result.prediction = pred
    result.theory = compare(result, pred)
    return result


def plot_theory_conditioning(result: Any, *, path: Any = None):
    """Layer conditioning by depth, measured beside predicted: the batch Gram's condition number (log axis)
    and top fraction λ_1/tr per hooked layer (Joudaki et al. 2023, eq. (2); rank collapse shows as a top
    fraction near 1), from ``result.theory``.

    Args:
        result: an ``AnalysisResult`` with ``theory`` set (:func:`attach_theory`), or the frame itself.
        path: save the figure there (PNG).

    Returns:
        the matplotlib figure.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from normfield.errors import NormfieldError

    frame = result if isinstance(result, pd.DataFrame) else getattr(result, "theory", None)
    if frame is None or not (frame.quantity == "condition_number").any():
        raise NormfieldError("no layer has both a measured and a predicted Gram; run analyze with theory and "
                             "layers='auto'", argument="result")
    cond = frame[frame.quantity == "condition_number"]
    top = frame[frame.quantity == "top_fraction"]
    x = np.arange(len(cond))
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(max(6.4, 0.3 * len(cond)), 5.6), sharex=True)
    for col, style, label in (("measured", "o-", "measured"), ("predicted", "s--", "predicted (infinite width)")):
        v = cond[col].to_numpy(float)
        ok = np.isfinite(v)
        ax.semilogy(x[ok], v[ok], style, ms=4, label=label)
        ax2.plot(x, top[col].to_numpy(float), style, ms=4, label=label)
    ax.set_ylabel("condition number of G")
    ax.legend(fontsize=7)
    ax2.set_ylabel("top fraction λ_1/tr")
    ax2.set_ylim(0, 1.05)
    ax2.legend(fontsize=7)
    ax2.set_xticks(x)
    ax2.set_xticklabels(cond.layer.tolist(), rotation=90, fontsize=7)
    ax.set_title("batch Gram conditioning by depth: measured vs predicted", fontsize=9)
    if path is not None:
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    return fig
