"""Inputs as users have them: one batch, or a whole data set of batches.

The rules (:func:`as_batches`):

* **one batch**: a tensor or NumPy array is the model's one positional argument; a tuple is the
  positional arguments of one batch (``model(*batch)``); a dict is its keyword arguments
  (``model(**batch)``, e.g. Hugging Face's ``input_ids`` / ``attention_mask``).
* **a data set**: a list, a ``DataLoader`` or any other iterable that is not one of the above;
  each element is one batch in the same three forms, except that a 2-element tuple or list whose
  second element is a 1-D tensor (integer or float) with the batch size of the first element is an
  ``(inputs, targets)`` pair, as a ``DataLoader`` over ``(x, y)`` gives. A ``batch_inputs=`` callable
  (batch -> tensor, tuple or dict) overrides the rule, and ``targets=`` as a callable picks the
  targets (batch -> tensor).

Floating-point tensors are copied to the analysis dtype and device; integer and boolean tensors
(token ids, masks) only move. The batch size is the leading dimension, the same for every tensor
argument. Within a data set every batch must have the same argument structure and the same shapes
but for the batch dimension.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from normfield.core.jacobian import is_oom
from normfield.core.validation import check_device, check_finite_array, check_int, check_memory
from normfield.errors import NormfieldError

__all__ = ["Batch", "as_batches", "is_single_batch", "resolve_device", "resolve_dtype", "forward_errors"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64, torch.float32: torch.float32,
           torch.float64: torch.float64}


def resolve_device(device: Any, model: nn.Module) -> torch.device:
    """``device``, or the model's (its first parameter or buffer), or the CPU."""
    if device is None:
        for t in list(model.parameters()) + list(model.buffers()):
            return t.device
        return torch.device("cpu")
    return check_device("device", device, as_torch=True)


def resolve_dtype(dtype: Any, model: nn.Module) -> torch.dtype:
    """``dtype`` (float32/float64), or the model's floating dtype (float32 for half precision)."""
    if dtype is None:
        for p in model.parameters():
            if p.is_floating_point():
                return p.dtype if p.dtype in (torch.float32, torch.float64) else torch.float32
        return torch.float64
    if dtype not in _DTYPES:
        raise NormfieldError(f"dtype must be float32 or float64, got {dtype!r}", argument="dtype")
    return _DTYPES[dtype]


@dataclass
class Batch:
    """One batch, ready for ``model(*args, **kwargs)``.

    Attributes:
        args: positional arguments (tensors on the analysis device/dtype, or anything else as given).
        kwargs: keyword arguments.
        size: T, the leading dimension of every tensor argument.
        targets: labels or regression targets, shape (T, ...), or ``None``.
        index: position in the data set (0 for a single batch).
    """

    args: tuple
    kwargs: dict[str, Any] = field(default_factory=dict)
    size: int = 0
    targets: torch.Tensor | None = None
    index: int = 0

    def where(self, single: bool) -> str:
        """``"inputs"`` for a single batch, ``"inputs batch 3"`` in a data set."""
        return "inputs" if single else f"inputs batch {self.index}"

    def shapes(self) -> list[tuple[str, tuple[int, ...] | None]]:
        """(argument, shape without the batch dimension or None for a non-tensor) in call order."""
        items = [(f"argument {i}", a) for i, a in enumerate(self.args)] + list(self.kwargs.items())
        return [(k, tuple(v.shape[1:]) if isinstance(v, torch.Tensor) else None) for k, v in items]


def is_single_batch(data: Any) -> bool:
    """A tensor, an array, a tuple or a dict is one batch; anything else iterable is a data set."""
    return isinstance(data, (torch.Tensor, np.ndarray, tuple, dict))


def _to_tensor(x: Any, dtype: torch.dtype, device: torch.device, where: str) -> Any:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        return x
    if x.dim() < 1 or x.shape[0] < 1:
        raise NormfieldError(f"{where} must have a batch dimension with >= 1 sample, got shape {tuple(x.shape)}",
                             argument="inputs")
    check_memory("inputs", x.numel() * torch.empty((), dtype=dtype).element_size(),
                 hint="pass a smaller batch, e.g. inputs[:256]")
    if x.is_floating_point():
        check_finite_array(where, x)
        return x.to(device=device, dtype=dtype)
    return x.to(device=device)


def _is_pair(elem: Any) -> bool:
    if not (isinstance(elem, (tuple, list)) and len(elem) == 2):
        return False
    x, y = elem
    lead = x if isinstance(x, torch.Tensor) else next((v for v in x.values() if isinstance(v, torch.Tensor)), None) \
        if isinstance(x, dict) else None
    return (isinstance(y, torch.Tensor) and y.dim() == 1 and lead is not None and lead.dim() >= 1
            and int(y.shape[0]) == int(lead.shape[0]))


