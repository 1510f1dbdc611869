"""The sweep runner: independent cells, in this process, a process pool or Dask, cached.

A sweep is ``fn`` applied to a list of independent *cells* (plain dicts of
JSON-able settings, each with its ``seed``). ``fn`` must be a module-level
function (picklable, for process pools and Dask) returning a list of row dicts
or a DataFrame. The runner concatenates the rows, in cell order, into one tidy
DataFrame, adding the cell's settings as columns. Where the cells run is the
executor's business (:mod:`normfield.runner.executors`).

Results cache (``cache_dir``): every finished cell is committed to a SQLite
store as soon as it arrives (see :mod:`normfield.runner.cache`), so an
interrupted sweep re-run with the same ``cache_dir`` computes only the missing
cells. ``fresh=True`` ignores stored cells (and overwrites them).

The ``"auto"`` executor (the ``normfield`` command's default). Measured on 2
cores: starting a pool of spawned workers costs 2.5-3 s of CPU per worker
(importing torch) and about 6 s of wall time for two workers; a warm pool costs
1-2 ms per cell. Hence:

* one thread per cell pinned (``threads >= 1``), ``device="cpu"``, at least 2
  usable CPUs and at least 2 cells to compute, else the cells run in this process;
* before the pool exists, cells run here one by one; once, from the second cell
  on, the latest cell's time times the cells left, or the time the sweep has
  taken so far, exceeds :data:`POOL_START_S` (the start-up cost of one worker; the
  first cell is not trusted alone, it often pays one-time imports), the pool is
  started in the background and reused by every later sweep;
* while the pool's workers are starting, this process keeps running cells from the
  end of the list and the workers that are ready take them from the front (at most
  two queued per ready worker), so a sweep never waits idle for workers that are
  still starting; once every worker is up, the workers alone run the cells (one
  process per usable CPU: a third process on two CPUs measured slower, not faster,
  on memory-heavy cells).

Results are the same as in-process, bit for bit: every cell runs with the same
pinned thread count wherever it runs, and rows are assembled in cell order.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections import deque
from typing import Any, Callable

import pandas as pd

from normfield.errors import NormfieldError
from normfield.runner.sidebyside import side_by_side, waiting
from normfield.runner.executors import (  # noqa: F401 - re-exported: public names of this module
    _DEFAULT_TIMEOUT_S,
    _FLAG_NAMES,
    EXECUTORS,
    _check_not_bootstrapping,
    _check_options,
    _check_picklable,
    _dask_client,
    _parse_scheduler,
    _pool_started,
    _process_pool,
    _run_cell,
    open_executors,
    prepare_executor,
    shutdown_executors,
)

__all__ = ["run_sweep", "shutdown_executors", "open_executors", "prepare_executor", "EXECUTORS", "POOL_START_S"]

POOL_START_S = 3.0  # serial seconds of work left that repay starting one pool worker (measured, see above)


def _assemble(cells: list[dict], frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate the cells' rows in cell order and add each cell's scalar settings as columns.

    A column returned by ``fn`` wins over a setting of the same name; a setting
    absent from some cells is missing (None/NaN) in their rows; list/dict settings
    are not turned into columns.
    """
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)
    lengths = [len(f) for f in frames]
    keys: list[str] = []
    for c in cells:
        for k, v in c.items():
            if k not in keys and k not in df.columns and not isinstance(v, (list, tuple, dict)):
                keys.append(k)
    if not keys:
        return df
    cols: dict[str, list] = {}
    for k in keys:
        vals: list = []
        for c, n in zip(cells, lengths):
            v = c.get(k)
            vals.extend([None if isinstance(v, (list, tuple, dict)) else v] * n)
        cols[k] = vals
    return pd.concat([df, pd.DataFrame(cols, index=df.index)], axis=1)


