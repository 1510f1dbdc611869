"""Tests of ``normfield gram`` (in-process)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from normfield.cli import main
from normfield.gram.measure import gram_chain


def _json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_json_contract_and_values(capsys):
    argv = ["gram", "--activation", "relu", "--width", "300", "--batch", "4", "--depth", "5", "--seeds", "6",
            "--seed", "3", "--json"]
    p = _json(capsys, argv)
    assert p["layers"] == list(range(6))
    for key in ("distance_to_fixed_point", "distance_to_mean_field"):
        band = p[key]
        assert set(band) == {"mean", "q05", "q95"} and all(len(band[k]) == 6 for k in band)
        assert np.all(np.array(band["q05"]) <= np.array(band["mean"]) + 1e-15)
        assert np.all(np.array(band["mean"]) <= np.array(band["q95"]) + 1e-15)
    fp = p["fixed_point"]
    assert fp["diagonal"] == pytest.approx(0.5) and len(fp["eigenvalues"]) == 4
    # the CLI reports exactly what the Python API computes for the same seed
    df = gram_chain("relu", 300, 4, 5, seeds=6, seed=3)
    direct = df[df.metric == "dist_fixed_point"].groupby("layer").value.mean().to_numpy()
    np.testing.assert_allclose(p["distance_to_fixed_point"]["mean"], direct, rtol=1e-12)
    assert p["distance_to_mean_field"]["mean"][0] == 0.0  # the mean-field trajectory starts at G_0


def test_no_bn_has_no_fixed_point(capsys):
    p = _json(capsys, ["gram", "--activation", "identity", "--width", "200", "--batch", "3", "--depth", "4",
                       "--seeds", "3", "--norm", "none", "--json"])
    assert p["fixed_point"] is None and p["distance_to_fixed_point"] is None
    assert len(p["distance_to_mean_field"]["mean"]) == 5


def test_table_output(capsys):
    assert main(["gram", "--activation", "tanh", "--width", "100", "--batch", "3", "--depth", "2", "--seeds", "2",
                 "--engine", "explicit", "--dtype", "float32", "--no-mean-field"]) == 0
    out = capsys.readouterr().out
    assert "G* (eq. 10)" in out and "|G-G*| mean" in out and "|G-MF|" not in out


@pytest.mark.parametrize("argv, match", [
    (["--batch", "1"], "batch"),
    (["--width", "0"], "width"),
    (["--depth", "-1"], "depth"),
    (["--seeds", "0"], "seeds"),
    (["--width", "1000000", "--engine", "explicit"], "--engine fast"),
    (["--device", "cuda:0"] , "cuda"),
])
def test_bad_input_exit_2(capsys, argv, match):
    base = {"--activation": "relu", "--width": "50", "--batch": "3", "--depth": "2", "--seeds": "2"}
    for k, v in zip(argv[::2], argv[1::2]):
        base[k] = v
    args = ["gram"] + [x for kv in base.items() for x in kv]
    import torch

    if match == "cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1


def test_mean_field_defaults_are_the_library_defaults():
    from normfield.cli import gram as cli_gram
    from normfield.gram.bn_map import MAX_SAMPLES, TOL

    assert cli_gram._MF_SAMPLES == MAX_SAMPLES and cli_gram._MF_TOL == TOL


def test_activation_spellings_agree_with_fixed_point(capsys):
    # --activation leaky_relu:0.2 and --activation leaky_relu --slope 0.2 are one activation, in both commands
    base = ["gram", "--width", "100", "--batch", "3", "--depth", "2", "--seeds", "2", "--no-mean-field", "--json"]
    a = _json(capsys, base + ["--activation", "leaky_relu:0.2"])
    b = _json(capsys, base + ["--activation", "leaky_relu", "--slope", "0.2"])
    assert a["distance_to_fixed_point"] == b["distance_to_fixed_point"]
    fp = _json(capsys, ["fixed-point", "--activation", "leaky_relu:0.2", "--batch", "3", "--json"])
    assert a["fixed_point"] == fp and a["fixed_point"]["activation"] == "leaky_relu(slope=0.2)"
    assert main(base + ["--activation", "tanh", "--slope", "0.2"]) == 2
    assert "--slope" in capsys.readouterr().err


def test_non_homogeneous_mean_field_step_is_within_its_stated_error(capsys):
    # tanh + BN: the mean-field distance uses the general route; at layer 0 it is 0 by construction
    p = _json(capsys, ["gram", "--activation", "tanh", "--width", "200", "--batch", "4", "--depth", "2",
                       "--seeds", "2", "--json"])
    assert p["distance_to_mean_field"]["mean"][0] == 0.0
    assert p["settings"]["mf_tol"] == 1e-3 and p["settings"]["mf_samples"] == 4_194_304
