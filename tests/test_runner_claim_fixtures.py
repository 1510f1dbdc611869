"""The shared claim fixtures: one run per session and argument set, and the expectation helper."""

from __future__ import annotations

import pytest

from normfield.claims import registry
from normfield.claims._examples import demo_claim
from normfield.claims.registry import ClaimSpec

CALLS = []


def _counted_demo(ctx):
    CALLS.append(ctx.scale)
    return demo_claim(ctx)


@pytest.fixture
def counted_registered(monkeypatch):
    spec = ClaimSpec("R-counted", "runner self-check", "normfield", "relu arc-cosine kernel",
                     "Monte Carlo E[relu(u)relu(v)] matches its closed form.", _counted_demo, 99.0)
    monkeypatch.setitem(registry._CLAIMS, "R-counted", spec)


def test_claim_result_runs_once_per_session_and_arguments(claim_result, counted_registered):
    CALLS.clear()
    r1 = claim_result("R-counted")
    r2 = claim_result("R-counted", scale="smoke", seed=0)
    assert r1 is r2 and CALLS == ["smoke"]
    r3 = claim_result("R-counted", seed=1)
    assert r3 is not r1 and CALLS == ["smoke", "smoke"] and r3.settings["seed"] == 1


def test_claim_result_refuses_an_alias(claim_result, monkeypatch):
    monkeypatch.setitem(registry._ALIASES, "R-pair", ("J-eq10", "K-thm4.1"))
    with pytest.raises(ValueError, match="alias"):
        claim_result("R-pair")


def test_expect_claim_checks_verdict_kind_and_numbers(claim_result, expect_claim, counted_registered):
    r = claim_result("R-counted")
    # 5 cells: max |z| of 5 standard normals is below 4 with probability 1 - 5·2Φ(-4) > 0.9996
    expect_claim(r, "PASS", measured={"max_abs_z": (0.0, 4.0), "cells": 5})
    with pytest.raises(AssertionError, match="expected FAIL"):
        expect_claim(r, "FAIL")
    with pytest.raises(AssertionError, match=r"expected in \[5.0, 6.0\]"):
        expect_claim(r, "PASS", measured={"max_abs_z": (5.0, 6.0)})
    with pytest.raises(AssertionError, match="no measured"):
        expect_claim(r, "PASS", measured={"absent": 1})
