"""Random MLPs of Karakida et al. 2019 with every normalization placement.

The network (Karakida, Akaho & Amari 2019, eq. (1)–(3)) is

    u^l = W^l h^{l-1} + b^l,   h^l = φ(u^l)   (l = 1, ..., L-1),   f = u^L,

with ``W^l_ij ~ N(0, σ_w²/M_{l-1})``, ``b^l_i ~ N(0, σ_b²)``, hidden widths
``M_l = α_l M``, input dimension ``M_0 = α_0 M``, ``C`` linear outputs and ``T``
inputs ``x(t) ~ N(0, I)``.  The normalization placements (``none``, ``last-mean``,
``last-bn``, ``middle-bn``, ``layer``; statistics over the full batch, ``γ = 1``,
``β = 0``) are objects of :mod:`normfield.fisher.placements`: the forward pass
applies the placement's hidden and output steps, and the settings are checked by it.

The parameters θ are all ``W^l`` and ``b^l`` (``P = Σ_l M_l (M_{l-1} + 1)``);
``γ`` and ``β`` are fixed hyperparameters, not parameters, as in the paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from normfield.core.activations import Activation, get_activation
from normfield.core.validation import check_choice, check_device, check_float, check_int, check_memory
from normfield.errors import NormfieldError
from normfield.fisher.placements import NORMS, Placement, get_placement

__all__ = ["NORMS", "MLPConfig", "init_mlp", "mlp_forward", "sample_inputs", "make_generator"]

Params = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class MLPConfig:
    """Settings of one random MLP (Karakida et al. 2019, Sec. 2.1).

    Attributes:
        activation: activation name (``"relu"``, ``"tanh"``, ``"leaky_relu:0.2"``, ...)
            or an :class:`~normfield.core.activations.Activation`.
        sw2: weight variance σ_w² (> 0); ``W^l_ij ~ N(0, σ_w²/M_{l-1})`` (eq. 2).
        sb2: bias variance σ_b² (>= 0); ``b^l_i ~ N(0, σ_b²)`` (eq. 2).
        depth: number of weight layers ``L`` (>= 1); ``L − 1`` hidden layers.
        width: base width ``M``.
        alphas: width ratios ``(α_0, ..., α_{L-1})``; ``M_l = round(α_l M)``, ``M_0``
            is the input dimension.  ``None`` means all ones (the paper's Fig. 1).
        outputs: number of linear outputs ``C`` (>= 1).
        samples: number of inputs ``T`` (>= 1; >= 2 for batch statistics).
        norm: one of :data:`NORMS`.
    """

    activation: Any = "relu"
    sw2: float = 2.0
    sb2: float = 0.0
    depth: int = 3
    width: int = 100
    alphas: tuple[float, ...] | None = None
    outputs: int = 1
    samples: int = 100
    norm: str = "none"

    def __post_init__(self) -> None:
        get_activation(self.activation)  # validates the name
        object.__setattr__(self, "sw2", check_float("sw2", self.sw2, minimum=0.0, strict_min=True))
        object.__setattr__(self, "sb2", check_float("sb2", self.sb2, minimum=0.0))
        L = check_int("depth", self.depth, minimum=1)
        object.__setattr__(self, "depth", L)
        object.__setattr__(self, "width", check_int("width", self.width, minimum=1))
        object.__setattr__(self, "outputs", check_int("outputs", self.outputs, minimum=1))
        object.__setattr__(self, "samples", check_int("samples", self.samples, minimum=1))
        check_choice("norm", self.norm, NORMS)
        if self.alphas is None:
            alphas = (1.0,) * L
        else:
            try:
                alphas = tuple(float(a) for a in self.alphas)
            except (TypeError, ValueError):
                raise NormfieldError(
                    f"alphas must be a sequence of {L} positive numbers (α_0..α_{{L-1}}), got {self.alphas!r}",
                    argument="alphas",
                ) from None
            if len(alphas) != L:
                raise NormfieldError(
                    f"alphas must have length depth={L} (α_0 for the input, α_1..α_{{L-1}} for the "
                    f"hidden layers), got {len(alphas)}",
                    argument="alphas",
                )
            for a in alphas:
                check_float("alphas", a, minimum=0.0, strict_min=True)
        object.__setattr__(self, "alphas", alphas)
        for l, m in enumerate(self.widths):
            if m < 1:
                raise NormfieldError(
                    f"width M_{l} = round(α_{l}·M) = {m} must be >= 1; raise width or alphas[{l}]",
                    argument="width",
                )
        self.placement.check(self)

    # -- derived sizes -----------------------------------------------------------------
    @property
    def placement(self) -> Placement:
        """The normalization placement object of :attr:`norm`."""
        return get_placement(self.norm)

    @property
    def act(self) -> Activation:
        """The resolved activation."""
        return get_activation(self.activation)

    @property
    def widths(self) -> tuple[int, ...]:
        """``(M_0, M_1, ..., M_{L-1})``: input dimension and hidden widths."""
        return tuple(max(int(round(a * self.width)), 0) for a in self.alphas)  # type: ignore[union-attr]

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """``(M_0, ..., M_{L-1}, C)``."""
        return (*self.widths, self.outputs)

    @property
    def input_dim(self) -> int:
        return self.widths[0]

    @property
    def parameters(self) -> int:
        """Exact number of parameters ``P = Σ_{l=1}^{L} M_l (M_{l-1} + 1)`` (weights and biases)."""
        s = self.layer_sizes
        return sum(s[l] * (s[l - 1] + 1) for l in range(1, len(s)))

    @property
    def alpha(self) -> float:
        """``α = Σ_{l=1}^{L-1} α_l α_{l-1}`` (Karakida et al. 2019, below eq. (10)); ``P ≈ α M²``."""
        a = self.alphas
        return float(sum(a[l] * a[l - 1] for l in range(1, self.depth)))  # type: ignore[index]

    @property
    def activation_label(self) -> str:
        return self.act.label

    def replace(self, **changes: Any) -> "MLPConfig":
        """A copy with ``changes`` applied (validated again)."""
        d = {f: getattr(self, f) for f in self.__dataclass_fields__}
        d.update(changes)
        if "depth" in changes and "alphas" not in changes:
            d["alphas"] = None
        return MLPConfig(**d)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able settings (activation by label)."""
        return {
            "activation": self.act.label if not isinstance(self.activation, str) else self.activation,
            "sw2": self.sw2, "sb2": self.sb2, "depth": self.depth, "width": self.width,
            "alphas": list(self.alphas), "outputs": self.outputs, "samples": self.samples,  # type: ignore[arg-type]
            "norm": self.norm, "parameters": self.parameters,
        }


def make_generator(seed_or_generator: int | torch.Generator | None) -> torch.Generator:
    """A CPU ``torch.Generator`` from an int seed (or the generator itself)."""
    if isinstance(seed_or_generator, torch.Generator):
        return seed_or_generator
    if seed_or_generator is None:
        raise NormfieldError("seed must be an integer or a torch.Generator (randomness is always seeded)",
                             argument="seed")
    seed = check_int("seed", seed_or_generator, minimum=0)
    return torch.Generator().manual_seed(seed)


def _resolve(dtype: torch.dtype | str, device: str | torch.device) -> tuple[torch.dtype, torch.device]:
    if isinstance(dtype, str):
        check_choice("dtype", dtype, ["float64", "float32"])
        dtype = getattr(torch, dtype)
    if dtype not in (torch.float64, torch.float32):
        raise NormfieldError(f"dtype must be float64 or float32, got {dtype}", argument="dtype")
    return dtype, check_device("device", device, as_torch=True)


def init_mlp(
    config: MLPConfig,
    seed_or_generator: int | torch.Generator = 0,
    dtype: torch.dtype | str = torch.float64,
    device: str | torch.device = "cpu",
) -> Params:
    """Draw the parameters of a random MLP (Karakida et al. 2019, eq. (2)).

    Numbers are drawn on the CPU in float64 from the seeded generator and then
    cast/moved, so one seed gives the same network on every device and dtype.

    Args:
        config: the network settings.
        seed_or_generator: int seed or CPU ``torch.Generator``.
        dtype: ``torch.float64`` (default) or ``torch.float32``.
        device: ``"cpu"`` or ``"cuda"``.

    Returns:
        ``[(W^1, b^1), ..., (W^L, b^L)]`` with ``W^l`` of shape ``(M_l, M_{l-1})``
        and ``b^l`` of shape ``(M_l,)``.
    """
    dtype, dev = _resolve(dtype, device)
    sizes = config.layer_sizes
    check_memory("init_mlp", 16.0 * config.parameters,
                 hint=f"the network has {config.parameters:,} parameters; use a smaller width")
    g = make_generator(seed_or_generator)
    params: Params = []
    for l in range(1, len(sizes)):
        W = torch.randn(sizes[l], sizes[l - 1], generator=g, dtype=torch.float64)
        W.mul_(math.sqrt(config.sw2 / sizes[l - 1]))
        b = torch.randn(sizes[l], generator=g, dtype=torch.float64) * math.sqrt(config.sb2)
        params.append((W.to(device=dev, dtype=dtype), b.to(device=dev, dtype=dtype)))
    return params


def sample_inputs(
    config: MLPConfig,
    seed_or_generator: int | torch.Generator = 0,
    dtype: torch.dtype | str = torch.float64,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """``T`` inputs ``x(t) ~ N(0, I_{M_0})`` (Karakida et al. 2019, eq. (3)); shape ``(T, M_0)``."""
    dtype, dev = _resolve(dtype, device)
    check_memory("sample_inputs", 16.0 * config.samples * config.input_dim,
                 hint="use fewer samples or a smaller input dimension")
    g = make_generator(seed_or_generator)
    X = torch.randn(config.samples, config.input_dim, generator=g, dtype=torch.float64)
    return X.to(device=dev, dtype=dtype)


def check_params(params: Params, X: torch.Tensor, config: MLPConfig) -> None:
    """Shapes of ``params`` and ``X`` against ``config``; raise naming the mismatch."""
    sizes = config.layer_sizes
    if len(params) != config.depth:
        raise NormfieldError(f"params must hold depth={config.depth} (W, b) pairs, got {len(params)}",
                             argument="params")
    for l, (W, b) in enumerate(params, start=1):
        if tuple(W.shape) != (sizes[l], sizes[l - 1]) or tuple(b.shape) != (sizes[l],):
            raise NormfieldError(
                f"params layer {l}: expected W {(sizes[l], sizes[l - 1])} and b {(sizes[l],)}, got "
                f"{tuple(W.shape)} and {tuple(b.shape)}", argument="params")
    if X.ndim != 2 or X.shape[1] != sizes[0]:
        raise NormfieldError(f"X must have shape (T, {sizes[0]}), got {tuple(X.shape)}", argument="X")
    config.placement.check_samples(X.shape[0], "X")


def _forward(
    params: Sequence[tuple[torch.Tensor, torch.Tensor]],
    X: torch.Tensor,
    config: MLPConfig,
    perturb: Sequence[torch.Tensor] | None = None,
    cache: dict | None = None,
    per_sample: bool = False,
) -> torch.Tensor:
    """Forward pass with the placement's steps; ``perturb[l]`` is added to the pre-activation
    ``u^{l+1}`` (for full-batch VJPs with respect to pre-activations).  If ``cache`` is a dict it
    receives ``inputs`` (the ``h^{l-1}`` fed to each layer) and ``uL``.  ``per_sample`` leaves out
    the output step that couples the samples (:meth:`Placement.batch_output`)."""
    act = config.act
    placement = config.placement
    L = len(params)
    h = X
    inputs = []
    for l, (W, b) in enumerate(params, start=1):
        inputs.append(h)
        u = h @ W.T + b
        if perturb is not None:
            u = u + perturb[l - 1]
        if l < L:
            h = act(placement.hidden(u))
        else:
            if cache is not None:
                cache["uL"] = u
            u = placement.per_sample_output(u) if per_sample else placement.output(u)
            if cache is not None:
                cache["inputs"] = inputs
            return u
    raise AssertionError("unreachable")  # pragma: no cover


def mlp_forward(params: Params, X: torch.Tensor, config: MLPConfig) -> torch.Tensor:
    """Outputs ``f(x(t))`` of the (normalized) network for the full batch.

    Args:
        params: from :func:`init_mlp`.
        X: inputs, shape ``(T, M_0)``.
        config: the settings (activation, ``norm``).

    Returns:
        Tensor of shape ``(T, C)``: ``u^L`` (``none``, ``middle-bn``), its mean-subtracted
        (eq. 15) or batch-normalized (eq. 13) version, or its layer norm (eq. 24).
    """
    check_params(params, X, config)
    return _forward(params, X, config)
