"""Tasks side by side: one task's code at a time, waits overlap, results in order, errors re-raised."""

from __future__ import annotations

import threading

import pytest

from normfield.runner.sidebyside import run_side_by_side, side_by_side, side_by_side_width, waiting


def test_one_task_runs_code_at_a_time_and_waits_overlap():
    active, peak = [0], [0]
    guard = threading.Lock()
    go = threading.Event()
    seen = []

    def body(i: int):
        def run():
            assert side_by_side()
            with guard:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            for _ in range(1000):  # task code: nobody else may be inside
                pass
            with guard:
                active[0] -= 1
            if i == 0:
                with waiting():  # task 0 waits for task 1, which can only run if the baton was handed on
                    assert go.wait(timeout=30)
            if i == 1:
                go.set()
            return i * i
        return run

    out = run_side_by_side([body(i) for i in range(6)], 3, on_done=lambda i, r: seen.append((i, r)))
    assert out == [i * i for i in range(6)]
    assert peak[0] == 1
    assert sorted(seen) == [(i, i * i) for i in range(6)]
    assert not side_by_side()


def test_width_one_runs_in_order_in_this_thread():
    order = []
    out = run_side_by_side([lambda i=i: order.append(i) or i for i in range(4)], 1)
    assert out == [0, 1, 2, 3] and order == [0, 1, 2, 3]
    with waiting():  # a no-op outside a side-by-side run
        pass


def test_first_error_is_raised_and_later_tasks_do_not_start():
    started = []

    def ok(i):
        return lambda: started.append(i)

    def bad():
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        run_side_by_side([bad] + [ok(i) for i in range(1, 20)], 2)
    assert len(started) < 19


def test_width_follows_the_executor(monkeypatch):
    import normfield.runner.cpus as cpus
    from normfield.runner.executors import default_executor

    monkeypatch.setattr(cpus, "available_cpus", lambda: 4)
    assert side_by_side_width({}, "cpu", 22) == 1  # the library default runs cells in this process
    with default_executor("auto"):
        assert side_by_side_width({}, "cpu", 22) == 10
        assert side_by_side_width({}, "cpu", 3) == 3
        assert side_by_side_width({}, "cpu", 1) == 1
        assert side_by_side_width({"threads": 0}, "cpu", 22) == 1
        assert side_by_side_width({}, "cuda", 22) == 1
        assert side_by_side_width({"workers": 1}, "cpu", 22) == 1
    assert side_by_side_width({"workers": 2}, "cpu", 22) == 1  # two workers: measured no faster
    assert side_by_side_width({"workers": 3}, "cpu", 22) == 8
    assert side_by_side_width({"dask_local": 3}, "cpu", 22) == 8
    monkeypatch.setattr(cpus, "available_cpus", lambda: 2)
    with default_executor("auto"):
        assert side_by_side_width({}, "cpu", 22) == 1


def test_claims_side_by_side_give_the_numbers_and_figures_of_a_sequential_run(tmp_path):
    """Three claims in flight on a 2-worker pool vs one after the other in this process: the same
    measured values (bit for bit: cells pinned to one thread everywhere, claim code never concurrent)
    and byte-identical figures (pyplot is used by one claim at a time)."""
    from normfield.claims.registry import ClaimContext, run_claims
    from normfield.runner.executors import open_executors, shutdown_executors

    ids = ["J-eq10", "K-thm4.1", "J-fig8"]
    before = open_executors()
    try:
        par = run_claims(ids, ClaimContext(scale="smoke", out_dir=tmp_path / "p", progress=False,
                                           sweep_options={"workers": 2}), side_by_side=3)
    finally:
        shutdown_executors(keep=before)
    seq = run_claims(ids, ClaimContext(scale="smoke", out_dir=tmp_path / "s", progress=False,
                                       sweep_options={"workers": 1}))
    assert [r.id for r in par] == [r.id for r in seq] == ids
    for a, b in zip(par, seq):
        assert a.verdict == b.verdict and a.measured == b.measured, a.id
        assert [s["name"] for s in a.sweeps] == [s["name"] for s in b.sweeps]
    figs = sorted(p.name for p in (tmp_path / "s" / "figures").glob("*.png"))
    assert figs and figs == sorted(p.name for p in (tmp_path / "p" / "figures").glob("*.png"))
    for name in figs:
        assert (tmp_path / "p" / "figures" / name).read_bytes() == (tmp_path / "s" / "figures" / name).read_bytes()
