"""Data readers for the training experiments (Joudaki et al. 2023, §6.2).

Two sources, both read from local files only (nothing is downloaded at run
time):

* **CIFAR-100** in the standard "python version" layout: a directory with the
  pickles ``train``, ``test`` and ``meta`` (as unpacked from
  ``cifar-100-python.tar.gz``). Each of ``train``/``test`` is a pickled dict
  with ``b"data"`` (uint8, shape (N, 3072), rows are 3×32×32 images in CHW
  order) and ``b"fine_labels"`` (N ints in [0, 100)); ``meta`` holds
  ``b"fine_label_names"``. The pickles are read with a restricted unpickler
  that only rebuilds plain containers and NumPy arrays, so a tampered file
  cannot run code; a corrupt or truncated file raises :class:`NormfieldError`
  naming the file.
* **digits** (the embedded default): scikit-learn's copy of the UCI
  optical-recognition digits, 1,797 real 8×8 grey images in 10 classes,
  shipped inside the scikit-learn wheel (BSD-3 licence), so the command
  runs anywhere without network access.

Both return a :class:`Dataset` with float32 features standardised per
feature (zero mean, unit variance over the split, constant features left at 0).
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from normfield.core.validation import check_choice
from normfield.errors import NormfieldError

__all__ = ["Dataset", "load_dataset", "load_cifar100", "load_digits", "DATASETS"]

#: Names accepted by :func:`load_dataset`.
DATASETS = ("digits", "cifar100")

CIFAR100_FEATURES = 3 * 32 * 32
CIFAR100_CLASSES = 100


@dataclass(frozen=True)
class Dataset:
    """A labelled classification data set held in memory.

    Attributes:
        name: ``"digits"`` or ``"cifar100"``.
        split: ``"train"`` or ``"test"``.
        x: features, float32 ndarray of shape (N, D), standardised per feature.
        y: labels, int64 ndarray of shape (N,), values in [0, C).
        class_names: the C class names.
        source: where the data came from (a path or a package name).
    """

    name: str
    split: str
    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...] = field(default_factory=tuple)
    source: str = ""

    @property
    def num_classes(self) -> int:
        """C, the number of classes."""
        return len(self.class_names)

    @property
    def num_features(self) -> int:
        """D, the input dimension."""
        return int(self.x.shape[1])

    def __len__(self) -> int:
        return int(self.x.shape[0])


def _standardise(x: np.ndarray) -> np.ndarray:
    """Per-feature zero mean and unit variance (float64 statistics, float32 out)."""
    x = np.asarray(x, dtype=np.float64)
    mu = x.mean(axis=0)
    sd = x.std(axis=0)
    sd[sd == 0] = 1.0  # constant pixels (digits' borders) stay at 0 after centring
    return ((x - mu) / sd).astype(np.float32)


class _SafeUnpickler(pickle.Unpickler):
    """Rebuilds dicts/lists/bytes and NumPy arrays only; refuses any other global."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data file")


def _read_pickle(path: Path) -> dict:
    """Read one CIFAR pickle into a dict with ``bytes`` keys; clear errors."""
    if not path.is_file():
        raise NormfieldError(
            f"--data-dir: missing file {str(path)!r}; expected the CIFAR-100 python-format files "
            f"'train', 'test' and 'meta' (from cifar-100-python.tar.gz) in that directory",
            argument="--data-dir",
        )
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise NormfieldError(f"--data-dir: cannot read {str(path)!r}: {e.strerror}", argument="--data-dir") from None
    try:
        obj = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, ImportError, MemoryError, OverflowError, UnicodeDecodeError) as e:
        kind = "truncated" if isinstance(e, EOFError) else "corrupt"
        raise NormfieldError(
            f"--data-dir: file {str(path)!r} is {kind} or not a CIFAR-100 python-format pickle "
            f"({type(e).__name__}: {e}); re-extract it from cifar-100-python.tar.gz",
            argument="--data-dir",
        ) from None
    if not isinstance(obj, dict):
        raise NormfieldError(
            f"--data-dir: file {str(path)!r} holds a {type(obj).__name__}, not the dict of a "
            f"CIFAR-100 python-format pickle",
            argument="--data-dir",
        )
    # CIFAR pickles were written by Python 2: keys are bytes; accept str keys too.
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _require(d: dict, key: str, path: Path) -> Any:
    if key not in d:
        raise NormfieldError(
            f"--data-dir: file {str(path)!r} has no key b'{key}' (keys: {sorted(map(str, d))}); "
            f"not a CIFAR-100 python-format file",
            argument="--data-dir",
        )
    return d[key]


def _resolve_dir(data_dir: str | Path) -> Path:
    d = Path(data_dir).expanduser()
    if not d.is_dir():
        raise NormfieldError(f"--data-dir {str(d)!r} is not a directory", argument="--data-dir")
    if not (d / "meta").exists() and (d / "cifar-100-python" / "meta").exists():
        d = d / "cifar-100-python"  # the parent of the unpacked archive is accepted too
    return d


