"""CLI ``fixed-point`` and ``order-params`` (in-process), and the foundation
claims at smoke scale."""

from __future__ import annotations

import json
import math

import pytest

import normfield as nf
from normfield.cli import main


def _json(capsys, argv):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # one JSON object on one line
    return json.loads(out)


def test_fixed_point_json_contract(capsys):
    d = _json(capsys, ["fixed-point", "--activation", "relu", "--batch", "4", "--json"])
    for k in ("activation", "batch", "diagonal", "off_diagonal", "eigenvalues", "condition_number"):
        assert k in d
    assert d["batch"] == 4 and d["diagonal"] == 0.5
    x = -1 / 3
    assert d["off_diagonal"] == pytest.approx((math.sqrt(1 - x * x) + (math.pi - math.acos(x)) * x) / (2 * math.pi), abs=1e-15)
    assert len(d["eigenvalues"]) == 4 and d["eigenvalues"] == sorted(d["eigenvalues"], reverse=True)
    assert d["condition_number"] == pytest.approx(d["eigenvalues"][0] / d["eigenvalues"][-1])


def test_fixed_point_singular_and_table(capsys):
    d = _json(capsys, ["fixed-point", "--activation", "identity", "--batch", "3", "--json"])
    assert d["condition_number"] == "inf" and d["singular"] is True
    assert main(["fixed-point", "--activation", "tanh", "--batch", "5"]) == 0
    out = capsys.readouterr().out
    assert "b* (diagonal)" in out and "condition number" in out


def test_leaky_slope_spellings_agree(capsys):
    a = _json(capsys, ["fixed-point", "--activation", "leaky_relu:0.2", "--batch", "3", "--json"])
    b = _json(capsys, ["fixed-point", "--activation", "leaky_relu", "--slope", "0.2", "--batch", "3", "--json"])
    assert a == b and a["diagonal"] == pytest.approx((1 + 0.04) / 2)


def test_order_params_json_contract(capsys):
    d = _json(capsys, ["order-params", "--activation", "relu", "--sw2", "2", "--sb2", "0", "--depth", "3", "--json"])
    assert {"kappa1", "kappa2", "alpha", "layers"} <= set(d)
    assert d["kappa1"] == pytest.approx(1.5) and d["alpha"] == 2.0
    assert len(d["layers"]) == 4
    assert {"layer", "q_t", "q_st", "qhat_t", "qhat_st", "qtilde_t", "qtilde_st"} <= set(d["layers"][1])
    d2 = _json(capsys, ["order-params", "--activation", "tanh", "--sw2", "3", "--sb2", "0.64", "--depth", "3",
                        "--alphas", "1,2,1", "--json"])
    op = nf.order_parameters("tanh", 3, 0.64, 3, [1, 2, 1])
    assert d2["kappa1"] == pytest.approx(op.kappa1, rel=1e-15) and d2["alpha"] == 4.0
    assert main(["order-params", "--activation", "tanh", "--sw2", "3", "--sb2", "0.64", "--depth", "3"]) == 0
    assert "kappa1" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["fixed-point", "--activation", "relu", "--batch", "1"], "--batch"),
        (["fixed-point", "--activation", "swish2", "--batch", "4"], "activation"),
        (["fixed-point", "--activation", "tanh", "--slope", "0.1", "--batch", "4"], "--slope"),
        (["order-params", "--activation", "relu", "--sw2", "-1", "--sb2", "0", "--depth", "3"], "--sw2"),
        (["order-params", "--activation", "relu", "--sw2", "2", "--sb2", "-1", "--depth", "3"], "--sb2"),
        (["order-params", "--activation", "relu", "--sw2", "2", "--sb2", "0", "--depth", "1"], "--depth"),
        (["order-params", "--activation", "relu", "--sw2", "2", "--sb2", "0", "--depth", "3", "--alphas", "1,x"], "--alphas"),
        (["order-params", "--activation", "relu", "--sw2", "2", "--sb2", "0", "--depth", "3", "--alphas", "1,1"], "--alphas"),
    ],
)
def test_bad_input_one_line_exit_2(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err


def test_claims_run_at_smoke_scale(tmp_path):
    from normfield.claims.registry import ClaimContext, run_claims

    res = run_claims(["J-eq10", "K-order-params"], ClaimContext(scale="smoke", out_dir=tmp_path, progress=False))
    assert [r.id for r in res] == ["J-eq10", "K-order-params"]
    for r in res:
        assert "crashed" not in r.notes, r.notes
        assert r.measured and r.expected and r.data
    # both are decided at any scale: exact identities plus CLT tests with Bonferroni thresholds
    # (family level 1e-3), so the smoke-scale verdict is the verdict
    eq10, op = res[0], res[1]
    assert eq10.verdict == "PASS", eq10.measured
    assert op.verdict == "PASS", op.measured
    m = eq10.measured
    assert m["relu_S70_closed_form_error"] < 1e-14 and m["relu_quadrature_vs_closed_form"] < 1e-12
    assert m["relu_b_star"] == 0.5
    assert m["relu_offdiag_n4"] == pytest.approx(0.08474829402108314, abs=1e-15)  # J(−1/3)/2, S.70
    assert m["cells"] == 4  # 2 activations × 2 batch sizes
    o = op.measured
    assert o["closed_vs_quadrature_max_rel_err"] < 1e-12 and o["kappa_quad_vs_closed_max_rel_diff"] < 1e-12
    assert o["kappas"]["relu(2,0) kappa1"]["theory"] == pytest.approx(1.5, abs=1e-14)
    assert (tmp_path / "figures" / "J-eq10.png").exists()
