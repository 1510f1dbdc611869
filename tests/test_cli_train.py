"""`normfield train lr-grid` / `normfield train bn-mlp`, in-process."""

import json

import pytest

from normfield.cli import main


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _json(capsys):
    out = capsys.readouterr().out
    return json.loads(out)


def test_lr_grid_json_and_table(capsys, tmp_path):
    args = ["train", "lr-grid", "--widths", "6,10", "--steps", "10", "--samples", "16", "--lrs", "0.001,0.1,100",
            "--seeds", "2", "--no-progress"]
    assert main(args + ["--json", "--figure", str(tmp_path / "g.png")]) == 0
    p = _json(capsys)
    assert len(p["summary"]) == 4  # 2 norms × 2 widths
    assert len(p["runs"]) == 2 * 2 * 2 * 3
    assert all(r["exploded"] for r in p["runs"] if r["lr"] == 100)  # η = 100 overflows at once
    assert all(r["outcome"] == "exploded" for r in p["runs"] if r["lr"] == 100)
    assert all(r["outcome"] in ("converged", "collapsed", "exploded", "unconverged") for r in p["runs"])
    assert all(r["lambda_max_end"] > 0 for r in p["runs"] if r["outcome"] != "exploded")
    assert all("collapse_detector" in r and "monotone" in r and "eta_lambda_end" in r for r in p["runs"])
    assert all("largest_converged_lr" in r for r in p["summary"])
    assert (tmp_path / "g.png").stat().st_size > 0
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "largest stable η" in out and "exploded" in out and "collapsed" in out


def test_bn_mlp_json_checkpoint_resume(capsys, tmp_path):
    args = ["train", "bn-mlp", "--epochs", "1", "--width", "16", "--depth", "3", "--eval-samples", "300",
            "--gram-every", "1", "--out", str(tmp_path), "--no-progress", "--json"]
    assert main(args) == 0
    p = _json(capsys)
    assert p["settings"]["dataset"] == "digits" and p["resumed_from"] == {"BN": None, "noBN": None}
    assert {m["epoch"] for m in p["metrics"]} == {0, 1}
    vi = p["verdict_inputs"]
    assert vi["num_classes"] == 10 and "entropy_init_BN" in vi and "mean_field_entropy_init_BN" in vi
    assert len(list((tmp_path / "checkpoints").glob("*/checkpoint.pt"))) == 2
    # re-run: read back from the checkpoints; same numbers
    assert main(args) == 0
    q = _json(capsys)
    assert q["resumed_from"] == {"BN": 1, "noBN": 1} and q["metrics"] == p["metrics"]
    assert main(args + ["--fresh", "--variants", "bn"]) == 0
    assert _json(capsys)["resumed_from"] == {"BN": None}


@pytest.mark.parametrize("argv, flag", [
    (["train", "lr-grid", "--widths", "a,b"], "--widths"),
    (["train", "lr-grid", "--widths", "8.5"], "--widths"),
    (["train", "lr-grid", "--norms", "bn"], "--norms"),
    (["train", "lr-grid", "--seeds", "0"], "--seeds"),
    (["train", "lr-grid", "--lr-min", "-1"], "lr_min"),
    (["train", "lr-grid", "--device", "cuda:0"], "--device"),
    (["train", "lr-grid", "--device", "tpu"], "--device"),
    (["train", "bn-mlp", "--data-dir", "/no/such/dir"], "--data-dir"),
    (["train", "bn-mlp", "--epochs", "-1"], "epochs"),
    (["train", "bn-mlp", "--width", "1"], "width"),
    (["train", "bn-mlp", "--lr", "0"], "lr"),
])
def test_bad_input_one_line_exit_2(capsys, argv, flag):
    import torch

    if "cuda" in " ".join(argv) and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert main(argv + ["--no-progress"]) == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_bn_mlp_reads_cifar_dir(capsys, tmp_path):
    from test_train_data import _write_cifar

    _write_cifar(tmp_path / "cifar", n_train=40, n_classes=4)
    assert main(["train", "bn-mlp", "--data-dir", str(tmp_path / "cifar"), "--epochs", "1", "--width", "8",
                 "--depth", "3", "--batch-size", "16", "--gram-batch", "16", "--variants", "no-bn", "--out", str(tmp_path / "o"),
                 "--no-progress", "--json"]) == 0
    p = _json(capsys)
    assert p["settings"]["dataset"] == "cifar100" and p["verdict_inputs"]["num_classes"] == 4
