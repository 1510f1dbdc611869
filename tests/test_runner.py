"""The sweep runner: tidy output, executors, errors, claims through ``ctx.sweep``, reproduce flags."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from normfield.claims import registry
from normfield.claims.registry import ClaimContext, ClaimSpec, run_claims
from normfield.cli import main
from normfield.errors import NormfieldError
from normfield.runner import run_sweep
from normfield.claims._examples import demo_claim, relu_kernel_exact
from normfield.runner.examples import mc_kernel_cell

CELLS = [{"rho": r, "seed": s, "samples": 3000} for r in (-0.5, 0.0, 0.7) for s in (0, 1)]


@pytest.fixture
def demo_registered(monkeypatch):
    """Register the runner's demo claim as R-demo for this test only."""
    spec = ClaimSpec("R-demo", "runner self-check", "normfield", "relu arc-cosine kernel",
                     "Monte Carlo E[relu(u)relu(v)] matches its closed form.", demo_claim, 99.0)
    monkeypatch.setitem(registry._CLAIMS, "R-demo", spec)
    return spec


def _rows_fn(cell):  # module-level: returns a list of dicts with two rows
    return [{"i": 0, "x": cell["seed"] * 2.0}, {"i": 1, "x": cell["seed"] * 3.0}]


def _frame_fn(cell):
    return pd.DataFrame({"y": [float(cell["seed"])]})


def _dict_fn(cell):
    return {"z": cell["seed"] + 0.5}


def _bad_return_fn(cell):
    return 3.0


def _raising_fn(cell):
    if cell["seed"] == 2:
        raise NormfieldError("samples must be >= 2, got 1", argument="samples")
    return {"ok": 1}


def test_tidy_rows_settings_columns_and_order():
    df = run_sweep(_rows_fn, [{"seed": s, "tag": "a"} for s in range(3)], name="t", progress=False)
    assert list(df["seed"]) == [0, 0, 1, 1, 2, 2]
    assert list(df["x"]) == [0.0, 0.0, 2.0, 3.0, 4.0, 6.0]
    assert set(df.columns) >= {"i", "x", "seed", "tag", "device"}
    assert (df["device"] == "cpu").all()
    info = df.attrs["sweep"]
    assert info["cells"] == 3 and info["computed"] == 3 and info["cached"] == 0 and info["executor"] == "local"


@pytest.mark.parametrize("fn,col", [(_frame_fn, "y"), (_dict_fn, "z")])
def test_dataframe_and_dict_returns(fn, col):
    df = run_sweep(fn, [{"seed": s} for s in range(2)], name="t", progress=False)
    assert list(df[col]) == ([0.0, 1.0] if col == "y" else [0.5, 1.5])


def test_empty_sweep():
    assert run_sweep(_dict_fn, [], name="t", progress=False).empty


def test_bad_return_type_names_fn():
    with pytest.raises(NormfieldError, match="fn"):
        run_sweep(_bad_return_fn, [{"seed": 0}], name="t", progress=False)


def test_progress_on_a_log_is_plain_lines(capsys, monkeypatch):
    import normfield.runner.progress as progress

    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)  # a line at every update
    run_sweep(_dict_fn, [{"seed": s} for s in range(3)], name="my-sweep", progress=True)
    err = capsys.readouterr().err  # captured: not a terminal
    assert "\r" not in err
    lines = err.splitlines()
    assert lines[0].startswith("my-sweep: 1/3 cells") and lines[-1].startswith("my-sweep: 3/3 done")


def test_progress_is_a_bar_on_a_terminal_and_silent_when_off(capsys):
    import io

    from normfield.runner.progress import LogProgress, make_progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    bar = make_progress(3, 0, "term", True, stream=tty)
    bar.update(3)
    bar.close()
    assert "\r" in tty.getvalue() and "term" in tty.getvalue()
    log = io.StringIO()
    assert isinstance(make_progress(3, 0, "log", True, stream=log), LogProgress)
    quiet = make_progress(3, 0, "off", False, stream=tty)
    quiet.update(3)
    quiet.close()
    run_sweep(_dict_fn, [{"seed": s} for s in range(3)], name="silent", progress=False)
    assert capsys.readouterr().err == ""


def test_mc_cell_agrees_with_closed_form():
    # The example cell is a Monte Carlo mean: |estimate - exact| <= 5 standard errors
    # fails a correct estimator with probability 2*Phi(-5) ~ 6e-7 per cell (CLT).
    df = run_sweep(mc_kernel_cell, CELLS, name="mc", progress=False)
    z = (df["estimate"] - [relu_kernel_exact(r) for r in df["rho"]]) / df["stderr"]
    assert (z.abs() <= 5).all(), z


def test_cell_error_propagates_and_finished_cells_are_cached(tmp_path):
    cells = [{"seed": s} for s in range(4)]
    with pytest.raises(NormfieldError, match="samples"):
        run_sweep(_raising_fn, cells, name="t", progress=False, cache_dir=tmp_path)
    df = run_sweep(_dict_fn, cells, name="t", progress=False, cache_dir=tmp_path)  # other fn: other keys
    assert df.attrs["sweep"]["cached"] == 0
    from normfield.runner.cache import ResultCache

    assert len(ResultCache(tmp_path)) == 2 + 4  # seeds 0, 1 of _raising_fn, then all of _dict_fn


def test_claim_context_forwards_options_and_logs_sweeps(tmp_path, demo_registered):
    ctx = ClaimContext(scale="smoke", out_dir=tmp_path / "out", progress=False,
                       sweep_options={"cache_dir": tmp_path / "cache"})
    (r1,) = run_claims(["R-demo"], ctx)
    (r2,) = run_claims(["R-demo"], ctx)
    assert r1.verdict == "PASS", r1.measured
    assert r1.sweeps[0]["computed"] == 5 and r1.sweeps[0]["cached"] == 0
    assert r2.sweeps[0]["cached"] == 5 and r2.sweeps[0]["computed"] == 0
    assert r1.measured == r2.measured


