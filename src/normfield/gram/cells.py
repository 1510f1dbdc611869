"""Sweep cells of the Gram-chain engine: frozen sweep settings and module-level cell functions.

A :class:`ChainSweep` names a grid of chain settings (``base`` updated by each
entry of ``grid``) and the seed block its cells draw from; ``.cells(seed)``
lists the cell dicts (seed ``1000·seed + 50·block + i`` via
:func:`normfield.core.seeding.block_seed`, refusing a 51st cell that would
reach the next block). :func:`chain_cell` and :func:`singular_cell` turn one
cell into tidy rows (module level: picklable for process pools and Dask).
:mod:`normfield.experiments.gram` runs a sweep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from normfield.core.seeding import block_seed
from normfield.gram.chain import simulate_chain
from normfield.gram.measure import gram_chain

__all__ = ["ChainSweep", "chain_cell", "singular_cell", "SEED_BLOCK", "SEED_STRIDE"]

#: cells per seed block and distance between base seeds of the chain sweeps
SEED_BLOCK = 50
SEED_STRIDE = 1000


def chain_cell(cell: dict) -> pd.DataFrame:
    """One chain setting, ``cell["runs"]`` seeded runs → tidy rows.

    Keys: activation, norm, width, batch, depth, runs, seed, inputs,
    record ("all" or a list of layers), mean_field (bool), spectrum (bool),
    device, dtype (optional). Rows: run, layer, metric, value.
    """
    record = cell.get("record", "all")
    res = simulate_chain(cell["activation"], cell["width"], cell["batch"], cell["depth"], seeds=cell["runs"],
                         norm=cell["norm"], inputs=cell.get("inputs", "gaussian"), seed=cell["seed"],
                         dtype=cell.get("dtype", "float64"), device=cell.get("device", "cpu"),
                         record_layers=None if record == "all" else record)
    df = gram_chain(cell["activation"], cell["width"], cell["batch"], cell["depth"], result=res,
                    mean_field=bool(cell.get("mean_field", False)), spectrum=bool(cell.get("spectrum", False)))
    df = df.rename(columns={"seed": "run"})
    return df[["run", "layer", "metric", "value"]]


def singular_cell(cell: dict) -> pd.DataFrame:
    """Singular values of h_l (Joudaki et al. Fig. 5) and the 1_n-alignment of G_l's extreme eigenvectors.

    Keys: activation, width, batch, depth, runs, seed, layers, device (optional).
    Rows: run, layer, metric (``sv``, ``align_top_1n``, ``align_bottom_1n``), index, value.
    """
    L = cell["depth"]
    res = simulate_chain(cell["activation"], cell["width"], cell["batch"], L, seeds=cell["runs"],
                         norm="bn", seed=cell["seed"], record_layers=cell["layers"], singular_values=True,
                         device=cell.get("device", "cpu"))
    n = cell["batch"]
    rows = []
    one = np.ones(n) / math.sqrt(n)
    for r_i, layer in enumerate(res.layers):
        sv = res.singular_values[:, r_i]  # (K, n) descending
        w, V = np.linalg.eigh(res.grams[:, r_i])
        top = np.abs(V[:, :, -1] @ one)
        bottom = np.abs(V[:, :, 0] @ one)
        for k in range(sv.shape[0]):
            for i in range(n):
                rows.append((k, int(layer), "sv", i, float(sv[k, i])))
            rows.append((k, int(layer), "align_top_1n", -1, float(top[k])))
            rows.append((k, int(layer), "align_bottom_1n", -1, float(bottom[k])))
    return pd.DataFrame(rows, columns=["run", "layer", "metric", "index", "value"])


@dataclass(frozen=True)
class ChainSweep:
    """A grid of Gram-chain settings run as one sweep.

    Attributes:
        name: sweep name (progress, cache, report).
        base: settings shared by every cell (keys of :func:`chain_cell` or :func:`singular_cell`).
        grid: per-cell overrides of ``base``, one mapping per cell.
        block: seed block (cells get ``block_seed(seed, block, i, 50, 1000)``).
        singular: cells are :func:`singular_cell` (singular values) instead of :func:`chain_cell`.
    """

    name: str
    base: Mapping[str, Any]
    grid: tuple[Mapping[str, Any], ...] = field(default_factory=tuple)
    block: int = 0
    singular: bool = False

    @property
    def cell_function(self) -> Callable[[dict], pd.DataFrame]:
        return singular_cell if self.singular else chain_cell

    def cells(self, seed: int) -> list[dict]:
        """The cell dicts: ``base`` updated by each grid entry, plus its ``seed``."""
        out = []
        for i, g in enumerate(self.grid):
            c = dict(self.base)
            c.update(g)
            c["seed"] = block_seed(int(seed), self.block, i, block_size=SEED_BLOCK, stride=SEED_STRIDE)
            out.append(c)
        return out
