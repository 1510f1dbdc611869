"""BN-MLP training as sweep cells (Joudaki et al. 2023, §6.2, Figs. 6–8): settings → cells → long frame.

:class:`BNTrainSettings` lists one cell per variant (with / without BN) for
:func:`bn_mlp_cell`, and the initialization-only cells of :func:`init_entropy_cell`
(Fig. 7's entropy over many initializations). The sweep that runs them is
:func:`normfield.experiments.train.run_bn_mlp`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from normfield.core.seeding import block_seed
from normfield.core.validation import check_choice, check_int
from normfield.errors import NormfieldError
from normfield.train.bn_mlp import BNMLP, BNMLPConfig, TrainResult, measure, train_bn_mlp

__all__ = ["BNTrainSettings", "bn_mlp_cell", "init_entropy_cell", "result_to_long", "split_long"]

_CFG_FIELDS = tuple(f.name for f in dataclasses.fields(BNMLPConfig))


@dataclass(frozen=True)
class BNTrainSettings:
    """The two-variant BN-MLP experiment.

    Attributes:
        config: shared run settings; ``batchnorm`` is set per variant and ``seed`` by
            :meth:`cells` (the seed passed there replaces ``config.seed``).
        dataset: ``"digits"`` or ``"cifar100"`` (``"cifar100"`` whenever ``data_dir`` is set).
        data_dir: folder of the CIFAR-100 python-format files, or None.
        variants: which ``batchnorm`` values to train.
        checkpoint_dir: root for per-variant checkpoints (``bn1-seedS``/``bn0-seedS``), or None.
    """

    config: BNMLPConfig = field(default_factory=BNMLPConfig)
    dataset: str = "digits"
    data_dir: str | None = None
    variants: tuple[bool, ...] = (True, False)
    checkpoint_dir: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.config, BNMLPConfig):
            raise NormfieldError("config must be a BNMLPConfig", argument="config")
        self.config.validated()
        put = object.__setattr__
        if self.data_dir is not None:
            put(self, "data_dir", str(self.data_dir))
            put(self, "dataset", "cifar100")
        put(self, "dataset", check_choice("dataset", self.dataset, ("digits", "cifar100")))
        variants = tuple(self.variants)
        if not variants or any(not isinstance(v, bool) for v in variants):
            raise NormfieldError(f"variants must be a non-empty tuple of True/False, got {self.variants!r}",
                                 argument="variants")
        put(self, "variants", variants)
        if self.checkpoint_dir is not None:
            put(self, "checkpoint_dir", str(self.checkpoint_dir))

    def cells(self, seed: int = 0) -> list[dict[str, Any]]:
        """One cell per variant: the config fields (``seed`` = ``seed``), dataset, data_dir, checkpoint_dir."""
        seed = check_int("seed", seed, minimum=0)
        out = []
        for bn in self.variants:
            out.append({**self.config.to_dict(), "seed": seed, "batchnorm": bool(bn), "dataset": self.dataset,
                        "data_dir": self.data_dir,
                        "checkpoint_dir": None if self.checkpoint_dir is None else
                        str(Path(self.checkpoint_dir) / f"bn{int(bn)}-seed{seed}")})
        return out

    def init_entropy_cells(self, seed: int = 0, replicates: int = 16) -> list[dict[str, Any]]:
        """Initialization-only cells, per variant ``replicates`` seeds ``1000·seed + 500 + r``."""
        replicates = check_int("replicates", replicates, minimum=1, maximum=500)
        base = {k: v for k, v in self.config.to_dict().items() if k not in ("batchnorm", "seed")}
        return [dict(base, batchnorm=bool(bn), seed=block_seed(seed, 0, 500 + r, block_size=1000, stride=1000),
                     dataset=self.dataset, data_dir=self.data_dir)
                for bn in self.variants for r in range(replicates)]


def _config_of(cell: dict) -> BNMLPConfig:
    return BNMLPConfig(**{k: cell[k] for k in _CFG_FIELDS if k in cell})


def bn_mlp_cell(cell: dict) -> pd.DataFrame:
    """One training run as a sweep cell (module-level, picklable).

    Cell keys: the :class:`BNMLPConfig` fields, ``dataset`` (``"digits"``/``"cifar100"``),
    ``data_dir`` (None or a path), ``checkpoint_dir`` (None or a path), ``device``.

    Returns:
        Long tidy frame: ``quantity`` (``train_loss``, ``loss``, ``entropy``,
        ``log_eig_mean``, ``log_eig_std``, ``eigenvalue``), ``epoch``, ``index``
        (eigenvalue rank, −1 for scalars), ``value``, ``num_classes``.
    """
    from normfield.train.data import load_dataset

    cfg = _config_of(cell)
    data = load_dataset(cell.get("dataset", "digits"), data_dir=cell.get("data_dir"))
    res = train_bn_mlp(data, cfg, checkpoint_dir=cell.get("checkpoint_dir"), device=cell.get("device", "cpu"),
                       progress=bool(cell.get("progress", False)))
    return result_to_long(res, data.num_classes)


def result_to_long(res: TrainResult, num_classes: int) -> pd.DataFrame:
    """:class:`TrainResult` → the long tidy frame of :func:`bn_mlp_cell`."""
    m = res.metrics.melt(id_vars=["epoch"], var_name="quantity", value_name="value").dropna(subset=["value"])
    m["index"] = -1
    e = res.eigenvalues.rename(columns={"eigenvalue": "value"})
    e["quantity"] = "eigenvalue"
    out = pd.concat([m[["quantity", "epoch", "index", "value"]], e[["quantity", "epoch", "index", "value"]]],
                    ignore_index=True)
    out["num_classes"] = num_classes
    return out


def split_long(df: pd.DataFrame, keys: tuple[str, ...] = ("batchnorm",)) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Long frame (one or more runs, told apart by ``keys``) → (per-epoch metrics, eigenvalues)."""
    keys = tuple(k for k in keys if k in df.columns)
    scal = df[df["quantity"] != "eigenvalue"]
    metrics = scal.pivot_table(index=[*keys, "epoch"], columns="quantity", values="value", aggfunc="first",
                               dropna=False).reset_index()
    metrics.columns.name = None
    eig = df[df["quantity"] == "eigenvalue"][[*keys, "epoch", "index", "value"]].rename(
        columns={"value": "eigenvalue"}).reset_index(drop=True)
    eig["index"] = eig["index"].astype(int)
    return metrics, eig


