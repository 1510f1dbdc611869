"""Training claims of Joudaki et al. 2023, Figs. 6–8 (the learning-rate grid of Karakida et al.
2019, Fig. 2, is in :mod:`normfield.claims.kfig2`).

``J-fig6/7/8`` train one MLP with and without BN (one shared run, cached by the
sweep runner and memoised here) and read off the penultimate Gram spectrum, the
predicted-class entropy and the training loss.

Quick scale differs from the paper's (stated in each result's ``notes``):
scikit-learn's digits instead of CIFAR-100, a narrower MLP and fewer epochs.
"""

from __future__ import annotations

import math
import os
from typing import Any

import pandas as pd

from normfield.claims.registry import ClaimContext, ClaimResult, claim

# -- J-fig6/7/8: one shared pair of training runs ----------------------------------------------

_BN_MEMO: dict[tuple, tuple[pd.DataFrame, pd.DataFrame, dict]] = {}


def _bn_runs(ctx: ClaimContext) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    from normfield.experiments.train import run_bn_mlp
    from normfield.train.bn_cells import BNTrainSettings
    from normfield.train.bn_mlp import BNMLPConfig

    s = ctx.pick(
        smoke=dict(depth=4, width=32, epochs=2, gram_every=1, eval_samples=512),
        quick=dict(depth=10, width=256, epochs=15, gram_every=5, eval_samples=None),
        paper=dict(depth=10, width=1000, epochs=50, gram_every=5, eval_samples=10000),
    )
    # Paper scale reads CIFAR-100 when NORMFIELD_CIFAR100_DIR names the unpacked python-format
    # folder (nothing is downloaded); otherwise, and at the other scales, the embedded digits.
    data_dir = os.environ.get("NORMFIELD_CIFAR100_DIR") if ctx.scale == "paper" else None
    dataset = "cifar100" if data_dir else "digits"
    key = (ctx.scale, ctx.seed, ctx.device, str(ctx.out_dir), data_dir)
    if key not in _BN_MEMO:
        cfg = BNMLPConfig(lr=1e-3, batch_size=128, gram_batch=128, seed=ctx.seed, **s)
        ckpt = (ctx.out_dir / "checkpoints" / "bn-mlp") if ctx.scale == "paper" else None
        bn = BNTrainSettings(config=cfg, dataset=dataset, data_dir=data_dir,
                             checkpoint_dir=None if ckpt is None else str(ckpt))
        metrics, eig = run_bn_mlp(bn, seed=ctx.seed, sweep=ctx.sweep)
        settings = dict(cfg.to_dict(), dataset=dataset, data_dir=data_dir, variants=["with BN", "without BN"],
                        init="torch default")
        settings.pop("batchnorm")
        _BN_MEMO[key] = (metrics, eig, settings)
    return _BN_MEMO[key]


_BN_NOTE = ("Data: {dataset} (digits = scikit-learn's 1,797 real 8×8 images, 10 classes, used unless the "
            "paper scale runs with NORMFIELD_CIFAR100_DIR set; `normfield train bn-mlp --data-dir DIR` runs the "
            "paper's CIFAR-100 setting); width {width}, depth {depth}, {epochs} epochs, SGD lr 1e-3, batch 128, "
            "PyTorch's default initialization. ")


def _val(metrics: pd.DataFrame, bn: bool, epoch: int, col: str) -> float:
    m = metrics[(metrics["batchnorm"] == bn) & (metrics["epoch"] == epoch)]
    return float(m[col].iloc[0]) if len(m) else math.nan


def _bn_claim(claim_id: str, figure: int, *, title: str, statement: str, order: float):
    """Register one of the J-fig6/7/8 claims (Joudaki et al. 2023, Sec. 6.2, Fig. ``figure``)."""
    return claim(claim_id, title=title, paper="Joudaki et al. 2023", reference=f"Sec. 6.2, Fig. {figure}",
                 statement=statement, order=order)


