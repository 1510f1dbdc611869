"""``normfield predict`` and ``normfield analyze --theory`` (with its report)."""

from __future__ import annotations

import json
import textwrap

import pytest

from normfield.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

_FACTORY = textwrap.dedent("""
    import torch
    from torch import nn

    def make_model(width=64):
        return nn.Sequential(nn.Linear(8, width), nn.BatchNorm1d(width), nn.ReLU(),
                             nn.Linear(width, 2)).double()

    def make_conv():
        return nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(12, 1)).double()
""")


@pytest.fixture()
def factory(tmp_path):
    f = tmp_path / "nets.py"
    f.write_text(_FACTORY)
    return str(f)


def _run(capsys, argv):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_predict_json_and_table(capsys, factory):
    code, out, _ = _run(capsys, ["predict", f"{factory}:make_model", "--input-shape", "8", "--batch", "6",
                                 "--factory-kwargs", '{"width": 32}', "--json"])
    assert code == 0
    d = json.loads(out)
    assert {"lambda_max", "m_lambda", "trace", "lr_bound", "parameters", "error", "within_tol", "layers",
            "eigenvalues", "model", "mode"} <= set(d)
    assert d["samples"] == 6 and d["outputs"] == 2 and d["parameters"] == 8 * 32 + 32 + 64 + 32 * 2 + 2
    assert [r["layer"] for r in d["layers"]] == ["0", "1", "2", "3"]
    assert d["lr_bound"] == pytest.approx(2 / d["lambda_max"])
    code, out, _ = _run(capsys, ["predict", f"{factory}:make_model", "--input-shape", "8", "--batch", "6"])
    assert code == 0 and "predicted Fisher/NTK" in out and "predicted batch Gram" in out


def test_predict_refusal_is_one_line(capsys, factory):
    code, out, err = _run(capsys, ["predict", f"{factory}:make_conv", "--input-shape", "1,8", "--batch", "4"])
    assert code == 2 and "0 (Conv1d)" in err and len(err.strip().splitlines()) == 1


def test_analyze_theory_json_table_and_report(capsys, factory, tmp_path):
    argv = ["analyze", f"{factory}:make_model", "--input-shape", "8", "--batch", "6", "--theory"]
    code, out, _ = _run(capsys, argv + ["--json"])
    assert code == 0
    d = json.loads(out)
    rows = d["theory"]
    assert {r["quantity"] for r in rows} >= {"lambda_max", "m_lambda", "trace", "gram", "condition_number"}
    lam = next(r for r in rows if r["quantity"] == "lambda_max")
    assert lam["measured"] == pytest.approx(d["lambda_max"])
    assert lam["ratio"] == pytest.approx(lam["measured"] / lam["predicted"])
    gram = [r for r in rows if r["quantity"] == "gram"]
    assert [r["layer"] for r in gram] == [r["layer"] for r in d["layers"]] and all(r["distance"] >= 0 for r in gram)
    code, out, _ = _run(capsys, argv + ["--report", str(tmp_path / "rep")])
    assert code == 0 and "measured vs predicted" in out
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Measured vs predicted" in md and "theory.png" in md
    assert (tmp_path / "rep" / "theory.png").stat().st_size > 1000
    assert "theory" in json.loads((tmp_path / "rep" / "result.json").read_text())["result"]
