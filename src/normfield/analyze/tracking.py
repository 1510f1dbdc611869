"""Sharpness through training: λ_max, the trace and the layer Grams, every k steps.

:class:`SharpnessTracker` is built once on a fixed probe batch and called from any training
loop as ``tracker.step(step, lr=lr)``. Every ``every`` steps it measures, on the current
parameters and the same batch (train-mode batch norm differentiated over the whole batch,
exactly as :func:`normfield.analyze`), with one
:class:`normfield.analyze.operator.CurvatureOperator` built at construction and re-read
(:meth:`~normfield.analyze.operator.CurvatureOperator.refresh`) at each check:

* λ_max of the loss's curvature C by Lanczos, started from the previous check's Ritz vectors;
* tr C (deflated Hutchinson on the Lanczos basis, with its standard error, or exact);
* η·λ_max, against the stability line 2;
* for every hooked layer, the top fraction λ₁(G)/tr G and the effective rank of its batch
  Gram G = H Hᵀ/d (Joudaki et al. 2023, eq. (2); rank collapse: top fraction → 1).

The curvatures, and the loss normalisation each refers to (:mod:`normfield.analyze.losses`):

* ``loss="mse"``: E(θ) = (1/2T) Σ_t Σ_k (f_k(t) − y_k(t))², the squared loss of Karakida et
  al. 2019, §2.2. Its Hessian is ∇²E = F − (1/T) Σ_t Σ_k (y_k(t) − f_k(t)) ∇²f_k(t) (their
  eq. (9)): the Gauss–Newton part is exactly the Fisher F = JᵀJ/T of eq. (8), whose non-zero
  spectrum is that of the dual F* = JJᵀ/T. With torch's ``nn.MSELoss()`` (mean over the T·C
  entries, no ½) the Gauss–Newton part is (2/C)·F, and the line below sits at η·λ_max(F) = C.
* ``loss="cross-entropy"``: E(θ) = mean over the T·S predictions of the softmax cross-entropy
  (torch's ``F.cross_entropy`` with its default mean; S positions per sample, 1 for a
  classifier). Its Gauss–Newton part is G = (1/(T·S)) Σ J_iᵀ (diag p_i − p_i p_iᵀ) J_i, also
  the Fisher of the softmax model (Martens 2020, §9.2); no label enters.
* ``loss="hessian"`` (with ``targets=``): the Hessian itself (parameter space, one
  Hessian–vector product by double backward per product).

Gradient descent θ ← θ − η∇E on a quadratic with curvature C is stable iff η·λ_max(C) < 2
(Karakida et al. 2019, eq. (23)): the column ``eta_lambda`` is η·λ_max and 2 is the edge of
stability. Under full-batch training the sharpness rises towards 2/η (progressive sharpening)
and then hovers at η·λ_max ≈ 2 (Cohen et al. 2021, "Gradient descent on neural networks
typically occurs at the edge of stability", ICLR, who track the Hessian's λ_max; the
Gauss–Newton part equals it at zero residual).

Warm start: the operator is re-read on the current parameters (same model, batch, loss and
parameter set, so the T·C dual space is the same); its Lanczos run starts from the sum of the
previous check's top ``warm_k`` Ritz vectors plus
:data:`normfield.analyze.operator.WARM_RANDOM` times a fresh Gaussian vector, so every
eigenvector keeps a share of the start. Warm and cold runs stop by the same rule, the residual
of the wanted Ritz pair at most tol·θ₁ (Kahan's bound: an eigenvalue within tol·θ₁), so two
runs that both find the top eigenvalue agree to 2·tol·λ_max (tested against a cold run). The
warm start saves products only as far as the previous top Ritz vector is nearer the current top
eigenvector than a random start: on the quick ResNet-18 of ``benchmarks/bench_tracking.py`` that
eigenvector keeps only 0.47–0.92 of itself from one check to the next (two or ten steps apart),
so a warm check costs about 0.7 of a cold one; a start from the previous check's whole Krylov
basis could not do better (the current eigenvector lies 0.55–0.96 in it).
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from normfield.analyze._functional import ModelFunction, select_parameters
from normfield.analyze.cost import default_tol
from normfield.analyze.data import as_batches, resolve_device, resolve_dtype
from normfield.analyze.hooks import layer_gram_rows
from normfield.analyze.losses import LOSSES, is_hessian
from normfield.analyze.operator import WARM_RANDOM, CurvatureOperator
from normfield.analyze.settings import Accuracy, resolve_accuracy
from normfield.core import krylov
from normfield.core.jacobian import ROUTES
from normfield.core.validation import check_choice, check_int
from normfield.errors import NormfieldError

__all__ = ["SharpnessTracker", "STABILITY_LINE", "ritz_vectors"]

#: η·λ_max at the edge of stability of gradient descent (Karakida et al. 2019, eq. (23)).
STABILITY_LINE = 2.0

#: The row's columns besides the per-layer Gram columns, in order.
COLUMNS = ("step", "lr", "lambda_max", "lambda_max_error", "trace", "trace_stderr", "eta_lambda", "products",
           "lambda_products", "lanczos_steps", "converged", "warm", "seconds")


def ritz_vectors(lz: krylov.LanczosResult, m: int) -> np.ndarray:
    """The top ``m`` Ritz vectors of a whole Lanczos run (not only the k it was asked for).

    With the basis Q (rows) and T_m = QAQᵀ = S Θ Sᵀ, the Ritz vectors are Qᵀ S (Parlett §13.1).

    Returns:
        shape (n, min(m, steps)), orthonormal columns, largest Ritz value first.
    """
    Tm = np.diag(lz.alpha) + np.diag(lz.beta, 1) + np.diag(lz.beta, -1)
    _, S = np.linalg.eigh(Tm)
    return lz.basis.T @ S[:, ::-1][:, :min(m, len(lz.alpha))]


def _signature(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """The parameter set: (name, shape) of every parameter, in ``named_parameters`` order."""
    return [(n, tuple(p.shape)) for n, p in model.named_parameters()]


def _wide_gram_columns(layers: pd.DataFrame) -> dict[str, float]:
    cols: dict[str, float] = {}
    for r in layers.itertuples(index=False):
        cols[f"gram_top_fraction:{r.layer}"] = float(r.top_fraction)
        cols[f"gram_effective_rank:{r.layer}"] = float(r.effective_rank)
    return cols


class SharpnessTracker:
    """λ_max, trace and layer Grams of a model's loss curvature every ``every`` training steps.

    Args:
        model: the trained ``nn.Module``. A check reads it and gives it back as it was:
            parameters, buffers (running statistics, ``num_batches_tracked``), train/eval flags,
            ``.grad`` and the torch random state (so a seeded run trains the same with or
            without a tracker).
        inputs: the probe batch, fixed for the whole run: a tensor (T, ...), a tuple of positional
            arguments or a dict of keyword arguments (:mod:`normfield.analyze.data`).
        loss: ``"mse"`` (F* = JJᵀ/T, the Gauss–Newton part of (1/2T)Σ‖f − y‖²),
            ``"cross-entropy"`` (the Gauss–Newton part of the mean cross-entropy) or a Hessian
            (``"hessian"`` with ``targets``); module docstring.
        targets: for a Hessian only.
        every: measure when ``step % every == 0``.
        k: leading eigenvalues per check (the row carries λ_max; :attr:`eigenvalues` all k).
        warm: start each check's Lanczos run from the previous check's Ritz vectors.
        warm_k: how many of the previous Ritz vectors form the warm start.
        layers: layers whose batch Gram is summarised (:func:`normfield.analyze.hooks.select_layers`);
            ``"none"`` for none.
        parameters: names or glob patterns of the differentiated parameters (default: all with grad).
        outputs: which output to analyse (as :func:`normfield.analyze`).
        mode: ``"as-is"``, ``"train"`` or ``"eval"``, during a check only.
        dtype, device: analysis dtype and device (default: the model's); copies are cast.
        tol: relative accuracy of λ_max (default 1e-4 in float32, 1e-8 in float64). To hold
            η·λ_max against the line 2, ``tol=1e-2`` (an eigenvalue within 1 % of λ_max's Ritz
            value, by the same residual rule) is ample and costs about half: 10–14 products per
            warm check instead of 20–26 on the quick ResNet-18 of the benchmark.
        trace: ``"hutchinson"`` (deflated by the Lanczos basis, standard error ``trace_rtol`` of
            the trace), ``"exact"`` (T·C VJPs; Fisher only), ``"auto"`` (the default: exact when
            T·C is at most the products of the check's Lanczos run, else Hutchinson) or ``"none"``.
        trace_rtol: target relative standard error of the stochastic trace (default 0.01).
        probes: a fixed number of Hutchinson probes instead (default: adaptive).
        accuracy: a :class:`normfield.analyze.settings.Accuracy` giving ``tol``, ``trace``,
            ``probes`` and ``trace_rtol`` (a keyword given here overrides its field).
        max_steps: Lanczos steps at most per check.
        seed: the cold start, the random part of the warm starts and the Hutchinson probes.

    Attributes:
        operator: the :class:`normfield.analyze.operator.CurvatureOperator` (``operator.last``:
            the last check's Lanczos run).
        rows: one dict per check (what :attr:`frame` holds).
        eigenvalues: {step: top-k eigenvalues, shape (k,)}.

    Example:
        >>> import torch, normfield as nf
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)).double()
        >>> tracker = nf.SharpnessTracker(net, torch.randn(8, 4, dtype=torch.float64), every=2)
        >>> tracker.step(1, lr=0.1) is None, tracker.step(2, lr=0.1)["step"]
        (True, 2)
    """

    def __init__(self, model: nn.Module, inputs: Any, *, loss: str = "mse", targets: Any = None, every: int = 1,
                 k: int = 1, warm: bool = True, warm_k: int = 1, warm_random: float = WARM_RANDOM,
                 layers: Any = "auto",
                 parameters: Sequence[str] | str | None = None, outputs: Any = None, mode: str = "as-is",
                 dtype: Any = None, device: Any = None, tol: float | None = None, trace: str | None = None,
                 trace_rtol: float | None = None, probes: int | None = None, accuracy: Accuracy | None = None,
                 max_steps: int | None = None, seed: int = 0) -> None:
        if not isinstance(model, nn.Module):
            raise NormfieldError(f"model must be a torch.nn.Module, got {type(model).__name__}", argument="model")
        check_choice("loss", loss, LOSSES)
        if trace is not None:
            check_choice("trace", trace, ["auto", "hutchinson", "exact", "none"])
        acc = resolve_accuracy(accuracy, tol=tol, trace_rtol=trace_rtol, probes=probes,
                               trace=None if trace in (None, "none") else trace)
        tol, trace_rtol, self.probes = acc.tol, acc.trace_rtol, acc.probes
        trace = trace if trace == "none" else acc.trace
        self.every = check_int("every", every, minimum=1)
        self.k = check_int("k", k, minimum=1)
        self.warm_k = check_int("warm_k", warm_k, minimum=1)
        if isinstance(warm_random, bool) or not isinstance(warm_random, (int, float)) or not (
                0 < warm_random <= 1):
            raise NormfieldError(f"warm_random must be a number in (0, 1], got {warm_random!r}",
                                 argument="warm_random")
        self.warm_random = float(warm_random)
        if tol is not None and not (isinstance(tol, (int, float)) and 0 < tol < 1):
            raise NormfieldError(f"tol must be a number in (0, 1), got {tol!r}", argument="tol")
        if not (isinstance(trace_rtol, (int, float)) and trace_rtol > 0 and math.isfinite(trace_rtol)):
            raise NormfieldError(f"trace_rtol must be a positive number, got {trace_rtol!r}", argument="trace_rtol")
        if is_hessian(loss) and trace == "auto":
            trace = "hutchinson"
        if trace == "exact" and is_hessian(loss):
            raise NormfieldError("trace='exact' is for a Fisher; use trace='hutchinson' with a Hessian",
                                 argument="trace")
        self.model, self.layers, self.outputs = model, layers, outputs
        self.warm, self.trace, self.trace_rtol, self.seed = bool(warm), trace, float(trace_rtol), int(seed)
        self.max_steps = None if max_steps is None else check_int("max_steps", max_steps, minimum=2)
        self.device, self.dtype = resolve_device(device, model), resolve_dtype(dtype, model)
        self.tol = default_tol(self.dtype) if tol is None else float(tol)
        batches, _ = as_batches(inputs, dtype=self.dtype, device=self.device, targets=targets)
        if len(batches) != 1:
            raise NormfieldError("inputs: the tracker follows one probe batch; pass a tensor, tuple or dict, "
                                 "not a data set", argument="inputs")
        self.batch = batches[0]
        self.names = select_parameters(model, parameters)
        self._signature = _signature(model)
        self.operator = CurvatureOperator.build(model, inputs, loss=loss, targets=targets, parameters=self.names,
                                                dtype=self.dtype, device=self.device, outputs=outputs, mode=mode)
        self.rows: list[dict[str, Any]] = []
        self.eigenvalues: dict[int, np.ndarray] = {}
        self._layer_rows: list[pd.DataFrame] = []
        self._ritz: np.ndarray | None = None  # the previous check's top Ritz vectors, (dim, warm_k)

    # -- the record ------------------------------------------------------------------
    @property
    def frame(self) -> pd.DataFrame:
        """One row per check (tidy: one observation per row), columns ``step, lr, lambda_max,
        lambda_max_error`` (the residual bound), ``trace, trace_stderr, eta_lambda`` (lr·λ_max),
        ``products`` (Jacobian products of the check), ``lambda_products`` (of λ_max alone),
        ``lanczos_steps, converged, warm, seconds``, then per hooked layer
        ``gram_top_fraction:<layer>`` and ``gram_effective_rank:<layer>`` (in execution order).
        The long form of the Gram diagnostics is :attr:`layer_frame`."""
        return pd.DataFrame(self.rows) if self.rows else pd.DataFrame(columns=list(COLUMNS))

    @property
    def layer_frame(self) -> pd.DataFrame:
        """Long format: one row per (check, hooked layer): ``step`` and every column of
        :func:`normfield.analyze.hooks.layer_gram_rows`."""
        if not self._layer_rows:
            return pd.DataFrame(columns=["step", "layer"])
        return pd.concat(self._layer_rows, ignore_index=True)

    # -- the loop ----------------------------------------------------------------------
    def step(self, step: int, *, lr: float | None = None) -> dict[str, Any] | None:
        """Measure if ``step % every == 0`` and return the row; otherwise do nothing and return None.

        Args:
            step: the training step, an int >= 0.
            lr: the learning rate in use, for ``eta_lambda`` = lr·λ_max (NaN without it).
        """
        step = check_int("step", step, minimum=0)
        if step % self.every:
            return None
        return self.check(step, lr=lr)

    def check(self, step: int, *, lr: float | None = None) -> dict[str, Any]:
        """Measure now, whatever the step (see :meth:`step`)."""
        step = check_int("step", step, minimum=0)
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr)
                               or lr <= 0):
            raise NormfieldError(f"lr must be a positive number, got {lr!r}", argument="lr")
        sig = _signature(self.model)
        if sig != self._signature:
            old, new = dict(self._signature), dict(sig)
            diff = sorted({n for n in {*old, *new} if old.get(n) != new.get(n)})
            raise NormfieldError(
                f"model: its parameter set changed since the tracker was built ({', '.join(diff[:3])}"
                f"{' ...' if len(diff) > 3 else ''}: names or shapes); build a new SharpnessTracker for it",
                argument="model")
        t0 = time.perf_counter()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            row = self._measure(step, lr)
            layers_df = self._grams()
        row["seconds"] = time.perf_counter() - t0
        row.update(_wide_gram_columns(layers_df))
        self.rows.append(row)
        if len(layers_df):
            self._layer_rows.append(layers_df.assign(step=step)[["step", *layers_df.columns]])
        return row

    # -- one check ---------------------------------------------------------------------
    def _grams(self) -> pd.DataFrame:
        if isinstance(self.layers, str) and self.layers == "none":
            return pd.DataFrame()
        op = self.operator
        with op.guard():
            fn = ModelFunction.build(self.model, self.batch.args, self.names, dtype=self.dtype, device=self.device,
                                     outputs=self.outputs, kwargs=self.batch.kwargs)
            df, _ = layer_gram_rows(self.model, lambda: fn.picked(fn.theta), self.layers, keep_grams=False)
        return df

    def _start_vector(self, dim: int) -> np.ndarray | None:
        if not (self.warm and self._ritz is not None and self._ritz.shape[0] == dim):
            return None
        v = self._ritz.sum(1)
        v /= max(float(np.linalg.norm(v)), 1e-300)
        r = np.random.default_rng([self.seed, len(self.rows)]).standard_normal(dim)
        if self.operator.center_outputs:
            r = (r.reshape(self.operator.T, -1) - r.reshape(self.operator.T, -1).mean(0)).reshape(-1)
        return v + self.warm_random * r / max(float(np.linalg.norm(r)), 1e-300)

    @staticmethod
    def _keep_route(op: CurvatureOperator) -> None:
        """After the first check, build later checks' products on the route the first one chose
        (:data:`normfield.core.jacobian.ROUTES`), so a re-read operator does not probe the routes
        (and count the first JVP's ops and flops) again; a traced route is kept as its untraced
        forward-mode twin, since every check has a new point to trace at."""
        used = op.route_used
        if op.route == "auto" and used in ROUTES:
            op.route = used.replace("linearize", "forward")

    def _measure(self, step: int, lr: float | None) -> dict[str, Any]:
        op = self.operator
        nan = math.nan
        row: dict[str, Any] = {"step": step, "lr": nan if lr is None else float(lr), "lambda_max": nan,
                               "lambda_max_error": nan, "trace": nan, "trace_stderr": nan, "eta_lambda": nan,
                               "products": 0, "lambda_products": 0, "lanczos_steps": 0, "converged": False,
                               "warm": False}
        if not all(bool(torch.isfinite(p).all()) for n, p in self.model.named_parameters() if n in self.names):
            self._ritz = None  # training diverged: nothing to measure, no warm start from here
            return row
        op.refresh()  # no product; counted from here (the operator's running total is not needed)
        start = op.products
        v0 = self._start_vector(op.dim)
        try:
            lz = op.lanczos(min(self.k, op.dim), self.tol, v0=v0, seed=self.seed, max_steps=self.max_steps)
        except np.linalg.LinAlgError:  # a non-finite output (overflow) on the probe batch
            self._ritz = None
            row["products"] = op.products - start
            return row
        row["lambda_products"] = op.products - start
        self._keep_route(op)
        self._ritz = ritz_vectors(lz, self.warm_k)
        lam = float(lz.eigenvalues[0])
        self.eigenvalues[step] = np.asarray(lz.eigenvalues, dtype=float).copy()
        if self.trace == "exact" or (self.trace == "auto" and op.dim <= 2 * int(lz.products)):
            row["trace"], row["trace_stderr"] = op.trace_exact(), 0.0
        elif self.trace in ("hutchinson", "auto"):
            est = op.trace_estimate(rtol=self.trace_rtol, probes=self.probes, seed=self.seed + 1 + step)
            row["trace"], row["trace_stderr"] = est.value, est.stderr
        row.update(lambda_max=lam, lambda_max_error=float(lz.errors[0]),
                   eta_lambda=nan if lr is None else float(lr) * lam, products=op.products - start,
                   lanczos_steps=int(lz.products), converged=bool(lz.converged), warm=v0 is not None)
        return row