def run_sweep(
    fn: Callable[[dict], Any],
    cells: list[dict],
    *,
    name: str,
    progress: bool = True,
    device: str = "cpu",
    cache_dir: str | os.PathLike | None = None,
    fresh: bool = False,
    executor: str | None = None,
    scheduler: str | None = None,
    dask_local: int | None = None,
    workers: int | None = None,
    threads: int = 1,
    timeout: float = _DEFAULT_TIMEOUT_S,
) -> pd.DataFrame:
    """Run ``fn(cell)`` for every cell and return one tidy DataFrame.

    Args:
        fn: module-level function ``cell -> rows`` (DataFrame, dict or list of dicts).
        cells: independent settings dicts (JSON-serialisable, finite values), each
            with its ``seed``.
        name: the sweep's name (label of the progress bar and of cached cells).
        progress: report progress on stderr (all executors): a bar on a terminal, a plain
            line every 30 s otherwise (:mod:`normfield.runner.progress`).
        device: ``"cpu"`` or ``"cuda[:N]"``; passed to each cell as ``cell["device"]``
            unless the cell sets it. Never required: CUDA is refused with a clear
            error when absent.
        cache_dir: directory of the results cache (``None``: no cache). Each finished
            cell is committed atomically; re-running computes only missing cells.
        fresh: ignore cached cells (recompute and overwrite them).
        executor: ``"local"``, ``"process"``, ``"auto"`` or ``"dask"``; default inferred:
            ``"dask"`` when ``scheduler`` or ``dask_local`` is given, ``"process"`` when
            ``workers > 1``, ``"local"`` when ``workers == 1``, else ``"local"`` (the
            ``normfield`` command makes that ``"auto"``: a pool sized to the usable CPUs,
            used when the work repays its start-up; see the module docstring).
        scheduler: address ``tcp://HOST:PORT`` of a running Dask scheduler.
        dask_local: start (once per process) a Dask LocalCluster of this many workers.
        workers: size of the local process pool (default: the CPUs this process may
            use, :func:`normfield.runner.cpus.available_cpus`). Pool and
            LocalCluster workers are *spawned*: they import your main script again,
            so a script that calls ``run_sweep`` with ``workers``/``dask_local`` must
            keep its top-level code under ``if __name__ == "__main__":``.
        threads: torch/BLAS threads per cell (default 1 everywhere, which makes the
            numbers bit-identical across executors; 0 leaves the thread settings
            alone, faster in-process but only reproducible on the same executor).
        timeout: seconds to wait for a Dask scheduler before refusing.

    Returns:
        One row per row returned by ``fn``, cells in input order, with each cell's
        scalar settings added as columns. ``df.attrs["sweep"]`` holds the run's
        bookkeeping (cells, cached, computed, executor, wall time).

    Raises:
        NormfieldError: bad options (naming the flag), an unreachable scheduler
            (within ``timeout`` seconds), or a cell's own ``NormfieldError``. Cells
            finished before an error stay cached.
    """
    from normfield._version import __version__
    from normfield.runner.cache import ResultCache, canonical_json, cell_key, fn_identity

    t0 = time.perf_counter()
    if not callable(fn):
        raise NormfieldError(f"fn must be a callable cell -> rows, got {type(fn).__name__}", argument="fn")
    if not isinstance(name, str) or not name.strip():
        raise NormfieldError(f"name must be a non-empty string, got {name!r}", argument="name")
    if isinstance(cells, (str, bytes, dict)) or not hasattr(cells, "__iter__"):
        raise NormfieldError(f"cells must be a list of settings dicts, got {type(cells).__name__}",
                             argument="cells")
    cells = list(cells)
    for i, c in enumerate(cells):
        if not isinstance(c, dict):
            raise NormfieldError(f"cells[{i}] must be a dict of settings, got {type(c).__name__}",
                                 argument="cells")
    ex, threads, timeout, device = _check_options(executor, scheduler, dask_local, workers, threads, timeout,
                                                  device, threads_name="threads")
    full = []
    for c in cells:
        c = dict(c)
        c.setdefault("device", device)
        canonical_json(c)  # refuse non-JSON / non-finite settings now
        full.append(c)
    if ex in ("process", "dask"):
        _check_picklable(fn, ex)
    if ex in ("process", "auto") or dask_local is not None:
        _check_not_bootstrapping(ex)

    ident = fn_identity(fn)
    # threads join the key: they change the last bits of the numbers (0 = unpinned).
    keys = [cell_key(ident, {**c, "__threads__": threads}, __version__) for c in full]
    cache = ResultCache(cache_dir) if cache_dir is not None else None
    results: dict[int, pd.DataFrame] = {}
    n_cached = 0
    if cache is not None and not fresh:
        hit = cache.get_many(set(keys))
        for i, k in enumerate(keys):
            if k in hit:
                results[i] = hit[k]
        n_cached = len(results)
    todo = [i for i in range(len(full)) if i not in results]

    def store(i: int, df: pd.DataFrame) -> None:
        results[i] = df
        if cache is not None:
            cache.put(keys[i], sweep=name, fn=ident["fn"], cell=full[i], version=__version__, df=df)

    from normfield.runner.progress import make_progress

    bar = make_progress(len(full), n_cached, name, progress)
    try:
        if todo:
            if ex == "auto":
                _run_auto(fn, full, todo, threads, device, store, bar, cached=cache is not None)
            elif ex == "local":
                _run_local(fn, full, todo, threads, store, bar)
            elif ex == "process":
                _run_process(fn, full, todo, threads, workers, store, bar, cached=cache is not None)
            else:
                client = _dask_client(scheduler, dask_local, threads, timeout)
                _run_dask(client, fn, full, todo, keys, name, threads, store, bar)
    finally:
        bar.close()
        if cache is not None:
            cache.close()

    df = _assemble(full, [results[i] for i in range(len(full))])
    df.attrs["sweep"] = {
        "name": name,
        "cells": len(full),
        "cached": n_cached,
        "computed": len(todo),
        "executor": ex,
        "threads": threads,
        "seeds": sorted({c["seed"] for c in full if isinstance(c.get("seed"), int)}),
        "wall_time_s": time.perf_counter() - t0,
    }
    return df


