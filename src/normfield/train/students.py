"""Batched full-batch gradient descent of K students: the engine of the learning-rate grid.

Full-batch gradient descent θ ← θ − η ∇E(θ) on the squared loss
E(θ) = (1/2T) Σ_t Σ_k (y_k(t) − f_k(t))² (Karakida et al. 2019, §3.4) of a
student MLP (their eq. (1), weights from eq. (2), Gaussian inputs eq. (3)).
Near a minimum, E's Hessian equals the Fisher information F = (1/T) Σ_t ∇f ∇fᵀ
(the squared-loss Gauss–Newton matrix), so gradient descent can converge only if
η < 2 / λ_max (Karakida et al. 2019, eq. (23)).

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
from normfield.core.normalize import center
from normfield.core.validation import check_choice, check_float, check_int, check_memory
from normfield.errors import NormfieldError

__all__ = ["LR_GRID_NORMS", "EXPLODE_AT", "StudentRun", "train_students", "train_student_plain"]

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
        losses: the loss before every update and after the last, shape (K, steps + 1);
            NaN after a student stopped.
    """

    lrs: np.ndarray
    final_loss: np.ndarray
    initial_loss: np.ndarray
    steps_run: np.ndarray
    exploded: np.ndarray
    min_loss: np.ndarray
    params: list | None = None
    losses: np.ndarray | None = None

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