def _reproduce(tmp_path, *extra, capsys=None):
    rc = main(["reproduce", "R-demo", "--out", str(tmp_path / "out"), "--no-progress", "--json", *extra])
    return rc


def test_reproduce_caches_in_out_and_resumes(tmp_path, capsys, demo_registered):
    assert _reproduce(tmp_path) == 0
    first = json.loads(capsys.readouterr().out)
    assert (tmp_path / "out" / ".cache" / "results.sqlite").is_file()
    assert first["claims"][0]["cells"] == 5 and first["claims"][0]["cached"] == 0
    assert _reproduce(tmp_path) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["claims"][0]["cached"] == 5
    assert second["claims"][0]["measured"] == first["claims"][0]["measured"]
    assert _reproduce(tmp_path, "--fresh") == 0
    assert json.loads(capsys.readouterr().out)["claims"][0]["cached"] == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["run"]["fresh"] is True and res["run"]["scale"] == "quick"


def test_reproduce_cache_dir_and_no_cache(tmp_path, capsys, demo_registered):
    assert _reproduce(tmp_path, "--cache-dir", str(tmp_path / "c")) == 0
    assert (tmp_path / "c" / "results.sqlite").is_file()
    assert not (tmp_path / "out" / ".cache").exists()
    assert _reproduce(tmp_path, "--no-cache") == 0
    assert not (tmp_path / "out" / ".cache").exists()


def test_reproduce_workers_and_human_table(tmp_path, capsys, demo_registered):
    rc = main(["reproduce", "R-demo", "--out", str(tmp_path / "o"), "--no-progress", "--workers", "2",
               "--no-cache"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "R-demo" in out and "PASS" in out and "report.html" in out
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["run"]["executor"] == "process" and res["run"]["workers"] == 2
    assert math.isfinite(res["claims"][0]["measured"]["max_abs_z"])


def _refusing_claim(ctx):
    raise NormfieldError("width: this would allocate 99 GiB, over the 8 GiB limit", argument="width")


def _interrupted_claim(ctx):
    raise KeyboardInterrupt


def _spec(cid, fn, order):
    return ClaimSpec(cid, cid, "normfield", "test", "a test claim", fn, order)


def test_claim_refusal_is_a_fail_and_interrupt_keeps_a_partial_report(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(registry._CLAIMS, "R-demo", _spec("R-demo", demo_claim, 97.0))
    monkeypatch.setitem(registry._CLAIMS, "R-refuse", _spec("R-refuse", _refusing_claim, 98.0))
    monkeypatch.setitem(registry._CLAIMS, "R-stop", _spec("R-stop", _interrupted_claim, 99.0))
    out = tmp_path / "o"
    rc = main(["reproduce", "R-demo", "R-refuse", "R-stop", "--out", str(out), "--no-cache"])
    assert rc == 130  # Ctrl-C in the third claim
    res = json.loads((out / "results.json").read_text())
    assert res["run"]["partial"] is True
    verdicts = {c["id"]: c["verdict"] for c in res["claims"]}
    assert verdicts == {"R-demo": "PASS", "R-refuse": "FAIL"}
    assert "the check was refused" in res["claims"][1]["notes"] and "99 GiB" in res["claims"][1]["notes"]
    assert "Partial report" in (out / "report.html").read_text()
    err = capsys.readouterr().err
    assert "[1/3] R-demo: PASS" in err and "[2/3] R-refuse: FAIL" in err


def test_run_level_refusal_stops_the_run(tmp_path, demo_registered):
    ctx = ClaimContext(scale="smoke", out_dir=tmp_path, progress=False, sweep_options={"workers": 0})
    with pytest.raises(NormfieldError, match="--workers"):
        run_claims(["R-demo"], ctx)


def _maybe_empty_fn(cell):
    return [] if cell["seed"] % 2 else [{"v": float(cell["seed"])}]


def test_empty_cells_and_duplicate_cells_with_cache(tmp_path):
    cells = [{"seed": 0}, {"seed": 1}, {"seed": 2}, {"seed": 0}]  # seed 1 returns no rows; seed 0 twice
    first = run_sweep(_maybe_empty_fn, cells, name="t", progress=False, cache_dir=tmp_path)
    assert list(first["seed"]) == [0, 2, 0] and list(first["v"]) == [0.0, 2.0, 0.0]
    again = run_sweep(_maybe_empty_fn, cells, name="t", progress=False, cache_dir=tmp_path)
    assert again.attrs["sweep"]["cached"] == 4
    pd.testing.assert_frame_equal(first, again, check_exact=True)


def _dies_on_seed_3(cell):  # imported by spawned pool workers (they inherit sys.path)
    import os
    import time

    if cell["seed"] == 3:
        time.sleep(1.0)  # let the other cells finish first
        os._exit(3)  # a worker killed mid-cell (OOM killer, pre-emption)
    return {"v": float(cell["seed"])}


def test_dead_pool_worker_is_a_clear_error_and_finished_cells_stay_cached(tmp_path):
    cells = [{"seed": s} for s in range(4)]
    with pytest.raises(NormfieldError, match="^workers=2: a pool process died .*cached.*pass workers=1"):
        run_sweep(_dies_on_seed_3, cells, name="t", progress=False, workers=2, cache_dir=tmp_path)
    from normfield.runner.cache import ResultCache

    assert len(ResultCache(tmp_path)) == 3  # seeds 0, 1, 2 finished before the death and were kept
