"""The general route of :mod:`normfield.infinite.expect`: randomised quasi-Monte Carlo moments.

For an expression ``x = g(components)`` the route draws, per replicate, a scrambled
Sobol' sequence (``torch.quasirandom.SobolEngine``, Owen scrambling); each point
gives ``h_c = L_c Φ⁻¹(q)`` for every Gaussian component (``L_c L_cᵀ = Σ_c`` from
``eigh``, robust to the singular Σ that batch norm produces along 1), the input
coordinate and per-unit coefficient rows by an index coordinate ``⌊q' n⌋``, and
a component read only by train-mode batch norm in polar form with an importance
weight (:class:`_Sampler`). The map is evaluated in float64, vectorised over the
points; ``E[J Θ Jᵀ] = E[Σ_j (J l_j)(J l_j)ᵀ]`` over the columns ``l_j`` of
``L^Θ_c`` (``L^Θ_c L^Θ_cᵀ = Θ_c``) by ``torch.func.jvp`` under ``vmap`` (exact
given the point; the directional trick ``u ~ N(0, Θ)``, ``E[(Ju)(Ju)ᵀ] = E[JΘJᵀ]``,
would add the variance of ``u``), and each per-unit parameter is one more tangent.

**Error.** The ``R`` replicates are independent, unbiased estimates; the stated
error is ``3‖SE‖_F`` (standard error over replicates, the larger of nngp and
ntk). Points per replicate double from :data:`START_POINTS` until the stated error
is at most ``tol`` or, relative to the kernel's norm, at most :data:`UPSTREAM_FACTOR` times
the relative error the inputs already carry (more points cannot remove that), for nngp and
ntk each, or :data:`MAX_POINTS` is reached. Measured: over 8
seeds each for tanh and erf after a Dense layer (T = 4, 16 replicates),
``‖actual‖_F/‖SE‖_F`` stayed below 1.6, against the factor 3 stated (with 8
replicates it reached 3.0 once: the stopping rule favours rounds whose spread
happens to be low, which more replicates make rarer). An expression of the input's coordinates alone (no Gaussian,
no coefficient table) is averaged exactly over the ``d`` coordinates; a
coefficient table read by units that are the input's own coordinates is indexed
with them (unit j carries row j), not drawn independently.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch.func import jvp, vmap

from normfield.core.seeding import derive_seed
from normfield.errors import NormfieldError
from normfield.infinite.ops import BNTrainOp, UnitOp
from normfield.infinite.state import Component, Leaf, Moments, OpNode

__all__ = ["general_route", "START_POINTS", "MAX_POINTS", "UPSTREAM_FACTOR"]

#: a step stops once its relative stated error is within this factor of its input's (its own
#: noise is then at most √(1.2² − 1) ≈ 0.66 of what it inherits, so a chain's error grows by
#: propagation rather than by each step's sampling)
UPSTREAM_FACTOR = 1.2
#: quasi-Monte Carlo points per replicate of the first round
START_POINTS = 2**10
#: cap on the points per replicate
MAX_POINTS = 2**15
_CHUNK = 2**13



def _factor(S: np.ndarray) -> np.ndarray:
    """``L`` with ``L Lᵀ = S`` for a symmetric PSD ``S`` (negative rounding clipped), by ``eigh``."""
    lam, U = np.linalg.eigh(0.5 * (S + S.T))
    return U * np.sqrt(np.clip(lam, 0.0, None))



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
    """Draws of one Gaussian component for one replicate (:mod:`normfield.infinite.expect`, route 7).

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
        self._ntk = comp.ntk[r]
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

    @functools.cached_property
    def Lt(self) -> torch.Tensor:
        """(T, P) columns ``l_j`` with ``Σ_j l_j l_jᵀ = Θ`` (the tangents of the general route; the
        batch-norm route reads ``Θ`` whole and never needs them)."""
        Lt = _factor(self._ntk)
        return torch.as_tensor(Lt[:, np.abs(Lt).max(axis=0) > 0])

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


def _draw(samplers_r: Mapping[int, _Sampler], gauss: list[int], emp: list[int], comps: Mapping[int, Component],
          qb: torch.Tensor | None, eb: tuple[int, torch.Tensor] | None, nb: int):
    """One block's draws: ``(vals, eidx, w, col)``, the values per leaf (N, T), the drawn input
    coordinates per empirical leaf, the importance weights (N,) and the next free column of ``qb``.
    With ``qb`` None the block is the exact average over the input's coordinates ``eb``."""
    eidx: dict[int, torch.Tensor] = {}
    vals = {}
    w = torch.ones(nb, dtype=torch.float64)
    col = 0
    for k in gauss:
        smp = samplers_r[k]
        vals[k], wk = smp.draw(qb[:, col:col + smp.dim])
        if wk is not None:
            w = w * wk
        col += smp.dim
    for k in emp:
        if qb is None:
            vals[k] = eb[1]
            eidx[k] = torch.arange(eb[0], eb[0] + nb)
        else:
            data = torch.as_tensor(comps[k].samples)
            idx = (qb[:, col] * data.shape[0]).long().clamp_(0, data.shape[0] - 1)
            vals[k] = data[idx]
            eidx[k] = idx
            col += 1
    return vals, eidx, w, col