def _make_batch(elem: Any, index: int, *, single: bool, dtype: torch.dtype, device: torch.device,
                batch_inputs: Callable[[Any], Any] | None, targets: Any) -> Batch:
    where = "inputs" if single else f"inputs batch {index}"
    tgt = None
    if batch_inputs is not None:
        inp = batch_inputs(elem)
    elif not single and _is_pair(elem):
        inp, tgt = elem
    else:
        inp = elem
    if callable(targets):
        tgt = targets(elem)
    elif targets is not None:
        tgt = targets
    if isinstance(inp, dict):
        args, kwargs = (), {str(k): _to_tensor(v, dtype, device, f"{where} [{k!r}]") for k, v in inp.items()}
    elif isinstance(inp, (tuple, list)) and not isinstance(inp, torch.Tensor):
        args, kwargs = tuple(_to_tensor(v, dtype, device, f"{where} argument {i}") for i, v in enumerate(inp)), {}
    else:
        args, kwargs = (_to_tensor(inp, dtype, device, where),), {}
    tensors = [(f"argument {i}", a) for i, a in enumerate(args) if isinstance(a, torch.Tensor)] + [
        (k, v) for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
    if not tensors:
        raise NormfieldError(
            f"inputs must be a tensor, NumPy array, tuple (positional arguments) or dict (keyword arguments) of "
            f"tensors with the batch dimension first, or an iterable of such batches; {where} holds no tensor "
            f"({type(inp).__name__})", argument="inputs")
    sizes = {name: int(t.shape[0]) for name, t in tensors}
    if len(set(sizes.values())) > 1:
        raise NormfieldError(f"{where}: the tensors disagree on the batch size (leading dimension): "
                             + ", ".join(f"{k}: {v}" for k, v in sizes.items()), argument="inputs")
    T = next(iter(sizes.values()))
    if tgt is not None:
        tgt = torch.as_tensor(tgt) if not isinstance(tgt, torch.Tensor) else tgt
        if tgt.dim() < 1 or int(tgt.shape[0]) != T:
            raise NormfieldError(f"targets of {where} must have the batch size {T} first, got shape "
                                 f"{tuple(tgt.shape)}", argument="targets")
        tgt = tgt.to(device=device, dtype=dtype) if tgt.is_floating_point() else tgt.to(device=device)
    return Batch(args, kwargs, T, tgt, index)


def as_batches(data: Any, *, dtype: torch.dtype, device: torch.device,
               batch_inputs: Callable[[Any], Any] | None = None, targets: Any = None,
               max_batches: int | None = None) -> tuple[list[Batch], bool]:
    """The batches of ``data`` (the rules are in the module docstring).

    Returns:
        (batches, single): ``single`` is True when ``data`` was one batch.

    Raises:
        NormfieldError: an empty data set; a batch without a tensor; tensors of one batch that
            disagree on the batch size; batches whose shapes disagree beyond the batch dimension.
    """
    if batch_inputs is not None and not callable(batch_inputs):
        raise NormfieldError("batch_inputs must be a callable batch -> tensor, tuple or dict", argument="batch_inputs")
    if max_batches is not None:
        max_batches = check_int("max_batches", max_batches, minimum=1)
    single = is_single_batch(data)
    if single:
        elems: Iterator[Any] = iter([data])
    else:
        if isinstance(data, (str, bytes)) or not hasattr(data, "__iter__"):
            raise NormfieldError(
                f"inputs must be a tensor or NumPy array of shape (batch, ...), a tuple or dict (one batch), or an "
                f"iterable of batches (a list or DataLoader), got {type(data).__name__}", argument="inputs")
        elems = iter(data)
    if targets is not None and not callable(targets) and not single:
        raise NormfieldError("targets: for a data set pass a callable batch -> targets, or (inputs, targets) "
                             "pairs in the loader", argument="targets")
    out = [_make_batch(e, i, single=single, dtype=dtype, device=device, batch_inputs=batch_inputs,
                       targets=targets) for i, e in enumerate(itertools.islice(elems, max_batches))]
    if not out:
        raise NormfieldError("inputs: the data set is empty (no batch); pass a non-empty list or DataLoader",
                             argument="inputs")
    ref = out[0].shapes()
    for b in out[1:]:
        got = b.shapes()
        if [k for k, _ in got] != [k for k, _ in ref] or got != ref:
            diff = next(((k, s, r) for (k, s), (_, r) in zip(got, ref) if s != r), None) if len(got) == len(ref) \
                else None
            detail = (f"{diff[0]} has shape (T, {', '.join(map(str, diff[1] or ()))}) but batch 0 has "
                      f"(T, {', '.join(map(str, diff[2] or ()))})") if diff else \
                f"arguments {[k for k, _ in got]} against batch 0's {[k for k, _ in ref]}"
            raise NormfieldError(f"inputs batch {b.index}: its shapes disagree with batch 0 beyond the batch "
                                 f"dimension: {detail}; pad or crop every batch to the same shape",
                                 argument="inputs")
    return out, single


@contextlib.contextmanager
def forward_errors(where: str, shape_text: str, T: int) -> Iterator[None]:
    """Turn a failing forward pass into a :class:`NormfieldError` naming the batch."""
    try:
        yield
    except NormfieldError:
        raise
    except Exception as e:  # noqa: BLE001
        if is_oom(e):
            raise NormfieldError(f"{where}: the forward pass on a batch of {T} does not fit in memory; pass a "
                                 "smaller batch (inputs[:n]) or dtype='float32'", argument="inputs") from None
        if isinstance(e, (RuntimeError, TypeError, ValueError, IndexError)):
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise NormfieldError(
                f"{where}: model(inputs) failed for inputs of shape {shape_text} ({type(e).__name__}: {msg}); "
                "check the input shape and layout the model expects", argument="inputs") from e
        raise


def shape_text(batch: Batch) -> str:
    """The shapes of a batch's tensor arguments, for messages."""
    parts = [str(tuple(a.shape)) for a in batch.args if isinstance(a, torch.Tensor)] + [
        f"{k}={tuple(v.shape)}" for k, v in batch.kwargs.items() if isinstance(v, torch.Tensor)]
    return parts[0] if len(parts) == 1 and not batch.kwargs else "(" + ", ".join(parts) + ")"
