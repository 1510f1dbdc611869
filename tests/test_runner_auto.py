"""The default executor: a pool sized to the usable CPUs, used when the work repays its start-up.

Equality with in-process runs is asserted bit for bit (``check_exact=True``): the
runner guarantees it, since every cell runs pinned to one torch/BLAS thread in this
process and in pool workers alike (same operations, same order, same thread count).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from normfield.claims import registry
from normfield.claims._examples import demo_claim
from normfield.claims.registry import ClaimSpec
from normfield.cli import main
from normfield.runner import cpus, run_sweep
from normfield.runner.examples import mc_kernel_cell
from normfield.runner.executors import open_executors, shutdown_executors

ROOT = Path(__file__).resolve().parents[1]


def _slow_cell(cell):  # module-level: imported by spawned pool workers (they inherit sys.path)
    time.sleep(cell["sleep_s"])
    row = mc_kernel_cell({k: v for k, v in cell.items() if k != "sleep_s"})[0]
    return {**row, "pid": os.getpid()}


# -- usable CPUs ---------------------------------------------------------------
def test_cgroup_quota_v2_and_v1(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpus.cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpus.cgroup_cpu_limit(tmp_path) is None
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cpus.cgroup_cpu_limit(v1) == 3.0
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpus.cgroup_cpu_limit(v1) is None
    assert cpus.cgroup_cpu_limit(tmp_path / "absent") is None


def test_available_cpus_is_the_smaller_of_affinity_and_quota(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7}, raising=False)
    monkeypatch.setattr(cpus, "cgroup_cpu_limit", lambda root="/sys/fs/cgroup": 2.5)
    assert cpus.available_cpus() == 3  # a 2.5-CPU quota runs 3 single-threaded cells at 83 % each
    monkeypatch.setattr(cpus, "cgroup_cpu_limit", lambda root="/sys/fs/cgroup": None)
    assert cpus.available_cpus() == 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert cpus.available_cpus() == 1


# -- the auto executor -----------------------------------------------------------
@pytest.fixture
def no_pools():
    before = open_executors()
    yield before
    shutdown_executors(keep=before)


def test_tiny_sweep_runs_in_this_process(no_pools):
    cells = [{"rho": 0.3, "seed": s, "samples": 500} for s in range(6)]
    df = run_sweep(mc_kernel_cell, cells, name="tiny", progress=False, executor="auto")
    assert open_executors() == no_pools  # no pool was started for 6 cells of ~1 ms
    assert df.attrs["sweep"]["executor"] == "auto" and len(df) == 6


@pytest.mark.parametrize("why", ["threads0", "one_cpu", "closure"])
def test_auto_stays_in_process_when_a_pool_cannot_help(no_pools, monkeypatch, why):
    cells = [{"rho": 0.3, "seed": s, "samples": 500, "sleep_s": 0.4} for s in range(10)]  # 4 s of work
    kw = {}
    fn = _slow_cell
    if why == "threads0":
        kw["threads"] = 0
    elif why == "one_cpu":
        monkeypatch.setattr(cpus, "available_cpus", lambda: 1)
    else:
        def fn(cell):  # noqa: E306 - a closure cannot be shipped to a worker
            return _slow_cell(cell)
    df = run_sweep(fn, cells, name="auto", progress=False, executor="auto", **kw)
    assert open_executors() == no_pools and df["pid"].nunique() == 1 and df["pid"].iloc[0] == os.getpid()


def test_auto_starts_a_pool_for_enough_work_with_identical_numbers(no_pools, monkeypatch):
    monkeypatch.setattr(cpus, "available_cpus", lambda: 2)
    cols = ["estimate", "stderr", "samples", "rho", "seed"]
    # 6 s of serial work: after the second cell, 0.5 s x 10 cells left > POOL_START_S = 3 s
    cells = [{"rho": r, "seed": s, "samples": 20_000, "sleep_s": 0.5} for r in (-0.5, 0.7) for s in range(6)]
    auto = run_sweep(_slow_cell, cells, name="auto", progress=False, executor="auto")
    local = run_sweep(_slow_cell, [{**c, "sleep_s": 0.0} for c in cells], name="auto", progress=False)
    assert auto.attrs["sweep"]["executor"] == "auto" and local.attrs["sweep"]["executor"] == "local"
    assert ("process", 2, 1) in open_executors()  # started in the background, kept for later sweeps
    pd.testing.assert_frame_equal(auto[cols], local[cols], check_exact=True)
    # once its workers are up (the time they take depends on the machine's load), a later sweep
    # runs on the workers alone, with the same numbers
    from normfield.runner.executors import _pool_started

    pool = _pool_started(2, 1)
    deadline = time.monotonic() + 240
    while pool.ready() < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pool.ready() == 2
    again = run_sweep(_slow_cell, cells[:6], name="auto", progress=False, executor="auto")
    assert again["pid"].nunique() == 2 and os.getpid() not in set(again["pid"])
    pd.testing.assert_frame_equal(again[cols], local[cols].iloc[:6], check_exact=True)


# -- the command -------------------------------------------------------------------
@pytest.fixture
def demo_registered(monkeypatch):
    spec = ClaimSpec("R-demo", "runner self-check", "normfield", "relu arc-cosine kernel",
                     "Monte Carlo E[relu(u)relu(v)] matches its closed form.", demo_claim, 99.0)
    monkeypatch.setitem(registry._CLAIMS, "R-demo", spec)


def test_reproduce_default_is_auto_and_workers_1_is_in_process(tmp_path, capsys, demo_registered):
    args = ["reproduce", "R-demo", "--no-progress", "--json", "--no-cache", "--scale", "smoke"]
    before = open_executors()
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b"), "--workers", "1"]) == 0
    assert open_executors() == before  # the command closes what it opened
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert a["run"]["executor"] == "auto" and a["run"]["workers"] == cpus.available_cpus()
    assert b["run"]["executor"] == "local"
    assert a["claims"][0]["measured"] == b["claims"][0]["measured"]


def test_python_api_default_stays_in_this_process():
    df = run_sweep(mc_kernel_cell, [{"rho": 0.1, "seed": 0, "samples": 100}], name="api", progress=False)
    assert df.attrs["sweep"]["executor"] == "local"


def test_reproduce_to_a_log_file_has_no_carriage_returns(tmp_path):
    """stderr to a file: one plain line per claim, no bar redraws; --no-progress: nothing."""
    env = {**os.environ, "NORMFIELD_PROGRESS_INTERVAL": "0"}  # also a line at every finished cell
    log = tmp_path / "err.log"
    cmd = [sys.executable, "-m", "normfield", "reproduce", "J-eq10", "K-thm4.1", "--scale", "smoke",
           "--out", str(tmp_path / "o"), "--no-cache"]
    with open(log, "w") as err:
        rc = subprocess.run(cmd, stderr=err, stdout=subprocess.DEVNULL, env=env, cwd=ROOT, timeout=300).returncode
    text = log.read_text()
    assert rc == 0, text
    assert "\r" not in text
    # claims finish in either order when they run side by side: one line each, numbered 1 and 2
    assert sorted(line.split("] ")[1].split(":")[0] for line in text.splitlines() if line.startswith("[")) == [
        "J-eq10", "K-thm4.1"]
    assert "[1/2] " in text and "[2/2] " in text
    assert any(line.startswith("J-eq10 one BN layer: ") for line in text.splitlines())
    with open(log, "w") as err:
        rc = subprocess.run([*cmd, "--no-progress"], stderr=err, stdout=subprocess.DEVNULL, env=env, cwd=ROOT,
                            timeout=300).returncode
    assert rc == 0 and log.read_text() == ""
