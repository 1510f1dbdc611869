"""Several tasks side by side in one process, their sweeps' cells in one shared pool.

A run of many claims keeps every core busy only if the cells of several claims
are in the pool at once: a claim's own code (theory, fits, figures) and its short
sweeps would otherwise leave the workers idle between sweeps. :func:`run_side_by_side`
runs the tasks in threads of this process, at most ``width`` at a time, and a
*baton* makes sure that only one task's own code runs at any moment: a task holds
it while it runs and hands it on only while it waits for cells computed by other
processes (:func:`waiting`, called by the sweep runner around every blocking wait).

So task code never runs concurrently with other task code: process-wide state
(matplotlib's pyplot, torch's thread setting, NumPy's error state) is used by one
task at a time, exactly as in a sequential run, and a task sees the same values
in the same order as it would alone. Cells are pinned to the same thread count
wherever they run, so the numbers are those of the sequential run, bit for bit.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator, Sequence, TypeVar

__all__ = ["run_side_by_side", "waiting", "side_by_side", "side_by_side_width"]

R = TypeVar("R")
_LOCAL = threading.local()


class _Baton:
    """The right to run task code; one holder at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        self._lock.acquire()
        _LOCAL.baton = self
        try:
            yield
        finally:
            _LOCAL.baton = None
            self._lock.release()


@contextlib.contextmanager
def waiting() -> Iterator[None]:
    """Hand the baton on while this thread waits for work done by other processes.

    Outside :func:`run_side_by_side` it does nothing. Code inside the block must not
    touch process-wide state (it only waits on futures).
    """
    b = getattr(_LOCAL, "baton", None)
    if b is None:
        yield
        return
    b._lock.release()
    try:
        yield
    finally:
        b._lock.acquire()


def side_by_side() -> bool:
    """True inside a task of :func:`run_side_by_side` (sweeps then go straight to the shared pool)."""
    return getattr(_LOCAL, "baton", None) is not None


def side_by_side_width(sweep_options: dict[str, Any], device: str, tasks: int) -> int:
    """How many tasks of a run may be in flight at once (1: one after the other).

    Side by side pays when the cells go to at least three other processes: a local pool
    (the ``auto`` executor on >= 3 usable CPUs, or ``workers`` >= 3) or Dask. Two tasks in
    flight per worker, plus two, keep the pool fed while tasks run their own code. With
    two workers it does not pay: this process's task code then competes with both workers
    for two cores, and the quick-scale ``reproduce`` measured 222 s side by side (191 % CPU,
    424 CPU-seconds) against 214 s one claim after the other (169 %, 364 CPU-seconds).
    """
    from normfield.runner.cpus import available_cpus
    from normfield.runner.executors import _DEFAULT_EXECUTOR

    if tasks < 2 or sweep_options.get("threads", 1) == 0 or not str(device).startswith("cpu"):
        return 1  # unpinned threads change numbers with the executor; a GPU runs one task at a time
    executor = sweep_options.get("executor")
    workers = sweep_options.get("workers")
    if sweep_options.get("scheduler") or sweep_options.get("dask_local"):
        n = int(sweep_options.get("dask_local") or available_cpus())
    elif workers is not None:
        n = int(workers)
    elif (executor or _DEFAULT_EXECUTOR[0]) in ("auto", "process"):
        n = available_cpus()
    else:
        n = 1
    return 1 if n < 3 else min(tasks, 2 * n + 2)


def run_side_by_side(tasks: Sequence[Callable[[], R]], width: int, *,
                     on_done: Callable[[int, R], None] | None = None) -> list[R]:
    """Run ``tasks`` (callables without arguments) with at most ``width`` in flight; results in task order.

    Tasks start in order. ``on_done(i, result)`` is called as each finishes, holding the
    baton (so it may print or write files). The first exception a task raises stops
    the start of further tasks and is re-raised once the running ones have finished;
    an interrupt (Ctrl-C) in the calling thread is re-raised at once (task threads are
    daemons; finished cells are already cached).
    """
    n = len(tasks)
    results: list[Any] = [None] * n
    if width <= 1 or n <= 1:
        for i, t in enumerate(tasks):
            results[i] = t()
            if on_done is not None:
                on_done(i, results[i])
        return results
    baton = _Baton()
    lock = threading.Lock()
    nxt = [0]
    errors: list[BaseException] = []

    def worker() -> None:
        while True:
            with lock:
                if errors or nxt[0] >= n:
                    return
                i = nxt[0]
                nxt[0] += 1
            with baton.holding():
                try:
                    results[i] = tasks[i]()
                    if on_done is not None:
                        on_done(i, results[i])
                except BaseException as e:  # noqa: BLE001 - re-raised by the caller's thread
                    with lock:
                        errors.append(e)
                    return

    threads = [threading.Thread(target=worker, daemon=True, name=f"normfield-task-{j}")
               for j in range(min(width, n))]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.2)
    if errors:
        raise errors[0]
    return results
