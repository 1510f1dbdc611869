"""Plain JSON from the package's results: numpy, pandas, paths and dataclasses with ``to_dict``.

Strict JSON has no ``inf`` or ``nan``: non-finite floats become the strings ``"inf"``,
``"-inf"``, ``"nan"``, so every ``--json`` output and results.json parse anywhere.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["jsonable"]


def jsonable(x: Any) -> Any:
    """Convert numpy/pandas/paths to plain JSON; non-finite floats become strings."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else str(v)
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "to_dict") and callable(x.to_dict):
        try:
            return jsonable(x.to_dict())
        except Exception:  # noqa: BLE001 - fall through to str
            pass
    if x is None or isinstance(x, (str, int)):
        return x
    return str(x)
