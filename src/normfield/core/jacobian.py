"""Whole-batch Jacobian products of any function of a parameter dict, with automatic fallbacks.

For f: θ (a dict of tensors) -> f(θ) (a flat tensor of n outputs, e.g. the T·C
outputs of a model on a whole batch) and J = ∂f/∂θ (n × P), this module gives

* ``vjp(u)`` = Jᵀu (a dict like θ) by reverse mode, reusing one forward graph;
* ``jvp(t)`` = J t (n,) by forward mode (:func:`torch.func.jvp`) where every op
  has a forward-mode rule, otherwise by the double-VJP identity
  J t = ∂/∂u ⟨Jᵀu, t⟩ (Jᵀu is linear in u, so its derivative with respect to u,
  applied to t, is J t: one reverse pass through the graph of the first);
* ``gram(v)`` = s·J Jᵀ v, the Fisher/NTK dual product (Karakida et al. 2019,
  eq. (8): F* = J Jᵀ/T, s = 1/T) — one VJP and one JVP.

Routes, tried in this order on the first JVP and then kept:

=====================  ======================================================
``forward``            :func:`torch.func.jvp`
``forward-math``       the same inside ``sdpa_kernel(SDPBackend.MATH)`` with
                       cuDNN off: fused attention and cuDNN RNN kernels have no
                       forward-mode rule, their composite versions do
``double-vjp``         reverse over reverse (``torch.autograd.grad`` with
                       ``create_graph=True``)
``double-vjp-math``    the same with the math kernels
=====================  ======================================================

and, for long runs of products, the traced routes ``linearize`` and
``linearize-math``: :func:`torch.func.linearize` traces the forward-mode
product once and each later JVP runs only its tangent half. :func:`torch.func.jvp`
recomputes the primal forward pass with every product, so the traced product
costs about half (measured on 2 CPU cores: 3.0 s against 6.2 s on a CIFAR
ResNet-18 at batch 128; 0.25 s against 0.50 s on a ViT of depth 8 at batch 64).
Tracing costs about :data:`TRACE_AFTER` forward-mode JVPs of computation plus a
fixed share per op (the Python-level trace and code generation of each aten op,
about 3 ms): 28 s on that ResNet (1135 ops, 4.3e11 flops per JVP, about 4.6
JVPs) but 12 s on that ViT (3170 small ops, 3.0e10 flops, about 24 JVPs). With
``route="auto"`` the operator therefore switches from ``forward``
(``forward-math``) to the traced route once the forward-mode JVPs done so far
have cost what tracing would, by the estimate
``TRACE_AFTER + ops·TRACE_OP_FLOPS/flops`` JVPs (the rent-or-buy rule, never more
than twice the cost of the better choice made in hindsight), where ops and flops
are counted on the first JVP (:class:`torch.utils.flop_counter.FlopCounterMode`
for the matmul/convolution flops) and :data:`TRACE_OP_FLOPS` is one op's share
in flops (3 ms at the 70 GFLOP/s of those runs). Below :data:`TRACE_MIN_FLOPS`
per JVP it never traces. The decision uses counts only, never timings, so the same call
gives the same numbers on every run. The traced product is checked against
forward mode before use (see :meth:`JacobianOperator._traced_agrees`); a function
that cannot be traced, or whose trace disagrees, stays on forward mode.

Every route computes the same J to round-off (tested). A function none of them
can differentiate raises :class:`NormfieldError` naming the sub-module that was
running when the last route failed.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from normfield.errors import NormfieldError

__all__ = ["ROUTES", "AUTO_ROUTES", "TRACE_AFTER", "TRACE_MIN_FLOPS", "TRACE_OP_FLOPS", "JacobianOperator",
           "gram_matvec", "math_kernels", "is_oom"]

#: Product routes (the ``jvp=`` choices besides "auto"; see the module docstring).
ROUTES = ("forward", "forward-math", "double-vjp", "double-vjp-math", "linearize", "linearize-math")
#: The routes ``route="auto"`` tries on the first JVP, in order.
AUTO_ROUTES = ROUTES[:4]
#: Forward-mode JVPs that tracing costs besides its per-op share (see the module docstring).
TRACE_AFTER = 5
#: One op's share of the cost of a trace, in flops of a forward-mode JVP, by device type
#: (CPU: measured, about 3 ms at 70 GFLOP/s; CUDA: the same 3 ms at an assumed 10 TFLOP/s).
TRACE_OP_FLOPS = {"cpu": 2e8, "cuda": 3e10}
#: Flops of one forward-mode JVP below which ``route="auto"`` never traces, by device type.
TRACE_MIN_FLOPS = {"cpu": 1e9, "cuda": 1e11}

Params = dict[str, torch.Tensor]


class _OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def math_kernels() -> Iterator[None]:
    """Composite (differentiable to any order, in both modes) attention and RNN kernels."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH), torch.backends.cudnn.flags(enabled=False):
        yield


