"""``normfield analyze``: the papers' diagnostics for your own PyTorch model."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

from normfield.cli._common import add_device_flags, add_json_flag, fmt, format_table
from normfield.errors import NormfieldError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze", help="Fisher/NTK and per-layer Gram diagnostics of your own model",
        description="Load a model from MODULE:FACTORY (a module path or a .py file, and a function "
        "or nn.Module in it), run it on a random Gaussian batch of --input-shape (or on --data), and "
        "print lambda_max, m_lambda, the learning-rate bound 2/lambda_max, the top Fisher eigenvalues "
        "and the batch Gram diagnostics of every layer. Example: normfield analyze "
        "examples/resnet_block.py:make_model --input-shape 3,8,8 --batch 16 --what-if last-mean")
    add_model_arguments(p)
    p.add_argument("--what-if", choices=["last-mean"], default=None,
                   help="also analyze the model with last-layer mean subtraction (Karakida et al. 2019, eq. 15)")
    p.add_argument("--loss", default="mse", choices=["mse", "cross-entropy"],
                   help="which Fisher: mse (F = J^T J / T, Karakida et al. 2019; default) or cross-entropy "
                        "(the Fisher of softmax cross-entropy over the output's last axis = its GGN; no labels)")
    p.add_argument("--k", type=int, default=5, help="leading Fisher eigenvalues to report (default 5)")
    p.add_argument("--what-if-k", type=int, default=1,
                   help="leading eigenvalues of the --what-if variant (default 1: its lambda_max)")
    p.add_argument("--method", default="auto", choices=["auto", "dense", "lanczos"],
                   help="dense F* (exact, every eigenvalue) or matrix-free Lanczos (default auto)")
    p.add_argument("--mode", default="train", choices=["train", "eval", "as-is"],
                   help="module mode during the analysis (default train: batch statistics, as at initialization)")
    p.add_argument("--layers", default="auto",
                   help="layers for Gram diagnostics: auto, none, or comma-separated names/globs")
    p.add_argument("--parameters", default=None, help="comma-separated parameter names/globs (default: all trainable)")
    p.add_argument("--no-fisher", action="store_true", help="only the per-layer Gram diagnostics")
    p.add_argument("--seed", type=int, default=0, help="seed of the random batch and Lanczos (default 0)")
    p.add_argument("--tol", type=float, default=None,
                   help="relative accuracy of lambda_max and the top eigenvalues (default 1e-4 in float32, "
                        "1e-8 in float64)")
    p.add_argument("--trace", default="auto", choices=["auto", "exact", "hutchinson"],
                   help="tr F*: exact (T*C products), hutchinson (standard error to 1%% of the trace), or auto "
                        "(exact when cheaper than the Lanczos run; default)")
    p.add_argument("--budget", default=None,
                   help="stop the Fisher part after this many Jacobian products (e.g. 200) or seconds (e.g. 30s); "
                        "the output says how accurate the answer is")
    p.add_argument("--progress", action="store_true", help="show a progress bar in Jacobian products (stderr)")
    p.add_argument("--report", metavar="DIR", default=None,
                   help="also write report.md, report.html, result.json and figures for this model into DIR")
    p.add_argument("--theory", action="store_true",
                   help="also predict every number at infinite width (normfield predict) and print measured, "
                        "predicted and their ratio side by side")
    add_device_flags(p)
    add_json_flag(p)
    p.set_defaults(func=run)


def load_model(spec: str, kwargs: dict[str, Any] | None = None):
    """Import ``MODULE:FACTORY`` and return the nn.Module it gives."""
    import torch

    if ":" not in spec:
        raise NormfieldError(f"MODULE:FACTORY must look like pkg.mod:make_model or file.py:make_model, got {spec!r}",
                             argument="MODULE:FACTORY")
    mod_name, attr = spec.rsplit(":", 1)
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name)
            if not path.is_file():
                raise NormfieldError(f"MODULE:FACTORY: file {mod_name!r} does not exist", argument="MODULE:FACTORY")
            s = importlib.util.spec_from_file_location(f"_normfield_user_{path.stem}", path)
            module = importlib.util.module_from_spec(s)
            sys.modules[s.name] = module
            s.loader.exec_module(module)
        else:
            if str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(mod_name)
    except ImportError as e:
        raise NormfieldError(f"MODULE:FACTORY: cannot import {mod_name!r}: {e}", argument="MODULE:FACTORY") from None
    if not hasattr(module, attr):
        raise NormfieldError(f"MODULE:FACTORY: {mod_name!r} has no attribute {attr!r}", argument="MODULE:FACTORY")
    obj = getattr(module, attr)
    if isinstance(obj, torch.nn.Module):
        return obj
    if not callable(obj):
        raise NormfieldError(f"MODULE:FACTORY: {spec!r} is neither an nn.Module nor a callable", argument="MODULE:FACTORY")
    try:
        model = obj(**(kwargs or {}))
    except TypeError as e:
        raise NormfieldError(f"--factory-kwargs: calling {attr}(**{kwargs}) failed: {e}",
                             argument="--factory-kwargs") from None
    if not isinstance(model, torch.nn.Module):
        raise NormfieldError(f"MODULE:FACTORY: {attr}() returned {type(model).__name__}, not an nn.Module",
                             argument="MODULE:FACTORY")
    return model


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(t) for t in text.replace("x", ",").split(",") if t.strip())
    except ValueError:
        raise NormfieldError(f"--input-shape must be comma-separated positive integers, got {text!r}",
                             argument="--input-shape") from None
    if not shape or any(s < 1 for s in shape):
        raise NormfieldError(f"--input-shape must be comma-separated positive integers, got {text!r}",
                             argument="--input-shape")
    return shape


def load_data(path: str, shape: tuple[int, ...] | None = None, batch: int | None = None):
    """Read an input batch from .npy/.npz/.pt/.csv, reshaped to (T, *shape) if given."""
    import numpy as np
    import torch

    p = Path(path)
    if not p.is_file():
        raise NormfieldError(f"--data: file {path!r} does not exist", argument="--data")
    suf = p.suffix.lower()
    try:
        if suf == ".npy":
            x = torch.from_numpy(np.load(p, allow_pickle=False))
        elif suf == ".npz":
            with np.load(p, allow_pickle=False) as z:
                x = torch.from_numpy(z[z.files[0]])
        elif suf == ".pt":
            x = torch.load(p, weights_only=True)
        elif suf == ".csv":
            x = torch.from_numpy(np.loadtxt(p, delimiter=",", ndmin=2))
        else:
            raise NormfieldError(f"--data must be .npy, .npz, .pt or .csv, got {suf!r}", argument="--data")
    except NormfieldError:
        raise
    except Exception as e:  # noqa: BLE001 - unreadable file
        raise NormfieldError(f"--data: cannot read {path!r}: {e}", argument="--data") from None
    if not isinstance(x, torch.Tensor):
        raise NormfieldError(f"--data: {path!r} does not hold one tensor/array", argument="--data")
    if batch is not None:
        x = x[:batch]
    if shape is not None:
        if x.numel() != x.shape[0] * math.prod(shape):
            raise NormfieldError(f"--data rows of {tuple(x.shape[1:])} cannot be reshaped to --input-shape {shape}",
                                 argument="--input-shape")
        x = x.reshape(x.shape[0], *shape)
    return x.double() if x.is_floating_point() else x


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The model and its batch, as ``normfield analyze`` and ``normfield predict`` take them."""
    p.add_argument("model", metavar="MODULE:FACTORY",
                   help="e.g. mypkg.models:make_net or path/to/file.py:make_net (called with --factory-kwargs)")
    p.add_argument("--input-shape", help="shape of one input sample, e.g. 3,32,32 (random N(0,1) batch)")
    p.add_argument("--data", help="input batch from a file: .npy, .npz (first array), .pt, or .csv (one sample per row)")
    p.add_argument("--batch", type=int, default=None,
                   help="samples T (default 32 for random inputs; all rows of --data)")
    p.add_argument("--factory-kwargs", default="{}", help='JSON keyword arguments for the factory, e.g. \'{"width": 64}\'')


