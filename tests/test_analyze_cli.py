"""``normfield analyze``: in-process CLI tests (table, --json, data files, bad input)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from normfield.cli import main

EXAMPLE = str(Path(__file__).resolve().parents[1] / "examples" / "resnet_block.py")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_analyze_json_and_table(capsys):
    args = ["analyze", f"{EXAMPLE}:make_model", "--input-shape", "3,4,4", "--batch", "4", "--factory-kwargs",
            '{"width": 2, "classes": 3}', "--what-if", "last-mean", "--k", "3"]
    assert main(args + ["--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["settings"]["samples"] == 4 and d["settings"]["outputs"] == 3
    assert len(d["eigenvalues"]) == 3
    assert d["lr_bound"] == pytest.approx(2 / d["lambda_max"])
    assert "last-mean" in d["what_if"] and len(d["what_if"]["last-mean"]["eigenvalues"]) == 1
    assert d["settings"]["what_if_k"] == 1
    assert main(args + ["--what-if-k", "2", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["what_if"]["last-mean"]["eigenvalues"]) == 2
    assert any(r["layer"] == "layer1.relu#1" for r in d["layers"])  # a re-used module, second call
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "lambda_max" in out and "last-mean" in out and "layer1.bn1" in out


def test_analyze_data_file(tmp_path, capsys):
    x = np.random.default_rng(0).standard_normal((5, 12))
    f = tmp_path / "x.npy"
    np.save(f, x)
    code = main(["analyze", f"{EXAMPLE}:make_model", "--data", str(f), "--input-shape", "3,2,2", "--factory-kwargs",
                 '{"width": 2, "classes": 2}', "--layers", "none", "--json"])
    assert code == 0
    d = json.loads(capsys.readouterr().out)
    assert d["settings"]["samples"] == 5 and d["layers"] == []
    c = tmp_path / "x.csv"
    np.savetxt(c, x, delimiter=",")
    assert main(["analyze", f"{EXAMPLE}:make_model", "--data", str(c), "--input-shape", "3,2,2", "--batch", "3",
                 "--factory-kwargs", '{"width": 2, "classes": 2}', "--no-fisher", "--json"]) == 0
    d2 = json.loads(capsys.readouterr().out)
    assert "lambda_max" not in d2 and d2["layers"][0]["batch"] == 3


def test_analyze_budget_report_and_new_keys(tmp_path, capsys):
    base = ["analyze", f"{EXAMPLE}:make_model", "--input-shape", "3,4,4", "--batch", "8", "--factory-kwargs",
            '{"width": 2, "classes": 3}', "--method", "lanczos"]
    assert main(base + ["--budget", "6", "--tol", "1e-12", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["fisher"]["converged"] is False and d["settings"]["budget"]["products"] == 6
    assert d["settings"]["products"] == d["fisher"]["products"] and "lambda_max_rel_error" in d["fisher"]
    assert main(base + ["--budget", "6", "--tol", "1e-12"]) == 0
    assert "not converged" in capsys.readouterr().out
    assert main(base + ["--trace", "exact", "--report", str(tmp_path / "rep"), "--what-if", "last-mean"]) == 0
    out = capsys.readouterr().out
    assert "report written to" in out and "Jacobian products:" in out
    for name in ("report.md", "report.html", "result.json", "layers.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 0


@pytest.mark.parametrize("extra,needle", [
    (["--input-shape", "3,4,4", "--budget", "soon"], "budget"),
    (["--input-shape", "3,4,4", "--tol", "5"], "--tol"),
    (["--input-shape", "3,y"], "--input-shape"),
    (["--input-shape", "3"], "failed for inputs of shape (32, 3)"),
    ([], "--input-shape"),
    (["--input-shape", "3,4,4", "--batch", "1"], "batch size 1"),
    (["--input-shape", "3,4,4", "--factory-kwargs", "[1]"], "--factory-kwargs"),
    (["--input-shape", "3,4,4", "--factory-kwargs", '{"nope": 1}'], "--factory-kwargs"),
    (["--data", "/nonexistent.npy"], "--data"),
])
def test_analyze_bad_input(extra, needle, capsys):
    assert main(["analyze", f"{EXAMPLE}:make_model", *extra]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("spec", ["no_colon", "normfield_no_such_module:f", f"{EXAMPLE}:nope", "/x/y.py:f"])
def test_analyze_bad_model_spec(spec, capsys):
    assert main(["analyze", spec, "--input-shape", "3"]) == 2
    assert "MODULE:FACTORY" in capsys.readouterr().err
