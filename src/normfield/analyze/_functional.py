"""A PyTorch module as a pure function of its parameters, over the whole batch.

The diagnostics of :mod:`normfield.analyze` differentiate the model's output on
the *whole* batch at once (so train-mode batch-norm couplings between samples
are exact) with :mod:`torch.func`, without touching the model:

* parameters and buffers are passed to :func:`torch.func.functional_call` as
  copies (cast to the analysis dtype/device), so nothing is written into the
  model's own tensors;
* batch-norm layers in training mode are switched, for the duration of the
  call only, to ``track_running_stats=False``: their output is identical (batch
  statistics are used either way) but running statistics and
  ``num_batches_tracked`` are not updated;
* the train/eval flag of every sub-module is saved and restored in a
  ``finally`` block, and no ``.grad`` is ever written (``torch.func`` returns
  gradients instead of accumulating them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from normfield.errors import NormfieldError

__all__ = ["ModelFunction", "model_state_guard", "select_parameters", "pick_output", "Whiten"]

_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


@contextlib.contextmanager
def model_state_guard(model: nn.Module, mode: str = "as-is") -> Iterator[nn.Module]:
    """Run code on ``model`` and give it back exactly as it was.

    Args:
        model: the module.
        mode: ``"as-is"`` (keep each sub-module's train/eval flag), ``"train"``
            or ``"eval"`` (set for the duration of the block).

    Yields:
        the same module, with train-mode batch norms not tracking statistics.
    """
    flags = [(m, m.training) for m in model.modules()]
    tracked = [(m, m.track_running_stats) for m in model.modules() if isinstance(m, _BN_TYPES)]
    try:
        if mode == "train":
            model.train()
        elif mode == "eval":
            model.eval()
        for m, _ in tracked:
            if m.training:
                # identical output (batch statistics), no running-stat update
                m.track_running_stats = False
        yield model
    finally:
        for m, t in tracked:
            m.track_running_stats = t
        for m, f in flags:
            m.training = f


def select_parameters(model: nn.Module, parameters: Sequence[str] | str | None) -> list[str]:
    """Names of the parameters to differentiate.

    Args:
        model: the module.
        parameters: ``None`` (every parameter with ``requires_grad``), or names /
            glob patterns (``"fc.*"``) matched against ``model.named_parameters()``.

    Returns:
        the selected names, in ``named_parameters`` order.

    Raises:
        NormfieldError: nothing selected, or a pattern that matches nothing.
    """
    named = list(model.named_parameters())
    if not named:
        raise NormfieldError("model has no parameters; there is no Fisher/NTK to analyze", argument="model")
    if parameters is None:
        names = [n for n, p in named if p.requires_grad]
        if not names:
            raise NormfieldError(
                "parameters: no parameter of the model requires grad; call "
                "p.requires_grad_(True) on the ones to analyze, or name them with parameters=[...]",
                argument="parameters",
            )
        return names
    if isinstance(parameters, str):
        parameters = [parameters]
    all_names = [n for n, _ in named]
    chosen: list[str] = []
    for pat in parameters:
        hits = [n for n in all_names if n == pat or fnmatch.fnmatchcase(n, pat)]
        if not hits:
            raise NormfieldError(
                f"parameters: {pat!r} matches no parameter; known names: {', '.join(all_names[:20])}"
                + (" ..." if len(all_names) > 20 else ""),
                argument="parameters",
            )
        chosen.extend(h for h in hits if h not in chosen)
    return [n for n in all_names if n in chosen]


OutputsArg = Callable[[Any], torch.Tensor] | Sequence[int] | str | None


def _fields(out: Any) -> dict[str, Any] | None:
    if isinstance(out, Mapping):
        return dict(out)
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        return {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}
    return None


def _output_field(out: Any, key: str) -> Any:
    fields = _fields(out)
    if fields is None or key not in fields:
        known = ", ".join(map(str, fields)) if fields else type(out).__name__
        raise NormfieldError(f"outputs: the model output has no field {key!r} (it has: {known})",
                             argument="outputs")
    return fields[key]


def pick_output(out: Any) -> torch.Tensor:
    """The tensor to analyze in a model output.

    A tensor is itself; a tuple or list gives its first element (the PyTorch
    convention of ``nn.LSTM``, ``nn.GRU``, ``nn.MultiheadAttention``: the
    per-sample output first); a dict or dataclass gives its ``logits`` field,
    or its only floating-point tensor. Anything else is refused with the
    fields it has and how to choose (``outputs="name"`` or a callable).
    """
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    fields = _fields(out)
    if fields is not None:
        if isinstance(fields.get("logits"), torch.Tensor):
            return fields["logits"]
        tensors = [k for k, v in fields.items() if isinstance(v, torch.Tensor) and v.is_floating_point()]
        if len(tensors) == 1:
            return fields[tensors[0]]
        raise NormfieldError(
            f"outputs: the model returns {type(out).__name__} with fields {', '.join(map(str, fields))}; "
            "choose one with outputs='name' or outputs=lambda out: ...", argument="outputs")
    raise NormfieldError(
        f"model output must be a tensor of shape (batch, ...), got {type(out).__name__}; "
        "pass outputs=lambda out: out[...] selecting the tensor to analyze", argument="outputs")


@dataclass
class ModelFunction:
    """``theta -> f(theta)``: the model's outputs on a fixed batch, flattened.

    The model is called as ``model(*args, **kwargs)``: ``inputs`` is the one
    positional argument (a tensor of shape (T, ...)) or a tuple of positional
    arguments, ``kwargs`` the keyword arguments (e.g. ``input_ids`` and
    ``attention_mask``). The output (after ``outputs`` selection) must be a
    tensor of shape (T, ...); it is flattened to (T, C) and then to (T·C,) in
    sample-major order (index ``t * C + k``).

    Attributes:
        model: the module (not modified).
        inputs: the batch, shape (T, ...), already on the analysis device/dtype, or a tuple of
            positional arguments.
        names: differentiated parameter names.
        theta: their values (detached copies), name -> tensor.
        frozen: every other parameter and buffer (detached copies).
        outputs: ``None`` (see :func:`pick_output`), a callable applied to the
            model's output, a field name of a dict/dataclass output, or a
            sequence of output indices (columns of the (T, C) output).
        center: subtract the batch mean of every output (Karakida et al. 2019,
            eq. 15: last-layer mean subtraction f̄ = u_L − E[u_L]).
        kwargs: keyword arguments of the model call (tensors with the batch dimension first).
        transform: applied to the (T, C) output after centering (e.g. :class:`Whiten`, the
            loss factor of the cross-entropy Fisher); ``None``: none.
    """

    model: nn.Module
    inputs: Any
    names: list[str]
    theta: dict[str, torch.Tensor]
    frozen: dict[str, torch.Tensor]
    outputs: OutputsArg = None
    center: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    @classmethod
    def build(
        cls,
        model: nn.Module,
        inputs: Any,
        names: list[str],
        *,
        dtype: torch.dtype,
        device: torch.device,
        outputs: OutputsArg = None,
        center: bool = False,
        kwargs: dict[str, Any] | None = None,
    ) -> "ModelFunction":
        theta, frozen = {}, {}
        for n, p in model.named_parameters():
            v = p.detach().to(device=device, dtype=dtype if p.is_floating_point() else p.dtype).clone()
            (theta if n in names else frozen)[n] = v
        for n, b in model.named_buffers():
            if b is None:
                continue
            frozen[n] = b.detach().to(device=device, dtype=dtype if b.is_floating_point() else b.dtype).clone()
        return cls(model, inputs, list(names), theta, frozen, outputs, center, dict(kwargs or {}))

    def replace(self, **changes: Any) -> "ModelFunction":
        """A copy with some fields changed (the tensors are shared, not copied)."""
        return dataclasses.replace(self, **changes)

    def with_center(self, center: bool) -> "ModelFunction":
        return self.replace(center=center)

    # -- evaluation ------------------------------------------------------------
    def picked(self, theta: dict[str, torch.Tensor]) -> torch.Tensor:
        """The selected output tensor as the model gives it, shape (T, ...) (the last axis is the class
        axis of a cross-entropy loss, the axes between are positions)."""
        args = self.inputs if isinstance(self.inputs, tuple) else (self.inputs,)
        out = torch.func.functional_call(self.model, {**self.frozen, **theta}, args, self.kwargs)
        if callable(self.outputs):
            out = self.outputs(out)
        elif isinstance(self.outputs, str):
            out = _output_field(out, self.outputs)
        out = pick_output(out)
        if out.dim() == 0:
            raise NormfieldError("model output is a scalar; it must have a batch dimension (T, ...)",
                                 argument="outputs")
        return out

    @property
    def selects_columns(self) -> bool:
        """``outputs`` is a sequence of column indices."""
        return self.outputs is not None and not callable(self.outputs) and not isinstance(self.outputs, str)

    def raw(self, theta: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's output on the batch, shape (T, C) (before centering)."""
        out = self.picked(theta)
        out = out.reshape(out.shape[0], -1)
        if self.selects_columns:
            idx = torch.as_tensor(list(self.outputs), dtype=torch.long, device=out.device)
            out = out.index_select(1, idx)
        return out

    def __call__(self, theta: dict[str, torch.Tensor]) -> torch.Tensor:
        """f(θ) flattened to (T·C,), sample-major, centered if ``center``, then ``transform``-ed."""
        out = self.raw(theta)
        if self.center:
            out = out - out.mean(dim=0, keepdim=True)
        if self.transform is not None:
            out = self.transform(out)
        return out.reshape(-1)

    @property
    def num_parameters(self) -> int:
        return int(sum(v.numel() for v in self.theta.values()))


@dataclass(frozen=True)
class Whiten:
    """The cross-entropy Fisher's loss factor B = (I − s sᵀ) diag(s), s = √p, applied row by row.

    For softmax probabilities p over C classes the Hessian of the cross-entropy with respect to
    the logits is Λ = diag(p) − p pᵀ (independent of the label: the Fisher of the categorical
    likelihood equals the generalised Gauss–Newton matrix, Martens 2020, "New insights and
    perspectives on the natural gradient method", JMLR 21, §9.2). With s = √p (‖s‖ = 1) the matrix
    I − s sᵀ is a projector, so Λ = diag(s)(I − s sᵀ)(I − s sᵀ)diag(s) = BᵀB. Hence, for the
    logits z(θ) and J = ∂z/∂θ, Jᵀ Λ J = (BJ)ᵀ(BJ): the Fisher of the cross-entropy is the
    squared-loss Fisher of the whitened outputs g(θ) = B z(θ), B held fixed at the point.
    B u = s ⊙ u − s (s · (s ⊙ u)) costs O(C) per row; nothing of size C × C is formed.

    Attributes:
        s: √p, shape (T, S, C): T samples, S positions, C classes, held fixed (detached).
    """

    s: torch.Tensor

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        """B z for z of shape (T, S·C) (flattened like ``s``); returns the same shape."""
        z = out.reshape(self.s.shape) * self.s
        return (z - self.s * (self.s * z).sum(-1, keepdim=True)).reshape(out.shape)