def _bn_result(ok: bool, settings: dict, figure: Any, data: dict[str, pd.DataFrame], *, measured: dict,
               expected: Any, notes: str) -> ClaimResult:
    """A J-fig6/7/8 result: the shared data note (``_BN_NOTE``) comes before the claim's own ``notes``."""
    return ClaimResult(verdict="PASS" if ok else "FAIL", measured=measured, expected=expected, settings=settings,
                       figures=[figure], data=data, notes=_BN_NOTE.format(**settings) + notes)


@_bn_claim("J-fig6", 6, title="BN keeps the penultimate Gram spectrum concentrated during training",
           statement="The log-eigenvalues of the penultimate-layer Gram matrix are more concentrated around "
                     "their mean with batch normalization than without, at initialization and at the end of "
                     "training.",
           order=60.0)
def j_fig6(ctx: ClaimContext) -> ClaimResult:
    from normfield.train.plots import plot_gram_spectra

    metrics, eig, settings = _bn_runs(ctx)
    last = int(metrics["epoch"].max())
    spread = {f"{'BN' if bn else 'noBN'}_epoch{ep}": _val(metrics, bn, ep, "log_eig_std")
              for bn in (True, False) for ep in (0, last)}
    ok = spread["BN_epoch0"] < spread["noBN_epoch0"] and spread[f"BN_epoch{last}"] < spread[f"noBN_epoch{last}"]
    fig = plot_gram_spectra(eig, ctx.figure_path("J-fig6_gram_spectra"))
    per_epoch = metrics[["batchnorm", "epoch", "log_eig_std"]].dropna()
    return _bn_result(
        ok, settings, fig, {"bn_metrics": metrics, "bn_gram_eigenvalues": eig},
        measured={"log_eig_std": spread,
                  "log_eig_std_per_epoch": {f"{'BN' if r.batchnorm else 'noBN'}_epoch{int(r.epoch)}": r.log_eig_std
                                            for r in per_epoch.itertuples()}},
        expected="std of log λ_i(G_penultimate) smaller with BN than without, at epoch 0 and at the last epoch",
        notes="Spread = standard deviation of log λ_i over the n = 128 eigenvalues "
        "of G = H Hᵀ/d on a fixed batch (batch statistics); eigenvalues are floored at 1e-15·λ_max.",
    )


@_bn_claim("J-fig7", 7, title="BN starts near the uniform class prior",
           statement="At initialization the entropy of the predicted classes, −Σ p_c log2 p_c, is close to its "
                     "maximum log2 C with batch normalization and markedly lower without.",
           order=61.0)
