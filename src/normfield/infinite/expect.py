"""Moments of a per-unit expression: closed forms where they exist, quasi-Monte Carlo otherwise.

For an expression ``x = g(components)`` (:mod:`normfield.infinite.state`) this
module returns, per replicate, ``nngp = E[x xᵀ]``, ``mean = E[x]`` and the
per-unit NTK ``ntk = Σ_c E[J_c Θ_c J_cᵀ] + Σ_p E[(∂x/∂p)(∂x/∂p)ᵀ]`` (``J_c =
∂x/∂h_c``, T×T; ``p`` the per-unit parameters of the operations). Routes, in
order:

1. **Leaf.** A Gaussian component: ``(Σ, 0, Θ)``; the input's empirical law:
   ``(x xᵀ/d, x̄, 0)``.
2. **Affine operation** of anything: exact from the child's moments
   (:meth:`normfield.infinite.ops.UnitOp.linear`).
3. **Sum of independent terms** (disjoint components):
   ``K = Σ_c K_c + Σ_{c≠c'} m_c m_{c'}ᵀ``, ``m = Σ m_c``, ``Θ = Σ Θ_c``. The NTK
   cross term ``Σ_θ ∂x_c/∂θ ∂x_{c'}/∂θ`` vanishes at infinite width: a term
   that starts with a Dense layer reads the shared parameters only through
   ``Σ_j W_ij ∂x_j/∂θ`` with ``W`` independent of everything else and of zero
   mean, so the cross term is a sum of ``width`` zero-mean terms of size
   ``1/width`` (Jacot et al. 2018, the argument of Thm 1 that the NTK is
   diagonal across units); independent components meet only through such sums.
4. **Pointwise activation of one Gaussian**: ``K_ts = E[σ(h_t)σ(h_s)]``,
   ``m_t = E[σ(h_t)]``, ``ntk = E[σ'(h_t)σ'(h_s)] ⊙ Θ`` by
   :func:`normfield.core.kernels.kernel` / ``derivative_kernel`` /
   ``mean_activation`` (Karakida et al. 2019, eqs. 5–7; Jacot et al. 2018, Thm 1);
   also through a centred affine map with per-unit γ, β (layer/RMS norm of a
   Gaussian, mean subtraction), see :func:`_act_of_affine`.
5. **Train-mode batch norm (+ a positively homogeneous activation) of one
   Gaussian**: ``normfield.infinite.bn_exact.bn_homogeneous`` when that module
   is present; the affine parameters add ``E[(σ'(z)z)(σ'(z)z)ᵀ] = K`` (γ; Euler's
   identity ``σ'(z)z = σ(z)``) and ``E[σ'(z)σ'(z)ᵀ]`` (β), the latter the
   Gaussian kernel of σ' at ``S = MΣM`` because σ' is invariant under the
   positive rescaling ``M h ↦ z``.
6. **General route** (everything else): randomised quasi-Monte Carlo. Each of
   ``R`` replicates scrambles its own Sobol' sequence (``torch.quasirandom``);
   a point gives ``h_c = L_c Φ⁻¹(q)`` for each Gaussian component (``L_c L_cᵀ = Σ_c``
   from ``eigh``, robust to the singular Σ that batch norm produces along 1; a
   component read only by train-mode batch norm is drawn in polar form with an
   importance weight that removes the heavy tail of ``E[JΘJᵀ]``, see
   :class:`_Sampler`); the empirical law and per-unit coefficient tables are
   sampled by an index coordinate ``⌊q' n⌋``. The map is evaluated in float64,
   vectorised over the points, and ``E[J Θ Jᵀ] = E[Σ_j (J l_j)(J l_j)ᵀ]`` over
   the columns of ``L^Θ_c`` (``L^Θ_c L^Θ_cᵀ = Θ_c``) by ``torch.func.jvp``
   under ``vmap`` (exact given the point: the directional trick ``u ~ N(0, Θ)``
   would add the variance of ``u``); each per-unit parameter is one more tangent
   (a unit vector in that parameter). The points double until the stated error
   ``3‖SE‖_F`` over the replicates is at most ``tol``, at most 1.5 times the
   error the inputs already carry (more points cannot remove that), or the cap
   :data:`MAX_POINTS` is reached. An expression of the input's coordinates
   alone (no Gaussian, no table) is averaged exactly over the ``d`` coordinates.

``normfield.gram.bn_map.bn_map_cv`` computes the same batch-norm NNGP with a
polynomial control variate, but for ``ε = 0`` and without the NTK; it is used in
the tests as an independent route rather than here.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch.func import jvp, vmap

from normfield.core.activations import Activation, get_activation
from normfield.core.kernels import derivative_kernel, kernel, mean_activation
from normfield.core.seeding import derive_seed
from normfield.errors import NormfieldError
from normfield.infinite.ops import ActOp, AffineOp, BNTrainOp, UnitOp
from normfield.infinite.state import Component, Leaf, Moments, OpNode, SumNode

__all__ = ["evaluate", "general_route", "pointwise_gauss", "START_POINTS", "MAX_POINTS", "bn_exact_available"]

#: quasi-Monte Carlo points per replicate of the first round
START_POINTS = 2**10
#: cap on the points per replicate
MAX_POINTS = 2**15
_CHUNK = 2**13


def bn_exact_available() -> bool:
    """Whether ``normfield.infinite.bn_exact`` (exact batch norm for homogeneous σ) is present."""
    return importlib.util.find_spec("normfield.infinite.bn_exact") is not None


def _factor(S: np.ndarray) -> np.ndarray:
    """``L`` with ``L Lᵀ = S`` for a symmetric PSD ``S`` (negative rounding clipped), by ``eigh``."""
    lam, U = np.linalg.eigh(0.5 * (S + S.T))
    return U * np.sqrt(np.clip(lam, 0.0, None))


def _pair_args(S: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = np.clip(np.diag(S), 0.0, None)
    lim = np.sqrt(np.outer(d, d))
    return d[:, None], d[None, :], np.clip(0.5 * (S + S.T), -lim, lim)


def pointwise_gauss(act: Activation, Sigma: np.ndarray, Theta: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                                       np.ndarray, float]:
    """``(E[σσᵀ], E[σ], E[σ'σ'ᵀ] ⊙ Θ, error)`` for ``h ~ N(0, Σ)`` (route 4 of the module docstring).

    Args:
        act: activation.
        Sigma, Theta: (T, T).

    Returns:
        K (T, T), mean (T,), ntk (T, T) and the Frobenius quadrature error (0 for closed forms).
    """
    q11, q22, q12 = _pair_args(Sigma)
    K, eK = kernel(act, q11, q22, q12, return_error=True)
    D, eD = derivative_kernel(act, q11, q22, q12, return_error=True)
    m, em = mean_activation(act, q11[:, 0], return_error=True)
    err = max(float(np.linalg.norm(eK)), float(np.linalg.norm(eD * np.abs(Theta))), float(np.linalg.norm(em)))
    return np.asarray(K), np.asarray(m), np.asarray(D) * Theta, err


def _per_replicate(fn: Callable[[int], tuple], comp: Component, extra: tuple[np.ndarray, ...] = ()) -> list[tuple]:
    """``[fn(r) for r]``, computed once when the component (and ``extra`` arrays, leading axis R)
    coincide over replicates (no quasi-Monte Carlo step upstream)."""
    R = comp.cov.shape[0]
    same = all(np.array_equal(a, a[:1].repeat(R, axis=0)) for a in (comp.cov, comp.ntk) + tuple(extra))
    if same:
        return [fn(0)] * R
    return [fn(r) for r in range(R)]


def _act_of_affine(act: Activation, aff: AffineOp, comp: Component) -> Moments:
    """Route 4 through a centred affine map: ``y = γ A h + β`` with ``h ~ N(0, Σ)`` is Gaussian
    ``N(0, AΣAᵀ)`` at ``γ = 1, β = 0``; the NTK of ``σ(y)`` is ``E[σ'σ'] ⊙ AΘAᵀ`` plus
    ``[γ] E[ψ(y_t)ψ(y_s)]`` (``ψ(x) = x σ'(x)``, the γ-derivative ``σ'(y) y``) plus ``[β] E[σ'σ']``."""
    psi = None
    if aff.gamma:
        npd = act.numpy_pair()[1]
        psi = act if act.homogeneous else Activation(f"x*d{act.label}", lambda x: x * act.derivative(x),
                                                     smooth=act.smooth, np_fn=lambda x: x * npd(x))

    def one(r: int) -> tuple:
        A = aff.A[r]
        S, Th = A @ comp.cov[r] @ A.T, A @ comp.ntk[r] @ A.T
        K, m, N, e = pointwise_gauss(act, S, Th)
        if aff.gamma or aff.beta:
            q11, q22, q12 = _pair_args(S)
            D = np.asarray(derivative_kernel(act, q11, q22, q12))
            if aff.beta:
                N = N + D
            if aff.gamma:
                P, eP = kernel(psi, q11, q22, q12, return_error=True)
                N = N + np.asarray(P)
                e = e + float(np.linalg.norm(eP))
        return K, m, N, e

    parts = _per_replicate(one, comp, (aff.A,))
    return Moments(np.array([p[0] for p in parts]), np.array([p[1] for p in parts]),
                   np.array([p[2] for p in parts]), comp.qerr + max(p[3] for p in parts))


def _bn_fused(act: Activation, bn: BNTrainOp, comp: Component) -> Moments:
    """Route 5: train batch norm (+ homogeneous σ) of one Gaussian, per replicate, via ``bn_exact``."""
    mod = importlib.import_module("normfield.infinite.bn_exact")
    T = comp.cov.shape[1]
    M = np.eye(T) - 1.0 / T

    def one(r: int) -> tuple:
        K, JTJ, mean, err = mod.bn_homogeneous(comp.cov[r], comp.ntk[r], act, eps=bn.eps, ntk=True)
        ntk = np.asarray(JTJ, dtype=np.float64)
        if bn.affine:
            q11, q22, q12 = _pair_args(M @ comp.cov[r] @ M)
            ntk = ntk + K + np.asarray(derivative_kernel(act, q11, q22, q12))
        return K, mean, ntk, 3.0 * T * float(err)

    parts = _per_replicate(one, comp)
    return Moments(np.array([p[0] for p in parts]), np.array([p[1] for p in parts]),
                   np.array([p[2] for p in parts]), comp.qerr + max(p[3] for p in parts))


def _flatten_sum(node: SumNode) -> list:
    out = []
    for c in node.children:
        out.extend(_flatten_sum(c) if isinstance(c, SumNode) else [c])
    return out


def evaluate(node: Any, comps: Mapping[int, Component], *, seed: int, tol: float,
             upstream: float = 0.0) -> Moments:
    """Per-replicate moments of ``node`` (cached on the node), by the first route that applies.

    Args:
        node: expression.
        comps: its components.
        seed: seed of a quasi-Monte Carlo step.
        tol: target stated error.
        upstream: stated error the inputs already carry (a stopping rule of the general route).
    """
    if node.mom is not None:
        return node.mom
    mom = _evaluate(node, comps, seed=seed, tol=tol, upstream=upstream)
    node.mom = mom
    return mom


def _evaluate(node, comps, *, seed, tol, upstream):
    if isinstance(node, Leaf):
        c = comps[node.key]
        if c.kind == "empirical":
            R = c.cov.shape[0]
            return Moments(c.cov.copy(), np.broadcast_to(c.samples.mean(axis=0), (R, c.cov.shape[1])).copy(),
                           c.ntk.copy())
        return Moments(c.cov.copy(), np.zeros(c.cov.shape[:2]), c.ntk.copy(), c.qerr)
    if isinstance(node, OpNode):
        op, child = node.op, node.child
        if op.is_linear:
            return op.linear(evaluate(child, comps, seed=seed, tol=tol, upstream=upstream))
        if isinstance(op, ActOp) and isinstance(child, Leaf) and comps[child.key].kind == "gauss":
            c = comps[child.key]
            parts = _per_replicate(lambda r: pointwise_gauss(op.act, c.cov[r], c.ntk[r]), c)
            return Moments(np.array([p[0] for p in parts]), np.array([p[1] for p in parts]),
                           np.array([p[2] for p in parts]), c.qerr + max(p[3] for p in parts))
        if (isinstance(op, ActOp) and isinstance(child, OpNode) and isinstance(child.op, AffineOp)
                and isinstance(child.child, Leaf) and comps[child.child.key].kind == "gauss"
                and not np.any(child.op.c)):
            return _act_of_affine(op.act, child.op, comps[child.child.key])
        if bn_exact_available():
            if (isinstance(op, ActOp) and op.act.homogeneous and isinstance(child, OpNode)
                    and isinstance(child.op, BNTrainOp) and isinstance(child.child, Leaf)
                    and comps[child.child.key].kind == "gauss"):
                return _bn_fused(op.act, child.op, comps[child.child.key])
            if isinstance(op, BNTrainOp) and isinstance(child, Leaf) and comps[child.key].kind == "gauss":
                return _bn_fused(get_activation("identity"), op, comps[child.key])
        return general_route(node, comps, seed=seed, tol=tol, upstream=upstream)
    if isinstance(node, SumNode):
        terms = _flatten_sum(node)
        keysets = [t.keys() for t in terms]
        if sum(len(k) for k in keysets) == len(frozenset().union(*keysets)):
            moms = [evaluate(t, comps, seed=seed, tol=tol, upstream=upstream) for t in terms]
            K = sum(m.nngp for m in moms)
            mean = sum(m.mean for m in moms)
            for i, a in enumerate(moms):
                for j, b in enumerate(moms):
                    if i != j:
                        K = K + np.einsum("rt,rs->rts", a.mean, b.mean)
            return Moments(K, mean, sum(m.ntk for m in moms), sum(m.qerr for m in moms))
        return general_route(node, comps, seed=seed, tol=tol, upstream=upstream)
    raise TypeError(f"unknown expression node {node!r}")


# ----------------------------------------------------------------------------------------------
# general route


def _collect(node, leaves: list, ops: list) -> None:
    if isinstance(node, Leaf):
        if node.key not in leaves:
            leaves.append(node.key)
    elif isinstance(node, OpNode):
        _collect(node.child, leaves, ops)
        if all(o is not node.op for o in ops):
            ops.append(node.op)
    else:
        for c in node.children:
            _collect(c, leaves, ops)


def _build(node, rep: int, rows: dict[int, Any]) -> Callable:
    """A function ``(vals: dict key -> (N,T), thetas: dict id(op) -> (N,P)) -> (N,T)`` of the expression."""
    if isinstance(node, Leaf):
        key = node.key
        return lambda vals, th: vals[key]
    if isinstance(node, OpNode):
        inner = _build(node.child, rep, rows)
        op = node.op
        oid = id(op)
        return lambda vals, th: op.torch_fn(inner(vals, th), th[oid], rows.get(oid), rep)
    fs = [_build(c, rep, rows) for c in node.children]

    def f(vals, th):
        out = fs[0](vals, th)
        for g in fs[1:]:
            out = out + g(vals, th)
        return out

    return f


def _ndtri(q: torch.Tensor) -> torch.Tensor:
    return torch.special.ndtri(q.clamp(1e-17, 1.0 - 1e-17))


def _bn_only(node, parent_bn: bool, out: dict[int, bool]) -> None:
    """``out[key]``: every occurrence of the leaf is the direct input of a train-mode batch norm."""
    if isinstance(node, Leaf):
        out[node.key] = out.get(node.key, True) and parent_bn
    elif isinstance(node, OpNode):
        _bn_only(node.child, isinstance(node.op, BNTrainOp), out)
    else:
        for c in node.children:
            _bn_only(c, False, out)


class _Sampler:
    """Draws of one Gaussian component for one replicate (module docstring, route 6).

    A component read only through train-mode batch norm is drawn in polar form on the range of
    ``S = MΣM`` (rank k): ``y = ρ L_S θ`` with ``θ = g/‖g‖``, ``g ~ N(0, I_k)``, and ``ρ`` from the
    χ law with ``ν = k − 2`` degrees of freedom (``ν = 1`` when ``k <= 3``) instead of ``χ_k``,
    weighted by ``w = p_k(ρ)/p_ν(ρ)`` (``= ρ²/ν`` for ``ν = k − 2``). Batch norm's Jacobian is
    ``∝ 1/√(ρ² a + ε)`` (``a = ‖L_S θ‖²/T``), so ``E[JΘJᵀ]`` under ``χ_k`` has a heavy tail at small
    ρ (infinite variance for ``k <= 4`` when ε → 0); the weight ``ρ²`` cancels it and the
    estimator has finite variance. Since ``BN(h) = BN(Mh)``, drawing ``Mh`` instead of ``h`` changes
    nothing. Other components: ``h = L Φ⁻¹(q)``, ``L Lᵀ = Σ``.
    """

    def __init__(self, comp: Component, r: int, bn_only: bool) -> None:
        T = comp.cov.shape[1]
        self.T = T
        Lt = _factor(comp.ntk[r])
        self.Lt = torch.as_tensor(Lt[:, np.abs(Lt).max(axis=0) > 0])  # columns l_j: Σ_j l_j l_jᵀ = Θ
        self.polar = False
        if bn_only:
            Mm = np.eye(T) - 1.0 / T
            lam, U = np.linalg.eigh(Mm @ comp.cov[r] @ Mm)
            keep = lam > 1e-12 * max(float(lam.max()), 1e-300)
            k = int(keep.sum())
            if k >= 1:
                self.polar = True
                self.k = k
                self.nu = k - 2 if k >= 4 else 1
                self.Ls = torch.as_tensor(U[:, keep] * np.sqrt(lam[keep]))
                self.logc = (math.lgamma(self.nu / 2) - math.lgamma(k / 2) + 0.5 * (self.nu - k) * math.log(2.0))
        if not self.polar:
            self.L = torch.as_tensor(_factor(comp.cov[r]))
        self.dim = self.k + 1 if self.polar else T

    def draw(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(h, weight)`` from the (N, dim) block ``q``; ``weight`` None for plain draws."""
        T = self.T
        if not self.polar:
            return _ndtri(q[:, :T]) @ self.L.T, None
        from scipy.special import gammaincinv

        g = _ndtri(q[:, :self.k])
        theta = g / g.norm(dim=1, keepdim=True).clamp_min(1e-300)
        qq = q[:, self.k].clamp(1e-17, 1.0 - 1e-17).numpy()
        rho = torch.as_tensor(np.sqrt(2.0 * gammaincinv(self.nu / 2.0, qq)))
        w = torch.exp(self.logc + (self.k - self.nu) * torch.log(rho.clamp_min(1e-300)))
        return rho[:, None] * (theta @ self.Ls.T), w


