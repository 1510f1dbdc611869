"""``normfield fisher`` with one seed: the spread over seeds is unknown, not zero."""

import json
import math

from normfield.cli import main

BASE = ["fisher", "--activation", "relu", "--sw2", "2", "--sb2", "0", "--depth", "3", "--width", "20",
        "--samples", "10", "--norm", "last-mean"]


def test_one_seed_std_is_null_in_json_and_na_in_the_table(capsys):
    assert main([*BASE, "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    for key in ("lambda_max", "m_lambda"):
        assert set(p[key]) == {"mean", "std", "values"}  # same keys as with several seeds
        assert p[key]["std"] is None and len(p[key]["values"]) == 1
    assert main(BASE) == 0
    rows = [l.split() for l in capsys.readouterr().out.splitlines() if l.strip().startswith(("lambda_max", "m_lambda"))]
    assert len(rows) == 4 and all(r[2] == "n/a" for r in rows)  # quantity, mean, std, theory


def test_two_seeds_std_is_the_sample_std(capsys):
    assert main([*BASE, "--seeds", "2", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    a, b = p["lambda_max"]["values"]
    # n − 1 = 1 in the denominator: std of two values is |a − b|/√2
    assert math.isclose(p["lambda_max"]["std"], abs(a - b) / math.sqrt(2), rel_tol=1e-12)
    assert p["lambda_max"]["std"] > 0
