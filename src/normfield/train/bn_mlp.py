"""Batch normalization during training: Joudaki et al. 2023, §6.2, Figs. 6–8.

An MLP of ``depth`` linear layers of width ``width`` with ReLU; in the BN variant a
BatchNorm sits between each hidden linear layer and its activation,
h ↦ σ(BN(W h + b)) (the paper's chain, eq. (1), with trainable affine BN). It is
trained by plain SGD (no momentum) with cross-entropy on mini-batches, and at
initialization, after every epoch and at the end we log:

* the loss on a fixed evaluation subset of the training data, and the mean
  mini-batch training loss of the epoch (Fig. 8);
* the predicted-class entropy H = −Σ_c p_c log2 p_c with p_c the fraction of
  evaluation samples whose argmax prediction is c (§6.2, Fig. 7; H ≤ log2 C);
* the eigenvalues of the penultimate Gram matrix G = H Hᵀ / d of a fixed batch
  of n samples, H ∈ R^{n×d} the activations entering the last linear layer
  (eq. (2); Fig. 6), and the spread (standard deviation) of log λ_i(G); this forward
  pass runs in float64 whatever the training dtype. With d < n, G has n − d zero
  eigenvalues (floored at 1e-15·λ_max), so use width >= gram_batch.

Measurements use batch statistics of the measured batch (as in the mean-field
theory and as in training) without touching BN's running averages, so
measuring never changes the training trajectory.

Weights are initialised like ``torch.nn.Linear``'s default (W, b ~ U(±1/√fan_in)),
the "standard MLP" the paper trains, but from an explicit ``torch.Generator``.
Training checkpoints after every epoch (atomic: temp file + ``os.replace``) and
resumes from the last checkpoint; model (with BN running averages), data-order
generator and history are restored (plain SGD has no state), so on CPU a killed-and-resumed run ends bitwise equal to
an uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from normfield.core.activations import get_activation
from normfield.core.validation import check_choice, check_device, check_float, check_int, check_memory
from normfield.errors import NormfieldError
from normfield.train.data import Dataset

__all__ = ["BNMLPConfig", "BNMLP", "TrainResult", "train_bn_mlp", "class_entropy", "gram_eigenvalues",
           "measure", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"
_CKPT_VERSION = 1


@dataclass(frozen=True)
class BNMLPConfig:
    """Settings of one BN-MLP training run (defaults: the paper's, Joudaki et al. §6.2).

    Attributes:
        depth: number of linear layers (10): depth − 1 hidden layers, then the readout.
        width: hidden width d (1000).
        batchnorm: BatchNorm between each hidden linear layer and its activation.
        activation: hidden activation name ("relu").
        lr: SGD learning rate (1e-3), no momentum, no weight decay.
        batch_size: mini-batch size n (128); the last incomplete batch of an
            epoch is dropped (BN needs >= 2 samples).
        epochs: number of passes over the data (50).
        seed: seeds the initialization, the data order and the measured subsets.
        gram_every: measure the Gram spectrum every this many epochs (and at
            initialization and at the end).
        gram_batch: n, rows of the measured penultimate Gram matrix (128).
        eval_samples: size of the fixed evaluation subset for loss and entropy
            (None: the whole training split).
        dtype: "float32" (default, as in practice) or "float64".
    """

    depth: int = 10
    width: int = 1000
    batchnorm: bool = True
    activation: str = "relu"
    lr: float = 1e-3
    batch_size: int = 128
    epochs: int = 50
    seed: int = 0
    gram_every: int = 5
    gram_batch: int = 128
    eval_samples: int | None = 10000
    dtype: str = "float32"

    def validated(self) -> "BNMLPConfig":
        """Return self after checking every field (NormfieldError names the field)."""
        check_int("depth", self.depth, minimum=2, maximum=1000)
        check_int("width", self.width, minimum=2, maximum=1_000_000)
        if not isinstance(self.batchnorm, bool):
            raise NormfieldError(f"batchnorm must be True or False, got {self.batchnorm!r}", argument="batchnorm")
        get_activation(self.activation)
        check_float("lr", self.lr, minimum=0.0, strict_min=True)
        check_int("batch_size", self.batch_size, minimum=2)
        check_int("epochs", self.epochs, minimum=1, maximum=100_000)
        check_int("seed", self.seed, minimum=0)
        check_int("gram_every", self.gram_every, minimum=1)
        check_int("gram_batch", self.gram_batch, minimum=2)
        if self.eval_samples is not None:
            check_int("eval_samples", self.eval_samples, minimum=2)
        check_choice("dtype", self.dtype, ("float32", "float64"))
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class BNMLP(torch.nn.Module):
    """depth linear layers; hidden ones followed by [BatchNorm1d] and the activation.

    Shapes: input (n, D) → logits (n, C). :meth:`penultimate` returns the (n, d)
    activations entering the readout.
    """

    def __init__(self, in_features: int, num_classes: int, config: BNMLPConfig,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config
        self.act = get_activation(config.activation)
        dims = [in_features] + [config.width] * (config.depth - 1) + [num_classes]
        self.linears = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.norms = torch.nn.ModuleList(
            torch.nn.BatchNorm1d(config.width) if config.batchnorm else torch.nn.Identity()
            for _ in range(config.depth - 1))
        g = generator if generator is not None else torch.Generator().manual_seed(config.seed)
        with torch.no_grad():  # torch.nn.Linear's default law, from an explicit generator
            for lin in self.linears:
                bound = 1.0 / math.sqrt(lin.in_features)
                lin.weight.copy_(torch.rand(lin.weight.shape, generator=g, dtype=torch.float64) * 2 * bound - bound)
                lin.bias.copy_(torch.rand(lin.bias.shape, generator=g, dtype=torch.float64) * 2 * bound - bound)

    def _hidden(self, x: torch.Tensor, measure: bool) -> torch.Tensor:
        h = x
        for lin, bn in zip(self.linears[:-1], self.norms):
            u = lin(h)
            if isinstance(bn, torch.nn.BatchNorm1d):
                if measure:  # batch statistics, running averages untouched
                    u = F.batch_norm(u, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
                else:
                    u = bn(u)
            h = self.act.fn(u)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linears[-1](self._hidden(x, measure=False))

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """Activations entering the readout, batch-statistics BN, (n, d)."""
        return self._hidden(x, measure=True)

    def measure_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits with batch-statistics BN that leave the running averages untouched."""
        return self.linears[-1](self._hidden(x, measure=True))


def class_entropy(predictions: np.ndarray | torch.Tensor, num_classes: int) -> float:
    """Predicted-class entropy H = −Σ_c p_c log2 p_c (Joudaki et al. 2023, §6.2, Fig. 7).

    Args:
        predictions: predicted labels, shape (N,), ints in [0, C).
        num_classes: C.

    Returns:
        H in bits, 0 <= H <= log2 C; log2 C iff predictions are uniform over classes.
    """
    p = np.bincount(np.asarray(predictions, dtype=np.int64).reshape(-1), minlength=num_classes).astype(np.float64)
    if p.sum() == 0:
        raise NormfieldError("predictions must not be empty", argument="predictions")
    p = p[p > 0] / p.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0


def gram_eigenvalues(h: torch.Tensor) -> np.ndarray:
    """Eigenvalues of G = H Hᵀ / d (Joudaki et al. 2023, eq. (2)), largest first, float64.

    Args:
        h: activations, shape (n, d).

    Returns:
        ndarray of shape (n,).
    """
    h64 = h.detach().to(device="cpu", dtype=torch.float64)
    G = h64 @ h64.T / h64.shape[1]
    return np.sort(np.linalg.eigvalsh(G.numpy()))[::-1].copy()


def _log_eigs(ev: np.ndarray) -> np.ndarray:
    """log λ with a floor at λ_max·1e-15 (float64 rounding level) so collapse gives a finite spread."""
    top = max(float(ev[0]), 1e-300)
    return np.log(np.maximum(ev, top * 1e-15))


@dataclass
class TrainResult:
    """Outcome of :func:`train_bn_mlp`.

    Attributes:
        config: the settings.
        metrics: one row per measured epoch (0 = initialization): ``epoch``,
            ``train_loss`` (mean mini-batch loss of that epoch; NaN at 0),
            ``loss`` and ``entropy`` (on the evaluation subset), ``log_eig_mean``,
            ``log_eig_std`` (of the penultimate Gram; NaN where not measured).
        eigenvalues: one row per (epoch, index): the Gram eigenvalues, largest first.
        resumed_from: epoch the run resumed from (None for a fresh run).
        model: the trained module.
    """

    config: BNMLPConfig
    metrics: pd.DataFrame
    eigenvalues: pd.DataFrame
    resumed_from: int | None
    model: BNMLP

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "resumed_from": self.resumed_from,
                "metrics": self.metrics.to_dict("records")}


