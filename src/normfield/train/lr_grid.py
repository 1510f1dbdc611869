"""Learning-rate limit from sharpness: the teacher–student grid of Karakida et al. 2019, §3.4.

Full-batch gradient descent θ ← θ − η ∇E(θ) on the squared loss
E(θ) = (1/2T) Σ_t Σ_k (y_k(t) − f_k(t))² (Karakida et al. 2019, §3.4) of a
student MLP (their eq. (1), weights from eq. (2), Gaussian inputs eq. (3))
against labels of an independently drawn teacher of the same architecture.
Near a minimum, E's Hessian equals the Fisher information F = (1/T) Σ_t ∇f ∇fᵀ
(the squared-loss Gauss–Newton matrix), so gradient descent can converge only if

    η < 2 / λ_max                                    (Karakida et al. 2019, eq. (23)),

with λ_max ≈ α((T−1)/T κ2 + κ1/T) M without normalization (Thm 2.2, eq. (10))
and λ_max ≥ ρα(κ1 − κ2) with last-layer mean subtraction (Thm 3.3, eq. (18)).

Efficiency: all learning rates of one (width, seed, normalization) cell start
from the *same* initialization and are trained together. The K students are
stacked along a leading batch dimension (weights of shape (K, out, in)) and
advanced by batched matrix products with a hand-written backward pass, so one
step of the whole column costs a handful of BLAS calls: the first layer of all
students is one GEMM against the shared inputs (or, when T ≤ 2·M_0, is tracked in
sample space through K_X = XXᵀ + 11ᵀ, one GEMM instead of two), every update is
an in-place ``baddbmm_``/``addmm_`` with η_k folded into the back-propagated error,
and activations live in buffers allocated once. Students that have exploded are
dropped from the stack as soon as they do.
:func:`train_student_plain` is the textbook one-student autograd loop, kept as
the independent reference for tests and as the benchmark baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from normfield.core.activations import get_activation
from normfield.core.validation import check_choice, check_float, check_int, check_memory
from normfield.errors import NormfieldError

__all__ = [
    "LR_GRID_NORMS",
    "StudentRun",
    "train_students",
    "train_student_plain",
    "lr_grid",
    "lr_grid_cell",
    "summarize_lr_grid",
    "eta_theory",
    "log_lrs",
]

#: Normalizations of the student's last layer: none, or mean subtraction (Karakida eq. (15)).
LR_GRID_NORMS = ("none", "last-mean")

#: A run has exploded when its final loss exceeds this or is not finite (Karakida §3.4, Fig. 2).
EXPLODE_AT = 1e3

Params = Sequence[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class StudentRun:
    """K students trained by full-batch gradient descent.

    Attributes:
        lrs: learning rates, float64 ndarray of shape (K,).
        final_loss: E(θ) after the last step (or at the step training stopped),
            shape (K,); ``inf`` where the loss overflowed.
        initial_loss: E(θ_0), shape (K,) (equal entries: one shared initialization).
        steps_run: number of updates applied to each student, shape (K,) int.
        exploded: final loss > ``explode_at`` or not finite, shape (K,) bool.
        min_loss: smallest loss seen along the trajectory, shape (K,).
        params: with ``return_params=True``, the final layers stacked over students,
            ``[(W_l (K, out, in), b_l (K, out))]`` (a stopped student keeps the values it
            had when it stopped); else None.
    """

    lrs: np.ndarray
    final_loss: np.ndarray
    initial_loss: np.ndarray
    steps_run: np.ndarray
    exploded: np.ndarray
    min_loss: np.ndarray
    params: list | None = None

    def student(self, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Final ``[(W, b), ...]`` of student ``k`` (needs ``return_params=True``)."""
        if self.params is None:
            raise NormfieldError("this run did not keep its parameters; pass return_params=True",
                                 argument="return_params")
        return [(W[k], b[k]) for W, b in self.params]

    def to_frame(self) -> pd.DataFrame:
        """One row per learning rate."""
        return pd.DataFrame({
            "lr": self.lrs, "final_loss": self.final_loss, "initial_loss": self.initial_loss,
            "min_loss": self.min_loss, "steps_run": self.steps_run, "exploded": self.exploded,
        })


