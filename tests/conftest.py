"""Fixtures shared by several test modules.

* ``one_torch_thread``: pins torch to one intra-op thread for a module (tiny tensors: one thread
  avoids oversubscription and waiting on a shared, loaded machine's scheduler). A module opts in with
  ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
* ``run_smoke_claims``: runs claims at smoke scale into a fresh temporary report folder.
* ``check_claim_reported``: the checks every claim result passes whatever its verdict.
* ``claim_result``: ``claim_result(claim_id, scale="smoke", seed=0, **context)`` runs one claim once per
  test session (later calls with the same arguments return the same result), so several tests can
  assert on one run's verdict and numbers without paying for it again.
* ``expect_claim``: ``expect_claim(result, verdict, failure=None, measured={key: (lo, hi) or value})``
  asserts the expected verdict, failure kind and numbers, showing the claim's notes when it does not hold.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def run_smoke_claims(tmp_path_factory):
    """``run_smoke_claims(ids, folder, **context)`` → ``{id: ClaimResult}`` of the claims ``ids`` run at
    smoke scale (no progress bars) into a new temporary folder named after ``folder``."""
    from normfield.claims.registry import ClaimContext, run_claims

    def run(ids, folder, **context):
        ctx = ClaimContext(scale="smoke", out_dir=tmp_path_factory.mktemp(folder), progress=False, **context)
        return {r.id: r for r in run_claims(ids, ctx)}

    return run


@pytest.fixture(scope="session")
def check_claim_reported():
    """``check_claim_reported(result, min_figure_bytes=0)``: the claim did not crash, has a verdict, numbers,
    an expectation, non-empty figures (larger than ``min_figure_bytes``) and non-empty data frames."""

    def check(r, min_figure_bytes=0):
        assert "crashed" not in r.notes, r.notes
        assert r.verdict in ("PASS", "FAIL") and r.measured and r.expected
        assert r.figures and all(p.exists() and p.stat().st_size > min_figure_bytes for p in r.figures)
        assert r.data and all(len(df) > 0 for df in r.data.values())

    return check


@pytest.fixture(scope="session")
def claim_result(tmp_path_factory):
    """``claim_result(claim_id, scale="smoke", seed=0, **context)`` → the claim's ``ClaimResult``, run once per
    session for each distinct set of arguments (``context``: further ``ClaimContext`` fields, e.g.
    ``sweep_options={"workers": 2}``). An alias id is refused: ask for each claim it names."""
    from normfield.claims.registry import ClaimContext, aliases, run_claims

    done: dict = {}

    def run(claim_id, scale="smoke", seed=0, **context):
        if claim_id in aliases():
            raise ValueError(f"{claim_id} is an alias of {' + '.join(aliases()[claim_id])}: ask for each claim")
        key = (claim_id, scale, seed, repr(sorted(context.items())))
        if key not in done:
            folder = tmp_path_factory.mktemp(f"{claim_id}-{scale}-{seed}".replace(".", "_"))
            ctx = ClaimContext(scale=scale, out_dir=folder, progress=False, seed=seed, **context)
            (done[key],) = run_claims([claim_id], ctx)
        return done[key]

    return run


@pytest.fixture(scope="session")
def expect_claim():
    """``expect_claim(result, verdict, failure=None, measured=None)``: the claim did not crash, has the expected
    verdict (and, for a FAIL, failure kind), and each ``measured[key]`` lies in ``(lo, hi)`` (inclusive; derive
    the bounds from the claim's sample sizes) or equals the given non-tuple value."""
    import math

    def check(r, verdict, failure=None, measured=None):
        assert "crashed" not in r.notes, r.notes
        assert r.verdict == verdict, f"{r.id}: {r.verdict} ({r.failure}), expected {verdict}; measured " \
                                     f"{r.measured}; notes: {r.notes}"
        if failure is not None:
            assert r.failure == failure, f"{r.id}: failure {r.failure!r}, expected {failure!r}; notes: {r.notes}"
        for key, want in (measured or {}).items():
            assert key in r.measured, f"{r.id}: no measured[{key!r}]; measured keys {sorted(r.measured)}"
            got = r.measured[key]
            if isinstance(want, tuple):
                lo, hi = want
                assert isinstance(got, (int, float)) and math.isfinite(got) and lo <= got <= hi, \
                    f"{r.id}: measured[{key!r}] = {got}, expected in [{lo}, {hi}]"
            else:
                assert got == want, f"{r.id}: measured[{key!r}] = {got!r}, expected {want!r}"

    return check