def _fingerprint(data: Dataset) -> str:
    h = hashlib.sha256()
    h.update(f"{data.name}|{data.split}|{data.x.shape}|{data.num_classes}".encode())
    h.update(np.ascontiguousarray(data.y).tobytes())
    h.update(np.ascontiguousarray(data.x[: min(len(data), 64)]).tobytes())
    return h.hexdigest()[:16]


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def measure(model: BNMLP, x_eval: torch.Tensor, y_eval: torch.Tensor, x_gram: torch.Tensor | None,
             batch: int, C: int) -> dict[str, Any]:
    with torch.no_grad():
        losses, preds = [], []
        n = x_eval.shape[0]
        for i in range(0, n, batch):
            xb = x_eval[i:i + batch]
            if xb.shape[0] < 2:  # a single leftover sample has no batch statistics: join the previous batch
                continue
            logits = model.measure_logits(xb)
            losses.append(F.cross_entropy(logits.double(), y_eval[i:i + batch], reduction="sum").item())
            preds.append(logits.argmax(dim=1).cpu())
        p = torch.cat(preds)
        out: dict[str, Any] = {"loss": float(sum(losses) / p.shape[0]), "entropy": class_entropy(p.numpy(), C)}
        if x_gram is not None:
            # Float64 forward for the spectrum: from float32 features, eigenvalues below
            # ~(1e-7)²·λ_max would be rounding noise, and collapsed networks reach that range.
            m64 = model if x_gram.dtype == torch.float64 else copy.deepcopy(model).double()
            ev = gram_eigenvalues(m64.penultimate(x_gram.double()))
            del m64
            le = _log_eigs(ev)
            out.update(log_eig_mean=float(le.mean()), log_eig_std=float(le.std()), eigenvalues=ev.tolist())
    return out


