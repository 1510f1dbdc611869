"""BLAS thread limits: a cached threadpoolctl controller and a context manager.

Small dense kernels (T×T matrices, T ≲ 100) run fastest on one BLAS thread: a second thread only
adds synchronisation, and under load it can be several times slower. The sweep runner pins the
threads of every cell with the same controller.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator

__all__ = ["blas_controller", "blas_threads"]

_CONTROLLER: list = [None, -1]  # threadpoolctl controller, len(sys.modules) when it was built


def blas_controller() -> Any:
    """A cached threadpoolctl controller, rebuilt when new modules (maybe new BLAS) were imported;
    ``None`` without threadpoolctl."""
    if _CONTROLLER[1] != len(sys.modules):
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - a declared dependency
            _CONTROLLER[:] = [None, len(sys.modules)]
        else:
            _CONTROLLER[:] = [ThreadpoolController(), len(sys.modules)]
    return _CONTROLLER[0]


@contextlib.contextmanager
def blas_threads(threads: int) -> Iterator[None]:
    """Limit the BLAS libraries to ``threads`` threads inside the block (restored after)."""
    ctl = blas_controller()
    if ctl is None:  # pragma: no cover
        yield
        return
    with ctl.limit(limits=int(threads), user_api="blas"):
        yield