def pool_died_error(pool: Any, *, executor: str, workers: int | None, cached: bool) -> NormfieldError:
    """The one error raised when a process pool breaks, in the caller's terms.

    Args:
        pool: the broken :class:`~normfield.runner.executors.LocalPool`; its workers' exit status tells
            a main script that is not import-safe (workers are spawned and re-run it) from a killed worker.
        executor: ``"process"`` or ``"auto"``; names the argument in a Python caller's terms.
        workers: the ``workers`` argument given (``None``: the default size).
        cached: whether a results cache is in use (only then are finished cells said to be kept).
    """
    import sys

    flags = _FLAG_NAMES[0]
    if flags:
        arg, serial = "--workers", "--workers 1"
    else:
        arg = f"workers={workers}" if executor == "process" and workers is not None else f"executor={executor!r}"
        serial = "workers=1"
    kept = "; the cells finished so far are cached" if cached else ""
    if getattr(pool, "unsafe_main", lambda: False)():
        script = getattr(sys.modules.get("__main__"), "__file__", None)
        what = f"your main script ({script})" if script else "your main module"
        return NormfieldError(
            f"{arg}: the pool's worker processes are spawned and re-run {what}, whose top-level code starts "
            f"a pool again; put that code under `if __name__ == \"__main__\":`, or pass {serial} to run "
            f"the cells in this process{kept}",
            argument=arg,
        )
    return NormfieldError(
        f"{arg}: a pool process died (killed or out of memory){kept}; pass {serial} to run every cell in "
        "this process",
        argument=arg,
    )


def _run_local(fn, full, todo, threads, store, bar) -> None:
    for i in todo:
        store(i, _run_cell(fn, full[i], threads))
        bar.update(1)


def _auto_pool_size(fn: Callable[..., Any], threads: int, device: str) -> int:
    """Workers the auto executor may use for this sweep (0: run it in this process)."""
    import multiprocessing as mp
    import pickle

    from normfield.runner.cpus import available_cpus

    if threads <= 0 or device != "cpu" or getattr(mp.current_process(), "_inheriting", False):
        return 0  # unpinned threads or a GPU: one process; a worker still starting: never nest pools
    n = available_cpus()
    if n < 2:
        return 0
    try:
        pickle.dumps(fn)
    except Exception:  # noqa: BLE001 - a closure or lambda cannot be shipped: run it here
        return 0
    return n