def train_bn_mlp(
    data: Dataset,
    config: BNMLPConfig = BNMLPConfig(),
    *,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    device: str = "cpu",
    progress: bool = True,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> TrainResult:
    """Train the (BN-)MLP of Joudaki et al. 2023, §6.2, logging Figs. 6–8's quantities.

    Args:
        data: the training split (:func:`normfield.train.data.load_dataset`).
        config: the settings (:class:`BNMLPConfig`).
        checkpoint_dir: where ``checkpoint.pt`` is written after every epoch;
            None for no checkpoints.
        resume: continue from ``checkpoint_dir/checkpoint.pt`` if present
            (it must have been written with the same config and data).
        device: ``"cpu"`` or ``"cuda"``.
        progress: show a tqdm bar over epochs.
        on_epoch_end: called as ``on_epoch_end(epoch, metrics_row)`` after each
            epoch's checkpoint is written (an exception raised there stops the
            run with the checkpoint in place, e.g. to simulate a kill).

    Returns:
        :class:`TrainResult` with tidy per-epoch metrics and Gram eigenvalues.
    """
    from tqdm.auto import tqdm

    cfg = config.validated()
    check_device("--device", device)
    N, D, C = len(data), data.num_features, data.num_classes
    if N < cfg.batch_size:
        raise NormfieldError(f"batch_size must be <= the number of samples ({N}), got {cfg.batch_size}",
                             argument="batch_size")
    if cfg.gram_batch > N:
        raise NormfieldError(f"gram_batch must be <= the number of samples ({N}), got {cfg.gram_batch}",
                             argument="gram_batch")
    dt = {"float32": torch.float32, "float64": torch.float64}[cfg.dtype]
    el = torch.finfo(dt).bits // 8
    n_par = D * cfg.width + (cfg.depth - 2) * cfg.width ** 2 + cfg.width * C
    check_memory("train_bn_mlp", el * (N * D + 4 * n_par + 4 * cfg.batch_size * cfg.width * cfg.depth),
                 hint="use a smaller width or fewer samples")
    dev = torch.device(device)
    x_all = torch.as_tensor(data.x, dtype=dt).to(dev)
    y_all = torch.as_tensor(data.y, dtype=torch.int64).to(dev)
    g_init = torch.Generator().manual_seed(cfg.seed)
    model = BNMLP(D, C, cfg, g_init).to(device=dev, dtype=dt)
    params = [p for p in model.parameters()]  # plain SGD (stateless): θ ← θ − lr·∇θ, as torch.optim.SGD
    # fixed measured subsets, drawn from the seed (not from the data-order stream)
    g_sub = torch.Generator().manual_seed(cfg.seed + 7919)
    perm = torch.randperm(N, generator=g_sub)
    n_eval = N if cfg.eval_samples is None else min(cfg.eval_samples, N)
    eval_idx = perm[:n_eval].sort().values.to(dev)
    gram_idx = torch.randperm(N, generator=g_sub)[: cfg.gram_batch].to(dev)
    x_eval, y_eval, x_gram = x_all[eval_idx], y_all[eval_idx], x_all[gram_idx]
    g_order = torch.Generator().manual_seed(cfg.seed + 104729)  # mini-batch order

    history: list[dict] = []
    eig_rows: list[dict] = []
    start, resumed_from = 0, None
    ckpt_path = None
    fp = _fingerprint(data)
    if checkpoint_dir is not None:
        cdir = Path(checkpoint_dir)
        try:
            cdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise NormfieldError(f"--checkpoint-dir {str(cdir)!r} cannot be created: {e.strerror}",
                                 argument="--checkpoint-dir") from None
        ckpt_path = cdir / CHECKPOINT_NAME
        if resume and ckpt_path.exists():
            try:
                ck = torch.load(ckpt_path, map_location=dev, weights_only=True)
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint gets one clear message
                raise NormfieldError(f"--checkpoint-dir: {str(ckpt_path)!r} is corrupt or truncated "
                                     f"({type(e).__name__}); delete it or pass --fresh",
                                     argument="--checkpoint-dir") from None
            saved = dict(ck.get("config", {}))
            if ck.get("version") != _CKPT_VERSION or saved != _cfg_for_ckpt(cfg) or ck.get("data") != fp:
                raise NormfieldError(
                    f"--checkpoint-dir: {str(ckpt_path)!r} was written by a run with other settings or data "
                    f"(saved {saved}); use another --checkpoint-dir or pass --fresh", argument="--checkpoint-dir")
            model.load_state_dict(ck["model"])
            g_order.set_state(ck["order_rng"].cpu())
            history, eig_rows = list(ck["history"]), list(ck["eigenvalues"])
            start = resumed_from = int(ck["epoch"])
            if start > cfg.epochs:
                raise NormfieldError(f"--epochs: the checkpoint in {str(cdir)!r} is already at epoch {start}, "
                                     f"past --epochs {cfg.epochs}; pass --epochs >= {start} or --fresh",
                                     argument="--epochs")

    def record(epoch: int, train_loss: float) -> dict:
        want_gram = epoch == 0 or epoch == cfg.epochs or epoch % cfg.gram_every == 0
        m = measure(model, x_eval, y_eval, x_gram if want_gram else None, cfg.batch_size, C)
        ev = m.pop("eigenvalues", None)
        row = {"epoch": epoch, "train_loss": train_loss, "loss": m["loss"], "entropy": m["entropy"],
               "log_eig_mean": m.get("log_eig_mean", math.nan), "log_eig_std": m.get("log_eig_std", math.nan)}
        history.append(row)
        if ev is not None:
            eig_rows.extend({"epoch": epoch, "index": i, "eigenvalue": float(v)} for i, v in enumerate(ev))
        return row

    def save(epoch: int) -> None:
        if ckpt_path is None:
            return
        _atomic_save({"version": _CKPT_VERSION, "config": _cfg_for_ckpt(cfg), "data": fp, "epoch": epoch,
                      "model": model.state_dict(),
                      "order_rng": g_order.get_state(), "history": history, "eigenvalues": eig_rows}, ckpt_path)

    if start == 0 and not history:
        record(0, math.nan)
        save(0)
    n_batches = N // cfg.batch_size
    bar = tqdm(range(start + 1, cfg.epochs + 1), desc=f"bn-mlp ({'BN' if cfg.batchnorm else 'no BN'})",
               disable=not progress, leave=False, initial=start, total=cfg.epochs)
    for epoch in bar:
        model.train()
        order = torch.randperm(N, generator=g_order).to(dev)
        total = 0.0
        for b in range(n_batches):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p.add_(g, alpha=-cfg.lr)
            total += float(loss.detach())
        train_loss = total / n_batches
        if not math.isfinite(train_loss):
            raise NormfieldError(f"lr: training diverged at epoch {epoch} (loss {train_loss}); "
                                 f"use a smaller lr than {cfg.lr}", argument="lr")
        row = record(epoch, train_loss)
        save(epoch)
        bar.set_postfix(loss=f"{train_loss:.3g}", H=f"{row['entropy']:.2f}")
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
    bar.close()
    metrics = pd.DataFrame(history)
    eigs = pd.DataFrame(eig_rows, columns=["epoch", "index", "eigenvalue"])
    return TrainResult(cfg, metrics, eigs, resumed_from, model)


def _cfg_for_ckpt(cfg: BNMLPConfig) -> dict:
    """Settings that must match to resume (epochs may grow: a longer run continues a shorter one)."""
    d = cfg.to_dict()
    d.pop("epochs")
    return d
