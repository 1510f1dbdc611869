"""``normfield order-params``: Karakida et al. 2019 order parameters and κ1, κ2 (eqs. 5–7, 11)."""

from __future__ import annotations

import argparse
from typing import Any

from normfield.cli._common import add_json_flag, format_table, parse_float_list
from normfield.cli.fixed_point import add_activation_parser, resolve_activation


def register(sub: argparse._SubParsersAction) -> None:
    p = add_activation_parser(
        sub, "order-params", help="order parameters q, q-hat, q-tilde and kappa1, kappa2 (Karakida eqs. 5-7, 11)",
        description="Forward (q, q-hat) and backward (q-tilde) order parameters of a wide random "
        "MLP and the constants kappa1, kappa2, alpha of Karakida et al. 2019, Theorem 2.2.")
    p.add_argument("--sw2", required=True, type=float, help="weight variance sigma_w^2 > 0")
    p.add_argument("--sb2", required=True, type=float, help="bias variance sigma_b^2 >= 0")
    p.add_argument("--depth", required=True, type=int, help="number of weight layers L >= 2")
    p.add_argument("--alphas", default=None, help="L width ratios alpha_0,...,alpha_{L-1} (default all 1)")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    from normfield.fisher.order_params import order_parameters
    from normfield.errors import NormfieldError

    act = resolve_activation(args)
    alphas = parse_float_list("--alphas", args.alphas)
    try:
        op = order_parameters(act, args.sw2, args.sb2, args.depth, alphas)
    except NormfieldError as e:  # name the CLI option
        if e.argument in ("sw2", "sb2", "depth", "alphas") and not str(e).startswith("--"):
            raise NormfieldError(f"--{e}", argument=f"--{e.argument}") from None
        raise
    payload = op.to_dict()

    def render(p: dict) -> str:
        head = (f"{p['activation']}, sw2={p['sw2']:g}, sb2={p['sb2']:g}, L={p['depth']}: "
                f"kappa1 = {p['kappa1']:.10g}, kappa2 = {p['kappa2']:.10g}, alpha = {p['alpha']:g}")
        if p["centered"]:
            head += "\n(centered network: kappa2 = 0, Theorem 2.2 does not apply)"
        rows = [{k: ("-" if v is None else v) for k, v in r.items()} for r in p["layers"]]
        return head + "\n" + format_table(rows)

    return payload, render
