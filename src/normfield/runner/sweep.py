"""The sweep runner: independent cells, local / process pool / Dask, cached.

A sweep is ``fn`` applied to a list of independent *cells* (plain dicts of
JSON-able settings, each with its ``seed``). ``fn`` must be a module-level
function (picklable, for process pools and Dask) returning a list of row dicts
or a DataFrame. The runner concatenates the rows, in cell order, into one tidy
DataFrame, adding the cell's settings as columns.

Executors (one signature for all):

* ``"local"`` (default): in this process, one cell after the other.
* ``"process"``: a pool of ``workers`` spawned processes (default: the number
  of CPU cores), started once and reused by every later sweep of this process.
* ``"dask"``: a Dask ``distributed`` cluster, either an existing scheduler
  (``scheduler="tcp://HOST:PORT"``, e.g. one started by dask-jobqueue on
  Slurm/PBS) or a :class:`distributed.LocalCluster` of ``dask_local`` worker
  processes started here and reused by every later sweep of this process.

Results cache (``cache_dir``): every finished cell is committed to a SQLite
store as soon as it arrives (see :mod:`normfield.runner.cache`), so an
interrupted sweep re-run with the same ``cache_dir`` computes only the missing
cells. ``fresh=True`` ignores stored cells (and overwrites them).

Determinism: each cell runs with ``threads`` torch/BLAS threads (default 1, on
every executor), because multi-threaded BLAS reductions change the last bits of
large products with the thread count. With equal ``threads`` a seeded cell gives
bit-identical numbers in-process, in a pool process and on a Dask worker.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import re
import socket
import time
import uuid
from typing import Any, Callable, Iterator

import pandas as pd

from normfield.errors import NormfieldError

__all__ = ["run_sweep", "shutdown_executors", "open_executors", "prepare_executor", "EXECUTORS"]

EXECUTORS = ("local", "process", "dask")
_DEFAULT_TIMEOUT_S = 5.0
_CLIENTS: dict[tuple, Any] = {}
_SCRATCH: dict[tuple, str] = {}


# -- cell execution (also runs inside pool processes and Dask workers) --------
_CONTROLLER: list = [None, -1]  # threadpoolctl controller, len(sys.modules) when it was built


def _blas_controller() -> Any:
    """A cached threadpoolctl controller, rebuilt when new modules (maybe new BLAS) were imported."""
    import sys

    if _CONTROLLER[1] != len(sys.modules):
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - optional
            _CONTROLLER[:] = [None, len(sys.modules)]
        else:
            _CONTROLLER[:] = [ThreadpoolController(), len(sys.modules)]
    return _CONTROLLER[0]


@contextlib.contextmanager
def _thread_limit(threads: int) -> Iterator[None]:
    """Pin torch intra-op and BLAS threads for one cell, then restore (0: leave as is).

    Costs ~0.02 ms per cell (cached controller), so it is applied to every cell on
    every executor.
    """
    if threads <= 0:
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    ctl = _blas_controller()
    try:
        if ctl is None:  # pragma: no cover
            yield
        else:
            with ctl.limit(limits=threads):
                yield
    finally:
        torch.set_num_threads(old)


def _as_frame(out: Any, fn_name: str) -> pd.DataFrame:
    if isinstance(out, pd.DataFrame):
        return out.reset_index(drop=True)
    if isinstance(out, dict):
        return pd.DataFrame([out])
    if isinstance(out, (list, tuple)) and all(isinstance(r, dict) for r in out):
        return pd.DataFrame(list(out))
    raise NormfieldError(
        f"fn: the cell function {fn_name} must return a DataFrame, a dict or a list of row dicts; "
        f"got {type(out).__name__}",
        argument="fn",
    )


def _pin_worker(threads: int) -> None:
    """Pin threads for good in a worker process (no restore).

    Several cells may run on threads of one Dask worker; torch's thread count is
    process-wide, so a set-then-restore per cell could race. Workers only run
    cells, so pinning once and leaving it is both safe and exact.
    """
    if threads <= 0:
        return
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    ctl = _blas_controller()
    if ctl is not None:
        ctl.limit(limits=threads)  # applied now; not restored


def _run_cell(fn: Callable[[dict], Any], cell: dict, threads: int, worker: bool = False) -> pd.DataFrame:
    """Run one cell with pinned threads; returns its rows as a DataFrame.

    In-process (``worker=False``) the thread settings are restored afterwards;
    in pool/Dask workers they stay pinned (see :func:`_pin_worker`).
    """
    if worker:
        _pin_worker(threads)
        out = fn(dict(cell))
    else:
        with _thread_limit(threads):
            out = fn(dict(cell))
    return _as_frame(out, getattr(fn, "__qualname__", repr(fn)))


def _pool_init(threads: int) -> None:  # pragma: no cover - runs in pool processes
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


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


# -- validation --------------------------------------------------------------
def _resolve_executor(
    executor: str | None, scheduler: str | None, dask_local: int | None, workers: int | None
) -> str:
    from normfield.core.validation import check_choice, check_int

    if scheduler is not None and dask_local is not None:
        raise NormfieldError(
            "--scheduler and --dask-local conflict: connect to an existing scheduler OR start a "
            "local cluster, not both",
            argument="--scheduler/--dask-local",
        )
    if workers is not None:
        check_int("--workers", workers, minimum=1, maximum=4096)
        if scheduler is not None or dask_local is not None:
            other = "--scheduler" if scheduler is not None else "--dask-local"
            raise NormfieldError(
                f"--workers and {other} conflict: --workers sizes the local process pool; the Dask "
                f"cluster's size is set by {other}",
                argument=f"--workers/{other}",
            )
    if dask_local is not None:
        check_int("--dask-local", dask_local, minimum=1, maximum=1024)
    if executor is None:
        if scheduler is not None or dask_local is not None:
            return "dask"
        return "process" if workers is not None and workers > 1 else "local"
    check_choice("executor", executor, EXECUTORS)
    if executor != "dask" and (scheduler is not None or dask_local is not None):
        raise NormfieldError(
            f"executor={executor!r} conflicts with scheduler/dask_local (those select executor='dask')",
            argument="executor",
        )
    if executor == "dask" and scheduler is None and dask_local is None:
        raise NormfieldError("executor='dask' needs scheduler='tcp://HOST:PORT' or dask_local=N",
                             argument="executor")
    return executor


def _check_options(
    executor: str | None,
    scheduler: str | None,
    dask_local: int | None,
    workers: int | None,
    threads: int,
    timeout: float,
    device: str,
    *,
    threads_name: str,
) -> tuple[str, int, float, str]:
    """Validate the executor options shared by :func:`prepare_executor` and :func:`run_sweep`.

    Returns ``(executor, threads, timeout, device)``; CUDA availability is only checked
    here when the cells run in this process or its local workers (not on a scheduler).
    """
    from normfield.core.validation import check_device, check_float, check_int

    threads = check_int(threads_name, threads, minimum=0, maximum=1024)
    timeout = check_float("timeout", timeout, minimum=0.0, strict_min=True)
    ex = _resolve_executor(executor, scheduler, dask_local, workers)
    device = check_device("--device", device, check_available=scheduler is None)
    return ex, threads, timeout, device


def _check_not_bootstrapping(executor: str) -> None:
    """Refuse to start workers from a spawned child that is still importing the main script."""
    import multiprocessing as mp

    if getattr(mp.current_process(), "_inheriting", False):
        flag = "--workers" if executor == "process" else "--dask-local"
        raise NormfieldError(
            f"{flag}: a worker process is re-running your main script while it starts; put the script's "
            "top-level code under `if __name__ == \"__main__\":` (pool and Dask workers are spawned)",
            argument=flag,
        )


def _check_picklable(fn: Callable[..., Any], executor: str) -> None:
    try:
        pickle.dumps(fn)
    except Exception:  # noqa: BLE001 - any pickling failure means the same thing
        raise NormfieldError(
            f"fn: executor {executor!r} ships the cell function to other processes, so it must be a "
            f"module-level function (got {getattr(fn, '__qualname__', fn)!r})",
            argument="fn",
        ) from None


# -- Dask --------------------------------------------------------------------
_SCHED_RE = re.compile(r"^(tcp|tls)://(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.\-]+):(\d{1,5})$")


def _parse_scheduler(address: str) -> tuple[str, str, int]:
    m = _SCHED_RE.match(address.strip()) if isinstance(address, str) else None
    if not m or not (0 < int(m.group(3)) < 65536):
        raise NormfieldError(
            f"--scheduler must look like tcp://HOST:PORT (or tls://HOST:PORT), got {address!r}",
            argument="--scheduler",
        )
    return m.group(1), m.group(2).strip("[]"), int(m.group(3))


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise NormfieldError(
            "--scheduler/--dask-local need the Dask `distributed` package: pip install 'normfield[dask]'",
            argument="--scheduler",
        ) from None
    return distributed


def _dask_client(scheduler: str | None, dask_local: int | None, threads: int, timeout: float) -> Any:
    """A (cached) Dask client for a scheduler address or a LocalCluster of N workers."""
    key = ("scheduler", scheduler) if scheduler is not None else ("local", dask_local, threads)
    client = _CLIENTS.get(key)
    if client is not None and client.status == "running":
        return client
    if scheduler is not None:
        scheme, host, port = _parse_scheduler(scheduler)
        # Probe with a plain socket first: a clear answer within `timeout` seconds,
        # rather than Dask's retry loop.
        try:
            with socket.create_connection((host, port), timeout=timeout):
                pass
        except OSError as e:
            why = "timed out" if isinstance(e, socket.timeout) else (e.strerror or type(e).__name__)
            raise NormfieldError(
                f"--scheduler {scheduler}: no Dask scheduler reachable there within {timeout:g} s ({why}); "
                "start one (`dask scheduler`, or dask-jobqueue) or use --dask-local N",
                argument="--scheduler",
            ) from None
        distributed = _import_distributed()
        try:
            client = distributed.Client(scheduler, timeout=f"{max(timeout, 1.0)}s")
        except Exception as e:  # noqa: BLE001 - timeouts, refused handshakes, garbage from a non-Dask service
            raise NormfieldError(
                f"--scheduler {scheduler}: something answers on that port but it is not a Dask scheduler "
                f"(no handshake within {timeout:g} s: {type(e).__name__}); check the address",
                argument="--scheduler",
            ) from None
    else:
        import logging

        import tempfile

        distributed = _import_distributed()
        scratch = tempfile.mkdtemp(prefix="normfield-dask-")  # workers' spill space; removed at shutdown
        import dask

        with dask.config.set({"temporary-directory": scratch}):
            cluster = distributed.LocalCluster(
                n_workers=int(dask_local),
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
                local_directory=scratch,
            )
        client = distributed.Client(cluster)
        _SCRATCH[key] = scratch
    _CLIENTS[key] = client
    return client


def prepare_executor(
    *,
    executor: str | None = None,
    scheduler: str | None = None,
    dask_local: int | None = None,
    workers: int | None = None,
    threads: int = 1,
    timeout: float = _DEFAULT_TIMEOUT_S,
    device: str = "cpu",
) -> str:
    """Validate executor options up front and, for Dask, connect (or start the LocalCluster).

    Called by ``normfield reproduce`` before any claim runs, so that conflicting
    flags or an unreachable scheduler are refused before any work or write.

    Returns:
        The resolved executor name.
    """
    ex, threads, timeout, _ = _check_options(executor, scheduler, dask_local, workers, threads, timeout, device,
                                             threads_name="--threads")
    if ex == "dask":
        _dask_client(scheduler, dask_local, threads, timeout)
    return ex


def _process_pool(workers: int | None, threads: int) -> Any:
    """A (cached) pool of spawned worker processes, reused by later sweeps of this process."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    n = int(workers or os.cpu_count() or 1)
    key = ("process", n, threads)
    pool = _CLIENTS.get(key)
    if pool is not None and not getattr(pool, "_broken", False) and not getattr(pool, "_shutdown_thread", False):
        return pool
    # spawn, not fork: forking a process that holds torch/OpenMP threads or CUDA is unsafe
    pool = ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn"), initializer=_pool_init,
                               initargs=(threads,))
    _CLIENTS[key] = pool
    return pool


