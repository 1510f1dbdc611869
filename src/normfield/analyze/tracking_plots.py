"""The figure of a :class:`normfield.analyze.tracking.SharpnessTracker` record.

:func:`plot_tracking` only draws the tidy frame (``tracker.frame``); it computes nothing:

1. λ_max of the curvature over steps, with the stability line 2/η (gradient descent on a quadratic
   with curvature C diverges once η·λ_max(C) > 2, Karakida et al. 2019, eq. (23)); where the learning
   rate changes, the line follows it;
2. the trace tr C with its ±1 standard-error band (stochastic traces);
3. per hooked layer, the top fraction λ₁(G)/tr G of the batch Gram G = H Hᵀ/d (Joudaki et al. 2023,
   eq. (2); 1 = rank one, i.e. collapsed; 1/T = isotropic);
4. per hooked layer, the effective rank exp H(λ/Σλ) of G (Roy & Vetterli 2007).

Layers are coloured by depth (execution order), light to dark.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from normfield.errors import NormfieldError

__all__ = ["plot_tracking"]

_TOP, _RANK = "gram_top_fraction:", "gram_effective_rank:"


def _axes(ax: Any):
    if ax is None:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, axs = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
        return fig, list(np.ravel(axs))
    axs = list(ax) if isinstance(ax, Sequence) or isinstance(ax, np.ndarray) else [ax]
    if len(axs) != 4:
        raise NormfieldError(f"ax must be None or a sequence of 4 matplotlib Axes, got {len(axs)}", argument="ax")
    return axs[0].figure, axs


def _layer_panel(ax, df: pd.DataFrame, prefix: str, ylabel: str) -> None:
    import matplotlib

    cols = [c for c in df.columns if c.startswith(prefix)]
    if not cols:
        ax.text(0.5, 0.5, "no hooked layer", ha="center", va="center", transform=ax.transAxes)
        ax.set_ylabel(ylabel)
        return
    cmap = matplotlib.colormaps["viridis"]
    for i, c in enumerate(cols):
        ax.plot(df["step"], df[c], color=cmap(0.9 - 0.8 * i / max(1, len(cols) - 1)), lw=1,
                label=c[len(prefix):] if len(cols) <= 8 else None)
    if len(cols) <= 8:
        ax.legend(fontsize=7, loc="best")
    else:
        ax.set_title(f"{len(cols)} layers, light = input side, dark = output side", fontsize=8)
    ax.set_ylabel(ylabel)


def plot_tracking(df: pd.DataFrame, path: str | Path | None = None, ax: Any = None):
    """λ_max against 2/η, the trace and the layer Gram columns of a tracker's frame over steps.

    Args:
        df: ``tracker.frame`` (columns ``step, lambda_max`` at least; ``lr``, ``trace``,
            ``trace_stderr`` and the ``gram_*:<layer>`` columns are drawn when present).
        path: where to save the figure (PNG, PDF, ...), or None.
        ax: None (a new 2×2 figure) or a sequence of 4 Axes.

    Returns:
        the matplotlib Figure.

    Raises:
        NormfieldError: ``df`` is not a DataFrame with ``step`` and ``lambda_max``, or has no row.
    """
    if not isinstance(df, pd.DataFrame) or not {"step", "lambda_max"} <= set(df.columns):
        raise NormfieldError("df must be a tracker's frame (a DataFrame with columns 'step' and 'lambda_max'), "
                             "e.g. tracker.frame", argument="df")
    if not len(df):
        raise NormfieldError("df has no row: call tracker.step(...) at least once before plotting", argument="df")
    df = df.sort_values("step")
    fig, axs = _axes(ax)
    a = axs[0]
    a.plot(df["step"], df["lambda_max"], "o-", color="C0", ms=3, label="λ_max")
    if "lr" in df and np.isfinite(df["lr"].to_numpy(float)).any():
        a.plot(df["step"], 2.0 / df["lr"], "--", color="C3", label="2/η (edge of stability)")
    lam = df["lambda_max"].to_numpy(float)
    if np.all(lam[np.isfinite(lam)] > 0) and np.isfinite(lam).any():
        a.set_yscale("log")
    a.set_ylabel("sharpness λ_max")
    a.legend(fontsize=8, loc="best")
    b = axs[1]
    if "trace" in df and np.isfinite(df["trace"].to_numpy(float)).any():
        tr = df["trace"].to_numpy(float)
        b.plot(df["step"], tr, "o-", color="C2", ms=3, label="tr C")
        if "trace_stderr" in df:
            se = np.nan_to_num(df["trace_stderr"].to_numpy(float))
            b.fill_between(df["step"], tr - se, tr + se, color="C2", alpha=0.25, lw=0, label="±1 s.e.")
        b.legend(fontsize=8, loc="best")
    else:
        b.text(0.5, 0.5, "trace not tracked", ha="center", va="center", transform=b.transAxes)
    b.set_ylabel("trace")
    _layer_panel(axs[2], df, _TOP, "Gram top fraction λ₁/tr")
    _layer_panel(axs[3], df, _RANK, "Gram effective rank")
    for x in axs[2:]:
        x.set_xlabel("step")
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    return fig
