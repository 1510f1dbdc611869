"""The results cache: keys, round trips, lazy creation, corruption, and kill-then-resume."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from normfield.errors import NormfieldError
from normfield.runner import run_sweep
from normfield.runner.cache import DB_NAME, ResultCache, cell_key, fn_identity
from normfield.runner.examples import mc_kernel_cell


def _fn_a(cell):
    return {"v": cell["seed"] * 1.5}


def _fn_b(cell):
    return {"v": cell["seed"] * 1.5}


def test_key_depends_on_fn_settings_seed_version():
    ia, ib = fn_identity(_fn_a), fn_identity(_fn_b)
    base = cell_key(ia, {"seed": 0, "n": 3}, "1.0")
    assert base == cell_key(ia, {"n": 3, "seed": 0}, "1.0")  # key order does not matter
    others = [
        cell_key(ib, {"seed": 0, "n": 3}, "1.0"),  # other function
        cell_key(ia, {"seed": 1, "n": 3}, "1.0"),  # other seed
        cell_key(ia, {"seed": 0, "n": 4}, "1.0"),  # other setting
        cell_key(ia, {"seed": 0, "n": 3.5}, "1.0"),
        cell_key(ia, {"seed": 0, "n": 3}, "1.1"),  # other normfield version
    ]
    assert cell_key(ia, {"seed": np.int64(0), "n": np.float64(3.0)}, "1.0") == cell_key(ia, {"seed": 0, "n": 3.0}, "1.0")
    assert len({base, *others}) == 6
    assert ia["fn"].endswith("test_cache._fn_a")


def test_roundtrip_arrow_and_pickle_fallback(tmp_path):
    c = ResultCache(tmp_path)
    df = pd.DataFrame({"x": np.linspace(0, 1, 7) ** 0.5, "k": np.arange(7), "s": list("abcdefg")})
    mixed = pd.DataFrame({"o": [1, "a", 2.5]})  # Arrow cannot hold a mixed object column
    objstr = pd.DataFrame({"o": pd.Series(["a", "b"], dtype=object)})  # would come back as another dtype
    c.put("k1", sweep="s", fn="f", cell={"seed": 0}, version="v", df=df)
    c.put("k2", sweep="s", fn="f", cell={"seed": 1}, version="v", df=mixed)
    c.put("k3", sweep="s", fn="f", cell={"seed": 2}, version="v", df=objstr)
    got = ResultCache(tmp_path).get_many(["k1", "k2", "k3", "missing"])
    assert set(got) == {"k1", "k2", "k3"}
    for k, want in (("k1", df), ("k2", mixed), ("k3", objstr)):  # values and dtypes exactly
        pd.testing.assert_frame_equal(got[k], want, check_exact=True)
    fmts = dict(sqlite3.connect(tmp_path / DB_NAME).execute("SELECT key, format FROM cells").fetchall())
    assert fmts["k2"] == "pickle" and fmts["k3"] == "pickle"
    if isinstance(df["s"].dtype, pd.StringDtype):  # pandas >= 3 infers a string dtype: Arrow
        assert fmts["k1"] == "arrow"
    assert list(c.summary()["cells"]) == [3]
    assert c.clear("s") == 3 and len(c) == 0


def test_undecodable_entry_is_a_miss_and_gets_overwritten(tmp_path):
    run_sweep(_fn_a, [{"seed": 0}, {"seed": 1}], name="t", progress=False, cache_dir=tmp_path)
    con = sqlite3.connect(tmp_path / DB_NAME)
    with con:
        con.execute("UPDATE cells SET format = 'from-the-future' WHERE settings LIKE '%\"seed\":1%'")
    con.close()
    df = run_sweep(_fn_a, [{"seed": 0}, {"seed": 1}], name="t", progress=False, cache_dir=tmp_path)
    assert df.attrs["sweep"]["cached"] == 1 and df.attrs["sweep"]["computed"] == 1
    assert list(df["v"]) == [0.0, 1.5]
    again = run_sweep(_fn_a, [{"seed": 0}, {"seed": 1}], name="t", progress=False, cache_dir=tmp_path)
    assert again.attrs["sweep"]["cached"] == 2


def test_reading_an_absent_cache_writes_nothing(tmp_path):
    d = tmp_path / "never"
    assert ResultCache(d).get_many(["x"]) == {} and len(ResultCache(d)) == 0
    assert not d.exists()


def test_corrupt_store_is_refused_naming_cache_dir(tmp_path):
    (tmp_path / DB_NAME).write_bytes(b"this is not a database" * 100)
    with pytest.raises(NormfieldError, match="--cache-dir"):
        run_sweep(_fn_a, [{"seed": 0}], name="t", progress=False, cache_dir=tmp_path)


def test_fresh_recomputes_and_overwrites(tmp_path):
    cells = [{"seed": s} for s in range(3)]
    run_sweep(_fn_a, cells, name="t", progress=False, cache_dir=tmp_path)
    again = run_sweep(_fn_a, cells, name="t", progress=False, cache_dir=tmp_path, fresh=True)
    assert again.attrs["sweep"]["cached"] == 0 and again.attrs["sweep"]["computed"] == 3
    assert len(ResultCache(tmp_path)) == 3  # overwritten, not duplicated
    partial = run_sweep(_fn_a, [{"seed": s} for s in range(5)], name="t", progress=False, cache_dir=tmp_path)
    assert partial.attrs["sweep"]["cached"] == 3 and partial.attrs["sweep"]["computed"] == 2


_SCRIPT = textwrap.dedent(
    """
    import sys
    from normfield.runner import run_sweep
    from normfield.runner.examples import mc_kernel_cell
    from tests_cells import CELLS
    run_sweep(mc_kernel_cell, CELLS, name="kill", cache_dir=sys.argv[1], progress=False)
    print("finished")
    """
)


def _calls(log_dir: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in log_dir.glob("call_*"):
        tag = "_".join(p.name.split("_")[1:3])  # rho_seed
        counts[tag] = counts.get(tag, 0) + 1
    return counts


def test_kill_mid_sweep_then_resume(tmp_path):
    log = tmp_path / "calls"
    cache = tmp_path / "cache"
    n = 10
    cells = [{"rho": 0.3, "seed": s, "samples": 2000, "log_dir": str(log), "sleep": 0.15} for s in range(n)]
    (tmp_path / "tests_cells.py").write_text(f"CELLS = {cells!r}\n")
    (tmp_path / "script.py").write_text(_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, str(tmp_path / "script.py"), str(cache)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(log.glob("call_*"))) < 5 and proc.poll() is None:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)  # a kill at an arbitrary point of the 5th cell
    finally:
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, (out, err)
    assert b"finished" not in out

    # The store is intact: SQLite's journal rolls back any half-done transaction.
    con = sqlite3.connect(cache / DB_NAME)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored_seeds = {json.loads(s)["seed"] for (s,) in con.execute("SELECT settings FROM cells")}
    con.close()
    stored = len(ResultCache(cache))
    calls_before = _calls(log)
    assert 1 <= stored < n and sum(calls_before.values()) >= stored

    resumed = run_sweep(mc_kernel_cell, cells, name="kill", cache_dir=cache, progress=False)
    info = resumed.attrs["sweep"]
    assert info["cached"] == stored and info["computed"] == n - stored
    calls_after = _calls(log)
    # Exactly the cells missing from the store were computed again: total new calls = n - stored,
    # and every cell now has at least one call while none of the stored ones was called twice.
    assert sum(calls_after.values()) - sum(calls_before.values()) == n - stored
    assert set(calls_after) == {f"0.3_{s}" for s in range(n)}
    assert len(stored_seeds) == stored
    for seed in stored_seeds:  # finished before the kill: called once, never again
        assert calls_before[f"0.3_{seed}"] == calls_after[f"0.3_{seed}"] == 1

    reference = run_sweep(mc_kernel_cell, cells, name="kill", progress=False)  # uninterrupted, no cache
    pd.testing.assert_frame_equal(resumed, reference, check_exact=True)
