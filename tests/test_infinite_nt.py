"""normfield.infinite's no-norm kernels against neural-tangents (stored fixture) and mpmath.

The fixture ``tests/fixtures/neural_tangents/kernels.json`` holds the NNGP and NTK of depth-3 MLPs
(Dense → relu/erf/identity → Dense → φ → Dense(1), standard and NTK parametrization, with and
without bias) computed by ``neural_tangents.stax`` 0.6.5 in float64, and the same recursion in mpmath
at 50 digits; ``regenerate.py`` beside it writes it and documents how neural-tangents'
parameterizations map onto normfield's ``Dense`` (``s = (1, 1)``; ``b_std=None`` ↔ ``bias=False``).

Tolerance: every route is a closed-form recursion in float64 (no quadrature): three Dense layers
and two activations, each a few operations whose rounding is a few ulp (≈ 1e-16) relative to the
largest entry. The one amplifier is arccos/arcsin near ±1 (d arccos(c)/dc = −1/√(1 − c²)): off the
diagonal the seeded inputs' correlations stay away from ±1, and on the diagonal the relu kernel
sin θ + (π − θ) cos θ is flat at θ = 0, while its derivative kernel (π − θ)/(2π) would carry an ulp
of c = 1 as ≈ 1e-8 in θ unless c is formed as exactly 1; the fixture's neural-tangents and mpmath
values agree to ≤ 1e-15 (checked below), so neither of them carries it. 1e-10 relative to the
largest entry is 1e6 ulp of rounding, yet catches that amplification in ours (≈ 1e-8) and any
convention error (a missed bias term in the NTK is ≥ 1e-3 relative here; a fan-in/fan-out mix-up,
300 vs 200, is O(1)).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "neural_tangents" / "kernels.json"
TOL = 1e-10

try:
    from normfield.infinite import Activation, Dense, kernel, serial

    _IMPORT_ERROR = ""
except ImportError as e:  # pragma: no cover - while the package is not importable
    _IMPORT_ERROR = f"normfield.infinite is not importable ({e}); nothing to compare with the fixture"

pytestmark = pytest.mark.skipif(bool(_IMPORT_ERROR), reason=_IMPORT_ERROR or "importable")

DATA = json.loads(FIXTURE.read_text())
CASES = DATA["cases"]


def _ids(case: dict) -> str:
    bias = f"sb2={case['sb2']}" if case["bias"] else "nobias"
    return f"{case['activation']}-{case['parametrization']}-{bias}"


def _network(case: dict):
    """normfield's counterpart of the fixture's stax.serial (module docstring of regenerate.py)."""
    w1, w2, out = case["widths"]
    kw = {"sw2": case["sw2"], "sb2": case["sb2"] or 0.0, "bias": case["bias"],
          "parametrization": case["parametrization"]}
    return serial(Dense(w1, **kw), Activation(case["activation"]), Dense(w2, **kw),
                  Activation(case["activation"]), Dense(out, **kw))


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def test_fixture_is_consistent():
    """The two routes stored in the fixture agree (the fixture is not corrupted), cover both
    parametrizations and a bias-free network, and the inputs have the recorded shape."""
    x = np.asarray(DATA["x"])
    assert x.shape == (DATA["metadata"]["T"], DATA["metadata"]["d"])
    assert {c["parametrization"] for c in CASES} == {"standard", "ntk"}
    assert any(not c["bias"] for c in CASES)
    for c in CASES:
        for key in ("nngp", "ntk"):
            assert _rel(np.asarray(c[key]), np.asarray(c[f"mpmath_{key}"])) < 1e-13, _ids(c)


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_no_norm_kernels_equal_neural_tangents(case):
    x = np.asarray(DATA["x"], dtype=np.float64)
    res = kernel(_network(case), x)
    for key in ("nngp", "ntk"):
        ours = np.asarray(getattr(res, key), dtype=np.float64)
        assert ours.shape == (x.shape[0], x.shape[0])
        assert _rel(ours, np.asarray(case[key])) < TOL, (key, _rel(ours, np.asarray(case[key])))
        assert _rel(ours, np.asarray(case[f"mpmath_{key}"])) < TOL, key
    # closed forms only: the stated error is the quadrature part, far below the tolerance
    assert res.error < TOL * float(np.max(np.abs(case["ntk"])))


def test_standard_ntk_scales_with_the_fan_in():
    """Standard parametrization: the readout's NTK gains fan_in·nngp_in (n_in = w2); doubling the
    hidden widths must change the NTK (the NTK parametrization's must not) — the convention the
    fixture pins, checked on the kernels themselves."""
    case = next(c for c in CASES if c["parametrization"] == "standard" and c["activation"] == "relu")
    x = np.asarray(DATA["x"])
    wide = dict(case, widths=[2 * case["widths"][0], 2 * case["widths"][1], 1])
    a, b = kernel(_network(case), x), kernel(_network(wide), x)
    assert np.allclose(a.nngp, b.nngp, rtol=1e-13, atol=0)
    assert _rel(np.asarray(b.ntk), np.asarray(a.ntk)) > 0.5
    ntk_case = dict(case, parametrization="ntk")
    c, d = kernel(_network(ntk_case), x), kernel(_network(dict(ntk_case, widths=wide["widths"])), x)
    assert np.allclose(c.ntk, d.ntk, rtol=1e-13, atol=0)
