"""``normfield predict``: the infinite-width prediction of ``normfield analyze``'s numbers for your model."""

from __future__ import annotations

import argparse
import json
from typing import Any

from normfield.cli._common import add_json_flag, fmt, format_table
from normfield.cli.analyze import add_model_arguments, model_and_batch
from normfield.errors import NormfieldError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="infinite-width kernel prediction of lambda_max, m_lambda and every layer's Gram",
        description="Load a model from MODULE:FACTORY as `normfield analyze` does, draw the same seeded "
        "random batch (or read --data), translate the model into infinite-width kernel layers at its own "
        "widths and initial variances, and print the predicted lambda_max, m_lambda, trace and "
        "learning-rate bound of F* = J J^T / T and the predicted batch Gram diagnostics of every layer. "
        "Example: normfield predict examples/bn_mlp.py:make_model --input-shape 32 --batch 16")
    add_model_arguments(p)
    p.add_argument("--mode", default="train", choices=["train", "eval", "as-is"],
                   help="module mode (default train: batch statistics, as `normfield analyze`)")
    p.add_argument("--init", default=None,
                   help='JSON variances of the Linear layers instead of reading them: \'{"sw2": 2.0, "sb2": 0.0}\' '
                        'or per module name \'{"0": {"sw2": 2.0}}\'')
    p.add_argument("--tol", type=float, default=1e-3, help="target relative stated error of the kernel (default 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random batch and the kernel (default 0)")
    add_json_flag(p)
    p.set_defaults(func=run)


def _json_arg(name: str, text: str | None) -> Any:
    if text is None:
        return None
    try:
        v = json.loads(text)
    except json.JSONDecodeError as e:
        raise NormfieldError(f"{name} must be a JSON object: {e}", argument=name) from None
    if not isinstance(v, dict):
        raise NormfieldError(f"{name} must be a JSON object", argument=name)
    return v


def run(args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    from normfield.analyze._functional import model_state_guard
    from normfield.infinite.predict import predict

    init = _json_arg("--init", args.init)
    model, x = model_and_batch(args)  # the same model and batch `normfield analyze` builds
    with model_state_guard(model, args.mode):
        res = predict(model, x, init=init, tol=args.tol, seed=args.seed)
    payload = res.to_dict()
    payload["model"] = args.model
    payload["mode"] = args.mode
    return payload, render


def render(p: dict[str, Any]) -> str:
    out = [f"model {p['model']}: T={p['samples']} samples, C={p['outputs']} outputs, P={p['parameters']} "
           f"parameters, mode {p['mode']} (infinite width, {p['seconds']:.2f} s)"]
    rows = [{"lambda_max": p["lambda_max"], "m_lambda": p["m_lambda"], "trace": p["trace"],
             "lr_bound": p["lr_bound"], "stated_error": p["error"], "within_tol": p["within_tol"]}]
    out += ["", "predicted Fisher/NTK dual F* = (Theta_f x I_C)/T (Karakida et al. 2019)", format_table(rows)]
    out.append("eigenvalues of Theta_f/T: " + ", ".join(fmt(float(v)) for v in p["eigenvalues"][:8])
               + (" ..." if len(p["eigenvalues"]) > 8 else ""))
    for f in p.get("flags", []):
        out.append(f"flag: {f}")
    if p["layers"]:
        cols = ["layer", "type", "features", "condition_number", "effective_rank", "top_fraction", "collapsed",
                "error"]
        rows = [{c: ("-" if r.get(c) is None else r.get(c)) for c in cols} for r in p["layers"]]
        out += ["", "predicted batch Gram E[x x^T] per layer (Joudaki et al. 2023)", format_table(rows, cols)]
    return "\n".join(out)