def open_executors() -> set:
    """Keys of the pools/clients currently open (see :func:`shutdown_executors`)."""
    return set(_CLIENTS)


def shutdown_executors(keep: set | None = None) -> None:
    """Close the Dask clients (and LocalClusters) and process pools this process opened.

    Args:
        keep: keys (from :func:`open_executors`) to leave open, e.g. those that
            existed before a command started.
    """
    for key in [k for k in _CLIENTS if not keep or k not in keep]:
        client = _CLIENTS.pop(key)
        if key[0] == "process":
            with contextlib.suppress(Exception):
                client.shutdown(wait=True, cancel_futures=True)
            continue
        cluster = getattr(client, "cluster", None)
        with contextlib.suppress(Exception):
            client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()
        scratch = _SCRATCH.pop(key, None)
        if scratch is not None:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)


shutdown_dask = shutdown_executors  # older name
atexit.register(shutdown_executors)


# -- the runner --------------------------------------------------------------
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
        progress: show a tqdm progress bar (all executors).
        device: ``"cpu"`` or ``"cuda[:N]"``; passed to each cell as ``cell["device"]``
            unless the cell sets it. Never required: CUDA is refused with a clear
            error when absent.
        cache_dir: directory of the results cache (``None``: no cache). Each finished
            cell is committed atomically; re-running computes only missing cells.
        fresh: ignore cached cells (recompute and overwrite them).
        executor: ``"local"``, ``"process"`` or ``"dask"``; default inferred: ``"dask"``
            when ``scheduler`` or ``dask_local`` is given, ``"process"`` when
            ``workers > 1``, else ``"local"``.
        scheduler: address ``tcp://HOST:PORT`` of a running Dask scheduler.
        dask_local: start (once per process) a Dask LocalCluster of this many workers.
        workers: size of the local process pool (default: CPU cores). Pool and
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
    if ex != "local":
        _check_picklable(fn, ex)
        if ex == "process" or dask_local is not None:
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

    from tqdm.auto import tqdm

    bar = tqdm(total=len(full), initial=n_cached, desc=name, disable=not progress, leave=False,
               unit="cell")
    try:
        if todo:
            if ex == "local":
                for i in todo:
                    store(i, _run_cell(fn, full[i], threads))
                    bar.update(1)
            elif ex == "process":
                _run_process(fn, full, todo, threads, workers, store, bar)
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


def _run_process(fn, full, todo, threads, workers, store, bar) -> None:
    from concurrent.futures import FIRST_EXCEPTION, wait

    from concurrent.futures.process import BrokenProcessPool

    pool = _process_pool(workers, threads)
    futs = {pool.submit(_run_cell, fn, full[i], threads, True): i for i in todo}
    pending = set(futs)
    try:
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None]
            for f in done:  # keep every finished cell before reporting a failure
                if f.exception() is None:
                    store(futs[f], f.result())
                    bar.update(1)
            if failed:
                failed[0].result()  # re-raises the cell's exception
    except BrokenProcessPool:
        raise NormfieldError(
            "--workers: a pool process died (killed, out of memory, or a script whose top-level code is not "
            "under `if __name__ == \"__main__\":`); the cells finished so far are cached",
            argument="--workers",
        ) from None
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
        for f in as_completed(list(futs)):
            store(futs[f], f.result())
            bar.update(1)
    except BaseException:
        client.cancel(list(futs))
        raise