def is_oom(e: BaseException) -> bool:
    """True for an out-of-memory error of Python, torch (CPU or CUDA) or the allocator."""
    msg = str(e).lower()
    return isinstance(e, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))) or (
        "out of memory" in msg or "not enough memory" in msg or "can't allocate memory" in msg
        or "failed to allocate" in msg)


def _ctx(route: str):
    return math_kernels() if route.endswith("-math") else contextlib.nullcontext()


class JacobianOperator:
    """Products with the Jacobian J (n × P) of ``f`` at ``theta``, over the whole batch.

    Args:
        f: θ (dict name -> tensor) -> flat output tensor, shape (n,).
        theta: the point; its tensors are not modified.
        scale: s in ``gram(v) = s·J Jᵀ v`` (1/T for the Fisher dual F*).
        route: ``"auto"`` or one of :data:`ROUTES`.
        module: the ``nn.Module`` run by ``f``, to name the failing sub-module
            in errors (optional).

    Attributes:
        n: number of outputs.
        out: f(θ), shape (n,), detached.
        route: the route in use (``"auto"`` until the first JVP decides it).
        products: Jacobian products done so far (one per VJP or JVP, batched rows count each).
    """

    def __init__(self, f: Callable[[Params], torch.Tensor], theta: Params, *, scale: float = 1.0,
                 route: str = "auto", module: nn.Module | None = None) -> None:
        if route != "auto" and route not in ROUTES:
            raise NormfieldError(f"route must be 'auto' or one of {', '.join(ROUTES)}, got {route!r}",
                                 argument="route")
        self.f, self.theta, self.scale, self.module = f, theta, float(scale), module
        self.route = self._requested = route
        self._decided = False
        self.products = 0
        self._graph: tuple | None = None  # double-VJP graph: (out, leaves, u, grads)
        self._lin: Callable[[Params], torch.Tensor] | None = None  # the traced tangent map (linearize routes)
        self._forward_jvps = 0  # forward-mode JVPs so far (route "auto" traces once they cost what a trace would)
        self._jvp_flops = 0.0  # matmul/conv flops of the first forward-mode JVP (route "auto")
        self._jvp_ops = 0  # aten ops dispatched by the first forward-mode JVP (route "auto")
        self._trace_refused = False  # the trace failed or disagreed with forward mode: never again
        self._rebuild_vjp(route if route != "auto" else "forward")

    # -- reverse mode --------------------------------------------------------------
    def vjp(self, u: torch.Tensor) -> Params:
        """Jᵀu, a dict like θ; u of shape (n,)."""
        self.products += 1
        with _ctx(self._vjp_route):
            return self._vjp_fn(u.reshape(self.out.shape))[0]

    def vjp_batched(self, U: torch.Tensor) -> Params:
        """Rows Jᵀu_i for U of shape (m, n): dict of tensors with a leading m.

        One vmapped backward pass on a GPU; a loop of VJPs on the CPU, where batching measured
        no faster per row on a ResNet-18 and twice slower on a ViT (ops without batching rules,
        e.g. the math attention kernel's backward, fall back to slow per-row loops inside vmap).
        """
        self.products += int(U.shape[0])
        with _ctx(self._vjp_route):
            try:
                if not self._vjp_batchable or self.out.device.type == "cpu":
                    raise NotImplementedError
                return torch.func.vmap(lambda u: self._vjp_fn(u)[0])(U)
            except Exception:  # noqa: BLE001 - an op without a batching rule: loop
                rows = [self._vjp_fn(u)[0] for u in U]
                return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}

    # -- forward mode (or its reverse-over-reverse equivalent) ---------------------
    def _linearized(self) -> Callable[[Params], torch.Tensor]:
        if self._lin is None:
            with _ctx(self.route), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.fx notes about constants folded into the trace
                _, self._lin = torch.func.linearize(self.f, self.theta)
        return self._lin

    def _jvp_forward(self, t: Params) -> torch.Tensor:
        with _ctx(self.route):
            if self.route.startswith("linearize"):
                return self._linearized()(t)
            return torch.func.jvp(self.f, (self.theta,), (t,))[1]

    def _double_graph(self):
        if self._graph is None:
            with _ctx(self.route), torch.enable_grad():
                leaves = {k: v.detach().clone().requires_grad_(True) for k, v in self.theta.items()}
                out = self.f(leaves).reshape(-1)
                # any u will do (Jᵀu is linear in u); a random one exposes gradients cut off from u
                gen = torch.Generator(device=out.device).manual_seed(0)
                u = torch.randn(out.shape, generator=gen, dtype=out.dtype, device=out.device).requires_grad_(True)
                grads = torch.autograd.grad(out, list(leaves.values()), u, create_graph=True, allow_unused=True)
            for k, g in zip(leaves, grads):
                if g is not None and not g.requires_grad and bool((g != 0).any()):
                    raise RuntimeError(f"the gradient of {k!r} is not differentiable with respect to the cotangent "
                                       "(a backward without a double-backward rule)")
            self._graph = (out, leaves, u, grads)
        return self._graph

    def _jvp_double(self, t: Params) -> torch.Tensor:
        out, leaves, u, grads = self._double_graph()
        used = [(g, t[k]) for k, g in zip(leaves, grads) if g is not None and g.requires_grad]
        if not used:  # every gradient is identically zero: so is J
            return torch.zeros_like(self.out)
        with _ctx(self.route):
            (jt,) = torch.autograd.grad([g for g, _ in used], u, [v for _, v in used], retain_graph=True,
                                        allow_unused=True)
        return torch.zeros_like(self.out) if jt is None else jt

    def _jvp_route(self, t: Params) -> torch.Tensor:
        if not self.route.startswith("double"):
            return self._jvp_forward(t)
        jt = self._jvp_double(t)
        if not self._decided:
            self._adjoint_check(t, jt)
        return jt

    def _adjoint_check(self, t: Params, jt: torch.Tensor) -> None:
        """⟨u, J t⟩ = ⟨Jᵀu, t⟩ for a random u: a backward pass without a double-backward rule leaves
        part of J t out of the double-VJP graph, which this dot-product test detects (one VJP)."""
        gen = torch.Generator(device=jt.device).manual_seed(1)
        u = torch.randn(jt.shape, generator=gen, dtype=jt.dtype, device=jt.device)
        with torch.no_grad():
            g = self.vjp(u)
        a = float((u.double() * jt.double()).sum())
        b = float(sum((g[k].double() * t[k].double()).sum() for k in t))
        scale = float(u.norm() * jt.norm()) + math.sqrt(float(sum(g[k].double().pow(2).sum() for k in t))
                                                         * float(sum(t[k].double().pow(2).sum() for k in t)))
        if abs(a - b) > math.sqrt(torch.finfo(jt.dtype).eps) * scale:
            raise RuntimeError("the double-VJP graph misses part of the Jacobian (a backward without a "
                               f"double-backward rule): <u, Jt> = {a:.6g} but <J^T u, t> = {b:.6g}")

    def _counted_jvp(self, t: Params) -> torch.Tensor:
        """The first forward-mode JVP, its matmul/convolution flops and its ops counted (for the
        rent-or-buy estimate of the cost of a trace)."""
        from torch.utils.flop_counter import FlopCounterMode

        counter, ops = FlopCounterMode(display=False), _OpCounter()
        with counter, ops:
            res = self._jvp_route(t)
        self._jvp_flops, self._jvp_ops = float(counter.get_total_flops()), ops.count
        return res

    def trace_cost_jvps(self) -> float:
        """Estimated cost of tracing the product, in forward-mode JVPs (inf: never trace)."""
        dev = self.out.device.type
        if self._jvp_flops < TRACE_MIN_FLOPS.get(dev, math.inf):
            return math.inf
        per_op = self._jvp_ops * TRACE_OP_FLOPS.get(dev, math.inf)
        if per_op <= 0:
            return float(TRACE_AFTER)
        return TRACE_AFTER + per_op / self._jvp_flops if self._jvp_flops > 0 else math.inf

    def _due_for_trace(self, upcoming: int) -> bool:
        """Route ``auto`` on forward mode: count the JVPs; True once they have cost what a trace would."""
        if self._requested != "auto" or not self.route.startswith("forward") or self._trace_refused:
            return False
        cost = self.trace_cost_jvps()
        if not math.isfinite(cost):
            return False
        self._forward_jvps += upcoming
        return self._forward_jvps > cost

    def _traced_agrees(self, t: Params, ref: torch.Tensor) -> bool:
        """Trace the product and check it against the forward-mode J t for the same t.

        A trace can be silently wrong: with ``nn.LSTM``/``nn.GRU`` (whose flattened weights
        are rebuilt in place) the traced product is right on its first call and off by 5-20 %
        on the next ones. The traced product is therefore called twice on ``t`` and both
        results are compared with ``ref``, the forward-mode J t that the caller returns anyway
        (cost: two traced JVPs, once per operator).
        """
        plain = self.route
        self.route, self._lin = plain.replace("forward", "linearize"), None
        try:
            lin = self._linearized()
            tol = math.sqrt(torch.finfo(ref.dtype).eps) * (float(ref.norm()) + 1e-300)
            ok = True
            for _ in range(2):
                got = lin(t)
                ok = ok and bool(torch.isfinite(got).all()) and float((got - ref).norm()) <= tol
        except Exception:  # noqa: BLE001 - not traceable (or no memory for the trace)
            ok = False
        if not ok:
            self.route, self._lin, self._trace_refused = plain, None, True  # forward mode for good
        return ok

    def jvp(self, t: Params) -> torch.Tensor:
        """J t, shape (n,); t a dict like θ."""
        self.products += 1
        if self.route != "auto" and self._decided:
            if self._due_for_trace(1):
                ref = self._jvp_route(t)
                self._traced_agrees(t, ref)
                return ref
            return self._jvp_route(t)
        last: Exception | None = None
        for r in AUTO_ROUTES if self._requested == "auto" else (self._requested,):
            self.route, self._graph, self._lin = r, None, None
            try:
                if self._requested == "auto" and r.startswith("forward"):
                    res = self._counted_jvp(t)
                else:
                    res = self._jvp_route(t)
            except Exception as e:  # noqa: BLE001 - try the next route
                last = e
                continue
            if r.startswith("linearize"):  # asked for by name: refuse a trace that is not J
                self.route = r.replace("linearize", "forward")
                ref = self._jvp_forward(t)
                if not self._traced_agrees(t, ref):
                    self.route = self._requested
                    raise NormfieldError(
                        f"jvp={r!r}: the traced product differs from forward mode for this model (a module "
                        "whose parameters the trace sees as constants, e.g. nn.LSTM's flattened weights); "
                        "use jvp='auto' or jvp='forward'", argument="jvp")
            if r.endswith("-math") and not self._vjp_route.endswith("-math"):
                self._rebuild_vjp(r)
            self._decided = True
            self._forward_jvps = 1 if r.startswith("forward") else 0
            return res
        if last is not None and is_oom(last):
            raise last
        self.route = self._requested
        raise self._unsupported(t, last)

    def _rebuild_vjp(self, route: str) -> None:
        """Reverse mode by :func:`torch.func.vjp`, or by ``torch.autograd`` on leaf copies for
        functions outside torch.func's reach (e.g. ``autograd.Function`` without ``setup_context``)."""
        with _ctx(route), torch.enable_grad():
            try:
                out, self._vjp_fn = torch.func.vjp(self.f, self.theta)
                self._vjp_batchable = True
            except Exception as e:  # noqa: BLE001 - fall back on the autograd tape
                if is_oom(e):
                    raise
                leaves = {k: v.detach().clone().requires_grad_(True) for k, v in self.theta.items()}
                out = self.f(leaves)

                def vjp_fn(u, _out=out, _leaves=leaves):
                    gs = torch.autograd.grad(_out, list(_leaves.values()), u.reshape(_out.shape), retain_graph=True,
                                             allow_unused=True)
                    return ({k: torch.zeros_like(_leaves[k]) if g is None else g for k, g in zip(_leaves, gs)},)

                self._vjp_fn, self._vjp_batchable = vjp_fn, False
        self.out = out.detach()
        self.n = int(out.numel())
        self._vjp_route = route

    def jvp_batched(self, G: Params) -> torch.Tensor:
        """J g_i for a dict of tensors with a leading m: shape (m, n)."""
        m = int(next(iter(G.values())).shape[0])
        if not self._decided:
            first = self.jvp({k: v[0] for k, v in G.items()})
            if m == 1:
                return first[None]
            rest = self.jvp_batched({k: v[1:] for k, v in G.items()})
            return torch.cat([first[None], rest])
        self.products += m
        if self._due_for_trace(m):
            ref = self._jvp_batched_route(G)
            self._traced_agrees({k: v[0] for k, v in G.items()}, ref[0])
            return ref
        return self._jvp_batched_route(G)

    def _jvp_batched_route(self, G: Params) -> torch.Tensor:
        m = int(next(iter(G.values())).shape[0])
        with _ctx(self.route):
            try:
                if self.route.startswith("linearize"):
                    return torch.func.vmap(self._linearized())(G)
                if self.route.startswith("forward"):
                    return torch.func.vmap(lambda g: torch.func.jvp(self.f, (self.theta,), (g,))[1])(G)
                out, leaves, u, grads = self._double_graph()
                used = [(g, G[k]) for k, g in zip(leaves, grads) if g is not None and g.requires_grad]
                if not used:
                    return torch.zeros((m, self.n), dtype=self.out.dtype, device=self.out.device)
                (jt,) = torch.autograd.grad([g for g, _ in used], u, [v for _, v in used], retain_graph=True,
                                            is_grads_batched=True)
                return jt
            except Exception:  # noqa: BLE001 - no batching rule: loop
                return torch.stack([self._jvp_route({k: v[i] for k, v in G.items()}) for i in range(m)])

    # -- the dual ------------------------------------------------------------------
    def gram(self, v: torch.Tensor) -> torch.Tensor:
        """s·J Jᵀ v for v of shape (n,): one VJP and one JVP."""
        with torch.no_grad():
            return self.jvp(self.vjp(v)) * self.scale

    def sq_norm_vjp(self, u: torch.Tensor) -> float:
        """s·‖Jᵀu‖² = s·uᵀ J Jᵀ u (float64), one VJP."""
        with torch.no_grad():
            g = self.vjp(u)
        return self.scale * float(sum(x.double().pow(2).sum() for x in g.values()))

    def sq_norm_vjp_batched(self, U: torch.Tensor) -> np.ndarray:
        """(s·‖Jᵀu_i‖²)_i (float64 numpy, shape (m,)) for U of shape (m, n): one batched VJP of m rows."""
        with torch.no_grad():
            G = self.vjp_batched(U)
        m = int(U.shape[0])
        tot = sum(g.reshape(m, -1).double().pow(2).sum(1) for g in G.values())
        return (self.scale * tot).cpu().numpy()

    # -- errors --------------------------------------------------------------------
    def _unsupported(self, t: Params, err: Exception | None) -> NormfieldError:
        where = self._failing_module(t)
        msg = str(err).strip().splitlines()[0] if err is not None and str(err).strip() else type(err).__name__
        place = f" in sub-module {where!r}" if where else ""
        tried = ", ".join(AUTO_ROUTES if self._requested == "auto" else (self._requested,))
        return NormfieldError(
            f"model: the Jacobian products cannot be computed{place} (no route of {tried} "
            f"works: {type(err).__name__}: {msg[:200]}); replace that layer by a composite PyTorch version, or "
            "exclude its parameters with parameters=[...] and analyze the rest", argument="model")

    def _failing_module(self, t: Params) -> str | None:
        if self.module is None:
            return None
        stack: list[str] = []
        handles = []
        for name, m in self.module.named_modules():
            handles.append(m.register_forward_pre_hook(lambda mod, inp, _n=name: stack.append(_n)))
            handles.append(m.register_forward_hook(lambda mod, inp, out: stack.pop() if stack else None))
        try:
            for r in AUTO_ROUTES if self._requested == "auto" else (self._requested,):
                self.route, self._graph, self._lin = r, None, None
                stack.clear()
                try:
                    self._jvp_route(t)
                except Exception:  # noqa: BLE001 - the failure we are locating
                    name = next((s for s in reversed(stack) if s), None)
                    if name:
                        return name
            return None
        finally:
            self.route = self._requested
            self._graph = self._lin = None
            for h in handles:
                h.remove()


def gram_matvec(f: Callable[[Params], torch.Tensor], params: Params, *, scale: float = 1.0, route: str = "auto",
                module: nn.Module | None = None) -> tuple[int, Callable[[torch.Tensor], torch.Tensor], JacobianOperator]:
    """The whole-batch J·Jᵀ product of any function of a parameter dict.

    Args:
        f: θ -> flat output tensor (n,) (e.g. all T·C outputs of a network on its whole batch).
        params: θ, name -> tensor (not modified).
        scale: s in v -> s·J Jᵀ v (1/T for the Fisher dual F* of Karakida et al. 2019, eq. (8)).
        route: ``"auto"`` or one of :data:`ROUTES` (forward mode, math kernels, double VJP).
        module: the module ``f`` runs, to name a failing sub-module in errors.

    Returns:
        (n, matvec: v (n,) -> s·J Jᵀ v (n,) in f's dtype/device, the operator: its ``products``
        counts the Jacobian products, ``route`` says how they are formed).
    """
    op = JacobianOperator(f, params, scale=scale, route=route, module=module)
    return op.n, op.gram, op
