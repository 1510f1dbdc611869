"""A small, real cell function for trying the runner (docs, tests, benchmarks).

:func:`mc_kernel_cell` estimates the dual-activation kernel
``E[σ(u)σ(v)]`` for ``(u, v) ~ N(0, [[1, ρ], [ρ, 1]])`` by seeded Monte Carlo —
the building block of the mean-field Gram map (Joudaki et al. 2023, eq. 3) —
and reports the estimate with its standard error. It is module-level, so it
runs in-process, in a process pool and on Dask workers alike.

Instrumentation for resume demos: a cell may carry ``log_dir`` (every call
writes one marker file there, so calls can be counted across processes) and
``sleep`` (seconds to wait before returning, to make a sweep slow enough to
interrupt).
"""

from __future__ import annotations

import math
import os
import time
import uuid
from pathlib import Path
from typing import Any

__all__ = ["mc_kernel_cell", "relu_kernel_exact", "demo_claim"]


def mc_kernel_cell(cell: dict) -> list[dict]:
    """Monte Carlo estimate of ``E[σ(u)σ(v)]`` for correlation ``rho``.

    Args:
        cell: settings: ``activation`` (name, default ``"relu"``), ``rho`` in
            [-1, 1], ``samples`` (int >= 2), ``seed``, ``device``, optional
            ``dtype`` (``"float64"``/``"float32"``), ``log_dir``, ``sleep``.

    Returns:
        One row: ``estimate``, ``stderr`` (sample std / sqrt(samples)), ``samples``.
    """
    import torch

    from normfield.core.activations import get_activation
    from normfield.core.validation import check_choice, check_float, check_int

    if cell.get("log_dir"):
        d = Path(cell["log_dir"])
        d.mkdir(parents=True, exist_ok=True)
        tag = f"{cell.get('rho')}_{cell.get('seed')}".replace("/", "_")
        (d / f"call_{tag}_{os.getpid()}_{uuid.uuid4().hex[:8]}").touch()
    rho = check_float("rho", cell.get("rho", 0.5), minimum=-1.0, maximum=1.0)
    n = check_int("samples", cell.get("samples", 10_000), minimum=2, maximum=10**8)
    seed = check_int("seed", cell.get("seed", 0), minimum=0)
    dtype = {"float64": torch.float64, "float32": torch.float32}[
        check_choice("dtype", cell.get("dtype", "float64"), ["float64", "float32"])
    ]
    act = get_activation(cell.get("activation", "relu"))
    g = torch.Generator(device=cell.get("device", "cpu")).manual_seed(seed)
    z = torch.randn(2, n, generator=g, dtype=dtype, device=cell.get("device", "cpu"))
    u = z[0]
    v = rho * z[0] + math.sqrt(max(0.0, 1.0 - rho * rho)) * z[1]
    prod = act(u) * act(v)
    est = float(prod.mean())
    se = float(prod.std() / math.sqrt(n))
    if cell.get("sleep"):
        time.sleep(float(cell["sleep"]))
    return [{"estimate": est, "stderr": se, "samples": n}]


def relu_kernel_exact(rho: float) -> float:
    """Closed form ``E[relu(u) relu(v)]`` for unit variances and correlation ``rho``.

    The arc-cosine kernel of degree 1 (Cho & Saul 2009), which Joudaki et al.
    2023 use for ReLU in the Gram map (eq. 3):
    ``(sqrt(1 - ρ²) + (π - arccos ρ) ρ) / (2π)``.
    """
    rho = max(-1.0, min(1.0, float(rho)))
    return (math.sqrt(1.0 - rho * rho) + (math.pi - math.acos(rho)) * rho) / (2.0 * math.pi)


def demo_claim(ctx: Any) -> Any:
    """A claim-shaped check of the runner's whole path (not registered by default).

    Runs :func:`mc_kernel_cell` for ReLU over a grid of correlations through
    ``ctx.sweep`` (cached, any executor), compares each estimate with
    :func:`relu_kernel_exact`, draws a figure and returns a ``ClaimResult``.
    Acceptance: every |estimate - exact| <= 5 standard errors; with the CLT the
    chance that a correct estimator fails one cell is 2·Φ(-5) ≈ 6e-7.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from normfield.claims.registry import ClaimResult

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
