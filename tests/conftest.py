"""Fixtures shared by several test modules.

* ``one_torch_thread``: pins torch to one intra-op thread for a module (tiny tensors: one thread
  avoids oversubscription and waiting on a shared, loaded machine's scheduler). A module opts in with
  ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
* ``run_smoke_claims``: runs claims at smoke scale into a fresh temporary report folder.
* ``check_claim_reported``: the checks every claim result passes whatever its verdict.
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