def load_cifar100(data_dir: str | Path, split: str = "train", *, standardise: bool = True) -> Dataset:
    """Read CIFAR-100 (python format) from ``data_dir``.

    Args:
        data_dir: directory holding ``train``, ``test`` and ``meta`` (or its
            parent holding ``cifar-100-python/``).
        split: ``"train"`` (50,000 images) or ``"test"`` (10,000 images).
        standardise: standardise each of the 3,072 features over the split;
            otherwise scale bytes to [0, 1].

    Returns:
        A :class:`Dataset` with ``x`` of shape (N, 3072) float32 and fine labels
        ``y`` of shape (N,) in [0, 100).

    Raises:
        NormfieldError: a missing directory or file, a corrupt or truncated
            pickle, missing keys, or arrays of the wrong shape or range; the
            message names the file.
    """
    split = check_choice("split", split, ("train", "test"))
    d = _resolve_dir(data_dir)
    meta_path, path = d / "meta", d / split
    meta = _read_pickle(meta_path)
    names_raw = _require(meta, "fine_label_names", meta_path)
    try:
        names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names_raw)
    except (TypeError, UnicodeDecodeError):
        raise NormfieldError(f"--data-dir: fine_label_names in {str(meta_path)!r} is not a list of names",
                             argument="--data-dir") from None
    if not names:
        raise NormfieldError(f"--data-dir: fine_label_names in {str(meta_path)!r} is empty", argument="--data-dir")
    batch = _read_pickle(path)
    data = _require(batch, "data", path)
    labels = _require(batch, "fine_labels", path)
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[1] != CIFAR100_FEATURES or data.dtype != np.uint8:
        raise NormfieldError(
            f"--data-dir: b'data' in {str(path)!r} must be a uint8 array of shape (N, {CIFAR100_FEATURES}), "
            f"got {data.dtype} {data.shape}",
            argument="--data-dir",
        )
    try:
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise NormfieldError(f"--data-dir: b'fine_labels' in {str(path)!r} is not a list of integers",
                             argument="--data-dir") from None
    if y.shape[0] != data.shape[0]:
        raise NormfieldError(
            f"--data-dir: {str(path)!r} has {data.shape[0]} images but {y.shape[0]} labels",
            argument="--data-dir",
        )
    if y.size and (y.min() < 0 or y.max() >= len(names)):
        raise NormfieldError(
            f"--data-dir: labels in {str(path)!r} must lie in [0, {len(names)}), found {int(y.min())}..{int(y.max())}",
            argument="--data-dir",
        )
    if data.shape[0] < 2:
        raise NormfieldError(f"--data-dir: {str(path)!r} holds fewer than 2 images", argument="--data-dir")
    x = _standardise(data) if standardise else (data.astype(np.float32) / 255.0)
    return Dataset("cifar100", split, x, y, names, str(d))


def load_digits(*, standardise: bool = True) -> Dataset:
    """scikit-learn's digits: 1,797 real 8×8 images, 10 classes (the embedded default).

    Returns:
        A :class:`Dataset` with ``x`` of shape (1797, 64) float32 and ``y`` of
        shape (1797,) in [0, 10). There is one split (``"train"``).
    """
    try:
        from sklearn.datasets import load_digits as _sk_digits
    except ImportError:  # pragma: no cover - scikit-learn is a declared dependency
        raise NormfieldError(
            "dataset: digits needs scikit-learn (pip install scikit-learn), or pass --data-dir with CIFAR-100",
            argument="dataset",
        ) from None
    b = _sk_digits()
    x = _standardise(b.data) if standardise else (b.data.astype(np.float32) / 16.0)
    y = np.asarray(b.target, dtype=np.int64)
    return Dataset("digits", "train", x, y, tuple(str(i) for i in range(10)), "sklearn.datasets.load_digits")


def load_dataset(name: str = "digits", *, data_dir: str | Path | None = None, split: str = "train") -> Dataset:
    """Load a data set by name (``"digits"`` or ``"cifar100"``).

    ``data_dir`` given implies ``cifar100``; ``cifar100`` without ``data_dir`` is refused.
    """
    if data_dir is not None:
        if name not in ("cifar100", "digits"):
            check_choice("dataset", name, DATASETS)
        return load_cifar100(data_dir, split)
    name = check_choice("dataset", name, DATASETS)
    if name == "cifar100":
        raise NormfieldError("dataset: cifar100 needs --data-dir DIR (the unpacked cifar-100-python folder); "
                             "nothing is downloaded at run time", argument="--data-dir")
    if split != "train":
        raise NormfieldError(f"split: digits has only the 'train' split, got {split!r}", argument="split")
    return load_digits()
