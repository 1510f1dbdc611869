"""Training experiments: the learning-rate grid (Karakida et al. 2019, Fig. 2) and BN-MLP
training (Joudaki et al. 2023, Figs. 6–8), each settings → cells → sweep → frame.

``sweep`` is a callable ``(fn, cells, *, name) -> DataFrame`` (a claim passes
``ctx.sweep``); by default :func:`normfield.runner.run_sweep` with ``sweep_options``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import pandas as pd

from normfield.train.lr_grid import LR_GRID_NORMS, LRGridSettings, lr_grid_cell

__all__ = ["run_lr_grid", "lr_grid"]

Sweep = Callable[..., pd.DataFrame]


def _sweeper(sweep: Sweep | None, sweep_options: dict[str, Any]) -> Sweep:
    if sweep is not None:
        return sweep
    from normfield.runner import run_sweep

    def run(fn, cells, *, name):
        return run_sweep(fn, cells, name=name, **sweep_options)

    return run


def run_lr_grid(settings: LRGridSettings, *, seed: int = 0, sweep: Sweep | None = None,
                **sweep_options: Any) -> pd.DataFrame:
    """Final training loss and outcome over (width M, learning rate η): Karakida et al. 2019, Fig. 2 / S.2.

    Returns:
        Tidy DataFrame, one row per (norm, width, seed, lr), the columns of
        :func:`normfield.train.lr_grid.lr_grid_cell` plus the cell keys.
    """
    return _sweeper(sweep, sweep_options)(lr_grid_cell, settings.cells(seed), name="lr-grid")


def lr_grid(
    widths: Sequence[int],
    lrs: Sequence[float],
    *,
    norms: Sequence[str] = LR_GRID_NORMS,
    seeds: Sequence[int] = (0,),
    steps: int = 1000,
    samples: int = 1000,
    depth: int = 3,
    sw2: float = 4.0,
    sb2: float = 1.0,
    activation: str = "relu",
    dtype: str = "float64",
    sweep: Sweep | None = None,
    **sweep_options: Any,
) -> pd.DataFrame:
    """:func:`run_lr_grid` from keyword settings (the paper's by default: L = 3, T = 1000,
    (σ_w², σ_b²) = (4, 1), 1000 steps); ``seeds`` are the cell seeds, each in [0, 1000)."""
    settings = LRGridSettings(widths=tuple(widths), lrs=tuple(lrs), norms=tuple(norms), replicates=tuple(seeds),
                              steps=steps, samples=samples, depth=depth, sw2=sw2, sb2=sb2, activation=activation,
                              dtype=dtype)
    return run_lr_grid(settings, seed=0, sweep=sweep, **sweep_options)
