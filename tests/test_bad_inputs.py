"""The bad-input battery: every refusal is clean, named, and writes nothing.

Two tables of cases, one for the command line and one for the Python API. For
each CLI case: exit code 2, nothing on stdout, exactly one line on stderr that
starts ``normfield: error:`` and names the argument, no traceback, no ``nan``
printed (unless the input itself said nan), and no file created anywhere in the
test's directory (so nothing written to the results cache or the report
directory). For each API case: :class:`normfield.NormfieldError` (a
``ValueError``) whose message names the argument, and nothing written.

Cases for a command are written once the command exists; a case that exposes a
missing check of another module is marked ``xfail(strict=True)`` with the owner,
so that it turns into a failure (and the mark gets removed) once fixed.
"""

from __future__ import annotations

import pickle
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

import normfield as nf
from normfield.gram.meanfield import gram_map_mc
from normfield.claims import registry
from normfield.claims.registry import ClaimSpec
from normfield.cli import main
from normfield.errors import NormfieldError
from normfield.runner import run_sweep
from normfield.claims._examples import demo_claim
from normfield.runner.examples import mc_kernel_cell

HAS_CUDA = torch.cuda.is_available()


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# -- fixtures written into the case's tmp directory -----------------------------
def _file(name: str, content: bytes = b"x") -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        (tmp / name).write_bytes(content)

    return make


def _corrupt_cache(tmp: Path) -> None:
    (tmp / "cache").mkdir()
    (tmp / "cache" / "results.sqlite").write_bytes(b"definitely not SQLite " * 50)


