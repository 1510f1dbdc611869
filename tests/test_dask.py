"""The Dask executor on a real LocalCluster (2 worker processes), and scheduler errors.

One LocalCluster is started by the first ``dask_local=2`` sweep and reused by the
later ones of this process, test_determinism's included (the runner caches its
client; ``reproduce`` closes only what it opened; atexit closes the rest).
Same-seed determinism between the local and Dask runners is asserted here cell
by cell and bit for bit, and again in test_determinism.py: bit-exact is what the
runner guarantees here, since every cell runs pinned to one torch/BLAS thread on
every executor (same operations, same order, same thread count).
"""

from __future__ import annotations

import json
import socket
import time

import pandas as pd
import pytest

from normfield.claims import registry
from normfield.claims.registry import ClaimSpec
from normfield.cli import main
from normfield.errors import NormfieldError
from normfield.runner import run_sweep
from normfield.runner.cache import ResultCache
from normfield.claims._examples import demo_claim
from normfield.runner.examples import mc_kernel_cell

CELLS = [{"rho": r, "seed": s, "samples": 20_000, "activation": a}
         for r in (-0.4, 0.8) for s in (3, 4) for a in ("relu", "tanh")]


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_local_cluster_matches_local_runner_cell_by_cell(tmp_path):
    local = run_sweep(mc_kernel_cell, CELLS, name="cmp", progress=False)
    dask = run_sweep(mc_kernel_cell, CELLS, name="cmp", progress=False, dask_local=2, cache_dir=tmp_path)
    assert dask.attrs["sweep"]["executor"] == "dask" and dask.attrs["sweep"]["computed"] == len(CELLS)
    for i in range(len(CELLS)):  # cell by cell, bit for bit
        pd.testing.assert_series_equal(local.iloc[i], dask.iloc[i], check_exact=True)
    pd.testing.assert_frame_equal(local, dask, check_exact=True)
    # results computed on workers were cached by the client: a local re-run reuses them
    again = run_sweep(mc_kernel_cell, CELLS, name="cmp", progress=False, cache_dir=tmp_path)
    assert again.attrs["sweep"]["cached"] == len(CELLS)


def test_cell_error_on_a_worker_is_raised_here(tmp_path):
    bad = [{"rho": 0.1, "seed": 0, "samples": 100}, {"rho": 0.1, "seed": 1, "samples": 1}]
    with pytest.raises(NormfieldError, match="samples"):
        run_sweep(mc_kernel_cell, bad, name="bad", progress=False, dask_local=2, cache_dir=tmp_path)
    assert len(ResultCache(tmp_path)) <= 1  # the bad cell is never stored


def test_unreachable_scheduler_fails_fast():
    addr = f"tcp://127.0.0.1:{_free_port()}"
    t0 = time.perf_counter()
    with pytest.raises(NormfieldError, match="--scheduler") as e:
        run_sweep(mc_kernel_cell, CELLS[:1], name="x", progress=False, scheduler=addr, timeout=2)
    assert time.perf_counter() - t0 < 5
    assert "no Dask scheduler reachable" in str(e.value)


def test_reproduce_on_dask_local_equals_in_process(tmp_path, capsys, monkeypatch):
    spec = ClaimSpec("R-demo", "runner self-check", "normfield", "relu arc-cosine kernel",
                     "Monte Carlo E[relu(u)relu(v)] matches its closed form.", demo_claim, 99.0)
    monkeypatch.setitem(registry._CLAIMS, "R-demo", spec)
    args = ["reproduce", "R-demo", "--no-progress", "--json", "--no-cache"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b"), "--dask-local", "2"]) == 0
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert b["run"]["executor"] == "dask" and a["run"]["executor"] == "auto"
    assert a["claims"][0]["measured"] == b["claims"][0]["measured"]
    da = pd.read_parquet(tmp_path / "a" / "data" / "R-demo_kernel.parquet")
    db = pd.read_parquet(tmp_path / "b" / "data" / "R-demo_kernel.parquet")
    pd.testing.assert_frame_equal(da, db, check_exact=True)


def test_readme_install_gives_dask(tmp_path, capsys):
    """The README's main command installs the package without extras, and that is enough for Dask:
    `distributed` is a default dependency, and a smoke-scale claim runs on `--dask-local 2`."""
    import re
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    main_line = next(l for l in (root / "README.md").read_text().splitlines()
                     if "&& normfield reproduce" in l and "pip install" in l)
    installs = re.findall(r"pip install (?:-q )?(?:-e )?(\S+)", main_line)
    assert "." in installs and not any("[" in i for i in installs), main_line  # no extra in the main command
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(re.match(r"distributed\b", d) for d in deps)
    out = tmp_path / "o"
    assert main(["reproduce", "J-eq10", "--scale", "smoke", "--dask-local", "2", "--no-progress", "--json",
                 "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["run"]["executor"] == "dask" and res["run"]["workers"] == 2
    assert res["claims"][0]["id"] == "J-eq10" and res["claims"][0]["measured"]
