"""``normfield fisher``: the JSON contract, the table, and one-line refusals (exit 2)."""

import json

import pytest

from normfield.cli import main

BASE = ["fisher", "--activation", "relu", "--sw2", "2", "--sb2", "0", "--depth", "3", "--width", "40",
        "--samples", "20"]


def test_json_contract(capsys):
    assert main([*BASE, "--norm", "last-mean", "--seeds", "2", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    for key in ("lambda_max", "m_lambda"):
        assert set(p[key]) == {"mean", "std", "values"} and len(p[key]["values"]) == 2
        assert p[key]["mean"] == pytest.approx(sum(p[key]["values"]) / 2)
    assert p["parameters"] == 40 * 41 * 2 + 41
    th = p["theory"]
    assert {"lambda_max_lower", "lambda_max_upper", "m_lambda", "kappa1", "kappa2", "alpha"} <= set(th)
    assert th["kappa1"] == pytest.approx(1.5, rel=1e-10)  # relu (2, 0): q̂ = q̃ = 1 in every layer


def test_same_seed_same_numbers(capsys):
    main([*BASE, "--seed", "3", "--json"])
    a = json.loads(capsys.readouterr().out)
    main([*BASE, "--seed", "3", "--json"])
    b = json.loads(capsys.readouterr().out)
    assert a["lambda_max"]["values"] == b["lambda_max"]["values"]
    assert "lambda_max" in a["theory"]  # Thm 2.2 applies to norm none


def test_table_and_theory_note(capsys):
    assert main(["fisher", "--activation", "tanh", "--sw2", "1", "--sb2", "0", "--depth", "2", "--width", "10",
                 "--samples", "5"]) == 0
    out = capsys.readouterr().out
    assert "lambda_max" in out and "no theory applies" in out and "centered" in out


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--outputs", "2", "--norm", "layer"], "exactly zero"),
        (["--norm", "last-bn", "--samples", "1"], "--samples"),
        (["--width", "0"], "--width"),
        (["--seeds", "0"], "--seeds"),
        (["--device", "tpu"], "--device"),
        (["--alphas", "1,x"], "--alphas"),
        (["--width", "100000"], "parameters"),  # refused before allocating the weights
        (["--samples", "60000"], "matrix-free"),  # the 60000×60000 dual: refused, points to matrix-free
        (["--samples", "100000", "--route", "matrix-free"], "exact trace"),
    ],
)
def test_bad_input_one_line_exit_2(capsys, extra, needle):
    args = list(BASE)
    for i in range(0, len(extra), 2):
        if extra[i] in args:
            args[args.index(extra[i]) + 1] = extra[i + 1]
        else:
            args += extra[i:i + 2]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and err.count("\n") == 1
