"""The curvature of a model on its data as one operator, built once and reused.

:class:`CurvatureOperator` is built from (model, data, loss, parameters, dtype, device) and gives
products with one of the matrices of :mod:`normfield.analyze.losses`:

* ``fisher-*`` on **one batch** works in the **dual** space (dimension T·R, R = S·C rows per
  sample): v ↦ B J Jᵀ Bᵀ v · s with the loss factor B (identity for ``mse``; the per-row
  :class:`normfield.analyze._functional.Whiten` for cross-entropy) and s = 1/T (``mse``) or
  1/(T·S) (cross-entropy). Its non-zero spectrum is that of F (Karakida et al. 2019, eq. (8) and
  §5): F = s·JᵀBᵀBJ and the dual share their non-zero eigenvalues. One VJP and one JVP per product.
* ``fisher-*`` on **several batches** works in **parameter** space (dimension P):
  v ↦ Σ_b (T_b/N)·s_b·J_bᵀ B_bᵀ B_b J_b v = (1/N) Σ_b J_bᵀ Λ_b J_b v (N = Σ_b T_b), the pooled
  Fisher of the data set, each batch differentiated as a whole (train-mode batch norm couples the
  samples of a batch, as in training): one JVP and one VJP per batch, i.e. one pass over the data.
* ``hessian-*`` works in parameter space: v ↦ Σ_b (T_b/N) ∇²L_b v by double backward
  (a Hessian–vector product; counted as 2 products, its cost is about two backward passes).

Every product is counted (``products``: VJPs and JVPs, an HVP counting 2), the last Lanczos run
is kept (``last``), and :meth:`lanczos` can start from it (``warm=True``), also after
:meth:`refresh` re-reads the model's parameters — what a sharpness tracker during training needs.
Products run inside :meth:`guard`: the model's train/eval flags as asked (``mode``), train-mode
batch norm not updating its running statistics, TF32 off; the model is never modified.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from normfield.analyze._functional import ModelFunction, Whiten, model_state_guard, select_parameters
from normfield.analyze.cost import default_tol
from normfield.analyze.data import Batch, as_batches, forward_errors, resolve_device, resolve_dtype, shape_text
from normfield.analyze.losses import cross_entropy_shape, curvature_name, hessian_loss, is_hessian
from normfield.core import krylov
from normfield.core.jacobian import JacobianOperator
from normfield.core.validation import check_batch_for_norm, check_choice
from normfield.errors import NormfieldError

__all__ = ["CurvatureOperator", "full_precision_float32", "check_batches_for_mode", "WARM_RANDOM"]

#: Weight of the random part of a warm start (relative to its unit warm part).
WARM_RANDOM = 0.25


@contextlib.contextmanager
def full_precision_float32() -> Iterator[None]:
    """TF32 off (CUDA convolutions use it by default; its ~1e-3 relative rounding is above the
    1e-4 float32 accuracy target), restored afterwards."""
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def check_batches_for_mode(model: nn.Module, batches: Sequence[Batch], single: bool) -> None:
    """Refuse what makes the Jacobian ill-defined in the model's current flags: a batch of one
    sample under train-mode batch norm (naming the batch), dropout in training mode."""
    if any(m.training for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
        for b in batches:
            if b.size < 2:
                raise NormfieldError(
                    f"{b.where(single)}: batch size 1 under train-mode batch norm (batch statistics of one sample "
                    "are degenerate); pass at least 2 samples per batch (drop_last=True in a DataLoader), or "
                    "analyze in eval mode with mode='eval'", argument="inputs")
            check_batch_for_norm(f"{b.where(single)} batch size", b.size, "bn")
    drop = [n for n, m in model.named_modules()
            if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0]
    if drop:
        raise NormfieldError(
            f"mode: dropout in training mode ({', '.join(drop[:3])}) makes the Jacobian random; analyze at "
            "mode='eval' (batch norm then uses running statistics), or set the dropout p=0 / call .eval() "
            "on the dropout modules only", argument="mode")


class _Hessian:
    """∇²L_b of one batch by double backward over a graph kept for every product."""

    def __init__(self, fn: ModelFunction, targets: torch.Tensor, curvature: str) -> None:
        self.leaves = {k: v.detach().clone().requires_grad_(True) for k, v in fn.theta.items()}
        with torch.enable_grad():
            out = fn.raw(self.leaves) if fn.selects_columns else fn.picked(self.leaves)
            if fn.center:
                out = out - out.mean(0, keepdim=True)
            self.loss = hessian_loss(curvature, out, targets)
            grads = torch.autograd.grad(self.loss, list(self.leaves.values()), create_graph=True, allow_unused=True)
        self.used = [(k, g) for k, g in zip(self.leaves, grads) if g is not None and g.requires_grad]

    def hvp(self, t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        res = {k: torch.zeros_like(v) for k, v in self.leaves.items()}
        if self.used:
            with torch.enable_grad():
                hs = torch.autograd.grad([g for _, g in self.used], [self.leaves[k] for k, _ in self.used],
                                         [t[k] for k, _ in self.used], retain_graph=True, allow_unused=True)
            for (k, _), h in zip(self.used, hs):
                if h is not None:
                    res[k] = h.detach()
        return res


@dataclasses.dataclass
class _Term:
    """One batch of the operator: its function, its Jacobian operator (Fisher) or Hessian graph."""

    fn: ModelFunction
    batch: Batch
    scale: float  # s_b: 1/T_b (mse) or 1/(T_b·S) (cross-entropy)
    rows: int  # R: rows per sample of the dual
    jac: JacobianOperator | None = None
    hess: _Hessian | None = None
    hvps: int = 0

    @property
    def products(self) -> int:
        return (self.jac.products if self.jac is not None else 0) + 2 * self.hvps


class CurvatureOperator:
    """One curvature of one model on its data, as products (see the module docstring).

    Build it with :meth:`build`; everything else calls :meth:`matvec`, :meth:`lanczos`,
    :meth:`quad_rows`, :meth:`trace_exact` and :meth:`trace_estimate`.

    Attributes:
        curvature: its name (:data:`normfield.analyze.losses.CURVATURES`).
        space: ``"dual"`` (one batch, Fisher: vectors of T·R) or ``"parameter"`` (vectors of P).
        dim: the size of its vectors.
        samples: N, the samples of all batches; ``batches``: how many.
        parameters: P; ``names``: the differentiated parameters.
        rows: R, dual rows per sample (outputs C for mse; positions × classes for cross-entropy).
        center_outputs: the dual is that of the batch-centred outputs Π F* Π (``mse`` only; a
            centred cross-entropy Fisher centres inside its function).
        last: the last :meth:`lanczos` run on the largest eigenvalues (a warm start), or None.
    """

    def __init__(self, terms: list[_Term], *, model: nn.Module, names: list[str], curvature: str, mode: str,
                 space: str, center: bool, route: str, dtype: torch.dtype, device: torch.device) -> None:
        self._terms, self.model, self.names, self.curvature, self.mode = terms, model, names, curvature, mode
        self.center, self.route, self.dtype, self.device = center, route, dtype, device
        self.center_outputs = center and curvature == "fisher-mse"
        self.batches = len(terms)
        self.samples = int(sum(t.batch.size for t in terms))
        theta = terms[0].fn.theta
        self._shapes = [(k, tuple(theta[k].shape), int(theta[k].numel())) for k in names]
        self.parameters = int(sum(s[2] for s in self._shapes))
        if space == "auto":
            space = "dual" if len(terms) == 1 and not is_hessian(curvature) else "parameter"
        if space == "dual" and (len(terms) != 1 or is_hessian(curvature)):
            raise NormfieldError("space='dual' needs one batch and a Fisher curvature", argument="space")
        self.space = space
        self.rows = terms[0].rows
        self.dim = terms[0].batch.size * self.rows if space == "dual" else self.parameters
        self.last: krylov.LanczosResult | None = None
        self.last_lowest: krylov.LanczosResult | None = None

    # -- construction ------------------------------------------------------------------
    @classmethod
    def build(cls, model: nn.Module, data: Any, *, loss: str = "mse", targets: Any = None,
              parameters: Sequence[str] | str | None = None, dtype: Any = None, device: Any = None,
              outputs: Any = None, mode: str = "as-is", jvp: str = "auto", space: str = "auto",
              batch_inputs: Callable[[Any], Any] | None = None, max_batches: int | None = None,
              center: bool = False) -> "CurvatureOperator":
        """Build the operator of ``model`` on ``data`` (one batch or a data set, the rules of
        :mod:`normfield.analyze.data`) for ``loss`` (:data:`normfield.analyze.losses.LOSSES`).

        ``center`` gives the curvature of the model with last-layer mean subtraction
        (Karakida et al. 2019, eq. (15)); ``space`` is ``"auto"``, ``"dual"`` or ``"parameter"``.
        """
        if not isinstance(model, nn.Module):
            raise NormfieldError(f"model must be a torch.nn.Module, got {type(model).__name__}", argument="model")
        check_choice("mode", mode, ["as-is", "train", "eval"])
        check_choice("space", space, ["auto", "dual", "parameter"])
        dev, dt = resolve_device(device, model), resolve_dtype(dtype, model)
        batches, single = as_batches(data, dtype=dt, device=dev, batch_inputs=batch_inputs, targets=targets,
                                     max_batches=max_batches)
        names = select_parameters(model, parameters)
        with model_state_guard(model, mode), full_precision_float32():
            check_batches_for_mode(model, batches, single)
        return cls.from_batches(model, batches, names, loss=loss, dtype=dt, device=dev, outputs=outputs,
                                mode=mode, jvp=jvp, space=space, center=center, single=single)

    @classmethod
    def from_batches(cls, model: nn.Module, batches: list[Batch], names: list[str], *, loss: str = "mse",
                     dtype: torch.dtype, device: torch.device, outputs: Any = None, mode: str = "as-is",
                     jvp: str = "auto", space: str = "auto", center: bool = False,
                     single: bool = False) -> "CurvatureOperator":
        """Build from prepared batches (:func:`normfield.analyze.data.as_batches`) and parameter names."""
        curvature = curvature_name(loss, batches[0].targets)
        if is_hessian(curvature):
            missing = [b.index for b in batches if b.targets is None]
            if missing:
                raise NormfieldError(f"targets: loss={loss!r} needs targets; batch {missing[0]} has none (pass "
                                     "targets=, or (inputs, targets) pairs in the loader)", argument="targets")
        base = ModelFunction.build(model, batches[0].args, names, dtype=dtype, device=device, outputs=outputs,
                                   kwargs=batches[0].kwargs)
        with model_state_guard(model, mode), full_precision_float32():
            terms = [_make_term(base, b, curvature, center, jvp, single) for b in batches]
        return cls(terms, model=model, names=names, curvature=curvature, mode=mode, space=space, center=center,
                   route=jvp, dtype=dtype, device=device)

    @classmethod
    def from_function(cls, fn: ModelFunction, *, loss: str = "mse", route: str = "auto",
                      mode: str = "as-is") -> "CurvatureOperator":
        """The dual operator of one :class:`ModelFunction` (its batch, parameters and ``center``)."""
        args = fn.inputs if isinstance(fn.inputs, tuple) else (fn.inputs,)
        T = next(int(a.shape[0]) for a in [*args, *fn.kwargs.values()] if isinstance(a, torch.Tensor))
        batch = Batch(args, dict(fn.kwargs), T)
        curvature = curvature_name(loss)
        with model_state_guard(fn.model, mode), full_precision_float32():
            term = _make_term(fn.with_center(False), batch, curvature, fn.center, route, True)
        theta = term.fn.theta
        return cls([term], model=fn.model, names=list(fn.names), curvature=curvature, mode=mode, space="auto",
                   center=fn.center, route=route, dtype=next(iter(theta.values())).dtype,
                   device=next(iter(theta.values())).device)

    def for_batch(self, i: int) -> "CurvatureOperator":
        """The operator of batch ``i`` alone (its own curvature F_b; sharing the products' state)."""
        return CurvatureOperator([self._terms[i]], model=self.model, names=self.names, curvature=self.curvature,
                                 mode=self.mode, space="auto", center=self.center, route=self.route,
                                 dtype=self.dtype, device=self.device)

    def with_center(self, center: bool = True) -> "CurvatureOperator":
        """The same curvature of the model with last-layer mean subtraction (new products)."""
        base = self._terms[0].fn.replace(center=False, transform=None)
        with self.guard():
            terms = [_make_term(base, t.batch, self.curvature, center, self.route, True) for t in self._terms]
        return CurvatureOperator(terms, model=self.model, names=self.names, curvature=self.curvature,
                                 mode=self.mode, space=self.space, center=center, route=self.route,
                                 dtype=self.dtype, device=self.device)

    def refresh(self) -> None:
        """Re-read the model's current parameters and buffers (same names), keeping ``last`` for a warm
        start: the operator at the model's new point (e.g. after training steps)."""
        have = [n for n, p in self.model.named_parameters()]
        missing = [n for n in self.names if n not in have]
        if missing:
            raise NormfieldError(f"model: parameter {missing[0]!r} of the operator is gone; build a new operator",
                                 argument="model")
        base = ModelFunction.build(self.model, self._terms[0].batch.args, self.names, dtype=self.dtype,
                                   device=self.device, outputs=self._terms[0].fn.outputs,
                                   kwargs=self._terms[0].batch.kwargs)
        done = self.products
        with self.guard():
            self._terms = [_make_term(base, t.batch, self.curvature, self.center, self.route, True)
                           for t in self._terms]
        self._offset = done  # the new terms start from 0

    # -- bookkeeping ---------------------------------------------------------------------
    _offset = 0

    @property
    def products(self) -> int:
        """Jacobian products so far (VJPs and JVPs; an HVP counts 2), over every batch."""
        return self._offset + int(sum(t.products for t in self._terms))

    @property
    def jacobian(self) -> JacobianOperator:
        """The Jacobian operator of the (whitened) outputs of a one-batch Fisher operator."""
        if len(self._terms) != 1 or self._terms[0].jac is None:
            raise NormfieldError("jacobian: only a one-batch Fisher operator has one", argument="operator")
        return self._terms[0].jac

    @property
    def T(self) -> int:
        """Samples of the first batch (of the only one, in dual space)."""
        return self._terms[0].batch.size

    @property
    def batch_sizes(self) -> list[int]:
        return [t.batch.size for t in self._terms]

    @property
    def route_used(self) -> str:
        """How the Jacobian products are formed (:data:`normfield.core.jacobian.ROUTES`), or ``hvp``."""
        j = self._terms[0].jac
        return j.route if j is not None else "hvp"

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """The model's flags as the operator needs them (see the module docstring), restored after."""
        with model_state_guard(self.model, self.mode), full_precision_float32():
            yield

    def flatten(self, d: dict[str, torch.Tensor]) -> np.ndarray:
        """A parameter dict as a float64 vector (P,), in ``names`` order."""
        return torch.cat([d[k].reshape(-1).double() for k, _, _ in self._shapes]).cpu().numpy()

    def unflatten(self, v: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        v = torch.as_tensor(v, device=self.device).to(self.dtype)
        out, i = {}, 0
        for k, shape, n in self._shapes:
            out[k] = v[i:i + n].reshape(shape)
            i += n
        return out

    def _centre(self, v: torch.Tensor) -> torch.Tensor:
        w = v.reshape(self.T, -1)
        return (w - w.mean(0, keepdim=True)).reshape(v.shape)

    # -- products ------------------------------------------------------------------------
    def matvec(self, v: np.ndarray) -> np.ndarray:
        """A v for v of shape (dim,) (float64 in and out)."""
        with self.guard(), torch.no_grad():
            if self.space == "dual":
                vt = torch.as_tensor(np.asarray(v), device=self.device).to(self.dtype)
                if self.center_outputs:
                    return self._centre(self.jacobian.gram(self._centre(vt))).double().cpu().numpy()
                return self.jacobian.gram(vt).double().cpu().numpy()
            t = self.unflatten(np.asarray(v))
            acc = {k: torch.zeros_like(x) for k, x in t.items()}
            for term in self._terms:
                w = term.batch.size / self.samples
                if term.hess is not None:
                    term.hvps += 1
                    h = term.hess.hvp(t)
                    for k in acc:
                        acc[k] += w * h[k]
                else:
                    g = term.jac.vjp(term.jac.jvp(t))
                    for k in acc:
                        acc[k] += (w * term.scale) * g[k]
            return self.flatten(acc)

    def quad_rows(self, Z: np.ndarray) -> np.ndarray:
        """zᵀ A z for each row z of Z (m, dim), float64 (m,): one VJP per row in dual space (‖JᵀBᵀz‖²·s),
        one JVP per row and batch in parameter space (Σ_b w_b s_b ‖B_b J_b z‖²), one HVP for a Hessian."""
        Z = np.atleast_2d(np.asarray(Z, dtype=float))
        with self.guard(), torch.no_grad():
            if self.space == "dual":
                Zt = torch.as_tensor(Z, device=self.device).to(self.dtype)
                if self.center_outputs:
                    Zt = torch.stack([self._centre(z) for z in Zt])
                return self.jacobian.sq_norm_vjp_batched(Zt)
            if is_hessian(self.curvature):
                return np.array([float(z @ self.matvec(z)) for z in Z])
            out = np.zeros(len(Z))
            starts = np.cumsum([0] + [n for _, _, n in self._shapes])
            G = {k: torch.as_tensor(Z[:, i:i + n], device=self.device).to(self.dtype).reshape(len(Z), *s)
                 for (k, s, n), i in zip(self._shapes, starts)}
            for term in self._terms:
                JZ = term.jac.jvp_batched(G)
                out += (term.batch.size / self.samples) * term.scale * JZ.double().pow(2).sum(1).cpu().numpy()
            return out

    def trace_exact(self, chunk: int | None = None) -> float:
        """tr A exactly: Σ_b w_b s_b ‖B_b J_b‖_F² by the rows of each batch's (whitened) Jacobian
        (T_b·R VJPs per batch; in dual space w = 1). Not for a Hessian (P products)."""
        if is_hessian(self.curvature) or self.center_outputs:
            raise NormfieldError("trace_exact: use trace_estimate for a Hessian or a centred dual",
                                 argument="trace")
        tot = 0.0
        with self.guard(), torch.no_grad():
            for term in self._terms:
                n, out = term.jac.n, term.jac.out
                c = chunk or max(1, min(n, 64, (2**27) // max(1, self.parameters * out.element_size())))
                s = 0.0
                for a in range(0, n, c):
                    e = min(n, a + c)
                    E = torch.zeros((e - a, n), dtype=out.dtype, device=out.device)
                    E[torch.arange(e - a), torch.arange(a, e)] = 1
                    s += float(sum(g.double().pow(2).sum() for g in term.jac.vjp_batched(E).values()))
                w = 1.0 if self.space == "dual" else term.batch.size / self.samples
                tot += w * term.scale * s
        return tot

    def trace_estimate(self, *, rtol: float = 0.01, probes: int | None = None, seed: int = 0,
                       stop: Callable[[], bool] | None = None, max_probes: int | None = None,
                       block: int = 8) -> krylov.TraceEstimate:
        """tr A by Hutchinson on the complement of the last Lanczos basis (its own part Σα is known;
        :func:`normfield.core.krylov.deflated_trace_blocked`), probes until the standard error is at
        most ``rtol``·|tr| (or ``probes`` exactly; at most ``max_probes``, default max(8, dim))."""
        lz = self.last
        basis = lz.basis if lz is not None else None
        inside = float(np.sum(lz.alpha)) if lz is not None else 0.0
        fixed = probes is not None
        cap = max_probes if max_probes is not None else max(8, self.dim)
        return krylov.deflated_trace_blocked(self.quad_rows, self.dim, basis, inside, rtol=rtol,
                                             min_probes=probes if fixed else 8, max_probes=probes if fixed else cap,
                                             block=block, seed=seed, stop=stop)

    def default_max_steps(self, k: int) -> int:
        """Lanczos steps at most in parameter space: krylov's default max(400, 40 + 20k), but no more
        than a basis of a quarter of the allocation cap (``NORMFIELD_MAX_BYTES``, 8 GiB: 2 GiB of
        float64 vectors of P), and at least k + 10. A run that needs more ends unconverged and says so."""
        from normfield.core.validation import _max_bytes

        fit = int(_max_bytes() / 4 // (8 * max(1, self.dim))) - 1
        return max(k + 10, min(max(400, 40 + 20 * k), fit))

    def warm_vector(self, k: int = 1, seed: int = 0) -> np.ndarray | None:
        """The sum of the top ``k`` Ritz vectors of :attr:`last` plus :data:`WARM_RANDOM` times a random
        unit vector (every eigenvector keeps a share of the start); None without a usable last run."""
        lz = self.last
        if lz is None or lz.eigenvectors.shape[0] != self.dim or not lz.eigenvectors.shape[1]:
            return None
        v = lz.eigenvectors[:, :k].sum(1)
        v = v / max(float(np.linalg.norm(v)), 1e-300)
        r = np.random.default_rng(seed).standard_normal(self.dim)
        if self.center_outputs:
            r = (r.reshape(self.T, -1) - r.reshape(self.T, -1).mean(0)).reshape(-1)
        return v + WARM_RANDOM * r / max(float(np.linalg.norm(r)), 1e-300)

    def lanczos(self, k: int = 1, tol: float | None = None, *, v0: np.ndarray | None = None, warm: bool = False,
                seed: int = 0, max_steps: int | None = None, stop: Callable[[], bool] | None = None,
                which: str = "largest", shift: float | None = None) -> krylov.LanczosResult:
        """Extreme eigenpairs by :func:`normfield.core.krylov.lanczos` (residual stopping rule).

        Args:
            k: how many.
            tol: relative accuracy (default 1e-4 in float32, 1e-8 in float64).
            v0: start vector (dim,); ``warm=True`` starts from :meth:`warm_vector` instead when there is one.
            which: ``"largest"`` (kept as :attr:`last`) or ``"smallest"``: the largest of shift·I − A,
                so that the accuracy is relative to the spread shift − λ_min (``shift`` defaults to the
                largest Ritz value of :attr:`last`); eigenvalues come back as λ = shift − θ, smallest first.
        """
        check_choice("which", which, ["largest", "smallest"])
        tol = default_tol(self.dtype) if tol is None else float(tol)
        if max_steps is None and self.space == "parameter":
            max_steps = self.default_max_steps(k)
        if v0 is None and warm:
            v0 = self.warm_vector(k, seed)
        if v0 is None and self.center_outputs:
            r = np.random.default_rng(seed).standard_normal(self.dim)
            v0 = (r.reshape(self.T, -1) - r.reshape(self.T, -1).mean(0)).reshape(-1)
        if which == "largest":
            self.last = krylov.lanczos(self.matvec, self.dim, k, tol=tol, seed=seed, max_steps=max_steps, stop=stop,
                                       v0=v0)
            return self.last
        if shift is None:
            if self.last is None:
                raise NormfieldError("shift: run lanczos(which='largest') first or give shift=", argument="shift")
            shift = float(self.last.eigenvalues[0]) + float(self.last.errors[0])
        r = krylov.lanczos(lambda v: shift * np.asarray(v) - self.matvec(v), self.dim, k, tol=tol, seed=seed + 7,
                           max_steps=max_steps, stop=stop, v0=v0 if v0 is not None else None)
        self.last_lowest = dataclasses.replace(r, eigenvalues=shift - r.eigenvalues)
        return self.last_lowest


def _make_term(base: ModelFunction, batch: Batch, curvature: str, center: bool, route: str,
               single: bool) -> _Term:
    """One batch's term: its function (whitened for cross-entropy) and its products."""
    fn = base.replace(inputs=batch.args, kwargs=batch.kwargs, center=False, transform=None)
    where = batch.where(single)
    T = batch.size
    with forward_errors(where, shape_text(batch), T):
        if is_hessian(curvature):
            fn = fn.replace(center=center)
            try:
                hess = _Hessian(fn, batch.targets, curvature)
            except NormfieldError:
                raise
            except RuntimeError as e:
                if "does not require grad" in str(e) or "derivative" in str(e):
                    raise NormfieldError(f"model: the Hessian needs a twice-differentiable model ({e})",
                                         argument="loss") from None
                raise
            with torch.no_grad():
                rows = int(fn.raw(fn.theta).shape[1])
            return _Term(fn, batch, 1.0 / T, rows, hess=hess)
        scale, transform = 1.0 / T, None
        if curvature == "fisher-cross-entropy":
            with torch.no_grad():
                logits = fn.raw(fn.theta) if fn.selects_columns else fn.picked(fn.theta)
                _, S, C = cross_entropy_shape(logits, selects_columns=fn.selects_columns)
                z = logits.reshape(T, S, C)
                if center:
                    z = z - z.mean(0, keepdim=True)
                transform = Whiten(torch.softmax(z, dim=-1).sqrt())
            scale = 1.0 / (T * S)
            fn = fn.replace(center=center, transform=transform)
        jac = JacobianOperator(fn, fn.theta, scale=scale, route=route, module=fn.model)
    if int(jac.n) % T:
        raise NormfieldError(f"outputs: the model output has {jac.n} values for a batch of {T}; it must have the "
                             "batch dimension first", argument="outputs")
    return _Term(fn, batch, scale, int(jac.n) // T, jac=jac)
