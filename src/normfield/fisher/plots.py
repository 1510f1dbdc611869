"""Thin matplotlib views of the Fisher sweeps' tidy DataFrames (PNG, Agg backend).

Each function takes the tidy frame a sweep returned and draws mean ± std over seeds
on log–log axes, with theory lines given as ``{label: (x, y)}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["plot_scaling", "summarize"]


def summarize(df: pd.DataFrame, x: str, y: str, by: Sequence[str] = ()) -> pd.DataFrame:
    """Mean, std and count of ``y`` over seeds, per ``by`` group and ``x``; tidy."""
    keys = [*by, x]
    g = df.groupby(keys, sort=True)[y]
    out = g.agg(["mean", "std", "count"]).reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out


def plot_scaling(
    df: pd.DataFrame,
    x: str,
    y: str,
    path: str | Path,
    *,
    by: Sequence[str] = (),
    theory: Mapping[str, tuple[Iterable[float], Iterable[float]]] | None = None,
    title: str = "",
    xlabel: str | None = None,
    ylabel: str | None = None,
    logy: bool = True,
) -> Path:
    """Mean ± std of ``y`` against ``x`` per group ``by`` (log–log), with theory lines.

    Args:
        df: tidy frame, one row per seed.
        x, y: column names.
        path: PNG path.
        by: grouping columns (one series each).
        theory: ``{label: (xs, ys)}`` drawn as lines.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summarize(df, x, y, by)
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    groups = [((), s)] if not by else list(s.groupby(list(by), sort=True))
    markers = "osD^v<>"
    for i, (key, g) in enumerate(groups):
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(f"{b}={k}" for b, k in zip(by, key)) or y
        ax.errorbar(g[x], g["mean"], yerr=g["std"], marker=markers[i % len(markers)], ls="none",
                    capsize=3, label=label)
    for j, (label, (xs, ys)) in enumerate((theory or {}).items()):
        ax.plot(np.asarray(list(xs)), np.asarray(list(ys)), ls=["-", "--", ":", "-."][j % 4], color=f"C{j + 3}",
                label=label)
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
