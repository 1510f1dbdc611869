"""BN-MLP experiment settings → cells (Joudaki et al. 2023, §6.2): seeds, checkpoints, refusals."""

import dataclasses

import pytest

from normfield.errors import NormfieldError
from normfield.train.bn_cells import BNTrainSettings, init_entropy_cell, split_long
from normfield.train.bn_mlp import BNMLPConfig


def test_cells_one_per_variant_with_the_seed_and_checkpoint_folders(tmp_path):
    s = BNTrainSettings(config=BNMLPConfig(width=16, depth=3, epochs=1, seed=9), checkpoint_dir=str(tmp_path))
    cells = s.cells(4)
    assert [c["batchnorm"] for c in cells] == [True, False]
    assert all(c["seed"] == 4 and c["dataset"] == "digits" and c["width"] == 16 for c in cells)
    assert [c["checkpoint_dir"] for c in cells] == [str(tmp_path / "bn1-seed4"), str(tmp_path / "bn0-seed4")]
    assert BNTrainSettings().cells(0)[0]["checkpoint_dir"] is None


def test_init_entropy_cells_keep_the_positional_seeds():
    s = BNTrainSettings(config=BNMLPConfig(width=16, depth=3), variants=(True, False))
    cells = s.init_entropy_cells(seed=2, replicates=3)
    assert [c["seed"] for c in cells] == [2500, 2501, 2502] * 2  # 1000·seed + 500 + r
    assert [c["batchnorm"] for c in cells] == [True] * 3 + [False] * 3
    with pytest.raises(NormfieldError, match="replicates"):
        s.init_entropy_cells(0, 501)  # would run into the next base seed's block


def test_settings_are_frozen_and_validated():
    s = BNTrainSettings(data_dir="/nonexistent")
    assert s.dataset == "cifar100"  # a data folder means CIFAR-100
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.dataset = "digits"
    with pytest.raises(NormfieldError, match="variants"):
        BNTrainSettings(variants=())
    with pytest.raises(NormfieldError, match="dataset"):
        BNTrainSettings(dataset="mnist")
    with pytest.raises(NormfieldError, match="width"):
        BNTrainSettings(config=BNMLPConfig(width=1))


def test_init_entropy_cell_and_split_long(one_torch_thread):
    s = BNTrainSettings(config=BNMLPConfig(width=16, depth=3, eval_samples=256))
    rows = [init_entropy_cell(c)[0] for c in s.init_entropy_cells(0, 1)]
    assert all(0.0 <= r["entropy"] <= 3.33 and r["num_classes"] == 10 for r in rows)
    import pandas as pd

    long = pd.DataFrame({"batchnorm": [True] * 3, "quantity": ["loss", "eigenvalue", "eigenvalue"],
                         "epoch": [0, 0, 0], "index": [-1, 0, 1], "value": [2.3, 5.0, 1.0]})
    metrics, eig = split_long(long)
    assert metrics["loss"].tolist() == [2.3] and eig["eigenvalue"].tolist() == [5.0, 1.0]