def _table_rows(ops: list[UnitOp], rows: dict[int, Any], eidx: Mapping[int, torch.Tensor],
                qb: torch.Tensor | None, col: int, nb: int) -> None:
    """Fill ``rows`` with each tabled operation's coefficient row per point: the input coordinate's own
    row where the units are the input's coordinates, the one row of a scalar table, else a drawn row."""
    rows.clear()
    for op in ops:
        if op.table is None:
            continue
        tab = torch.as_tensor(op.table)
        if getattr(op, "paired", None) is not None:  # unit j of the input carries row j
            rows[id(op)] = tab[eidx[op.paired]]
        elif op.table.shape[0] == 1:
            rows[id(op)] = tab.expand(nb, -1)
        else:
            idx = (qb[:, col] * tab.shape[0]).long().clamp_(0, tab.shape[0] - 1)
            rows[id(op)] = tab[idx]
            col += 1


def _tangents(vals: Mapping[int, torch.Tensor], th: Mapping[int, torch.Tensor], samplers_r: Mapping[int, _Sampler],
              pops: list[UnitOp], T: int, nb: int):
    """The tangents of one block, stacked over P: the columns of each component's ``L^Θ``, then one
    unit vector per per-unit parameter, as ``(value tangents, parameter tangents)``; None if P = 0."""
    tv: dict[int, list] = {k: [] for k in vals}
    tt: dict[int, list] = {k: [] for k in th}
    for k in vals:
        cols = samplers_r[k].Lt.T if k in samplers_r else torch.zeros((0, T), dtype=torch.float64)
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
    if not len(next(iter(tv.values()))):
        return None
    return {k: torch.stack(v) for k, v in tv.items()}, {k: torch.stack(v) for k, v in tt.items()}


def general_route(node, comps: Mapping[int, Component], *, seed: int, tol: float,
                  upstream: tuple[float, float] = (0.0, 0.0), start: int | None = None,
                  cap: int | None = None) -> Moments:
    """Route 7 of :mod:`normfield.infinite.expect`: randomised quasi-Monte Carlo, per replicate.

    Args:
        node: expression; comps: its components.
        seed: base seed; replicate ``r`` scrambles with ``derive_seed(seed, r)``.
        tol: target stated error ``3‖SE‖_F``.
        upstream: stated errors (nngp, ntk) of the inputs relative to their Frobenius norms (each stops
            once its own relative error is within :data:`UPSTREAM_FACTOR` times the input's: more
            points cannot remove the error the inputs carry).
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
    tabled = [op for op in ops if op.table is not None and op.table.shape[0] > 1
              and getattr(op, "paired", None) is None]
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

    def block(r: int, qb: torch.Tensor | None, eb: tuple[int, torch.Tensor] | None) -> None:
        f, rows = funcs[r]
        nb = eb[1].shape[0] if qb is None else qb.shape[0]
        vals, eidx, w, col = _draw(samplers[r], gauss, emp, comps, qb, eb, nb)
        _table_rows(ops, rows, eidx, qb, col, nb)
        th = {id(op): op.theta0(rows.get(id(op)), nb) for op in ops}
        y = f(vals, th)
        wy = w[:, None] * y
        sums[r, 0] += (wy.T @ y).numpy()
        sums[r, 2, 0] += wy.sum(0).numpy()
        tan = _tangents(vals, th, samplers[r], pops, T, nb)
        if tan is not None:
            Jt = vmap(lambda a, b: jvp(f, (vals, th), (a, b))[1])(*tan)  # (P, N, T)
            sums[r, 1] += torch.einsum("pnt,pns,n->ts", Jt, Jt, w).numpy()

    ntan = sum(samplers[0][k].Lt.shape[1] for k in gauss) + sum(op.n_params for op in pops)
    chunk = max(256, min(_CHUNK, 2**21 // max(1, T * ntan)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small tensors: one thread is ~20x faster than two under load
    try:
        return _rounds(block, engines, comps, emp, exact, R, start, cap, sums, qerr, tol, upstream, chunk)
    finally:
        torch.set_num_threads(threads)


def _rounds(block, engines, comps, emp, exact, R, start, cap, sums, qerr, tol, upstream, chunk,
            offset: Moments | None = None) -> Moments:
    """The doubling rounds of :func:`general_route` and of
    :func:`normfield.infinite.qmc_bn.bn_activation_route` (``offset``: exact moments added to the
    estimate, those of a control variate whose difference ``block`` accumulates)."""
    count, n = 0, start
    while True:
        for r in range(R):
            if exact:
                data = torch.as_tensor(comps[emp[0]].samples)
                for i in range(0, data.shape[0], chunk):
                    block(r, None, (i, data[i:i + chunk]))
            else:
                q = engines[r].draw(n - count, dtype=torch.float64)
                for i in range(0, q.shape[0], chunk):
                    block(r, q[i:i + chunk], None)
        count = comps[emp[0]].samples.shape[0] if exact else n
        est = sums / count
        K = 0.5 * (est[:, 0] + est[:, 0].transpose(0, 2, 1))
        N = 0.5 * (est[:, 1] + est[:, 1].transpose(0, 2, 1))
        mean = est[:, 2, 0].copy()
        if offset is not None:
            K, mean, N = K + offset.nngp, mean + offset.mean, N + offset.ntk
        qtot = qerr if offset is None else max(qerr, offset.qerr)  # the control's quadrature error too
        mom = Moments(K, mean, N, qtot, 0 if exact else count)
        if exact:
            return mom
        eK, eN = 3.0 * _se(K) + qtot, 3.0 * _se(N) + qtot
        fK = UPSTREAM_FACTOR * upstream[0] * float(np.linalg.norm(K.mean(axis=0)))
        fN = UPSTREAM_FACTOR * upstream[1] * float(np.linalg.norm(N.mean(axis=0)))
        if (eK <= max(tol, fK) and eN <= max(tol, fN)) or 2 * count > cap:
            return mom
        n = 2 * count


def _se(a: np.ndarray) -> float:
    return float(np.linalg.norm(a.std(axis=0, ddof=1) / math.sqrt(a.shape[0])))