def log_lrs(lo: float, hi: float, per_decade: int = 4) -> list[float]:
    """Log-spaced learning rates from ``lo`` to ``hi`` with ``per_decade`` points per decade."""
    lo = check_float("lr_min", lo, minimum=0.0, strict_min=True)
    hi = check_float("lr_max", hi, minimum=lo)
    per_decade = check_int("per_decade", per_decade, minimum=1, maximum=100)
    n = int(round(math.log10(hi / lo) * per_decade)) + 1
    return [float(v) for v in np.logspace(math.log10(lo), math.log10(hi), max(n, 1))]


def _check_params(params: Params) -> list[tuple[torch.Tensor, torch.Tensor]]:
    ps = list(params)
    if not ps:
        raise NormfieldError("params must hold at least one (W, b) layer", argument="params")
    for i, pair in enumerate(ps):
        if len(pair) != 2:
            raise NormfieldError(f"params[{i}] must be a (W, b) pair", argument="params")
        W, b = pair
        if W.ndim != 2 or b.ndim != 1 or b.shape[0] != W.shape[0]:
            raise NormfieldError(f"params[{i}]: W must be (out, in) and b (out,), got {tuple(W.shape)} and "
                                 f"{tuple(b.shape)}", argument="params")
        if i and W.shape[1] != ps[i - 1][0].shape[0]:
            raise NormfieldError(f"params[{i}]: W has {W.shape[1]} inputs but layer {i - 1} has "
                                 f"{ps[i - 1][0].shape[0]} outputs", argument="params")
    return ps


def _use_sample_space(T: int, M0: int) -> bool:
    """Whether tracking the first layer in sample space costs fewer flops than tracking W_1.

    Per hidden unit and student one step costs 2·T·M_0 multiply–adds with W_1 (forward
    X W_1ᵀ and gradient δᵀX, two GEMMs) and T² in sample space (δ K_X, one GEMM, see
    :func:`train_students`); at T = 2·M_0 the single GEMM was still faster (measured, BENCHMARKS.md).
    """
    return T <= 2 * M0


