"""Executors of the sweep runner: where cells run, with how many threads, and the pools that run them.

* ``"local"``: in this process, one cell after the other.
* ``"process"``: a pool of ``workers`` spawned processes, started once and reused
  by every later sweep of this process.
* ``"auto"``: a pool sized to the CPUs this process may use
  (:func:`normfield.runner.cpus.available_cpus`), started only when a sweep has
  enough work to repay its start-up, with this process running cells too (see
  :func:`normfield.runner.sweep.run_sweep` for the rule). The ``normfield``
  command uses it by default; the Python API defaults to ``"local"``.
* ``"dask"``: a Dask ``distributed`` cluster, an existing scheduler
  (``scheduler="tcp://HOST:PORT"``) or a :class:`distributed.LocalCluster` of
  ``dask_local`` workers started here and reused by every later sweep.

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
import queue
import re
import socket
from typing import Any, Callable, Iterator

import pandas as pd

from normfield.core.threads import blas_controller
from normfield.errors import NormfieldError

__all__ = ["EXECUTORS", "prepare_executor", "open_executors", "shutdown_executors", "default_executor",
           "LocalPool"]

EXECUTORS = ("local", "process", "auto", "dask")
_DEFAULT_TIMEOUT_S = 5.0
_DEFAULT_EXECUTOR = ["local"]  # what executor=None (with no workers/dask flag) means; the CLI sets "auto"
_FLAG_NAMES = [False]  # errors name the command's flags (--workers 1) instead of run_sweep's (workers=1)
# exit status of a spawned pool worker that found itself re-running a main script which starts a pool
# again (top-level code not under `if __name__ == "__main__":`): it leaves quietly, the driver explains
UNSAFE_MAIN_EXIT = 86
_CLIENTS: dict[tuple, Any] = {}
_SCRATCH: dict[tuple, str] = {}


@contextlib.contextmanager
def default_executor(name: str, *, flags: bool = False) -> Iterator[None]:
    """Within the block, sweeps given no executor option run on ``name`` (``"local"`` or ``"auto"``).

    ``flags=True`` (the ``normfield`` command): errors about the pool name the command's flags
    (``--workers 1``) rather than :func:`~normfield.runner.sweep.run_sweep`'s arguments (``workers=1``).
    """
    if name not in ("local", "auto"):
        raise NormfieldError(f"default executor must be 'local' or 'auto', got {name!r}", argument="executor")
    old = _DEFAULT_EXECUTOR[0], _FLAG_NAMES[0]
    _DEFAULT_EXECUTOR[0], _FLAG_NAMES[0] = name, bool(flags)
    try:
        yield
    finally:
        _DEFAULT_EXECUTOR[0], _FLAG_NAMES[0] = old


# -- cell execution (also runs inside pool processes and Dask workers) --------
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
    ctl = blas_controller()
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
    ctl = blas_controller()
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


def _pool_init(threads: int, ready: Any = None) -> None:  # pragma: no cover - runs in pool processes
    import torch  # the heavy import, once per worker before its first cell

    if threads > 0:
        torch.set_num_threads(threads)
    if ready is not None:
        ready.put(os.getpid())


def _noop() -> None:  # pragma: no cover - runs in pool processes
    return None


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
        if workers is not None:
            return "process" if workers > 1 else "local"
        return _DEFAULT_EXECUTOR[0]
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
    """Refuse to start workers from a spawned child that is still importing the main script.

    A pool worker (``"process"``, ``"auto"``) leaves quietly with :data:`UNSAFE_MAIN_EXIT`, and the
    driver, which sees its pool break, raises one error in the caller's terms
    (:func:`normfield.runner.sweep.pool_died_error`); a traceback from every worker would bury it.
    """
    import multiprocessing as mp

    if getattr(mp.current_process(), "_inheriting", False):
        if executor in ("process", "auto"):
            raise SystemExit(UNSAFE_MAIN_EXIT)
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
            "--scheduler/--dask-local need the Dask `distributed` package, a dependency of normfield that is "
            "missing here: pip install distributed",
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
        The resolved executor name (``"auto"`` starts no pool here: the first sweep
        with enough work does).
    """
    ex, threads, timeout, _ = _check_options(executor, scheduler, dask_local, workers, threads, timeout, device,
                                             threads_name="--threads")
    if ex == "dask":
        _dask_client(scheduler, dask_local, threads, timeout)
    return ex


