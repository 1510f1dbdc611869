"""The teacher–student learning-rate grid of Karakida et al. 2019, §3.4 (Fig. 2, Fig. S.2).

Settings → cells → rows: :class:`LRGridSettings` lists one sweep cell per
(normalization, width, seed); :func:`lr_grid_cell` trains every learning rate of
that cell together (:func:`normfield.train.students.train_students`) and returns
one row per run with its outcome (:mod:`normfield.train.outcomes`), the sharpness
λ_max of the student's Fisher at initialization and at the end, and the theory
line. The sweep that runs the cells is :func:`normfield.experiments.train.run_lr_grid`.

Gradient descent can converge only if

    η < 2 / λ_max                                    (Karakida et al. 2019, eq. (23)),

with λ_max ≈ α((T−1)/T κ2 + κ1/T) M without normalization (Thm 2.2, eq. (10))
and λ_max ≥ ρα(κ1 − κ2) with last-layer mean subtraction (Thm 3.3, eq. (18)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from normfield.core.activations import get_activation
from normfield.core.seeding import block_seed, derive_seed
from normfield.core.validation import check_choice, check_float, check_int
from normfield.errors import NormfieldError
from normfield.train.outcomes import classify_run, constant_loss, loss_shape, output_diagnostics
from normfield.train.students import EXPLODE_AT, LR_GRID_NORMS, train_students

__all__ = ["LR_GRID_NORMS", "EXPLODE_AT", "LRGridSettings", "lr_grid_cell", "summarize_lr_grid", "eta_theory",
           "log_lrs"]


def log_lrs(lo: float, hi: float, per_decade: int = 4) -> list[float]:
    """Log-spaced learning rates from ``lo`` to ``hi`` with ``per_decade`` points per decade."""
    lo = check_float("lr_min", lo, minimum=0.0, strict_min=True)
    hi = check_float("lr_max", hi, minimum=lo)
    per_decade = check_int("per_decade", per_decade, minimum=1, maximum=100)
    n = int(round(math.log10(hi / lo) * per_decade)) + 1
    return [float(v) for v in np.logspace(math.log10(lo), math.log10(hi), max(n, 1))]


@dataclass(frozen=True)
class LRGridSettings:
    """One learning-rate grid (defaults: the paper's, Karakida et al. 2019, Fig. 2).

    Attributes:
        widths: hidden widths M (also the input dimension, α_0 = 1).
        lrs: learning rates η, all trained together per cell.
        norms: subset of ``("none", "last-mean")``.
        replicates: trial indices r in [0, 1000); the cell seed is ``1000·seed + r``
            (:func:`normfield.core.seeding.block_seed`), Fig. S.2 takes the minimum over trials.
        steps: full-batch GD steps (1000); samples: T (1000); depth: L (3);
        sw2, sb2: (σ_w², σ_b²) = (4, 1); activation: "relu"; dtype: "float64".
    """

    widths: tuple[int, ...]
    lrs: tuple[float, ...]
    norms: tuple[str, ...] = LR_GRID_NORMS
    replicates: tuple[int, ...] = (0,)
    steps: int = 1000
    samples: int = 1000
    depth: int = 3
    sw2: float = 4.0
    sb2: float = 1.0
    activation: str = "relu"
    dtype: str = "float64"

    def __post_init__(self) -> None:
        put = object.__setattr__
        widths = tuple(check_int("widths", w, minimum=2, maximum=100_000) for w in self.widths)
        if not widths:
            raise NormfieldError("widths must not be empty", argument="widths")
        lrs = tuple(check_float("lrs", v, minimum=0.0, strict_min=True) for v in self.lrs)
        if not lrs:
            raise NormfieldError("lrs must not be empty", argument="lrs")
        put(self, "widths", widths)
        put(self, "lrs", lrs)
        put(self, "norms", tuple(check_choice("norms", n, LR_GRID_NORMS) for n in self.norms))
        put(self, "replicates", tuple(check_int("seeds", s, minimum=0, maximum=999) for s in self.replicates))
        put(self, "steps", check_int("steps", self.steps, minimum=1))
        put(self, "samples", check_int("samples", self.samples, minimum=2))
        put(self, "depth", check_int("depth", self.depth, minimum=2, maximum=100))
        put(self, "sw2", check_float("sw2", self.sw2, minimum=0.0, strict_min=True))
        put(self, "sb2", check_float("sb2", self.sb2, minimum=0.0))
        put(self, "dtype", check_choice("dtype", self.dtype, ("float64", "float32")))
        get_activation(self.activation)
        put(self, "activation", str(self.activation))

    def cell_seeds(self, seed: int = 0) -> list[int]:
        """Cell seeds ``1000·seed + r`` for the replicates r."""
        return [block_seed(seed, 0, r, block_size=1000, stride=1000) for r in self.replicates]

    def cells(self, seed: int = 0) -> list[dict[str, Any]]:
        """One cell per (norm, width, replicate), in that nesting order, for :func:`lr_grid_cell`."""
        return [dict(norm=n, width=w, seed=s, lrs=list(self.lrs), steps=self.steps, samples=self.samples,
                     depth=self.depth, sw2=self.sw2, sb2=self.sb2, activation=self.activation, dtype=self.dtype)
                for n in self.norms for w in self.widths for s in self.cell_seeds(seed)]


def _config(cell: dict):
    from normfield.fisher.networks import MLPConfig

    return MLPConfig(activation=cell.get("activation", "relu"), sw2=float(cell["sw2"]), sb2=float(cell["sb2"]),
                     depth=int(cell["depth"]), width=int(cell["width"]), outputs=1, samples=int(cell["samples"]),
                     norm=cell["norm"])


def eta_theory(activation: Any, sw2: float, sb2: float, depth: int, width: int, samples: int, norm: str) -> float:
    """The theoretical learning-rate limit 2/λ_max drawn in Karakida et al. 2019, Fig. 2.

    * ``norm="none"``: λ_max = α((T−1)/T κ2 + κ1/T) M (Thm 2.2, eq. (10));
    * ``norm="last-mean"``: λ_max's lower bound ρα(κ1 − κ2), ρ = M/T (Thm 3.3, eq. (18)),
      as in the paper's Fig. 2 (right).

    α_l = C = 1, so α = L − 1 (eq. (10)); κ1, κ2 from eq. (11) via
    :func:`normfield.order_parameters`.
    """
    from normfield.fisher.order_params import order_parameters

    norm = check_choice("norm", norm, LR_GRID_NORMS)
    op = order_parameters(activation, sw2, sb2, depth)
    k1, k2, alpha = float(op.kappa1), float(op.kappa2), float(op.alpha)
    M, T = float(width), float(samples)
    if norm == "none":
        lam = alpha * ((T - 1) / T * k2 + k1 / T) * M
    else:
        lam = (M / T) * alpha * (k1 - k2)
    return 2.0 / lam


def lr_grid_cell(cell: dict) -> list[dict]:
    """One column of the grid: one width, one normalization, one seed, all learning rates.

    Cell keys: ``width, norm, seed, lrs (list), steps, samples, depth, sw2, sb2,
    activation, dtype, device``. Inputs X ~ N(0, 1) of shape (T, M) (eq. (3),
    α_0 = 1), teacher and student drawn independently by ``init_mlp`` (eq. (2)),
    seeds ``derive_seed(seed, M, role)`` with role 0 (inputs), 1 (teacher), 2 (student);
    λ_max of the student's Fisher F = (1/T) JᵀJ (eq. (8)) as the top eigenvalue of the
    exact dual J Jᵀ / T (``fisher_dual``).

    Returns:
        One row per learning rate: ``lr, final_loss, initial_loss, min_loss, steps_run,
        exploded``; ``lambda_max`` (at init), ``eta_emp`` = 2/λ_max, ``eta_theory``;
        ``outcome``, ``collapse_detector``, ``constant_loss``, ``output_var_ratio``,
        ``dead_unit_fraction`` (:mod:`normfield.train.outcomes`); ``lambda_max_end`` (the
        trained student's λ_max, NaN for exploded runs) and ``eta_lambda_end`` = η·λ_max(end);
        ``loss_rose``, ``monotone``, ``peak_loss_ratio`` (the loss history's shape).
    """
    from normfield.fisher.dual import fisher_dual
    from normfield.fisher.networks import init_mlp, mlp_forward

    dtype = {"float64": torch.float64, "float32": torch.float32}[cell.get("dtype", "float64")]
    device = torch.device(cell.get("device", "cpu"))
    cfg = _config(cell)
    act = cell.get("activation", "relu")
    M, T, seed = int(cell["width"]), int(cell["samples"]), int(cell["seed"])
    gx = torch.Generator(device="cpu").manual_seed(derive_seed(seed, M, 0))
    X = torch.randn(T, M, generator=gx, dtype=torch.float64).to(dtype=dtype, device=device)
    teacher = init_mlp(cfg, derive_seed(seed, M, 1), dtype, device)
    student = init_mlp(cfg, derive_seed(seed, M, 2), dtype, device)
    with torch.no_grad():
        y = mlp_forward(teacher, X, cfg).reshape(T, -1)

    def lam_of(params) -> float:
        return float(fisher_dual(params, X, cfg, k=1, vectors=False, keep_dual=False).lambda_max)

    lam = lam_of(student)
    run = train_students(student, X, y, cell["lrs"], steps=int(cell["steps"]), norm=cfg.norm, activation=act,
                         return_params=True)
    df = run.to_frame()
    df["lambda_max"] = lam
    df["eta_emp"] = 2.0 / lam
    df["eta_theory"] = eta_theory(act, cfg.sw2, cfg.sb2, cfg.depth, M, T, cfg.norm)
    e_const = constant_loss(y)
    extra: list[dict] = []
    for k in range(len(df)):
        row: dict[str, Any] = {"constant_loss": e_const, **loss_shape(run.losses[k])}
        if run.exploded[k]:
            row.update(outcome="exploded", collapse_detector="", output_var_ratio=math.nan,
                       dead_unit_fraction=math.nan, lambda_max_end=math.nan)
        else:
            p = run.student(k)
            diag = output_diagnostics(p, X, y, activation=act, norm=cfg.norm)
            outcome, detector = classify_run(float(run.final_loss[k]), float(run.initial_loss[k]), e_const,
                                             all_dead_layer=bool(diag["all_dead_layer"]),
                                             output_var_ratio=diag["output_var_ratio"], explode_at=EXPLODE_AT)
            row.update(outcome=outcome, collapse_detector=detector, output_var_ratio=diag["output_var_ratio"],
                       dead_unit_fraction=diag["dead_unit_fraction"], lambda_max_end=lam_of(p))
        row["eta_lambda_end"] = float(run.lrs[k]) * row["lambda_max_end"]
        extra.append(row)
    return pd.concat([df, pd.DataFrame(extra)], axis=1).to_dict("records")


def summarize_lr_grid(df: pd.DataFrame, *, explode_at: float = EXPLODE_AT) -> pd.DataFrame:
    """Per (norm, width): the S.2 summary over seeds.

    Columns: ``norm, width, eta_emp`` (median over seeds of 2/λ_max at init),
    ``eta_theory``, ``largest_stable_lr`` (largest η whose minimum-over-seeds
    final loss is finite and ≤ ``explode_at``; NaN if none), ``smallest_exploded_lr``;
    where the rows carry ``outcome``: ``largest_converged_lr`` (largest η at which some
    seed converged, Fig. S.2's best over trials), ``converged_up_to_factor`` (that η over
    ``eta_emp``), ``stop_converging_factor`` (the next η of the grid over ``eta_emp``: where
    runs stop converging; NaN if the grid ends first), and the counts ``runs_converged``,
    ``runs_collapsed``, ``runs_exploded``, ``runs_unconverged``.
    """
    rows = []
    for (norm, width), g in df.groupby(["norm", "width"], sort=True):
        best = g.groupby("lr")["final_loss"].min()  # Fig. S.2: minimum over trials
        ok = best[np.isfinite(best.values) & (best.values <= explode_at)]
        bad = best[~(np.isfinite(best.values) & (best.values <= explode_at))]
        eta_emp = float(g.groupby("seed")["eta_emp"].first().median())
        row = {
            "norm": norm, "width": int(width), "eta_emp": eta_emp,
            "eta_theory": float(g["eta_theory"].iloc[0]) if "eta_theory" in g else math.nan,
            "largest_stable_lr": float(ok.index.max()) if len(ok) else math.nan,
            "smallest_exploded_lr": float(bad.index.min()) if len(bad) else math.nan,
        }
        if "outcome" in g:
            conv = g[g["outcome"] == "converged"]["lr"]
            top = float(conv.max()) if len(conv) else math.nan
            grid = np.sort(g["lr"].unique())
            above = grid[grid > top] if math.isfinite(top) else grid
            row.update(largest_converged_lr=top, converged_up_to_factor=top / eta_emp,
                       stop_converging_factor=float(above[0]) / eta_emp if above.size else math.nan,
                       **{f"runs_{o}": int((g["outcome"] == o).sum())
                          for o in ("converged", "collapsed", "exploded", "unconverged")})
        rows.append(row)
    return pd.DataFrame(rows)