def j_fig7(ctx: ClaimContext) -> ClaimResult:
    from normfield.experiments.train import run_init_entropy
    from normfield.gram.bn_theory import entropy_at_init_theory
    from normfield.train.bn_cells import BNTrainSettings
    from normfield.train.bn_mlp import BNMLPConfig
    from normfield.train.plots import plot_entropy

    metrics, eig, settings = _bn_runs(ctx)
    C = int(metrics["num_classes"].iloc[0])
    hmax = math.log2(C)
    h_bn, h_no = _val(metrics, True, 0, "entropy"), _val(metrics, False, 0, "entropy")
    theo = entropy_at_init_theory(settings["activation"], settings["batch_size"], C, settings["width"],
                                  draws=ctx.pick(smoke=200, quick=2000, paper=300), seed=ctx.seed)
    # More initializations (no training: cheap) to average the init-to-init scatter of H.
    R = ctx.pick(smoke=2, quick=16, paper=16)
    cfg = BNMLPConfig(**{k: v for k, v in settings.items() if k in ("depth", "width", "activation", "lr",
                                                                     "batch_size", "epochs", "gram_every",
                                                                     "gram_batch", "eval_samples", "dtype")})
    bn = BNTrainSettings(config=cfg, dataset=settings["dataset"], data_dir=settings["data_dir"])
    inits = run_init_entropy(bn, seed=ctx.seed, replicates=R, sweep=ctx.sweep)
    hb = inits[inits["batchnorm"] == True]["entropy"].to_numpy()  # noqa: E712
    hn = inits[inits["batchnorm"] == False]["entropy"].to_numpy()  # noqa: E712
    # The mean of R networks' entropies scatters around E[H] with sd/√R (one network = one draw
    # of the readout); 3 of those plus 3 Monte Carlo standard errors of E[H] is the tolerance.
    tol = 3.0 * theo["sd"] / math.sqrt(R) + 3.0 * theo["stderr"]
    agrees = abs(float(hb.mean()) - theo["mean"]) <= tol
    marked = float(hb.mean() - hn.mean()) >= 3.0 * theo["sd"]
    ok = agrees and marked
    fig = plot_entropy(metrics, ctx.figure_path("J-fig7_class_entropy"), num_classes=C)
    last = int(metrics["epoch"].max())
    return _bn_result(
        ok, settings, fig, {"bn_metrics": metrics, "init_entropies": inits},
        measured={"entropy_init_BN": h_bn, "entropy_init_noBN": h_no, "log2_C": hmax,
                  "initializations": R, "entropy_init_BN_mean": float(hb.mean()),
                  "entropy_init_noBN_mean": float(hn.mean()),
                  "entropy_init_BN_mean_over_log2_C": float(hb.mean()) / hmax,
                  "mean_field_entropy_init_BN": theo["mean"], "mean_field_sd_over_inits": theo["sd"],
                  "mean_field_over_log2_C": theo["mean"] / hmax, "tolerance": tol,
                  "entropy_end_BN": _val(metrics, True, last, "entropy"),
                  "entropy_end_noBN": _val(metrics, False, last, "entropy")},
        expected={"entropy_init_BN_mean": "within 3 sd/√R (+3 MC s.e.) of the mean-field prediction from the "
                                          "BN fixed point G* (eq. 10), i.e. as near log2 C as theory allows",
                  "entropy_init_BN_mean - entropy_init_noBN_mean": ">= 3 sd (markedly higher than without BN)"},
        notes="Predictions: argmax of the logits on the whole evaluation set, "
        "computed in mini-batches of 128 with batch statistics (as in training). 'Near log2 C' is made "
        "quantitative by the mean-field law of the entropy (normfield.gram.bn_theory.entropy_at_init_theory): "
        "ReLU outputs are non-negative, so G* has off-diagonal b*c* > 0 (its large eigenvalue on 1_n, "
        f"Sec. 6.1) and the readout adds a shared class offset; hence E[H] = {theo['mean']:.3f} bits = "
        f"{theo['mean'] / hmax:.0%} of log2 C = {hmax:.3f}, not log2 C itself. Without BN (default init, "
        "10 layers) the signal vanishes with depth, all samples get the same logits, and H collapses.",
    )


@_bn_claim("J-fig8", 8, title="BN makes the training loss fall faster",
           statement="With batch normalization the training loss decreases faster than without.", order=62.0)
def j_fig8(ctx: ClaimContext) -> ClaimResult:
    from normfield.train.plots import plot_loss

    metrics, eig, settings = _bn_runs(ctx)
    epochs = sorted(int(e) for e in metrics["epoch"].unique() if e >= 1)
    drop = {bn: {e: _val(metrics, bn, 0, "loss") - _val(metrics, bn, e, "loss") for e in epochs} for bn in (True, False)}
    ok = bool(epochs) and all(drop[True][e] > drop[False][e] for e in epochs)
    last = epochs[-1] if epochs else 0
    fig = plot_loss(metrics, ctx.figure_path("J-fig8_training_loss"))
    return _bn_result(
        ok, settings, fig, {"bn_metrics": metrics},
        measured={"loss_init_BN": _val(metrics, True, 0, "loss"), "loss_init_noBN": _val(metrics, False, 0, "loss"),
                  "loss_end_BN": _val(metrics, True, last, "loss"), "loss_end_noBN": _val(metrics, False, last, "loss"),
                  "loss_drop_BN": drop[True].get(last, math.nan), "loss_drop_noBN": drop[False].get(last, math.nan),
                  "epochs_BN_drop_larger": int(sum(drop[True][e] > drop[False][e] for e in epochs)),
                  "epochs": len(epochs)},
        expected="the loss drop from initialization, L(0) − L(e), is larger with BN at every epoch e >= 1",
        notes="Loss: cross-entropy on the evaluation set (the whole training split "
        "at quick scale), batch statistics. The drop from initialization is compared because the two "
        "networks start from different losses.",
    )