class LocalPool:
    """A pool of ``n`` spawned worker processes that say when they are ready.

    Each worker imports torch and pins its threads in its initializer, then puts
    its pid on a queue, so the driver knows how many workers can take cells now
    (:meth:`ready`) while the others are still starting.
    """

    def __init__(self, n: int, threads: int) -> None:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: forking a process that holds torch/OpenMP threads or CUDA is unsafe
        ctx = mp.get_context("spawn")
        self.n = int(n)
        self._ready_q = ctx.Queue()
        self._ready = 0
        self.executor = ProcessPoolExecutor(max_workers=self.n, mp_context=ctx, initializer=_pool_init,
                                            initargs=(threads, self._ready_q))
        # the executor's own {pid: process} dict, filled as it spawns (it drops the name on shutdown)
        procs = getattr(self.executor, "_processes", None)
        self._procs: dict = procs if isinstance(procs, dict) else {}

    def unsafe_main(self, wait_s: float = 5.0) -> bool:
        """Whether a worker left because it re-ran a main script that starts a pool (:data:`UNSAFE_MAIN_EXIT`).

        Called once the pool is broken; the executor's own thread is reaping the workers then, and a
        status it reaped first reads as None for a moment, so this waits (at most ``wait_s``) for all.
        """
        import time

        end = time.monotonic() + wait_s
        while True:
            codes = [getattr(p, "exitcode", None) for p in list(self._procs.values())]
            if UNSAFE_MAIN_EXIT in codes:
                return True
            if None not in codes or time.monotonic() > end:
                return False
            time.sleep(0.05)

    def start(self) -> "LocalPool":
        """Start every worker now (in the background: returns at once)."""
        for _ in range(self.n):  # one idle task per worker makes the executor spawn all of them
            self.executor.submit(_noop)
        return self

    def ready(self) -> int:
        """How many workers have finished starting."""
        while self._ready < self.n:
            try:
                self._ready_q.get_nowait()
            except queue.Empty:
                break
            self._ready += 1
        return self._ready

    def submit(self, *a: Any) -> Any:
        return self.executor.submit(*a)

    @property
    def usable(self) -> bool:
        ex = self.executor
        return not getattr(ex, "_broken", False) and not getattr(ex, "_shutdown_thread", False)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        """Stop the workers; with ``cancel_futures`` (every sweep is over) workers still starting are
        terminated rather than waited for (importing torch can take seconds on a loaded machine)."""
        if cancel_futures and self.ready() < self.n:
            procs = list(getattr(self.executor, "_processes", {}).values())
            self.executor.shutdown(wait=False, cancel_futures=True)
            for proc in procs:
                with contextlib.suppress(Exception):
                    proc.terminate()
            for proc in procs:
                with contextlib.suppress(Exception):
                    proc.join(timeout=5)
        else:
            self.executor.shutdown(wait=wait, cancel_futures=cancel_futures)
        with contextlib.suppress(Exception):
            self._ready_q.close()


def _process_pool(workers: int | None, threads: int, *, start: bool = False) -> LocalPool:
    """A (cached) pool of spawned worker processes, reused by later sweeps of this process."""
    from normfield.runner.cpus import available_cpus

    n = int(workers or available_cpus())
    key = ("process", n, threads)
    pool = _CLIENTS.get(key)
    if pool is not None and pool.usable:
        return pool
    pool = LocalPool(n, threads)
    if start:
        pool.start()
    _CLIENTS[key] = pool
    return pool


def _pool_started(workers: int, threads: int) -> LocalPool | None:
    """The cached pool of ``workers`` workers if one is open and usable, else None (starts nothing)."""
    pool = _CLIENTS.get(("process", int(workers), threads))
    return pool if pool is not None and pool.usable else None


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


atexit.register(shutdown_executors)