def _run_auto(fn, full, todo, threads, device, store, bar, *, cached: bool) -> None:
    """In this process until the work repays a pool, then this process and the pool side by side."""
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    shared = side_by_side()  # other tasks' code runs while this one waits: every cell goes to the pool
    n = _auto_pool_size(fn, threads, device) if len(todo) >= (1 if shared else 2) else 0
    pending = deque(todo)
    pool = _pool_started(n, threads) if n else None
    if pool is None and n and shared:
        pool = _process_pool(n, threads, start=True)
    if pool is None:
        start = time.perf_counter()
        done = 0
        while pending:
            i = pending.popleft()
            t0 = time.perf_counter()
            store(i, _run_cell(fn, full[i], threads))
            bar.update(1)
            now = time.perf_counter()
            done += 1
            # from the second cell on (the first one often pays one-time imports): the latest cell times
            # the cells left (grids often grow in size along the list), or the time this sweep has already
            # taken, is the serial work a pool would share
            if n and pending and done >= 2 and max((now - t0) * len(pending), now - start) > POOL_START_S:
                pool = _process_pool(n, threads, start=True)
                break
        if not pending:
            return
    futs: dict[Any, int] = {}
    try:
        while pending or futs:
            ready = pool.ready()
            while pending and len(futs) < 2 * ready:
                i = pending.popleft()
                futs[pool.submit(_run_cell, fn, full[i], threads, True)] = i
            finished = [f for f in futs if f.done()]
            for f in finished:  # keep every finished cell before reporting a failure
                if f.exception() is None:
                    store(futs.pop(f), f.result())
                    bar.update(1)
            failed = [f for f in finished if f in futs]
            if failed:
                failed[0].result()  # re-raises the cell's exception
            if pending and ready < pool.n:  # while workers start, this process takes cells from the end
                i = pending.pop()
                store(i, _run_cell(fn, full[i], threads))
                bar.update(1)
            elif futs and not finished:
                with waiting():
                    wait(list(futs), timeout=None if ready == pool.n else 0.05, return_when=FIRST_COMPLETED)
    except BrokenProcessPool:
        raise pool_died_error(pool, executor="auto", workers=None, cached=cached) from None
    except BaseException:
        for f in futs:
            f.cancel()
        raise


def _run_process(fn, full, todo, threads, workers, store, bar, *, cached: bool) -> None:
    from concurrent.futures import FIRST_EXCEPTION, wait

    from concurrent.futures.process import BrokenProcessPool

    pool = _process_pool(workers, threads)
    futs = {pool.submit(_run_cell, fn, full[i], threads, True): i for i in todo}
    pending = set(futs)
    try:
        while pending:
            with waiting():
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None]
            for f in done:  # keep every finished cell before reporting a failure
                if f.exception() is None:
                    store(futs[f], f.result())
                    bar.update(1)
            if failed:
                failed[0].result()  # re-raises the cell's exception
    except BrokenProcessPool:
        raise pool_died_error(pool, executor="process", workers=workers, cached=cached) from None
    except BaseException:
        for f in pending:
            f.cancel()
        raise


def _run_dask(client, fn, full, todo, keys, name, threads, store, bar) -> None:
    from distributed import as_completed

    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    futs = {}
    for i in todo:
        # a fresh token per submission: a re-run never aliases a still-held earlier future
        f = client.submit(_run_cell, fn, full[i], threads, True,
                          key=f"normfield-{safe}-{i}-{keys[i][:12]}-{uuid.uuid4().hex[:8]}", pure=False)
        futs[f] = i
    try:
        done = as_completed(list(futs))
        while True:
            with waiting():
                f = next(done, None)
            if f is None:
                break
            store(futs[f], f.result())
            bar.update(1)
    except BaseException:
        client.cancel(list(futs))
        raise