def train_students(
    params: Params,
    X: torch.Tensor,
    y: torch.Tensor,
    lrs: Sequence[float],
    *,
    steps: int,
    norm: str = "none",
    activation: Any = "relu",
    explode_at: float = EXPLODE_AT,
    stop_loss: float = 1e10,
    return_params: bool = False,
    max_batch: int | None = None,
    sample_space: bool | None = None,
) -> StudentRun:
    """Train K = len(lrs) copies of one initialization by full-batch GD, batched.

    Every student starts from ``params``; student k uses learning rate ``lrs[k]``.
    One update is θ ← θ − η_k ∇E(θ) with E = (1/2T) Σ_t Σ_k (y − f)²
    (Karakida et al. 2019, §3.4). A student whose loss passes ``stop_loss``
    (default 1e10, i.e. 10⁷ times the explosion threshold) or stops being
    finite is frozen and dropped from the stack; this is a pure shortcut, since
    its final loss would be far above ``explode_at`` anyway.

    How (exact up to float rounding; the chain rule of Karakida eq. (4), batched):

    * activations are kept transposed, (K, width, T), so the first layer of all K
      students is one GEMM with the shared inputs X: (K·M_1, M_0) @ (M_0, T), and its
      gradient δ_1ᵀX another;
    * the output error is scaled by η_k/T once, so every back-propagated δ carries η_k
      and each layer is updated in place right after its δ is used
      (W_l ← W_l − δ_l h_{l−1}ᵀ, one ``baddbmm_``), with no gradient buffers;
    * sample space (``sample_space``; default: when T ≤ 2·M_0, i.e. no more flops): the
      first layer's pre-activations U_1 = W_1Xᵀ + b_1 1ᵀ are updated directly,
      U_1 ← U_1 − η δ_1ᵀ (X Xᵀ + 1 1ᵀ), since ΔW_1 = −η δ_1ᵀX and Δb_1 = −η δ_1ᵀ1;
      W_1 and b_1 are rebuilt only at the end from the accumulated Σ η δ_1.

    Args:
        params: initial layers ``[(W_1, b_1), ..., (W_L, b_L)]``, W_l of shape
            (M_l, M_{l-1}), e.g. from ``normfield.fisher.networks.init_mlp``.
        X: inputs, shape (T, M_0), same dtype/device as ``params``.
        y: targets, shape (T, C).
        lrs: the K learning rates (> 0).
        steps: number of GD updates.
        norm: ``"none"`` or ``"last-mean"`` (last-layer mean subtraction, eq. (15),
            γ = 1, β = 0: f = u^L − E_t[u^L], exactly as ``normfield.fisher.networks.mlp_forward``).
        activation: hidden activation (name or :class:`~normfield.core.activations.Activation`).
        explode_at: threshold on the final loss that marks a run exploded.
        stop_loss: loss above which a student is stopped early (>= explode_at).
        return_params: keep every student's final parameters in the result.
        max_batch: most students advanced in one stack; None picks it so that one
            stacked activation (K·T·max width numbers) stays within ~2 MiB (half this
            machine's per-core L2; much larger stacks are memory-bound). Students are
            independent, so the result does not depend on it beyond float rounding.
        sample_space: track the first layer in sample space (True), by its weights
            (False), or whichever takes fewer flops (None). Same result up to rounding.

    Returns:
        :class:`StudentRun` with per-student final loss and explosion flags.
    """
    ps = _check_params(params)
    norm = check_choice("norm", norm, LR_GRID_NORMS)
    steps = check_int("steps", steps, minimum=0)
    explode_at = check_float("explode_at", explode_at, minimum=0.0, strict_min=True)
    stop_loss = check_float("stop_loss", stop_loss, minimum=explode_at)
    lr_arr = np.asarray([check_float("lrs", v, minimum=0.0, strict_min=True) for v in lrs], dtype=np.float64)
    if lr_arr.size == 0:
        raise NormfieldError("lrs must hold at least one learning rate", argument="lrs")
    act = get_activation(activation)
    if X.ndim != 2 or X.shape[1] != ps[0][0].shape[1]:
        raise NormfieldError(f"X must have shape (T, {ps[0][0].shape[1]}), got {tuple(X.shape)}", argument="X")
    if y.ndim != 2 or y.shape != (X.shape[0], ps[-1][0].shape[0]):
        raise NormfieldError(f"y must have shape ({X.shape[0]}, {ps[-1][0].shape[0]}), got {tuple(y.shape)}",
                             argument="y")
    if sample_space is not None and not isinstance(sample_space, bool):
        raise NormfieldError(f"sample_space must be True, False or None, got {sample_space!r}",
                             argument="sample_space")
    K = lr_arr.size
    T, M0 = X.shape
    el = X.element_size()
    widest = max(W.shape[0] for W, _ in ps)
    if max_batch is None:
        max_batch = max(1, (1 << 21) // max(1, T * widest * el))
    max_batch = check_int("max_batch", max_batch, minimum=1)
    if sample_space is None:
        sample_space = _use_sample_space(T, M0)
    if K > max_batch:  # independent students: train the stack in cache-sized chunks
        parts = [train_students(ps, X, y, lr_arr[i:i + max_batch], steps=steps, norm=norm, activation=act,
                                explode_at=explode_at, stop_loss=stop_loss, return_params=return_params,
                                max_batch=max_batch, sample_space=sample_space) for i in range(0, K, max_batch)]
        cat = np.concatenate
        params = None
        if return_params:
            params = [(torch.cat([p.params[l][0] for p in parts]), torch.cat([p.params[l][1] for p in parts]))
                      for l in range(len(ps))]
        return StudentRun(cat([p.lrs for p in parts]), cat([p.final_loss for p in parts]),
                          cat([p.initial_loss for p in parts]), cat([p.steps_run for p in parts]),
                          cat([p.exploded for p in parts]), cat([p.min_loss for p in parts]), params)
    n_par = sum(W.numel() + b.numel() for W, b in ps)
    check_memory("train_students", el * (K * (3 * n_par + 4 * len(ps) * T * widest) + T * T),
                 hint="train fewer learning rates at once or use smaller widths")
    dev, dt = X.device, X.dtype
    L = len(ps)
    relu = act.name == "relu"
    Ws = [W.detach().to(dt).unsqueeze(0).repeat(K, 1, 1).contiguous() for W, _ in ps]
    bs = [b.detach().to(dt).unsqueeze(0).repeat(K, 1).contiguous() for _, b in ps]
    yT = y.to(dt).T.unsqueeze(0)  # (1, C, T)
    lr_t = torch.as_tensor(lr_arr, dtype=dt, device=dev)
    M1 = Ws[0].shape[1]
    with torch.no_grad():
        if sample_space:
            kx = X @ X.T + 1.0  # K_X = X Xᵀ + 1 1ᵀ (T, T), symmetric
            u1 = torch.addmm(bs[0].reshape(-1, 1), Ws[0].view(-1, M0), X.T).view(K, M1, T)
            acc = torch.zeros_like(u1) if return_params else None  # Σ_s η δ_1ᵀ per student
        else:
            kx = u1 = acc = None

    final = np.full(K, np.nan)
    min_loss = np.full(K, np.inf)
    steps_run = np.zeros(K, dtype=np.int64)
    active = np.arange(K)
    initial = None
    keep_W = [W.clone() for W in Ws] if return_params else None
    keep_b = [b.clone() for b in bs] if return_params else None
    keep_acc = acc.clone() if acc is not None else None

    def stash(idx_active: np.ndarray, rows: np.ndarray) -> None:
        if keep_W is None:
            return
        dst = torch.as_tensor(idx_active, device=dev)
        src = torch.as_tensor(rows, device=dev)
        for l in range(L):
            keep_W[l][dst] = Ws[l][src]
            keep_b[l][dst] = bs[l][src]
        if keep_acc is not None:
            keep_acc[dst] = acc[src]

    # Work buffers, allocated once (fresh multi-MiB tensors every step cost page faults that rival
    # the GEMMs); after students are dropped the first k rows are used. bufs[l]: (K, M_l, T), the
    # pre-activation of hidden layer l, turned into its activation in place (ReLU) — the input of
    # layer l + 1; grads[l]: ∂E/∂h_l, turned into δ_l in place.
    widths = [W.shape[1] for W in Ws[:-1]]  # M_1 … M_{L−1}
    bufs = [None] + [torch.empty(K, m, T, dtype=dt, device=dev) for m in widths]
    grads = [None] + [torch.empty(K, m, T, dtype=dt, device=dev) for m in widths]
    C = Ws[-1].shape[1]
    fbuf = torch.empty(K, C, T, dtype=dt, device=dev)
    lr_scaled = lr_t / T
    with torch.no_grad():
        for s in range(steps + 1):
            # forward, activations transposed: hs[l] = input of layer l, (k, M_l, T); hs[0] = X (unused)
            k = Ws[0].shape[0]
            hs, us = [None], [None]
            for l in range(1, L):
                out = bufs[l][:k]
                if l == 1 and sample_space:
                    u = u1
                else:
                    if l == 1:
                        torch.addmm(bs[0].reshape(-1, 1), Ws[0].view(-1, M0), X.T, out=out.view(k * M1, T))
                    else:
                        torch.baddbmm(bs[l - 1].unsqueeze(2), Ws[l - 1], hs[l - 1], out=out)
                    u = out
                if relu:
                    h = torch.clamp_min(u, 0.0, out=out)
                    us.append(None)
                else:
                    h = act.fn(u)
                    us.append(u)
                hs.append(h)
            if L > 1:
                fT = torch.baddbmm(bs[-1].unsqueeze(2), Ws[-1], hs[-1], out=fbuf[:k])  # (k, C, T)
            elif sample_space:  # one linear layer: the output is U_1
                fT = u1
            else:
                fT = torch.addmm(bs[0].reshape(-1, 1), Ws[0].view(-1, M0), X.T,
                                 out=fbuf[:k].view(k * C, T)).view(k, C, T)
            if norm == "last-mean":  # Karakida eq. (15) with γ = 1, β = 0
                fT = fT - fT.mean(dim=2, keepdim=True)
            err = fT - yT
            loss_np = (err.square().sum(dim=(1, 2)) / (2 * T)).cpu().numpy()
            if initial is None:
                initial = loss_np.copy()
            min_loss[active] = np.minimum(min_loss[active], np.where(np.isfinite(loss_np), loss_np, np.inf))
            bad = ~np.isfinite(loss_np) | (loss_np > stop_loss)
            if s == steps or bad.all():
                final[active] = loss_np
                steps_run[active] = s
                stash(active, np.arange(active.size))
                break
            if bad.any():  # freeze the exploded ones, compact the stack
                final[active[bad]] = loss_np[bad]
                steps_run[active[bad]] = s
                stash(active[bad], np.nonzero(bad)[0])
                keep_np = np.nonzero(~bad)[0]
                keep = torch.as_tensor(keep_np, device=dev)
                active = active[keep_np]
                Ws = [W.index_select(0, keep) for W in Ws]
                bs = [b.index_select(0, keep) for b in bs]
                lr_scaled = lr_scaled.index_select(0, keep)
                err = err.index_select(0, keep)
                hs = [None] + [h.index_select(0, keep) for h in hs[1:]]
                us = [None] + [v.index_select(0, keep) if v is not None else None for v in us[1:]]
                if sample_space:
                    u1 = u1.index_select(0, keep)
                    acc = acc.index_select(0, keep) if acc is not None else None
                k = keep_np.size
            # backward (Karakida eq. (4)) with η_k folded into the output error: δ_l carries η_k
            delta = err.mul_(lr_scaled[:, None, None])  # η dE/df
            if norm == "last-mean":
                delta = delta - delta.mean(dim=2, keepdim=True)  # dE/du^L = centred dE/df
            for l in range(L - 1, 0, -1):
                dh = torch.bmm(Ws[l].transpose(1, 2), delta, out=grads[l][:k])  # W_l before its update
                Ws[l].baddbmm_(delta, hs[l].transpose(1, 2), alpha=-1.0)
                bs[l].sub_(delta.sum(dim=2))
                if relu:  # dh · 1[u > 0], in place
                    delta = torch.ops.aten.threshold_backward.grad_input(dh, hs[l], 0.0, grad_input=dh)
                else:
                    delta = dh.mul_(act.derivative(us[l]))
            d2 = delta.view(k * M1, T)
            if sample_space:
                u1.view(k * M1, T).addmm_(d2, kx, alpha=-1.0)
                if acc is not None:
                    acc.add_(delta)
            else:
                Ws[0].view(k * M1, M0).addmm_(d2, X, alpha=-1.0)
                bs[0].sub_(delta.sum(dim=2))
    if keep_acc is not None:  # W_1 = W_1(0) − (Σ η δ_1ᵀ) X,  b_1 = b_1(0) − (Σ η δ_1ᵀ) 1
        keep_W[0] = torch.baddbmm(keep_W[0], keep_acc, X.expand(K, T, M0), alpha=-1.0)
        keep_b[0] = keep_b[0] - keep_acc.sum(dim=2)
    final = np.where(np.isfinite(final), final, np.inf)
    exploded = ~np.isfinite(final) | (final > explode_at)
    params = list(zip(keep_W, keep_b)) if keep_W is not None else None
    return StudentRun(lr_arr, final, np.asarray(initial, dtype=np.float64), steps_run, exploded, min_loss, params)


def train_student_plain(
    params: Params,
    X: torch.Tensor,
    y: torch.Tensor,
    lr: float,
    *,
    steps: int,
    norm: str = "none",
    activation: Any = "relu",
    explode_at: float = EXPLODE_AT,
    stop_loss: float = 1e10,
) -> StudentRun:
    """One student, the textbook way: autograd forward/backward, one update per step.

    The independent reference for :func:`train_students` (same loss, same
    stopping rule) and the benchmark baseline. Arguments as in :func:`train_students`
    with a single learning rate ``lr``.
    """
    ps = _check_params(params)
    norm = check_choice("norm", norm, LR_GRID_NORMS)
    lr = check_float("lr", lr, minimum=0.0, strict_min=True)
    act = get_activation(activation)
    theta = [(W.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)) for W, b in ps]
    T = X.shape[0]
    final, mn, s_run, initial = math.nan, math.inf, 0, math.nan
    for s in range(steps + 1):
        h = X
        for W, b in theta[:-1]:
            h = act.fn(h @ W.T + b)
        f = h @ theta[-1][0].T + theta[-1][1]
        if norm == "last-mean":
            f = f - f.mean(dim=0, keepdim=True)
        loss = ((y - f) ** 2).sum() / (2 * T)
        v = float(loss.detach())
        if s == 0:
            initial = v
        if math.isfinite(v):
            mn = min(mn, v)
        if s == steps or not math.isfinite(v) or v > stop_loss:
            final, s_run = v, s
            break
        grads = torch.autograd.grad(loss, [p for pair in theta for p in pair])
        with torch.no_grad():
            for p, g in zip([p for pair in theta for p in pair], grads):
                p -= lr * g
    final = final if math.isfinite(final) else math.inf
    return StudentRun(np.array([lr]), np.array([final]), np.array([initial]), np.array([s_run]),
                      np.array([not math.isfinite(final) or final > explode_at]), np.array([mn]))


