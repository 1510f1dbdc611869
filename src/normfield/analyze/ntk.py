"""The Fisher/NTK dual F* = J Jᵀ / T of any module, over the whole batch.

Karakida, Akaho & Amari (2019), eq. (8) define the empirical Fisher information
matrix of a network with outputs f_k(t) (k = 1..C outputs, t = 1..T samples) as

    F = (1/T) Σ_t Σ_k ∇θ f_k(t) ∇θ f_k(t)ᵀ = Jᵀ J / T          (P × P),

with J the (T·C) × P Jacobian. Its non-zero eigenvalues are those of the dual
(the empirical NTK, Karakida et al. 2019 §5, and their Supplementary eq. S.23 /
S.105 for the normalized networks)

    F* = J Jᵀ / T                                              (T·C × T·C),

so m_λ = tr(F)/P = tr(F*)/P and λ_max(F) = λ_max(F*) (Karakida et al. 2019,
Thm 2.2, eq. (10)). Gradient descent on the squared loss is unstable above the
learning rate 2/λ_max (Karakida et al. 2019, eq. (23)).

Last-layer mean subtraction f̄ = f − E_batch[f] (Karakida et al. 2019, eq. (15))
is a projection on the output side, f̄ = Π f with Π = I − Σ_k u_k u_kᵀ and
u_k = (1_T ⊗ e_k)/√T, so its dual is F̄* = Π F* Π: it is computed with the same
Jacobian products (no second graph), its trace is
tr F̄* = tr F* − Σ_k ‖Jᵀu_k‖²/T (C more VJPs), and on the dense route F̄* itself
costs nothing more. On the Lanczos route the same C VJPs give UᵀF*U, with which the
main run's Krylov space yields Ritz vectors of F̄* without a product
(:func:`projected_ritz`); the variant's own Lanczos run starts from them
(:func:`warm_start`).

Two engines, both differentiating the whole batch at once (train-mode
batch-norm couplings between samples are exact), on the products of
:class:`normfield.core.jacobian.JacobianOperator`:

* ``dense``: rows of J in chunks (vmapped VJPs), then J J_chunkᵀ (vmapped
  JVPs): F* exactly, memory chunk × P + (T·C)², never the whole J.
* ``lanczos``: F* v = J (Jᵀ v)/T fed to :func:`normfield.core.krylov.lanczos`;
  the trace is exact (T·C VJPs) when that costs no more than the Lanczos run and
  otherwise :func:`normfield.core.krylov.deflated_trace` on the complement of
  the Lanczos basis, whose own part tr(QᵀF*Q) = Σα_i is already known.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from normfield.analyze._functional import ModelFunction
from normfield.analyze.cost import DEFAULT_TRACE_RTOL, ProductMeter, default_tol, parse_budget
from normfield.analyze.operator import CurvatureOperator
from normfield.core.jacobian import JacobianOperator
from normfield.analyze.spectrum import FisherSpectrum
# WARM_RANDOM stays importable from here, its former home
from normfield.analyze.variants import WARM_RANDOM, _mean_block, center_outputs, projected_ritz, warm_start  # noqa: F401
from normfield.core import krylov
from normfield.core.validation import check_choice, check_int, check_memory
from normfield.errors import NormfieldError

__all__ = ["FisherSpectrum", "fisher_ntk", "fisher_spectra", "dual_spectra", "dual_matvec", "dense_dual", "lanczos_top",
           "slq_density", "center_outputs", "projected_ritz", "warm_start"]


def _operator(fn: ModelFunction, route: str = "auto") -> tuple[JacobianOperator, int, int]:
    base = fn.with_center(False)
    with torch.no_grad():
        T, C = (int(s) for s in base.raw(base.theta).shape)
    return JacobianOperator(base, base.theta, scale=1.0 / T, route=route, module=fn.model), T, C


def dual_matvec(fn: ModelFunction):
    """Return (n, T, out, matvec) with matvec(v) = F* v = J (Jᵀ v)/T for v of shape (n,), n = T·C
    (centred outputs when ``fn.center``); one VJP and one JVP per product."""
    op, T, _ = _operator(fn)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        if fn.center:
            return center_outputs(op.gram(center_outputs(v, T)), T)
        return op.gram(v)

    out = center_outputs(op.out, T) if fn.center else op.out
    return op.n, T, out, matvec


def lanczos_top(matvec, n: int, k: int = 1, *, tol: float = 1e-10, max_steps: int | None = None,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """Top-k eigenpairs by :func:`normfield.core.krylov.lanczos` (steps at most min(n, 40 + 20k, 400)).

    Returns:
        (eigenvalues (k,) largest first, eigenvectors (n, k), products used, converged).
    """
    steps = max_steps if max_steps is not None else min(400, 40 + 20 * k)
    r = krylov.lanczos(matvec, n, k, tol=tol, max_steps=steps, seed=seed)
    return r.eigenvalues, r.eigenvectors, r.products, r.converged


def slq_density(matvec, n: int, *, probes: int = 4, steps: int = 30, seed: int = 0):
    """Spectral density by :func:`normfield.core.krylov.slq`: (nodes, weights summing to 1, products)."""
    return krylov.slq(matvec, n, probes=probes, steps=steps, seed=seed)


#: Hutchinson probes per batched VJP at most (one vmapped backward for the block).
PROBE_BLOCK = 16


def _chunk_size(P: int, n: int, itemsize: int, chunk: int | None) -> int:
    if chunk is not None:
        return check_int("chunk", chunk, minimum=1)
    return int(max(1, min(n, 64, (2**27) // max(1, P * itemsize))))  # ~128 MiB of Jacobian rows


def _eye_rows(s: int, e: int, n: int, like: torch.Tensor) -> torch.Tensor:
    E = torch.zeros((e - s, n), dtype=like.dtype, device=like.device)
    E[torch.arange(e - s), torch.arange(s, e)] = 1
    return E


def dense_dual(fn: ModelFunction | JacobianOperator, *, chunk: int | None = None,
               progress: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
    """F* = J Jᵀ / T exactly (for a :class:`JacobianOperator`: its ``scale``·J Jᵀ), without materialising J.

    Returns:
        (F* of shape (n, n) in the analysis dtype, diag(J Jᵀ) of shape (n,), Jacobian products).
    """
    op = _operator(fn)[0] if isinstance(fn, ModelFunction) else fn
    n, out = op.n, op.out
    P = int(sum(v.numel() for v in op.theta.values()))
    itemsize = out.element_size()
    c = _chunk_size(P, n, itemsize, chunk)
    check_memory("dense F*", n * n * itemsize + c * P * itemsize * 3,
                 hint="use method='lanczos' (matrix-free) or a smaller batch")
    F = torch.empty((n, n), dtype=out.dtype, device=out.device)
    rownorm = torch.empty(n, dtype=out.dtype, device=out.device)
    from tqdm.auto import tqdm

    before = op.products
    with torch.no_grad():
        for s in tqdm(range(0, n, c), desc="F* (dense)", disable=not progress, leave=False):
            e = min(n, s + c)
            G = op.vjp_batched(_eye_rows(s, e, n, out))  # rows s..e of J, per parameter
            rownorm[s:e] = sum(g.reshape(e - s, -1).pow(2).sum(1) for g in G.values())
            F[:, s:e] = op.jvp_batched(G).T
    F = 0.5 * (F + F.T) * op.scale
    return F, rownorm, op.products - before


def _exact_trace(op: JacobianOperator, chunk: int | None) -> float:
    """tr(s·J Jᵀ) = s·‖J‖_F² by T·C VJPs (float64 accumulation)."""
    n, out = op.n, op.out
    c = _chunk_size(sum(v.numel() for v in op.theta.values()), n, out.element_size(), chunk)
    tot = 0.0
    with torch.no_grad():
        for s in range(0, n, c):
            G = op.vjp_batched(_eye_rows(s, min(n, s + c), n, out))
            tot += float(sum(g.double().pow(2).sum() for g in G.values()))
    return tot * op.scale


def _dense_spectrum(F: np.ndarray, tr: float, P: int, T: int, C: int, k: int, prods: int, route: str, *,
                    keep_dual: bool, density: bool) -> FisherSpectrum:
    n = F.shape[0]
    w = np.linalg.eigvalsh(F)[::-1].copy()
    return FisherSpectrum(
        lambda_max=float(w[0]), m_lambda=tr / P, trace=tr, trace_stderr=0.0, parameters=P, samples=T, outputs=C,
        eigenvalues=w[:k].copy(), method="dense", products=prods, spectrum=w, dual=F if keep_dual else None,
        density_nodes=w.copy() if density else None, density_weights=np.full(n, 1.0 / n) if density else None,
        route=route)


def fisher_spectra(
    fn: ModelFunction,
    variants: Sequence[str] = (),
    *,
    k: int = 5,
    what_if_k: int | None = None,
    method: str = "auto",
    dense_max: int = 256,
    tol: float | None = None,
    trace: str = "auto",
    probes: int | None = None,
    trace_rtol: float = DEFAULT_TRACE_RTOL,
    seed: int = 0,
    chunk: int | None = None,
    keep_dual: bool = False,
    density: bool = False,
    density_probes: int = 4,
    density_steps: int = 30,
    max_steps: int | None = None,
    budget: Any = None,
    progress: bool = False,
    jvp: str = "auto",
    loss: str = "mse",
) -> tuple[FisherSpectrum, dict[str, FisherSpectrum]]:
    """F* of ``fn`` and of its variants (``"last-mean"``: F̄* = Π F* Π) from one set of Jacobian products.

    Args:
        fn: the model as a function of its parameters (whole batch); ``fn.center`` makes the main
            spectrum that of the centred outputs.
        variants: names among ``("last-mean",)``.
        k: how many leading eigenvalues.
        what_if_k: how many of each variant (default ``k``).
        method: ``"dense"``, ``"lanczos"`` or ``"auto"`` (dense when T·C <= dense_max).
        tol: relative accuracy of the Lanczos eigenvalues (default 1e-4 in float32, 1e-8 in float64).
        trace: ``"exact"`` (T·C VJPs), ``"hutchinson"`` (deflated by the Lanczos basis) or ``"auto"``
            (exact when it costs no more products than the Lanczos run). Dense is always exact.
        probes: Hutchinson probes (default: adaptive, until the standard error is <= trace_rtol·trace).
        trace_rtol: target standard error of the stochastic trace relative to it.
        seed: Lanczos start vectors and probes.
        keep_dual: return F* itself (dense route).
        density: also return the spectral density (exact on the dense route; stochastic Lanczos
            quadrature with ``density_probes`` × ``density_steps`` products otherwise).
        max_steps: Lanczos steps at most.
        budget: products (int) or seconds (``"30s"``) for the whole call; when it runs out the
            answers so far are returned with ``converged=False`` and their error estimates.
        progress: a progress bar in products.
        jvp: product route, ``"auto"`` or one of :data:`normfield.core.jacobian.ROUTES`.
        loss: ``"mse"`` or ``"cross-entropy"`` (:mod:`normfield.analyze.losses`); variants need ``"mse"``
            (a centred cross-entropy Fisher is its own operator: ``CurvatureOperator.with_center``).

    Returns:
        (the main :class:`FisherSpectrum`, {variant: FisherSpectrum}).

    Shapes: F* is (T·C, T·C) with index t·C + k (sample-major).
    """
    cop = CurvatureOperator.from_function(fn, loss=loss, route=jvp)
    return dual_spectra(cop, variants, k=k, what_if_k=what_if_k, method=method, dense_max=dense_max, tol=tol,
                        trace=trace, probes=probes, trace_rtol=trace_rtol, seed=seed, chunk=chunk, keep_dual=keep_dual,
                        density=density, density_probes=density_probes, density_steps=density_steps,
                        max_steps=max_steps, budget=budget, progress=progress)


def _dense_spectra(cop: CurvatureOperator, want: dict[str, bool], k: int, kv: int, *, chunk: int | None,
                   progress: bool, keep_dual: bool, density: bool) -> tuple[FisherSpectrum, dict[str, FisherSpectrum]]:
    """The dense route of :func:`dual_spectra`: F* formed once (T·C rows), every wanted spectrum from it
    (``want``: name -> centred?); a centred variant Π F* Π costs no further product."""
    op, T, C = cop.jacobian, cop.T, cop.rows
    n, P = op.n, cop.parameters
    F, rownorm, prods = dense_dual(op, chunk=chunk, progress=progress)
    Fd = F.double().cpu().numpy()
    out = {}
    for name, cen in want.items():
        if cen:
            F4 = Fd.reshape(T, C, T, C)  # Π F* Π: subtract the sample means on both sides
            F4 = F4 - F4.mean(axis=0, keepdims=True)
            Fc = (F4 - F4.mean(axis=2, keepdims=True)).reshape(n, n)
            Fc = 0.5 * (Fc + Fc.T)
            out[name] = _dense_spectrum(Fc, float(np.trace(Fc)), P, T, C, k if name == "main" else kv,
                                        prods if name == "main" else 0,
                                        op.route, keep_dual=keep_dual, density=density)
            if name != "main":
                out[name].note = "reuses the main run's dense F*: Π F* Π costs no product"
        else:
            out[name] = _dense_spectrum(Fd, float(rownorm.double().sum()) * op.scale, P, T, C, k, prods,
                                        op.route, keep_dual=keep_dual, density=density)
    for r in out.values():
        r.curvature = cop.curvature
    return out.pop("main"), out


def dual_spectra(
    cop: CurvatureOperator,
    variants: Sequence[str] = (),
    *,
    k: int = 5,
    what_if_k: int | None = None,
    method: str = "auto",
    dense_max: int = 256,
    tol: float | None = None,
    trace: str = "auto",
    probes: int | None = None,
    trace_rtol: float = DEFAULT_TRACE_RTOL,
    seed: int = 0,
    chunk: int | None = None,
    keep_dual: bool = False,
    density: bool = False,
    density_probes: int = 4,
    density_steps: int = 30,
    max_steps: int | None = None,
    budget: Any = None,
    progress: bool = False,
    meter: ProductMeter | None = None,
) -> tuple[FisherSpectrum, dict[str, FisherSpectrum]]:
    """The spectra of a one-batch (dual-space) :class:`CurvatureOperator` and of its variants.

    The arguments are those of :func:`fisher_spectra`; ``meter`` is a running
    :class:`normfield.analyze.cost.ProductMeter` to count against (its budget, its bar) instead
    of a new one. Products of UᵀF*U (C VJPs, :func:`_mean_block`) serve the ``last-mean`` variant
    and are counted in its row; a dense variant reuses the main run's F* (0 products, ``note``).
    """
    if cop.space != "dual":
        raise NormfieldError("dual_spectra needs a one-batch Fisher operator (space 'dual')", argument="operator")
    if variants and cop.curvature != "fisher-mse":
        raise NormfieldError("what_if: variants of a cross-entropy Fisher are separate operators "
                             "(CurvatureOperator.with_center)", argument="what_if")
    check_choice("method", method, ["auto", "dense", "lanczos"])
    check_choice("trace", trace, ["auto", "exact", "hutchinson"])
    for v in variants:
        check_choice("what_if", v, ["last-mean"])
    k = check_int("k", k, minimum=1)
    kv = k if what_if_k is None else check_int("what_if_k", what_if_k, minimum=1)
    if probes is not None:
        probes = check_int("probes", probes, minimum=2)
    if not (trace_rtol > 0 and math.isfinite(trace_rtol)):
        raise NormfieldError(f"trace_rtol must be a positive number, got {trace_rtol!r}", argument="trace_rtol")
    op = cop.jacobian
    n = op.n
    k, kv = min(k, n), min(kv, n)
    tol = default_tol(op.out.dtype) if tol is None else float(tol)
    if method == "auto":
        method = "dense" if n <= dense_max else "lanczos"
    want = {"main": cop.center_outputs, **{v: True for v in variants}}  # name -> centred?
    if method == "dense":
        return _dense_spectra(cop, want, k, kv, chunk=chunk, progress=progress, keep_dual=keep_dual,
                              density=density)
    own = meter is None
    if own:
        meter = ProductMeter(parse_budget(budget), progress=progress)
        meter.bind(op)
    run = _LanczosSpectra(cop, meter, want, tol=tol, seed=seed, max_steps=max_steps, trace=trace, probes=probes,
                          trace_rtol=trace_rtol, chunk=chunk)
    try:
        results: dict[str, FisherSpectrum] = {}
        for name, cen in want.items():
            results[name] = run.spectrum(name, cen, k if name == "main" else kv)
            if density:
                results[name].density_nodes, results[name].density_weights, _ = krylov.slq(
                    run.matvec(cen), n, probes=check_int("density_probes", density_probes, minimum=1),
                    steps=check_int("density_steps", density_steps, minimum=2), seed=seed + 2, stop=meter.stop)
                results[name].products = op.products - run.start
    finally:
        if own:
            meter.close()
    cost = run.mean_cost
    if "last-mean" in results and cost["products"]:
        # UᵀF*U serves the variant (its warm start, its trace): count it there, wherever it ran
        if cost["during"] == "main":
            results["main"].products -= cost["products"]
            results["last-mean"].products += cost["products"]
        results["last-mean"].note = (f"includes the {cost['products']} VJPs of the mean part UᵀF*U; starts "
                                     "from the Rayleigh–Ritz vector of Π F* Π on the main run's Krylov space")
    return results.pop("main"), results


class _LanczosSpectra:
    """The Lanczos route of :func:`dual_spectra`, one spectrum at a time, sharing across them the
    uncentred run (it warm-starts the centred variant), the trace of F* and the mean part UᵀF*U
    (C VJPs, computed once, its cost noted with the spectrum it ran for)."""

    def __init__(self, cop: CurvatureOperator, meter: ProductMeter, want: dict[str, bool], *, tol: float, seed: int,
                 max_steps: int | None, trace: str, probes: int | None, trace_rtol: float, chunk: int | None) -> None:
        self.cop, self.op, self.meter, self.want = cop, cop.jacobian, meter, want
        self.T, self.C, self.n = cop.T, cop.rows, cop.jacobian.n
        self.tol, self.seed, self.max_steps = tol, seed, max_steps
        self.trace, self.probes, self.trace_rtol, self.chunk = trace, probes, trace_rtol, chunk
        self.main_trace: tuple[float, float, bool] | None = None  # (value, stderr, exact) of the uncentred F*
        self.mean_blk: np.ndarray | None = None  # UᵀF*U
        self.main_lz: krylov.LanczosResult | None = None  # the run on the uncentred F*
        self.mean_cost = {"products": 0, "during": ""}
        self.current = ""
        self.start = 0

    def mean_of_f(self) -> float:
        """Σ_k u_kᵀ F* u_k = Σ_k ‖Jᵀu_k‖²/T = tr F* − tr F̄* (C VJPs, the first time only)."""
        if self.mean_blk is None:
            before = self.op.products
            self.mean_blk = _mean_block(self.op, self.T, self.C)
            self.mean_cost.update(products=self.op.products - before, during=self.current)
        return float(np.trace(self.mean_blk))

    def matvec(self, cen: bool):
        """v ↦ F* v, or Π F* Π v for the centred spectrum, on float64 NumPy vectors."""
        op, T = self.op, self.T

        def mv(v: np.ndarray) -> np.ndarray:
            vt = torch.as_tensor(v, dtype=op.out.dtype, device=op.out.device)
            r = op.gram(center_outputs(vt, T) if cen else vt)
            return (center_outputs(r, T) if cen else r).double().cpu().numpy()

        return mv

    def spectrum(self, name: str, cen: bool, kk: int) -> FisherSpectrum:
        """The top ``kk`` eigenvalues and the trace of F* (``cen``: of Π F* Π)."""
        op, meter, n, T = self.op, self.meter, self.n, self.T
        self.start, self.current = op.products, name
        v0 = center_outputs(np.random.default_rng(self.seed).standard_normal(n), T) if cen else None
        if cen and self.main_lz is not None and not meter.stop():
            # Rayleigh–Ritz of Π F* Π on the main run's projected Krylov space: a start vector for free
            self.mean_of_f()
            warm = warm_start(self.main_lz, self.mean_blk, T, self.C, kk, self.seed)
            v0 = v0 if warm is None else warm
        lz = krylov.lanczos(self.matvec(cen), n, kk, tol=self.tol, seed=self.seed, max_steps=self.max_steps,
                            stop=meter.stop, v0=v0)
        if not cen:
            self.main_lz = lz
        if name == "main":
            self.cop.last = lz
        tr, se, how = self.trace_of(lz, cen)
        P = self.cop.parameters
        return FisherSpectrum(
            lambda_max=float(lz.eigenvalues[0]), m_lambda=tr / P, trace=tr, trace_stderr=se, parameters=P,
            samples=T, outputs=self.C, eigenvalues=np.asarray(lz.eigenvalues[:kk], dtype=float),
            method=f"lanczos, {how}", products=op.products - self.start, eigenvalue_errors=lz.errors.copy(),
            converged=lz.converged and not meter.exhausted, route=op.route, stopped=lz.stopped,
            curvature=self.cop.curvature)

    def trace_of(self, lz: krylov.LanczosResult, cen: bool) -> tuple[float, float, str]:
        """(trace, its standard error, how): exact (T·C VJPs, once) where it costs no more products than
        the Lanczos run (``trace="auto"``), else deflated Hutchinson on the run's basis."""
        n, meter = self.n, self.meter
        how = self.trace if self.trace != "auto" else ("exact" if n <= 2 * lz.products else "hutchinson")
        if meter.exhausted and how == "exact":
            how = "hutchinson"
        if how == "exact":
            if self.main_trace is None or not self.main_trace[2]:
                self.main_trace = (_exact_trace(self.op, self.chunk), 0.0, True)
            tr = self.main_trace[0] - (self.mean_of_f() if cen else 0.0)
            return tr, 0.0, "exact trace"
        offset = 0.0
        if not cen and self.probes is None and any(c for v, c in self.want.items() if v != "main") \
                and not meter.exhausted:
            # tr F̄* = tr F* − (C VJPs): aim the main estimate's standard error at rtol·tr F̄*
            offset = self.mean_of_f()
        tr, se, how = _stochastic_trace(self.op, lz, cen, self.T, self.C, n, self.probes, self.trace_rtol, self.seed,
                                        meter, self.main_trace, self.mean_of_f, offset)
        if not cen:
            self.main_trace = (tr, se, se == 0.0)
        return tr, se, how


