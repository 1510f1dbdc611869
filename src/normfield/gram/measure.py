"""Measurements on simulated Gram chains (Joudaki et al. 2023, §4–6).

:func:`gram_chain` turns the Gram matrices of :func:`normfield.gram.chain.simulate_chain`
into a tidy DataFrame of the paper's measurements (distance to the fixed point ``G*`` of
eq. (10), to the mean-field trajectory of eq. (3), condition number, spectrum);
:func:`summarize_chain` gives mean and 5%/95% quantiles per layer.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from normfield.core.activations import Activation, get_activation
from normfield.errors import NormfieldError
from normfield.gram.chain import ChainResult, simulate_chain
from normfield.gram.fixed_point import fixed_point
from normfield.gram.meanfield import gram_map

__all__ = ["gram_chain", "summarize_chain", "mean_field_from"]


def _fixed_point_matrix(activation: Activation, n: int) -> np.ndarray:
    """Exact G* of Joudaki et al. eq. (10)."""
    return np.asarray(fixed_point(activation, n).matrix, dtype=np.float64)


def mean_field_from(G0: np.ndarray, activation: Activation, depth: int, norm: str, **kw: Any) -> np.ndarray:
    """Mean-field Gram trajectory 𝒢_0 = G0, 𝒢_{l+1} = 𝒢(𝒢_l) (Joudaki et al. eq. 3).

    ``G0`` is the simulated Gram at layer 0 (so the rows of h_1 are
    N(0, G0)); returns ``(depth+1, n, n)``. Same as
    :func:`normfield.gram.meanfield.mean_field_trajectory`, except that under
    BN with ``method="mc"``, once a Monte Carlo step lands within its own
    error of the fixed point G* (‖𝒢_l − G*‖_F <= 3 ‖stderr‖_F), the trajectory
    is continued as the exact G* (the attracting fixed point of eq. 10):
    further Monte Carlo steps would only add noise around it.
    """
    out = np.empty((depth + 1,) + G0.shape)
    out[0] = G0
    Gs = _fixed_point_matrix(activation, G0.shape[0]) if norm == "bn" else None
    kw = dict(kw)
    seed0 = int(kw.pop("seed", 0))
    for l in range(depth):
        G, err = gram_map(out[l], activation, norm=norm, return_error=True, seed=seed0 + l + 1, **kw)
        out[l + 1] = G
        if Gs is not None and np.ndim(err) == 2 and np.linalg.norm(G - Gs) <= 3 * np.linalg.norm(err):
            out[l + 1:] = Gs
            break
    return out


def gram_chain(
    activation: str | Activation,
    width: int,
    batch: int,
    depth: int,
    *,
    seeds: int = 10,
    norm: str = "bn",
    engine: str = "fast",
    inputs: str | np.ndarray | torch.Tensor = "gaussian",
    eps: float = 0.0,
    dtype: str = "float64",
    device: str = "cpu",
    seed: int = 0,
    mean_field: bool = True,
    spectrum: bool = False,
    mean_field_options: dict | None = None,
    result: ChainResult | None = None,
) -> pd.DataFrame:
    """Simulate chains and return the paper's measurements as a tidy DataFrame.

    Metrics per seed and layer (Joudaki et al. 2023, §4–6):

    * ``dist_fixed_point`` = ‖G_l − G*‖_F with the exact G* of eq. (10)
      (BN only; absent otherwise: without BN there is no G*);
    * ``dist_mean_field`` = ‖G_l − 𝒢_l‖_F, 𝒢 the mean-field trajectory of
      eq. (3) started from the same G_0 (when ``mean_field``);
    * ``condition_number`` = κ(G_l) = λ_max/λ_min (inf if singular);
    * ``eig_1`` … ``eig_n`` (largest first) when ``spectrum``.

    Args:
        activation, width, batch, depth, seeds, norm, engine, inputs, eps,
        dtype, device, seed: as in :func:`simulate_chain`.
        mean_field: compute the mean-field distance (one trajectory per seed).
        spectrum: add the eigenvalues of every G_l.
        mean_field_options: keyword options for ``gram_map`` (e.g. samples).
        result: reuse an existing :class:`ChainResult` instead of simulating.

    Returns:
        DataFrame with columns ``seed, layer, metric, value`` plus the
        settings (activation, width, batch, depth, norm, engine, dtype).
    """
    act = get_activation(activation)
    if result is None:
        result = simulate_chain(act, width, batch, depth, seeds=seeds, norm=norm, engine=engine, inputs=inputs,
                                eps=eps, dtype=dtype, device=device, seed=seed)
    st = result.settings
    grams, layers = result.grams, result.layers
    K, R, n, _ = grams.shape
    frames: list[pd.DataFrame] = []

    def add(metric: str, values: np.ndarray) -> None:
        frames.append(pd.DataFrame({
            "seed": np.repeat(np.arange(K), R), "layer": np.tile(layers, K),
            "metric": metric, "value": values.reshape(-1),
        }))

    if st["norm"] == "bn":
        Gs = _fixed_point_matrix(act, n)
        add("dist_fixed_point", np.linalg.norm(grams - Gs, axis=(-2, -1)))
    if mean_field:
        if layers[0] != 0 or np.any(np.diff(layers) != 1):
            raise NormfieldError("the mean-field distance needs every layer recorded from 0", argument="mean_field")
        dmf = np.empty((K, R))
        for k in range(K):
            traj = mean_field_from(grams[k, 0], act, int(layers[-1]), st["norm"], **(mean_field_options or {}))
            dmf[k] = np.linalg.norm(grams[k] - traj, axis=(-2, -1))
        add("dist_mean_field", dmf)
    ev = np.linalg.eigvalsh(grams)[..., ::-1]  # (K, R, n) largest first
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = np.where(ev[..., -1] > 0, ev[..., 0] / ev[..., -1], np.inf)
    add("condition_number", kappa)
    if spectrum:
        for i in range(n):
            add(f"eig_{i + 1}", ev[..., i])
    df = pd.concat(frames, ignore_index=True)
    for key in ("activation", "width", "batch", "depth", "norm", "engine", "dtype", "inputs"):
        df[key] = st[key]
    return df


def summarize_chain(df: pd.DataFrame, *, by: Sequence[str] = ("layer",), level: float = 0.90) -> pd.DataFrame:
    """Mean and central ``level`` band (default 5%/95% quantiles) over seeds.

    Args:
        df: output of :func:`gram_chain` (columns seed, layer, metric, value, ...).
        by: grouping columns besides ``metric`` (e.g. ``("width", "layer")``).
        level: central coverage of the band.

    Returns:
        DataFrame with columns ``*by, metric, mean, q05, q95, sem, count``.
    """
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    keys = [*by, "metric"]
    g = df.groupby(keys, sort=True)["value"]
    out = pd.DataFrame({
        "mean": g.mean(), "q05": g.quantile(lo), "q95": g.quantile(hi),
        "sem": g.std(ddof=1) / np.sqrt(g.count()), "count": g.count(),
    }).reset_index()
    return out
