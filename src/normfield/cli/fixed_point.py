"""``normfield fixed-point``: the BN fixed point G* (Joudaki et al. 2023, eq. 10)."""

from __future__ import annotations

import argparse
from typing import Any

from normfield.cli._common import add_json_flag, format_table


def add_activation_args(p: argparse.ArgumentParser) -> None:
    """``--activation NAME`` (``leaky_relu:0.2`` accepted) and ``--slope``."""
    p.add_argument("--activation", required=True,
                   help="relu, leaky_relu (or leaky_relu:SLOPE), tanh, erf, gelu, silu, sigmoid, sin, selu, identity")
    p.add_argument("--slope", type=float, default=None, help="leaky_relu slope (default 0.01)")


def add_activation_parser(sub: argparse._SubParsersAction, name: str, *, help: str,
                          description: str) -> argparse.ArgumentParser:
    """The parser of subcommand ``name``, with ``--activation``/``--slope`` (:func:`add_activation_args`)."""
    p = sub.add_parser(name, help=help, description=description)
    add_activation_args(p)
    return p


def resolve_activation(args: argparse.Namespace):
    from normfield.core.activations import get_activation
    from normfield.errors import NormfieldError

    if args.slope is not None:
        name = args.activation.strip().lower().replace("-", "_")
        if name.partition(":")[0] != "leaky_relu":
            raise NormfieldError(f"--slope applies only to leaky_relu, got --activation {args.activation}",
                                 argument="--slope")
        if ":" in name:
            raise NormfieldError("give the leaky_relu slope once: --activation leaky_relu:S or --slope S",
                                 argument="--slope")
        return get_activation("leaky_relu", slope=args.slope)
    return get_activation(args.activation)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_activation_parser(sub, "fixed-point", help="the batch-norm fixed point G* (Joudaki eq. 10)",
                              description="Exact b* (diagonal), off-diagonal entry, the two eigenvalues (value and "
                              "multiplicity) and condition "
                              "number of the BN mean-field fixed point G* = b*((1-c*)I + c*11^T) for a batch of n.")
    p.add_argument("--batch", required=True, type=int, help="batch size n >= 2")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    from normfield.gram.fixed_point import fixed_point
    from normfield.core.validation import check_int

    act = resolve_activation(args)
    n = check_int("--batch", args.batch, minimum=2)
    fp = fixed_point(act, n)
    payload = fp.to_dict()

    def render(p: dict) -> str:
        n = p["batch"]
        rows = [
            {"quantity": "b* (diagonal)", "value": p["diagonal"]},
            {"quantity": "off-diagonal b*c*", "value": p["off_diagonal"]},
            {"quantity": "c*", "value": p["c_star"]},
            {"quantity": "eigenvalue on 1_n: b*(1+(n-1)c*)", "value": p["eigenvalue_ones"]},
            {"quantity": f"eigenvalue b*(1-c*) (x{n - 1})", "value": p["eigenvalue_rest"]},
            {"quantity": "condition number", "value": p["condition_number"]},
        ]
        head = f"G* for {p['activation']}, batch n = {n} ({p['method']})"
        tail = "\nG* is singular (an eigenvalue is 0): condition number is infinite." if p["singular"] else ""
        return head + "\n" + format_table(rows, ["quantity", "value"]) + tail

    return payload, render
