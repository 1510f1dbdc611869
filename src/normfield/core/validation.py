"""Shared argument validation: every check raises :class:`NormfieldError`
naming the argument and the accepted range, never a NaN later on."""

from __future__ import annotations

import math
import re
from typing import Any, Iterable

import numpy as np

from normfield.errors import NormfieldError

__all__ = [
    "check_int",
    "check_float",
    "check_choice",
    "check_finite_array",
    "check_psd",
    "check_memory",
    "check_batch_for_norm",
    "check_device",
]

#: Default cap on a single allocation, in bytes (overridable by env NORMFIELD_MAX_BYTES).
def _max_bytes() -> int:
    import os

    return int(float(os.environ.get("NORMFIELD_MAX_BYTES", 8 * 2**30)))


def check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` as an int, or raise naming ``name`` and the accepted range."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise NormfieldError(f"{name} must be an integer, got {value!r}", argument=name)
    value = int(value)
    if minimum is not None and value < minimum:
        rng = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise NormfieldError(f"{name} must be {rng}, got {value}", argument=name)
    if maximum is not None and value > maximum:
        rng = f"<= {maximum}" if minimum is None else f"in [{minimum}, {maximum}]"
        raise NormfieldError(f"{name} must be {rng}, got {value}", argument=name)
    return value


def check_float(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict_min: bool = False,
) -> float:
    """Return ``value`` as a finite float, or raise naming ``name`` and the range."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise NormfieldError(f"{name} must be a real number, got {value!r}", argument=name) from None
    if not math.isfinite(v):
        raise NormfieldError(f"{name} must be finite, got {value!r}", argument=name)
    if minimum is not None and (v < minimum or (strict_min and v == minimum)):
        op = ">" if strict_min else ">="
        raise NormfieldError(f"{name} must be {op} {minimum}, got {v}", argument=name)
    if maximum is not None and v > maximum:
        raise NormfieldError(f"{name} must be <= {maximum}, got {v}", argument=name)
    return v


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise listing them."""
    choices = list(choices)
    if value not in choices:
        raise NormfieldError(
            f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}", argument=name
        )
    return value


def check_finite_array(name: str, x: Any) -> None:
    """Raise if the array/tensor ``x`` holds NaN or inf, saying where."""
    try:
        import torch

        if isinstance(x, torch.Tensor):
            bad = ~torch.isfinite(x)
            if bool(bad.any()):
                idx = tuple(int(i) for i in torch.nonzero(bad)[0])
                raise NormfieldError(
                    f"{name} contains NaN or inf (first at index {idx}); pass finite values",
                    argument=name,
                )
            return
    except ImportError:  # pragma: no cover
        pass
    arr = np.asarray(x, dtype=float)
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise NormfieldError(
            f"{name} contains NaN or inf (first at index {idx}); pass finite values", argument=name
        )


def check_psd(name: str, G: Any, *, rtol: float = 1e-10) -> np.ndarray:
    """Return ``G`` as a float64 symmetric PSD matrix, or raise.

    Accepts a square matrix that is symmetric to ``rtol`` and whose smallest
    eigenvalue is >= -rtol * max|eigenvalue|.
    """
    G = np.asarray(G, dtype=np.float64)
    if G.ndim != 2 or G.shape[0] != G.shape[1]:
        raise NormfieldError(f"{name} must be a square matrix, got shape {G.shape}", argument=name)
    check_finite_array(name, G)
    scale = max(float(np.abs(G).max()), 1e-300)
    if not np.allclose(G, G.T, atol=rtol * scale, rtol=0):
        raise NormfieldError(f"{name} must be symmetric", argument=name)
    G = 0.5 * (G + G.T)
    ev = np.linalg.eigvalsh(G)
    if ev[0] < -rtol * max(abs(ev[-1]), 1e-300) * G.shape[0]:
        raise NormfieldError(
            f"{name} must be positive semi-definite; its smallest eigenvalue is {ev[0]:.3g}",
            argument=name,
        )
    return G


def check_memory(name: str, nbytes: float, *, hint: str = "") -> None:
    """Refuse, before allocating, anything larger than the allocation cap."""
    cap = _max_bytes()
    if nbytes > cap:
        msg = (
            f"{name}: this would allocate {nbytes / 2**30:.1f} GiB, over the "
            f"{cap / 2**30:.1f} GiB limit (set NORMFIELD_MAX_BYTES to raise it)"
        )
        if hint:
            msg += f"; {hint}"
        raise NormfieldError(msg, argument=name)


def check_batch_for_norm(name: str, n: Any, norm: str) -> int:
    """Batch statistics need at least two samples."""
    n = check_int(name, n, minimum=1)
    if norm not in ("none", "identity") and n < 2:
        raise NormfieldError(
            f"{name} must be >= 2 under {norm} normalization (batch statistics of one "
            f"sample are degenerate), got {n}",
            argument=name,
        )
    return n


def check_device(name: str, value: Any, *, as_torch: bool = False, check_available: bool = True) -> Any:
    """Return the device ``value`` (``"cpu"``, ``"cuda"`` or ``"cuda:N"``), or raise naming ``name``.

    Args:
        name: the argument named in the error, e.g. ``"device"`` or ``"--device"``.
        value: a device string or a :class:`torch.device`.
        as_torch: return a :class:`torch.device` instead of the string.
        check_available: refuse ``cuda`` when this process sees no CUDA device (off where the
            device is checked on behalf of remote workers).

    Raises:
        NormfieldError: ``value`` is not cpu or cuda, or cuda is asked for but not available.
    """
    text = value
    if not isinstance(value, str):
        import torch

        text = str(value) if isinstance(value, torch.device) else None
    if text is None or not (text == "cpu" or re.fullmatch(r"cuda(:\d+)?", text)):
        raise NormfieldError(f"{name} must be cpu or cuda (or cuda:N), got {value!r}", argument=name)
    if check_available and text != "cpu":
        import torch

        if not torch.cuda.is_available():
            use = f"{name} cpu" if name.startswith("-") else f"{name}='cpu'"
            raise NormfieldError(f"{name} cuda asked for, but no CUDA device is available; use {use}",
                                 argument=name)
    if as_torch:
        import torch

        return torch.device(text)
    return text