# -- the grid ------------------------------------------------------------------------------------


def _seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (independent streams per role/width/seed)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


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
    α_0 = 1), teacher and student drawn independently by ``init_mlp`` (eq. (2));
    λ_max of the student's Fisher at initialization by ``fisher_dual``.

    Returns:
        One row per learning rate: lr, final_loss, exploded, steps_run,
        lambda_max (empirical, at init), eta_emp = 2/λ_max, and lambda_max_end
        (λ_max after training, for runs with η > 2/λ_max that did not explode; else NaN).
    """
    from normfield.fisher.dual import fisher_dual
    from normfield.fisher.networks import init_mlp, mlp_forward

    dtype = {"float64": torch.float64, "float32": torch.float32}[cell.get("dtype", "float64")]
    device = torch.device(cell.get("device", "cpu"))
    cfg = _config(cell)
    M, T, seed = int(cell["width"]), int(cell["samples"]), int(cell["seed"])
    gx = torch.Generator(device="cpu").manual_seed(_seed(seed, M, 0))
    X = torch.randn(T, M, generator=gx, dtype=torch.float64).to(dtype=dtype, device=device)
    teacher = init_mlp(cfg, _seed(seed, M, 1), dtype, device)
    student = init_mlp(cfg, _seed(seed, M, 2), dtype, device)
    with torch.no_grad():
        y = mlp_forward(teacher, X, cfg).reshape(T, -1)
    def lam_of(params) -> float:
        return float(fisher_dual(params, X, cfg, k=1, vectors=False, keep_dual=False).lambda_max)

    lam = lam_of(student)
    run = train_students(student, X, y, cell["lrs"], steps=int(cell["steps"]), norm=cfg.norm,
                         activation=cell.get("activation", "relu"), return_params=True)
    df = run.to_frame()
    df["lambda_max"] = lam
    df["eta_emp"] = 2.0 / lam
    # Sharpness at the end, for the runs that survived above the initial limit: did they
    # converge by lowering λ_max below 2/η (the catapult mechanism)?
    lam_end = np.full(len(df), np.nan)
    for k in np.nonzero((run.lrs > 2.0 / lam) & ~run.exploded)[0]:
        lam_end[k] = lam_of(run.student(int(k)))
    df["lambda_max_end"] = lam_end
    return df.to_dict("records")


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
    device: str = "cpu",
    progress: bool = True,
    runner: Any = None,
    **sweep_options: Any,
) -> pd.DataFrame:
    """Final training loss over (width M, learning rate η) — Karakida et al. 2019, Fig. 2 / S.2.

    Defaults are the paper's setting: L = 3, α_l = C = 1, T = 1000, (σ_w², σ_b²) = (4, 1),
    1000 GD steps. Each (width, norm, seed) is one sweep cell in which all learning
    rates train together (:func:`train_students`).

    Args:
        widths: hidden widths M (also the input dimension, α_0 = 1).
        lrs: learning rates η.
        norms: subset of ``("none", "last-mean")``.
        seeds: trial seeds (Fig. S.2 takes the minimum loss over trials).
        runner: a ``ClaimContext`` (its ``sweep`` is used) or None for
            :func:`normfield.runner.run_sweep`.

    Returns:
        Tidy DataFrame, one row per (norm, width, seed, lr) with ``final_loss``,
        ``exploded``, ``lambda_max``, ``eta_emp``, and ``eta_theory``.
    """
    widths = [check_int("widths", w, minimum=2, maximum=100_000) for w in widths]
    if not widths:
        raise NormfieldError("widths must not be empty", argument="widths")
    lrs = [check_float("lrs", v, minimum=0.0, strict_min=True) for v in lrs]
    if not lrs:
        raise NormfieldError("lrs must not be empty", argument="lrs")
    norms = [check_choice("norms", n, LR_GRID_NORMS) for n in norms]
    seeds = [check_int("seeds", s, minimum=0) for s in seeds]
    steps = check_int("steps", steps, minimum=1)
    samples = check_int("samples", samples, minimum=2)
    depth = check_int("depth", depth, minimum=2, maximum=100)
    sw2 = check_float("sw2", sw2, minimum=0.0, strict_min=True)
    sb2 = check_float("sb2", sb2, minimum=0.0)
    dtype = check_choice("dtype", dtype, ("float64", "float32"))
    get_activation(activation)
    cells = [dict(norm=n, width=w, seed=s, lrs=list(lrs), steps=steps, samples=samples, depth=depth,
                  sw2=sw2, sb2=sb2, activation=str(activation), dtype=dtype)
             for n in norms for w in widths for s in seeds]
    if runner is not None:
        df = runner.sweep(lr_grid_cell, cells, name="lr-grid")
    else:
        from normfield.runner import run_sweep

        df = run_sweep(lr_grid_cell, cells, name="lr-grid", progress=progress, device=device, **sweep_options)
    theo = {(n, w): eta_theory(activation, sw2, sb2, depth, w, samples, n) for n in norms for w in widths}
    df["eta_theory"] = [theo[(n, int(w))] for n, w in zip(df["norm"], df["width"])]
    return df


def summarize_lr_grid(df: pd.DataFrame, *, explode_at: float = EXPLODE_AT) -> pd.DataFrame:
    """Per (norm, width): the S.2 summary over seeds.

    Columns: ``norm, width, eta_emp`` (median over seeds of 2/λ_max at init),
    ``eta_theory``, ``largest_stable_lr`` (largest η whose minimum-over-seeds
    final loss is finite and ≤ ``explode_at``; NaN if none), ``smallest_exploded_lr``.
    """
    rows = []
    for (norm, width), g in df.groupby(["norm", "width"], sort=True):
        best = g.groupby("lr")["final_loss"].min()  # Fig. S.2: minimum over trials
        ok = best[np.isfinite(best.values) & (best.values <= explode_at)]
        bad = best[~(np.isfinite(best.values) & (best.values <= explode_at))]
        rows.append({
            "norm": norm, "width": int(width),
            "eta_emp": float(g.groupby("seed")["eta_emp"].first().median()),
            "eta_theory": float(g["eta_theory"].iloc[0]) if "eta_theory" in g else math.nan,
            "largest_stable_lr": float(ok.index.max()) if len(ok) else math.nan,
            "smallest_exploded_lr": float(bad.index.min()) if len(bad) else math.nan,
        })
    return pd.DataFrame(rows)
