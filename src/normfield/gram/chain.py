"""Finite-width Gram chains of a batch-normalised random MLP.

The chain of Joudaki et al. 2023, eq. (1)::

    h_{l+1} = W_l σ(φ(h_l)),   W_l ~ N(0, 1/d)^{d×d} fresh at every layer,

with ``h_l`` of shape ``(d, n)`` (width ``d``, batch ``n``) and the Gram
matrix of eq. (2)::

    G_l = (1/d) Xᵀ X,   X = σ(φ(h_l))   (n × n).

``φ`` is ``bn`` (batch norm: each row centred over the ``n`` samples and
divided by its population standard deviation, optional ``eps``), ``none``
(φ = identity) or ``ln`` (layer norm: each column centred and scaled over
the ``d`` units; the extension the paper names as future work, §7).

Two engines, equal in law:

* ``explicit`` materialises every ``W_l`` (O(d² n) time, O(d²) memory);
* ``fast`` uses that, given ``X``, the rows of ``W_l X`` are i.i.d.
  ``N(0, XᵀX/d) = N(0, G_l)``, so ``h_{l+1} = Z Cᵀ`` with ``Z`` a ``d×n``
  standard normal matrix and ``C Cᵀ = G_l`` (Cholesky, or the symmetric
  square root when ``G_l`` is singular, e.g. BN with the identity activation
  where ``G* 1 = 0``). O(d n²) time and O(d n) memory per layer.

Both are vectorised over seeds (a leading batch dimension); every seed has
its own random stream (NumPy ``SeedSequence([seed, k])`` on CPU, a seeded
``torch.Generator`` on CUDA) so a seed's trajectory does not depend on how
many seeds run beside it. Internally ``h_l`` is stored transposed,
``(seeds, n, d)``, so that the batch-norm statistics (over n) and the Gram
products run over contiguous memory.

:func:`simulate_chain` returns the raw Gram matrices;
:mod:`normfield.gram.measure` turns them into the paper's measurements.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from normfield.core.activations import Activation, get_activation
from normfield.core.normalize import center
from normfield.core.validation import (
    check_batch_for_norm,
    check_choice,
    check_device,
    check_finite_array,
    check_float,
    check_int,
    check_memory,
)
from normfield.errors import NormfieldError

__all__ = [
    "ChainResult",
    "simulate_chain",
    "psd_sqrt",
]
# what is measured on a chain (gram_chain, summarize_chain, mean_field_from) lives in normfield.gram.measure

NORMS = ("bn", "none", "ln")
ENGINES = ("fast", "explicit")
INPUTS = ("gaussian", "degenerate")
_DTYPES = {"float64": torch.float64, "float32": torch.float32}
#: elements of one (seeds, d, n) state tensor processed at once by the fast engine
_CHUNK_ELEMENTS = 2**22


@dataclass(frozen=True)
class ChainResult:
    """Gram matrices recorded along simulated chains.

    Attributes:
        grams: ``(K, R, n, n)`` float64; ``grams[k, r]`` is ``G_l`` of seed
            ``k`` at layer ``layers[r]`` (Joudaki et al. eq. 2).
        layers: ``(R,)`` int, the recorded layer indices (0 = the input layer).
        singular_values: ``(K, R, n)`` float64, singular values of ``h_l``
            (descending), or ``None`` when not requested.
        settings: activation label, width, batch, depth, norm, engine, dtype,
            device, seed, seeds, inputs, eps.
    """

    grams: np.ndarray
    layers: np.ndarray
    singular_values: np.ndarray | None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def seeds(self) -> int:
        return int(self.grams.shape[0])

    @property
    def batch(self) -> int:
        return int(self.grams.shape[-1])


class _NormalSource:
    """Standard normal draws for one seed: NumPy's ziggurat (``Generator.standard_normal``, about 2x
    faster than torch's float64 sampler on CPU) seeded from ``SeedSequence([seed, k])``, or a
    ``torch.Generator`` (CUDA, or when the caller passes one)."""

    def __init__(self, seed: int | torch.Generator, k: int, device: str) -> None:
        self.torch_gen: torch.Generator | None = None
        self.np_gen: np.random.Generator | None = None
        if isinstance(seed, torch.Generator):
            self.torch_gen = seed
        elif device.startswith("cuda"):
            s = int(np.random.SeedSequence([seed, k]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
            self.torch_gen = torch.Generator(device="cuda")
            self.torch_gen.manual_seed(s)
        else:
            self.np_gen = np.random.default_rng(np.random.SeedSequence([seed, k]))

    def fill_(self, t: torch.Tensor) -> torch.Tensor:
        """Fill the tensor ``t`` (contiguous) with i.i.d. N(0, 1) in place."""
        if self.np_gen is not None and t.device.type == "cpu":
            dt = np.float64 if t.dtype == torch.float64 else np.float32
            self.np_gen.standard_normal(out=t.numpy(), dtype=dt)
            return t
        return t.normal_(generator=self.torch_gen)


def _sources(seed: int | torch.Generator, seeds: int, device: str) -> list[_NormalSource]:
    if not isinstance(seed, torch.Generator):
        seed = check_int("seed", seed, minimum=0)
    elif seed.device.type != torch.device(device).type:
        raise NormfieldError(f"seed: the torch.Generator is on {seed.device.type} but device is {device}; "
                             "pass a generator on the simulation device or an int seed", argument="seed")
    return [_NormalSource(seed, k, device) for k in range(seeds)]


def psd_sqrt(G: torch.Tensor) -> torch.Tensor:
    """A factor ``C`` with ``C Cᵀ = G`` for a batch of PSD matrices.

    Cholesky where it succeeds; the symmetric square root ``V diag(√λ₊) Vᵀ``
    (negative rounding eigenvalues clipped to 0) for the matrices where it
    fails (singular ``G``, e.g. BN with the identity activation, whose fixed
    point has ``G* 1 = 0``). Any such ``C`` gives ``Z Cᵀ`` rows ~ N(0, G).

    Args:
        G: ``(..., n, n)`` symmetric PSD.

    Returns:
        ``(..., n, n)`` factor.
    """
    L, info = torch.linalg.cholesky_ex(G)
    if bool(info.any()):
        bad = info != 0
        Gb = G[bad]
        w, V = torch.linalg.eigh(0.5 * (Gb + Gb.transpose(-1, -2)))
        L = L.clone()
        L[bad] = (V * w.clamp_min(0).sqrt().unsqueeze(-2)) @ V.transpose(-1, -2)
    return L


def _normalize(h: torch.Tensor, norm: str, eps: float, *, centered: bool = False) -> torch.Tensor:
    """φ(h) for ``h`` stored transposed, shape ``(S, n, d)`` (contiguous over the d units).

    ``bn`` centres each unit over the n samples and divides by the population
    standard deviation (√(var + eps)); ``ln`` does the same for each sample
    over the d units. ``centered=True`` skips the centring (the caller
    guarantees it was already done). Returns a new tensor.
    """
    if norm == "none":
        return h
    dim = -2 if norm == "bn" else -1  # bn: over the n samples of a unit; ln: over the d units of a sample
    m = h.shape[dim]
    c = h if centered else center(h, dim)
    sq = (c * c).sum(dim=dim, keepdim=True).mul_(1.0 / m)
    if eps:
        sq = sq.add_(eps)
    return c * sq.rsqrt_()


def _check_h0(h0: torch.Tensor, norm: str, eps: float) -> None:
    """``h0`` stored transposed, shape ``(S, n, d)``."""
    check_finite_array("h0", h0)
    if eps > 0 or norm == "none":
        return
    if norm == "bn":
        spread = h0.amax(dim=-2) - h0.amin(dim=-2)  # (S, d)
        if bool((spread == 0).any()):
            idx = torch.nonzero(spread == 0)[0].tolist()
            row = idx[-1]
            where = f"row {row}" + (f" of seed {idx[0]}" if h0.shape[0] > 1 else "")
            raise NormfieldError(
                f"h0 has a constant {where} (all {h0.shape[-2]} samples equal): batch norm divides "
                "by its zero standard deviation; pass eps > 0 (e.g. eps=1e-5, --eps 1e-5) or "
                "remove the row",
                argument="h0",
            )
    else:
        spread = h0.amax(dim=-1) - h0.amin(dim=-1)  # (S, n)
        if bool((spread == 0).any()):
            idx = torch.nonzero(spread == 0)[0].tolist()
            raise NormfieldError(
                f"h0 has a constant column {idx[-1]} (all units equal): layer norm divides by its "
                "zero standard deviation; pass eps > 0 (e.g. eps=1e-5)",
                argument="h0",
            )


def _make_inputs(
    inputs: Any, S: int, d: int, n: int, srcs: Sequence[_NormalSource], dtype: torch.dtype,
    device: str, degeneracy: float,
) -> torch.Tensor:
    """The input batch ``h0``, returned transposed: shape ``(S, n, d)``."""
    if isinstance(inputs, str):
        h = torch.empty(S, n, d, dtype=dtype, device=device)
        for k in range(S):
            srcs[k].fill_(h[k])
        if inputs == "degenerate":
            # one dominant direction in sample space: h0 = g vᵀ + δ Z (d × n), with v ⟂ 1_n so that
            # batch norm (which removes the 1_n direction) keeps it; G0 is then close to rank one.
            for k in range(S):
                g = srcs[k].fill_(torch.empty(1, d, dtype=dtype, device=device))
                v = srcs[k].fill_(torch.empty(n, 1, dtype=dtype, device=device))
                v = v - v.mean()
                v = v * math.sqrt(n) / v.norm().clamp_min(1e-30)
                h[k] = v @ g + degeneracy * h[k]
        return h
    h = torch.as_tensor(np.asarray(inputs) if not isinstance(inputs, torch.Tensor) else inputs)
    if h.ndim == 2:
        h = h.unsqueeze(0)
    if h.ndim != 3 or tuple(h.shape[-2:]) != (d, n) or h.shape[0] not in (1, S):
        raise NormfieldError(
            f"h0 must have shape (width, batch) = ({d}, {n}) or (seeds, width, batch) = "
            f"({S}, {d}, {n}), got {tuple(h.shape)}",
            argument="h0",
        )
    if not (h.is_floating_point() or h.dtype in (torch.int32, torch.int64)):
        raise NormfieldError(f"h0 must hold real numbers, got dtype {h.dtype}", argument="h0")
    h = h.to(dtype=torch.float64)
    check_finite_array("h0", h)
    return h.transpose(-1, -2).to(dtype=dtype, device=device).contiguous()


def simulate_chain(
    activation: str | Activation,
    width: int,
    batch: int,
    depth: int,
    *,
    seeds: int = 1,
    norm: str = "bn",
    engine: str = "fast",
    inputs: str | np.ndarray | torch.Tensor = "gaussian",
    eps: float = 0.0,
    dtype: str = "float64",
    device: str = "cpu",
    seed: int | torch.Generator = 0,
    record_layers: Sequence[int] | None = None,
    singular_values: bool = False,
    degeneracy: float = 0.1,
    progress: bool = False,
) -> ChainResult:
    """Simulate the BN-MLP chain of Joudaki et al. 2023, eq. (1), and record G_l (eq. 2).

    Args:
        activation: σ, a registered name or an :class:`Activation`.
        width: d >= 1 (>= 2 under ``ln``).
        batch: n >= 1 (>= 2 under ``bn``).
        depth: number of layers L >= 0; layers 0..L are recorded by default.
        seeds: K independent chains, simulated as one batch.
        norm: ``"bn"`` (paper), ``"none"`` or ``"ln"``.
        engine: ``"fast"`` (exact in law, O(d n²)/layer) or ``"explicit"``
            (materialises W_l, O(d² n)/layer).
        inputs: ``"gaussian"`` (i.i.d. N(0,1) entries), ``"degenerate"``
            (``h0 = g vᵀ + δ Z``, one dominant direction v ⟂ 1_n, δ =
            ``degeneracy``), or an array ``(d, n)`` / ``(K, d, n)``.
        eps: added to the variance inside φ (0 = the paper's BN).
        dtype: ``"float64"`` or ``"float32"`` for the simulation (Grams are
            returned in float64).
        device: ``"cpu"`` or ``"cuda"``.
        seed: base seed (seed k draws from ``SeedSequence([seed, k])``; same
            seed, same numbers on a given device) or a ``torch.Generator``
            shared by all seeds (draws are then sequential).
        record_layers: layer indices to record (default all of 0..L).
        singular_values: also record the singular values of h_l.
        degeneracy: δ of the ``"degenerate"`` input.
        progress: show a progress bar over layers.

    Returns:
        :class:`ChainResult` with ``grams`` of shape ``(K, R, n, n)``.

    Raises:
        NormfieldError: bad sizes, a constant row of ``h0`` under BN (names the
            row; suggests ``eps``), NaN/inf in ``h0``, or an explicit-engine
            allocation over the memory cap (suggests ``engine="fast"``).
    """
    act = get_activation(activation)
    norm = check_choice("norm", norm, NORMS)
    engine = check_choice("engine", engine, ENGINES)
    d = check_int("width", width, minimum=1)
    n = check_batch_for_norm("batch", batch, "bn" if norm == "bn" else "none")
    if norm == "ln" and d < 2:
        raise NormfieldError(f"width must be >= 2 under ln normalization (statistics over the units), got {d}",
                             argument="width")
    L = check_int("depth", depth, minimum=0)
    S = check_int("seeds", seeds, minimum=1)
    eps = check_float("eps", eps, minimum=0.0)
    degeneracy = check_float("degeneracy", degeneracy, minimum=0.0)
    dt = _DTYPES[check_choice("dtype", dtype, tuple(_DTYPES))]
    device = check_device("device", device)
    if isinstance(inputs, str):
        check_choice("inputs", inputs, INPUTS)
    if record_layers is None:
        rec = np.arange(L + 1)
    else:
        rec = np.unique(np.asarray([check_int("record_layers", r, minimum=0, maximum=L) for r in record_layers],
                                   dtype=int))
        if rec.size == 0:
            raise NormfieldError("record_layers must name at least one layer in [0, depth]", argument="record_layers")
    itemsize = 8 if dt == torch.float64 else 4
    check_memory("recorded Gram matrices", S * rec.size * n * n * 8.0,
                 hint="record fewer layers (record_layers=...) or fewer seeds")
    per_seed = d * n
    chunk = max(1, min(S, _CHUNK_ELEMENTS // max(per_seed, 1)))
    state_bytes = 6.0 * chunk * per_seed * itemsize
    if engine == "explicit":
        check_memory("explicit engine (one d×d weight matrix W_l)", float(d) * d * itemsize + state_bytes,
                     hint="use engine='fast' (--engine fast): exact in law with O(d·n) memory")
    else:
        check_memory("fast engine state (seeds × d × n)", state_bytes, hint="lower width or use dtype float32")
    gens = _sources(seed, S, device)
    user_h0 = None
    if not isinstance(inputs, str):
        user_h0 = _make_inputs(inputs, S, d, n, gens, dt, device, degeneracy)
        _check_h0(user_h0, norm, eps)

    grams = np.empty((S, rec.size, n, n))
    svals = np.empty((S, rec.size, n)) if singular_values else None
    rec_pos = {int(r): i for i, r in enumerate(rec)}
    sqrt_d = math.sqrt(d)

    from tqdm.auto import tqdm

    for start in range(0, S, chunk):
        sl = slice(start, min(S, start + chunk))
        g_chunk = gens[sl]
        s = len(g_chunk)
        if isinstance(inputs, str):
            h = _make_inputs(inputs, s, d, n, g_chunk, dt, device, degeneracy)
        else:
            h = user_h0[sl] if user_h0.shape[0] == S else user_h0[:1].expand(s, n, d).clone()
        _check_h0(h, norm, eps)
        centered = False  # h already centred over the batch (BN fast path)
        for layer in tqdm(range(L + 1), desc="chain", disable=not progress, leave=False):
            X = act(_normalize(h, norm, eps, centered=centered))  # (s, n, d)
            G = torch.matmul(X, X.transpose(-1, -2)).div_(d)  # symmetric up to rounding; Cholesky reads one triangle
            if layer in rec_pos:
                i = rec_pos[layer]
                Gn = G.detach().to("cpu", torch.float64).numpy()
                grams[sl, i] = 0.5 * (Gn + Gn.transpose(0, 2, 1))
                if svals is not None:
                    hh = h @ h.transpose(-1, -2)
                    ev = torch.linalg.eigvalsh(0.5 * (hh + hh.transpose(-1, -2)))
                    svals[sl, i] = ev.clamp_min(0).sqrt().flip(-1).to("cpu", torch.float64).numpy()
            if layer == L:
                break
            if engine == "fast":
                # h_{l+1} = Z Cᵀ (d × n) with C Cᵀ = G_l, stored transposed as C Zᵀ
                C = psd_sqrt(G)
                Zt = torch.empty(s, n, d, dtype=dt, device=device)
                for k in range(s):
                    g_chunk[k].fill_(Zt[k])
                # BN only sees M h (M = I − 11ᵀ/n): centre the n×n factor instead of the n×d product,
                # unless the next layer's raw h is recorded (its singular values)
                centered = norm == "bn" and not (svals is not None and (layer + 1) in rec_pos)
                if centered:
                    C = center(C, -2)
                h = C @ Zt
            else:
                # h_{l+1} = W_l X (d × n), stored transposed as Xᵀ W_lᵀ
                hn = torch.empty_like(X)
                W = torch.empty(d, d, dtype=dt, device=device)
                for k in range(s):
                    g_chunk[k].fill_(W)
                    torch.matmul(X[k], W.T, out=hn[k])
                h = hn.div_(sqrt_d)
                centered = False
    if not np.all(np.isfinite(grams)):
        raise NormfieldError(
            "the chain produced NaN/inf (a row of h_l became constant, so batch norm divided by zero, or "
            "the activation overflowed); pass eps > 0 (e.g. eps=1e-5) or use dtype float64",
            argument="eps",
        )
    settings = {
        "activation": act.label, "width": d, "batch": n, "depth": L, "norm": norm, "engine": engine,
        "dtype": dtype, "device": device, "seed": seed if isinstance(seed, int) else "generator",
        "seeds": S, "inputs": inputs if isinstance(inputs, str) else "user", "eps": eps,
    }
    return ChainResult(grams=grams, layers=rec, singular_values=svals, settings=settings)

