"""Sweeps of independent cells: in this process, a process pool or Dask, with a results cache.

``run_sweep(fn, cells, name=...)`` runs a module-level ``fn(cell) -> rows`` over
independent cells and returns one tidy DataFrame; ``cache_dir`` makes finished
cells survive interruption (SQLite store, :mod:`normfield.runner.cache`);
``workers=N`` uses a local process pool, ``executor="auto"`` a pool sized to the
usable CPUs when the work repays it, ``dask_local=N`` a Dask LocalCluster and
``scheduler="tcp://HOST:PORT"`` an existing Dask cluster
(:mod:`normfield.runner.executors`).
"""

from normfield.runner.cache import ResultCache
from normfield.runner.sweep import run_sweep, shutdown_executors

__all__ = ["run_sweep", "ResultCache", "shutdown_executors"]