def check_params(params: Params) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``params`` as a list of ``(W (out, in), b (out,))`` pairs whose shapes chain (else NormfieldError)."""
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


def _check_data(ps: list, X: torch.Tensor, y: torch.Tensor) -> None:
    if X.ndim != 2 or X.shape[1] != ps[0][0].shape[1]:
        raise NormfieldError(f"X must have shape (T, {ps[0][0].shape[1]}), got {tuple(X.shape)}", argument="X")
    if y.ndim != 2 or y.shape != (X.shape[0], ps[-1][0].shape[0]):
        raise NormfieldError(f"y must have shape ({X.shape[0]}, {ps[-1][0].shape[0]}), got {tuple(y.shape)}",
                             argument="y")


def _concat(parts: list[StudentRun], layers: int, return_params: bool) -> StudentRun:
    """One :class:`StudentRun` from runs over consecutive chunks of the learning rates."""
    cat = np.concatenate
    params = None
    if return_params:
        params = [(torch.cat([p.params[l][0] for p in parts]), torch.cat([p.params[l][1] for p in parts]))
                  for l in range(layers)]
    return StudentRun(cat([p.lrs for p in parts]), cat([p.final_loss for p in parts]),
                      cat([p.initial_loss for p in parts]), cat([p.steps_run for p in parts]),
                      cat([p.exploded for p in parts]), cat([p.min_loss for p in parts]), params,
                      cat([p.losses for p in parts]))


class _Stack:
    """The K students' state during :func:`train_students`, activations transposed (K, width, T).

    Work buffers are allocated once (fresh multi-MiB tensors every step cost page faults that
    rival the GEMMs); after students are dropped the first k rows are used. ``bufs[l]``:
    (K, M_l, T), the pre-activation of hidden layer l, turned into its activation in place
    (ReLU), the input of layer l + 1; ``grads[l]``: ∂E/∂h_l, turned into δ_l in place.
    """

    def __init__(self, ps: list, X: torch.Tensor, lr_arr: np.ndarray, act: Any, norm: str, sample_space: bool,
                 return_params: bool) -> None:
        K = lr_arr.size
        T, M0 = X.shape
        dev, dt = X.device, X.dtype
        self.X, self.T, self.M0, self.act, self.norm, self.sample_space = X, T, M0, act, norm, sample_space
        self.L = len(ps)
        self.relu = act.name == "relu"
        self.Ws = [W.detach().to(dt).unsqueeze(0).repeat(K, 1, 1).contiguous() for W, _ in ps]
        self.bs = [b.detach().to(dt).unsqueeze(0).repeat(K, 1).contiguous() for _, b in ps]
        self.M1 = self.Ws[0].shape[1]
        with torch.no_grad():
            if sample_space:
                self.kx = X @ X.T + 1.0  # K_X = X Xᵀ + 1 1ᵀ (T, T), symmetric
                self.u1 = torch.addmm(self.bs[0].reshape(-1, 1), self.Ws[0].view(-1, M0), X.T).view(K, self.M1, T)
                self.acc = torch.zeros_like(self.u1) if return_params else None  # Σ_s η δ_1ᵀ per student
            else:
                self.kx = self.u1 = self.acc = None
        self.keep_W = [W.clone() for W in self.Ws] if return_params else None
        self.keep_b = [b.clone() for b in self.bs] if return_params else None
        self.keep_acc = self.acc.clone() if self.acc is not None else None
        widths = [W.shape[1] for W in self.Ws[:-1]]  # M_1 … M_{L−1}
        self.bufs = [None] + [torch.empty(K, m, T, dtype=dt, device=dev) for m in widths]
        self.grads = [None] + [torch.empty(K, m, T, dtype=dt, device=dev) for m in widths]
        self.fbuf = torch.empty(K, self.Ws[-1].shape[1], T, dtype=dt, device=dev)
        self.lr_scaled = torch.as_tensor(lr_arr, dtype=dt, device=dev) / T
        self.hs: list = []
        self.us: list = []

    def forward(self) -> torch.Tensor:
        """The outputs f of the active students, (k, C, T); keeps ``hs``/``us`` for :meth:`backward`."""
        Ws, bs, X, M0, M1 = self.Ws, self.bs, self.X, self.M0, self.M1
        k = Ws[0].shape[0]
        T = self.T
        hs, us = [None], [None]
        for l in range(1, self.L):
            out = self.bufs[l][:k]
            if l == 1 and self.sample_space:
                u = self.u1
            else:
                if l == 1:
                    torch.addmm(bs[0].reshape(-1, 1), Ws[0].view(-1, M0), X.T, out=out.view(k * M1, T))
                else:
                    torch.baddbmm(bs[l - 1].unsqueeze(2), Ws[l - 1], hs[l - 1], out=out)
                u = out
            if self.relu:
                h = torch.clamp_min(u, 0.0, out=out)
                us.append(None)
            else:
                h = self.act.fn(u)
                us.append(u)
            hs.append(h)
        self.hs, self.us = hs, us
        if self.L > 1:
            fT = torch.baddbmm(bs[-1].unsqueeze(2), Ws[-1], hs[-1], out=self.fbuf[:k])  # (k, C, T)
        elif self.sample_space:  # one linear layer: the output is U_1
            fT = self.u1
        else:
            C = Ws[-1].shape[1]
            fT = torch.addmm(bs[0].reshape(-1, 1), Ws[0].view(-1, M0), X.T,
                             out=self.fbuf[:k].view(k * C, T)).view(k, C, T)
        if self.norm == "last-mean":  # Karakida eq. (15) with γ = 1, β = 0
            fT = center(fT, 2)
        return fT

    def stash(self, idx_active: np.ndarray, rows: np.ndarray) -> None:
        """Keep the parameters of stack rows ``rows`` as those of students ``idx_active``."""
        if self.keep_W is None:
            return
        dev = self.X.device
        dst = torch.as_tensor(idx_active, device=dev)
        src = torch.as_tensor(rows, device=dev)
        for l in range(self.L):
            self.keep_W[l][dst] = self.Ws[l][src]
            self.keep_b[l][dst] = self.bs[l][src]
        if self.keep_acc is not None:
            self.keep_acc[dst] = self.acc[src]

    def drop(self, keep_np: np.ndarray, err: torch.Tensor) -> torch.Tensor:
        """Keep only stack rows ``keep_np`` (compacting every state tensor); returns ``err`` compacted."""
        keep = torch.as_tensor(keep_np, device=self.X.device)
        self.Ws = [W.index_select(0, keep) for W in self.Ws]
        self.bs = [b.index_select(0, keep) for b in self.bs]
        self.lr_scaled = self.lr_scaled.index_select(0, keep)
        self.hs = [None] + [h.index_select(0, keep) for h in self.hs[1:]]
        self.us = [None] + [v.index_select(0, keep) if v is not None else None for v in self.us[1:]]
        if self.sample_space:
            self.u1 = self.u1.index_select(0, keep)
            self.acc = self.acc.index_select(0, keep) if self.acc is not None else None
        return err.index_select(0, keep)

    def backward(self, err: torch.Tensor) -> None:
        """One in-place GD update of every active student from its output error ``err`` = f − y.

        Backward pass of Karakida eq. (4) with η_k folded into the output error: δ_l carries η_k.
        """
        Ws, bs, hs, us = self.Ws, self.bs, self.hs, self.us
        k = Ws[0].shape[0]
        delta = err.mul_(self.lr_scaled[:, None, None])  # η dE/df
        if self.norm == "last-mean":
            delta = center(delta, 2)  # dE/du^L = centred dE/df
        for l in range(self.L - 1, 0, -1):
            dh = torch.bmm(Ws[l].transpose(1, 2), delta, out=self.grads[l][:k])  # W_l before its update
            Ws[l].baddbmm_(delta, hs[l].transpose(1, 2), alpha=-1.0)
            bs[l].sub_(delta.sum(dim=2))
            if self.relu:  # dh · 1[u > 0], in place
                delta = torch.ops.aten.threshold_backward.grad_input(dh, hs[l], 0.0, grad_input=dh)
            else:
                delta = dh.mul_(self.act.derivative(us[l]))
        d2 = delta.view(k * self.M1, self.T)
        if self.sample_space:
            self.u1.view(k * self.M1, self.T).addmm_(d2, self.kx, alpha=-1.0)
            if self.acc is not None:
                self.acc.add_(delta)
        else:
            Ws[0].view(k * self.M1, self.M0).addmm_(d2, self.X, alpha=-1.0)
            bs[0].sub_(delta.sum(dim=2))

    def kept_params(self) -> list | None:
        """The stashed final parameters; in sample space W_1 = W_1(0) − (Σ η δ_1ᵀ) X, b_1 = b_1(0) − (Σ η δ_1ᵀ) 1."""
        if self.keep_W is None:
            return None
        if self.keep_acc is not None:
            K, (T, M0) = self.keep_acc.shape[0], self.X.shape
            self.keep_W[0] = torch.baddbmm(self.keep_W[0], self.keep_acc, self.X.expand(K, T, M0), alpha=-1.0)
            self.keep_b[0] = self.keep_b[0] - self.keep_acc.sum(dim=2)
        return list(zip(self.keep_W, self.keep_b))


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
        :class:`StudentRun` with per-student final loss, explosion flags and loss history.
    """
    ps = check_params(params)
    norm = check_choice("norm", norm, LR_GRID_NORMS)
    steps = check_int("steps", steps, minimum=0)
    explode_at = check_float("explode_at", explode_at, minimum=0.0, strict_min=True)
    stop_loss = check_float("stop_loss", stop_loss, minimum=explode_at)
    lr_arr = np.asarray([check_float("lrs", v, minimum=0.0, strict_min=True) for v in lrs], dtype=np.float64)
    if lr_arr.size == 0:
        raise NormfieldError("lrs must hold at least one learning rate", argument="lrs")
    act = get_activation(activation)
    _check_data(ps, X, y)
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
        return _concat(parts, len(ps), return_params)
    n_par = sum(W.numel() + b.numel() for W, b in ps)
    check_memory("train_students", el * (K * (3 * n_par + 4 * len(ps) * T * widest) + T * T),
                 hint="train fewer learning rates at once or use smaller widths")
    stack = _Stack(ps, X, lr_arr, act, norm, sample_space, return_params)
    yT = y.to(X.dtype).T.unsqueeze(0)  # (1, C, T)
    final = np.full(K, np.nan)
    min_loss = np.full(K, np.inf)
    history = np.full((K, steps + 1), np.nan)
    steps_run = np.zeros(K, dtype=np.int64)
    active = np.arange(K)
    initial = None
    with torch.no_grad():
        for s in range(steps + 1):
            err = stack.forward() - yT
            loss_np = (err.square().sum(dim=(1, 2)) / (2 * T)).cpu().numpy()
            if initial is None:
                initial = loss_np.copy()
            history[active, s] = loss_np
            min_loss[active] = np.minimum(min_loss[active], np.where(np.isfinite(loss_np), loss_np, np.inf))
            bad = ~np.isfinite(loss_np) | (loss_np > stop_loss)
            if s == steps or bad.all():
                final[active] = loss_np
                steps_run[active] = s
                stack.stash(active, np.arange(active.size))
                break
            if bad.any():  # freeze the exploded ones, compact the stack
                final[active[bad]] = loss_np[bad]
                steps_run[active[bad]] = s
                stack.stash(active[bad], np.nonzero(bad)[0])
                keep_np = np.nonzero(~bad)[0]
                active = active[keep_np]
                err = stack.drop(keep_np, err)
            stack.backward(err)
    final = np.where(np.isfinite(final), final, np.inf)
    exploded = ~np.isfinite(final) | (final > explode_at)
    return StudentRun(lr_arr, final, np.asarray(initial, dtype=np.float64), steps_run, exploded, min_loss,
                      stack.kept_params(), history)


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
    ps = check_params(params)
    norm = check_choice("norm", norm, LR_GRID_NORMS)
    lr = check_float("lr", lr, minimum=0.0, strict_min=True)
    act = get_activation(activation)
    theta = [(W.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)) for W, b in ps]
    T = X.shape[0]
    final, mn, s_run, initial = math.nan, math.inf, 0, math.nan
    history = np.full(steps + 1, np.nan)
    for s in range(steps + 1):
        h = X
        for W, b in theta[:-1]:
            h = act.fn(h @ W.T + b)
        f = h @ theta[-1][0].T + theta[-1][1]
        if norm == "last-mean":
            f = center(f, 0)
        loss = ((y - f) ** 2).sum() / (2 * T)
        v = float(loss.detach())
        history[s] = v
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
                      np.array([not math.isfinite(final) or final > explode_at]), np.array([mn]),
                      [(W.detach().unsqueeze(0), b.detach().unsqueeze(0)) for W, b in theta], history[None, :])
