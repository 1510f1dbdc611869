"""Sweeps of independent cells: local (default), a process pool or Dask, with a results cache.

``run_sweep(fn, cells, name=...)`` runs a module-level ``fn(cell) -> rows`` over
independent cells and returns one tidy DataFrame; ``cache_dir`` makes finished
cells survive interruption (SQLite store, :mod:`normfield.runner.cache`);
``workers=N`` uses a local process pool, ``dask_local=N`` a Dask LocalCluster and
``scheduler="tcp://HOST:PORT"`` an existing Dask cluster.
"""

from normfield.runner.cache import ResultCache
from normfield.runner.sweep import run_sweep, shutdown_executors

__all__ = ["run_sweep", "ResultCache", "shutdown_executors"]
