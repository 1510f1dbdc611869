"""Training experiments: the learning-rate grid (Karakida et al. 2019, Fig. 2) and BN-MLP
training (Joudaki et al. 2023, Figs. 6–8), each settings → cells → sweep → frame.

``sweep`` is a callable ``(fn, cells, *, name) -> DataFrame`` (a claim passes
``ctx.sweep``); by default :func:`normfield.runner.run_sweep` with ``sweep_options``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from normfield.train.bn_cells import BNTrainSettings, bn_mlp_cell, init_entropy_cell, split_long
from normfield.train.bn_mlp import BNMLPConfig
from normfield.train.lr_grid import LR_GRID_NORMS, LRGridSettings, lr_grid_cell

__all__ = ["run_lr_grid", "lr_grid", "run_bn_mlp", "bn_experiment", "run_init_entropy", "BNVariants",
           "train_bn_variants", "bn_verdict_inputs"]

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


def run_bn_mlp(settings: BNTrainSettings, *, seed: int = 0, sweep: Sweep | None = None,
               **sweep_options: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train the MLP with and without BN (Joudaki et al. 2023, §6.2) through the sweep.

    Returns:
        ``(metrics, eigenvalues)``: per-epoch metrics with ``batchnorm`` and ``num_classes``
        columns, and the Gram eigenvalues (``batchnorm, epoch, index, eigenvalue``).
    """
    df = _sweeper(sweep, sweep_options)(bn_mlp_cell, settings.cells(seed), name="bn-mlp")
    metrics, eig = split_long(df)
    nc = df.groupby("batchnorm")["num_classes"].first()
    metrics["num_classes"] = metrics["batchnorm"].map(nc)
    return metrics, eig


def bn_experiment(
    config: BNMLPConfig = BNMLPConfig(),
    *,
    dataset: str = "digits",
    data_dir: str | Path | None = None,
    variants: tuple[bool, ...] = (True, False),
    checkpoint_dir: str | Path | None = None,
    sweep: Sweep | None = None,
    **sweep_options: Any,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`run_bn_mlp` from keyword settings, seeded by ``config.seed``."""
    settings = BNTrainSettings(config=config, dataset=dataset, data_dir=None if data_dir is None else str(data_dir),
                               variants=tuple(bool(v) for v in variants),
                               checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir))
    return run_bn_mlp(settings, seed=config.seed, sweep=sweep, **sweep_options)


def run_init_entropy(settings: BNTrainSettings, *, seed: int = 0, replicates: int = 16, sweep: Sweep | None = None,
                     **sweep_options: Any) -> pd.DataFrame:
    """Predicted-class entropy at initialization over ``replicates`` networks per variant (Fig. 7).

    Returns:
        One row per (variant, initialization): the cell keys and ``entropy``, ``loss``, ``num_classes``.
    """
    cells = settings.init_entropy_cells(seed, replicates)
    return _sweeper(sweep, sweep_options)(init_entropy_cell, cells, name="bn-mlp-init-entropy")


@dataclass
class BNVariants:
    """The variants of one BN-MLP configuration trained in this process (with checkpoints).

    Attributes:
        metrics: per-epoch metrics with a ``batchnorm`` column; eigenvalues: the Gram spectra.
        resumed_from: ``{"BN"/"noBN": epoch resumed from, or None}``.
        dataset, samples, num_classes: the data trained on.
    """

    metrics: pd.DataFrame
    eigenvalues: pd.DataFrame
    resumed_from: dict[str, int | None]
    dataset: str
    samples: int
    num_classes: int


def train_bn_variants(config: BNMLPConfig, *, data_dir: str | Path | None = None,
                      variants: tuple[bool, ...] = (True, False), checkpoint_root: str | Path | None = None,
                      resume: bool = True, device: str = "cpu", progress: bool = True) -> BNVariants:
    """Train ``config`` with and/or without BN one after the other (no sweep), resuming from
    ``checkpoint_root/checkpoints/{dataset}-bn{0,1}-seed{seed}``; CIFAR-100 when ``data_dir`` is set,
    else the embedded digits."""
    from normfield.train.bn_mlp import train_bn_mlp
    from normfield.train.data import load_dataset

    data = load_dataset("cifar100" if data_dir is not None else "digits", data_dir=data_dir)
    metrics, eigs, resumed = [], [], {}
    for bn in variants:
        c = BNMLPConfig(**{**config.to_dict(), "batchnorm": bn})
        ckpt = None if checkpoint_root is None else \
            Path(checkpoint_root) / "checkpoints" / f"{data.name}-bn{int(bn)}-seed{config.seed}"
        res = train_bn_mlp(data, c, checkpoint_dir=ckpt, resume=resume, device=device, progress=progress)
        metrics.append(res.metrics.assign(batchnorm=bn))
        eigs.append(res.eigenvalues.assign(batchnorm=bn))
        resumed["BN" if bn else "noBN"] = res.resumed_from
    return BNVariants(pd.concat(metrics, ignore_index=True), pd.concat(eigs, ignore_index=True), resumed, data.name,
                      len(data), data.num_classes)


def bn_verdict_inputs(run: BNVariants, config: BNMLPConfig) -> dict[str, Any]:
    """The numbers J-fig6/7/8 judge, read off ``run``, plus the mean-field entropy at initialization
    (:func:`normfield.gram.bn_theory.entropy_at_init_theory`) when the BN variant was trained."""
    from normfield.gram.bn_theory import entropy_at_init_theory

    m = run.metrics
    last = int(m["epoch"].max())
    variants = list(dict.fromkeys(bool(v) for v in m["batchnorm"]))

    def val(bn: bool, ep: int, col: str) -> float:
        s = m[(m["batchnorm"] == bn) & (m["epoch"] == ep)][col]
        return float(s.iloc[0]) if len(s) else math.nan

    out: dict[str, Any] = {"num_classes": run.num_classes, "log2_C": math.log2(run.num_classes)}
    for bn in variants:
        k = "BN" if bn else "noBN"
        out.update({
            f"log_eig_std_init_{k}": val(bn, 0, "log_eig_std"), f"log_eig_std_end_{k}": val(bn, last, "log_eig_std"),
            f"entropy_init_{k}": val(bn, 0, "entropy"), f"loss_init_{k}": val(bn, 0, "loss"),
            f"loss_end_{k}": val(bn, last, "loss")})
    if True in variants:
        th = entropy_at_init_theory(config.activation, config.batch_size, run.num_classes, config.width,
                                    draws=1000 if run.num_classes <= 20 else 300, seed=config.seed)
        out["mean_field_entropy_init_BN"] = th["mean"]
        out["mean_field_entropy_sd"] = th["sd"]
    return out
