"""Sweeps of the reversed FIM over random networks: frozen settings, their cells, the cell function.

:class:`FisherSweep` lists independent (grid point × seed) cells; :func:`fisher_cell` turns one
cell into rows of spectrum statistics (one random network and input batch, seeded).  Running the
cells is the runner's job (:func:`normfield.experiments.fisher.run_fisher_sweep`); nothing here
imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from normfield.core.seeding import block_seed
from normfield.core.validation import check_choice, check_int, check_memory
from normfield.errors import NormfieldError
from normfield.fisher.dual import dual_memory_bytes, fisher_dual, fisher_dual_variants
from normfield.fisher.networks import MLPConfig, init_mlp, sample_inputs
from normfield.fisher.placements import FAST_NORMS, get_placement

__all__ = ["FisherSweep", "fisher_cell", "config_cell", "cell_config"]

#: The :class:`MLPConfig` fields a cell carries.
CONFIG_FIELDS = ("activation", "sw2", "sb2", "depth", "width", "alphas", "outputs", "samples", "norm")

#: Grid keys a :class:`FisherSweep` may vary.
GRID_FIELDS = ("width", "samples", "outputs", "alphas", "depth")


def config_cell(config: MLPConfig) -> dict[str, Any]:
    """The settings of ``config`` as flat JSON-able sweep-cell entries."""
    act = config.activation
    if not isinstance(act, str):
        a = config.act
        if a.name.startswith("custom"):
            raise NormfieldError("sweeps need a named activation (custom callables do not pickle by name)",
                                 argument="activation")
        act = a.name if not a.params else f"{a.name}:{a.params.get('slope')}"
    return {"activation": act, "sw2": config.sw2, "sb2": config.sb2, "depth": config.depth,
            "width": config.width, "alphas": list(config.alphas), "outputs": config.outputs,  # type: ignore[arg-type]
            "samples": config.samples, "norm": config.norm}


def cell_config(cell: Mapping[str, Any], norm: str | None = None) -> MLPConfig:
    """The :class:`MLPConfig` of a cell (its ``norm``, or ``norm`` when given)."""
    d = {f: cell[f] for f in CONFIG_FIELDS if f in cell}
    d["alphas"] = tuple(d["alphas"]) if d.get("alphas") else None
    d["norm"] = norm or cell.get("norm", "none")
    return MLPConfig(**d)


@dataclass(frozen=True)
class FisherSweep:
    """Settings of a sweep of the reversed FIM (Karakida et al. 2019) over random networks.

    Attributes:
        config: the network settings shared by every cell.
        grid: per-point overrides of ``config`` (keys from :data:`GRID_FIELDS`, e.g.
            ``({"width": 100}, {"width": 200})``); one point (no override) by default.
        seeds: independent networks and input batches per grid point (>= 1).
        norms: output placements measured on each network (``None``: ``config.norm`` only).
            Placements of the fast route share one build of the un-normalized dual.
        seed_block: how cell seeds are made from the run's base seed ``s``: ``None`` gives
            ``s, s+1, ...`` in cell order; a block number ``b`` gives
            ``block_seed(s, b, i) = 100000·s + 1000·b + i`` (:func:`normfield.core.seeding.block_seed`).
        dtype: ``"float64"`` or ``"float32"``.
        route: ``"auto"``, ``"fast"``, ``"general"`` or ``"matrix-free"`` (:func:`fisher_dual`).
        vectors: compute the top eigenvector and the Thm 3.1 cosine.
        keep_max: also record ``max|F*|`` of the placement and of the un-normalized network.
    """

    config: MLPConfig
    grid: tuple[Mapping[str, Any], ...] = ({},)
    seeds: int = 1
    norms: tuple[str, ...] | None = None
    seed_block: int | None = None
    dtype: str = "float64"
    route: str = "auto"
    vectors: bool = False
    keep_max: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.config, MLPConfig):
            raise NormfieldError(f"config must be an MLPConfig, got {type(self.config).__name__}",
                                 argument="config")
        object.__setattr__(self, "seeds", check_int("seeds", self.seeds, minimum=1))
        check_choice("dtype", self.dtype, ["float64", "float32"])
        check_choice("route", self.route, ["auto", "fast", "general", "matrix-free"])
        grid = tuple(dict(g) for g in self.grid) or ({},)
        for g in grid:
            for key in g:
                check_choice("grid", key, GRID_FIELDS)
        object.__setattr__(self, "grid", grid)
        if self.norms is not None:
            norms = tuple(get_placement(n).name for n in self.norms)
            if not norms:
                raise NormfieldError("norms must name at least one placement (or be None)", argument="norms")
            object.__setattr__(self, "norms", norms)
        if self.seed_block is not None:
            object.__setattr__(self, "seed_block", check_int("seed_block", self.seed_block, minimum=0))
        for g in grid:  # every grid point is a valid network under every placement
            self.configs_at(g)

    def configs_at(self, point: Mapping[str, Any]) -> list[MLPConfig]:
        """The network settings at one grid point, one per measured placement."""
        base = self.config.replace(**point)
        return [base.replace(norm=n) for n in (self.norms or (base.norm,))]

    def check_resources(self) -> None:
        """Refuse (before any allocation) a sweep whose networks or duals would not fit in memory."""
        item = 8 if self.dtype == "float64" else 4
        for g in self.grid:
            for cfg in self.configs_at(g):
                check_memory("init_mlp", 2.0 * item * cfg.parameters,
                             hint=f"the network has {cfg.parameters:,} parameters; use a smaller width")
                if self.route == "matrix-free":
                    continue
                n = cfg.outputs * cfg.samples
                r = self.route if self.route != "auto" else ("fast" if cfg.placement.fast else "general")
                check_memory("fisher_dual", dual_memory_bytes(cfg, route=r, itemsize=item),
                             hint=f"the dual F* is {n}×{n}; use route='matrix-free' (--route matrix-free: "
                             "Lanczos without storing F*) or fewer samples T / outputs C")

    def cells(self, seed: int = 0) -> list[dict[str, Any]]:
        """The sweep cells (grid point outer, seed inner), each a JSON-able dict for :func:`fisher_cell`."""
        seed = check_int("seed", seed, minimum=0)
        out = []
        i = 0
        for g in self.grid:
            cell = config_cell(self.config.replace(**g))
            if self.norms is not None:
                del cell["norm"]
                cell["norms"] = list(self.norms)
            cell.update({"dtype": self.dtype, "route": self.route, "vectors": self.vectors})
            if self.keep_max:
                cell["keep_max"] = True
            for _ in range(self.seeds):
                s = seed + i if self.seed_block is None else block_seed(seed, self.seed_block, i)
                out.append({**cell, "seed": s})
                i += 1
        return out


def _row(res: Any, norm: str) -> dict[str, Any]:
    """One row of spectrum statistics from a :class:`~normfield.fisher.result.FisherResult`."""
    row: dict[str, Any] = {"norm_used": norm, "lambda_max": res.lambda_max, "m_lambda": res.m_lambda,
                           "parameters": res.parameters, "trace": res.trace, "route": res.route,
                           "top_cosine": res.top_cosine}
    for key, v in res.output_stats.items():
        if isinstance(v, np.ndarray):  # σ_k of last-layer batch norm: eq. (19)'s Q1, Q2
            row["Q1"] = float(np.sum(v ** -2.0))
            row["Q2"] = float(np.sum(v ** -4.0))
        else:
            row[key] = v
    if res.order_parameters is not None:
        for _, r in res.order_parameters.iterrows():
            l = int(r["layer"])
            row[f"qtilde_st_01_l{l}"] = float(r["qtilde_st_01"])
            row[f"qtilde_st_l{l}"] = float(r["qtilde_st"])
    return row


def fisher_cell(cell: dict) -> list[dict]:
    """One random network and input batch (seed ``cell["seed"]``: the network, then its inputs, from
    one generator) → one row of spectrum statistics per placement in ``cell["norms"]`` (or for
    ``cell["norm"]``).

    Rows: ``norm_used, lambda_max, m_lambda, parameters, trace, route, top_cosine`` (+ ``Q1, Q2`` for
    last-bn, ``eta1..3`` for layer, measured ``qtilde`` columns on the fast route, ``matvecs`` on the
    matrix-free one, ``max_abs_dual, max_abs_dual_none`` with ``keep_max``).
    """
    norms = cell.get("norms") or [cell.get("norm", "none")]
    cfg = cell_config(cell, norms[0])
    dtype = getattr(torch, cell.get("dtype", "float64"))
    device = cell.get("device", "cpu")
    seed = int(cell["seed"])
    route = cell.get("route", "auto")
    k = int(cell.get("k", 1))
    keep_max = bool(cell.get("keep_max"))
    g = torch.Generator().manual_seed(seed)
    params = init_mlp(cfg, g, dtype, device)
    X = sample_inputs(cfg, g, dtype, device)
    vectors = bool(cell.get("vectors", False))
    if route == "auto" and not keep_max and all(n in FAST_NORMS for n in norms):
        res = fisher_dual_variants(params, X, cfg, norms, k=k, vectors=vectors, seed=seed)
        return [_row(res[n], n) for n in norms]
    rows = []
    for n in norms:
        r = fisher_dual(params, X, cfg.replace(norm=n), route=route, k=k, vectors=vectors, keep_dual=keep_max,
                        seed=seed)
        row = _row(r, n)
        if keep_max:
            row["max_abs_dual"] = float(np.abs(r.dual).max())
            ref = fisher_dual(params, X, cfg.replace(norm="none"), k=1, vectors=False, keep_dual=True)
            row["max_abs_dual_none"] = float(np.abs(ref.dual).max())
        rows.append(row)
    return rows
