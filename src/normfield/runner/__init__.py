"""Sweeps of independent cells: local (default) or Dask, with a results cache."""

from normfield.runner.sweep import run_sweep

__all__ = ["run_sweep"]
