"""The Fisher/NTK dual F* = J Jᵀ / T of any module, over the whole batch.

Karakida, Akaho & Amari (2019), eq. (8) define the empirical Fisher information
matrix of a network with outputs f_k(t) (k = 1..C outputs, t = 1..T samples) as

    F = (1/T) Σ_t Σ_k ∇θ f_k(t) ∇θ f_k(t)ᵀ = Jᵀ J / T          (P × P),

with J the (T·C) × P Jacobian. Its non-zero eigenvalues are those of the dual
(the empirical NTK, Karakida et al. 2019 §5 "Neural tangent kernel", and their
Supplementary eq. S.23 / S.105 for the normalized networks)

    F* = J Jᵀ / T                                              (T·C × T·C),

so m_λ = tr(F)/P = tr(F*)/P and λ_max(F) = λ_max(F*) (Karakida et al. 2019,
Thm 2.2, eq. (10) for the quantities). The learning-rate bound of gradient
descent on the squared loss is η < 2/λ_max (Karakida et al. 2019, eq. (23)).

Two engines, both differentiating the whole batch at once (batch-norm
couplings between samples in train mode are exact):

* ``dense``: rows of J in chunks by vmapped vector–Jacobian products
  (Jᵀ e_i), then J J_chunkᵀ by vmapped Jacobian–vector products: F* exactly,
  with memory chunk × P + (T·C)², never the whole J.
* ``lanczos``: F* v = J (Jᵀ v) / T by one VJP and one JVP, fed to Lanczos
  with full reorthogonalisation (:func:`lanczos_top`; ARPACK through
  :func:`normfield.core.linalg.top_eigenpairs` as a fallback); the trace is exact (chunked
  VJP row norms) up to ``trace_exact_max`` outputs and otherwise estimated by
  Hutchinson's estimator on the complement of the Lanczos eigenvectors
  (deflation removes the dominant λ_max from the estimator's variance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from normfield.analyze._functional import ModelFunction
from normfield.core.linalg import top_eigenpairs
from normfield.core.validation import check_choice, check_int, check_memory
from normfield.errors import NormfieldError

__all__ = ["FisherSpectrum", "fisher_ntk", "dual_matvec", "dense_dual", "lanczos_top", "slq_density"]


@dataclass
class FisherSpectrum:
    """Eigenvalue statistics of the Fisher F = JᵀJ/T via its dual F* = JJᵀ/T.

    Attributes:
        lambda_max: largest eigenvalue of F (= of F*).
        m_lambda: mean eigenvalue of F, tr(F*)/P (Karakida et al. 2019, eq. (10)).
        trace: tr(F*) = ‖J‖_F² / T.
        trace_stderr: standard error of ``trace`` (0 when exact).
        parameters: P, the number of differentiated parameters.
        samples: T.
        outputs: C (outputs per sample).
        eigenvalues: top-k eigenvalues, shape (k,), largest first.
        method: ``"dense"`` or ``"lanczos"`` (+ how the trace was obtained).
        products: Jacobian products used (one VJP or one JVP each).
        spectrum: every eigenvalue of F*, shape (T·C,), largest first (dense
            route only; ``None`` otherwise).
        dual: F*, shape (T·C, T·C), when asked for (dense route only).
        density_nodes, density_weights: the spectral density of F* as a discrete
            measure (weights sum to 1, each eigenvalue of F* has mass 1/(T·C)):
            exact (every eigenvalue, weight 1/(T·C)) on the dense route, stochastic
            Lanczos quadrature (:func:`slq_density`) on the Lanczos route; ``None``
            unless asked for.
    """

    lambda_max: float
    m_lambda: float
    trace: float
    trace_stderr: float
    parameters: int
    samples: int
    outputs: int
    eigenvalues: np.ndarray
    method: str
    products: int
    spectrum: np.ndarray | None = None
    dual: np.ndarray | None = field(default=None, repr=False)
    density_nodes: np.ndarray | None = field(default=None, repr=False)
    density_weights: np.ndarray | None = field(default=None, repr=False)

    def density(self, bins: int = 50, *, log: bool = False):
        """Histogram of the spectral density of F*: tidy DataFrame (``left, right, mass``).

        Args:
            bins: number of bins over [0, λ_max] (or log-spaced over the positive nodes if ``log``).
        """
        import pandas as pd

        from normfield.errors import NormfieldError

        if self.density_nodes is None:
            raise NormfieldError("the spectral density was not computed; call analyze(..., density=True)",
                                 argument="density")
        x, w = np.clip(self.density_nodes, 0, None), self.density_weights
        hi = max(float(x.max()), 1e-300) * (1 + 1e-12)
        if log:
            pos = x[x > 0]
            lo = float(pos.min()) if pos.size else hi * 1e-12
            edges = np.geomspace(lo, hi, bins + 1)
        else:
            edges = np.linspace(0.0, hi, bins + 1)
        mass, _ = np.histogram(x, bins=edges, weights=w)
        return pd.DataFrame({"left": edges[:-1], "right": edges[1:], "mass": mass})

    @property
    def lr_bound(self) -> float:
        """2/λ_max, the largest stable gradient-descent learning rate (Karakida et al. 2019, eq. (23))."""
        return 2.0 / self.lambda_max if self.lambda_max > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        d = {
            "lambda_max": self.lambda_max,
            "m_lambda": self.m_lambda,
            "trace": self.trace,
            "trace_stderr": self.trace_stderr,
            "parameters": self.parameters,
            "samples": self.samples,
            "outputs": self.outputs,
            "eigenvalues": [float(x) for x in self.eigenvalues],
            "lr_bound": self.lr_bound,
            "method": self.method,
            "products": self.products,
        }
        if self.spectrum is not None:
            d["spectrum"] = [float(x) for x in self.spectrum]
        if self.density_nodes is not None:
            d["density"] = {"nodes": [float(x) for x in self.density_nodes],
                            "weights": [float(x) for x in self.density_weights]}
        return d


# -- products -----------------------------------------------------------------
def _vjp(fn: ModelFunction):
    out, vjp_fn = torch.func.vjp(fn, fn.theta)
    return out, (lambda v: vjp_fn(v)[0])


def _jvp(fn: ModelFunction, tangent: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.func.jvp(fn, (fn.theta,), (tangent,))[1]


def dual_matvec(fn: ModelFunction):
    """Return (n, matvec) with matvec(v) = F* v = J (Jᵀ v)/T for v of shape (n,), n = T·C.

    One VJP (reusing the graph of a single forward pass) and one JVP per product.
    """
    out, vjp = _vjp(fn)
    n = out.numel()
    with torch.no_grad():
        T = int(fn.raw(fn.theta).shape[0])

    def matvec(v: torch.Tensor) -> torch.Tensor:
        g = vjp(v)
        return _jvp(fn, g) / T

    return n, T, out, matvec


def lanczos_top(
    matvec, n: int, k: int = 1, *, tol: float = 1e-10, max_steps: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """Top-k eigenpairs of a symmetric PSD operator by Lanczos with full reorthogonalisation.

    Each step costs one product; the Lanczos basis (steps × n, float64) is kept,
    so the memory is max_steps·n·8 bytes. Stops when every wanted Ritz pair
    (θ_i, y_i) has residual ‖A y_i − θ_i y_i‖ = |β_m s_{m,i}| <= tol·θ_1, which
    bounds the distance from θ_i to an eigenvalue of A by tol·θ_1 (Parlett,
    *The Symmetric Eigenvalue Problem*, Thm 11.5.1 / Kahan's bound). Without
    restarts it needs fewer products than ARPACK's restarted Lanczos for the
    well-separated top eigenvalues typical of F* (see benchmarks/bench_analyze.py).

    Args:
        matvec: v (n,) float64 -> A v (n,) float64.
        n: operator size.
        k: how many leading eigenpairs.
        tol: residual tolerance relative to the top Ritz value.
        max_steps: Lanczos steps at most (default min(n, 40 + 20 k, 400)).
        seed: seeds the Gaussian start vector.

    Returns:
        (eigenvalues (k,) largest first, eigenvectors (n, k), products used, converged).
    """
    k = min(k, n)
    m_max = min(n, max_steps if max_steps is not None else min(400, 40 + 20 * k))
    m_max = max(m_max, k)
    check_memory("Lanczos basis", (m_max + 1) * n * 8.0,
                 hint="reduce the number of outputs T·C (fewer samples, or outputs=[...]) or k")
    Q = np.zeros((m_max + 1, n))
    q = np.random.default_rng(seed).standard_normal(n)
    Q[0] = q / np.linalg.norm(q)
    alpha: list[float] = []
    beta: list[float] = []
    th = np.zeros(1)
    S = np.ones((1, 1))
    converged = False
    m = 0
    for m in range(1, m_max + 1):
        w = np.asarray(matvec(Q[m - 1]), dtype=np.float64)
        a = float(Q[m - 1] @ w)
        alpha.append(a)
        # full reorthogonalisation, twice ("twice is enough", Parlett)
        w = w - Q[:m].T @ (Q[:m] @ w)
        w = w - Q[:m].T @ (Q[:m] @ w)
        b = float(np.linalg.norm(w))
        Tm = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
        th, S = np.linalg.eigh(Tm)
        th, S = th[::-1], S[:, ::-1]
        if m >= k:
            res = b * np.abs(S[-1, :k])
            if np.all(res <= tol * max(abs(th[0]), 1e-300)) or b <= 1e-14 * max(abs(th[0]), 1e-300):
                converged = True
                break
        if m == m_max or b == 0.0:
            break
        beta.append(b)
        Q[m] = w / b
    kk = min(k, len(th))
    V = Q[:m].T @ S[:, :kk]
    return th[:kk].copy(), V, m, converged


def slq_density(matvec, n: int, *, probes: int = 4, steps: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """Spectral density of a symmetric operator by stochastic Lanczos quadrature.

    For a unit vector v, ``steps`` Lanczos steps give the Gauss quadrature rule
    (θ_i, τ_i²) with vᵀ p(A) v = Σ_i τ_i² p(θ_i) exactly for polynomials of degree
    <= 2·steps − 1 (Golub & Meurant 2010, Thm 6.2); averaging over Rademacher
    probes v = z/√n gives E[vᵀ p(A) v] = tr p(A)/n (Ubaru, Chen & Saad 2017).

    Returns:
        (nodes, weights summing to 1, products used).
    """
    rng = np.random.default_rng(seed)
    steps = min(steps, n)
    nodes, weights, used = [], [], 0
    for _ in range(probes):
        q = rng.choice([-1.0, 1.0], size=n) / math.sqrt(n)
        Q = np.zeros((steps + 1, n))
        Q[0] = q
        alpha: list[float] = []
        beta: list[float] = []
        for m in range(1, steps + 1):
            w = np.asarray(matvec(Q[m - 1]), dtype=np.float64)
            used += 1
            alpha.append(float(Q[m - 1] @ w))
            w = w - Q[:m].T @ (Q[:m] @ w)
            w = w - Q[:m].T @ (Q[:m] @ w)
            b = float(np.linalg.norm(w))
            if m == steps or b <= 1e-14 * max(abs(alpha[0]), 1e-300):
                break
            beta.append(b)
            Q[m] = w / b
        Tm = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
        th, S = np.linalg.eigh(Tm)
        nodes.append(th)
        weights.append(S[0, :] ** 2 / probes)
    return np.concatenate(nodes), np.concatenate(weights), used


def _chunk_size(P: int, n: int, itemsize: int, chunk: int | None) -> int:
    if chunk is not None:
        return check_int("chunk", chunk, minimum=1)
    # ~128 MiB of Jacobian rows per chunk
    return int(max(1, min(n, 64, (2**27) // max(1, P * itemsize))))


def _vmap_rows(vjp, E: torch.Tensor) -> dict[str, torch.Tensor]:
    try:
        return torch.func.vmap(vjp)(E)
    except Exception:  # noqa: BLE001 - an op without a batching rule: fall back to a loop
        rows = [vjp(e) for e in E]
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def _vmap_jvp(fn: ModelFunction, G: dict[str, torch.Tensor]) -> torch.Tensor:
    try:
        return torch.func.vmap(lambda g: _jvp(fn, g))(G)
    except Exception:  # noqa: BLE001
        m = next(iter(G.values())).shape[0]
        return torch.stack([_jvp(fn, {k: v[i] for k, v in G.items()}) for i in range(m)])


def dense_dual(fn: ModelFunction, *, chunk: int | None = None, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
    """F* = J Jᵀ / T exactly, without materialising J.

    Args:
        fn: the model function.
        chunk: rows of J per vmapped product (auto: ~128 MiB of rows).

    Returns:
        (F* of shape (T·C, T·C) in the analysis dtype, diag(J Jᵀ) of shape
        (T·C,), number of Jacobian products).
    """
    out, vjp = _vjp(fn)
    n = out.numel()
    with torch.no_grad():
        T = int(fn.raw(fn.theta).shape[0])
    P = fn.num_parameters
    itemsize = out.element_size()
    check_memory("dense F*", n * n * itemsize + _chunk_size(P, n, itemsize, chunk) * P * itemsize * 3,
                 hint="use method='lanczos' (matrix-free) or a smaller batch")
    c = _chunk_size(P, n, itemsize, chunk)
    F = torch.empty((n, n), dtype=out.dtype, device=out.device)
    rownorm = torch.empty(n, dtype=out.dtype, device=out.device)
    from tqdm.auto import tqdm

    for s in tqdm(range(0, n, c), desc="F* (dense)", disable=not progress, leave=False):
        e = min(n, s + c)
        E = torch.zeros((e - s, n), dtype=out.dtype, device=out.device)
        E[torch.arange(e - s), torch.arange(s, e)] = 1
        G = _vmap_rows(vjp, E)  # rows s..e of J, per parameter
        rownorm[s:e] = sum(g.reshape(e - s, -1).pow(2).sum(1) for g in G.values())
        F[:, s:e] = _vmap_jvp(fn, G).T
    F = 0.5 * (F + F.T) / T
    return F, rownorm, 2 * n


def _exact_trace(fn: ModelFunction, vjp, n: int, dtype, device, chunk: int | None) -> tuple[float, int]:
    P = fn.num_parameters
    c = _chunk_size(P, n, torch.empty((), dtype=dtype).element_size(), chunk)
    tot = 0.0
    for s in range(0, n, c):
        e = min(n, s + c)
        E = torch.zeros((e - s, n), dtype=dtype, device=device)
        E[torch.arange(e - s), torch.arange(s, e)] = 1
        G = _vmap_rows(vjp, E)
        tot += float(sum(g.double().pow(2).sum() for g in G.values()))
    return tot, n


def fisher_ntk(
    fn: ModelFunction,
    *,
    k: int = 5,
    method: str = "auto",
    dense_max: int = 256,
    tol: float = 1e-10,
    trace: str = "auto",
    trace_exact_max: int = 1024,
    probes: int = 32,
    seed: int = 0,
    chunk: int | None = None,
    keep_dual: bool = False,
    density: bool = False,
    density_probes: int = 4,
    density_steps: int = 30,
    progress: bool = False,
) -> FisherSpectrum:
    """λ_max, m_λ and the top-k eigenvalues of the Fisher F = JᵀJ/T via F* = JJᵀ/T.

    Args:
        fn: the model as a function of its parameters (whole batch).
        k: how many leading eigenvalues.
        method: ``"dense"``, ``"lanczos"`` or ``"auto"`` (dense when T·C <= dense_max).
        tol: ARPACK relative tolerance on the Ritz values.
        trace: ``"exact"`` (T·C vector–Jacobian products), ``"hutchinson"``
            (``probes`` deflated Rademacher probes) or ``"auto"`` (exact when
            T·C <= trace_exact_max). Lanczos route only; dense is always exact.
        seed: Lanczos start vector and Hutchinson probes.
        keep_dual: return F* itself (dense route).
        density: also return the spectral density (exact on the dense route;
            stochastic Lanczos quadrature with ``density_probes`` probes of
            ``density_steps`` steps on the Lanczos route).

    Returns:
        :class:`FisherSpectrum`.

    Shapes: F* is (T·C, T·C) with index t·C + k (sample-major).
    """
    check_choice("method", method, ["auto", "dense", "lanczos"])
    check_choice("trace", trace, ["auto", "exact", "hutchinson"])
    k = check_int("k", k, minimum=1)
    with torch.no_grad():
        probe_out = fn.raw(fn.theta)
    T, C = (int(s) for s in probe_out.shape)
    n = T * C
    P = fn.num_parameters
    k = min(k, n)
    if method == "auto":
        method = "dense" if n <= dense_max else "lanczos"
    if method == "dense":
        F, rownorm, prods = dense_dual(fn, chunk=chunk, progress=progress)
        Fd = F.double().cpu().numpy()
        w = np.linalg.eigvalsh(Fd)[::-1].copy()
        tr = float(rownorm.double().sum()) / T
        return FisherSpectrum(
            lambda_max=float(w[0]), m_lambda=tr / P, trace=tr, trace_stderr=0.0, parameters=P,
            samples=T, outputs=C, eigenvalues=w[:k].copy(), method="dense", products=prods,
            spectrum=w, dual=Fd if keep_dual else None,
            density_nodes=w.copy() if density else None,
            density_weights=np.full(n, 1.0 / n) if density else None,
        )
    # -- Lanczos ---------------------------------------------------------------
    out, vjp = _vjp(fn)
    dtype, device = out.dtype, out.device
    count = [0]

    def mv(v: np.ndarray) -> np.ndarray:
        count[0] += 2
        vt = torch.as_tensor(v, dtype=dtype, device=device)
        with torch.no_grad():
            r = _jvp(fn, vjp(vt)) / T
        return r.double().cpu().numpy()

    w, V, used, ok = lanczos_top(mv, n, k, tol=tol, seed=seed)
    if not ok:  # rare: fall back on ARPACK's restarted Lanczos
        kk = min(k, max(1, n - 2))
        eig = top_eigenpairs(mv, n, kk, tol=tol, seed=seed, vectors=True)
        w, V = eig.eigenvalues, eig.eigenvectors
    if trace == "auto":
        trace = "exact" if n <= trace_exact_max else "hutchinson"
    if trace == "exact":
        with torch.no_grad():
            tJ, p2 = _exact_trace(fn, vjp, n, dtype, device, chunk)
        tr, se, how = tJ / T, 0.0, "exact trace"
        count[0] += p2
    else:
        # Deflated Hutchinson (Hutchinson 1990; deflation as in Hutch++, Meyer et al. 2021):
        # tr(A) = Σ_top λ_i + tr(Q A Q), Q = I − V Vᵀ, and E[zᵀ Q A Q z] = tr(Q A Q)
        # for Rademacher z. Standard error = sample std / sqrt(probes).
        probes = check_int("probes", probes, minimum=2)
        rng = np.random.default_rng(seed + 1)
        vals = []
        for _ in range(probes):
            z = rng.choice([-1.0, 1.0], size=n)
            if V is not None:
                z = z - V @ (V.T @ z)
            zt = torch.as_tensor(z, dtype=dtype, device=device)
            with torch.no_grad():
                g = vjp(zt)
            count[0] += 1
            vals.append(float(sum(x.double().pow(2).sum() for x in g.values())) / T)
        vals_a = np.asarray(vals)
        tr = float(np.sum(w) + vals_a.mean())
        se = float(vals_a.std(ddof=1) / math.sqrt(probes))
        how = f"hutchinson trace ({probes} deflated probes)"
    dn = dw = None
    if density:
        dn, dw, used_d = slq_density(mv, n, probes=check_int("density_probes", density_probes, minimum=1),
                                     steps=check_int("density_steps", density_steps, minimum=2), seed=seed + 2)
        count[0] += 2 * used_d
    return FisherSpectrum(
        lambda_max=float(w[0]), m_lambda=tr / P, trace=tr, trace_stderr=se, parameters=P, samples=T,
        outputs=C, eigenvalues=np.asarray(w[:k], dtype=float), method=f"lanczos, {how}",
        products=count[0], density_nodes=dn, density_weights=dw,
    )
