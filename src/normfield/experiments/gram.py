"""Gram-chain experiments: a :class:`~normfield.gram.cells.ChainSweep` → its cells → one sweep → a frame."""

from __future__ import annotations

from typing import Any, Callable

import pandas as pd

from normfield.gram.cells import ChainSweep
from normfield.gram.fixed_point import FixedPoint, fixed_point
from normfield.gram.measure import gram_chain, summarize_chain

__all__ = ["run_chain", "chain_report"]

Sweep = Callable[..., pd.DataFrame]


def run_chain(settings: ChainSweep, *, seed: int = 0, sweep: Sweep | None = None, **sweep_options: Any) -> pd.DataFrame:
    """Run every cell of ``settings`` and return the tidy frame (rows of the cell function, with the cells' keys).

    Args:
        settings: the sweep.
        seed: base seed of the cells.
        sweep: ``(fn, cells, *, name) -> DataFrame`` (a claim passes ``ctx.sweep``); default
            :func:`normfield.runner.run_sweep` with ``sweep_options``.
    """
    if sweep is None:
        from normfield.runner import run_sweep

        def sweep(fn, cells, *, name):
            return run_sweep(fn, cells, name=name, **sweep_options)

    return sweep(settings.cell_function, settings.cells(seed), name=settings.name)


def _band(summary: pd.DataFrame, metric: str) -> dict[str, list[float]] | None:
    s = summary[summary.metric == metric].sort_values("layer")
    if s.empty:
        return None
    return {"mean": s["mean"].tolist(), "q05": s["q05"].tolist(), "q95": s["q95"].tolist()}


def chain_report(activation: Any, width: int, batch: int, depth: int, **options: Any) -> dict[str, Any]:
    """Simulate chains (:func:`normfield.gram.measure.gram_chain`) and summarise them per layer over seeds.

    Args:
        activation, width, batch, depth, options: as :func:`~normfield.gram.measure.gram_chain`.

    Returns:
        ``{"layers", "distance_to_fixed_point", "distance_to_mean_field", "condition_number",
        "fixed_point"}``: the bands are ``{"mean", "q05", "q95"}`` lists aligned with ``layers``
        (``None`` where the metric is absent), ``fixed_point`` the :class:`FixedPoint` of eq. (10)
        under batch norm, else ``None``.
    """
    df = gram_chain(activation, width, batch, depth, **options)
    fp: FixedPoint | None = fixed_point(activation, batch) if options.get("norm", "bn") == "bn" else None
    summ = summarize_chain(df)
    return {
        "layers": sorted(int(v) for v in df.layer.unique()),
        "distance_to_fixed_point": _band(summ, "dist_fixed_point"),
        "distance_to_mean_field": _band(summ, "dist_mean_field"),
        "condition_number": _band(summ, "condition_number"),
        "fixed_point": fp,
    }
