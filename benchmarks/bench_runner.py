"""Overheads and speed-ups of the sweep runner (normfield.runner); ratios measured in one run.

Targets:
  1. Runner bookkeeping (hash, settings columns, tidy concat) on trivial cells
     costs < 1 ms per cell over a plain Python loop.
  2. Cache: a fully cached re-run is >= 20× faster than computing cells of ~20 ms,
     and committing a cell (Arrow IPC + one SQLite WAL transaction) costs < 2 ms.
  3. Process pool of N = usable CPUs on CPU-bound single-threaded cells:
     >= 0.6·N× faster than in-process once the pool is warm.
  4. Dask LocalCluster(N) on the same cells (warm): >= 0.5·N× faster than in-process.
  5. (--reproduce) `normfield reproduce` at quick scale with the default executor
     takes <= 0.65× the wall time of `--workers 1` on 2 CPUs, with identical
     `measured` values for every claim (a few minutes per run).

Usage:  python benchmarks/bench_runner.py [--cells 16] [--samples 1500000] [--json] [--no-dask]
                                          [--reproduce [CLAIM_ID ...]]
The parallel ratios assume the CPUs are otherwise idle; the script prints the
load average next to the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from normfield.runner import ResultCache, run_sweep
from normfield.runner.examples import mc_kernel_cell
from normfield.runner.cpus import available_cpus
from normfield.runner.sweep import shutdown_executors


def _trivial(cell: dict) -> dict:
    return {"y": cell["seed"] * 2.0}


def _timed(fn, *a, **kw):
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=16)
    ap.add_argument("--samples", type=int, default=1_500_000, help="Monte Carlo samples per cell (sets cell cost)")
    ap.add_argument("--no-dask", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", default=None, metavar="DIR", help="with --reproduce: keep both reports under DIR")
    ap.add_argument("--reproduce", nargs="*", default=None, metavar="CLAIM_ID",
                    help="only target 5: time quick-scale reproduce (all claims, or these) default vs --workers 1")
    args = ap.parse_args()
    ncpu = available_cpus()
    res: dict = {"cpu_count": ncpu, "load_avg_1min": os.getloadavg()[0]}
    if args.reproduce is not None:
        res.update(_reproduce_default_vs_one_worker(args.reproduce, args.keep))
        res["targets"] = {"5 default <= 0.65x --workers 1, same measured": res["ratio"] <= 0.65 and res["identical"]}
        _print(res, args.json)
        return

    # 1. bookkeeping per cell over a plain loop
    cells = [{"seed": s} for s in range(2000)]
    t_plain, _ = _timed(lambda: [_trivial(dict(c)) for c in cells])
    t_run, _ = _timed(run_sweep, _trivial, cells, name="bench", progress=False)
    res["overhead_ms_per_cell"] = 1e3 * (t_run - t_plain) / len(cells)

    # 2. cache: compute, then cached re-run
    work = [{"rho": 0.5, "seed": s, "samples": args.samples // 4} for s in range(args.cells)]
    with tempfile.TemporaryDirectory() as d:
        t_nocache, df0 = _timed(run_sweep, mc_kernel_cell, work, name="bench", progress=False)
        t_first, _ = _timed(run_sweep, mc_kernel_cell, work, name="bench", progress=False, cache_dir=d)
        t_hit, df = _timed(run_sweep, mc_kernel_cell, work, name="bench", progress=False, cache_dir=d)
        assert df.attrs["sweep"]["cached"] == len(work)
        # commit cost alone: serialise + one WAL transaction per cell
        store = ResultCache(os.path.join(d, "direct"))
        rows = df0.iloc[:1][["estimate", "stderr", "samples"]]
        t_put, _ = _timed(lambda: [store.put(f"k{i}", sweep="b", fn="f", cell={"seed": i}, version="v", df=rows)
                                   for i in range(500)])
        t_get, _ = _timed(store.get_many, [f"k{i}" for i in range(500)])
        store.close()
    res["cell_ms"] = 1e3 * t_nocache / len(work)
    res["cache_commit_ms_per_cell"] = 1e3 * t_put / 500
    res["cache_read_ms_per_cell"] = 1e3 * t_get / 500
    res["cached_rerun_speedup"] = t_first / t_hit

    # 3./4. parallel executors on CPU-bound cells (threads=1 per cell everywhere)
    heavy = [{"rho": 0.3, "seed": s, "samples": args.samples} for s in range(args.cells)]
    t_local, ref = _timed(run_sweep, mc_kernel_cell, heavy, name="bench", progress=False)
    t_pool_cold, _ = _timed(run_sweep, mc_kernel_cell, heavy[:ncpu], name="bench", progress=False, workers=ncpu)
    t_pool, pool = _timed(run_sweep, mc_kernel_cell, heavy, name="bench", progress=False, workers=ncpu)
    res["local_s"] = t_local
    res["pool_start_s"] = t_pool_cold
    res["pool_s"] = t_pool
    res["pool_speedup"] = t_local / t_pool
    res["pool_identical"] = bool(pool.equals(ref))
    t_triv_local, _ = _timed(run_sweep, _trivial, cells[:400], name="bench", progress=False)
    t_triv_pool, _ = _timed(run_sweep, _trivial, cells[:400], name="bench", progress=False, workers=ncpu)
    res["pool_overhead_ms_per_cell"] = 1e3 * (t_triv_pool - t_triv_local) / 400
    if not args.no_dask:
        t_dask_cold, _ = _timed(run_sweep, mc_kernel_cell, heavy[:ncpu], name="bench", progress=False,
                                dask_local=ncpu)
        t_dask, dk = _timed(run_sweep, mc_kernel_cell, heavy, name="bench", progress=False, dask_local=ncpu)
        res["dask_start_s"] = t_dask_cold
        res["dask_s"] = t_dask
        res["dask_speedup"] = t_local / t_dask
        res["dask_identical"] = bool(dk.equals(ref))
        t_triv_dask, _ = _timed(run_sweep, _trivial, cells[:400], name="bench", progress=False, dask_local=ncpu)
        res["dask_overhead_ms_per_cell"] = 1e3 * (t_triv_dask - t_triv_local) / 400
    shutdown_executors()

    targets = {
        "1 overhead < 1 ms/cell": res["overhead_ms_per_cell"] < 1.0,
        "2a cached re-run >= 20x": res["cached_rerun_speedup"] >= 20,
        "2b commit < 2 ms/cell": res["cache_commit_ms_per_cell"] < 2,
        "3 pool >= 0.6 N x": res["pool_speedup"] >= 0.6 * ncpu,
    }
    if not args.no_dask:
        targets["4 dask >= 0.5 N x"] = res["dask_speedup"] >= 0.5 * ncpu
    res["targets"] = targets
    _print(res, args.json)


def _print(res: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(res))
        return
    for k, v in res.items():
        if k != "targets":
            print(f"{k:28s} {v:.4g}" if isinstance(v, float) else f"{k:28s} {v}")
    for k, ok in res["targets"].items():
        print(f"target {k:26s} {'met' if ok else 'NOT met'}")


def _reproduce_default_vs_one_worker(ids: list[str], keep: str | None = None) -> dict:
    """Wall time of `normfield reproduce IDS --no-cache` with the default executor and with --workers 1
    (the two reports are kept under ``keep``/default and ``keep``/workers1 when given)."""
    import contextlib
    import subprocess
    import sys

    out: dict = {}
    measured = {}
    with (contextlib.nullcontext(keep) if keep else tempfile.TemporaryDirectory()) as d:
        for label, extra in (("default", []), ("workers1", ["--workers", "1"])):
            cmd = [sys.executable, "-m", "normfield", "reproduce", *ids, "--no-progress", "--no-cache", "--json",
                   "--out", os.path.join(d, label), *extra]
            out[f"load_avg_before_{label}"] = os.getloadavg()[0]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            out[f"{label}_s"] = time.perf_counter() - t0
            # compared as JSON text: NaN (a measured "not applicable") equals itself there
            measured[label] = json.dumps({c["id"]: c["measured"] for c in json.loads(proc.stdout)["claims"]},
                                         sort_keys=True)
    out["ratio"] = out["default_s"] / out["workers1_s"]
    out["identical"] = measured["default"] == measured["workers1"]
    return out


if __name__ == "__main__":
    main()