def model_and_batch(args: argparse.Namespace):
    """(model, batch) from the arguments of :func:`add_model_arguments` and ``--seed``: the factory
    called after ``torch.manual_seed(seed)``, and the batch read from ``--data`` or drawn N(0, 1) in
    float64 from a generator seeded with ``seed`` (the same batch for every command)."""
    import torch

    try:
        kwargs = json.loads(args.factory_kwargs)
    except json.JSONDecodeError as e:
        raise NormfieldError(f"--factory-kwargs must be a JSON object: {e}", argument="--factory-kwargs") from None
    if not isinstance(kwargs, dict):
        raise NormfieldError("--factory-kwargs must be a JSON object like '{\"width\": 64}'", argument="--factory-kwargs")
    if args.batch is not None and args.batch < 1:
        raise NormfieldError(f"--batch must be >= 1, got {args.batch}", argument="--batch")
    shape = _parse_shape(args.input_shape) if args.input_shape else None
    if args.data is None and shape is None:
        raise NormfieldError("give --input-shape (random N(0,1) batch) or --data FILE", argument="--input-shape")
    torch.manual_seed(args.seed)  # the factory's own initialization
    model = load_model(args.model, kwargs)
    if args.data is not None:
        return model, load_data(args.data, shape, args.batch)
    from normfield.core.validation import check_memory

    n_batch = args.batch or 32
    check_memory("inputs", 8.0 * n_batch * math.prod(shape),
                 hint=f"the random batch of {n_batch} inputs of shape {tuple(shape)} is too large; "
                      "pass a smaller --batch or --input-shape")
    g = torch.Generator().manual_seed(args.seed)
    return model, torch.randn(n_batch, *shape, generator=g, dtype=torch.float64)


