"""A small, real cell function for trying the runner (docs, tests, benchmarks).

:func:`mc_kernel_cell` estimates the dual-activation kernel
``E[σ(u)σ(v)]`` for ``(u, v) ~ N(0, [[1, ρ], [ρ, 1]])`` by seeded Monte Carlo —
the building block of the mean-field Gram map (Joudaki et al. 2023, eq. 3) —
and reports the estimate with its standard error. It is module-level, so it
runs in-process, in a process pool and on Dask workers alike.

Instrumentation for resume demos: a cell may carry ``log_dir`` (every call
writes one marker file there, so calls can be counted across processes) and
``sleep`` (seconds to wait before returning, to make a sweep slow enough to
interrupt).
"""

from __future__ import annotations

import math
import os
import time
import uuid
from pathlib import Path

__all__ = ["mc_kernel_cell"]


def mc_kernel_cell(cell: dict) -> list[dict]:
    """Monte Carlo estimate of ``E[σ(u)σ(v)]`` for correlation ``rho``.

    Args:
        cell: settings: ``activation`` (name, default ``"relu"``), ``rho`` in
            [-1, 1], ``samples`` (int >= 2), ``seed``, ``device``, optional
            ``dtype`` (``"float64"``/``"float32"``), ``log_dir``, ``sleep``.

    Returns:
        One row: ``estimate``, ``stderr`` (sample std / sqrt(samples)), ``samples``.
        For ReLU the closed form is ``arccos_kernel(rho) / 2``
        (:func:`normfield.core.kernels.arccos_kernel`).
    """
    import torch

    from normfield.core.activations import get_activation
    from normfield.core.validation import check_choice, check_float, check_int

    if cell.get("log_dir"):
        d = Path(cell["log_dir"])
        d.mkdir(parents=True, exist_ok=True)
        tag = f"{cell.get('rho')}_{cell.get('seed')}".replace("/", "_")
        (d / f"call_{tag}_{os.getpid()}_{uuid.uuid4().hex[:8]}").touch()
    rho = check_float("rho", cell.get("rho", 0.5), minimum=-1.0, maximum=1.0)
    n = check_int("samples", cell.get("samples", 10_000), minimum=2, maximum=10**8)
    seed = check_int("seed", cell.get("seed", 0), minimum=0)
    dtype = {"float64": torch.float64, "float32": torch.float32}[
        check_choice("dtype", cell.get("dtype", "float64"), ["float64", "float32"])
    ]
    act = get_activation(cell.get("activation", "relu"))
    g = torch.Generator(device=cell.get("device", "cpu")).manual_seed(seed)
    z = torch.randn(2, n, generator=g, dtype=dtype, device=cell.get("device", "cpu"))
    u = z[0]
    v = rho * z[0] + math.sqrt(max(0.0, 1.0 - rho * rho)) * z[1]
    prod = act(u) * act(v)
    est = float(prod.mean())
    se = float(prod.std() / math.sqrt(n))
    if cell.get("sleep"):
        time.sleep(float(cell["sleep"]))
    return [{"estimate": est, "stderr": se, "samples": n}]
