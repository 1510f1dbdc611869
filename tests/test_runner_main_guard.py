"""A script that starts a process pool without `if __name__ == "__main__":` gets one clear error.

Pool workers are spawned: each re-runs the caller's main script, which (without the guard) calls
``run_sweep`` again. The workers leave quietly and the driver raises one ``NormfieldError`` in the
caller's terms (the Python argument ``workers=``, not the command's ``--workers`` flag).
"""

import subprocess
import sys
import textwrap

import pytest

from normfield.errors import NormfieldError
from normfield.runner.executors import UNSAFE_MAIN_EXIT
from normfield.runner.sweep import pool_died_error

SCRIPT = """
import normfield as nf
from normfield.runner.examples import mc_kernel_cell

cells = [{{"activation": "relu", "rho": 0.5, "samples": 100, "seed": s}} for s in range(2)]
df = nf.run_sweep(mc_kernel_cell, cells, name="no guard", progress=False, workers=2{extra})
print("finished", len(df))
"""


def test_unguarded_script_gets_one_error_in_python_terms(tmp_path):
    extra = f", cache_dir={str(tmp_path / 'cache')!r}"
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(SCRIPT.format(extra=extra)))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert r.returncode == 1 and "finished" not in r.stdout
    err = r.stderr.strip().splitlines()
    # the driver's own traceback only: no traceback from any worker
    assert r.stderr.count("Traceback") == 1 and len(err) < 15, r.stderr
    last = err[-1]
    assert last.startswith("normfield.errors.NormfieldError: workers=2: ")
    assert 'if __name__ == "__main__":' in last and "pass workers=1" in last and str(script) in last
    assert "--workers" not in last
    assert last.endswith("the cells finished so far are cached")  # a cache is in use


class _Proc:
    def __init__(self, code):
        self.exitcode = code


class _Pool:
    def __init__(self, *codes):
        self._procs = {i: _Proc(c) for i, c in enumerate(codes)}

    def unsafe_main(self):
        return any(p.exitcode == UNSAFE_MAIN_EXIT for p in self._procs.values())


def test_a_killed_worker_is_told_apart_and_the_command_line_names_its_flag():
    from normfield.runner.executors import default_executor

    e = pool_died_error(_Pool(UNSAFE_MAIN_EXIT, -15), executor="process", workers=3, cached=False)
    assert str(e).startswith("workers=3: the pool's worker processes are spawned and re-run")
    assert "pass workers=1" in str(e) and "cached" not in str(e)  # no cache: nothing said to be kept
    e = pool_died_error(_Pool(-9, -15), executor="auto", workers=None, cached=False)
    assert isinstance(e, NormfieldError)
    assert str(e) == ("executor='auto': a pool process died (killed or out of memory); pass workers=1 to run "
                      "every cell in this process")
    with default_executor("auto", flags=True):  # what the `normfield` command sets
        e = pool_died_error(_Pool(UNSAFE_MAIN_EXIT, -15), executor="auto", workers=None, cached=True)
    assert str(e).startswith("--workers: the pool's worker processes are spawned and re-run")
    assert "pass --workers 1" in str(e) and str(e).endswith("the cells finished so far are cached")
    assert e.argument == "--workers"