def _cifar_dir(kind: str) -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        d = tmp / "cifar"
        d.mkdir()
        meta = pickle.dumps({b"fine_label_names": [b"c%d" % i for i in range(100)]})
        good = pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"fine_labels": [0, 1, 2, 3]})
        (d / "meta").write_bytes(meta)
        if kind == "garbage":
            (d / "train").write_bytes(b"\x00garbage" * 64)
        elif kind == "truncated":
            (d / "train").write_bytes(good[: len(good) // 2])
        elif kind == "shape":
            (d / "train").write_bytes(pickle.dumps({b"data": np.zeros((4, 10), np.uint8), b"fine_labels": [0] * 4}))
        elif kind == "labels":
            (d / "train").write_bytes(pickle.dumps({b"data": np.zeros((4, 3072), np.uint8),
                                                    b"fine_labels": [0, 1, 2, 300]}))

    return make


@dataclass
class Case:
    """One bad input.

    Attributes:
        id: readable test id.
        argv: CLI arguments (``{tmp}`` is replaced by the case's directory), or None.
        call: API call ``f(tmp)``, or None.
        names: substring(s) the error message must contain (the argument's name).
        setup: writes the case's input files into ``tmp``.
        env: environment variables for the case.
        marks: pytest marks (e.g. a strict xfail naming the owner of a missing check).
    """

    id: str
    names: tuple[str, ...]
    argv: list[str] | None = None
    call: Callable[[Path], Any] | None = None
    setup: Callable[[Path], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    marks: tuple = ()


def C(id, argv, *names, **kw) -> Case:  # noqa: N802 - table helper
    return Case(id=id, names=names, argv=argv, **kw)


def A(id, call, *names, **kw) -> Case:  # noqa: N802 - table helper
    return Case(id=id, names=names, call=call, **kw)


OUT = ["--out", "{tmp}/out", "--no-progress"]
R = ["reproduce", *OUT]
NOCUDA = (pytest.mark.skipif(HAS_CUDA, reason="a CUDA device is present, so --device cuda is valid here"),)
FP = ["fixed-point", "--activation"]
OP = ["order-params", "--activation", "tanh"]
FI = ["fisher", "--activation", "relu", "--sw2", "2", "--sb2", "0", "--depth", "3"]
GR = ["gram", "--activation", "relu", "--width", "16", "--depth", "3"]

CLI_CASES = [
    # -- reproduce: claims, scale, seeds ------------------------------------------------
    C("reproduce-unknown-claim", ["reproduce", "NO-SUCH-CLAIM", *OUT], "CLAIM_ID"),
    C("reproduce-unknown-scale", [*R, "--scale", "huge"], "--scale"),
    C("reproduce-negative-seed", [*R, "--seed", "-1"], "--seed"),
    C("reproduce-seed-not-int", [*R, "--seed", "abc"], "--seed"),
    # -- reproduce: executors -------------------------------------------------------------
    C("reproduce-zero-workers", [*R, "--workers", "0"], "--workers"),
    C("reproduce-workers-not-int", [*R, "--workers", "two"], "--workers"),
    C("reproduce-zero-dask-local", [*R, "--dask-local", "0"], "--dask-local"),
    C("reproduce-scheduler-and-dask-local", [*R, "--scheduler", "tcp://127.0.0.1:8786", "--dask-local", "2"],
      "--scheduler", "--dask-local"),
    C("reproduce-scheduler-and-workers", [*R, "--scheduler", "tcp://127.0.0.1:8786", "--workers", "2"],
      "--scheduler", "--workers"),
    C("reproduce-dask-local-and-workers", [*R, "--dask-local", "2", "--workers", "2"], "--dask-local", "--workers"),
    C("reproduce-scheduler-malformed", [*R, "--scheduler", "localhost:8786"], "--scheduler", "tcp://HOST:PORT"),
    C("reproduce-scheduler-bad-port", [*R, "--scheduler", "tcp://127.0.0.1:99999"], "--scheduler"),
    C("reproduce-scheduler-unreachable", [*R, "--scheduler", "tcp://127.0.0.1:{port}"], "--scheduler",
      "no Dask scheduler reachable"),
    C("reproduce-scheduler-unknown-host", [*R, "--scheduler", "tcp://no-such-host.invalid:8786",
                                           "--scheduler-timeout", "2"], "--scheduler"),
    C("reproduce-scheduler-timeout-zero", [*R, "--scheduler-timeout", "0"], "--scheduler-timeout"),
    C("reproduce-scheduler-timeout-nan", [*R, "--scheduler-timeout", "nan"], "--scheduler-timeout"),
    C("reproduce-negative-threads", [*R, "--threads", "-1"], "--threads"),
    # -- reproduce: files -------------------------------------------------------------------
    C("reproduce-out-is-a-file", ["reproduce", "--out", "{tmp}/afile", "--no-progress"], "--out",
      setup=_file("afile")),
    C("reproduce-out-under-a-file", ["reproduce", "--out", "{tmp}/afile/sub", "--no-progress"], "--out",
      setup=_file("afile")),
    C("reproduce-cache-dir-is-a-file", [*R, "--cache-dir", "{tmp}/afile"], "--cache-dir", setup=_file("afile")),
    C("reproduce-cache-dir-under-a-file", [*R, "--cache-dir", "{tmp}/afile/c"], "--cache-dir",
      setup=_file("afile")),
    C("reproduce-corrupt-cache", [*R, "--cache-dir", "{tmp}/cache"], "--cache-dir", setup=_corrupt_cache),
    C("reproduce-no-cache-and-cache-dir", [*R, "--no-cache", "--cache-dir", "{tmp}/c"], "--no-cache",
      "--cache-dir"),
    C("reproduce-no-cache-and-fresh", [*R, "--no-cache", "--fresh"], "--no-cache", "--fresh"),
    C("reproduce-compare-missing", [*R, "--compare", "{tmp}/nothere.json"], "--compare"),
    C("reproduce-compare-not-results", [*R, "--compare", "{tmp}/afile"], "--compare", setup=_file("afile", b"{}")),
    C("reproduce-compare-not-json", [*R, "--compare", "{tmp}/afile"], "--compare",
      setup=_file("afile", b"\x00\xff not json")),
    # -- reproduce: device ------------------------------------------------------------------
    C("reproduce-device-tpu", [*R, "--device", "tpu"], "--device"),
    C("reproduce-device-cuda-absent", [*R, "--device", "cuda"], "--device", marks=NOCUDA),
    C("reproduce-claim-with-dask-unreachable", ["reproduce", "R-demo", *OUT, "--scheduler",
                                                "tcp://127.0.0.1:{port}"], "--scheduler"),
    # -- fixed-point (Joudaki eq. 10) -------------------------------------------------------
    C("fixed-point-unknown-activation", [*FP, "nosuch", "--batch", "4"], "activation"),
    C("fixed-point-batch-1-under-bn", [*FP, "relu", "--batch", "1"], "--batch"),
    C("fixed-point-batch-zero", [*FP, "relu", "--batch", "0"], "--batch"),
    C("fixed-point-batch-not-int", [*FP, "relu", "--batch", "2.5"], "--batch"),
    C("fixed-point-slope-nan", [*FP, "leaky_relu", "--slope", "nan", "--batch", "4"], "slope"),
    C("fixed-point-bad-slope-suffix", [*FP, "leaky_relu:abc", "--batch", "4"], "slope"),
    # -- order-params (Karakida eqs. 5-7, 11) -----------------------------------------------
    C("order-params-negative-sw2", [*OP, "--sw2", "-1", "--sb2", "0", "--depth", "3"], "--sw2"),
    C("order-params-negative-sb2", [*OP, "--sw2", "1", "--sb2", "-0.1", "--depth", "3"], "--sb2"),
    C("order-params-nan-sw2", [*OP, "--sw2", "nan", "--sb2", "0", "--depth", "3"], "--sw2"),
    C("order-params-inf-sw2", [*OP, "--sw2", "inf", "--sb2", "0", "--depth", "3"], "--sw2"),
    C("order-params-zero-depth", [*OP, "--sw2", "1", "--sb2", "0", "--depth", "0"], "--depth"),
    C("order-params-alphas-length", [*OP, "--sw2", "1", "--sb2", "0", "--depth", "3", "--alphas", "1,2"],
      "--alphas"),
    C("order-params-alphas-negative", [*OP, "--sw2", "1", "--sb2", "0", "--depth", "3", "--alphas", "1,-1,1"],
      "--alphas"),
    C("order-params-alphas-not-numbers", [*OP, "--sw2", "1", "--sb2", "0", "--depth", "3", "--alphas", "1,x,1"],
      "--alphas"),
    # -- fisher (Karakida Thms 2.2, 3.3, 3.4, 4.1) ------------------------------------------
    C("fisher-zero-width", [*FI, "--width", "0", "--samples", "10"], "--width"),
    C("fisher-zero-samples", [*FI, "--width", "10", "--samples", "0"], "--samples"),
    C("fisher-one-sample-under-bn", [*FI, "--width", "10", "--samples", "1", "--norm", "last-bn"], "--samples"),
    C("fisher-zero-outputs", [*FI, "--width", "10", "--samples", "10", "--outputs", "0"], "--outputs"),
    C("fisher-zero-seeds", [*FI, "--width", "10", "--samples", "10", "--seeds", "0"], "--seeds"),
    C("fisher-negative-seed", [*FI, "--width", "10", "--samples", "10", "--seed", "-1"], "--seed"),
    C("fisher-unknown-activation", ["fisher", "--activation", "foo", "--sw2", "2", "--sb2", "0", "--depth", "3",
                                    "--width", "10", "--samples", "10"], "--activation"),
    C("fisher-unknown-norm", [*FI, "--width", "10", "--samples", "10", "--norm", "group"], "--norm"),
    C("fisher-device-tpu", [*FI, "--width", "10", "--samples", "10", "--device", "tpu"], "--device"),
    C("fisher-device-cuda-absent", [*FI, "--width", "10", "--samples", "10", "--device", "cuda"], "--device",
      marks=NOCUDA),
    C("fisher-width-over-memory", [*FI, "--width", "100000000", "--samples", "10"], "width", "GiB"),
    C("fisher-samples-over-memory", [*FI, "--width", "10", "--samples", "1000000"], "samples", "GiB"),
    # -- gram (Joudaki chains, eq. 3 / Thm 1) ----------------------------------------------
    C("gram-batch-1-under-bn", [*GR, "--batch", "1"], "batch"),
    C("gram-zero-width", ["gram", "--activation", "relu", "--width", "0", "--batch", "4", "--depth", "3"], "width"),
    C("gram-unknown-activation", ["gram", "--activation", "nosuch", "--width", "16", "--batch", "4", "--depth", "3"],
      "activation"),
    C("gram-negative-depth", ["gram", "--activation", "relu", "--width", "16", "--batch", "4", "--depth", "-1"],
      "depth"),
    C("gram-zero-seeds", [*GR, "--batch", "4", "--seeds", "0"], "--seeds"),
    C("gram-eps-nan", [*GR, "--batch", "4", "--eps", "nan"], "eps"),
    C("gram-eps-negative", [*GR, "--batch", "4", "--eps", "-1"], "eps"),
    C("gram-over-memory", ["gram", "--activation", "relu", "--width", "100000000", "--batch", "1000", "--depth",
                           "3"], "width", "GiB"),
    C("gram-device-cuda-absent", [*GR, "--batch", "4", "--device", "cuda"], "cuda", marks=NOCUDA),
    # -- train lr-grid (Karakida Fig. 2) -------------------------------------------------------
    C("lr-grid-zero-width", ["train", "lr-grid", "--widths", "0,4"], "widths"),
    C("lr-grid-widths-not-numbers", ["train", "lr-grid", "--widths", "a,b"], "--widths"),
    C("lr-grid-negative-lr", ["train", "lr-grid", "--lr-min", "-1"], "lr_min"),
    C("lr-grid-empty-lr-range", ["train", "lr-grid", "--lr-min", "1", "--lr-max", "0.1"], "lr_max"),
    C("lr-grid-lrs-nan", ["train", "lr-grid", "--lrs", "nan"], "lrs"),
    C("lr-grid-unknown-norm", ["train", "lr-grid", "--norms", "none,zz"], "--norms"),
    C("lr-grid-zero-steps", ["train", "lr-grid", "--steps", "0"], "steps"),
    C("lr-grid-one-sample-mean-subtraction", ["train", "lr-grid", "--samples", "1", "--norms", "last-mean"],
      "samples"),
    C("lr-grid-cache-dir-under-a-file", ["train", "lr-grid", "--cache-dir", "{tmp}/afile/c", "--widths", "4",
                                         "--steps", "1", "--samples", "4"], "--cache-dir", setup=_file("afile")),
    # -- train bn-mlp (Joudaki Figs. 6-8): corrupt CIFAR files and bad settings ----------------------
    C("bn-mlp-missing-data-dir", ["train", "bn-mlp", "--data-dir", "{tmp}/nope"], "--data-dir"),
    C("bn-mlp-corrupt-cifar", ["train", "bn-mlp", "--data-dir", "{tmp}/cifar", "--out", "{tmp}/o"], "--data-dir",
      setup=_cifar_dir("garbage")),
    C("bn-mlp-truncated-cifar", ["train", "bn-mlp", "--data-dir", "{tmp}/cifar", "--out", "{tmp}/o"],
      "--data-dir", setup=_cifar_dir("truncated")),
    C("bn-mlp-zero-width", ["train", "bn-mlp", "--width", "0"], "width"),
    C("bn-mlp-negative-lr", ["train", "bn-mlp", "--lr", "-1"], "lr"),
    C("bn-mlp-batch-size-1", ["train", "bn-mlp", "--batch-size", "1"], "batch_size"),
    C("bn-mlp-out-under-a-file", ["train", "bn-mlp", "--out", "{tmp}/afile/o", "--epochs", "1"], "--out",
      setup=_file("afile")),
    C("bn-mlp-zero-epochs", ["train", "bn-mlp", "--epochs", "0", "--width", "4", "--depth", "2",
                             "--eval-samples", "64", "--gram-batch", "8", "--variants", "bn"], "epochs"),
    # -- analyze (any nn.Module) ----------------------------------------------------------
    C("analyze-missing-file", ["analyze", "{tmp}/nonexistent.py:make", "--input-shape", "3"], "MODULE:FACTORY"),
    C("analyze-no-inputs", ["analyze", "torch.nn:Linear"], "--input-shape"),
    C("analyze-bad-factory-kwargs", ["analyze", "torch.nn:Linear", "--input-shape", "3", "--factory-kwargs",
                                     "{bad json"], "--factory-kwargs"),
    C("analyze-inputs-over-memory", ["analyze", "torch.nn:Linear", "--input-shape", "100000,100000",
                                     "--factory-kwargs", '{"in_features": 3, "out_features": 2}'], "inputs"),
]

# -- Python API ----------------------------------------------------------------------------
CELLS = [{"rho": 0.1, "seed": 0, "samples": 100}]


def _sweep(tmp: Path, cells=CELLS, **kw):
    return run_sweep(mc_kernel_cell, cells, name="bad", progress=False, cache_dir=tmp / "cache", **kw)


API_CASES = [
    # -- runner -------------------------------------------------------------------------------
    A("sweep-cells-not-a-list", lambda t: _sweep(t, cells={"seed": 0}), "cells"),
    A("sweep-cell-not-a-dict", lambda t: _sweep(t, cells=[3]), "cells"),
    A("sweep-cell-nan-setting", lambda t: _sweep(t, cells=[{"seed": 0, "rho": float("nan")}]), "cells"),
    A("sweep-cell-not-json", lambda t: _sweep(t, cells=[{"seed": 0, "x": object()}]), "cells"),
    A("sweep-empty-name", lambda t: run_sweep(mc_kernel_cell, CELLS, name=" ", progress=False), "name"),
    A("sweep-fn-not-callable", lambda t: run_sweep(3, CELLS, name="x", progress=False), "fn"),
    A("sweep-fn-not-picklable", lambda t: run_sweep(lambda c: {"x": 1}, CELLS, name="x", progress=False, workers=2,
                                                    cache_dir=t / "cache"), "fn"),
    A("sweep-scheduler-and-dask-local", lambda t: _sweep(t, scheduler="tcp://127.0.0.1:1", dask_local=2),
      "--scheduler", "--dask-local"),
    A("sweep-zero-workers", lambda t: _sweep(t, workers=0), "--workers"),
    A("sweep-zero-dask-local", lambda t: _sweep(t, dask_local=0), "--dask-local"),
    A("sweep-unknown-executor", lambda t: _sweep(t, executor="gpu"), "executor"),
    A("sweep-local-executor-with-scheduler", lambda t: _sweep(t, executor="local", scheduler="tcp://h:1"),
      "executor"),
    A("sweep-dask-executor-without-cluster", lambda t: _sweep(t, executor="dask"), "executor"),
    A("sweep-scheduler-malformed", lambda t: _sweep(t, scheduler="http://x"), "--scheduler"),
    A("sweep-scheduler-unreachable", lambda t: _sweep(t, scheduler=f"tcp://127.0.0.1:{_free_port()}"),
      "--scheduler"),
    A("sweep-device-tpu", lambda t: _sweep(t, device="tpu"), "--device"),
    A("sweep-device-cuda-absent", lambda t: _sweep(t, device="cuda"), "--device", marks=NOCUDA),
    A("sweep-negative-threads", lambda t: _sweep(t, threads=-1), "threads"),
    A("sweep-zero-timeout", lambda t: _sweep(t, timeout=0), "timeout"),
    A("sweep-cache-dir-is-a-file", lambda t: run_sweep(mc_kernel_cell, CELLS, name="x", progress=False,
                                                       cache_dir=t / "afile"), "--cache-dir", setup=_file("afile")),
    A("sweep-corrupt-cache", lambda t: _sweep(t), "--cache-dir", setup=_corrupt_cache),
    A("sweep-cell-refuses-its-input", lambda t: _sweep(t, cells=[{"seed": 0, "samples": 1}]), "samples"),
    # -- activations and kernels -------------------------------------------------------------
    A("activation-unknown", lambda t: nf.get_activation("nosuch"), "activation"),
    A("kernel-negative-variance", lambda t: nf.kernel("relu", -1.0, 1.0, 0.0), "q11"),
    A("kernel-covariance-not-psd", lambda t: nf.kernel("relu", 1.0, 1.0, 2.0), "q12"),
    A("kernel-nan-variance", lambda t: nf.kernel("tanh", float("nan"), 1.0, 0.0), "q11"),
    A("mean-activation-negative-variance", lambda t: nf.mean_activation("tanh", -2.0), "q"),
    # -- Joudaki: fixed point and Gram map -------------------------------------------------
    A("fixed-point-batch-1", lambda t: nf.fixed_point("relu", 1), "batch"),
    A("fixed-point-matrix-over-memory", lambda t: nf.fixed_point("relu", 10**11).matrix, "batch"),
    A("fixed-point-batch-not-int", lambda t: nf.fixed_point("relu", "four"), "batch"),
    A("gram-map-not-psd", lambda t: nf.gram_map(np.array([[1.0, 2.0], [2.0, 1.0]]), "relu"), "G"),
    A("gram-map-nan", lambda t: nf.gram_map(np.array([[1.0, np.nan], [np.nan, 1.0]]), "relu"), "G"),
    A("gram-map-inf", lambda t: nf.gram_map(np.array([[np.inf, 0.0], [0.0, 1.0]]), "relu"), "G"),
    A("gram-map-not-symmetric", lambda t: nf.gram_map(np.array([[1.0, 0.5], [0.2, 1.0]]), "relu"), "G"),
    A("gram-map-unknown-norm", lambda t: nf.gram_map(np.eye(3), "relu", norm="xx"), "norm"),
    A("gram-map-n1-under-bn", lambda t: nf.gram_map(np.eye(1), "relu", norm="bn"), "G"),
    A("gram-map-mc-zero-samples", lambda t: gram_map_mc(np.eye(3), "relu", samples=0), "samples"),
    A("gram-map-mc-over-memory", lambda t: gram_map_mc(np.eye(64), "relu", samples=10**6), "samples",
      env={"NORMFIELD_MAX_BYTES": "1e6"}),
    A("trajectory-negative-depth", lambda t: nf.mean_field_trajectory(np.eye(3), "relu", -1), "depth"),
    # -- Karakida: order parameters, networks, Fisher -----------------------------------------
    A("order-params-negative-sw2", lambda t: nf.order_parameters("tanh", -1.0, 0.0, 3), "sw2"),
    A("order-params-zero-depth", lambda t: nf.order_parameters("tanh", 1.0, 0.0, 0), "depth"),
    A("order-params-zero-alpha", lambda t: nf.order_parameters("tanh", 1.0, 0.0, 3, alphas=[1, 0, 1]), "alphas"),
    A("mlp-zero-width", lambda t: nf.MLPConfig(activation="relu", sw2=2, sb2=0, depth=3, width=0, samples=10),
      "width"),
    A("mlp-unknown-norm", lambda t: nf.MLPConfig(activation="relu", sw2=2, sb2=0, depth=3, width=10, samples=10,
                                                  norm="zz"), "norm"),
    A("fisher-nan-inputs", lambda t: (lambda c: nf.fisher_dual(
        nf.init_mlp(c, 0, torch.float64, "cpu"), torch.full((10, 10), float("nan"), dtype=torch.float64), c))(
        nf.MLPConfig(activation="relu", sw2=2, sb2=0, depth=3, width=10, samples=10)), "X"),
    A("init-mlp-over-memory", lambda t: nf.init_mlp(nf.MLPConfig(activation="relu", sw2=2, sb2=0, depth=3,
                                                                 width=10**8, samples=10), 0, torch.float64, "cpu"),
      "width", "GiB"),
    # -- analyze --------------------------------------------------------------------------------
    A("analyze-nan-inputs", lambda t: nf.analyze(torch.nn.Linear(3, 2), torch.full((4, 3), float("nan"))),
      "inputs"),
    A("analyze-not-a-module", lambda t: nf.analyze("model", torch.zeros(4, 3)), "model"),
    # -- training data: corrupt CIFAR files --------------------------------------------------
    A("cifar-missing-dir", lambda t: _cifar(t / "nope"), "--data-dir"),
    A("cifar-garbage-file", lambda t: _cifar(t / "cifar"), "--data-dir", setup=_cifar_dir("garbage")),
    A("cifar-truncated-file", lambda t: _cifar(t / "cifar"), "--data-dir", setup=_cifar_dir("truncated")),
    A("cifar-wrong-shape", lambda t: _cifar(t / "cifar"), "--data-dir", setup=_cifar_dir("shape")),
    A("cifar-label-out-of-range", lambda t: _cifar(t / "cifar"), "--data-dir", setup=_cifar_dir("labels")),
    A("dataset-unknown", lambda t: _dataset("mnist"), "dataset"),
]


def _cifar(path):
    from normfield.train.data import load_cifar100

    return load_cifar100(path)


def _dataset(name):
    from normfield.train.data import load_dataset

    return load_dataset(name)


# -- the checks -------------------------------------------------------------------------------
def _tree(root: Path) -> set[str]:
    """Every file under ``root`` (an empty directory left behind writes nothing)."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}


@pytest.fixture
def case_dir(tmp_path, monkeypatch):
    spec = ClaimSpec("R-demo", "runner self-check", "normfield", "relu arc-cosine kernel",
                     "Monte Carlo E[relu(u)relu(v)] matches its closed form.", demo_claim, 99.0)
    monkeypatch.setitem(registry._CLAIMS, "R-demo", spec)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # a default output directory would land here, and be caught
    return tmp_path


def _params(cases):
    return [pytest.param(c, id=c.id, marks=c.marks) for c in cases]


def test_battery_size():
    assert len(CLI_CASES) + len(API_CASES) >= 40
    for cases in (CLI_CASES, API_CASES):
        assert len({c.id for c in cases}) == len(cases)


@pytest.mark.parametrize("case", _params(CLI_CASES))
def test_cli_bad_input(case: Case, case_dir: Path, capsys, monkeypatch):
    for k, v in case.env.items():
        monkeypatch.setenv(k, v)
    if case.setup:
        case.setup(case_dir)
    port = _free_port()
    argv = [a.replace("{tmp}", str(case_dir)).replace("{port}", str(port)) for a in case.argv]
    before = _tree(case_dir)
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse refusals exit from inside parse_args
        rc = e.code
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    assert out == "", out
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("normfield: error:"), err
    for name in case.names:
        assert name in err, (name, err)
    if not any("nan" in a.lower() for a in argv):
        assert not re.search(r"\bnan\b", err, re.I), err
    assert _tree(case_dir) == before, "a refused command wrote files"


@pytest.mark.parametrize("case", _params(API_CASES))
def test_api_bad_input(case: Case, case_dir: Path, monkeypatch):
    for k, v in case.env.items():
        monkeypatch.setenv(k, v)
    if case.setup:
        case.setup(case_dir)
    before = _tree(case_dir)
    with pytest.raises(NormfieldError) as e:
        case.call(case_dir)
    assert isinstance(e.value, ValueError)
    msg = str(e.value)
    for name in case.names:
        assert name in msg, (name, msg)
    assert not re.search(r"\bnan\b", msg), msg
    created = _tree(case_dir) - before
    assert not created, f"a refused call wrote {sorted(created)}"
