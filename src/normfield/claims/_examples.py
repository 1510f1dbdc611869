"""A claim-shaped self-check of the sweep runner, for tests and examples (not registered).

:func:`demo_claim` estimates ``E[relu(u) relu(v)]`` by Monte Carlo over a grid of
correlations through ``ctx.sweep`` and compares it with the closed form; it runs
the whole path a claim takes (sweep, cache, executor, figure, report) in seconds.
"""

from __future__ import annotations

import numpy as np

from normfield.claims.registry import ClaimContext, ClaimResult
from normfield.core.kernels import arccos_kernel
from normfield.runner.examples import mc_kernel_cell

__all__ = ["demo_claim", "relu_kernel_exact"]


def relu_kernel_exact(rho: float | np.ndarray) -> float | np.ndarray:
    """``E[relu(u) relu(v)]`` for unit variances and correlation ``rho``: ``J(ρ)/2``.

    ``J`` is the normalised arc-cosine kernel of degree 1 (Cho & Saul 2009;
    Karakida et al. 2019, S.70), :func:`normfield.core.kernels.arccos_kernel`;
    the 1/2 is ``E[relu(u)²]`` for a standard normal ``u`` (Joudaki et al. 2023, eq. 3).
    """
    out = arccos_kernel(rho) / 2.0
    return float(out) if np.ndim(out) == 0 else out


def demo_claim(ctx: ClaimContext) -> ClaimResult:
    """A claim-shaped check of the runner's whole path (not registered by default).

    Runs :func:`normfield.runner.examples.mc_kernel_cell` for ReLU over a grid of
    correlations through ``ctx.sweep`` (cached, any executor), compares each estimate
    with :func:`relu_kernel_exact`, draws a figure and returns a ``ClaimResult``.
    Acceptance: every |estimate - exact| <= 5 standard errors; with the CLT the
    chance that a correct estimator fails one cell is 2·Φ(-5) ≈ 6e-7.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = ctx.pick(smoke=4000, quick=40_000, paper=400_000)
    rhos = [-0.9, -0.5, 0.0, 0.5, 0.9]
    cells = [{"activation": "relu", "rho": r, "samples": n, "seed": ctx.seed + k} for k, r in enumerate(rhos)]
    df = ctx.sweep(mc_kernel_cell, cells, name="demo-relu-kernel")
    df["exact"] = [relu_kernel_exact(r) for r in df["rho"]]
    df["z"] = (df["estimate"] - df["exact"]) / df["stderr"]
    worst = float(np.abs(df["z"]).max())
    path = ctx.figure_path("demo_relu_kernel")
    fig, ax = plt.subplots(figsize=(4, 3))
    grid = np.linspace(-1, 1, 101)
    ax.plot(grid, [relu_kernel_exact(r) for r in grid], label="closed form")
    ax.errorbar(df["rho"], df["estimate"], yerr=2 * df["stderr"], fmt="o", label="Monte Carlo ±2 s.e.")
    ax.set_xlabel("ρ")
    ax.set_ylabel("E[relu(u) relu(v)]")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return ClaimResult(
        verdict="PASS" if worst <= 5.0 else "FAIL",
        measured={"max_abs_z": worst, "cells": len(df)},
        expected={"max_abs_z": "<= 5"},
        settings={"samples": n, "rhos": rhos, "seed": ctx.seed},
        figures=[path],
        data={"kernel": df},
        notes="Runner self-check; the tolerance is 5 Monte Carlo standard errors at every scale.",
    )