def general_route(node, comps: Mapping[int, Component], *, seed: int, tol: float, upstream: float = 0.0,
                  start: int | None = None, cap: int | None = None) -> Moments:
    """Route 6 of the module docstring: randomised quasi-Monte Carlo, per replicate.

    Args:
        node: expression; comps: its components.
        seed: base seed; replicate ``r`` scrambles with ``derive_seed(seed, r)``.
        tol: target stated error ``3‖SE‖_F``.
        upstream: stated error of the inputs (stop once within 1.5 times it).
        start, cap: points per replicate of the first round and the cap (powers of 2).

    Returns:
        :class:`Moments` (``points`` = points per replicate used).
    """
    leaves: list[int] = []
    ops: list[UnitOp] = []
    _collect(node, leaves, ops)
    bn_only: dict[int, bool] = {}
    _bn_only(node, False, bn_only)
    gauss = [k for k in leaves if comps[k].kind == "gauss"]
    emp = [k for k in leaves if comps[k].kind == "empirical"]
    tabled = [op for op in ops if op.table is not None and op.table.shape[0] > 1]
    pops = [op for op in ops if op.n_params > 0]
    R, T, _ = comps[leaves[0]].cov.shape
    exact = not gauss and not tabled
    start = START_POINTS if start is None else int(start)
    cap = MAX_POINTS if cap is None else int(cap)
    qerr = sum(comps[k].qerr for k in leaves)
    samplers = [{k: _Sampler(comps[k], r, bn_only.get(k, False)) for k in gauss} for r in range(R)]
    dim = sum(s.dim for s in samplers[0].values()) + (0 if exact else len(emp)) + len(tabled)
    if dim > torch.quasirandom.SobolEngine.MAXDIM:
        raise NormfieldError(f"the expression needs {dim} quasi-Monte Carlo dimensions, more than "
                             f"{torch.quasirandom.SobolEngine.MAXDIM}; use a smaller batch", argument="x")
    sums = np.zeros((R, 3, T, T))  # Σ w y yᵀ, Σ w (Jt)(Jt)ᵀ; [2, 0] holds Σ w y
    engines = [torch.quasirandom.SobolEngine(max(dim, 1), scramble=True, seed=derive_seed(int(seed), r) % 2**62)
               for r in range(R)]
    funcs = []
    for r in range(R):
        rows: dict[int, Any] = {}
        funcs.append((_build(node, r, rows), rows))

    def block(r: int, qb: torch.Tensor | None, eb: torch.Tensor | None) -> None:
        f, rows = funcs[r]
        nb = eb.shape[0] if qb is None else qb.shape[0]
        vals = {}
        w = torch.ones(nb, dtype=torch.float64)
        col = 0
        for k in gauss:
            smp = samplers[r][k]
            vals[k], wk = smp.draw(qb[:, col:col + smp.dim])
            if wk is not None:
                w = w * wk
            col += smp.dim
        for k in emp:
            if qb is None:
                vals[k] = eb
            else:
                data = torch.as_tensor(comps[k].samples)
                idx = (qb[:, col] * data.shape[0]).long().clamp_(0, data.shape[0] - 1)
                vals[k] = data[idx]
                col += 1
        rows.clear()
        for op in ops:
            if op.table is None:
                continue
            tab = torch.as_tensor(op.table)
            if op.table.shape[0] == 1:
                rows[id(op)] = tab.expand(nb, -1)
            else:
                idx = (qb[:, col] * tab.shape[0]).long().clamp_(0, tab.shape[0] - 1)
                rows[id(op)] = tab[idx]
                col += 1
        th = {id(op): op.theta0(rows.get(id(op)), nb) for op in ops}
        # tangents: the columns of each component's L^Θ, then one unit vector per per-unit parameter
        tv = {k: [] for k in vals}
        tt = {k: [] for k in th}
        for k in vals:
            cols = samplers[r][k].Lt.T if k in samplers[r] else torch.zeros((0, T), dtype=torch.float64)
            for j in range(cols.shape[0]):
                for k2 in vals:
                    tv[k2].append(cols[j].expand(nb, T) if k2 == k else torch.zeros((nb, T), dtype=torch.float64))
                for k2, v in th.items():
                    tt[k2].append(torch.zeros_like(v))
        for op in pops:
            for p in range(op.n_params):
                e = torch.zeros_like(th[id(op)])
                e[:, p] = 1.0
                for k2 in vals:
                    tv[k2].append(torch.zeros((nb, T), dtype=torch.float64))
                for k2, v in th.items():
                    tt[k2].append(e if k2 == id(op) else torch.zeros_like(v))
        y = f(vals, th)
        wy = w[:, None] * y
        sums[r, 0] += (wy.T @ y).numpy()
        sums[r, 2, 0] += wy.sum(0).numpy()
        ntan = len(next(iter(tv.values())))
        if ntan:
            stv = {k: torch.stack(v) for k, v in tv.items()}
            stt = {k: torch.stack(v) for k, v in tt.items()}
            Jt = vmap(lambda a, b: jvp(f, (vals, th), (a, b))[1])(stv, stt)  # (P, N, T)
            sums[r, 1] += torch.einsum("pnt,pns,n->ts", Jt, Jt, w).numpy()

    ntan = sum(samplers[0][k].Lt.shape[1] for k in gauss) + sum(op.n_params for op in pops)
    chunk = max(256, min(_CHUNK, 2**21 // max(1, T * ntan)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small tensors: one thread is ~20x faster than two under load
    try:
        return _rounds(block, engines, comps, emp, exact, R, start, cap, sums, qerr, tol, upstream, chunk)
    finally:
        torch.set_num_threads(threads)


def _rounds(block, engines, comps, emp, exact, R, start, cap, sums, qerr, tol, upstream, chunk) -> Moments:
    """The doubling rounds of :func:`general_route`."""
    count, n = 0, start
    while True:
        for r in range(R):
            if exact:
                data = torch.as_tensor(comps[emp[0]].samples)
                for i in range(0, data.shape[0], chunk):
                    block(r, None, data[i:i + chunk])
            else:
                q = engines[r].draw(n - count, dtype=torch.float64)
                for i in range(0, q.shape[0], chunk):
                    block(r, q[i:i + chunk], None)
        count = comps[emp[0]].samples.shape[0] if exact else n
        est = sums / count
        K = 0.5 * (est[:, 0] + est[:, 0].transpose(0, 2, 1))
        N = 0.5 * (est[:, 1] + est[:, 1].transpose(0, 2, 1))
        mom = Moments(K, est[:, 2, 0].copy(), N, qerr, 0 if exact else count)
        if exact:
            return mom
        err = 3.0 * max(_se(K), _se(N)) + qerr
        if err <= tol or err <= 1.5 * upstream or 2 * count > cap:
            return mom
        n = 2 * count


def _se(a: np.ndarray) -> float:
    return float(np.linalg.norm(a.std(axis=0, ddof=1) / math.sqrt(a.shape[0])))
