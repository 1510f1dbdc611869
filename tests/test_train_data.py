"""Data readers: CIFAR-100 python format (written here, tiny) and the embedded digits."""

import pickle

import numpy as np
import pytest

from normfield.errors import NormfieldError
from normfield.train.data import load_cifar100, load_dataset, load_digits


def _write_cifar(d, n_train=6, n_test=4, n_classes=5, seed=0):
    """A tiny CIFAR-100-format directory: pickles with bytes keys as the real files have."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, n_classes, size=n)]
        obj = {b"filenames": [f"img{i}.png".encode() for i in range(n)], b"batch_label": split.encode(),
               b"fine_labels": labels, b"coarse_labels": [0] * n, b"data": data}
        with open(d / split, "wb") as f:
            pickle.dump(obj, f, protocol=2)
        out[split] = (data, labels)
    meta = {b"fine_label_names": [f"class{i}".encode() for i in range(n_classes)],
            b"coarse_label_names": [b"all"]}
    with open(d / "meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return out


def test_cifar_reader_round_trip(tmp_path):
    raw = _write_cifar(tmp_path / "cifar-100-python")
    for split in ("train", "test"):
        ds = load_cifar100(tmp_path / "cifar-100-python", split, standardise=False)
        data, labels = raw[split]
        assert ds.x.shape == data.shape and ds.x.dtype == np.float32
        np.testing.assert_array_equal(ds.x, data.astype(np.float32) / 255.0)  # exact: k/255 in float32 both ways
        np.testing.assert_array_equal(ds.y, labels)
        assert ds.class_names == tuple(f"class{i}" for i in range(5)) and ds.num_classes == 5
    # the parent of the unpacked archive is accepted too; standardised features have zero mean
    ds = load_cifar100(tmp_path, "train")
    assert np.allclose(ds.x.mean(axis=0), 0, atol=1e-5)
    assert ds.split == "train" and ds.name == "cifar100"


def test_cifar_truncated_file_names_it(tmp_path):
    d = tmp_path / "c"
    _write_cifar(d)
    blob = (d / "train").read_bytes()
    (d / "train").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(NormfieldError, match=r"train.*truncated|train.*corrupt") as e:
        load_cifar100(d, "train")
    assert str(d / "train") in str(e.value)
    load_cifar100(d, "test")  # the intact split still reads


def test_cifar_corrupt_file_names_it(tmp_path):
    d = tmp_path / "c"
    _write_cifar(d)
    (d / "meta").write_bytes(b"\x80\x02this is not a pickle at all" * 3)
    with pytest.raises(NormfieldError, match="corrupt") as e:
        load_cifar100(d, "train")
    assert str(d / "meta") in str(e.value)


def test_cifar_refuses_code_in_pickle(tmp_path):
    d = tmp_path / "c"
    _write_cifar(d)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(d / "train", "wb") as f:
        pickle.dump({b"data": Evil()}, f, protocol=2)
    with pytest.raises(NormfieldError, match="not allowed"):
        load_cifar100(d, "train")


@pytest.mark.parametrize("mutate, pattern", [
    (lambda o: o.pop(b"fine_labels"), "fine_labels"),
    (lambda o: o.update({b"data": np.zeros((6, 10), np.uint8)}), "shape"),
    (lambda o: o.update({b"fine_labels": [0, 1, 2]}), "labels"),
    (lambda o: o.update({b"fine_labels": [0, 1, 2, 3, 4, 99]}), r"\[0, 5\)"),
])
def test_cifar_bad_contents(tmp_path, mutate, pattern):
    d = tmp_path / "c"
    _write_cifar(d)
    with open(d / "train", "rb") as f:
        obj = pickle.load(f, encoding="bytes")
    mutate(obj)
    with open(d / "train", "wb") as f:
        pickle.dump(obj, f, protocol=2)
    with pytest.raises(NormfieldError, match=pattern):
        load_cifar100(d, "train")


def test_cifar_missing_dir_and_file(tmp_path):
    with pytest.raises(NormfieldError, match="not a directory"):
        load_cifar100(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NormfieldError, match="missing file"):
        load_cifar100(tmp_path / "empty")
    with pytest.raises(NormfieldError, match="split"):
        load_cifar100(tmp_path / "empty", "valid")


def test_digits_embedded():
    ds = load_digits()
    assert ds.x.shape == (1797, 64) and ds.y.shape == (1797,)
    assert ds.num_classes == 10 and set(np.unique(ds.y)) == set(range(10))
    assert np.isfinite(ds.x).all()
    # standardised: non-constant features have unit variance (float32 storage, float64 stats)
    sd = ds.x.astype(np.float64).std(axis=0)
    assert np.allclose(sd[sd > 0], 1.0, atol=1e-5)


def test_load_dataset_dispatch(tmp_path):
    assert load_dataset("digits").name == "digits"
    _write_cifar(tmp_path)
    assert load_dataset(data_dir=tmp_path).name == "cifar100"
    with pytest.raises(NormfieldError, match="--data-dir"):
        load_dataset("cifar100")
    with pytest.raises(NormfieldError, match="dataset"):
        load_dataset("mnist")