def init_entropy_cell(cell: dict) -> list[dict]:
    """Predicted-class entropy at initialization only (no training), one seed: a sweep cell.

    Cell keys: the :class:`BNMLPConfig` fields (``seed`` picks the initialization),
    ``dataset``, ``data_dir``, ``device``. Predictions are made as in
    :func:`normfield.train.bn_mlp.train_bn_mlp` (mini-batches of ``batch_size`` over the
    evaluation subset, batch statistics).
    """
    from normfield.train.data import load_dataset

    cfg = _config_of(cell).validated()
    data = load_dataset(cell.get("dataset", "digits"), data_dir=cell.get("data_dir"))
    dt = {"float32": torch.float32, "float64": torch.float64}[cfg.dtype]
    dev = torch.device(cell.get("device", "cpu"))
    model = BNMLP(data.num_features, data.num_classes, cfg, torch.Generator().manual_seed(cfg.seed)).to(dev, dt)
    g_sub = torch.Generator().manual_seed(cfg.seed + 7919)
    perm = torch.randperm(len(data), generator=g_sub)
    n_eval = len(data) if cfg.eval_samples is None else min(cfg.eval_samples, len(data))
    idx = perm[:n_eval].sort().values
    x = torch.as_tensor(data.x, dtype=dt)[idx].to(dev)
    y = torch.as_tensor(data.y)[idx].to(dev)
    m = measure(model, x, y, None, cfg.batch_size, data.num_classes)
    return [{"entropy": m["entropy"], "loss": m["loss"], "num_classes": data.num_classes}]