def run(args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    from normfield.analyze import analyze

    if args.k < 1:
        raise NormfieldError(f"--k must be >= 1, got {args.k}", argument="--k")
    if args.what_if_k < 1:
        raise NormfieldError(f"--what-if-k must be >= 1, got {args.what_if_k}", argument="--what-if-k")
    model, x = model_and_batch(args)
    layers: Any = args.layers
    if layers not in ("auto", "none"):
        layers = [t.strip() for t in layers.split(",") if t.strip()]
    params = [t.strip() for t in args.parameters.split(",")] if args.parameters else None
    if args.tol is not None and not (0 < args.tol < 1):
        raise NormfieldError(f"--tol must be in (0, 1), got {args.tol}", argument="--tol")
    budget: Any = args.budget
    if budget is not None and budget.strip().isdigit():
        budget = int(budget)
    res = analyze(model, x, what_if=args.what_if, what_if_k=args.what_if_k, k=args.k, method=args.method,
                  mode=args.mode, layers=layers, parameters=params, fisher=not args.no_fisher, dtype=args.dtype,
                  device=args.device, seed=args.seed, tol=args.tol, trace=args.trace, budget=budget,
                  progress=args.progress, loss=args.loss,
                  theory={"seed": args.seed} if getattr(args, "theory", False) else False)
    payload = res.to_dict()  # with res.theory under the key "theory"
    if res.theory is not None:
        payload["theory_flags"] = list(res.prediction.flags)
    payload["model"] = args.model
    if args.report is not None:
        from normfield.report.model import write_model_report

        paths = write_model_report(res, Path(args.report), title=args.model)
        payload["report"] = {k: str(v) for k, v in paths.items()}
    return payload, render


def render(p: dict[str, Any]) -> str:
    out = [f"model {p['model']}: T={p['settings']['samples']} samples, C={p['settings']['outputs']} outputs, "
           f"{p['settings']['dtype']} on {p['settings']['device']}, mode {p['settings']['mode']}"]
    if p.get("report"):
        out.append(f"report written to {p['report']['html']}")
    if "lambda_max" in p:
        f = p["fisher"]
        def row(name, w):
            return {"variant": name, "lambda_max": w["lambda_max"],
                    "rel_err": w.get("lambda_max_rel_error", 0.0), "m_lambda": w["m_lambda"],
                    "trace_rel_se": w.get("trace_rel_stderr") or 0.0, "lr_bound": w["lr_bound"],
                    "P": w["parameters"], "method": w["method"], "products": w["products"]}

        rows = [row("as given", f)] + [row(k, w) for k, w in p.get("what_if", {}).items()]
        from normfield.analyze.losses import CURVATURES

        curv = p.get("curvature") or "fisher-mse"
        title = ("Fisher/NTK dual F* = J J^T / T (Karakida et al. 2019)" if curv == "fisher-mse"
                 else CURVATURES.get(curv, curv))
        out += ["", title, format_table(rows)]
        out.append(f"curvature: {curv}" + (f", lambda_min = {fmt(p['lambda_min'])}" if "lambda_min" in p else ""))
        out += [f"{k}: {w['note']}" for k, w in p.get("what_if", {}).items() if w.get("note")]
        out.append("top eigenvalues: " + ", ".join(fmt(float(v)) for v in p["eigenvalues"]))
        out.append(f"Jacobian products: {p['settings'].get('products', f['products'])} in all"
                   + (f" (route {f['route']})" if f.get("route") else ""))
        if not all(w.get("converged", True) for w in [f, *p.get("what_if", {}).values()]):
            out.append("not converged to the requested tolerance (budget or step limit): the rel_err and "
                       "trace_rel_se columns say how accurate these numbers are")
    if p["layers"]:
        cols = ["layer", "type", "features", "condition_number", "effective_rank", "top_fraction", "collapsed",
                "fixed_point", "dist_fixed_point"]
        rows = [{c: ("-" if r.get(c) is None or r.get(c) == "" else r.get(c)) for c in cols} for r in p["layers"]]
        out += ["", "batch Gram G = H H^T / d per layer (Joudaki et al. 2023)", format_table(rows, cols)]
    if p.get("theory"):
        cols = ["quantity", "layer", "features", "measured", "predicted", "ratio", "distance"]
        rows = [{c: ("-" if r.get(c) is None or r.get(c) == "" else r.get(c)) for c in cols} for r in p["theory"]]
        out += ["", "measured vs predicted at infinite width (ratio = measured/predicted; distance = "
                "||G_measured - G_predicted||_F)", format_table(rows, cols)]
        out += [f"theory flag: {f}" for f in p.get("theory_flags", [])]
    return "\n".join(out)
