"""Fisher experiments: sweeps of the reversed FIM over random networks, and the theorems over them.

Settings (:class:`normfield.fisher.cells.FisherSweep`) → cells → the runner → a tidy frame;
the theorem that applies to the placement is evaluated per network and averaged
(:func:`theory_over_seeds`).  Karakida et al. 2019.
"""

from __future__ import annotations

from typing import Any, Callable

import pandas as pd

from normfield.core.validation import check_int
from normfield.fisher.cells import FisherSweep, fisher_cell
from normfield.fisher.networks import MLPConfig
from normfield.fisher.theory import Prediction, average_predictions, fisher_theory

__all__ = ["run_fisher_sweep", "fisher_spectrum", "theory_over_seeds", "MEASURED_STATS"]

#: Frame columns of measured output statistics the theorems use (eq. (19): Q1, Q2; Thm 4.1: η's).
MEASURED_STATS = ("Q1", "Q2", "eta1", "eta2", "eta3")


def run_fisher_sweep(settings: FisherSweep, *, seed: int = 0, sweep: Callable[..., pd.DataFrame] | None = None,
                     name: str = "fisher-spectrum", **sweep_options: Any) -> pd.DataFrame:
    """Run the cells of ``settings`` (:func:`normfield.fisher.cells.fisher_cell`) and return the frame.

    Args:
        settings: the sweep.
        seed: the run's base seed (see :attr:`FisherSweep.seed_block`).
        sweep: ``(fn, cells, *, name) -> DataFrame`` (a claim passes ``ctx.sweep``); default
            :func:`normfield.runner.run_sweep` with ``sweep_options`` (``progress``, ``device``, ...).
        name: the sweep's name (progress label, cache).

    Returns:
        One row per (cell, placement): the columns of :func:`~normfield.fisher.cells.fisher_cell`
        and the cell's settings (``seed``, ``width``, ``samples``, ...).
    """
    settings.check_resources()
    cells = settings.cells(seed)
    if sweep is None:
        from normfield.runner import run_sweep

        return run_sweep(fisher_cell, cells, name=name, **sweep_options)
    return sweep(fisher_cell, cells, name=name)


def fisher_spectrum(
    config: MLPConfig,
    *,
    seeds: int = 1,
    seed: int = 0,
    dtype: str = "float64",
    device: str = "cpu",
    route: str = "auto",
    vectors: bool = False,
    progress: bool = False,
) -> pd.DataFrame:
    """λ_max, m_λ (and output statistics) over ``seeds`` independent networks and input batches.

    Seed ``seed + i`` draws network ``i`` and then its inputs from one generator.

    Returns:
        Tidy DataFrame, one row per seed: ``seed, lambda_max, m_lambda, parameters, trace, route,
        top_cosine`` (+ ``Q1, Q2`` for last-bn, ``eta1..3`` for layer, measured ``qtilde`` columns
        on the fast route) and the config columns.

    Raises:
        NormfieldError: bad settings, memory, or a setting whose FIM vanishes identically whatever
            θ (:meth:`Placement.check_spectrum <normfield.fisher.placements.Placement.check_spectrum>`: layer
            norm with 2 outputs, last-layer batch norm with 2 samples), where the spectrum says nothing.
    """
    seeds = check_int("seeds", seeds, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    config.placement.check_spectrum(config)
    settings = FisherSweep(config, seeds=seeds, dtype=dtype, route=route, vectors=vectors)
    return run_fisher_sweep(settings, seed=seed, progress=progress, device=device)


def theory_over_seeds(config: MLPConfig, frame: pd.DataFrame) -> Prediction:
    """The theorem for ``config.norm`` evaluated with each row's measured output statistics
    (:data:`MEASURED_STATS`) and averaged over the rows (e.g. eq. (19) with each network's σ_k).

    Raises:
        NormfieldError: outside the theorem's regime (see :func:`~normfield.fisher.theory.fisher_theory`).
    """
    cols = [k for k in MEASURED_STATS if k in frame.columns]
    per = [fisher_theory(config, {k: float(r[k]) for k in cols}) for _, r in frame.iterrows()]
    return average_predictions(per)