def _stochastic_trace(op, lz, cen, T, C, n, probes, trace_rtol, seed, meter, main_trace, mean_part, offset=0.0):
    """tr of F* (or Π F* Π) by deflated Hutchinson on the Lanczos basis; for Π F* Π, first try
    tr F* − Σ_k ‖Jᵀu_k‖²/T from the main estimate (``mean_part()``, C VJPs once) and keep it if
    precise enough."""
    if cen and main_trace is not None and probes is None:
        tr, se = main_trace[0] - mean_part(), main_trace[1]
        if tr > 0 and se <= trace_rtol * tr:
            return tr, se, "trace of F* minus its mean part"

    def quad_block(Z: np.ndarray) -> np.ndarray:
        Zt = torch.as_tensor(Z, dtype=op.out.dtype, device=op.out.device)
        if cen:
            W = Zt.reshape(len(Z), T, C)
            Zt = (W - W.mean(1, keepdim=True)).reshape(len(Z), n)  # Π z for each row
        return op.sq_norm_vjp_batched(Zt)

    fixed = probes is not None
    block = min(PROBE_BLOCK, _chunk_size(sum(v.numel() for v in op.theta.values()), n, op.out.element_size(), None))
    left = meter.remaining()
    if meter.exhausted or (left is not None and left < block):  # a budget: probe by probe, as few as it allows
        block = 1
    est = krylov.deflated_trace_blocked(quad_block, n, lz.basis, float(np.sum(lz.alpha)), rtol=trace_rtol,
                                        min_probes=probes if fixed else 8, max_probes=probes if fixed else max(8, n),
                                        block=block, seed=seed + 1, stop=meter.stop, cost_cap=None if fixed else n,
                                        offset=0.0 if cen else offset)
    if est.method.endswith("(capped)") and not meter.stop():
        # the estimator would need more probes than T·C: the exact trace is cheaper
        tr = (main_trace[0] if main_trace is not None and main_trace[2] else _exact_trace(op, None))
        if cen:
            tr -= mean_part()
        return tr, 0.0, "exact trace"
    return est.value, est.stderr, f"hutchinson trace ({est.probes} probes deflated by the Lanczos basis)"


def fisher_ntk(fn: ModelFunction, *, k: int = 5, method: str = "auto", dense_max: int = 256,
               tol: float | None = None, trace: str = "auto", probes: int | None = None, seed: int = 0,
               chunk: int | None = None, keep_dual: bool = False, density: bool = False,
               density_probes: int = 4, density_steps: int = 30, progress: bool = False,
               budget: Any = None, jvp: str = "auto", **kw: Any) -> FisherSpectrum:
    """λ_max, m_λ and the top-k eigenvalues of the Fisher F = JᵀJ/T via F* = JJᵀ/T.

    See :func:`fisher_spectra` for the arguments (``fn.center`` gives the spectrum of the centred
    outputs, Karakida et al. 2019, eq. (15)).

    Returns:
        :class:`FisherSpectrum`.
    """
    kw.pop("trace_exact_max", None)
    main, _ = fisher_spectra(fn, (), k=k, method=method, dense_max=dense_max, tol=tol, trace=trace, probes=probes,
                             seed=seed, chunk=chunk, keep_dual=keep_dual, density=density,
                             density_probes=density_probes, density_steps=density_steps, progress=progress,
                             budget=budget, jvp=jvp, **kw)
    return main
